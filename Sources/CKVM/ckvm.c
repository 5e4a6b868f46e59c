// The shim is header-only (inline functions and constants); this file gives SwiftPM a
// translation unit to build the module from.
#define _GNU_SOURCE
#include "ckvm.h"
#include <pthread.h>
#include <signal.h>
#include <cpuid.h>

#include <errno.h>
#include <string.h>

int ckvm_set_msr_exit_ranges(int vmfd, const uint32_t *bases, const uint32_t *counts, int count) {
    // An all-zero bitmap denies (exits) every MSR of its range. The kernel copies each
    // bitmap during the ioctl, so one static zeroed buffer serves every range.
    static const uint8_t deny[KVM_MSR_FILTER_MAX_BITMAP_SIZE];
    struct kvm_msr_filter filter;
    if (count < 0 || count > KVM_MSR_FILTER_MAX_RANGES) {
        errno = EINVAL;
        return -1;
    }
    memset(&filter, 0, sizeof filter);
    filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
    for (int i = 0; i < count; i++) {
        if (counts[i] == 0 || counts[i] > KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8) {
            errno = EINVAL;
            return -1;
        }
        filter.ranges[i].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
        filter.ranges[i].nmsrs = counts[i];
        filter.ranges[i].base = bases[i];
        filter.ranges[i].bitmap = (uint8_t *)deny;
    }
    return ioctl(vmfd, KVM_X86_SET_MSR_FILTER, &filter);
}

static void ckvm_kick_handler(int signo) { (void)signo; }

int ckvm_install_kick_handler(int signo) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = ckvm_kick_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    return sigaction(signo, &action, NULL) == 0 ? 0 : errno;
}

int ckvm_thread_signal_mask(int how, const int *signals, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    return pthread_sigmask(how, &set, NULL);
}

int ckvm_set_vcpu_signal_mask_allowing(int vcpufd, int signo) {
    sigset_t set;
    int rc = pthread_sigmask(SIG_SETMASK, NULL, &set);
    if (rc != 0) return rc;
    sigdelset(&set, signo);
    // struct kvm_signal_mask is a length and the kernel's 8-byte sigset_t (the first 8
    // bytes of glibc's, which holds signals 1-64 in the same bit order).
    union {
        struct kvm_signal_mask header;
        unsigned char bytes[sizeof(struct kvm_signal_mask) + 8];
    } mask;
    memset(&mask, 0, sizeof mask);
    mask.header.len = 8;
    memcpy(mask.bytes + sizeof(struct kvm_signal_mask), &set, 8);
    return ioctl(vcpufd, KVM_SET_SIGNAL_MASK, &mask) == 0 ? 0 : errno;
}

int ckvm_wait_for_signal(const int *signals, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    int signo = 0;
    return sigwait(&set, &signo) == 0 ? signo : -1;
}

int ckvm_wait_for_signal_timed(const int *signals, int count, long milliseconds) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    struct timespec timeout = { milliseconds / 1000, (milliseconds % 1000) * 1000000L };
    for (;;) {
        int signo = sigtimedwait(&set, NULL, &timeout);
        if (signo > 0) return signo;
        if (errno == EAGAIN) return 0;
        if (errno != EINTR) return -1;
    }
}

void ckvm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t registers[4]) {
    __cpuid_count(leaf, subleaf, registers[0], registers[1], registers[2], registers[3]);
}
