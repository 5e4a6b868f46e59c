public import VisorCore
import Synchronization

/// QEMU's pc-testdev, the devices kvm-unit-tests drives to test port I/O, MMIO and
/// interrupt delivery:
/// - **a latch** at ports 0xE0-0xE3: a 4-byte register, written and read byte lane by byte
///   lane, so an access of any width (1, 2 or 4 bytes) at any of the four ports reads back
///   what was written there. Lanes past 0xE3 read 0xFF and are not written;
/// - **interrupt lines** at ports 0x2000 + n for the interrupt controller's lines n (24 with
///   the in-kernel IOAPIC, GSIs 0-23): each byte written sets line n to high (nonzero) or
///   low (zero); a read returns the level the device last set (0 or 1). Without an
///   interrupt controller the ports are there, but writes set nothing;
/// - **a RAM-like MMIO window** at 0xFF000000, 64 KiB (QEMU's `IOMEM_LEN`): every access
///   exits to the VMM, and reads of any width return what was written, byte by byte.
///
/// Nothing here is parsed: every guest value is a byte stored at a range-checked offset or
/// a line level. The state is not saved in snapshots (the machine refuses to snapshot
/// with these devices).
public final class QEMUTestDevice: PortDevice, MMIODevice {
    /// The latch, ports 0xE0-0xE3.
    public static let latchPort: UInt16 = 0xE0
    public static let latchWidth = 4
    /// The first interrupt-line port: 0x2000 + n drives line n.
    public static let interruptLinePort: UInt16 = 0x2000
    /// The lines of the in-kernel IOAPIC (`KVM_IRQCHIP_NUM_PINS`), and QEMU's port count.
    public static let interruptLineCount = 24
    /// The MMIO window.
    public static let memoryBase: UInt64 = 0xFF00_0000
    public static let memorySize = 0x1_0000

    private struct State {
        var latch: UInt32 = 0
        var levels = [Bool](repeating: false, count: QEMUTestDevice.interruptLineCount)
        var memory = [UInt8](repeating: 0, count: QEMUTestDevice.memorySize)
    }

    private let state = Mutex(State())
    private let interruptLine: (@Sendable (_ line: UInt32, _ high: Bool) -> Void)?

    /// - Parameter interruptLine: sets the level of an interrupt-controller line (GSI);
    ///   nil without an interrupt controller.
    public init(interruptLine: (@Sendable (_ line: UInt32, _ high: Bool) -> Void)?) {
        self.interruptLine = interruptLine
    }

    // MARK: Ports

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let isLatch = port < Self.interruptLinePort
        return state.withLock { state in
            var value: UInt32 = 0
            for lane in 0..<min(Int(width), 4) {
                let index = Int(offset) + lane
                let byte: UInt8
                if isLatch {
                    byte = index < Self.latchWidth ? UInt8(truncatingIfNeeded: state.latch >> (8 * UInt32(index))) : 0xFF
                } else {
                    byte = index < Self.interruptLineCount ? (state.levels[index] ? 1 : 0) : 0xFF
                }
                value |= UInt32(byte) << (8 * UInt32(lane))
            }
            return value
        }
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        if port < Self.interruptLinePort {
            state.withLock { state in
                for lane in 0..<min(Int(width), 4) where Int(offset) + lane < Self.latchWidth {
                    let shift = 8 * UInt32(Int(offset) + lane)
                    let byte = (value >> (8 * UInt32(lane))) & 0xFF
                    state.latch = state.latch & ~(0xFF << shift) | byte << shift
                }
            }
            return .continue
        }
        for lane in 0..<min(Int(width), 4) {
            let line = Int(offset) + lane
            guard line < Self.interruptLineCount else { break }
            let high = (value >> (8 * UInt32(lane))) & 0xFF != 0
            // Under the lock: two vCPUs writing the same port leave the stored level and
            // the irqchip's line in agreement.
            state.withLock { state in
                state.levels[line] = high
                interruptLine?(UInt32(line), high)
            }
        }
        return .continue
    }

    // MARK: MMIO

    public func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        state.withLock { state in
            var value: UInt64 = 0
            for lane in 0..<min(Int(width), 8) {
                let index = offset &+ UInt64(lane)
                let byte = index < UInt64(Self.memorySize) ? state.memory[Int(index)] : 0xFF
                value |= UInt64(byte) << (8 * UInt64(lane))
            }
            return value
        }
    }

    public func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        state.withLock { state in
            for lane in 0..<min(Int(width), 8) {
                let index = offset &+ UInt64(lane)
                guard index < UInt64(Self.memorySize) else { break }
                state.memory[Int(index)] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(lane)))
            }
        }
        return .continue
    }

    /// The latch's value, for inspection.
    public var latch: UInt32 { state.withLock { $0.latch } }
    /// The level the device last set on each line, for inspection.
    public var lineLevels: [Bool] { state.withLock { $0.levels } }
}

extension QEMUTestDevice {
    /// The latch, the interrupt-line ports and the MMIO window where QEMU puts them. Not in
    /// the ACPI tables, as in QEMU.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        let window: PlatformDevice.MMIORegion
        do {
            window = PlatformDevice.MMIORegion(
                name: "qemu-testdev-iomem", range: try MMIORange(start: Self.memoryBase, size: UInt64(Self.memorySize)))
        } catch { throw .bus(error) }
        return PlatformDevice(
            name: "qemu-testdev",
            ports: [
                try .ports("qemu-testdev-ioport", Self.latchPort, count: Self.latchWidth),
                try .ports("qemu-testdev-irq-line", Self.interruptLinePort, count: Self.interruptLineCount),
            ],
            portDevice: self, mmio: [window], mmioDevice: self)
    }
}
