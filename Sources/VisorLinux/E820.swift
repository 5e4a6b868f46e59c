public import VisorMemory

/// One range of the BIOS-style (e820) memory map the kernel is given.
public struct E820Entry: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
        case acpiReclaimable = 3
        case acpiNVS = 4
    }
    public var address: UInt64
    public var size: UInt64
    public var kind: Kind
    public var end: UInt64 { address + size }

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address
        self.size = size
        self.kind = kind
    }

    public var description: String {
        "[0x\(String(address, radix: 16)), 0x\(String(end, radix: 16))) \(kind)"
    }
}

/// The memory map of a PC-shaped guest, as firmware would report it.
public enum E820Map {
    /// Where the extended BIOS data area starts: RAM below it is usable.
    public static let ebdaStart: UInt64 = 0x9_FC00
    /// The BIOS area, where the ACPI tables live (reserved).
    public static let biosArea: Range<UInt64> = 0xE_0000..<0x10_0000
    /// The first MiB ends here; RAM above it is where kernels load.
    public static let highMemoryStart: UInt64 = 0x10_0000

    /// The map for guest RAM laid out in `regions`: the first region starts at 0 and holds
    /// the first MiB; any other region (RAM above the 32-bit device hole) is RAM as it is.
    ///
    /// - Low RAM up to the EBDA is usable; the EBDA to 640 KiB and the BIOS area are reserved;
    ///   the VGA window and option-ROM area (0xA0000-0xDFFFF) are left out, as on a PC.
    /// - RAM from 1 MiB to the end of the first region, then each further region.
    public static func build(for regions: [GuestRegion]) -> [E820Entry] {
        var map: [E820Entry] = []
        for region in regions.sorted(by: { $0.start < $1.start }) {
            if region.start == 0 {
                map.append(E820Entry(address: 0, size: min(region.end, ebdaStart), kind: .ram))
                if region.end > ebdaStart {
                    map.append(E820Entry(address: ebdaStart, size: 0xA_0000 - ebdaStart, kind: .reserved))
                }
                if region.end > biosArea.lowerBound {
                    map.append(
                        E820Entry(
                            address: biosArea.lowerBound,
                            size: min(region.end, biosArea.upperBound) - biosArea.lowerBound,
                            kind: .reserved))
                }
                if region.end > highMemoryStart {
                    map.append(E820Entry(address: highMemoryStart, size: region.end - highMemoryStart, kind: .ram))
                }
            } else {
                map.append(E820Entry(address: region.start, size: region.size, kind: .ram))
            }
        }
        return map
    }
}
