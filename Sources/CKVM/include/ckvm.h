// CKVM: the C shim between Swift and <linux/kvm.h> (Debian's linux-libc-dev).
//
// Swift cannot import function-like macros (the _IO/_IOW ioctl numbers) or call the
// variadic ioctl(2), and reading kvm_run through its anonymous unions from Swift would copy
// the whole page. This header fixes all three: every ioctl number is declared once as a
// constant, ioctl is wrapped by three non-variadic inline functions, and the kvm_run fields
// the exit path needs are read and written by inline accessors that compile to single loads
// and stores. Every symbol is prefixed `ckvm_` / `CKVM_`.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

// MARK: ioctl numbers (system, VM, vCPU)

static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;

static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = 1u << kvm_ioeventfd_flag_nr_datamatch;
static const uint32_t CKVM_IOEVENTFD_FLAG_DEASSIGN = 1u << kvm_ioeventfd_flag_nr_deassign;
static const uint32_t CKVM_IRQFD_FLAG_DEASSIGN = KVM_IRQFD_FLAG_DEASSIGN;
static const unsigned long CKVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_X86_SET_MSR_FILTER = KVM_X86_SET_MSR_FILTER;
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;

static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_NMI = KVM_NMI;
static const unsigned long CKVM_INTERRUPT = KVM_INTERRUPT;

// Snapshot state: every vCPU and VM ioctl that reads or writes state a snapshot keeps.
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long CKVM_GET_CPUID2 = KVM_GET_CPUID2;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long CKVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;

// MARK: constants that are macros in the kernel header

static const int CKVM_API_VERSION = KVM_API_VERSION;
static const uint32_t CKVM_MAX_CPUID_ENTRIES = 256;

static const uint32_t CKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;
static const uint32_t CKVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;
static const uint32_t CKVM_VCPUEVENT_VALID_NMI_PENDING = KVM_VCPUEVENT_VALID_NMI_PENDING;
static const uint32_t CKVM_CAP_X86_USER_SPACE_MSR = KVM_CAP_X86_USER_SPACE_MSR;
static const uint32_t CKVM_CAP_X86_MSR_FILTER = KVM_CAP_X86_MSR_FILTER;
static const uint64_t CKVM_MSR_EXIT_REASON_INVAL = KVM_MSR_EXIT_REASON_INVAL;
static const uint64_t CKVM_MSR_EXIT_REASON_UNKNOWN = KVM_MSR_EXIT_REASON_UNKNOWN;
static const uint64_t CKVM_MSR_EXIT_REASON_FILTER = KVM_MSR_EXIT_REASON_FILTER;
static const int CKVM_MSR_FILTER_MAX_RANGES = KVM_MSR_FILTER_MAX_RANGES;
static const uint32_t CKVM_PIT_SPEAKER_DUMMY = KVM_PIT_SPEAKER_DUMMY;
static const uint32_t CKVM_MEM_LOG_DIRTY_PAGES = KVM_MEM_LOG_DIRTY_PAGES;
static const uint32_t CKVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
static const uint32_t CKVM_IRQCHIP_PIC_MASTER = KVM_IRQCHIP_PIC_MASTER;
static const uint32_t CKVM_IRQCHIP_PIC_SLAVE = KVM_IRQCHIP_PIC_SLAVE;
static const uint32_t CKVM_IRQCHIP_IOAPIC = KVM_IRQCHIP_IOAPIC;
static const int CKVM_CAP_XSAVE2 = KVM_CAP_XSAVE2;
static const int CKVM_CAP_TSC_CONTROL = KVM_CAP_TSC_CONTROL;
static const int CKVM_CAP_GET_TSC_KHZ = KVM_CAP_GET_TSC_KHZ;

/// CPUID as the host CPU answers it to this process.
void ckvm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t registers[4]);

/// Installs a do-nothing handler for `signo` without SA_RESTART, so that delivering the
/// signal to a vCPU thread makes a blocking KVM_RUN return with EINTR. Returns 0 or errno.
int ckvm_install_kick_handler(int signo);

/// Blocks (how = SIG_BLOCK) or unblocks (SIG_UNBLOCK) `count` signals in the calling thread.
/// Returns 0 or an errno value.
int ckvm_thread_signal_mask(int how, const int *signals, int count);

/// Sets the signal mask KVM_RUN on `vcpufd` runs with (KVM_SET_SIGNAL_MASK): the calling
/// thread's mask without `signo`, so `signo` interrupts KVM_RUN whatever the mask of the
/// thread that runs it. Returns 0 or errno.
int ckvm_set_vcpu_signal_mask_allowing(int vcpufd, int signo);

/// Waits for one of `count` signals (which the caller has blocked) and returns it, or -1.
int ckvm_wait_for_signal(const int *signals, int count);

/// As ckvm_wait_for_signal, but gives up after `milliseconds`: returns 0 then.
int ckvm_wait_for_signal_timed(const int *signals, int count, long milliseconds);

// MARK: non-variadic ioctl wrappers

/// ioctl(fd, request) with no argument.
static inline int ckvm_ioctl_none(int fd, unsigned long request) {
    return ioctl(fd, request, 0);
}

/// ioctl(fd, request, value) with an integer argument.
static inline int ckvm_ioctl_value(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}

/// ioctl(fd, request, pointer): the kernel reads or writes the structure at `pointer`.
static inline int ckvm_ioctl_pointer(int fd, unsigned long request, void *pointer) {
    return ioctl(fd, request, pointer);
}

// MARK: kvm_run accessors (the exit path reads these on every exit)

static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_RELAXED);
}
static inline uint8_t ckvm_run_immediate_exit(const struct kvm_run *run) {
    return __atomic_load_n(&run->immediate_exit, __ATOMIC_RELAXED);
}
static inline uint8_t ckvm_run_if_flag(const struct kvm_run *run) { return run->if_flag; }

static inline uint8_t ckvm_run_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint8_t ckvm_run_io_size(const struct kvm_run *run) { return run->io.size; }
static inline uint16_t ckvm_run_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint32_t ckvm_run_io_count(const struct kvm_run *run) { return run->io.count; }
static inline uint64_t ckvm_run_io_data_offset(const struct kvm_run *run) { return run->io.data_offset; }

static inline uint64_t ckvm_run_mmio_phys_addr(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
/// The 8 data bytes of an MMIO exit as one little-endian value.
static inline uint64_t ckvm_run_mmio_data(const struct kvm_run *run) {
    uint64_t value;
    __builtin_memcpy(&value, run->mmio.data, sizeof value);
    return value;
}
static inline void ckvm_run_set_mmio_data(struct kvm_run *run, uint64_t value) {
    __builtin_memcpy(run->mmio.data, &value, sizeof value);
}

static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}
static inline uint32_t ckvm_run_fail_entry_cpu(const struct kvm_run *run) { return run->fail_entry.cpu; }
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *run) { return run->internal.ndata; }
/// internal.data[index], or 0 when index is outside the array (the kernel's ndata is not trusted).
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *run, uint32_t index) {
    const uint32_t capacity = sizeof run->internal.data / sizeof run->internal.data[0];
    return index < capacity ? run->internal.data[index] : 0;
}
static inline uint32_t ckvm_run_internal_capacity(void) {
    return sizeof ((struct kvm_run *)0)->internal.data / sizeof(uint64_t);
}
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *run) { return run->system_event.type; }
static inline uint64_t ckvm_run_hw_exit_reason(const struct kvm_run *run) {
    return run->hw.hardware_exit_reason;
}
static inline uint32_t ckvm_run_ex_exception(const struct kvm_run *run) { return run->ex.exception; }
static inline uint32_t ckvm_run_ex_error_code(const struct kvm_run *run) { return run->ex.error_code; }

static inline uint8_t ckvm_run_msr_error(const struct kvm_run *run) { return run->msr.error; }
static inline void ckvm_run_set_msr_error(struct kvm_run *run, uint8_t error) { run->msr.error = error; }
static inline uint32_t ckvm_run_msr_reason(const struct kvm_run *run) { return run->msr.reason; }
static inline uint32_t ckvm_run_msr_index(const struct kvm_run *run) { return run->msr.index; }
static inline uint64_t ckvm_run_msr_data(const struct kvm_run *run) { return run->msr.data; }
static inline void ckvm_run_set_msr_data(struct kvm_run *run, uint64_t data) { run->msr.data = data; }

/// Installs an MSR filter on `vmfd` that lets every MSR through to KVM except the `count`
/// ranges [bases[i], bases[i] + counts[i]), whose reads and writes exit to user space.
/// At most CKVM_MSR_FILTER_MAX_RANGES ranges of at most 0x600 * 8 MSRs each. Returns the
/// ioctl's result (-1 with errno on failure).
int ckvm_set_msr_exit_ranges(int vmfd, const uint32_t *bases, const uint32_t *counts, int count);

/// KVM_GET_DIRTY_LOG for memory slot `slot` of `vmfd`: the kernel writes the slot's dirty
/// bitmap (one bit per page, rounded up to whole 64-bit words) to `bitmap` and clears its
/// own. The caller owns a buffer at least that long.
static inline int ckvm_get_dirty_log(int vmfd, uint32_t slot, uint64_t *bitmap) {
    struct kvm_dirty_log log;
    __builtin_memset(&log, 0, sizeof log);
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return ioctl(vmfd, KVM_GET_DIRTY_LOG, &log);
}

_Static_assert(sizeof(struct kvm_regs) == 18 * 8, "kvm_regs layout");
_Static_assert(sizeof(struct kvm_segment) == 24, "kvm_segment layout");

#endif
