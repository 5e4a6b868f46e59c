import Synchronization
import Testing
import VisorCore
import VisorSnapshot
@testable import VisorDevices

@Suite("ACPI PM timer")
struct PMTimerTests {
    final class Clock: Sendable {
        let now = Mutex<UInt64>(5_000_000_000)
        func advance(_ nanoseconds: UInt64) { now.withLock { $0 += nanoseconds } }
        var read: @Sendable () -> UInt64 { { self.now.withLock { $0 } } }
    }

    @Test("counts 3,579,545 ticks a second from the clock at its making, 32 bits wide, wrapping")
    func rate() {
        let clock = Clock()
        let timer = ACPIPMTimerDevice(clock: clock.read)
        #expect(timer.portRead(port: 0xB008, offset: 0, width: 4) == 0)
        clock.advance(1_000_000_000)
        #expect(timer.portRead(port: 0xB008, offset: 0, width: 4) == 3_579_545)
        clock.advance(500_000_000)
        #expect(timer.counter == 5_369_317)  // 1.5 s: 5,369,317.5 rounded down
        // 2^32 ticks take about 1199.86 s: the counter wraps, and the arithmetic does not trap
        // even after centuries.
        clock.advance(1_200_000_000_000 - 1_500_000_000)
        let ticks = UInt64(1200) * 3_579_545
        #expect(UInt64(timer.counter) == ticks & 0xFFFF_FFFF)
        clock.advance(UInt64(1) << 62)
        _ = timer.counter
    }

    @Test("a snapshot saves the count; a timer restored from it, made later, goes on from there")
    func snapshot() throws {
        let clock = Clock()
        let timer = ACPIPMTimerDevice(clock: clock.read)
        clock.advance(2_000_000_000)
        var writer = SnapshotWriter()
        timer.saveState(to: &writer)
        // An hour later, a new machine: its timer starts at 0, then restores.
        clock.advance(3_600_000_000_000)
        let restored = ACPIPMTimerDevice(clock: clock.read)
        var reader = SnapshotReader(writer.bytes)
        try restored.restoreState(from: &reader)
        #expect(restored.counter == 7_159_090)
        clock.advance(1_000_000_000)
        #expect(restored.counter == 7_159_090 + 3_579_545)
        // A file's count near 2^64 wraps instead of trapping.
        var far = SnapshotWriter()
        far.write(UInt64.max)
        var farReader = SnapshotReader(far.bytes)
        try restored.restoreState(from: &farReader)
        clock.advance(1_000_000_000)
        #expect(restored.counter == UInt32(truncatingIfNeeded: UInt64.max &+ 3_579_545))
        // Truncated state is refused.
        var short = SnapshotReader([1, 2, 3])
        #expect(throws: SnapshotError.self) { try restored.restoreState(from: &short) }
    }

    @Test("reads of width 1, 2 and 4 see the counter's lanes from the port on; past the block 0xFF; writes do nothing")
    func lanes() {
        let clock = Clock()
        let timer = ACPIPMTimerDevice(clock: clock.read)
        clock.advance(1_000_000_000)  // 3,579,545 = 0x0036_9E99
        #expect(timer.portRead(port: 0xB008, offset: 0, width: 1) == 0x99)
        #expect(timer.portRead(port: 0xB008, offset: 0, width: 2) == 0x9E99)
        #expect(timer.portRead(port: 0xB009, offset: 1, width: 2) == 0x369E)
        #expect(timer.portRead(port: 0xB00A, offset: 2, width: 4) == 0xFFFF_0036)
        #expect(timer.portWrite(port: 0xB008, offset: 0, width: 4, value: 0) == .continue)
        #expect(timer.counter == 3_579_545)
    }

    @Test("placed at 0xB008 as the FADT's PM timer block")
    func placement() throws {
        let placed = try ACPIPMTimerDevice().platformDevice()
        #expect(placed.ports.map(\.range) == [try PortRange(base: 0xB008, count: 4)])
        #expect(placed.fixedHardware == [.pmTimer(port: 0xB008)])
    }
}
