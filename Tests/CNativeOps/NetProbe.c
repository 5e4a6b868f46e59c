#include "CNativeOps.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static uint16_t checksum(const void *data, size_t length) {
    const uint8_t *bytes = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < length; i += 2) sum += (uint32_t)(bytes[i] << 8 | bytes[i + 1]);
    if (length & 1) sum += (uint32_t)(bytes[length - 1] << 8);
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return htons((uint16_t)~sum);
}

int net_probe_ping(const char *address, int count, int interval_ms, int timeout_ms) {
    if (count < 1 || count > 64) return -EINVAL;
    struct sockaddr_in target = { .sin_family = AF_INET };
    if (inet_pton(AF_INET, address, &target.sin_addr) != 1) return -EINVAL;
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (fd < 0) return -errno;
    uint16_t id = (uint16_t)(getpid() ^ 0x5356);
    int answered[64] = { 0 };
    int answers = 0, sent = 0;
    long long start = now_ms(), next = start;
    while (answers < count && now_ms() - start < timeout_ms) {
        if (sent < count && now_ms() >= next) {
            uint8_t packet[64] = { 0 };
            struct icmphdr *header = (struct icmphdr *)packet;
            header->type = ICMP_ECHO;
            header->un.echo.id = htons(id);
            header->un.echo.sequence = htons((uint16_t)sent);
            memcpy(packet + sizeof *header, "swiftvisor net probe", 20);
            header->checksum = checksum(packet, sizeof packet);
            if (sendto(fd, packet, sizeof packet, 0, (struct sockaddr *)&target, sizeof target) < 0) {
                int code = errno;
                close(fd);
                return -code;
            }
            sent++;
            next += interval_ms;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 50) <= 0) continue;
        uint8_t reply[1500];
        struct sockaddr_in from;
        socklen_t fromLength = sizeof from;
        ssize_t n = recvfrom(fd, reply, sizeof reply, MSG_DONTWAIT, (struct sockaddr *)&from, &fromLength);
        if (n < 20 || from.sin_addr.s_addr != target.sin_addr.s_addr) continue;
        size_t ipLength = (size_t)(reply[0] & 0xF) * 4;
        if ((size_t)n < ipLength + sizeof(struct icmphdr)) continue;
        struct icmphdr *answer = (struct icmphdr *)(reply + ipLength);
        if (answer->type != ICMP_ECHOREPLY || ntohs(answer->un.echo.id) != id) continue;
        int sequence = ntohs(answer->un.echo.sequence);
        if (sequence < sent && !answered[sequence]) {
            answered[sequence] = 1;
            answers++;
        }
    }
    close(fd);
    return answers;
}

int net_probe_tcp_connect(const char *address, int port, int timeout_ms) {
    struct sockaddr_in target = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, address, &target.sin_addr) != 1) return EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int result = 0;
    if (connect(fd, (struct sockaddr *)&target, sizeof target) != 0) {
        if (errno != EINPROGRESS) {
            result = errno;
        } else {
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            int ready = poll(&p, 1, timeout_ms);
            if (ready <= 0) {
                result = ready == 0 ? ETIMEDOUT : errno;
            } else {
                socklen_t length = sizeof result;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &result, &length) != 0) result = errno;
            }
        }
    }
    close(fd);
    return result;
}
