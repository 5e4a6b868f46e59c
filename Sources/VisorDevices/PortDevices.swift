public import VisorCore
import Synchronization

/// The 16550 model on the port bus: a thin adapter that turns port accesses into register
/// accesses by offset and sends transmitted bytes to `output`.
///
/// Accesses wider than a byte are treated as byte accesses of their low byte; an IN wider
/// than a byte returns the register in the low byte and ones above it.
public final class SerialPort: PortDevice {
    /// Standard COM1 ports.
    public static let com1Base: UInt16 = 0x3F8
    public static let portCount = 8

    private let uart = Mutex(Serial16550())
    private let output: @Sendable (UInt8) -> Void

    /// - Parameter output: receives every byte the guest transmits, on the vCPU thread.
    public init(output: @escaping @Sendable (UInt8) -> Void) {
        self.output = output
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value = uart.withLock { $0.read(offset: UInt8(truncatingIfNeeded: offset)) }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let sent = uart.withLock {
            $0.write(offset: UInt8(truncatingIfNeeded: offset), value: UInt8(truncatingIfNeeded: value))
        }
        if let sent { output(sent) }
        return .continue
    }

    /// Queues bytes for the guest to read, as if they arrived on the line. Returns how many
    /// fit in the receive FIFO.
    @discardableResult
    public func receive(_ bytes: some Sequence<UInt8>) -> Int {
        uart.withLock { uart in bytes.reduce(0) { $0 + (uart.receive($1) ? 1 : 0) } }
    }
}

/// The debug-exit port: a guest's OUT of value V stops the VM with guest status V & 0xFF.
///
/// Test guests use it to report pass or fail. Unlike QEMU's isa-debug-exit, which exits
/// with (V << 1) | 1, the status is the written byte itself, so status 0 means success.
/// An IN reads all ones.
public final class DebugExitPort: PortDevice {
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
