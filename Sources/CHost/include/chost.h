// epoll and eventfd for VisorHost's I/O threads: Swift's Glibc module imports neither
// <sys/epoll.h> nor <sys/eventfd.h>, and epoll_event is packed on x86-64, which Swift
// cannot lay out. Unix stream sockets too, whose sockaddr_un is plain C to fill, and the
// TAP set-up, whose struct ifreq is a union Swift reaches only awkwardly. VisorHost is the
// only importer.
#ifndef CHOST_H
#define CHOST_H

#include <stdint.h>

/// A new eventfd (counter 0, non-blocking, close-on-exec), or -errno.
int chost_eventfd(void);

/// Adds 1 to the eventfd's counter. Returns 0 or -errno.
int chost_eventfd_signal(int fd);

/// Reads and clears the eventfd's counter into `*value`. Returns 0, -EAGAIN when it was
/// already 0, or another -errno.
int chost_eventfd_take(int fd, uint64_t *value);

/// A new epoll instance (close-on-exec), or -errno.
int chost_epoll_create(void);

/// Readiness bits, in and out of the functions below (not epoll's own values, which Swift
/// cannot import as they are spelled).
enum {
    CHOST_READABLE = 1,
    CHOST_WRITABLE = 2,
    /// Reported only: the peer hung up, or the descriptor has an error.
    CHOST_HANGUP = 4,
};

/// epoll_ctl operations.
enum { CHOST_EPOLL_ADD = 1, CHOST_EPOLL_MODIFY = 2, CHOST_EPOLL_DELETE = 3 };

/// Watches `fd` for input, reporting `tag` when it is readable. Returns 0 or -errno.
int chost_epoll_add(int epoll, int fd, uint64_t tag);

/// Adds, changes or removes the watch on `fd` (level-triggered) for `interest`
/// (CHOST_READABLE | CHOST_WRITABLE), reported with `tag`. Returns 0 or -errno.
int chost_epoll_control(int epoll, int operation, int fd, uint32_t interest, uint64_t tag);

/// Waits up to `timeout_ms` (-1: for ever) and writes the tags of at most `capacity` ready
/// descriptors to `tags` and their readiness (CHOST_* bits) to `ready`. Returns their
/// count, or -errno (-EINTR when a signal came).
int chost_epoll_wait(int epoll, uint64_t *tags, uint32_t *ready, int capacity, int timeout_ms);

/// The longest path a Unix socket address holds: sun_path less its terminating NUL.
enum { CHOST_UNIX_PATH_MAX = 107 };

/// A Unix stream socket (non-blocking, close-on-exec) bound to `path`, which must not
/// exist, and listening with `backlog`. Returns the descriptor, or -errno (-EADDRINUSE
/// when the path exists, -ENAMETOOLONG when it does not fit).
int chost_unix_listen(const char *path, int backlog);

/// A Unix stream socket (non-blocking, close-on-exec) connected to `path`. A Unix
/// connect completes at once or fails (-ECONNREFUSED, -ENOENT, -EAGAIN when the
/// listener's backlog is full). Returns the descriptor, or -errno.
int chost_unix_connect(const char *path);

/// Accepts one waiting connection of a listening socket, non-blocking and close-on-exec.
/// Returns the descriptor, or -errno (-EAGAIN when none is waiting).
int chost_accept(int fd);

/// Opens the TAP interface `name` (at most 15 bytes) on /dev/net/tun, non-blocking and
/// close-on-exec, with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a virtio-net header of
/// `vnet_header_size` bytes in front of every frame (TUNSETVNETHDRSZ). The kernel creates
/// the interface when it does not exist, which needs CAP_NET_ADMIN. Returns the descriptor,
/// or -errno; `*step` says which call failed: 0 open, 1 TUNSETIFF, 2 TUNSETVNETHDRSZ.
int chost_tap_open(const char *name, int vnet_header_size, int *step);

/// Whether a network interface called `name` exists (if_nametoindex).
int chost_interface_exists(const char *name);

#endif
