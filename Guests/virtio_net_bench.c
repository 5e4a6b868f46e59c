// Benchmark: a virtio-net driver whose frame loop runs at CPL3, polling the used rings; the command line is `COUNT WINDOW`: it sends COUNT frames of 1,500 bytes with at most WINDOW of them away at a time and counts those that come back, and port 0x510 is written just before the first frame and just after the last one came back.
//
// Set-up runs at CPL0 (interpreted on the project's machines, so it is kept short): the
// handshake with VERSION_1 (and EVENT_IDX and MAC when offered; no MRG_RXBUF, no
// offloads), the
// receive queue (0) and the transmit queue (1) with 256 entries each, every receive
// descriptor one device-writable buffer of 12 + 1,514 bytes, all 256 posted. Then
// enter_ring3 continues at CPL3 (IOPL=3, interrupts off), where every access is native.
// Both available rings ask for no interrupts (the driver polls).
//
// A frame is the 12-byte virtio_net_hdr (zeros) and 1,500 bytes: destination
// 02:00:00:00:00:01, source the device's MAC (configuration bytes 0-5), ethertype 0x88B5
// (IEEE local experimental, which the host's stack ignores), then the payload: the
// sequence number (8 bytes, little-endian), a fixed byte pattern, and as its last 8 bytes
// the sequence number XOR 0x5eedf00dcafe1234 (so a cut frame does not count).
//
// The loop: reclaim transmit buffers from the transmit used ring; take every received
// frame, count it if it is one of ours (the right length, ethertype and source, a sequence
// number already sent and not seen before, the right trailer; anything else, such as the
// host kernel's IPv6 router solicitations, is ignored) and put its buffer back on the
// available ring; send frames while fewer than WINDOW are away (sent and not back) and a
// transmit buffer is free. The device is notified once per batch: for the transmit queue
// after each batch of sends, for the receive queue once 64 buffers were put back, each only
// when the device wants it (EVENT_IDX's avail_event, else the used ring's NO_NOTIFY flag).
// Buffers put back without a notification are still the device's to use; it waits for one
// only after it used all 256, and the driver then takes and puts back all 256, so the
// count reaches 64 and it notifies: the receive side cannot stall.
// If no frame comes back for GIVE_UP_SPINS passes of the loop, it gives up.
//
// Output (COM1, at the end): `virtio_net_bench: COUNT frames, N notifications, M returned`,
// then `virtio_net_bench: I other frames ignored`. Status 0 through port 0x501. Errors: no
// virtio device (magic or version wrong), 2; a device that is not a network device, 4;
// FEATURES_OK refused, 5; no queue of 256, 6; DRIVER_OK refused, 7; gave up waiting (the
// summary line says how many came back), 8; a used entry naming no buffer, 11; a bad
// command line (COUNT 1 to 8,388,608, WINDOW 1 to 256), 254; bad boot info, 3.
#include "guest.h"
#include "virtio.h"

#define PROBE_PORT 0x510
#define QUEUE_SIZE 256
#define RX_QUEUE 0
#define TX_QUEUE 1
#define HEADER 12
#define FRAME 1500
#define BUFFER (HEADER + 1514)
#define ETHERTYPE 0x88B5
#define MAX_COUNT (1u << 23)
#define RX_BATCH 64
#define GIVE_UP_SPINS (1ull << 27)
#define TRAILER_KEY 0x5eedf00dcafe1234ull
#define FEATURE_EVENT_IDX 29
#define FEATURE_MAC 5

struct available_ring {
    uint16_t flags;
    volatile uint16_t index;
    uint16_t ring[QUEUE_SIZE];
    volatile uint16_t used_event;
};

struct used_ring {
    volatile uint16_t flags;
    volatile uint16_t index;
    struct {
        uint32_t id;
        uint32_t length;
    } ring[QUEUE_SIZE];
    volatile uint16_t available_event;
};

struct queue {
    struct descriptor table[QUEUE_SIZE] __attribute__((aligned(16)));
    struct available_ring available __attribute__((aligned(2)));
    struct used_ring used __attribute__((aligned(4)));
    // The available index at the last notification; the next used entry to take.
    uint16_t notified_at;
    uint16_t seen;
    unsigned queue_index;
};

static struct queue rx, tx;
static uint8_t rx_buffers[QUEUE_SIZE][BUFFER] __attribute__((aligned(64)));
static uint8_t tx_buffers[QUEUE_SIZE][BUFFER] __attribute__((aligned(64)));
// One bit per sequence number: the frames that came back.
static uint8_t returned_map[MAX_COUNT / 8];
// The transmit buffers not on the ring, as a stack.
static uint16_t free_tx[QUEUE_SIZE];

// What the CPL3 loop needs, set at CPL0.
static uint64_t count;
static uint64_t window;
static uint8_t mac[6];
static int event_index;
static uint64_t notifications;
static uint64_t ignored;

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

// Notifies queue `q` for what was added since its last notification, when the device
// wants it: with EVENT_IDX when its avail_event lies in that range (virtio 1.2, 2.7.10),
// else unless the used ring's flags say NO_NOTIFY (2.7.7).
static void notify(struct queue *q) {
    uint16_t now = q->available.index;
    __asm__ volatile("mfence" ::: "memory");  // the index before reading the device's side
    if (event_index) {
        uint16_t event = q->used.available_event;
        if ((uint16_t)(now - event - 1) >= (uint16_t)(now - q->notified_at)) {
            q->notified_at = now;
            return;
        }
    } else if (q->used.flags & 1) {
        q->notified_at = now;
        return;
    }
    q->notified_at = now;
    REG(QUEUE_NOTIFY) = q->queue_index;
    notifications++;
}

// Puts descriptor `id` on the available ring, without notifying.
static inline void post(struct queue *q, uint16_t id) {
    q->available.ring[q->available.index % QUEUE_SIZE] = id;
    barrier();  // the entry before the index that publishes it
    q->available.index = (uint16_t)(q->available.index + 1);
}

static inline void store64(uint8_t *p, uint64_t value) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(value >> (8 * i));
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) value |= (uint64_t)p[i] << (8 * i);
    return value;
}

// Whether the received buffer `id` (`length` bytes with the header) holds one of our
// frames that was sent and is not yet counted; if so, counts it.
static int take_frame(uint32_t id, uint32_t length, uint64_t sent) {
    if (length != HEADER + FRAME) return 0;
    const uint8_t *frame = rx_buffers[id] + HEADER;
    if (frame[12] != (ETHERTYPE >> 8) || frame[13] != (ETHERTYPE & 0xFF)) return 0;
    for (int i = 0; i < 6; i++)
        if (frame[6 + i] != mac[i]) return 0;
    uint64_t sequence = load64(frame + 14);
    if (sequence >= sent || load64(frame + FRAME - 8) != (sequence ^ TRAILER_KEY)) return 0;
    uint8_t bit = (uint8_t)(1u << (sequence % 8));
    if (returned_map[sequence / 8] & bit) return 0;
    returned_map[sequence / 8] |= bit;
    return 1;
}

static void summary(uint64_t returned) {
    com1_puts("virtio_net_bench: ");
    com1_put_decimal(count);
    com1_puts(" frames, ");
    com1_put_decimal(notifications);
    com1_puts(" notifications, ");
    com1_put_decimal(returned);
    com1_puts(" returned\nvirtio_net_bench: ");
    com1_put_decimal(ignored);
    com1_puts(" other frames ignored\n");
}

__attribute__((noreturn)) static void user_main(void) {
    // The transmit frames' fixed parts (natively, at CPL3, unlike the set-up).
    for (unsigned slot = 0; slot < QUEUE_SIZE; slot++) {
        uint8_t *b = tx_buffers[slot];
        for (unsigned i = 0; i < HEADER; i++) b[i] = 0;
        uint8_t *frame = b + HEADER;
        frame[0] = 0x02;
        for (unsigned i = 1; i < 5; i++) frame[i] = 0;
        frame[5] = 0x01;
        for (unsigned i = 0; i < 6; i++) frame[6 + i] = mac[i];
        frame[12] = ETHERTYPE >> 8;
        frame[13] = ETHERTYPE & 0xFF;
        for (unsigned i = 22; i < FRAME - 8; i++) frame[i] = (uint8_t)(i * 7 + 3);
        free_tx[slot] = (uint16_t)slot;
    }
    unsigned free_count = QUEUE_SIZE;
    uint64_t sent = 0, returned = 0, spins = 0;
    unsigned reposted = 0;
    outb(PROBE_PORT, 0);
    notify(&rx);  // the buffers posted at set-up
    while (returned < count) {
        int progress = 0;
        // Transmit buffers the device is done with.
        while (tx.seen != tx.used.index) {
            barrier();  // the entry after the index that published it
            uint32_t id = tx.used.ring[tx.seen % QUEUE_SIZE].id;
            if (id >= QUEUE_SIZE || free_count >= QUEUE_SIZE) debug_exit(11);
            free_tx[free_count++] = (uint16_t)id;
            tx.seen++;
        }
        // Frames that came back; each buffer goes back on the ring at once.
        uint16_t now = rx.used.index;
        barrier();
        while (rx.seen != now) {
            uint32_t id = rx.used.ring[rx.seen % QUEUE_SIZE].id;
            uint32_t length = rx.used.ring[rx.seen % QUEUE_SIZE].length;
            if (id >= QUEUE_SIZE) debug_exit(11);
            if (take_frame(id, length, sent)) {
                returned++;
                progress = 1;
            } else {
                ignored++;
            }
            post(&rx, (uint16_t)id);
            rx.seen++;
            reposted++;
        }
        if (event_index) {
            rx.available.used_event = (uint16_t)(rx.seen + 0x8000);
            tx.available.used_event = (uint16_t)(tx.seen + 0x8000);
        }
        if (reposted >= RX_BATCH) {
            notify(&rx);
            reposted = 0;
        }
        // New frames while the window has room.
        int submitted = 0;
        while (sent < count && sent - returned < window && free_count > 0) {
            uint16_t slot = free_tx[--free_count];
            uint8_t *frame = tx_buffers[slot] + HEADER;
            store64(frame + 14, sent);
            store64(frame + FRAME - 8, sent ^ TRAILER_KEY);
            post(&tx, slot);
            sent++;
            submitted = 1;
        }
        if (submitted) notify(&tx);
        if (progress) {
            spins = 0;
        } else if (++spins >= GIVE_UP_SPINS) {
            com1_puts("virtio_net_bench: gave up waiting\n");
            summary(returned);
            debug_exit(8);
        } else {
            __asm__ volatile("pause");
        }
    }
    outb(PROBE_PORT, 0);
    summary(returned);
    debug_exit(0);
}

extern void enter_ring3(void (*target)(void)) __attribute__((noreturn));

// `COUNT WINDOW`: two decimal numbers separated by spaces.
static bool parse_command_line(const char *s, size_t length) {
    size_t i = 0;
    while (i < length && s[i] == ' ') i++;
    size_t first = i;
    while (i < length && s[i] != ' ') i++;
    if (!parse_decimal(s + first, i - first, &count)) return false;
    if (!parse_decimal(s + i, length - i, &window)) return false;
    return count >= 1 && count <= MAX_COUNT && window >= 1 && window <= QUEUE_SIZE;
}

// Sets up queue `index` with 256 entries at `q`'s rings; false when the device has no
// such queue.
static bool set_up_queue(struct queue *q, unsigned index) {
    q->queue_index = index;
    REG(QUEUE_SEL) = index;
    if (REG(QUEUE_NUM_MAX) < QUEUE_SIZE) return false;
    REG(QUEUE_NUM) = QUEUE_SIZE;
    virtio_set_queue_addresses(q->table, &q->available, &q->used);
    // VIRTQ_AVAIL_F_NO_INTERRUPT: the driver polls. (With EVENT_IDX the flag is ignored,
    // and the loop keeps used_event half the index space ahead instead.)
    q->available.flags = 1;
    q->available.used_event = 0x8000;
    REG(QUEUE_READY) = 1;
    return true;
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
    if (REG(MAGIC) != VIRTIO_MAGIC || REG(VERSION) != 2) debug_exit(2);
    if (REG(DEVICE_ID) != 1) debug_exit(4);
    REG(STATUS) = 0;
    REG(STATUS) = ACKNOWLEDGE | DRIVER;
    REG(DEVICE_FEATURES_SEL) = 0;
    uint32_t offered = REG(DEVICE_FEATURES);
    event_index = (offered >> FEATURE_EVENT_IDX) & 1;
    int has_mac = (offered >> FEATURE_MAC) & 1;
    REG(DRIVER_FEATURES_SEL) = 0;
    REG(DRIVER_FEATURES) = (uint32_t)event_index << FEATURE_EVENT_IDX | (uint32_t)has_mac << FEATURE_MAC;
    REG(DRIVER_FEATURES_SEL) = 1;
    REG(DRIVER_FEATURES) = 1;  // VERSION_1
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    if (!(REG(STATUS) & FEATURES_OK)) debug_exit(5);
    // The device's MAC (configuration bytes 0-5, there with VIRTIO_NET_F_MAC); without
    // it, a locally administered address of our own.
    for (unsigned i = 0; i < 6; i++) mac[i] = has_mac ? *(volatile uint8_t *)(VIRTIO_BASE + CONFIG + i) : (uint8_t)(i == 0 ? 2 : i == 5 ? 2 : 0);
    if (!set_up_queue(&rx, RX_QUEUE) || !set_up_queue(&tx, TX_QUEUE)) debug_exit(6);
    for (unsigned id = 0; id < QUEUE_SIZE; id++) {
        rx.table[id] = (struct descriptor){(uint64_t)(uintptr_t)rx_buffers[id], BUFFER, DESC_WRITE, 0};
        tx.table[id] = (struct descriptor){(uint64_t)(uintptr_t)tx_buffers[id], HEADER + FRAME, 0, 0};
        rx.available.ring[id] = (uint16_t)id;
    }
    rx.available.index = QUEUE_SIZE;
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    if (!(REG(STATUS) & DRIVER_OK) || (REG(STATUS) & NEEDS_RESET)) debug_exit(7);
    enter_ring3(user_main);
}
