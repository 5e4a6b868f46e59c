// Multiboot guest: finds the RSDP in the BIOS area, walks the XSDT to the FADT, MADT, FACS and DSDT, and times the ACPI PM timer.
//
// Searches 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " with valid checksums
// (20 bytes, and 36 for revision 2), checks the XSDT's and each table's checksum, and
// prints "rsdp=<address>", "xsdt: FACP APIC" (the signatures it lists), "pm1a_cnt=<port>
// pm_tmr=<port> len=<n> bits=<24|32>", "facs ok", "madt: <n> cpus", "dsdt: _S5 type <n>,
// no _S3". Then it reads the PM timer at its port and writes the value to port 0x503 (4
// bytes), spins until the timer has advanced 357,954 ticks (0.1 s at 3.579545 MHz),
// reads it and writes it to 0x503 again, with the TSC difference after it (low, then
// high half): the host compares the ticks with its own clock between the two writes.
// Checks on the way that the timer never goes backwards. Then asks for S3 (SLP_TYP 3 and
// SLP_EN in PM1a control), which the tables do not announce: the machine must ignore
// it, and the guest prints "s3 ignored". With the command line "s5" it then powers off
// through \_S5 (SLP_TYP from the DSDT); otherwise it prints "acpi ok".
// multiboot-load: elf 0x100000
#include "mb.h"

#define REPORT_PORT 0x503

static bool failed;

static void fail(const char *what) {
    failed = true;
    com1_puts("FAIL ");
    com1_puts(what);
    com1_putc('\n');
}

static inline void outw_dx(uint16_t port, uint16_t value) {
    __asm__ volatile("outw %0, %w1" : : "a"(value), "d"(port) : "memory");
}
static inline void outl_dx(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %w1" : : "a"(value), "d"(port) : "memory");
}
static inline uint32_t inl_dx(uint16_t port) {
    uint32_t value;
    __asm__ volatile("inl %w1, %0" : "=a"(value) : "d"(port) : "memory");
    return value;
}
static inline uint64_t rdtsc(void) {
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

static uint8_t sum(const uint8_t *p, uint32_t length) {
    uint8_t s = 0;
    for (uint32_t i = 0; i < length; i++) s = (uint8_t)(s + p[i]);
    return s;
}
static uint32_t u32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static bool sig(const uint8_t *p, const char *s) { return p[0] == s[0] && p[1] == s[1] && p[2] == s[2] && p[3] == s[3]; }

// A table at `address` (below 4 GiB) with `signature` and a valid checksum, or null.
static const uint8_t *table(uint64_t address, const char *signature) {
    if (address == 0 || address >> 32) return 0;
    const uint8_t *t = (const uint8_t *)(uintptr_t)address;
    if (!sig(t, signature) || u32(t + 4) < 36 || sum(t, u32(t + 4)) != 0) return 0;
    return t;
}

static uint64_t u64(const uint8_t *p) { return u32(p) | (uint64_t)u32(p + 4) << 32; }

static const uint8_t *find_rsdp(void) {
    for (uint32_t a = 0xE0000; a < 0x100000; a += 16) {
        const uint8_t *p = (const uint8_t *)(uintptr_t)a;
        if (!sig(p, "RSD ") || !sig(p + 4, "PTR ") || sum(p, 20) != 0) continue;
        if (p[15] >= 2 && sum(p, 36) != 0) continue;
        return p;
    }
    return 0;
}

void guest_main(uint32_t magic, const struct multiboot_info *info) {
    if (magic != MULTIBOOT_BOOT_MAGIC) qemu_exit(QEMU_FAIL);
    const uint8_t *rsdp = find_rsdp();
    if (!rsdp) {
        fail("no RSDP");
        qemu_exit(QEMU_FAIL);
    }
    com1_puts("rsdp=");
    put_hex((uintptr_t)rsdp);
    com1_putc('\n');
    const uint8_t *xsdt = rsdp[15] >= 2 ? table(u64(rsdp + 24), "XSDT") : 0;
    if (!xsdt) {
        fail("no XSDT");
        qemu_exit(QEMU_FAIL);
    }
    const uint8_t *fadt = 0, *madt = 0;
    com1_puts("xsdt:");
    for (uint32_t off = 36; off + 8 <= u32(xsdt + 4); off += 8) {
        uint64_t address = u64(xsdt + off);
        const uint8_t *t = (const uint8_t *)(uintptr_t)address;
        if (address >> 32) continue;
        com1_putc(' ');
        for (int i = 0; i < 4; i++) com1_putc((char)t[i]);
        if (!fadt) fadt = table(address, "FACP");
        if (!madt) madt = table(address, "APIC");
    }
    com1_putc('\n');
    if (!fadt || !madt) {
        fail("no valid FADT or MADT");
        qemu_exit(QEMU_FAIL);
    }

    uint16_t pm1a_cnt = (uint16_t)u32(fadt + 64), timer = (uint16_t)u32(fadt + 76);
    uint8_t timer_length = fadt[91];
    bool wide = u32(fadt + 112) & (1u << 8);  // TMR_VAL_EXT
    uint32_t mask = wide ? 0xFFFFFFFFu : 0xFFFFFFu;
    com1_puts("pm1a_cnt=");
    put_hex(pm1a_cnt);
    com1_puts(" pm_tmr=");
    put_hex(timer);
    com1_puts(" len=");
    put_dec(timer_length);
    com1_puts(wide ? " bits=32\n" : " bits=24\n");
    if (!timer || timer_length != 4 || !pm1a_cnt) fail("no PM timer or PM1a control block");

    const uint8_t *facs = (const uint8_t *)(uintptr_t)(uint32_t)u64(fadt + 132);
    if (u64(fadt + 132) >> 32 || !sig(facs, "FACS") || u32(facs + 4) < 64)
        fail("FACS");
    else
        com1_puts("facs ok\n");

    uint32_t cpus = 0;
    for (uint32_t off = 44; off + 2 <= u32(madt + 4) && madt[off + 1] >= 2; off += madt[off + 1])
        if (madt[off] == 0 && (madt[off + 4] & 1)) cpus++;
    com1_puts("madt: ");
    put_dec(cpus);
    com1_puts(" cpus\n");

    const uint8_t *dsdt = table(u64(fadt + 140), "DSDT");
    int s5_type = -1;
    bool s3 = false;
    if (dsdt) {
        for (uint32_t i = 36; i + 8 < u32(dsdt + 4); i++) {
            if (dsdt[i] == '_' && dsdt[i + 1] == 'S' && dsdt[i + 3] == '_' && dsdt[i + 4] == 0x12) {
                // Name (_Sx, Package (n) { SLP_TYPa, ... }): PackageOp, a 1-byte PkgLength,
                // NumElements, then a ZeroOp, OneOp or BytePrefix + byte.
                const uint8_t *e = dsdt + i + 7;
                int type = e[0] == 0x0A ? e[1] : e[0] == 0x01 ? 1 : e[0] == 0x00 ? 0 : -1;
                if (dsdt[i + 2] == '5') s5_type = type;
                if (dsdt[i + 2] == '3') s3 = true;
            }
        }
    }
    if (!dsdt || s5_type < 0) {
        fail("no DSDT with \\_S5");
    } else {
        com1_puts("dsdt: _S5 type ");
        put_dec((uint32_t)s5_type);
        com1_puts(s3 ? ", _S3\n" : ", no _S3\n");
    }

    // The PM timer's rate, against the host's clock between the two reports.
    uint32_t first = inl_dx(timer) & mask;
    uint64_t tsc0 = rdtsc();
    outl_dx(REPORT_PORT, first);
    uint32_t now = first, elapsed = 0;
    while (elapsed < 357954) {
        uint32_t next = inl_dx(timer) & mask;
        uint32_t step = (next - now) & mask;
        if (step > mask / 2) {
            fail("the PM timer went backwards");
            break;
        }
        elapsed += step;
        now = next;
    }
    uint64_t tsc = rdtsc() - tsc0;
    outl_dx(REPORT_PORT, now);
    outl_dx(REPORT_PORT, (uint32_t)tsc);
    outl_dx(REPORT_PORT, (uint32_t)(tsc >> 32));

    // S3 is not announced: the request must be ignored.
    outw_dx(pm1a_cnt, (uint16_t)(3u << 10 | 1u << 13));
    com1_puts("s3 ignored\n");
    if (failed) qemu_exit(QEMU_FAIL);
    if (str_eq((const char *)(uintptr_t)info->cmdline, "s5") && s5_type >= 0) {
        outw_dx(pm1a_cnt, (uint16_t)((uint32_t)s5_type << 10 | 1u << 13));
        fail("still running after S5");
        qemu_exit(QEMU_FAIL);
    }
    com1_puts("acpi ok\n");
    qemu_exit(QEMU_PASS);
}
