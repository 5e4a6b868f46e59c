/// The Linux "zero page" (`struct boot_params`): the 4 KiB block the 64-bit boot protocol
/// hands the kernel in RSI. Built as bytes, so it can be checked without a VM.
///
/// Offsets are those of Documentation/arch/x86/zero-page.rst and boot.rst.
package struct ZeroPage: Sendable, Equatable {
    package static let size = 4096
    /// Most e820 entries the zero page holds.
    package static let maxE820Entries = 128

    enum Offset {
        static let acpiRSDPAddress = 0x070
        static let extRamdiskImage = 0x0C0
        static let extRamdiskSize = 0x0C4
        static let extCmdLinePtr = 0x0C8
        static let e820Entries = 0x1E8
        static let setupHeader = 0x1F1
        static let vidMode = 0x1FA
        static let bootFlag = 0x1FE
        static let headerMagic = 0x202
        static let version = 0x206
        static let typeOfLoader = 0x210
        static let loadflags = 0x211
        static let code32Start = 0x214
        static let ramdiskImage = 0x218
        static let ramdiskSize = 0x21C
        static let cmdLinePtr = 0x228
        static let initrdAddrMax = 0x22C
        static let kernelAlignment = 0x230
        static let relocatableKernel = 0x234
        static let cmdlineSize = 0x238
        static let e820Table = 0x2D0
    }

    /// "Undefined" boot loader: 0xFF, as the protocol asks of loaders without an assigned ID.
    package static let typeOfLoader: UInt8 = 0xFF

    package private(set) var bytes: [UInt8]

    /// A zero page whose setup header is `setupHeader` (the bytes of a bzImage from offset
    /// 0x1F1 to the end of its header), or, for a bare vmlinux (`nil`), a header built here:
    /// protocol 2.15, loaded high, 16 MiB alignment, a 2,047-byte command line.
    package init(setupHeader: [UInt8]?) {
        bytes = [UInt8](repeating: 0, count: Self.size)
        if let setupHeader {
            let count = min(setupHeader.count, Offset.e820Table - Offset.setupHeader)
            bytes.replaceSubrange(Offset.setupHeader..<(Offset.setupHeader + count), with: setupHeader.prefix(count))
        } else {
            put(UInt16(0xAA55), at: Offset.bootFlag)
            put(UInt32(0x5372_6448), at: Offset.headerMagic)  // "HdrS"
            put(UInt16(0x020F), at: Offset.version)
            bytes[Offset.loadflags] = 0x01  // LOADED_HIGH
            put(UInt32(0x7FFF_FFFF), at: Offset.initrdAddrMax)
            put(UInt32(0x100_0000), at: Offset.kernelAlignment)
            put(UInt32(2047), at: Offset.cmdlineSize)
        }
        bytes[Offset.typeOfLoader] = Self.typeOfLoader
        put(UInt16(0xFFFF), at: Offset.vidMode)  // "normal" video mode: none is set up
    }

    /// The command line's guest-physical address.
    package mutating func setCommandLine(at address: UInt64) {
        put(UInt32(truncatingIfNeeded: address), at: Offset.cmdLinePtr)
        put(UInt32(truncatingIfNeeded: address >> 32), at: Offset.extCmdLinePtr)
    }

    /// Where the initial RAM disk was placed.
    package mutating func setInitrd(at address: UInt64, size: UInt64) {
        put(UInt32(truncatingIfNeeded: address), at: Offset.ramdiskImage)
        put(UInt32(truncatingIfNeeded: size), at: Offset.ramdiskSize)
        put(UInt32(truncatingIfNeeded: address >> 32), at: Offset.extRamdiskImage)
        put(UInt32(truncatingIfNeeded: size >> 32), at: Offset.extRamdiskSize)
    }

    /// The protected-mode kernel's load address (read by the kernel's own decompressor).
    package mutating func setCode32Start(_ address: UInt32) {
        put(address, at: Offset.code32Start)
    }

    /// The ACPI RSDP (boot protocol 2.14), so the kernel need not scan the BIOS area.
    package mutating func setACPIRSDP(_ address: UInt64) {
        put(address, at: Offset.acpiRSDPAddress)
    }

    /// The memory map; at most `maxE820Entries` entries are taken.
    package mutating func setE820(_ map: [E820Entry]) {
        let entries = map.prefix(Self.maxE820Entries)
        bytes[Offset.e820Entries] = UInt8(entries.count)
        for (index, entry) in entries.enumerated() {
            let at = Offset.e820Table + index * 20
            put(entry.address, at: at)
            put(entry.size, at: at + 8)
            put(entry.kind.rawValue, at: at + 16)
        }
    }

    // MARK: Reading (for tests and traces)

    package var commandLineAddress: UInt64 {
        UInt64(get32(Offset.cmdLinePtr)) | UInt64(get32(Offset.extCmdLinePtr)) << 32
    }
    package var initrd: (address: UInt64, size: UInt64) {
        (
            UInt64(get32(Offset.ramdiskImage)) | UInt64(get32(Offset.extRamdiskImage)) << 32,
            UInt64(get32(Offset.ramdiskSize)) | UInt64(get32(Offset.extRamdiskSize)) << 32
        )
    }
    package var e820: [E820Entry] {
        (0..<Int(bytes[Offset.e820Entries])).compactMap { index in
            let at = Offset.e820Table + index * 20
            guard let kind = E820Entry.Kind(rawValue: get32(at + 16)) else { return nil }
            return E820Entry(address: get64(at), size: get64(at + 8), kind: kind)
        }
    }
    package var acpiRSDP: UInt64 { get64(Offset.acpiRSDPAddress) }
    package var loaderType: UInt8 { bytes[Offset.typeOfLoader] }
    package var protocolVersion: UInt16 { UInt16(bytes[Offset.version]) | UInt16(bytes[Offset.version + 1]) << 8 }
    package var commandLineLimit: UInt32 { get32(Offset.cmdlineSize) }

    // MARK: Little-endian helpers (offsets are constants inside the 4 KiB array)

    private mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<(T.bitWidth / 8) { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (i * 8)) }
    }
    private func get32(_ offset: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << ($1 * 8) }
    }
    private func get64(_ offset: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << ($1 * 8) }
    }
}
