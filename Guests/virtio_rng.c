// virtio-mmio entropy driver: finds the virtio entropy device at 0xD0000000, negotiates VERSION_1, sets up one 8-entry queue, makes N requests of 64 bytes (N from the command line, default 4), then one malformed request, and prints what came back.
//
// Output with `--rng` (the bytes differ each run):
//   virtio: device 4 at 0xd0000000, version 2
//   virtio-rng: 4 requests, 256 bytes, first 8f 3a 11 c2
//   virtio-rng: malformed request completed with length 0
// Checks on the way, each with its own status: the magic value and version (no device: 2),
// the device ID (4), FEATURES_OK sticking (5), a queue of at least 8 entries (6), DRIVER_OK
// without DEVICE_NEEDS_RESET (7), each request completing within a bounded wait with all
// 64 bytes, not all zero, its head as the ID, and InterruptStatus bit 0 set (8), the
// malformed request (a device-readable buffer) completing with length 0 (9).
// Runs at CPL0; every register access is an MMIO exit.
#include "guest.h"
#include "virtio.h"

#define QUEUE_SIZE 8
#define REQUEST_BYTES 64

static struct descriptor table[QUEUE_SIZE] __attribute__((aligned(16)));
static struct {
    uint16_t flags;
    uint16_t index;
    uint16_t ring[QUEUE_SIZE];
    uint16_t used_event;
} available __attribute__((aligned(2)));
static struct {
    uint16_t flags;
    volatile uint16_t index;
    struct {
        uint32_t id;
        uint32_t length;
    } ring[QUEUE_SIZE];
    uint16_t available_event;
} used __attribute__((aligned(4)));
static uint8_t buffer[QUEUE_SIZE][REQUEST_BYTES];

static void put_hex_byte(uint8_t value) {
    const char *digits = "0123456789abcdef";
    com1_putc(digits[value >> 4]);
    com1_putc(digits[value & 15]);
}

// Makes descriptor `head` available and notifies; waits for the used index to move.
// Returns the used element's length, or -1 if it did not complete or named another head.
static int64_t submit(uint16_t head, uint16_t flags) {
    uint16_t before = used.index;
    table[head].address = (uint64_t)(uintptr_t)buffer[head];
    table[head].length = REQUEST_BYTES;
    table[head].flags = flags;
    table[head].next = 0;
    available.ring[available.index % QUEUE_SIZE] = head;
    __asm__ volatile("" ::: "memory");
    available.index++;
    __asm__ volatile("" ::: "memory");
    REG(QUEUE_NOTIFY) = 0;
    for (uint32_t spin = 0; spin < 1000000 && used.index == before; spin++) __asm__ volatile("pause");
    if (used.index == before) return -1;
    if (used.ring[before % QUEUE_SIZE].id != head) return -1;
    return used.ring[before % QUEUE_SIZE].length;
}

int guest_main(const struct boot_info *info) {
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        return EXIT_BAD_BOOT_INFO;
    }
    uint64_t requests = 4;
    size_t length;
    const char *cmdline = boot_info_cmdline(info, &length);
    if (length > 0 && (!parse_decimal(cmdline, length, &requests) || requests == 0 || requests > 1000)) {
        com1_puts("bad command line\n");
        debug_exit(EXIT_BAD_COMMAND_LINE);
    }

    if (REG(MAGIC) != VIRTIO_MAGIC || REG(VERSION) != 2) {
        com1_puts("virtio: no device\n");
        debug_exit(2);
    }
    uint32_t id = REG(DEVICE_ID);
    com1_puts("virtio: device ");
    com1_put_decimal(id);
    com1_puts(" at 0xd0000000, version 2\n");
    if (id != 4) debug_exit(4);

    REG(STATUS) = 0;
    REG(STATUS) = ACKNOWLEDGE;
    REG(STATUS) = ACKNOWLEDGE | DRIVER;
    REG(DEVICE_FEATURES_SEL) = 1;
    uint32_t high = REG(DEVICE_FEATURES);
    REG(DRIVER_FEATURES_SEL) = 0;
    REG(DRIVER_FEATURES) = 0;
    REG(DRIVER_FEATURES_SEL) = 1;
    REG(DRIVER_FEATURES) = high & 1;  // VERSION_1 only
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    if (!(REG(STATUS) & FEATURES_OK)) {
        com1_puts("virtio: FEATURES_OK refused\n");
        debug_exit(5);
    }

    REG(QUEUE_SEL) = 0;
    if (REG(QUEUE_READY) != 0 || REG(QUEUE_NUM_MAX) < QUEUE_SIZE) debug_exit(6);
    REG(QUEUE_NUM) = QUEUE_SIZE;
    virtio_set_queue_addresses(table, &available, &used);
    REG(QUEUE_READY) = 1;
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    uint32_t status = REG(STATUS);
    if (!(status & DRIVER_OK) || (status & NEEDS_RESET)) {
        com1_puts("virtio: DRIVER_OK refused\n");
        debug_exit(7);
    }

    uint64_t bytes = 0;
    for (uint64_t i = 0; i < requests; i++) {
        uint16_t head = (uint16_t)(i % QUEUE_SIZE);
        for (int b = 0; b < REQUEST_BYTES; b++) buffer[head][b] = 0;
        int64_t got = submit(head, 2 /* device-writable */);
        uint8_t any = 0;
        for (int b = 0; b < REQUEST_BYTES; b++) any |= buffer[head][b];
        uint32_t pending = REG(INTERRUPT_STATUS);
        REG(INTERRUPT_ACK) = pending;
        if (got != REQUEST_BYTES || !any || !(pending & 1)) {
            com1_puts("virtio-rng: request failed\n");
            debug_exit(8);
        }
        bytes += (uint64_t)got;
    }
    com1_puts("virtio-rng: ");
    com1_put_decimal(requests);
    com1_puts(" requests, ");
    com1_put_decimal(bytes);
    com1_puts(" bytes, first");
    for (int b = 0; b < 4; b++) {
        com1_putc(' ');
        put_hex_byte(buffer[0][b]);
    }
    com1_putc('\n');

    // A device-readable buffer: malformed for this device, yet completed, with length 0.
    uint16_t head = (uint16_t)(requests % QUEUE_SIZE);
    if (submit(head, 0) != 0) {
        com1_puts("virtio-rng: malformed request not completed with length 0\n");
        debug_exit(9);
    }
    REG(INTERRUPT_ACK) = REG(INTERRUPT_STATUS);
    com1_puts("virtio-rng: malformed request completed with length 0\n");
    debug_exit(0);
}
