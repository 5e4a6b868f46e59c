// Multiboot guest: writes the number on its command line to QEMU's debug-exit port 0xf4 (VM status (V << 1) | 1).
//
// "0" ends the VM with status 1, "1" with 3, "38" with 77. With "WIDTH:V" (WIDTH 1, 2 or
// 4) the write has that width. A bad command line prints "bad command line" and ends the VM
// through SwiftVisor's own debug-exit port 0x501 with status 254.
// multiboot-load: elf 0x100000
#include "mb.h"

void guest_main(uint32_t magic, const struct multiboot_info *info) {
    if (magic != MULTIBOOT_BOOT_MAGIC) qemu_exit(QEMU_FAIL);
    const char *cmdline = (const char *)(uintptr_t)info->cmdline;
    uint32_t width = 4, value;
    if (cmdline[0] && cmdline[1] == ':') {
        width = (uint32_t)(cmdline[0] - '0');
        cmdline += 2;
    }
    if (!parse_u32(cmdline, &value) || (width != 1 && width != 2 && width != 4)) {
        com1_puts("bad command line\n");
        outb(0x501, 254);
        for (;;) __asm__ volatile("hlt");
    }
    if (width == 1) outb(QEMU_EXIT_PORT, (uint8_t)value);
    if (width == 2) outw(QEMU_EXIT_PORT, (uint16_t)value);
    outl(QEMU_EXIT_PORT, value);
    for (;;) __asm__ volatile("hlt");
}
