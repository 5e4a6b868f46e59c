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

/// Sets `bits` in the 64-bit word at `word` (a dirty bitmap), atomically with respect to
/// other threads setting or taking bits. Skips the read-modify-write when every bit is
/// already set, so re-dirtying a page costs one load and does not bounce the cache line.
static inline void cga_bitmap_set(uint64_t *word, uint64_t bits) {
    if ((__atomic_load_n(word, __ATOMIC_RELAXED) & bits) != bits) {
        __atomic_fetch_or(word, bits, __ATOMIC_RELAXED);
    }
}

/// Returns the 64-bit word at `word` and clears it, atomically (one `xchg`), so a bit set
/// concurrently is either returned now or left for the next take, never lost.
static inline uint64_t cga_bitmap_take(uint64_t *word) {
    return __atomic_exchange_n(word, 0, __ATOMIC_ACQ_REL);
}

#endif
