// epoll and eventfd for VisorHost's I/O threads: Swift's Glibc module imports neither
// <sys/epoll.h> nor <sys/eventfd.h>, and epoll_event is packed on x86-64, which Swift
// cannot lay out. VisorHost's EventLoop.swift is the only importer.
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

/// Watches `fd` for input, reporting `tag` when it is readable. Returns 0 or -errno.
int chost_epoll_add(int epoll, int fd, uint64_t tag);

/// Waits up to `timeout_ms` (-1: for ever) and writes the tags of at most `capacity` ready
/// descriptors to `tags`. Returns their count, or -errno (-EINTR when a signal came).
int chost_epoll_wait(int epoll, uint64_t *tags, int capacity, int timeout_ms);

#endif
