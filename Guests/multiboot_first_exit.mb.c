// Multiboot start-up probe: writes 0 to port 0x501 right away, so the time to its first exit is the loader's and the VMM's.
//
// The multiboot twin of `first_exit`: entry.S sets a stack and calls guest_main, which
// writes 0 to SwiftVisor's debug-exit port (status 0, so the start-up benchmark can time it
// like the others). Prints nothing; uses neither the information nor the command line.
// multiboot-load: elf 0x100000
#include "mb.h"

void guest_main(uint32_t magic, const void *info) {
    (void)magic;
    (void)info;
    outb(0x501, 0);
    for (;;) __asm__ volatile("hlt");
}
