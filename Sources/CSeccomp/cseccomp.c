#include "cseccomp.h"

#include <errno.h>
#include <stddef.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
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

static const long vcpu_syscalls[] = { COMMON_SYSCALLS, SYS_ioctl };
static const long console_syscalls[] = { COMMON_SYSCALLS, SYS_ioctl };

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

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

// ---- The filter ----

// Refused calls fail with EPERM; a call from another architecture's ABI (i386 int 0x80,
// x32) kills the process, because syscall numbers mean something else there.
#define REFUSE (SECCOMP_RET_ERRNO | (CSECCOMP_REFUSED_ERRNO & SECCOMP_RET_DATA))
#define X32_SYSCALL_BIT 0x40000000u

enum { MAX_FILTER = 128 };

static int build(const long *syscalls, size_t nsys, const unsigned long *ioctls, size_t nioctl,
                 struct sock_filter *out, size_t capacity) {
    size_t n = 0;
#define EMIT(insn) do { if (n >= capacity) return -1; out[n++] = (struct sock_filter)insn; } while (0)
    EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    // ioctl: only the listed requests (the low 32 bits of the second argument).
    // A match jumps past the remaining comparisons and the refusal, onto the ALLOW.
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, (unsigned char)(nioctl + 3)));
    EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])));
    for (size_t i = 0; i < nioctl; i++) {
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)ioctls[i], (unsigned char)(nioctl - i), 0));
    }
    EMIT(BPF_STMT(BPF_RET | BPF_K, REFUSE));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    // Everything else: the allowlist, one comparison each.
    for (size_t i = 0; i < nsys; i++) {
        if (syscalls[i] == SYS_ioctl) continue;
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)syscalls[i], 0, 1));
        EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
    EMIT(BPF_STMT(BPF_RET | BPF_K, REFUSE));
#undef EMIT
    return (int)n;
}

_Static_assert(COUNT(vcpu_ioctls) < 250 && COUNT(console_ioctls) < 250, "BPF jump offsets are 8 bits");

static int role_lists(cseccomp_role role, const long **syscalls, size_t *nsys,
                      const unsigned long **ioctls, size_t *nioctl) {
    switch (role) {
    case CSECCOMP_ROLE_VCPU:
        *syscalls = vcpu_syscalls; *nsys = COUNT(vcpu_syscalls);
        *ioctls = vcpu_ioctls; *nioctl = COUNT(vcpu_ioctls);
        return 0;
    case CSECCOMP_ROLE_CONSOLE:
        *syscalls = console_syscalls; *nsys = COUNT(console_syscalls);
        *ioctls = console_ioctls; *nioctl = COUNT(console_ioctls);
        return 0;
    }
    return -EINVAL;
}

int cseccomp_install(cseccomp_role role) {
    const long *syscalls;
    const unsigned long *ioctls;
    size_t nsys, nioctl;
    if (role_lists(role, &syscalls, &nsys, &ioctls, &nioctl) != 0) return -EINVAL;
    struct sock_filter filter[MAX_FILTER];
    int length = build(syscalls, nsys, ioctls, nioctl, filter, MAX_FILTER);
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
    const long *syscalls;
    const unsigned long *ioctls;
    size_t nsys, nioctl;
    if (role_lists(role, &syscalls, &nsys, &ioctls, &nioctl) != 0) return 0;
    for (size_t i = 0; i < nsys; i++) {
        if (syscalls[i] == nr) return 1;
    }
    return 0;
}
