public import VisorCore

/// The debug-exit port: a guest's OUT of value V stops the VM with guest status V & 0xFF.
///
/// Test guests use it to report pass or fail. Unlike QEMU's isa-debug-exit, which exits
/// with (V << 1) | 1, the status is the written byte itself, so status 0 means success.
/// An IN reads all ones.
public final class DebugExitDevice: PortDevice {
    /// The conventional port, 0x501.
    public static let defaultPort: UInt16 = 0x501

    public init() {}

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        UInt32(truncatingIfNeeded: allOnes(width: width))
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        .stop(.guestExit(status: UInt8(truncatingIfNeeded: value)))
    }
}

extension DebugExitDevice {
    /// The port at 0x501 unless told otherwise. Test guests know it; the OS is not told.
    package func platformDevice(port: UInt16 = defaultPort) throws(PlatformError) -> PlatformDevice {
        PlatformDevice(name: "debug-exit", ports: [try .ports("debug-exit", port, count: 1)], portDevice: self)
    }
}

/// QEMU's isa-debug-exit as kvm-unit-tests configures it (`iobase=0xf4,iosize=0x4`): a
/// write of value V, of any width at any of the four ports, stops the VM with status
/// `(V << 1) | 1`, cut to 8 bits as a process exit status is. So a guest written for QEMU
/// reports pass by writing 0 (status 1), fail by writing 1 (status 3), and skip by writing
/// 38 (status 77). Reads return all ones (QEMU's device has no read handler).
public final class QEMUDebugExitDevice: PortDevice {
    /// The port kvm-unit-tests uses, 0xF4.
    public static let defaultPort: UInt16 = 0xF4
    /// Four ports wide, as QEMU's `iosize=0x4`.
    public static let portCount = 4

    public init() {}

    /// The VM status for a written value: `(value << 1) | 1`, low 8 bits.
    public static func status(for value: UInt32) -> UInt8 {
        UInt8(truncatingIfNeeded: value << 1 | 1)
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        UInt32(truncatingIfNeeded: allOnes(width: width))
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        .stop(.guestExit(status: Self.status(for: value)))
    }
}

extension QEMUDebugExitDevice {
    /// Ports 0xF4-0xF7. Not in the ACPI tables, as in QEMU.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "qemu-debug-exit", ports: [try .ports("qemu-debug-exit", Self.defaultPort, count: Self.portCount)],
            portDevice: self)
    }
}
