// virtio-mmio vsock driver: finds the socket device at 0xD0000000, echoes one host connection to port P (command line, default 1234), then connects to host port P+1, says hello and prints the reply.
//
// Output with `--vsock cid=3,uds=PATH`, a host program that connects to PATH, sends
// `CONNECT 1234\n` and `ping`, reads `OK <port>\n` and `ping` back and closes, and a
// listener at PATH_1235 that reads `hello from the guest\n` and answers `bye`:
//   vsock: device 19, cid 3
//   vsock: listening on port 1234
//   vsock: connection from host port 1073741824
//   vsock: echoed 4 bytes
//   vsock: the host closed
//   vsock: connected to host port 1235
//   vsock: host said bye
// Checks, each with its own status: the magic value and version (no device: 2), the device
// ID (4), FEATURES_OK (5), queues of at least 8 entries (6), DRIVER_OK without
// DEVICE_NEEDS_RESET (7), a packet within about 30 s (TSC) at every wait (8), a REQUEST for
// port P first (9), the connection to P+1 accepted (10). Polls the used rings; runs at CPL0.
//
// With the command line `reset P` (or `reset`), it first takes a connection to P and, with
// it open, resets the device (status 0), prints `vsock: reset with a connection open`,
// sets the device up again and goes on as above (its output then repeats the first two
// lines); the host program of that first connection should read its end.
#include "guest.h"

#define BASE 0xD0000000UL
#define REG(offset) (*(volatile uint32_t *)(BASE + (offset)))
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
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

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

#define QUEUE_SIZE 8
#define HEADER 44
#define PAYLOAD 256
#define BUFFER (HEADER + PAYLOAD)

struct header {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct descriptor {
    uint64_t address;
    uint32_t length;
    uint16_t flags;
    uint16_t next;
};

struct queue {
    struct descriptor table[QUEUE_SIZE] __attribute__((aligned(16)));
    struct {
        uint16_t flags;
        volatile uint16_t index;
        uint16_t ring[QUEUE_SIZE];
        uint16_t used_event;
    } available __attribute__((aligned(2)));
    struct {
        uint16_t flags;
        volatile uint16_t index;
        struct {
            uint32_t id;
            uint32_t length;
        } ring[QUEUE_SIZE];
        uint16_t available_event;
    } used __attribute__((aligned(4)));
    uint8_t buffers[QUEUE_SIZE][BUFFER];
    uint16_t seen;
};

static struct queue rx, tx;
static uint64_t cid;
static uint32_t forwarded;  // payload bytes taken from the current connection

static inline uint64_t rdtsc(void) {
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

static void setup_queue(uint32_t index, struct queue *q) {
    REG(QUEUE_SEL) = index;
    if (REG(QUEUE_READY) != 0 || REG(QUEUE_NUM_MAX) < QUEUE_SIZE) debug_exit(6);
    REG(QUEUE_NUM) = QUEUE_SIZE;
    REG(QUEUE_DESC_LOW) = (uint32_t)(uintptr_t)q->table;
    REG(QUEUE_DESC_HIGH) = (uint32_t)((uint64_t)(uintptr_t)q->table >> 32);
    REG(QUEUE_DRIVER_LOW) = (uint32_t)(uintptr_t)&q->available;
    REG(QUEUE_DRIVER_HIGH) = (uint32_t)((uint64_t)(uintptr_t)&q->available >> 32);
    REG(QUEUE_DEVICE_LOW) = (uint32_t)(uintptr_t)&q->used;
    REG(QUEUE_DEVICE_HIGH) = (uint32_t)((uint64_t)(uintptr_t)&q->used >> 32);
    REG(QUEUE_READY) = 1;
}

static void make_available(struct queue *q, uint16_t head, uint32_t length, uint16_t flags) {
    q->table[head].address = (uint64_t)(uintptr_t)q->buffers[head];
    q->table[head].length = length;
    q->table[head].flags = flags;
    q->table[head].next = 0;
    q->available.ring[q->available.index % QUEUE_SIZE] = head;
    __asm__ volatile("" ::: "memory");
    q->available.index++;
    __asm__ volatile("" ::: "memory");
}

// Waits for the device to complete the next entry of `q`, for at most about 30 s.
static uint32_t wait_used(struct queue *q, uint16_t *head) {
    uint64_t start = rdtsc();
    while (q->used.index == q->seen) {
        if (rdtsc() - start > 60000000000ULL) {
            com1_puts("vsock: timed out\n");
            debug_exit(8);
        }
        __asm__ volatile("pause");
    }
    __asm__ volatile("" ::: "memory");
    *head = (uint16_t)q->used.ring[q->seen % QUEUE_SIZE].id;
    uint32_t length = q->used.ring[q->seen % QUEUE_SIZE].length;
    q->seen++;
    REG(INTERRUPT_ACK) = REG(INTERRUPT_STATUS);
    return length;
}

static void send(uint16_t op, uint32_t src_port, uint32_t dst_port, const uint8_t *payload, uint32_t len) {
    uint16_t head = (uint16_t)(tx.available.index % QUEUE_SIZE);
    struct header *h = (struct header *)tx.buffers[head];
    h->src_cid = cid;
    h->dst_cid = 2;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = 0;
    h->buf_alloc = PAYLOAD;
    h->fwd_cnt = forwarded;
    for (uint32_t i = 0; i < len; i++) tx.buffers[head][HEADER + i] = payload[i];
    make_available(&tx, head, HEADER + len, 0);
    REG(QUEUE_NOTIFY) = 1;
    uint16_t done;
    wait_used(&tx, &done);
}

// The next packet from the host: its header and payload (copied), the buffer posted again.
static struct header receive(uint8_t *payload) {
    uint16_t head;
    uint32_t length = wait_used(&rx, &head);
    struct header h = *(struct header *)rx.buffers[head];
    for (uint32_t i = 0; i < h.len && i < PAYLOAD && HEADER + i < length; i++) payload[i] = rx.buffers[head][HEADER + i];
    forwarded += h.op == OP_RW ? h.len : 0;
    make_available(&rx, head, BUFFER, 2);
    REG(QUEUE_NOTIFY) = 0;
    return h;
}

// Resets the device and sets it up: VERSION_1, rx and tx queues of 8 entries, every rx
// buffer posted; prints the device line and the port it listens on.
static void setup_device(uint64_t port) {
    if (REG(MAGIC) != 0x74726976 || REG(VERSION) != 2) {
        com1_puts("vsock: no device\n");
        debug_exit(2);
    }
    if (REG(DEVICE_ID) != 19) debug_exit(4);
    REG(STATUS) = 0;
    REG(STATUS) = ACKNOWLEDGE;
    REG(STATUS) = ACKNOWLEDGE | DRIVER;
    REG(DRIVER_FEATURES_SEL) = 0;
    REG(DRIVER_FEATURES) = 0;
    REG(DRIVER_FEATURES_SEL) = 1;
    REG(DRIVER_FEATURES) = 1;  // VERSION_1 only
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    if (!(REG(STATUS) & FEATURES_OK)) debug_exit(5);
    cid = (uint64_t)REG(CONFIG) | (uint64_t)REG(CONFIG + 4) << 32;
    setup_queue(0, &rx);
    setup_queue(1, &tx);
    for (uint16_t i = 0; i < QUEUE_SIZE; i++) make_available(&rx, i, BUFFER, 2);
    REG(STATUS) = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    uint32_t status = REG(STATUS);
    if (!(status & DRIVER_OK) || (status & NEEDS_RESET)) debug_exit(7);
    REG(QUEUE_NOTIFY) = 0;
    com1_puts("vsock: device 19, cid ");
    com1_put_decimal(cid);
    com1_puts("\nvsock: listening on port ");
    com1_put_decimal(port);
    com1_putc('\n');
}

int guest_main(const struct boot_info *info) {
    if (!boot_info_valid(info)) {
        report_bad_boot_info(info);
        return EXIT_BAD_BOOT_INFO;
    }
    uint64_t port = 1234;
    size_t length;
    const char *cmdline = boot_info_cmdline(info, &length);
    bool reset = length >= 5 && cmdline[0] == 'r' && cmdline[1] == 'e' && cmdline[2] == 's' && cmdline[3] == 'e' &&
                 cmdline[4] == 't' && (length == 5 || cmdline[5] == ' ');
    if (reset) {
        cmdline += 5;
        length -= 5;
    }
    if (length > 0 && (!parse_decimal(cmdline, length, &port) || port == 0 || port >= 0xFFFFFFFF)) {
        com1_puts("bad command line\n");
        debug_exit(EXIT_BAD_COMMAND_LINE);
    }
    setup_device(port);
    uint8_t payload[PAYLOAD];
    struct header h;
    if (reset) {
        h = receive(payload);
        if (h.op != OP_REQUEST || h.dst_port != port) debug_exit(9);
        com1_puts("vsock: connection from host port ");
        com1_put_decimal(h.src_port);
        com1_putc('\n');
        forwarded = 0;
        send(OP_RESPONSE, (uint32_t)port, h.src_port, 0, 0);
        REG(STATUS) = 0;
        com1_puts("vsock: reset with a connection open\n");
        // Fresh rings, as a driver that starts over has.
        for (size_t i = 0; i < sizeof rx; i++) ((volatile uint8_t *)&rx)[i] = 0;
        for (size_t i = 0; i < sizeof tx; i++) ((volatile uint8_t *)&tx)[i] = 0;
        setup_device(port);
    }
    h = receive(payload);
    if (h.op != OP_REQUEST || h.dst_port != port) debug_exit(9);
    uint32_t peer = h.src_port;
    com1_puts("vsock: connection from host port ");
    com1_put_decimal(peer);
    com1_putc('\n');
    forwarded = 0;
    send(OP_RESPONSE, (uint32_t)port, peer, 0, 0);
    for (;;) {
        h = receive(payload);
        if (h.src_port != peer) continue;
        if (h.op == OP_RW) {
            uint32_t n = h.len < PAYLOAD ? h.len : PAYLOAD;
            send(OP_RW, (uint32_t)port, peer, payload, n);
            com1_puts("vsock: echoed ");
            com1_put_decimal(n);
            com1_puts(" bytes\n");
        } else if (h.op == OP_CREDIT_REQUEST) {
            send(OP_CREDIT_UPDATE, (uint32_t)port, peer, 0, 0);
        } else if (h.op == OP_SHUTDOWN || h.op == OP_RST) {
            if (h.op == OP_SHUTDOWN) send(OP_RST, (uint32_t)port, peer, 0, 0);
            com1_puts("vsock: the host closed\n");
            break;
        }
    }

    uint32_t target = (uint32_t)port + 1;
    forwarded = 0;
    send(OP_REQUEST, 5000, target, 0, 0);
    for (;;) {
        h = receive(payload);
        if (h.src_port != target || h.dst_port != 5000) continue;
        if (h.op == OP_RST) {
            com1_puts("vsock: connection to host port refused\n");
            debug_exit(10);
        }
        if (h.op == OP_RESPONSE) {
            com1_puts("vsock: connected to host port ");
            com1_put_decimal(target);
            com1_putc('\n');
            const char *hello = "hello from the guest\n";
            send(OP_RW, 5000, target, (const uint8_t *)hello, 21);
        } else if (h.op == OP_RW) {
            com1_puts("vsock: host said ");
            com1_write((const char *)payload, h.len < PAYLOAD ? h.len : PAYLOAD);
            com1_putc('\n');
            send(OP_RST, 5000, target, 0, 0);
            debug_exit(0);
        }
    }
}
