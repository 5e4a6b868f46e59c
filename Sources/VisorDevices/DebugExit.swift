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
