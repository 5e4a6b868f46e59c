#include "CNativeOps.h"
#include <cpuid.h>

int native_supported(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int bmi1 = (b >> 3) & 1, bmi2 = (b >> 8) & 1, adx = (b >> 19) & 1;
    __get_cpuid(1, &a, &b, &c, &d);
    return bmi1 && bmi2 && adx && ((c >> 20) & 1);
}

uint64_t native_xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#define RUN(insn, constraints...)                                                   \
    __asm__ volatile("push %[f]\n\tpopfq\n\t" insn "\n\tpushfq\n\tpop %[f]"          \
                     : [f] "+r"(flags), constraints : "cc")

uint64_t native_run(int op, uint64_t a, uint64_t b, uint64_t flags_in, uint64_t *result, uint64_t *result2) {
    uint64_t flags = flags_in, r = 0x5555555555555555, r2 = 0x5555555555555555;
    switch (op) {
    case NATIVE_ANDN: RUN("andn %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_BEXTR: RUN("bextr %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_BLSR: RUN("blsr %[a], %[r]", [r] "=&r"(r) : [a] "r"(a)); break;
    case NATIVE_BLSI: RUN("blsi %[a], %[r]", [r] "=&r"(r) : [a] "r"(a)); break;
    case NATIVE_BLSMSK: RUN("blsmsk %[a], %[r]", [r] "=&r"(r) : [a] "r"(a)); break;
    case NATIVE_PDEP: RUN("pdep %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_PEXT: RUN("pext %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_SHLX: RUN("shlx %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_SHRX: RUN("shrx %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_SARX: RUN("sarx %[b], %[a], %[r]", [r] "=&r"(r) : [a] "r"(a), [b] "r"(b)); break;
    case NATIVE_RORX1: RUN("rorx $1, %[a], %[r]", [r] "=&r"(r) : [a] "r"(a)); break;
    case NATIVE_RORX13: RUN("rorx $13, %[a], %[r]", [r] "=&r"(r) : [a] "r"(a)); break;
    case NATIVE_MULX: RUN("mulx %[b], %[lo], %[hi]", [hi] "=&r"(r), [lo] "=&r"(r2) : "d"(a), [b] "r"(b)); break;
    case NATIVE_ADCX: r = a; RUN("adcx %[b], %[r]", [r] "+r"(r) : [b] "r"(b)); break;
    case NATIVE_ADOX: r = a; RUN("adox %[b], %[r]", [r] "+r"(r) : [b] "r"(b)); break;
    case NATIVE_CRC32_8: r = a; { uint8_t b8 = (uint8_t)b; RUN("crc32b %[b], %k[r]", [r] "+r"(r) : [b] "r"(b8)); } break;
    case NATIVE_CRC32_64: r = a; RUN("crc32q %[b], %[r]", [r] "+r"(r) : [b] "r"(b)); break;
    }
    *result = r;
    *result2 = r2;
    return flags & 0xFFF;
}
