// The frame reflector of the virtio-net benchmark and its test: an AF_PACKET socket on one
// interface that sends every frame it receives back out of the same interface.
#define _GNU_SOURCE
#include "CBenchSupport.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct bench_reflector {
    int fd;
    pthread_t thread;
    atomic_int stop;
    atomic_uint_fast64_t reflected;
    atomic_uint_fast64_t failed;
    uint64_t dropped;
    unsigned char frame[65536];
};

static void *reflect(void *argument) {
    struct bench_reflector *reflector = argument;
    unsigned char *frame = reflector->frame;
    while (!atomic_load_explicit(&reflector->stop, memory_order_relaxed)) {
        struct sockaddr_ll from;
        socklen_t length = sizeof from;
        ssize_t n = recvfrom(reflector->fd, frame, sizeof reflector->frame, 0, (struct sockaddr *)&from, &length);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;  // the timeout: look at stop
            break;
        }
        // The interface's own transmissions (what this socket or the host's stack sent).
        if (from.sll_pkttype == PACKET_OUTGOING) continue;
        // Unaddressed: the socket is bound, so the frame goes out of its interface as it is.
        if (send(reflector->fd, frame, (size_t)n, 0) == n) {
            atomic_fetch_add_explicit(&reflector->reflected, 1, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&reflector->failed, 1, memory_order_relaxed);
        }
    }
    return NULL;
}

int bench_reflector_start(const char *interface, struct bench_reflector **result) {
    unsigned index = if_nametoindex(interface);
    if (index == 0) return errno;
    struct bench_reflector *reflector = calloc(1, sizeof *reflector);
    if (reflector == NULL) return ENOMEM;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) {
        int error = errno;
        free(reflector);
        return error;
    }
    // Room for a full window of frames either way (the default, about 200 KiB, holds ~90).
    int size = 8 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    // Straight to the TAP's transmit function: the qdisc is skipped, which matters most
    // just after the TAP's descriptor is opened, when the kernel's link watch may leave the
    // interface on its discard-everything qdisc for up to a second.
    int one = 1;
    (void)setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    // A blocked receive looks at the stop flag every 50 ms.
    struct timeval timeout = {.tv_sec = 0, .tv_usec = 50000};
    struct sockaddr_ll address = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)index};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        int error = errno;
        close(fd);
        free(reflector);
        return error;
    }
    reflector->fd = fd;
    int error = pthread_create(&reflector->thread, NULL, reflect, reflector);
    if (error != 0) {
        close(fd);
        free(reflector);
        return error;
    }
    *result = reflector;
    return 0;
}

uint64_t bench_reflector_dropped(struct bench_reflector *reflector) {
    struct tpacket_stats statistics;
    socklen_t length = sizeof statistics;
    if (getsockopt(reflector->fd, SOL_PACKET, PACKET_STATISTICS, &statistics, &length) != 0) return 0;
    // The kernel resets the counts on each read: they add up here.
    reflector->dropped += statistics.tp_drops;
    return reflector->dropped;
}

uint64_t bench_reflector_stop(struct bench_reflector *reflector, uint64_t *failed) {
    atomic_store(&reflector->stop, 1);
    pthread_join(reflector->thread, NULL);
    close(reflector->fd);
    uint64_t reflected = atomic_load(&reflector->reflected);
    if (failed != NULL) *failed = atomic_load(&reflector->failed);
    free(reflector);
    return reflected;
}
