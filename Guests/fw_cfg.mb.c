// Multiboot guest loaded at 0x8000 (a flat image by the header's address fields): reads fw_cfg and prints what it finds.
//
// Prints "loaded at 0x8000", "signature=QEMU id=N cpus=N max_cpus=N ram=0x...",
// "cmdline=[...]" and one "file SELECTOR SIZE NAME" line per directory entry, then
// "fw_cfg ok". Exit: QEMU debug-exit 0 (status 1) when the signature is "QEMU", the
// interface ID is 1 (no DMA), there is at least one CPU and one file, and a read past the
// signature's end gives 0; else 1 (status 3).
// multiboot-load: flat 0x8000
#include "mb.h"

#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511

static void select_item(uint16_t key) { outw(FW_CFG_SELECTOR, key); }

static uint32_t read_le(uint16_t key, int bytes) {
    select_item(key);
    uint32_t value = 0;
    for (int i = 0; i < bytes; i++) value |= (uint32_t)inb(FW_CFG_DATA) << (8 * i);
    return value;
}

static uint32_t read_be32(void) {
    uint32_t value = 0;
    for (int i = 0; i < 4; i++) value = value << 8 | inb(FW_CFG_DATA);
    return value;
}

extern char _start[];

void guest_main(uint32_t magic, const void *info) {
    (void)info;
    bool ok = magic == MULTIBOOT_BOOT_MAGIC;
    com1_puts("loaded at ");
    put_hex((uint32_t)(uintptr_t)_start);
    com1_puts("\nsignature=");
    select_item(0x0000);
    char signature[5];
    signature[4] = 0;
    for (int i = 0; i < 4; i++) signature[i] = (char)inb(FW_CFG_DATA);
    uint8_t past_end = inb(FW_CFG_DATA);
    com1_puts(signature);
    ok = ok && str_eq(signature, "QEMU") && past_end == 0;
    uint32_t id = read_le(0x0001, 4);
    uint32_t cpus = read_le(0x0005, 2), max_cpus = read_le(0x000f, 2);
    uint64_t ram = read_le(0x0003, 4);
    ram |= (uint64_t)inb(FW_CFG_DATA) << 32;
    ram |= (uint64_t)inb(FW_CFG_DATA) << 40;
    com1_puts(" id=");
    put_dec(id);
    com1_puts(" cpus=");
    put_dec(cpus);
    com1_puts(" max_cpus=");
    put_dec(max_cpus);
    com1_puts(" ram=");
    put_hex(ram);
    com1_puts("\ncmdline=[");
    uint32_t size = read_le(0x0014, 4);
    select_item(0x0015);
    for (uint32_t i = 0; i < size && i < 256; i++) {
        char c = (char)inb(FW_CFG_DATA);
        if (c) com1_putc(c);
    }
    com1_puts("]\n");
    ok = ok && id == 1 && cpus >= 1;
    select_item(0x0019);
    uint32_t files = read_be32();
    for (uint32_t f = 0; f < files && f < 16; f++) {
        uint32_t file_size = read_be32();
        uint16_t selector = (uint16_t)(inb(FW_CFG_DATA) << 8);
        selector |= inb(FW_CFG_DATA);
        inb(FW_CFG_DATA);
        inb(FW_CFG_DATA);
        char name[57];
        name[56] = 0;
        for (int i = 0; i < 56; i++) name[i] = (char)inb(FW_CFG_DATA);
        com1_puts("file ");
        put_hex(selector);
        com1_putc(' ');
        put_dec(file_size);
        com1_putc(' ');
        com1_puts(name);
        com1_putc('\n');
    }
    ok = ok && files >= 1;
    if (!ok) qemu_exit(QEMU_FAIL);
    com1_puts("fw_cfg ok\n");
    qemu_exit(QEMU_PASS);
}
