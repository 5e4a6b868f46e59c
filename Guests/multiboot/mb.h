// mb.h: what the multiboot guests share: port I/O, COM1 output, the multiboot information, QEMU's exits.
//
// Header-only and 32-bit: the guests run in protected mode with paging off, interpreted by
// the host kernel on the project's machines, so the code stays small and avoids 64-bit
// division (there is no libgcc).
#ifndef SWIFTVISOR_MB_H
#define SWIFTVISOR_MB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}
static inline void outw(uint16_t port, uint16_t value) {
    __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port) : "memory");
}
static inline void outl(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}
static inline uint8_t inb(uint16_t port) {
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

// QEMU's isa-debug-exit (iobase 0xf4, iosize 4): writing V ends the VM with (V << 1) | 1.
#define QEMU_EXIT_PORT 0xf4
#define QEMU_PASS 0 // status 1
#define QEMU_FAIL 1 // status 3
#define QEMU_SKIP 38 // status 77

__attribute__((noreturn)) static inline void qemu_exit(uint32_t value) {
    outl(QEMU_EXIT_PORT, value);
    for (;;) __asm__ volatile("hlt");
}

// COM1, without polling the line status: SwiftVisor's 16550 takes every byte at once,
// and each poll would cost an exit.
static inline void com1_putc(char c) { outb(0x3F8, (uint8_t)c); }

__attribute__((noinline, unused)) static void com1_puts(const char *s) {
    while (*s) com1_putc(*s++);
}

__attribute__((noinline, unused)) static void put_hex(uint64_t value) {
    com1_puts("0x");
    bool started = false;
    for (int shift = 60; shift >= 0; shift -= 4) {
        unsigned digit = (unsigned)(value >> shift) & 0xF;
        if (digit == 0 && !started && shift > 0) continue;
        started = true;
        com1_putc((char)(digit < 10 ? '0' + digit : 'a' + digit - 10));
    }
}

__attribute__((noinline, unused)) static void put_dec(uint32_t value) {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n) com1_putc(digits[--n]);
}

__attribute__((unused)) static bool str_eq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

__attribute__((unused)) static bool parse_u32(const char *s, uint32_t *out) {
    uint32_t value = 0;
    if (!*s) return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || value > 400000000u) return false;
        value = value * 10 + (uint32_t)(*s - '0');
    }
    *out = value;
    return true;
}

// The multiboot information (Multiboot Specification 0.6.96, section 3.3).
#define MULTIBOOT_BOOT_MAGIC 0x2BADB002u

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr;
    uint32_t config_table;
    uint32_t boot_loader_name;
    uint32_t apm_table;
    uint32_t vbe[4];
};

struct multiboot_module {
    uint32_t mod_start, mod_end;
    uint32_t string;
    uint32_t reserved;
};

struct __attribute__((packed)) multiboot_mmap_entry {
    uint32_t size;
    uint64_t base_addr, length;
    uint32_t type;
};

#endif
