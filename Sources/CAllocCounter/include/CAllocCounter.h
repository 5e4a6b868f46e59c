// CAllocCounter: counts heap allocations per thread, for benchmarks and allocation tests.
//
// Linking this target into an executable interposes malloc, calloc, realloc,
// posix_memalign, aligned_alloc and memalign: each forwards to glibc's own implementation
// (__libc_malloc and friends) and increments a thread-local counter. Only benchmark and
// test executables link it; the VMM itself never does.
#ifndef CALLOC_COUNTER_H
#define CALLOC_COUNTER_H
#include <stdint.h>

/// Number of allocation calls made by the calling thread so far.
uint64_t calloc_counter_thread_allocations(void);

#endif
