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
    /// COM1's ISA interrupt line.
    public static let com1IRQ: UInt32 = 4

    /// The UART and the level last driven on the interrupt line.
    private let state = Mutex<(uart: Serial16550, line: Bool)>((Serial16550(), false))
    private let output: @Sendable (UInt8) -> Void
    private let interruptLine: (@Sendable (Bool) -> Void)?

    /// - Parameters:
    ///   - output: receives every byte the guest transmits, on the vCPU thread.
    ///   - interruptLine: drives the UART's IRQ line: called with the new level whenever
    ///     "an enabled interrupt is pending and MCR.OUT2 is set" changes, as on a PC.
    public init(output: @escaping @Sendable (UInt8) -> Void, interruptLine: (@Sendable (Bool) -> Void)? = nil) {
        self.output = output
        self.interruptLine = interruptLine
    }

    /// Runs `body` on the UART and then updates the interrupt line, under one lock so that
    /// line changes reach the interrupt controller in the order they happened.
    private func access<R>(_ body: (inout Serial16550) -> R) -> R {
        state.withLock { state in
            let result = body(&state.uart)
            let level = state.uart.pcInterruptLine
            if level != state.line {
                state.line = level
                interruptLine?(level)
            }
            return result
        }
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value = access { $0.read(offset: UInt8(truncatingIfNeeded: offset)) }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let sent = access { $0.write(offset: UInt8(truncatingIfNeeded: offset), value: UInt8(truncatingIfNeeded: value)) }
        if let sent { output(sent) }
        return .continue
    }

    /// Queues bytes for the guest to read, as if they arrived on the line, and raises the
    /// interrupt if the guest enabled it. Returns how many fit in the 64-byte receive FIFO;
    /// the rest are not taken (the caller retries later, as a UART's sender would wait).
    @discardableResult
    public func receive(_ bytes: some Sequence<UInt8>) -> Int {
        access { uart in
            var taken = 0
            for byte in bytes {
                guard uart.receiveSpace > 0, uart.receive(byte) else { break }
                taken += 1
            }
            return taken
        }
    }

    /// Free bytes in the receive FIFO.
    public var receiveSpace: Int { state.withLock { $0.uart.receiveSpace } }
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
