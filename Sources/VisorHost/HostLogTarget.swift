import Glibc

/// Where Firecracker-style log lines or metrics lines go: standard error, or a file or FIFO
/// that must already exist. Each line is written with as few `write(2)` calls as the kernel
/// allows and never waits: a full FIFO or a failed write loses the line, which the caller
/// counts. Closed when released (standard error is never closed).
package final class HostLogTarget: Sendable {
    private let fd: Int32
    private let owned: Bool

    private init(fd: Int32, owned: Bool) {
        self.fd = fd
        self.owned = owned
    }

    deinit { if owned { _ = close(fd) } }

    /// The process's standard error.
    package static let standardError = HostLogTarget(fd: 2, owned: false)

    /// Opens an existing file or FIFO for appending, without blocking, without creating it
    /// (`HostIO.openForAppending`): a write that would block fails and the line is counted
    /// as missed, as in Firecracker.
    package static func open(_ path: String) throws(HostFileError) -> HostLogTarget {
        HostLogTarget(fd: try HostIO.openForAppending(path, blockingWrites: false), owned: true)
    }

    /// Writes `bytes` (one whole line); false when any part of it could not be written.
    package func write(_ bytes: [UInt8]) -> Bool {
        HostIO.write(bytes, to: fd, giveUp: { false })
    }
}

/// A moment of the host's wall clock, broken down in the host's local time zone.
package struct HostLocalTime: Sendable, Equatable {
    package var year: Int
    package var month: Int
    package var day: Int
    package var hour: Int
    package var minute: Int
    package var second: Int
    package var nanosecond: Int

    package init(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, nanosecond: Int) {
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
        self.nanosecond = nanosecond
    }

    /// The host's real time now, in its local time zone (`localtime_r(3)`).
    package static func now() -> HostLocalTime {
        let (seconds, nanoseconds) = HostIO.realtime()
        var time = time_t(seconds)
        // SAFETY: `tm` is unsafe for its time-zone name pointer, which is never read here:
        // only the integer fields are.
        var parts = unsafe tm()
        // SAFETY: localtime_r reads `time` and writes only `parts`, locals that outlive the call.
        if unsafe localtime_r(&time, &parts) == nil {
            return HostLocalTime(year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0, nanosecond: nanoseconds)
        }
        // SAFETY: integer fields only (see above).
        let (year, month, day, hour, minute, second) = unsafe (
            parts.tm_year, parts.tm_mon, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec
        )
        return HostLocalTime(
            year: Int(year) + 1900, month: Int(month) + 1, day: Int(day), hour: Int(hour), minute: Int(minute),
            second: Int(second), nanosecond: nanoseconds)
    }
}

extension HostIO {
    /// The host's real time: seconds since 1970-01-01 00:00:00 UTC and the nanoseconds
    /// past that second.
    package static func realtime() -> (seconds: Int64, nanoseconds: Int) {
        var t = timespec()
        // SAFETY: clock_gettime(2) writes only `t`, a local that outlives the call.
        _ = unsafe clock_gettime(CLOCK_REALTIME, &t)
        return (Int64(t.tv_sec), Int(t.tv_nsec))
    }
}
