public import VisorCore
import Synchronization
import VisorHost
public import VisorSnapshot

/// The ACPI power-management timer (ACPI 6.5, 4.8.3.3): a free-running counter at
/// 3.579545 MHz that the guest reads from a 4-byte port block named by the FADT
/// (PM_TMR_BLK). It is 32 bits wide, as the FADT announces (TMR_VAL_EXT), and counts the
/// host's monotonic clock since the device was made, so it never goes backwards. A
/// snapshot saves the counter and a restore continues from it, as the guest's other
/// clocks do (time spent saved does not pass for the guest). Reads of any width see the low bytes of the counter from
/// the accessed port's lane on (0xFF past the block); writes are ignored (the register is
/// read-only). The timer's overflow status bit and interrupt (TMR_STS, TMR_EN) are not
/// modelled.
public final class ACPIPMTimerDevice: PortDevice {
    /// The counter's frequency, in Hz.
    public static let frequency: UInt64 = 3_579_545
    /// The port block's length.
    public static let length = 4
    /// The block beside the minimal platform's PM1 blocks, where QEMU's PIIX4 puts it.
    public static let defaultPort: UInt16 = 0xB008

    public let port: UInt16
    private let clock: @Sendable () -> UInt64
    private let start: UInt64
    /// Ticks added to those counted since `start`: what a restore continues from.
    private let base = Atomic<UInt64>(0)

    /// - Parameters:
    ///   - port: the first port of the 4-byte block.
    ///   - clock: nanoseconds from a monotonic clock (the host's by default; tests pass their own).
    public init(port: UInt16 = defaultPort, clock: (@Sendable () -> UInt64)? = nil) {
        self.port = port
        let clock = clock ?? { HostIO.monotonicNanoseconds() }
        self.clock = clock
        start = clock()
    }

    /// The counter: nanoseconds since the device was made, scaled to 3.579545 MHz without
    /// overflow (the product is 128 bits wide; the quotient fits 64 bits for 160 years).
    public var counter: UInt32 { UInt32(truncatingIfNeeded: ticks) }

    /// The full count: ticks since `start`, plus what a restore set.
    private var ticks: UInt64 {
        let elapsed = clock() &- start
        let product = elapsed.multipliedFullWidth(by: Self.frequency)
        return UInt64(1_000_000_000).dividingFullWidth(product).quotient &+ base.load(ordering: .relaxed)
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value = counter
        var result: UInt32 = 0
        for lane in 0..<min(Int(width), 4) {
            let index = Int(offset) + lane
            let byte = index < Self.length ? (value >> (8 * UInt32(index))) & 0xFF : 0xFF
            result |= byte << (8 * UInt32(lane))
        }
        return result
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction { .continue }
}

extension ACPIPMTimerDevice {
    /// The 4-byte block, named to the FADT as PM_TMR_BLK (32 bits). No DSDT device.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "acpi-pm-timer", ports: [try .ports("acpi-pm-timer", port, count: Self.length)], portDevice: self,
            fixedHardware: [.pmTimer(port: port)], state: self)
    }
}

extension ACPIPMTimerDevice: SnapshotStateful {
    /// The count, so a restored timer goes on from it instead of starting again at 0
    /// (which a guest's clocksource would read as a wrap of 20 minutes).
    public func saveState(to writer: inout SnapshotWriter) { writer.write(ticks) }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let saved = try reader.readUInt64("the PM timer's count")
        // Wrapping: any count a file holds is a count the timer may have reached.
        let now = ticks &- base.load(ordering: .relaxed)
        base.store(saved &- now, ordering: .relaxed)
    }
}
