// Benchmark: a virtio-blk driver whose request loop runs at CPL3, polling the used ring; the command line is `MODE COUNT` (qd1: 4 KiB random reads one at a time; qd32: 4 KiB random reads with 32 in flight; seq: 1 MiB sequential reads), and port 0x510 is written just before the first request and just after the last.
//
// Set-up runs at CPL0 (interpreted on the project's machines, so it is kept short): the
// handshake with VERSION_1, and EVENT_IDX when offered (then it notifies only when the
// device's avail_event asks for it), one queue of 256 entries, 32 request slots of three
// descriptors each (header, data, status). Then enter_ring3 continues at CPL3 (IOPL=3,
// interrupts off), where every access is native: the rings and buffers are ordinary user
// pages and QueueNotify is one MMIO write, which KVM turns into an eventfd signal when the
// VMM registered an ioeventfd for it (else an MMIO exit). The driver never waits for an
// interrupt; it spins on used.idx.
//
// Random sectors are 4 KiB aligned, from splitmix64 with a fixed seed, within the first
// capacity - 8 sectors. qd32 submits 32 requests, notifies once, and from then on, each
// time it finds completions, puts as many new requests on the ring and notifies once for
// the batch. seq reads 1 MiB at a time from sector 0 on, wrapping at the capacity.
//
// Output (COM1, at the end): `virtio_blk_bench: MODE COUNT requests, N notifications,
// B bytes`. Status 0 through port 0x501. Errors: no block device or set-up refused, 2;
// a request whose status is not OK, 9; a used entry naming no request in flight, 11;
// capacity too small (under 2,048 sectors for seq, 16 for the others), 12; a bad command
// line, 254.
#include "guest.h"

#define BASE 0xD0000000UL
#define REG(offset) (*(volatile uint32_t *)(BASE + (offset)))
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES_SEL 0x014
#define DEVICE_FEATURES 0x010
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define STATUS 0x070
#define QUEUE_DESC_LOW 0x080
#define QUEUE_DESC_HIGH 0x084
#define QUEUE_DRIVER_LOW 0x090
#define QUEUE_DRIVER_HIGH 0x094
#define QUEUE_DEVICE_LOW 0x0A0
#define QUEUE_DEVICE_HIGH 0x0A4
#define CONFIG 0x100

#define ACKNOWLEDGE 1
#define DRIVER 2
#define DRIVER_OK 4
#define FEATURES_OK 8
#define NEEDS_RESET 64

#define PROBE_PORT 0x510
#define QUEUE_SIZE 256
#define SLOTS 32
#define SMALL (4 * 1024)
#define LARGE (1024 * 1024)

enum mode { QD1, QD32, SEQ };

struct descriptor {
    uint64_t address;
    uint32_t length;
    uint16_t flags;
    uint16_t next;
};

static struct descriptor table[QUEUE_SIZE] __attribute__((aligned(16)));
static struct {
    uint16_t flags;
    volatile uint16_t index;
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
} headers[SLOTS];
static volatile uint8_t statuses[SLOTS];
static uint8_t small_buffers[SLOTS][SMALL] __attribute__((aligned(4096)));
static uint8_t large_buffer[LARGE] __attribute__((aligned(4096)));

// What the CPL3 loop needs, set at CPL0.
static enum mode mode;
static uint64_t count;
static uint64_t capacity;
static uint64_t notifications;
static int event_index;
// The available index at the last notification.
static uint16_t notified_at;
static uint64_t random_state = 0x5eed;

static uint64_t splitmix64(void) {
    uint64_t z = (random_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

// Notifies for what was added since the last notification; with EVENT_IDX only when the
// device's avail_event lies in that range (virtio 1.2, 2.7.10).
static inline void notify(void) {
    uint16_t now = available.index;
    if (event_index) {
        __asm__ volatile("mfence" ::: "memory");  // the index before reading avail_event
        uint16_t event = *(volatile uint16_t *)&used.available_event;
        if ((uint16_t)(now - event - 1) >= (uint16_t)(now - notified_at)) {
            notified_at = now;
            return;
        }
    }
    barrier();
    notified_at = now;
    REG(QUEUE_NOTIFY) = 0;
    notifications++;
}

// Puts slot `slot`'s request (a read of `length` bytes at `sector`) on the available ring,
// without notifying.
static void submit(unsigned slot, uint64_t sector, uint32_t length) {
    headers[slot].type = 0;
    headers[slot].sector = sector;
    statuses[slot] = 0xFF;
    table[3 * slot + 1].length = length;
    barrier();
    available.ring[available.index % QUEUE_SIZE] = (uint16_t)(3 * slot);
    barrier();
    available.index = (uint16_t)(available.index + 1);
}

static uint64_t random_sector(void) { return (splitmix64() % ((capacity - 8) / 8)) * 8; }

// Takes the next used entry (the caller saw one); returns its slot, after checking it.
static unsigned complete(uint16_t at) {
    barrier();  // the entry is read after the index that published it
    uint32_t id = used.ring[at % QUEUE_SIZE].id;
    if (id % 3 != 0 || id / 3 >= SLOTS) debug_exit(11);
    unsigned slot = id / 3;
    if (statuses[slot] != 0) debug_exit(9);
    return slot;
}

__attribute__((noreturn)) static void user_main(void) {
    uint16_t seen = 0;
    outb(PROBE_PORT, 0);
    if (mode == QD1) {
        for (uint64_t i = 0; i < count; i++) {
            submit(0, random_sector(), SMALL);
            notify();
            while (used.index == seen) __asm__ volatile("pause");
            complete(seen++);
        }
    } else if (mode == SEQ) {
        uint64_t sector = 0;
        for (uint64_t i = 0; i < count; i++) {
            if (sector + LARGE / 512 > capacity) sector = 0;
            submit(0, sector, LARGE);
            notify();
            while (used.index == seen) __asm__ volatile("pause");
            complete(seen++);
            sector += LARGE / 512;
        }
    } else {
        uint64_t submitted = 0, completed = 0;
        for (unsigned slot = 0; slot < SLOTS && submitted < count; slot++, submitted++) submit(slot, random_sector(), SMALL);
        if (submitted > 0) notify();
        while (completed < count) {
            while (used.index == seen) __asm__ volatile("pause");
            uint16_t now = used.index;
            barrier();
            int resubmitted = 0;
            while (seen != now) {
                unsigned slot = complete(seen++);
                completed++;
                if (submitted < count) {
                    submit(slot, random_sector(), SMALL);
                    submitted++;
                    resubmitted = 1;
                }
            }
            if (resubmitted) notify();
        }
    }
    outb(PROBE_PORT, 0);
    com1_puts("virtio_blk_bench: ");
    com1_puts(mode == QD1 ? "qd1 " : mode == QD32 ? "qd32 " : "seq ");
    com1_put_decimal(count);
    com1_puts(" requests, ");
    com1_put_decimal(notifications);
    com1_puts(" notifications, ");
    com1_put_decimal(count * (mode == SEQ ? LARGE : SMALL));
    com1_puts(" bytes\n");
    debug_exit(0);
}

extern void enter_ring3(void (*target)(void)) __attribute__((noreturn));

static bool parse_command_line(const char *s, size_t length) {
    size_t word = 0;
    while (word < length && s[word] != ' ') word++;
    if (word == 3 && s[0] == 'q' && s[1] == 'd' && s[2] == '1') mode = QD1;
    else if (word == 4 && s[0] == 'q' && s[1] == 'd' && s[2] == '3' && s[3] == '2') mode = QD32;
    else if (word == 3 && s[0] == 's' && s[1] == 'e' && s[2] == 'q') mode = SEQ;
    else return false;
    return parse_decimal(s + word, length - word, &count);
}

int guest_main(const struct boot_info *info) {
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        return EXIT_BAD_BOOT_INFO;
    }
    size_t length;
    const char *line = boot_info_cmdline(info, &length);
    if (!parse_command_line(line, length)) {
        com1_puts("bad command line\n");
        return EXIT_BAD_COMMAND_LINE;
    }
    if (REG(MAGIC) != 0x74726976 || REG(VERSION) != 2 || REG(DEVICE_ID) != 2) debug_exit(2);
    REG(STATUS) = 0;
    REG(STATUS) = ACKNOWLEDGE | DRIVER;
    REG(DEVICE_FEATURES_SEL) = 0;
    event_index = (REG(DEVICE_FEATURES) >> 29) & 1;
    REG(DRIVER_FEATURES_SEL) = 0;
    REG(DRIVER_FEATURES) = (uint32_t)event_index << 29;
    REG(DRIVER_FEATURES_SEL) = 1;
    REG(DRIVER_FEATURES) = 1;  // VERSION_1
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    if (!(REG(STATUS) & FEATURES_OK)) debug_exit(2);
    capacity = (uint64_t)REG(CONFIG) | (uint64_t)REG(CONFIG + 4) << 32;
    if (capacity < (mode == SEQ ? LARGE / 512 : 16)) debug_exit(12);
    REG(QUEUE_SEL) = 0;
    if (REG(QUEUE_NUM_MAX) < QUEUE_SIZE) debug_exit(2);
    REG(QUEUE_NUM) = QUEUE_SIZE;
    REG(QUEUE_DESC_LOW) = (uint32_t)(uintptr_t)table;
    REG(QUEUE_DESC_HIGH) = 0;
    REG(QUEUE_DRIVER_LOW) = (uint32_t)(uintptr_t)&available;
    REG(QUEUE_DRIVER_HIGH) = 0;
    REG(QUEUE_DEVICE_LOW) = (uint32_t)(uintptr_t)&used;
    REG(QUEUE_DEVICE_HIGH) = 0;
    REG(QUEUE_READY) = 1;
    for (unsigned slot = 0; slot < SLOTS; slot++) {
        headers[slot].reserved = 0;
        table[3 * slot] = (struct descriptor){(uint64_t)(uintptr_t)&headers[slot], sizeof headers[slot], 1, (uint16_t)(3 * slot + 1)};
        uint8_t *data = mode == SEQ ? large_buffer : small_buffers[slot];
        table[3 * slot + 1] = (struct descriptor){(uint64_t)(uintptr_t)data, SMALL, 3, (uint16_t)(3 * slot + 2)};
        table[3 * slot + 2] = (struct descriptor){(uint64_t)(uintptr_t)&statuses[slot], 1, 2, 0};
    }
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    if (!(REG(STATUS) & DRIVER_OK) || (REG(STATUS) & NEEDS_RESET)) debug_exit(2);
    enter_ring3(user_main);
}
