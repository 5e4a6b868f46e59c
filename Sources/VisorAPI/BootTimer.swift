import Synchronization
package import SwiftVisor
import VisorHost

/// Firecracker's boot timer (`--boot-timer`): a guest that writes the byte 123 to port
/// 0x3F0 says it has booted, and the time since the VM was built, wall clock and the
/// process's CPU time, goes to the log as Firecracker words it and to the metrics
/// (`boot_timer`). Only the first signal counts; any other write is ignored, and reads
/// return all ones, as from an unclaimed port. Not part of a restored VM (nor in
/// Firecracker's).
package final class BootTimer: PortDevice {
    package static let port: UInt16 = 0x3F0
    package static let magic: UInt32 = 123

    private let startNanoseconds: UInt64
    private let startCPUNanoseconds: UInt64
    /// Wall and CPU microseconds to the signal, each + 1 so that 0 means "not yet".
    private let wallMicroseconds = Atomic<UInt64>(0)
    private let cpuMicroseconds = Atomic<UInt64>(0)
    private let log: @Sendable (String) -> Void

    package init(log: @escaping @Sendable (String) -> Void) {
        startNanoseconds = HostIO.monotonicNanoseconds()
        startCPUNanoseconds = HostIO.processCPUNanoseconds()
        self.log = log
    }

    /// The guest's boot time in microseconds, wall clock and CPU, once it signalled.
    package var bootTime: (wall: UInt64, cpu: UInt64)? {
        let wall = wallMicroseconds.load(ordering: .acquiring)
        guard wall > 0 else { return nil }
        return (wall - 1, cpuMicroseconds.load(ordering: .relaxed) - 1)
    }

    package func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { UInt32.max }

    package func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        guard width == 1, offset == 0, value == Self.magic, wallMicroseconds.load(ordering: .relaxed) == 0 else {
            return .continue
        }
        let wall = (HostIO.monotonicNanoseconds() &- startNanoseconds) / 1000
        let cpu = (HostIO.processCPUNanoseconds() &- startCPUNanoseconds) / 1000
        cpuMicroseconds.store(cpu + 1, ordering: .relaxed)
        guard wallMicroseconds.compareExchange(expected: 0, desired: wall + 1, ordering: .releasing).exchanged else {
            return .continue
        }
        log(Self.line(wallMicroseconds: wall, cpuMicroseconds: cpu))
        return .continue
    }

    /// Firecracker's log line for the boot time.
    package static func line(wallMicroseconds wall: UInt64, cpuMicroseconds cpu: UInt64) -> String {
        func padded(_ value: UInt64) -> String {
            let text = String(value)
            return String(repeating: " ", count: max(0, 6 - text.count)) + text
        }
        return "Guest-boot-time = \(padded(wall)) us \(wall / 1000) ms, \(padded(cpu)) CPU us \(cpu / 1000) CPU ms"
    }
}
