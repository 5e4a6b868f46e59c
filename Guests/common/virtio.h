// virtio.h: what the C virtio-mmio drivers share: the register offsets of the first
// device's window, the status bits, the descriptor layout, and the queue-address writes.
//
// Header-only, like guest.h. The rings themselves stay in each guest, sized for its queue.
#ifndef SWIFTVISOR_VIRTIO_H
#define SWIFTVISOR_VIRTIO_H

#include <stdint.h>

// The first virtio device's register window (virtio-mmio version 2, virtio 1.2 4.2.2).
#define VIRTIO_BASE 0xD0000000UL
#define REG(offset) (*(volatile uint32_t *)(VIRTIO_BASE + (offset)))
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

// The "virt" magic value.
#define VIRTIO_MAGIC 0x74726976u

// Device status bits.
#define ACKNOWLEDGE 1
#define DRIVER 2
#define DRIVER_OK 4
#define FEATURES_OK 8
#define NEEDS_RESET 64

// Descriptor flags.
#define DESC_NEXT 1
#define DESC_WRITE 2

struct descriptor {
    uint64_t address;
    uint32_t length;
    uint16_t flags;
    uint16_t next;
};

// Gives the selected queue its three rings (the driver's writes between FEATURES_OK and
// DRIVER_OK).
static inline void virtio_set_queue_addresses(const void *table, const void *available, const void *used) {
    uint64_t t = (uint64_t)(uintptr_t)table, a = (uint64_t)(uintptr_t)available, u = (uint64_t)(uintptr_t)used;
    REG(QUEUE_DESC_LOW) = (uint32_t)t;
    REG(QUEUE_DESC_HIGH) = (uint32_t)(t >> 32);
    REG(QUEUE_DRIVER_LOW) = (uint32_t)a;
    REG(QUEUE_DRIVER_HIGH) = (uint32_t)(a >> 32);
    REG(QUEUE_DEVICE_LOW) = (uint32_t)u;
    REG(QUEUE_DEVICE_HIGH) = (uint32_t)(u >> 32);
}

#endif
