import Glibc
import VisorKVM

/// Small host helpers over libc, so the VMM needs no Foundation.
public enum HostIO {
    /// Writes all of `bytes` to `fd`, retrying on EINTR and short writes; gives up silently
    /// on other errors (a closed terminal must not stop the guest), and on EINTR when
    /// `giveUp` says so (a VM being stopped must not stay blocked on a full pipe).
    public static func write(_ bytes: some Collection<UInt8>, to fd: Int32, giveUp: () -> Bool = { false }) {
        var remaining = Array(bytes)[...]
        while !remaining.isEmpty {
            // SAFETY: write(2) reads at most count bytes of the buffer, valid for the call.
            let n = remaining.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR, !giveUp() { continue }
                return
            }
            remaining = remaining.dropFirst(n)
        }
    }

    /// Writes one line to standard error.
    public static func printError(_ line: String) {
        write(Array((line + "\n").utf8), to: 2)
    }

    /// Reads a whole regular file, refusing anything larger than `limit` bytes.
    public static func readFile(_ path: String, limit: Int) throws(MachineError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotReadFile(path: path, reason: errnoText(errno)) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .cannotReadFile(path: path, reason: errnoText(errno)) }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw .cannotReadFile(path: path, reason: "not a regular file")
        }
        guard info.st_size <= limit else {
            throw .cannotReadFile(path: path, reason: "\(info.st_size) bytes is larger than guest RAM")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var done = 0
        while done < bytes.count {
            // SAFETY: read(2) writes at most count - done bytes starting at offset done (< count).
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .cannotReadFile(path: path, reason: n == 0 ? "file shrank while reading" : errnoText(errno)) }
            done += n
        }
        return bytes
    }

    /// Creates or truncates `path` and writes `bytes` to it.
    public static func writeFile(_ path: String, _ bytes: [UInt8]) throws(MachineError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .cannotWriteFile(path: path, reason: errnoText(errno)) }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            // SAFETY: write(2) reads at most count - done bytes starting at offset done (< count).
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .cannotWriteFile(path: path, reason: errnoText(errno)) }
            done += n
        }
    }

    /// Physical RAM of the host in bytes.
    public static var physicalMemory: UInt64 {
        UInt64(max(0, sysconf(Int32(_SC_PHYS_PAGES)))) * UInt64(max(0, sysconf(Int32(_SC_PAGESIZE))))
    }

    /// Monotonic time in nanoseconds.
    public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}
