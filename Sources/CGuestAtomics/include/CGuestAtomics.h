// CGuestAtomics: atomic operations on guest memory that Swift's standard library cannot
// express on memory it does not own.
#ifndef CGUEST_ATOMICS_H
#define CGUEST_ATOMICS_H
#include <stdint.h>

/// `lock cmpxchg16b` on the 16-byte-aligned location `address`: if it holds
/// (*expected_hi:*expected_lo), store (desired_hi:desired_lo) and return 1; otherwise load
/// its value into *expected_hi:*expected_lo and return 0. Atomic with respect to other
/// vCPUs and host threads.
static inline int cga_compare_exchange_16(void *address, uint64_t *expected_lo, uint64_t *expected_hi,
                                          uint64_t desired_lo, uint64_t desired_hi) {
    uint8_t equal;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(equal), "+m"(*(volatile unsigned __int128 *)address),
                           "+a"(*expected_lo), "+d"(*expected_hi)
                         : "b"(desired_lo), "c"(desired_hi)
                         : "memory", "cc");
    return equal;
}

#endif
