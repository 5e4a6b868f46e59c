public import VisorCore
public import VisorSnapshot
import Synchronization

// The reset control register at port 0xCF9, which the FADT's reset register names. A panic
// with `panic=-1` or a reboot writes the FADT's reset value (0x06) to it; the kernel's own
// CF9 reset writes (value | 0x02), then (value | 0x06).

/// The reset control register (port 0xCF9 on Intel chipsets), modelled as one byte.
///
/// Bit 1 (SYS_RST, hard versus soft reset) and bit 3 (FULL_RST) are kept and read back. A
/// write with bit 2 (RST_CPU) set asks for a reset; bit 2 is not kept (the reset it asks
/// for has happened by the time anything could read it). This covers the FADT reset value
/// 0x06 and both of Linux's CF9 sequences (0x02 then 0x06 for a warm reset, 0x0E for cold).
package struct ResetControl: Sendable {
    /// Bit 2: reset the CPU.
    package static let resetCPU: UInt8 = 0x04
    /// Bit 1: make the reset a hard (system) reset.
    package static let systemReset: UInt8 = 0x02

    /// The register as the guest reads it.
    package private(set) var value: UInt8 = 0

    package init() {}

    /// The register as a snapshot restores it (bit 2 is never kept).
    package init(restoring reader: inout SnapshotReader) throws(SnapshotError) {
        value = try reader.readUInt8("the reset control register", allowedBits: ~Self.resetCPU)
    }

    /// A guest write. Returns true when it asks for a reset.
    package mutating func write(_ byte: UInt8) -> Bool {
        value = byte & ~Self.resetCPU
        return byte & Self.resetCPU != 0
    }
}

/// The reset control register on the port bus (port 0xCF9). A write with bit 2 set stops
/// the VM with `.reset(source: "port 0xCF9")`. Accesses wider than a byte use the low byte;
/// an IN wider than a byte returns the register in the low byte and ones above it.
///
/// Port 0xCF9 sits inside the PCI configuration ports: register it on its own, and
/// `PCIConfigDevice` on 0xCF8, 0xCFA-0xCFB and 0xCFC-0xCFF around it.
public final class ResetControlDevice: PortDevice {
    public static let defaultPort: UInt16 = 0xCF9
    public static let portCount = 1
    /// The reset stop's source.
    public static let resetSource = "port 0xCF9"

    private let state = Mutex(ResetControl())

    public init() {}

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value = state.withLock { $0.value }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let reset = state.withLock { $0.write(UInt8(truncatingIfNeeded: value)) }
        return reset ? .stop(.reset(source: Self.resetSource)) : .continue
    }
}

extension ResetControlDevice {
    /// The value the FADT tells the OS to write: SYS_RST | RST_CPU, a hard reset.
    public static let fadtResetValue: UInt8 = ResetControl.systemReset | ResetControl.resetCPU

    /// The register at port 0xCF9, as the FADT's reset register.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "reset-control", ports: [try .ports("reset-control", Self.defaultPort, count: Self.portCount)],
            portDevice: self, fixedHardware: [.resetRegister(port: Self.defaultPort, value: Self.fadtResetValue)],
            state: self)
    }
}

extension ResetControlDevice: SnapshotStateful {
    public func saveState(to writer: inout SnapshotWriter) { writer.write(state.withLock { $0.value }) }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let restored = try ResetControl(restoring: &reader)
        state.withLock { $0 = restored }
    }
}
