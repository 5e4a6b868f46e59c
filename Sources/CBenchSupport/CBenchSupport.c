#define _GNU_SOURCE
#include "CBenchSupport.h"
#include <errno.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static __thread uint64_t allocations;

uint64_t calloc_counter_thread_allocations(void) { return allocations; }

void *malloc(size_t size) {
    allocations++;
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    allocations++;
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    allocations++;
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    allocations++;
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    allocations++;
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    allocations++;
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL && size != 0) return ENOMEM;
    *result = pointer;
    return 0;
}

int bench_thread_id(void) { return (int)syscall(SYS_gettid); }

int bench_set_dumpable(int value) {
    return prctl(PR_SET_DUMPABLE, value, 0, 0, 0) == 0 ? 0 : errno;
}

int bench_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

void bench_thread_cpu_time(uint64_t *user, uint64_t *system) {
    struct rusage usage;
    getrusage(RUSAGE_THREAD, &usage);
    *user = (uint64_t)usage.ru_utime.tv_sec * 1000000000u + (uint64_t)usage.ru_utime.tv_usec * 1000u;
    *system = (uint64_t)usage.ru_stime.tv_sec * 1000000000u + (uint64_t)usage.ru_stime.tv_usec * 1000u;
}

static uint64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

uint64_t bench_kvm_vm_floor_ns(uint64_t memory_size, int memory_first) {
    uint64_t start = monotonic_ns(), result = 0;
    int kvm = -1, vm = -1, vcpu = -1;
    void *memory = MAP_FAILED, *run = MAP_FAILED;
    long run_size = 0;
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) goto out;
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) goto out;
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) goto out;
    memory = mmap(NULL, memory_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) goto out;
    /* mov al, 0; out 0x10, al; hlt -- at 0x1000 */
    static const unsigned char code[] = {0xb0, 0x00, 0xe6, 0x10, 0xf4};
    for (size_t i = 0; i < sizeof code; i++) ((unsigned char *)memory)[0x1000 + i] = code[i];
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = memory_size, .userspace_addr = (uint64_t)(uintptr_t)memory};
    if (memory_first && ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) goto out;
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) goto out;
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) goto out;
    if (!memory_first && ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) goto out;
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) goto out;
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0) goto out;
    run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) goto out;
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) goto out;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) goto out;
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) goto out;
    if (ioctl(vcpu, KVM_RUN, 0) < 0) goto out;
    if (((struct kvm_run *)run)->exit_reason != KVM_EXIT_IO) goto out;
    result = monotonic_ns() - start;
out:
    if (run != MAP_FAILED) munmap(run, (size_t)run_size);
    if (vcpu >= 0) close(vcpu);
    if (vm >= 0) close(vm);
    if (memory != MAP_FAILED) munmap(memory, memory_size);
    if (kvm >= 0) close(kvm);
    return result;
}
