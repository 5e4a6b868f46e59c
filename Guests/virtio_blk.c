// virtio-mmio block driver: finds the virtio block device at 0xD0000000, negotiates VERSION_1 and FLUSH, reads sector 0, writes sector 1, flushes, reads sector 1 back, asks for the ID, and reads past the end, printing checksums (FNV-1a, 32 bits) of what it read.
//
// Output with `--disk` on a disk of at least 2 sectors whose sector 0 the test wrote:
//   virtio: device 2 at 0xd0000000, version 2
//   virtio-blk: capacity 8 sectors, blk_size 512
//   virtio-blk: sector 0 checksum 1A2B3C4D
//   virtio-blk: wrote sector 1, flushed, read back checksum 5E6F7A8B
//   virtio-blk: id swiftvisor-disk0
//   virtio-blk: read past the end: status 1
// Sector 1 is written with byte i = i ^ 0x5a (a read-only disk stops at status 9). Checks on the way, each with its own status:
// the magic value and version (no device: 2), the device ID (4), FEATURES_OK sticking (5), a
// queue of at least 8 entries (6), DRIVER_OK without DEVICE_NEEDS_RESET (7), each request
// completing with its head as the ID within a bounded wait (8), a status other than OK
// (9), the read-back sector differing from what was written (10), a used length other
// than data plus status (11), the read past the end not getting IOERR (12).
// Runs at CPL0; every register access is an MMIO exit.
#include "guest.h"
#include "virtio.h"

#define F_FLUSH (1u << 9)
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define QUEUE_SIZE 8
#define SECTOR 512

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
static struct {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
} header;
static uint8_t data[SECTOR];
static volatile uint8_t status;

static uint32_t fnv1a(const uint8_t *bytes, uint32_t length) {
    uint32_t hash = 2166136261u;
    for (uint32_t i = 0; i < length; i++) hash = (hash ^ bytes[i]) * 16777619u;
    return hash;
}

// One request: the header, `length` bytes of data (device-writable unless `out`), the
// status byte. Returns the status; exits if it does not complete or the used length is
// not the bytes the device should have written.
static uint8_t request(uint32_t type, uint64_t sector, uint32_t length, int out, uint32_t expected_used) {
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xFF;
    table[0].address = (uint64_t)(uintptr_t)&header;
    table[0].length = sizeof header;
    table[0].flags = 1;
    table[0].next = 1;
    uint16_t status_index = 1;
    if (length > 0) {
        table[1].address = (uint64_t)(uintptr_t)data;
        table[1].length = length;
        table[1].flags = out ? 1 : 3;
        table[1].next = 2;
        status_index = 2;
    }
    table[status_index].address = (uint64_t)(uintptr_t)&status;
    table[status_index].length = 1;
    table[status_index].flags = 2;
    table[status_index].next = 0;
    uint16_t before = used.index;
    available.ring[available.index % QUEUE_SIZE] = 0;
    __asm__ volatile("" ::: "memory");
    available.index++;
    __asm__ volatile("" ::: "memory");
    REG(QUEUE_NOTIFY) = 0;
    for (uint32_t spin = 0; spin < 1000000 && used.index == before; spin++) __asm__ volatile("pause");
    REG(INTERRUPT_ACK) = REG(INTERRUPT_STATUS);
    if (used.index == before || used.ring[before % QUEUE_SIZE].id != 0) {
        com1_puts("virtio-blk: request not completed\n");
        debug_exit(8);
    }
    if (used.ring[before % QUEUE_SIZE].length != expected_used) {
        com1_puts("virtio-blk: used length ");
        com1_put_decimal(used.ring[before % QUEUE_SIZE].length);
        com1_putc('\n');
        debug_exit(11);
    }
    return status;
}

static void expect_ok(uint8_t got, const char *what) {
    if (got == 0) return;
    com1_puts("virtio-blk: ");
    com1_puts(what);
    com1_puts(" failed, status ");
    com1_put_decimal(got);
    com1_putc('\n');
    debug_exit(9);
}

int guest_main(const struct boot_info *info) {
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        return EXIT_BAD_BOOT_INFO;
    }
    if (REG(MAGIC) != VIRTIO_MAGIC || REG(VERSION) != 2) {
        com1_puts("virtio: no device\n");
        debug_exit(2);
    }
    uint32_t id = REG(DEVICE_ID);
    com1_puts("virtio: device ");
    com1_put_decimal(id);
    com1_puts(" at 0xd0000000, version 2\n");
    if (id != 2) debug_exit(4);

    REG(STATUS) = 0;
    REG(STATUS) = ACKNOWLEDGE;
    REG(STATUS) = ACKNOWLEDGE | DRIVER;
    REG(DEVICE_FEATURES_SEL) = 0;
    uint32_t low = REG(DEVICE_FEATURES);
    REG(DEVICE_FEATURES_SEL) = 1;
    uint32_t high = REG(DEVICE_FEATURES);
    REG(DRIVER_FEATURES_SEL) = 0;
    REG(DRIVER_FEATURES) = low & F_FLUSH;
    REG(DRIVER_FEATURES_SEL) = 1;
    REG(DRIVER_FEATURES) = high & 1;  // VERSION_1
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    if (!(REG(STATUS) & FEATURES_OK)) {
        com1_puts("virtio: FEATURES_OK refused\n");
        debug_exit(5);
    }

    uint64_t capacity = (uint64_t)REG(CONFIG) | (uint64_t)REG(CONFIG + 4) << 32;
    uint32_t block_size = REG(CONFIG + 20);
    com1_puts("virtio-blk: capacity ");
    com1_put_decimal(capacity);
    com1_puts(" sectors, blk_size ");
    com1_put_decimal(block_size);
    com1_putc('\n');

    REG(QUEUE_SEL) = 0;
    if (REG(QUEUE_READY) != 0 || REG(QUEUE_NUM_MAX) < QUEUE_SIZE) debug_exit(6);
    REG(QUEUE_NUM) = QUEUE_SIZE;
    virtio_set_queue_addresses(table, &available, &used);
    REG(QUEUE_READY) = 1;
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    uint32_t device_status = REG(STATUS);
    if (!(device_status & DRIVER_OK) || (device_status & NEEDS_RESET)) {
        com1_puts("virtio: DRIVER_OK refused\n");
        debug_exit(7);
    }

    expect_ok(request(T_IN, 0, SECTOR, 0, SECTOR + 1), "read of sector 0");
    com1_puts("virtio-blk: sector 0 checksum ");
    com1_put_hex(fnv1a(data, SECTOR), 8);
    com1_putc('\n');

    for (uint32_t i = 0; i < SECTOR; i++) data[i] = (uint8_t)(i ^ 0x5a);
    uint32_t written = fnv1a(data, SECTOR);
    expect_ok(request(T_OUT, 1, SECTOR, 1, 1), "write of sector 1");
    expect_ok(request(T_FLUSH, 0, 0, 0, 1), "flush");
    for (uint32_t i = 0; i < SECTOR; i++) data[i] = 0;
    expect_ok(request(T_IN, 1, SECTOR, 0, SECTOR + 1), "read of sector 1");
    uint32_t read_back = fnv1a(data, SECTOR);
    com1_puts("virtio-blk: wrote sector 1, flushed, read back checksum ");
    com1_put_hex(read_back, 8);
    com1_putc('\n');
    if (read_back != written) debug_exit(10);

    for (uint32_t i = 0; i < 21; i++) data[i] = 0;
    expect_ok(request(T_GET_ID, 0, 20, 0, 21), "get-id");
    com1_puts("virtio-blk: id ");
    com1_puts((const char *)data);
    com1_putc('\n');

    uint8_t past = request(T_IN, capacity, SECTOR, 0, 1);
    com1_puts("virtio-blk: read past the end: status ");
    com1_put_decimal(past);
    com1_putc('\n');
    if (past != 1) debug_exit(12);
    debug_exit(0);
}
