// CBenchSupport: what benchmarks and allocation tests need from C.
//
// Heap allocation counting per thread:
// Linking this target into an executable interposes malloc, calloc, realloc,
// posix_memalign, aligned_alloc and memalign: each forwards to glibc's own implementation
// (__libc_malloc and friends) and increments a thread-local counter. Only benchmark and
// test executables link it; the VMM itself never does.
#ifndef CBENCH_SUPPORT_H
#define CBENCH_SUPPORT_H
#include <stdint.h>

/// Number of allocation calls made by the calling thread so far.
uint64_t calloc_counter_thread_allocations(void);

/// Pins the calling thread (and threads and processes it starts later) to one CPU.
/// Returns 0 or an errno value. (sched_setaffinity needs _GNU_SOURCE, which Swift's Glibc
/// module does not define.)
int bench_pin_to_cpu(int cpu);

/// The calling thread's id (gettid, which Swift's Glibc module does not declare): its
/// entry under /proc/self/task.
int bench_thread_id(void);

/// prctl(PR_SET_DUMPABLE, value) on the calling thread's process, for the confinement tests
/// (prctl is variadic, which Swift cannot call). Returns 0 or an errno value.
int bench_set_dumpable(int value);

/// User and system CPU time of the calling thread, in nanoseconds.
void bench_thread_cpu_time(uint64_t *user, uint64_t *system);

/// The floor under a restore on this host, in C: the nanoseconds from opening /dev/kvm
/// to the first exit of a VM with the in-kernel irqchip and PIT, `memory_size` bytes of
/// RAM and one vCPU that runs `out 0x10, al` in real mode; everything is torn down after.
/// With `memory_first` the memory slot is added before the irqchip and PIT are created,
/// else after. Returns 0 when a step fails. (No VMM work: what KVM itself costs.)
uint64_t bench_kvm_vm_floor_ns(uint64_t memory_size, int memory_first);

/// A frame reflector for the virtio-net benchmark: a thread with an AF_PACKET raw socket
/// bound to `interface` for every protocol (ETH_P_ALL), which sends each frame the
/// interface received (not those it sent: PACKET_OUTGOING) back out of the same interface.
/// On a TAP that means: a frame written to the TAP's descriptor comes back to be read from
/// it. Needs CAP_NET_RAW. Returns 0 and the reflector in `*result`, or an errno value.
struct bench_reflector;
int bench_reflector_start(const char *interface, struct bench_reflector **result);

/// The frames the reflector's socket dropped so far (its receive buffer was full), from
/// PACKET_STATISTICS. Call it from the thread that started and stops the reflector.
uint64_t bench_reflector_dropped(struct bench_reflector *reflector);

/// Stops and frees a reflector; returns how many frames it sent back, and in `*failed`
/// (when not NULL) how many sends failed.
uint64_t bench_reflector_stop(struct bench_reflector *reflector, uint64_t *failed);

#endif
