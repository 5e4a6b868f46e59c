internal import CSeccomp
import Glibc

/// The seccomp-BPF allowlists of the threads that run guest-facing code, as Firecracker
/// confines its vCPU threads: once set-up is done, a thread may make only the system calls
/// its role needs, and any other fails with `EPERM` (the thread lives on, and the code
/// that made the call sees an ordinary error). The lists are in the C shim, `cseccomp.c`,
/// in one place; the README's threat model says what they hold.
///
/// A filter applies to the calling thread only, and for the rest of its life: install one
/// on a thread that runs guest-facing code and nothing else.
public enum Seccomp {
    /// Whose allowlist a thread gets.
    public enum Role: Sendable {
        /// A vCPU thread: `KVM_RUN` and the vCPU ioctls the exit path uses, console and
        /// trace output, locks, memory management, signals and exit.
        case vcpu
        /// The console thread: reading standard input, raising COM1's interrupt line
        /// (`KVM_IRQ_LINE`), and what every thread needs.
        case console
        /// The thread that builds and runs machines once set-up is done (the command
        /// line's main thread after its first machine, and its signal thread): the KVM
        /// system, VM and vCPU ioctls on descriptors it already holds, starting threads
        /// (which inherit this filter beneath their own), waiting for signals, restoring
        /// the terminal, rewriting an already open file. No `open`, `socket`, `execve`,
        /// `kill` or `ptrace`; `prctl` only for no-new-privileges.
        case main
        /// `main` for a command with a vsock device: also the Unix socket calls (`socket`
        /// for `AF_UNIX` only, `accept4`, `connect`, `sendto`, `recvfrom`, `shutdown`) that
        /// the I/O threads of machines built after a guest reset inherit, and `unlink` for
        /// the device's listening socket when the command ends.
        case mainWithVsock
        /// An I/O thread: epoll, eventfd reads and writes, the device backends' file
        /// calls (`pread64`, `pwrite64`, `fsync`, `fdatasync`) and the vsock device's Unix
        /// sockets (`socket` for `AF_UNIX` only, `accept4`, `connect`, `sendto`,
        /// `recvfrom`, `shutdown`, `close`); no `ioctl`.
        case io

        var c: cseccomp_role {
            switch self {
            case .vcpu: CSECCOMP_ROLE_VCPU
            case .console: CSECCOMP_ROLE_CONSOLE
            case .main: CSECCOMP_ROLE_MAIN
            case .io: CSECCOMP_ROLE_IO
            case .mainWithVsock: CSECCOMP_ROLE_MAIN_VSOCK
            }
        }
    }

    /// The errno a refused system call fails with.
    public static let refusedErrno = Int32(CSECCOMP_REFUSED_ERRNO)

    /// Sets `PR_SET_NO_NEW_PRIVS` and installs `role`'s filter on the calling thread; on
    /// failure throws the errno of the step that failed. The corresponding C functions
    /// are `prctl` and `seccomp`.
    public static func install(_ role: Role) throws(SeccompError) {
        let rc = cseccomp_install(role.c)
        if rc != 0 { throw SeccompError(errno: -rc) }
    }

    /// Whether `role`'s allowlist holds system call number `number` (ioctl requests are
    /// filtered further by request, and `prctl` by option).
    public static func allows(_ role: Role, syscall number: Int) -> Bool {
        cseccomp_allows(role.c, number) != 0
    }
}

/// Installing a seccomp filter failed.
public struct SeccompError: Error, Equatable, CustomStringConvertible {
    public let errno: Int32
    public init(errno: Int32) { self.errno = errno }
    public var description: String { "cannot install the seccomp filter: \(errnoText(errno))" }
}
