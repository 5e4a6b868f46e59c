internal import CHost
import Glibc

/// A Unix stream socket listening on a path it created, for the vsock device's host side.
/// Closes its descriptor and removes its path when released (`removesPath`), so that the
/// next machine can listen there again.
package final class HostUnixListener: Sendable {
    /// The longest path a Unix socket address holds (sun_path less its NUL).
    package static let maximumPathLength = Int(CHOST_UNIX_PATH_MAX)
    /// The listening descriptor (non-blocking), valid until deinit.
    package let descriptor: Int32
    package let path: String

    private init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit {
        close(descriptor)
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        _ = unsafe unlink(path)
    }

    /// Listens on `path`, which must not exist (the error says so) and must fit a socket
    /// address (`maximumPathLength` bytes).
    package static func listen(path: String, backlog: Int32 = 64) throws(HostFileError) -> HostUnixListener {
        guard path.utf8.count <= maximumPathLength else {
            throw HostFileError(reason: "longer than the \(maximumPathLength) bytes a socket path may have")
        }
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        let fd = unsafe chost_unix_listen(path, backlog)
        guard fd >= 0 else {
            if -fd == EADDRINUSE { throw HostFileError(reason: "the path exists") }
            throw HostFileError(errno: -fd)
        }
        return HostUnixListener(descriptor: fd, path: path)
    }
}

/// What a non-blocking socket call did.
package enum SocketTransfer: Equatable, Sendable {
    /// This many bytes moved (for a receive, 0 is the end of input).
    case transferred(Int)
    /// Nothing moved: the socket would block.
    case wouldBlock
    /// The connection failed (reset, broken pipe, or another error).
    case failed
}

/// What an accept found.
package enum SocketAccept: Equatable, Sendable {
    case accepted(Int32)
    /// No connection is waiting.
    case none
    /// Accepting failed (out of descriptors, say).
    case failed
}

/// Non-blocking Unix stream socket calls, by descriptor, for the vsock device's host side.
package enum HostSocket {
    /// A connected socket to the listener at `path`, or nil when nothing listens there (or
    /// its backlog is full).
    package static func connect(path: String) -> Int32? {
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        let fd = unsafe chost_unix_connect(path)
        return fd >= 0 ? fd : nil
    }

    /// Accepts a waiting connection on a listening socket (non-blocking, close-on-exec).
    package static func accept(_ listener: Int32) -> SocketAccept {
        let fd = chost_accept(listener)
        if fd >= 0 { return .accepted(fd) }
        return -fd == EAGAIN || -fd == EWOULDBLOCK ? .none : .failed
    }

    /// Sends `bytes` (some of them, perhaps), without SIGPIPE on a closed peer.
    package static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> SocketTransfer {
        guard !bytes.isEmpty else { return .transferred(0) }
        while true {
            // SAFETY: send(2) reads at most count bytes from the slice's buffer, valid for the call.
            let n = unsafe bytes.withUnsafeBytes { unsafe Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n >= 0 { return .transferred(n) }
            if errno == EINTR { continue }
            return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed
        }
    }

    /// Receives at most `count` bytes into the start of `buffer` (`count` is capped at its
    /// size); with `peek`, leaves them in the socket.
    package static func receive(
        _ fd: Int32, into buffer: inout [UInt8], at offset: Int = 0, count: Int, peek: Bool = false
    ) -> SocketTransfer {
        guard offset >= 0, offset <= buffer.count else { return .failed }
        let count = min(max(count, 0), buffer.count - offset)
        guard count > 0 else { return .transferred(0) }
        while true {
            // SAFETY: recv(2) writes at most count (<= buffer.count - offset) bytes into the
            // array's buffer from offset on, which lies inside it (checked above).
            let n = unsafe buffer.withUnsafeMutableBytes {
                unsafe Glibc.recv(fd, $0.baseAddress! + offset, count, peek ? Int32(MSG_PEEK) : 0)
            }
            if n >= 0 { return .transferred(n) }
            if errno == EINTR { continue }
            return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed
        }
    }

    /// Ends the output side (the peer reads the end of input); input stays open.
    package static func shutdownOutput(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes the descriptor.
    package static func close(_ fd: Int32) { _ = Glibc.close(fd) }
}
