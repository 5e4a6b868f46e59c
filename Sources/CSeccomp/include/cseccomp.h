// A seccomp-BPF allowlist per thread role, and the call that installs it on the calling
// thread. The syscall lists live in cseccomp.c, in one place; VisorKVM's Seccomp.swift is
// the Swift face and the only importer.
#ifndef CSECCOMP_H
#define CSECCOMP_H

/// The role of the thread a filter is for.
typedef enum {
    /// A vCPU thread, from its first KVM_RUN on: the exit loop, device handlers, the
    /// instruction emulator, console output.
    CSECCOMP_ROLE_VCPU = 1,
    /// The console thread: reads standard input and feeds COM1.
    CSECCOMP_ROLE_CONSOLE = 2,
    /// The command line's main thread once its first machine is built, and its signal
    /// thread: builds later machines (a guest reset) through the open /dev/kvm, starts and
    /// joins their threads, restores the terminal, writes the statistics file it opened
    /// before. Threads it starts inherit this filter under their own.
    CSECCOMP_ROLE_MAIN = 3,
    /// An I/O thread: waits on eventfds with epoll and serves device queues (guest memory,
    /// disk files, the host's random source, vsock's Unix sockets), signalling interrupts through irqfds.
    CSECCOMP_ROLE_IO = 4,
    /// The main role of a command with a vsock device: beyond CSECCOMP_ROLE_MAIN, the
    /// socket calls the I/O threads of later machines inherit, and unlink for the
    /// listener's path.
    CSECCOMP_ROLE_MAIN_VSOCK = 5,
} cseccomp_role;

/// What a refused system call returns: -1 with this errno (the thread lives on).
#define CSECCOMP_REFUSED_ERRNO 1 /* EPERM */

/// Sets no-new-privileges, then installs `role`'s filter on the calling thread only (no
/// TSYNC). Returns 0, or the negated errno of the step that failed. A filter cannot be
/// removed: the thread keeps it until it exits.
int cseccomp_install(cseccomp_role role);

/// Whether the syscall `nr` is on `role`'s allowlist (for tests and documentation).
int cseccomp_allows(cseccomp_role role, long nr);

#endif
