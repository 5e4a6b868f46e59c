#include "cseccomp.h"

#include <errno.h>
#include <stddef.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "the seccomp filters are written for x86-64"
#endif

// ---- The allowlists: every system call a role may make, in one place. ----

// Made by both roles: memory management behind malloc and the Swift runtime, locks,
// signals (the kick handler returns through rt_sigreturn), time, and a clean exit. abort
// (a Swift runtime trap) needs rt_sigprocmask, getpid, gettid and tgkill to deliver
// SIGABRT. getrusage lets a handler read its own thread's CPU time, as the benchmark's
// timing device does (it reveals nothing about other processes).
#define COMMON_SYSCALLS \
    SYS_read, SYS_write, SYS_writev, SYS_poll, SYS_ppoll, \
    SYS_futex, SYS_sched_yield, SYS_nanosleep, SYS_clock_nanosleep, SYS_clock_gettime, SYS_gettimeofday, \
    SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise, SYS_brk, \
    SYS_rt_sigreturn, SYS_rt_sigprocmask, SYS_sigaltstack, \
    SYS_getpid, SYS_gettid, SYS_tgkill, SYS_getrandom, SYS_rseq, SYS_getrusage, \
    SYS_exit, SYS_exit_group

// Without the I/O thread, device models serve requests on the vCPU thread: a virtio block
// device moves data between guest RAM and its disk image, opened before the filter, with
// pread64, pwrite64 and fsync (no open: a disk is never opened after set-up).
static const long vcpu_syscalls[] = { COMMON_SYSCALLS, SYS_ioctl, SYS_pread64, SYS_pwrite64, SYS_fsync };
static const long console_syscalls[] = { COMMON_SYSCALLS, SYS_ioctl };

// The host side of a vsock device, Unix stream sockets on the I/O thread: accept4 takes a
// host program's connection on the listener made at set-up; socket (AF_UNIX only, see
// unix_domains) and connect reach the host listener a guest connects to; sendto and
// recvfrom are what send and recv make (recvfrom also peeks at a CONNECT line); shutdown
// passes a guest's SHUTDOWN on; close ends a connection's socket. Nothing names a path but
// connect, and only a Unix socket can connect.
#define VSOCK_SYSCALLS SYS_accept4, SYS_socket, SYS_connect, SYS_sendto, SYS_recvfrom, SYS_shutdown, SYS_close

// An I/O thread: epoll (epoll_ctl for the watches its devices add and end as they run), the
// file calls of the device backends (positioned reads and writes, flushes), and the vsock
// sockets. Eventfds are read and written with read and write, and so are the network
// device's frames on its TAP (one frame a call, through a buffer allocated once: no readv
// or writev needed). No ioctl at all: the TAP is set up before the filter.
static const long io_syscalls[] = {
    COMMON_SYSCALLS, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl,
    SYS_pread64, SYS_pwrite64, SYS_preadv, SYS_pwritev, SYS_fsync, SYS_fdatasync,
    VSOCK_SYSCALLS,
};

// The main thread after set-up, and the signal thread. Beyond the common calls: starting
// threads (clone3, with clone as glibc's fallback, and set_robust_list in the child), which
// then install their own filter (seccomp, and prctl for no-new-privileges only: see
// prctl_options); waiting for control signals; sizing a new machine's RAM against the
// host's (sysinfo); closing a dead machine's descriptors; rewriting the statistics file
// through the descriptor opened before the filter (ftruncate, pwrite64); fstat, which the C
// library makes on descriptors it writes to. The vCPU threads a confined main thread
// starts inherit this filter beneath their own, so it also holds their disk I/O (pread64,
// pwrite64, fsync); so do the I/O threads of machines built after a guest reset, which
// wait with epoll_wait (epoll_pwait where the C library prefers it). No open, socket,
// execve, kill or ptrace.
#define MAIN_SYSCALLS \
    COMMON_SYSCALLS, SYS_ioctl, SYS_prctl, \
    SYS_clone3, SYS_clone, SYS_set_robust_list, SYS_seccomp, SYS_epoll_create1, SYS_epoll_ctl, SYS_eventfd2, \
    SYS_rt_sigtimedwait, SYS_sysinfo, SYS_close, SYS_fstat, SYS_newfstatat, SYS_ftruncate, SYS_pwrite64, \
    SYS_pread64, SYS_fsync, SYS_epoll_wait, SYS_epoll_pwait
static const long main_syscalls[] = { MAIN_SYSCALLS };

// The main thread of a command with a vsock device: the I/O thread of each machine built
// after a guest reset inherits this filter, so it holds the vsock socket calls as well
// (socket AF_UNIX only); and unlink, for the listener's path when the command ends.
static const long main_vsock_syscalls[] = { MAIN_SYSCALLS, VSOCK_SYSCALLS, SYS_unlink };

// The ioctls a vCPU thread makes after set-up: KVM_RUN, the register and event accesses
// of the dispatch, the emulator and the state dump, interrupt and NMI injection, and the
// VM's interrupt lines, which device models raise from the vCPU thread. Nothing that
// creates a VM or vCPU or changes the memory map.
static const unsigned long vcpu_ioctls[] = {
    KVM_RUN,
    KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_GET_FPU, KVM_SET_FPU,
    KVM_GET_MSRS, KVM_SET_MSRS, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS,
    KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_XCRS, KVM_GET_DEBUGREGS,
    KVM_INTERRUPT, KVM_NMI, KVM_IRQ_LINE, KVM_SIGNAL_MSI,
};

// The console thread raises COM1's interrupt line when it fills the receive FIFO.
static const unsigned long console_ioctls[] = { KVM_IRQ_LINE };

// The main thread builds the machine after a guest reset on the /dev/kvm it already holds
// (the system, VM and vCPU set-up ioctls), restores the terminal (TCGETS, TCSETS) and
// reads a paused machine's state for a snapshot (the KVM_GET_* calls at the end).
// Every vCPU ioctl is here too, first, since a vCPU thread inherits this filter: KVM_RUN
// leads, as it is the call made most.
static const unsigned long main_ioctls[] = {
    KVM_RUN,
    KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_GET_FPU, KVM_SET_FPU,
    KVM_GET_MSRS, KVM_SET_MSRS, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS,
    KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_XCRS, KVM_GET_DEBUGREGS,
    KVM_INTERRUPT, KVM_NMI, KVM_IRQ_LINE, KVM_SIGNAL_MSI,
    KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID,
    KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_ENABLE_CAP,
    KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_SET_USER_MEMORY_REGION, KVM_X86_SET_MSR_FILTER,
    KVM_SET_CPUID2, KVM_IOEVENTFD, KVM_IRQFD,
    TCGETS, TCSETS,
    // A snapshot, taken on the signal thread (SIGHUP) of a paused machine: the vCPUs' and
    // the VM's whole state, read only, and the dirty-page log.
    KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_GET_LAPIC, KVM_GET_CPUID2, KVM_GET_TSC_KHZ, KVM_GET_MSR_INDEX_LIST,
    KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK, KVM_GET_DIRTY_LOG,
};

// prctl only to set no-new-privileges, which a new thread does before its own filter.
static const unsigned long main_prctl_options[] = { PR_SET_NO_NEW_PRIVS };

// socket only for Unix sockets (its first argument, the domain).
static const unsigned long unix_domains[] = { AF_UNIX };

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

// ---- The filter ----

// Refused calls fail with EPERM; a call from another architecture's ABI (i386 int 0x80,
// x32) kills the process, because syscall numbers mean something else there.
#define REFUSE (SECCOMP_RET_ERRNO | (CSECCOMP_REFUSED_ERRNO & SECCOMP_RET_DATA))
#define X32_SYSCALL_BIT 0x40000000u

enum { MAX_FILTER = 256 };

// A system call allowed only for some values of one argument (its low 32 bits): ioctl by
// request, prctl by option.
typedef struct {
    long nr;
    unsigned argument;
    const unsigned long *values;
    size_t count;
} argument_rule;

static int build(const long *syscalls, size_t nsys, const argument_rule *rules, size_t nrules,
                 struct sock_filter *out, size_t capacity) {
    size_t n = 0;
#define EMIT(insn) do { if (n >= capacity) return -1; out[n++] = (struct sock_filter)insn; } while (0)
    EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    // Each argument rule: the listed values only. A match jumps past the remaining
    // comparisons and the refusal, onto the ALLOW; another system call skips the block.
    // Loading the argument replaces the number in the accumulator, so each block ends in
    // a return and the next block reloads it.
    for (size_t r = 0; r < nrules; r++) {
        const argument_rule *rule = &rules[r];
        if (rule->count > 250) return -1; // BPF jump offsets are 8 bits
        if (r > 0) EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)rule->nr, 0, (unsigned char)(rule->count + 3)));
        EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[rule->argument])));
        for (size_t i = 0; i < rule->count; i++) {
            EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)rule->values[i], (unsigned char)(rule->count - i), 0));
        }
        EMIT(BPF_STMT(BPF_RET | BPF_K, REFUSE));
        EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
    if (nrules > 0) EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    // Everything else: the allowlist, one comparison each.
    for (size_t i = 0; i < nsys; i++) {
        int ruled = 0;
        for (size_t r = 0; r < nrules; r++) ruled |= syscalls[i] == rules[r].nr;
        if (ruled) continue;
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)syscalls[i], 0, 1));
        EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
    EMIT(BPF_STMT(BPF_RET | BPF_K, REFUSE));
#undef EMIT
    return (int)n;
}


typedef struct {
    const long *syscalls;
    size_t nsys;
    argument_rule rules[3];
    size_t nrules;
} role_lists;

static int lists_of(cseccomp_role role, role_lists *lists) {
    switch (role) {
    case CSECCOMP_ROLE_VCPU:
        *lists = (role_lists){ vcpu_syscalls, COUNT(vcpu_syscalls),
                               { { SYS_ioctl, 1, vcpu_ioctls, COUNT(vcpu_ioctls) } }, 1 };
        return 0;
    case CSECCOMP_ROLE_CONSOLE:
        *lists = (role_lists){ console_syscalls, COUNT(console_syscalls),
                               { { SYS_ioctl, 1, console_ioctls, COUNT(console_ioctls) } }, 1 };
        return 0;
    case CSECCOMP_ROLE_IO:
        *lists = (role_lists){ io_syscalls, COUNT(io_syscalls),
                               { { SYS_socket, 0, unix_domains, COUNT(unix_domains) } }, 1 };
        return 0;
    case CSECCOMP_ROLE_MAIN:
        *lists = (role_lists){ main_syscalls, COUNT(main_syscalls),
                               { { SYS_ioctl, 1, main_ioctls, COUNT(main_ioctls) },
                                 { SYS_prctl, 0, main_prctl_options, COUNT(main_prctl_options) } }, 2 };
        return 0;
    case CSECCOMP_ROLE_MAIN_VSOCK:
        *lists = (role_lists){ main_vsock_syscalls, COUNT(main_vsock_syscalls),
                               { { SYS_ioctl, 1, main_ioctls, COUNT(main_ioctls) },
                                 { SYS_prctl, 0, main_prctl_options, COUNT(main_prctl_options) },
                                 { SYS_socket, 0, unix_domains, COUNT(unix_domains) } }, 3 };
        return 0;
    }
    return -EINVAL;
}

int cseccomp_install(cseccomp_role role) {
    role_lists lists;
    if (lists_of(role, &lists) != 0) return -EINVAL;
    struct sock_filter filter[MAX_FILTER];
    int length = build(lists.syscalls, lists.nsys, lists.rules, lists.nrules, filter, MAX_FILTER);
    if (length < 0) return -E2BIG;
    struct sock_fprog program = { .len = (unsigned short)length, .filter = filter };
    // No new privileges first: the kernel requires it (or CAP_SYS_ADMIN) for a filter,
    // and it keeps an exec'd program from gaining privileges the filter was meant to cap.
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    // seccomp(2) with no flags: this thread only, not the whole process (no TSYNC).
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) return -errno;
    return 0;
}

int cseccomp_allows(cseccomp_role role, long nr) {
    role_lists lists;
    if (lists_of(role, &lists) != 0) return 0;
    for (size_t i = 0; i < lists.nsys; i++) {
        if (lists.syscalls[i] == nr) return 1;
    }
    return 0;
}
