internal import CHost
import Glibc
import Synchronization

/// An eventfd: a counter one side signals and the other takes. KVM signals one when the
/// guest writes a queue notification (ioeventfd) and injects an interrupt when one is
/// signalled (irqfd). Owns and closes its descriptor.
package final class EventFD: Sendable {
    package let descriptor: Int32

    /// A new eventfd, or the errno of the failure.
    package init() throws(HostFileError) {
        let fd = chost_eventfd()
        guard fd >= 0 else { throw HostFileError(errno: -fd) }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Adds 1 to the counter (wakes a waiter, or injects an irqfd's interrupt).
    package func signal() { _ = chost_eventfd_signal(descriptor) }

    /// Reads and clears the counter: how many signals came since the last take (0: none).
    package func take() -> UInt64 {
        var value: UInt64 = 0
        // SAFETY: the C function writes one UInt64 through the pointer, to `value`, a local
        // that outlives the call.
        return unsafe chost_eventfd_take(descriptor, &value) == 0 ? value : 0
    }
}

/// A thread that waits on eventfds with epoll and runs each one's handler when it is
/// signalled: where device work runs, off the vCPU threads. Handlers are added before
/// `start()`; `stop()` (or releasing the thread object's last reference after `stop()`)
/// ends it.
package final class IOThread: Sendable {
    private struct Source: Sendable {
        let event: EventFD
        let handler: @Sendable () -> Void
    }
    private struct State {
        var sources: [Source] = []
        var thread: pthread_t?
    }
    private let state = Mutex(State())
    private let epoll: Int32
    private let stopEvent: EventFD
    /// Wake-ups served, for statistics.
    private let wakeUps = Atomic<UInt64>(0)
    private static let stopTag = UInt64.max

    package init() throws(HostFileError) {
        let epoll = chost_epoll_create()
        guard epoll >= 0 else { throw HostFileError(errno: -epoll) }
        self.epoll = epoll
        do {
            stopEvent = try EventFD()
        } catch {
            close(epoll)
            throw error
        }
        let rc = chost_epoll_add(epoll, stopEvent.descriptor, Self.stopTag)
        guard rc == 0 else {
            close(epoll)
            throw HostFileError(errno: -rc)
        }
    }

    deinit { close(epoll) }

    /// Runs `handler` on this thread each time `event` is signalled (after taking its
    /// count). Only before `start()`.
    package func add(_ event: EventFD, handler: @escaping @Sendable () -> Void) throws(HostFileError) {
        try state.withLock { (state) throws(HostFileError) in
            precondition(state.thread == nil, "IOThread.add after start")
            let rc = chost_epoll_add(epoll, event.descriptor, UInt64(state.sources.count))
            guard rc == 0 else { throw HostFileError(errno: -rc) }
            state.sources.append(Source(event: event, handler: handler))
        }
    }

    /// How many times the thread woke for a signalled source.
    package var wakeUpCount: UInt64 { wakeUps.load(ordering: .relaxed) }

    /// Starts the thread; `confine` runs on it first (its seccomp filter), and when it
    /// returns false the thread ends without serving anything (it fails closed). Returns 0
    /// or the pthread_create error.
    package func start(confine: (@Sendable () -> Bool)? = nil) -> Int32 {
        let sources = state.withLock { $0.sources }
        var thread = pthread_t()
        let rc = VCPUThread.create(&thread) { [self] in
            if let confine, !confine() { return }
            loop(sources)
        }
        if rc == 0 { state.withLock { $0.thread = thread } }
        return rc
    }

    private func loop(_ sources: [Source]) {
        var tags = [UInt64](repeating: 0, count: 16)
        while true {
            // SAFETY: `tags` holds 16 slots and chost_epoll_wait writes at most that many.
            let n = unsafe tags.withUnsafeMutableBufferPointer {
                unsafe chost_epoll_wait(epoll, $0.baseAddress!, Int32($0.count), -1)
            }
            if n == -EINTR { continue }
            guard n > 0 else { return }
            for i in 0..<Int(n) {
                let tag = tags[i]
                if tag == Self.stopTag { return }
                guard let index = Int(exactly: tag), index < sources.count else { continue }
                if sources[index].event.take() > 0 {
                    wakeUps.add(1, ordering: .relaxed)
                    sources[index].handler()
                }
            }
        }
    }

    /// Ends the thread and waits for it. Safe to call more than once, or before `start()`.
    package func stop() {
        guard
            let thread = state.withLock({ state in
                defer { state.thread = nil }; return state.thread
            })
        else { return }
        stopEvent.signal()
        VCPUThread.join(thread)
    }
}
