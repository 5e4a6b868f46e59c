// Test support: BMI1, BMI2, ADX and CRC32 run natively on the host CPU, so the emulator's
// results can be checked against the real instructions; and the host's XCR0, so tests can
// expect what this host has rather than what the machine a test was written on had.
#ifndef CNATIVE_OPS_H
#define CNATIVE_OPS_H
#include <stdint.h>

enum {
    NATIVE_ANDN, NATIVE_BEXTR, NATIVE_BLSR, NATIVE_BLSI, NATIVE_BLSMSK, NATIVE_PDEP, NATIVE_PEXT,
    NATIVE_SHLX, NATIVE_SHRX, NATIVE_SARX, NATIVE_RORX1, NATIVE_RORX13, NATIVE_MULX, NATIVE_ADCX, NATIVE_ADOX,
    NATIVE_CRC32_8, NATIVE_CRC32_64,
};

/// Whether the host CPU has BMI1, BMI2, ADX and SSE4.2.
int native_supported(void);

/// Runs operation `op` at 64 bits with RFLAGS = flags_in: result = op(a, b) (MULX: high half
/// in *result, low in *result2, a is RDX). Returns the low 12 bits of RFLAGS after.
uint64_t native_run(int op, uint64_t a, uint64_t b, uint64_t flags_in, uint64_t *result, uint64_t *result2);

/// The host's XCR0 (xgetbv with ECX = 0), or 0 when the host OS has not enabled XSAVE
/// (CPUID.1:ECX.OSXSAVE clear), where xgetbv would fault.
uint64_t native_xcr0(void);

#endif
