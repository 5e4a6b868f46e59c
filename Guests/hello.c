// The default guest: greets on COM1, reports the RAM size, vCPU count and command line from the boot info, then exits with status 0 through port 0x501.
//
// Output, for 64 MiB, one vCPU and the command line "hi there":
//   Hello from a SwiftVisor guest!
//   RAM: 64 MiB, vCPUs: 1
//   Command line: hi there
// Ends by writing 0 to the debug-exit port 0x501 (status 0), with a hlt loop after it in
// case the VMM goes on: with an in-kernel interrupt controller, hlt no longer ends the VM.
// With a bad boot-info block it says so and ends with status 3.
#include "guest.h"

int guest_main(const struct boot_info *info) {
    com1_puts("Hello from a SwiftVisor guest!\n");
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        return EXIT_BAD_BOOT_INFO;
    }

    com1_puts("RAM: ");
    uint64_t ram = info->ram_size;
    if (ram % (1024 * 1024) == 0) {
        com1_put_decimal(ram / (1024 * 1024));
        com1_puts(" MiB");
    } else {
        com1_put_decimal(ram / 1024);
        com1_puts(" KiB");
    }
    com1_puts(", vCPUs: ");
    com1_put_decimal(info->vcpu_count);
    com1_putc('\n');

    size_t length;
    const char *cmdline = boot_info_cmdline(info, &length);
    if (length > 0) {
        com1_puts("Command line: ");
        com1_write(cmdline, length);
        com1_putc('\n');
    }
    // Through the port rather than crt0's hlt: hlt only sleeps under an in-kernel irqchip.
    debug_exit(0);
}
