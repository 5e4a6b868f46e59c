internal import CHost
import Glibc

/// A descriptor that carries whole Ethernet frames, each behind a 12-byte virtio-net header:
/// a TAP interface opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and `TUNSETVNETHDRSZ`
/// 12, or (for tests and fuzzing) one end of a `SOCK_SEQPACKET` socket pair, which keeps
/// message boundaries the same way. Non-blocking; owned, and closed on deinit. Opened once,
/// by the machine builder, before any seccomp filter; frames then move with read(2) and
/// write(2) alone.
package final class HostTap: Sendable {
    /// The size of the virtio-net header in front of every frame (virtio 1.2, 5.1.6, with
    /// `num_buffers`, as VIRTIO_F_VERSION_1 has it).
    package static let headerSize = 12
    /// The longest interface name (IFNAMSIZ less the NUL).
    package static let maximumNameLength = 15

    /// The open descriptor, valid until deinit.
    package let fd: Int32
    /// The interface's name ("" for a socket pair's end).
    package let name: String

    private init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    deinit { close(fd) }

    /// Opens the TAP interface `name`. An existing interface is attached (its owner may
    /// restrict who can); a missing one is created, which needs CAP_NET_ADMIN and lasts
    /// only while it is open. The error is a one-line reason.
    package static func open(_ name: String) throws(HostFileError) -> HostTap {
        guard !name.isEmpty, name.utf8.count <= maximumNameLength, !name.contains("/"), !name.contains(" ") else {
            throw HostFileError(reason: "'\(name)' is not an interface name (1 to \(maximumNameLength) bytes, no '/' or space)")
        }
        var step: Int32 = 0
        // SAFETY: the C function reads the NUL-terminated name (checked above to fit
        // IFNAMSIZ) and writes one Int32 through `step`, a local that outlives the call.
        let fd = unsafe chost_tap_open(name, Int32(headerSize), &step)
        guard fd < 0 else { return HostTap(fd: fd, name: name) }
        let code = -fd
        switch (step, code) {
        case (0, _):
            throw HostFileError(reason: "TAP \(name): cannot open /dev/net/tun: \(HostIO.errnoText(code))")
        case (1, EPERM):
            if exists(name) {
                throw HostFileError(reason: "TAP \(name) exists but this user may not attach to it (\(HostIO.errnoText(code)))")
            }
            throw HostFileError(
                reason:
                    "TAP \(name) does not exist, and creating it needs CAP_NET_ADMIN (create it first: ip tuntap add \(name) mode tap)"
            )
        case (1, EBUSY):
            throw HostFileError(reason: "TAP \(name) is already in use by another process")
        case (1, EINVAL):
            throw HostFileError(reason: "\(name) exists but is not a single-queue TAP interface (\(HostIO.errnoText(code)))")
        default:
            throw HostFileError(reason: "cannot set up TAP \(name): \(HostIO.errnoText(code))")
        }
    }

    /// Whether a network interface called `name` exists.
    package static func exists(_ name: String) -> Bool {
        // SAFETY: the C function only reads the NUL-terminated name.
        unsafe chost_interface_exists(name) != 0
    }

    /// A connected, non-blocking `SOCK_SEQPACKET` pair standing in for a TAP: the device's
    /// end, and the host's (the peer's), each closed on its deinit.
    package static func socketPair() throws(HostFileError) -> (tap: HostTap, peer: HostTap) {
        var fds: [Int32] = [-1, -1]
        // SAFETY: socketpair(2) writes two descriptors into the array's two elements.
        let rc = unsafe fds.withUnsafeMutableBufferPointer {
            let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            return unsafe socketpair(AF_UNIX, type, 0, $0.baseAddress!)
        }
        guard rc == 0 else { throw HostFileError(errno: errno) }
        return (HostTap(fd: fds[0], name: ""), HostTap(fd: fds[1], name: ""))
    }

    /// What `receive` and `send` report besides a length.
    package enum Outcome: Equatable, Sendable {
        /// A frame of this many bytes (header included) was read or written.
        case done(Int)
        /// Nothing to read, or no room to write (EAGAIN).
        case wouldBlock
        /// Another error, as errno.
        case failed(Int32)
    }

    /// Reads one frame (header and all) into the start of `buffer`, retrying on EINTR. A
    /// frame longer than the buffer is cut to it by the kernel: a caller that must know
    /// leaves one spare byte and treats a full buffer as too long.
    package func receive(into buffer: inout [UInt8]) -> Outcome {
        let n = HostIO.read(from: fd, into: &buffer)
        if n >= 0 { return .done(n) }
        let code = errno
        return code == EAGAIN || code == EWOULDBLOCK ? .wouldBlock : .failed(code)
    }

    /// Writes `buffer[0..<count]` as one frame, retrying on EINTR.
    package func send(_ buffer: [UInt8], count: Int) -> Outcome {
        let count = min(max(count, 0), buffer.count)
        while true {
            // SAFETY: write(2) reads `count` bytes, at most the array's length, from its start.
            let n = unsafe buffer.withUnsafeBytes { unsafe Glibc.write(fd, $0.baseAddress, count) }
            if n >= 0 { return .done(n) }
            let code = errno
            if code == EINTR { continue }
            return code == EAGAIN || code == EWOULDBLOCK ? .wouldBlock : .failed(code)
        }
    }
}
