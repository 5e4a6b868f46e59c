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

// The network device's tests: what a host does to a guest on the other side of a TAP,
// with the host's own sockets (as root for ICMP), so no ping binary is needed.

/// Sends `count` ICMP echo requests to the IPv4 address `address` (dotted quad), one every
/// `interval_ms`, and collects replies until `timeout_ms` after the first request or until
/// every request was answered. Returns the number of requests answered (each sequence
/// number counted once, only from `address` and with this call's identifier), or -errno
/// when the raw socket cannot be made or used (it needs CAP_NET_RAW).
int net_probe_ping(const char *address, int count, int interval_ms, int timeout_ms);

/// Connects over TCP to `address`:`port` within `timeout_ms`. Returns 0 when connected,
/// else the errno of the failure (ECONNREFUSED for a reset, ETIMEDOUT for no answer).
int net_probe_tcp_connect(const char *address, int port, int timeout_ms);

#endif
