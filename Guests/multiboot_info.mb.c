// Multiboot guest: checks EAX and its multiboot information, prints it with its modules, and exits through QEMU's debug-exit.
//
// Prints "magic=0x2badb002 info=ADDR", "flags=", "mem_lower= mem_upper=", one
// "mmap BASE LENGTH TYPE" line per memory-map entry, "cmdline=[...]", "loader=[...]",
// "mods=N" and per module "mod I start=ADDR size=N string=[...] data=[first 32 bytes]",
// then "multiboot ok". Exit: QEMU debug-exit 0 (status 1) when EAX is the boot magic, the
// flags name memory, cmdline, modules, memory map and loader name, mem_lower is 639, the
// loader is "SwiftVisor", and each module is page-aligned; else 1 (status 3).
// multiboot-load: elf 0x100000
#include "mb.h"

static bool ok = true;

static void check(bool condition, const char *what) {
    if (!condition) {
        com1_puts("FAIL ");
        com1_puts(what);
        com1_putc('\n');
        ok = false;
    }
}

void guest_main(uint32_t magic, const struct multiboot_info *info) {
    com1_puts("magic=");
    put_hex(magic);
    com1_puts(" info=");
    put_hex((uint32_t)(uintptr_t)info);
    com1_putc('\n');
    check(magic == MULTIBOOT_BOOT_MAGIC, "magic");
    if (magic != MULTIBOOT_BOOT_MAGIC) qemu_exit(QEMU_FAIL);
    uint32_t want = 1u << 0 | 1u << 2 | 1u << 3 | 1u << 6 | 1u << 9;
    com1_puts("flags=");
    put_hex(info->flags);
    com1_putc('\n');
    check((info->flags & want) == want, "flags");
    com1_puts("mem_lower=");
    put_dec(info->mem_lower);
    com1_puts(" mem_upper=");
    put_dec(info->mem_upper);
    com1_putc('\n');
    check(info->mem_lower == 639, "mem_lower");
    for (uint32_t at = 0; at < info->mmap_length;) {
        const struct multiboot_mmap_entry *e = (const void *)(uintptr_t)(info->mmap_addr + at);
        com1_puts("mmap ");
        put_hex(e->base_addr);
        com1_putc(' ');
        put_hex(e->length);
        com1_putc(' ');
        put_dec(e->type);
        com1_putc('\n');
        check(e->size >= 20, "mmap size");
        at += e->size + 4;
    }
    com1_puts("cmdline=[");
    com1_puts((const char *)(uintptr_t)info->cmdline);
    com1_puts("]\nloader=[");
    com1_puts((const char *)(uintptr_t)info->boot_loader_name);
    com1_puts("]\n");
    check(str_eq((const char *)(uintptr_t)info->boot_loader_name, "SwiftVisor"), "loader name");
    com1_puts("mods=");
    put_dec(info->mods_count);
    com1_putc('\n');
    const struct multiboot_module *mods = (const void *)(uintptr_t)info->mods_addr;
    for (uint32_t i = 0; i < info->mods_count; i++) {
        com1_puts("mod ");
        put_dec(i);
        com1_puts(" start=");
        put_hex(mods[i].mod_start);
        com1_puts(" size=");
        put_dec(mods[i].mod_end - mods[i].mod_start);
        com1_puts(" string=[");
        com1_puts((const char *)(uintptr_t)mods[i].string);
        com1_puts("] data=[");
        const char *data = (const char *)(uintptr_t)mods[i].mod_start;
        for (uint32_t j = 0; j < 32 && mods[i].mod_start + j < mods[i].mod_end; j++) com1_putc(data[j]);
        com1_puts("]\n");
        check((mods[i].mod_start & 0xFFF) == 0, "module alignment");
    }
    if (!ok) qemu_exit(QEMU_FAIL);
    com1_puts("multiboot ok\n");
    qemu_exit(QEMU_PASS);
}
