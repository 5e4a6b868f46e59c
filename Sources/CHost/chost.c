#define _GNU_SOURCE
#include "chost.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int chost_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int chost_eventfd_signal(int fd) {
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof one);
        if (n == (ssize_t)sizeof one) return 0;
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -errno : -EIO;
    }
}

int chost_eventfd_take(int fd, uint64_t *value) {
    for (;;) {
        ssize_t n = read(fd, value, sizeof *value);
        if (n == (ssize_t)sizeof *value) return 0;
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -errno : -EIO;
    }
}

int chost_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static uint32_t epoll_mask(uint32_t interest) {
    uint32_t mask = 0;
    if (interest & CHOST_READABLE) mask |= EPOLLIN;
    if (interest & CHOST_WRITABLE) mask |= EPOLLOUT;
    return mask;
}

int chost_epoll_add(int epoll, int fd, uint64_t tag) {
    return chost_epoll_control(epoll, CHOST_EPOLL_ADD, fd, CHOST_READABLE, tag);
}

int chost_epoll_control(int epoll, int operation, int fd, uint32_t interest, uint64_t tag) {
    struct epoll_event event = { .events = epoll_mask(interest), .data.u64 = tag };
    int op;
    switch (operation) {
    case CHOST_EPOLL_ADD: op = EPOLL_CTL_ADD; break;
    case CHOST_EPOLL_MODIFY: op = EPOLL_CTL_MOD; break;
    case CHOST_EPOLL_DELETE: op = EPOLL_CTL_DEL; break;
    default: return -EINVAL;
    }
    return epoll_ctl(epoll, op, fd, &event) == 0 ? 0 : -errno;
}

enum { MAX_EVENTS = 64 };

int chost_epoll_wait(int epoll, uint64_t *tags, uint32_t *ready, int capacity, int timeout_ms) {
    struct epoll_event events[MAX_EVENTS];
    if (capacity > MAX_EVENTS) capacity = MAX_EVENTS;
    if (capacity <= 0) return -EINVAL;
    int n = epoll_wait(epoll, events, capacity, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = events[i].events, r = 0;
        if (e & EPOLLIN) r |= CHOST_READABLE;
        if (e & EPOLLOUT) r |= CHOST_WRITABLE;
        if (e & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) r |= CHOST_HANGUP;
        tags[i] = events[i].data.u64;
        ready[i] = r;
    }
    return n;
}

_Static_assert(CHOST_UNIX_PATH_MAX + 1 == sizeof(((struct sockaddr_un *)0)->sun_path), "sun_path's size");

static int unix_address(const char *path, struct sockaddr_un *address) {
    size_t length = strlen(path);
    if (length == 0) return -ENOENT;
    if (length > CHOST_UNIX_PATH_MAX) return -ENAMETOOLONG;
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length);
    return 0;
}

int chost_unix_listen(const char *path, int backlog) {
    struct sockaddr_un address;
    int rc = unix_address(path, &address);
    if (rc != 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, backlog) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

int chost_tap_open(const char *name, int vnet_header_size, int *step) {
    *step = 0;
    if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    *step = 1;
    if (ioctl(fd, TUNSETIFF, &request) != 0) {
        int code = errno;
        close(fd);
        return -code;
    }
    *step = 2;
    if (ioctl(fd, TUNSETVNETHDRSZ, &vnet_header_size) != 0) {
        int code = errno;
        close(fd);
        return -code;
    }
    return fd;
}

int chost_unix_connect(const char *path) {
    struct sockaddr_un address;
    int rc = unix_address(path, &address);
    if (rc != 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&address, sizeof address) == 0) return fd;
        if (errno == EINTR) continue;
        int error = errno;
        close(fd);
        return -error;
    }
}

int chost_accept(int fd) {
    for (;;) {
        int connection = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (connection >= 0) return connection;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int chost_interface_exists(const char *name) { return if_nametoindex(name) != 0; }
