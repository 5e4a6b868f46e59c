// guest.h: what the C guests share: port I/O, COM1 output, the boot-info block, parsing and exits.
//
// Everything here is static and header-only: each C guest is one translation unit plus
// crt0.S, and the compiler drops what a guest does not use. The code sticks to plain
// integer instructions, because CPL0 guest code is interpreted by the host kernel on the
// project's machines (see Guests/README.md).
#ifndef SWIFTVISOR_GUEST_H
#define SWIFTVISOR_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// MARK: Port I/O

static inline void outb(uint16_t port, uint8_t value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port) {
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

// MARK: Ending the VM

// The debug-exit port: writing V stops the VM with exit status V & 0xFF.
#define DEBUG_EXIT_PORT 0x501

// Stops the VM with `status` through the debug-exit port. If the VMM lets the guest go on
// anyway, it halts with interrupts off (which also ends the VM) and never returns.
__attribute__((noreturn)) static inline void debug_exit(uint8_t status) {
    outb(DEBUG_EXIT_PORT, status);
    for (;;) __asm__ volatile("hlt");
}

// MARK: COM1

#define COM1_THR 0x3F8        // transmit holding register (write)
#define COM1_LSR 0x3FD        // line status register (read)
#define COM1_LSR_THRE 0x20    // transmitter holding register empty

static inline void com1_putc(char c) {
    while (!(inb(COM1_LSR) & COM1_LSR_THRE)) {
    }
    outb(COM1_THR, (uint8_t)c);
}

static inline void com1_write(const char *s, size_t length) {
    for (size_t i = 0; i < length; i++) com1_putc(s[i]);
}

// Out of line, so that constant strings are not unrolled into one poll-and-write per byte.
__attribute__((noinline, unused)) static void com1_puts(const char *s) {
    while (*s) com1_putc(*s++);
}

static inline void com1_put_decimal(uint64_t value) {
    char digits[20];
    size_t count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0) com1_putc(digits[--count]);
}

// Writes the low `digits` hex digits of `value`, most significant first, in upper case.
static inline void com1_put_hex(uint64_t value, unsigned digits) {
    while (digits > 0) {
        digits--;
        unsigned nibble = (unsigned)(value >> (4 * digits)) & 0xF;
        com1_putc((char)(nibble < 10 ? '0' + nibble : 'A' + nibble - 10));
    }
}

// MARK: Boot info

#define BOOT_INFO_MAGIC 0x49425653u   // "SVBI" in little-endian byte order
#define BOOT_INFO_VERSION 1u

// The block the VMM leaves at the physical address in RDI (0x2000).
struct boot_info {
    uint32_t magic;           // BOOT_INFO_MAGIC
    uint32_t version;         // BOOT_INFO_VERSION
    uint64_t ram_size;        // bytes
    uint64_t cmdline_addr;    // guest-physical address of a NUL-terminated ASCII string
    uint64_t cmdline_length;  // bytes, without the NUL; 0 if there is no command line
    uint32_t vcpu_count;
    uint32_t reserved;
};
_Static_assert(sizeof(struct boot_info) == 40, "boot-info layout");
_Static_assert(offsetof(struct boot_info, cmdline_addr) == 16, "boot-info layout");
_Static_assert(offsetof(struct boot_info, vcpu_count) == 32, "boot-info layout");

// The exit status of a guest that finds no valid boot-info block.
#define EXIT_BAD_BOOT_INFO 3
// The exit status of a guest whose command line it cannot parse.
#define EXIT_BAD_COMMAND_LINE 254

static inline bool boot_info_valid(const struct boot_info *info) {
    return info->magic == BOOT_INFO_MAGIC && info->version == BOOT_INFO_VERSION;
}

// Says on COM1 what is wrong with the block; the caller then exits with EXIT_BAD_BOOT_INFO.
static inline void report_bad_boot_info(const struct boot_info *info) {
    com1_puts("bad boot info: magic 0x");
    com1_put_hex(info->magic, 8);
    com1_puts(", version ");
    com1_put_decimal(info->version);
    com1_puts(" (expected magic 0x49425653, version 1)\n");
}

// The command line, or "" (length 0). Stops at a NUL byte inside the stated length, and
// caps the length so that a corrupt block cannot make the guest print megabytes.
static inline const char *boot_info_cmdline(const struct boot_info *info, size_t *length) {
    const char *s = (const char *)(uintptr_t)info->cmdline_addr;
    size_t n = info->cmdline_length;
    if (s == NULL) n = 0;
    if (n > 4096) n = 4096;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0') {
            n = i;
            break;
        }
    }
    *length = n;
    return n == 0 ? "" : s;
}

// Parses `s[0..<length]` as an unsigned decimal number of at most 18 digits (so it cannot
// overflow), with optional spaces around it. Returns false if there is no such number.
static inline bool parse_decimal(const char *s, size_t length, uint64_t *value) {
    size_t i = 0;
    while (i < length && s[i] == ' ') i++;
    uint64_t result = 0;
    size_t digits = 0;
    while (i < length && s[i] >= '0' && s[i] <= '9') {
        if (++digits > 18) return false;
        result = result * 10 + (uint64_t)(s[i] - '0');
        i++;
    }
    while (i < length && s[i] == ' ') i++;
    if (digits == 0 || i != length) return false;
    *value = result;
    return true;
}

// The guest's own code: called by crt0.S with the boot-info address from RDI. Returning 0
// ends the VM with `hlt` (status 0); any other value V ends it through the debug-exit port
// with status V & 0xFF.
int guest_main(const struct boot_info *info);

#endif
