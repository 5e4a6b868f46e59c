// Exits through the debug-exit port with the status given on the command line as a decimal number (0-255).
//
// "42" ends the VM with status 42 (no output). An empty, non-numeric or out-of-range command
// line prints "bad command line" and ends with status 254; a bad boot-info block, status 3.
#include "guest.h"

int guest_main(const struct boot_info *info) {
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        debug_exit(EXIT_BAD_BOOT_INFO);
    }
    size_t length;
    const char *cmdline = boot_info_cmdline(info, &length);
    uint64_t status;
    if (!parse_decimal(cmdline, length, &status) || status > 255) {
        com1_puts("bad command line\n");
        debug_exit(EXIT_BAD_COMMAND_LINE);
    }
    // Through the port even for 0, so that a 0 here tests the port and not hlt.
    debug_exit((uint8_t)status);
}
