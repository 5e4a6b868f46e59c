// Multiboot guest: exercises QEMU's test devices (run with --qemu-test-devices): the latch at 0xE0, the MMIO window at 0xFF000000, and an interrupt from line 10 through the IOAPIC.
//
// Latch: writes and reads back ports 0xE0-0xE3 at widths 1, 2 and 4 ("latch ok").
// MMIO window: writes 1, 2 and 4 bytes at 0xFF000000 + 0x10/0x20/0x30 and at the last
// dword (0xFF00FFFC), reads them back at the same and other widths ("iomem ok").
// Interrupt: masks both 8259 PICs, software-enables the local APIC, programs IOAPIC pin 10
// (vector 0x50, fixed, physical to APIC 0, edge, active high), then with interrupts on
// writes 1 to port 0x200A: the handler must run once with vector 0x50; port 0x200A reads 1;
// after an EOI, writes 0 ("irq line ok"). Then "test_dev ok".
// With the command line "host" it then programs pin 11 (vector 0x51), prints
// "waiting for line 11" and halts with interrupts on until the host raises GSI 11
// (Machine.setInterruptLine), then prints "host line ok".
// A failed check prints "FAIL <what>: got <value>" and goes on.
// multiboot-load: elf 0x100000
#include "mb.h"
#include "mb_idt.h"

#define LATCH 0xE0
#define IRQ_LINE_PORT 0x2000
#define IOMEM 0xFF000000u
#define IOAPIC 0xFEC00000u
#define LAPIC 0xFEE00000u

static bool failed;

static void check(bool ok, const char *what, uint32_t got) {
    if (ok) return;
    failed = true;
    com1_puts("FAIL ");
    com1_puts(what);
    com1_puts(": got ");
    put_hex(got);
    com1_putc('\n');
}

static inline uint16_t inw(uint16_t port) {
    uint16_t value;
    __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}
static inline uint32_t inl(uint16_t port) {
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}
static inline void outb_dx(uint16_t port, uint8_t value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "d"(port) : "memory");
}
static inline uint8_t inb_dx(uint16_t port) {
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "d"(port) : "memory");
    return value;
}

static void mmio_write32(uint32_t address, uint32_t value) { *(volatile uint32_t *)(uintptr_t)address = value; }
static uint32_t mmio_read32(uint32_t address) { return *(volatile uint32_t *)(uintptr_t)address; }

static void latch(void) {
    bool before = failed;
    outb(LATCH, 0x12);
    check(inb(LATCH) == 0x12, "latch 8", inb(LATCH));
    outw(LATCH, 0x3456);
    check(inw(LATCH) == 0x3456, "latch 16", inw(LATCH));
    outl(LATCH, 0x789ABCDE);
    check(inl(LATCH) == 0x789ABCDE, "latch 32", inl(LATCH));
    check(inb(LATCH) == 0xDE, "latch 32 read 8", inb(LATCH));
    check(inw(LATCH) == 0xBCDE, "latch 32 read 16", inw(LATCH));
    outb(LATCH + 2, 0x55);  // one byte lane
    check(inl(LATCH) == 0x7855BCDE, "latch lane 2", inl(LATCH));
    check(inb(LATCH + 3) == 0x78, "latch read 0xE3", inb(LATCH + 3));
    check(inw(LATCH + 1) == 0x55BC, "latch read 16 at 0xE1", inw(LATCH + 1));
    if (!failed && !before) com1_puts("latch ok\n");
}

static void iomem(void) {
    bool before = failed;
    *(volatile uint8_t *)(uintptr_t)(IOMEM + 0x10) = 0xA5;
    *(volatile uint16_t *)(uintptr_t)(IOMEM + 0x20) = 0xBEEF;
    mmio_write32(IOMEM + 0x30, 0xCAFEF00D);
    mmio_write32(IOMEM + 0xFFFC, 0x01020304);
    check(*(volatile uint8_t *)(uintptr_t)(IOMEM + 0x10) == 0xA5, "iomem 8", *(volatile uint8_t *)(uintptr_t)(IOMEM + 0x10));
    check(*(volatile uint16_t *)(uintptr_t)(IOMEM + 0x20) == 0xBEEF, "iomem 16",
          *(volatile uint16_t *)(uintptr_t)(IOMEM + 0x20));
    check(mmio_read32(IOMEM + 0x30) == 0xCAFEF00D, "iomem 32", mmio_read32(IOMEM + 0x30));
    check(*(volatile uint8_t *)(uintptr_t)(IOMEM + 0x31) == 0xF0, "iomem 32 read 8 at +1",
          *(volatile uint8_t *)(uintptr_t)(IOMEM + 0x31));
    check(*(volatile uint16_t *)(uintptr_t)(IOMEM + 0x32) == 0xCAFE, "iomem 32 read 16 at +2",
          *(volatile uint16_t *)(uintptr_t)(IOMEM + 0x32));
    check(mmio_read32(IOMEM + 0x1E) == 0xBEEF0000, "iomem read 32 across", mmio_read32(IOMEM + 0x1E));
    check(mmio_read32(IOMEM + 0xFFFC) == 0x01020304, "iomem last dword", mmio_read32(IOMEM + 0xFFFC));
    check(mmio_read32(IOMEM + 0x40) == 0, "iomem unwritten", mmio_read32(IOMEM + 0x40));
    if (!failed && !before) com1_puts("iomem ok\n");
}

static void ioapic_route(uint32_t pin, uint32_t vector) {
    *(volatile uint32_t *)(uintptr_t)IOAPIC = 0x10 + 2 * pin + 1;
    *(volatile uint32_t *)(uintptr_t)(IOAPIC + 0x10) = 0;  // destination APIC 0
    *(volatile uint32_t *)(uintptr_t)IOAPIC = 0x10 + 2 * pin;
    *(volatile uint32_t *)(uintptr_t)(IOAPIC + 0x10) = vector;  // fixed, physical, edge, high, unmasked
}

static void lapic_eoi(void) { mmio_write32(LAPIC + 0xB0, 0); }

// Waits, with interrupts on, until the handler has run `count` times (bounded). Without
// `halt`, each window with interrupts on holds an `out` to the unclaimed port 0x80: a host
// that interprets CPL0 code delivers a pending interrupt when it enters the guest again, so
// the window must contain an exit (a bare `sti; nop; cli` was seen to miss it).
static bool wait_for_trap(uint32_t count, bool halt) {
    for (uint32_t i = 0; i < 100000 && mb_last_trap.count < count; i++) {
        if (halt)
            __asm__ volatile("sti; hlt; cli" ::: "memory");
        else
            __asm__ volatile("sti; nop; outb %%al, $0x80; cli" ::: "memory", "eax");
    }
    return mb_last_trap.count >= count;
}

static void irq_line(void) {
    bool before = failed;
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    mmio_write32(LAPIC + 0xF0, mmio_read32(LAPIC + 0xF0) | 0x1FF);
    ioapic_route(10, 0x50);
    uint32_t count = mb_last_trap.count;
    outb_dx(IRQ_LINE_PORT + 10, 1);
    check(wait_for_trap(count + 1, false), "irq line 10 raised: interrupts taken", mb_last_trap.count - count);
    check(mb_last_trap.vector == 0x50, "irq line 10 vector", mb_last_trap.vector);
    check(inb_dx(IRQ_LINE_PORT + 10) == 1, "irq line 10 reads", inb_dx(IRQ_LINE_PORT + 10));
    lapic_eoi();
    outb_dx(IRQ_LINE_PORT + 10, 0);
    check(inb_dx(IRQ_LINE_PORT + 10) == 0, "irq line 10 lowered reads", inb_dx(IRQ_LINE_PORT + 10));
    // An edge-triggered pin delivers once per rising edge: nothing more arrived.
    __asm__ volatile("sti; nop; nop; cli" ::: "memory");
    check(mb_last_trap.count == count + 1, "irq line 10 interrupts after lowering", mb_last_trap.count - count);
    if (!failed && !before) com1_puts("irq line ok\n");
}

void guest_main(uint32_t magic, const struct multiboot_info *info) {
    if (magic != MULTIBOOT_BOOT_MAGIC) qemu_exit(QEMU_FAIL);
    mb_idt_setup(sizeof mb_idt - 1);
    latch();
    iomem();
    irq_line();
    if (failed) qemu_exit(QEMU_FAIL);
    com1_puts("test_dev ok\n");
    if (str_eq((const char *)(uintptr_t)info->cmdline, "host")) {
        ioapic_route(11, 0x51);
        uint32_t count = mb_last_trap.count;
        com1_puts("waiting for line 11\n");
        while (mb_last_trap.count == count) __asm__ volatile("sti; hlt; cli" ::: "memory");
        check(mb_last_trap.vector == 0x51, "host line 11 vector", mb_last_trap.vector);
        lapic_eoi();
        if (failed) qemu_exit(QEMU_FAIL);
        com1_puts("host line ok\n");
    }
    qemu_exit(QEMU_PASS);
}
