// Public only so that the clock below can be inlined into the vCPU loop, as it was when
// it lived in the same module.
public import Glibc
import Synchronization

/// Small host helpers over libc, so the VMM needs no Foundation.
///
/// This module is where the machine facade, the devices, the loaders and the tools meet the
/// host's system calls: every raw pointer they would otherwise need lives here, each behind
/// a function that takes and returns values.
public enum HostIO {
    /// Writes all of `bytes` to `fd`, retrying on EINTR and short writes, with one
    /// `write(2)` per try rather than per byte. Gives up silently on other errors (a closed
    /// terminal must not stop the guest), and whenever `giveUp` says so: it is asked before
    /// every try but the first, so a caller that sets its condition and then interrupts the
    /// writer with a signal (again, if the first one came just before the writer blocked)
    /// gets it out of a full pipe, while bytes that can go out at once always do (a byte
    /// the guest sent just as its machine pauses for a snapshot is not lost). By default
    /// it gives up when the calling thread's `WriteGiveUp` condition holds (on a vCPU
    /// thread: its machine is being paused or stopped). Returns whether every byte was
    /// written.
    @discardableResult
    public static func write(_ bytes: Span<UInt8>, to fd: Int32, giveUp: () -> Bool = { WriteGiveUp.holds }) -> Bool {
        var done = 0
        var tried = false
        while done < bytes.count {
            if tried, giveUp() { return false }
            tried = true
            // SAFETY: write(2) reads at most count - done bytes from offset done (< count) of
            // the span's buffer, which is valid for the closure's duration.
            let n = unsafe bytes.withUnsafeBufferPointer { buffer in
                unsafe Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            done += n
        }
        return true
    }

    /// Writes all of `bytes` to `fd`, as `write(_:to:giveUp:)` does for a span.
    @discardableResult
    public static func write(_ bytes: [UInt8], to fd: Int32, giveUp: () -> Bool = { WriteGiveUp.holds }) -> Bool {
        write(bytes.span, to: fd, giveUp: giveUp)
    }

    /// Writes one line to standard error.
    public static func printError(_ line: String) {
        write(Array((line + "\n").utf8), to: 2)
    }

    /// Reads up to `buffer.count` bytes from `fd` into the start of `buffer`, retrying on
    /// EINTR. Returns the number read: 0 at end of input, -1 on an error.
    package static func read(from fd: Int32, into buffer: inout [UInt8]) -> Int {
        while true {
            // SAFETY: read(2) writes at most count bytes into the array's buffer, valid for the call.
            let n = unsafe buffer.withUnsafeMutableBytes { unsafe Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            return n
        }
    }

    /// Fills `buffer[0..<count]` from the kernel's random source (`getentropy(3)`, that is
    /// `getrandom(2)` in pieces of at most 256 bytes; it blocks only before the pool is
    /// first seeded). Returns how many bytes it filled: `count`, or fewer if a call failed.
    package static func fillRandom(_ buffer: inout [UInt8], count: Int) -> Int {
        let count = min(max(count, 0), buffer.count)
        var done = 0
        while done < count {
            let piece = min(256, count - done)
            // SAFETY: getentropy writes exactly `piece` bytes from offset done, and
            // done + piece <= count <= buffer.count.
            let rc = unsafe buffer.withUnsafeMutableBytes { unsafe getentropy($0.baseAddress! + done, piece) }
            guard rc == 0 else { break }
            done += piece
        }
        return done
    }

    /// Removes `path` (a socket file left by a server that stopped); a missing file is fine.
    package static func removeFile(_ path: String) {
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        _ = unsafe unlink(path)
    }

    /// Names the process (its main thread; at most 15 bytes, as Linux keeps) as `ps` and
    /// `/proc/PID/comm` show it. Threads started afterwards inherit the name.
    package static func nameProcess(_ name: String) {
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        let fd = unsafe Glibc.open("/proc/self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let bytes = Array(name.utf8.prefix(15))
        // SAFETY: the buffer is a local array that lives for the call; write reads at most
        // `bytes.count` bytes of it.
        _ = unsafe bytes.withUnsafeBytes { unsafe Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// When a launcher bound the API socket and passed it down, removes its file when the
    /// process exits, whatever the way (an argument error included): a process that ends
    /// leaves no socket behind. Called once at start-up, before the variables are taken.
    package static func removeInheritedSocketAtExit() {
        // SAFETY: getenv's pointer points into the environment and is copied at once.
        guard let path = unsafe getenv("SWIFTVISOR_API_SOCKET_PATH").map({ unsafe String(cString: $0) }) else {
            return
        }
        inheritedSocketPath.withLock { $0 = path }
        _ = atexit {
            if let path = inheritedSocketPath.withLock({ $0 }) { HostIO.removeFile(path) }
        }
    }

    /// The listening Unix socket a launcher bound at `path` and passed down (its descriptor
    /// and path in `SWIFTVISOR_API_SOCKET_FD` and `SWIFTVISOR_API_SOCKET_PATH`), or nil
    /// when there is none, it was bound at another path, or the descriptor is not a
    /// listening socket. The variables are removed either way; a socket for another path
    /// is closed and its file removed, so nothing the launcher made is left behind.
    package static func takeInheritedListeningSocket(path: String) -> Int32? {
        // SAFETY: getenv's pointers point into the environment and are copied into Strings
        // at once, before unsetenv below changes it; the names are NUL-terminated copies
        // that live for each call. Called once, on one thread, at start-up.
        guard let text = unsafe getenv("SWIFTVISOR_API_SOCKET_FD").map({ unsafe String(cString: $0) }) else {
            return nil
        }
        let inheritedPath = unsafe getenv("SWIFTVISOR_API_SOCKET_PATH").map { unsafe String(cString: $0) }
        _ = unsafe unsetenv("SWIFTVISOR_API_SOCKET_FD")
        _ = unsafe unsetenv("SWIFTVISOR_API_SOCKET_PATH")
        guard let fd = Int32(text), fd > 2 else { return nil }
        var listening: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        // SAFETY: `listening` and `size` are local and live for the call; the kernel writes
        // at most `size` bytes into `listening`.
        let status = unsafe getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size)
        guard status == 0, listening == 1, inheritedPath == path else {
            if status == 0 {
                close(fd)
                if let inheritedPath { removeFile(inheritedPath) }
            }
            return nil
        }
        // Close-on-exec from now on: nothing this process starts should hold the socket.
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Opens an existing file or FIFO to write the guest's serial output to, appending,
    /// without creating it (Firecracker's `serial_out_path`). A FIFO that no process reads
    /// yet is opened for reading and writing, which keeps it open until a reader comes.
    /// Writes block as they do on standard output; the machine gives up a blocked write
    /// when it pauses or stops. The caller closes the descriptor.
    package static func openOutputFile(_ path: String) throws(HostFileError) -> Int32 {
        try openForAppending(path, blockingWrites: true)
    }

    /// Opens an existing file or FIFO for appending, without creating it and without
    /// blocking in the open, as Firecracker opens its log, metrics and serial outputs. A
    /// FIFO that no process reads yet cannot be opened write-only (ENXIO), so it is then
    /// opened for reading and writing, which keeps it open until a reader comes. With
    /// `blockingWrites`, writes block from then on; without, they fail with EAGAIN when
    /// the reader lags (a log must never stall the VMM).
    package static func openForAppending(_ path: String, blockingWrites: Bool) throws(HostFileError) -> Int32 {
        // SAFETY: open(2) reads the path, a NUL-terminated copy valid for the call; no O_CREAT.
        var fd = unsafe Glibc.open(path, O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC)
        if fd < 0, errno == ENXIO {
            // SAFETY: as above.
            fd = unsafe Glibc.open(path, O_RDWR | O_APPEND | O_NONBLOCK | O_CLOEXEC)
        }
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        if blockingWrites { _ = fcntl(fd, F_SETFL, O_APPEND) }
        return fd
    }

    /// Closes a descriptor this process opened (`openOutputFile`).
    package static func closeDescriptor(_ fd: Int32) { _ = close(fd) }

    /// Checks that `path` opens for reading and is a regular file, without reading it: a
    /// control-API client naming a kernel learns at once if it cannot be used.
    package static func checkReadableFile(_ path: String) throws(HostFileError) {
        let (fd, _) = try openRegularFile(path)
        close(fd)
    }

    /// Opens `path` read-only and checks that it is a regular file; returns the descriptor
    /// (the caller closes it) and the file's size.
    private static func openRegularFile(_ path: String) throws(HostFileError) -> (Int32, Int) {
        let fd = unsafe open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        var info = stat()
        // SAFETY: fstat(2) writes only `info`, a local that outlives the call.
        guard unsafe fstat(fd, &info) == 0 else {
            let error = HostFileError(errno: errno)
            close(fd)
            throw error
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw HostFileError(reason: "not a regular file")
        }
        return (fd, Int(info.st_size))
    }

    /// Opens a regular file read-only; the caller closes the descriptor.
    package static func openReadOnly(_ path: String) throws(HostFileError) -> Int32 {
        try openRegularFile(path).0
    }

    /// Reads a whole regular file, refusing anything larger than `limit` bytes. The error is
    /// the reason, for the caller's own error type.
    /// `limitName` says what the limit is, for the error ("guest RAM").
    package static func readRegularFile(_ path: String, limit: Int, limitName: String = "guest RAM") throws(HostFileError)
        -> [UInt8]
    {
        let (fd, size) = try openRegularFile(path)
        defer { close(fd) }
        guard size <= limit else {
            throw HostFileError(reason: "\(size) bytes is larger than \(limitName)")
        }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < bytes.count {
            // SAFETY: read(2) writes at most count - done bytes starting at offset done (< count).
            let n = unsafe bytes.withUnsafeMutableBytes { unsafe Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                throw n == 0 ? HostFileError(reason: "file shrank while reading") : HostFileError(errno: errno)
            }
            done += n
        }
        return bytes
    }

    /// Creates or truncates `path` and writes `bytes` to it.
    package static func createFile(_ path: String, _ bytes: [UInt8]) throws(HostFileError) {
        let fd = unsafe open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            // SAFETY: write(2) reads at most count - done bytes starting at offset done (< count).
            let n = unsafe bytes.withUnsafeBytes { unsafe Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw HostFileError(errno: errno) }
            done += n
        }
    }

    /// Writes `bytes` to a new file beside `path` and renames it over `path`, so that a
    /// reader finds either the old file or the whole new one, never a part.
    package static func replaceFile(_ path: String, _ bytes: [UInt8]) throws(HostFileError) {
        let temporary = path + ".partial"
        try createFile(temporary, bytes)
        // SAFETY: rename(2) reads two NUL-terminated copies of the paths, valid for the call.
        guard unsafe rename(temporary, path) == 0 else {
            let error = HostFileError(errno: errno)
            _ = unsafe unlink(temporary)
            throw error
        }
    }

    /// Creates or truncates `path` and keeps it open for `HostOutputFile.replaceContents`,
    /// so that a file can be written again after the thread has given up `open`.
    package static func openOutputFile(_ path: String) throws(HostFileError) -> HostOutputFile {
        let fd = unsafe open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        return HostOutputFile(fd: fd)
    }

    /// Creates or truncates `path` for reading and writing (a snapshot's memory file,
    /// written with holes) and keeps it open.
    package static func openReadWriteFile(_ path: String) throws(HostFileError) -> HostOutputFile {
        let fd = unsafe open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        return HostOutputFile(fd: fd)
    }

    /// Opens an existing regular file for reading and writing, without truncating it.
    package static func openExistingForWriting(_ path: String) throws(HostFileError) -> HostOutputFile {
        let fd = unsafe open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        return HostOutputFile(fd: fd)
    }

    /// Physical RAM of the host in bytes.
    public static var physicalMemory: UInt64 {
        UInt64(max(0, sysconf(Int32(_SC_PHYS_PAGES)))) * UInt64(max(0, sysconf(Int32(_SC_PAGESIZE))))
    }

    /// Monotonic time in nanoseconds. Inlinable: the vCPU loop reads it around each exit
    /// when statistics or a trace are on.
    @inlinable
    public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        // SAFETY: clock_gettime(2) writes only `t`, a local that outlives the call.
        _ = unsafe clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    /// The CPU time this process has used so far, all threads, in nanoseconds.
    package static func processCPUNanoseconds() -> UInt64 {
        var t = timespec()
        // SAFETY: clock_gettime(2) writes only `t`, a local that outlives the call.
        _ = unsafe clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    /// The host's real time: whole seconds since 1970-01-01 00:00:00 UTC.
    package static func realtimeSeconds() -> Int64 {
        var t = timespec()
        // SAFETY: clock_gettime(2) writes only `t`, a local that outlives the call.
        _ = unsafe clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec)
    }

    /// Sleeps for about `nanoseconds` (less if a signal interrupts the sleep).
    package static func sleep(nanoseconds: UInt64) {
        var pause = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        // SAFETY: nanosleep(2) reads only `pause`, a local that outlives the call; no remainder is asked for.
        _ = unsafe nanosleep(&pause, nil)
    }

    /// `strerror` text followed by the errno number, e.g. "Permission denied (errno 13)".
    package static func errnoText(_ code: Int32) -> String {
        // SAFETY: strerror returns a NUL-terminated string valid until the next call on this
        // thread; it is copied into a String at once.
        if let text = unsafe strerror(code) {
            return "\(unsafe String(cString: text)) (errno \(code))"
        }
        return "errno \(code)"
    }
}

/// Why a host file could not be read or written: the text a user reads after the path.
/// A file opened for writing, whose whole contents are replaced on each write; closed when
/// released.
package final class HostOutputFile: Sendable {
    private let fd: Int32

    fileprivate init(fd: Int32) { self.fd = fd }

    /// The open descriptor, for writers that place bytes themselves (a memory file).
    package var descriptor: Int32 { fd }

    deinit { close(fd) }

    /// Makes `bytes` the file's whole contents: truncates it, then writes from offset 0.
    package func replaceContents(_ bytes: [UInt8]) throws(HostFileError) {
        guard ftruncate(fd, 0) == 0 else { throw HostFileError(errno: errno) }
        var done = 0
        while done < bytes.count {
            // SAFETY: pwrite(2) reads at most count - done bytes starting at offset done
            // (< count), and writes them at file offset done.
            let n = unsafe bytes.withUnsafeBytes {
                unsafe pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(done))
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw HostFileError(errno: errno) }
            done += n
        }
    }
}

package struct HostFileError: Error {
    package let reason: String
    package init(reason: String) { self.reason = reason }
    package init(errno code: Int32) { self.reason = HostIO.errnoText(code) }
}

/// The launcher's socket file, removed at exit (`HostIO.removeInheritedSocketAtExit`).
private let inheritedSocketPath = Mutex<String?>(nil)
