public import VisorCore
public import VisorSnapshot
import Synchronization

/// PCI configuration mechanism #1 with no devices behind it.
///
/// - 0xCF8, CONFIG_ADDRESS: a 32-bit OUT at 0xCF8 stores the address and a 32-bit IN reads
///   it back. Narrower accesses at 0xCF8, and any access at 0xCFA-0xCFB, do not reach the
///   address register (as on Intel chipsets, where only a doubleword access at 0xCF8 is
///   CONFIG_ADDRESS): they read all ones and their writes are dropped.
/// - 0xCFC-0xCFF, CONFIG_DATA: reads all ones (vendor ID 0xFFFF: no device at any address),
///   writes dropped.
/// - 0xCF9 is not this device's: it is the reset control register (`ResetControlDevice`).
///   Register this device on three ranges around it: `addressPort` (1 port),
///   `addressUpperBase` (2 ports) and `dataBase` (4 ports). It decodes by port number, so
///   its offsets do not matter.
///
/// What Linux 6.1 makes of it (`arch/x86/pci/direct.c`): `pci_check_type1` writes byte
/// 0x01 to 0xCFB (dropped), saves a doubleword read of 0xCF8, writes 0x80000000 there and
/// reads it back (it matches), then runs `pci_sanity_check`:
/// - if the firmware's DMI (SMBIOS) tables give a BIOS date from 2001 on, or the command
///   line says `pci=nochecks`, the check passes: Linux uses type 1, prints "PCI: Using
///   configuration type 1 for base access", and finds no devices;
/// - otherwise (no SMBIOS, as when the VMM builds only ACPI tables) it reads the class and
///   vendor ID of all 256 functions on bus 0 (about 1,000 port exits), finds no host bridge,
///   and moves on to `pci_check_type2`. That one writes bytes 0x00 to 0xCFB, 0xCF8 and 0xCFA
///   and wants them back as 0x00; byte reads here give 0xFF, so it fails without touching
///   the type-2 ports 0xC000-0xCFFF. Linux then has no PCI configuration access and prints
///   "PCI: Fatal: No config space access function found" (a KERN_ERR line that, as on
///   other VMMs without PCI, has no other effect).
public final class PCIConfigDevice: PortDevice {
    /// CONFIG_ADDRESS (doubleword accesses only).
    public static let addressPort: UInt16 = 0xCF8
    public static let addressPortCount = 1
    /// The upper half of CONFIG_ADDRESS's doubleword, after the reset register at 0xCF9.
    public static let addressUpperBase: UInt16 = 0xCFA
    public static let addressUpperCount = 2
    /// CONFIG_DATA.
    public static let dataBase: UInt16 = 0xCFC
    public static let dataPortCount = 4
    /// CONFIG_ADDRESS bit 31: configuration access enabled.
    public static let enableBit: UInt32 = 0x8000_0000

    private let address = Mutex<UInt32>(0)

    public init() {}

    /// CONFIG_ADDRESS as the guest last wrote it (0 at power-on).
    public var configAddress: UInt32 { address.withLock { $0 } }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        if port == Self.addressPort && width == 4 {
            return address.withLock { $0 }
        }
        return UInt32(truncatingIfNeeded: allOnes(width: width))
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        if port == Self.addressPort && width == 4 {
            address.withLock { $0 = value }
        }
        return .continue
    }
}

extension PCIConfigDevice {
    /// Mechanism #1 at 0xCF8, 0xCFA-0xCFB and 0xCFC-0xCFF, around the reset register at
    /// 0xCF9. No ACPI description: with no host bridge there is no PCI root to describe.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "pci-config",
            ports: [
                try .ports("pci-config-address", Self.addressPort, count: Self.addressPortCount),
                try .ports("pci-config-address", Self.addressUpperBase, count: Self.addressUpperCount),
                try .ports("pci-config-data", Self.dataBase, count: Self.dataPortCount),
            ],
            portDevice: self, state: self)
    }
}

extension PCIConfigDevice: SnapshotStateful {
    /// CONFIG_ADDRESS, which a guest reads back.
    public func saveState(to writer: inout SnapshotWriter) { writer.write(configAddress) }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let value = try reader.readUInt32("the PCI CONFIG_ADDRESS register")
        address.withLock { $0 = value }
    }
}
