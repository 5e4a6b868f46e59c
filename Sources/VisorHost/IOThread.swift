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

/// Readiness of a descriptor an `IOThread` watches.
package struct IOEvents: OptionSet, Sendable, Hashable {
    package let rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Input is waiting (or the end of it).
    package static let readable = IOEvents(rawValue: UInt32(CHOST_READABLE))
    /// Output would not block.
    package static let writable = IOEvents(rawValue: UInt32(CHOST_WRITABLE))
    /// Reported only: the peer hung up, or the descriptor has an error.
    package static let hangUp = IOEvents(rawValue: UInt32(CHOST_HANGUP))
}

/// A watch on one descriptor, for changing or ending it. A token is never reused for a
/// later watch, so a stale one does nothing.
package struct IOWatch: Hashable, Sendable {
    fileprivate let slot: UInt32
    fileprivate let generation: UInt32
    fileprivate var tag: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
}

/// A timer of an `IOThread` (`addTimer`).
package struct IOTimer: Hashable, Sendable {
    let index: Int
}

/// A poller made by `IOThread.addPoller`.
package struct IOPoller: Hashable, Sendable {
    let index: Int
}

/// A thread that waits on descriptors with epoll and runs each one's handler when it is
/// ready: where device work runs, off the vCPU threads. Watches are level-triggered and
/// may be added, changed and removed at any time, from any thread, handlers included (a
/// device adds a connection's socket from the handler that accepted it). Handlers run one
/// at a time, on this thread, outside any lock of the thread's own. `perform(_:)` runs other
/// work there, in order: what a vCPU thread, whose seccomp filter refuses `close` and
/// `epoll_ctl`, must not do itself. `stop()` (or releasing the thread object's last
/// reference after `stop()`) ends it.
package final class IOThread: Sendable {
    private struct Slot: Sendable {
        var handler: (@Sendable (IOEvents) -> Void)?
        var generation: UInt32 = 0
    }
    private struct State {
        var slots: [Slot] = []
        var free: [UInt32] = []
        var thread: pthread_t?
        /// Work `perform` queued for the thread, oldest first.
        var work: [@Sendable () -> Void] = []
        /// Timers by `IOTimer.index`: each handler and, while armed, its deadline.
        var timers: [(handler: @Sendable () -> Void, deadline: UInt64?)] = []
        var armedTimers = 0
        /// Pollers by `IOPoller.index`: what each runs, its window, and, while it polls, when
        /// it last found work.
        var pollers: [Poller] = []
        var activePollers = 0
    }
    private struct Poller {
        var poll: @Sendable () -> Bool
        var rest: @Sendable () -> Bool
        /// The window now, adapted between 0 and `maximumWindow`.
        var window: UInt64 = 0
        var maximumWindow: UInt64
        /// Whether the window adapts (else it is `maximumWindow` always).
        var adaptive: Bool
        /// While polling: when work was last found.
        var lastWork: UInt64?
        /// While not polling: since when (the rest, or work found with a window of 0).
        var idleSince: UInt64?
        /// `startPolling` came while polling, and its caller told its driver not to notify:
        /// a rest in the same round must not end the polling.
        var restartRequested = false
    }
    /// The first window a poller grows to, and how windows shrink below it: to nothing.
    private static let smallestWindow: UInt64 = 4_000
    private let state = Mutex(State())
    private let epoll: Int32
    private let stopEvent: EventFD
    /// Signalled when `perform` queues work.
    private let workEvent: EventFD
    /// Wake-ups served, for statistics.
    private let wakeUps = Atomic<UInt64>(0)
    // Never a watch's tag: a slot index of 2^32 - 1 or 2^32 - 2 is out of reach.
    private static let stopTag = UInt64.max
    private static let workTag = UInt64.max - 1

    package init() throws(HostFileError) {
        let epoll = chost_epoll_create()
        guard epoll >= 0 else { throw HostFileError(errno: -epoll) }
        self.epoll = epoll
        do {
            stopEvent = try EventFD()
            workEvent = try EventFD()
        } catch {
            close(epoll)
            throw error
        }
        for (event, tag) in [(stopEvent, Self.stopTag), (workEvent, Self.workTag)] {
            let rc = chost_epoll_control(epoll, Int32(CHOST_EPOLL_ADD), event.descriptor, UInt32(CHOST_READABLE), tag)
            guard rc == 0 else {
                close(epoll)
                throw HostFileError(errno: -rc)
            }
        }
    }

    deinit { close(epoll) }

    /// Runs `handler` on this thread whenever `descriptor` is ready for `events` (or hung
    /// up), until `unwatch`. The caller keeps the descriptor open while it is watched.
    @discardableResult
    package func watch(
        _ descriptor: Int32, for events: IOEvents, handler: @escaping @Sendable (IOEvents) -> Void
    ) throws(HostFileError) -> IOWatch {
        try state.withLock { (state) throws(HostFileError) -> IOWatch in
            let slot: UInt32
            if let reused = state.free.popLast() {
                slot = reused
            } else {
                slot = UInt32(state.slots.count)
                state.slots.append(Slot())
            }
            state.slots[Int(slot)].generation &+= 1
            let watch = IOWatch(slot: slot, generation: state.slots[Int(slot)].generation)
            let rc = chost_epoll_control(epoll, Int32(CHOST_EPOLL_ADD), descriptor, events.rawValue, watch.tag)
            guard rc == 0 else {
                state.free.append(slot)
                throw HostFileError(errno: -rc)
            }
            state.slots[Int(slot)].handler = handler
            return watch
        }
    }

    /// Changes what `watch` waits for (to stop asking for `writable` once output drained).
    package func change(_ watch: IOWatch, descriptor: Int32, to events: IOEvents) throws(HostFileError) {
        let rc = chost_epoll_control(epoll, Int32(CHOST_EPOLL_MODIFY), descriptor, events.rawValue, watch.tag)
        guard rc == 0 else { throw HostFileError(errno: -rc) }
    }

    /// Ends `watch`: its handler is not called again, even for readiness already reported.
    /// Call it before closing the descriptor.
    package func unwatch(_ watch: IOWatch, descriptor: Int32) {
        state.withLock { state in
            let index = Int(watch.slot)
            guard index < state.slots.count, state.slots[index].generation == watch.generation,
                state.slots[index].handler != nil
            else { return }
            _ = chost_epoll_control(epoll, Int32(CHOST_EPOLL_DELETE), descriptor, 0, 0)
            state.slots[index].handler = nil
            state.free.append(watch.slot)
        }
    }

    /// Runs `handler` on this thread each time `event` is signalled (after taking its count).
    package func add(_ event: EventFD, handler: @escaping @Sendable () -> Void) throws(HostFileError) {
        try watch(event.descriptor, for: .readable) { _ in
            if event.take() > 0 { handler() }
        }
    }

    /// Runs `work` on this thread, after the handler running now and any work queued
    /// before it, in the order asked: for what a thread may not do itself (a vCPU thread's
    /// filter refuses `close` and `epoll_ctl`). While the thread is not running (before
    /// `start()`, after `stop()`), nothing would serve the queue, so `work` runs at once on
    /// the caller's thread; work queued when `stop()` came runs on the thread that stops it.
    package func perform(_ work: @escaping @Sendable () -> Void) {
        let queued = state.withLock { state in
            guard state.thread != nil else { return false }
            state.work.append(work)
            return true
        }
        if queued { workEvent.signal() } else { work() }
    }

    /// Runs `body` on the caller's thread while this thread waits between two handlers, so
    /// that nothing it serves (queues, sockets, timers) runs meanwhile: a snapshot of the
    /// devices it serves sees them quiet. Without a running thread, `body` just runs.
    package func whileParked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        let gate = ParkGate()
        let queued = state.withLock { state in
            guard state.thread != nil else { return false }
            state.work.append {
                gate.parked.store(true, ordering: .releasing)
                while !gate.released.load(ordering: .acquiring) { HostIO.sleep(nanoseconds: 50_000) }
            }
            return true
        }
        guard queued else { return try body() }
        workEvent.signal()
        while !gate.parked.load(ordering: .acquiring) { HostIO.sleep(nanoseconds: 20_000) }
        defer { gate.released.store(true, ordering: .releasing) }
        return try body()
    }

    /// A new timer whose `handler` runs on this thread each time an `arm` deadline passes.
    /// Timers last as long as the thread (a device makes one or two when it is attached).
    package func addTimer(_ handler: @escaping @Sendable () -> Void) -> IOTimer {
        state.withLock { state in
            state.timers.append((handler, nil))
            return IOTimer(index: state.timers.count - 1)
        }
    }

    /// Runs `timer`'s handler once, on this thread, when the monotonic clock
    /// (`HostIO.monotonicNanoseconds()`) reaches `deadline`, or at once if it has; an armed
    /// timer moves to the new deadline. The thread's wait is the timer: no timerfd.
    package func arm(_ timer: IOTimer, at deadline: UInt64) {
        state.withLock { state in
            guard timer.index < state.timers.count else { return }
            if state.timers[timer.index].deadline == nil { state.armedTimers += 1 }
            state.timers[timer.index].deadline = deadline
        }
        // Wakes the thread (if it runs) to wait again with the new deadline.
        workEvent.signal()
    }

    /// Stops `timer` from firing until it is armed again.
    package func disarm(_ timer: IOTimer) {
        state.withLock { state in
            guard timer.index < state.timers.count, state.timers[timer.index].deadline != nil else { return }
            state.timers[timer.index].deadline = nil
            state.armedTimers -= 1
        }
    }

    /// A poller (adaptive polling, as QEMU's I/O threads do): while it is polling, the
    /// thread does not sleep in epoll_wait but checks its descriptors without waiting and
    /// calls `poll`, which serves what it finds and returns whether it found anything.
    /// Once `poll` has found nothing for the poller's window, the thread calls `rest`,
    /// which turns the device's notifications back on and returns whether work came
    /// meanwhile; polling goes on if it did, and ends if not. A device asks to poll with
    /// `startPolling` when a notification found work, and tells its driver not to notify
    /// while it polls: a request then costs the guest no exit at all.
    ///
    /// The window adapts to the time between bursts of work, up to `maximumWindow`
    /// (nanoseconds), by QEMU's rule: it starts at 0 (no polling), grows (4 us, then
    /// doubling) while work comes back within `maximumWindow` of the last, and halves
    /// (then drops to 0) when it comes later. So a device whose work is sparse costs no
    /// spinning, and one with a steady stream of requests is polled, at the cost of at
    /// most one window of this thread's time after each burst. Not `adaptive`, the window
    /// is `maximumWindow` always.
    package func addPoller(
        window maximumWindow: UInt64, adaptive: Bool = true, poll: @escaping @Sendable () -> Bool,
        rest: @escaping @Sendable () -> Bool
    ) -> IOPoller {
        state.withLock { state in
            state.pollers.append(
                Poller(
                    poll: poll, rest: rest, window: adaptive ? 0 : maximumWindow, maximumWindow: maximumWindow,
                    adaptive: adaptive))
            return IOPoller(index: state.pollers.count - 1)
        }
    }

    /// A device's notification found work: adapts the poller's window to the time since it
    /// was last busy, and starts polling if the window is not 0. Returns whether it polls
    /// now (already, or from here on); only then may the device tell its driver not to
    /// notify. From another thread (a vCPU thread serving a notification that exited to
    /// user space), it also wakes this one, which could otherwise sleep on while the driver
    /// has been told not to notify.
    package func startPolling(_ poller: IOPoller) -> Bool {
        let (polling, wake) = state.withLock { state -> (Bool, Bool) in
            // Not started (or stopped): nothing would poll.
            guard poller.index < state.pollers.count, let thread = state.thread else { return (false, false) }
            if state.pollers[poller.index].lastWork != nil {
                // Polling: it goes on, even if the thread is resting it right now (another
                // thread's notification, served between the rest and its end).
                state.pollers[poller.index].restartRequested = true
                return (true, false)
            }
            let now = HostIO.monotonicNanoseconds()
            var entry = state.pollers[poller.index]
            if entry.adaptive, let idle = entry.idleSince {
                let blocked = now &- idle
                if blocked > entry.maximumWindow {
                    // Polling this long would not have found it: poll less.
                    entry.window = entry.window / 2 < Self.smallestWindow ? 0 : entry.window / 2
                } else if blocked > entry.window {
                    // A longer window would have found it: poll longer.
                    entry.window = min(max(entry.window * 2, Self.smallestWindow), entry.maximumWindow)
                }
            }
            guard entry.window > 0 else {
                entry.idleSince = now
                state.pollers[poller.index] = entry
                return (false, false)
            }
            entry.idleSince = nil
            entry.lastWork = now
            entry.restartRequested = false
            state.pollers[poller.index] = entry
            state.activePollers += 1
            return (true, pthread_equal(thread, pthread_self()) == 0)
        }
        if wake { workEvent.signal() }
        return polling
    }

    /// The window `poller` polls for now (for tests).
    package func pollWindow(_ poller: IOPoller) -> UInt64 {
        state.withLock { poller.index < $0.pollers.count ? $0.pollers[poller.index].window : 0 }
    }

    /// Whether any poller is polling now (for tests).
    package var isPolling: Bool { state.withLock { $0.activePollers > 0 } }

    /// One round of the polling pollers, each outside the lock.
    private func runPollers() {
        let count = state.withLock { $0.pollers.count }
        for index in 0..<count {
            let poller: Poller? = state.withLock { state in
                index < state.pollers.count && state.pollers[index].lastWork != nil ? state.pollers[index] : nil
            }
            guard let poller, let lastWork = poller.lastWork else { continue }
            var next: UInt64? = lastWork
            // The window runs from when work was last done (a request served may take a
            // while: the next one is looked for a window after it ends, not after it began).
            if poller.poll() {
                next = HostIO.monotonicNanoseconds()
            } else if HostIO.monotonicNanoseconds() &- lastWork >= poller.window {
                next = poller.rest() ? HostIO.monotonicNanoseconds() : nil
            }
            let now = HostIO.monotonicNanoseconds()
            state.withLock { state in
                // `stop()` may have dropped the pollers meanwhile.
                guard index < state.pollers.count, state.pollers[index].lastWork != nil else { return }
                if next == nil, state.pollers[index].restartRequested { next = now }
                state.pollers[index].restartRequested = false
                state.pollers[index].lastWork = next
                if next == nil {
                    state.pollers[index].idleSince = now
                    state.activePollers -= 1
                }
            }
        }
    }

    /// The epoll_wait timeout for the earliest armed timer: -1 with none, else the
    /// milliseconds left, rounded up (0 when a deadline passed or a poller is polling).
    private func timeoutMilliseconds() -> Int32 {
        state.withLock { state in
            if state.activePollers > 0 { return 0 }
            guard state.armedTimers > 0 else { return -1 }
            var earliest = UInt64.max
            for timer in state.timers { if let deadline = timer.deadline { earliest = min(earliest, deadline) } }
            let now = HostIO.monotonicNanoseconds()
            guard earliest > now else { return 0 }
            let left = (earliest - now) / 1_000_000 + 1
            return Int32(clamping: left)
        }
    }

    /// Disarms the timers whose deadline passed and runs their handlers, outside the lock.
    private func fireTimers() {
        let due: [@Sendable () -> Void] = state.withLock { state in
            guard state.armedTimers > 0 else { return [] }
            let now = HostIO.monotonicNanoseconds()
            var due: [@Sendable () -> Void] = []
            for index in state.timers.indices {
                guard let deadline = state.timers[index].deadline, deadline <= now else { continue }
                state.timers[index].deadline = nil
                state.armedTimers -= 1
                due.append(state.timers[index].handler)
            }
            return due
        }
        due.forEach { $0() }
    }

    /// How many times the thread woke for a ready descriptor.
    package var wakeUpCount: UInt64 { wakeUps.load(ordering: .relaxed) }

    /// Starts the thread; `confine` runs on it first (its seccomp filter), and when it
    /// returns false the thread ends without serving anything (it fails closed). Returns 0
    /// or the pthread_create error.
    package func start(confine: (@Sendable () -> Bool)? = nil) -> Int32 {
        var thread = pthread_t()
        let rc = VCPUThread.create(&thread) { [self] in
            if let confine, !confine() { return }
            loop()
        }
        if rc == 0 { state.withLock { $0.thread = thread } }
        return rc
    }

    private func loop() {
        var tags = [UInt64](repeating: 0, count: 16)
        var ready = [UInt32](repeating: 0, count: 16)
        while true {
            let timeout = timeoutMilliseconds()
            // SAFETY: `tags` and `ready` hold 16 slots each, and chost_epoll_wait writes at
            // most `capacity` (16) entries into each.
            let n = unsafe tags.withUnsafeMutableBufferPointer { tags in
                unsafe ready.withUnsafeMutableBufferPointer { ready in
                    unsafe chost_epoll_wait(epoll, tags.baseAddress!, ready.baseAddress!, Int32(tags.count), timeout)
                }
            }
            if n == -EINTR { continue }
            guard n >= 0 else { return }
            for i in 0..<Int(n) {
                let tag = tags[i]
                if tag == Self.stopTag { return }
                if tag == Self.workTag {
                    _ = workEvent.take()
                    runQueuedWork()
                    continue
                }
                let slot = Int(truncatingIfNeeded: tag & 0xFFFF_FFFF)
                let generation = UInt32(truncatingIfNeeded: tag >> 32)
                // Looked up afresh for each event: an earlier handler of this batch may have
                // ended this watch.
                let handler = state.withLock { state in
                    slot < state.slots.count && state.slots[slot].generation == generation
                        ? state.slots[slot].handler : nil
                }
                guard let handler else { continue }
                wakeUps.add(1, ordering: .relaxed)
                handler(IOEvents(rawValue: ready[i]))
            }
            fireTimers()
            runPollers()
        }
    }

    /// Ends the thread, waits for it, and drops every handler and timer: nothing runs them
    /// again. Safe to call more than once, or before `start()`.
    package func stop() {
        let thread = state.withLock { state in
            defer { state.thread = nil }
            return state.thread
        }
        if let thread {
            stopEvent.signal()
            VCPUThread.join(thread)
            // Queued before the thread stopped, and not reached: nothing else will run it.
            runQueuedWork()
        }
        // Nothing will call a handler again: drop them, and with them what they hold. A
        // queue's notification handler holds its transport, which holds the device, which
        // holds this thread; kept, that cycle would keep the device's files (a TAP, a
        // disk) open after its machine is gone. Also for a thread that never started.
        let dropped: ([(@Sendable (IOEvents) -> Void)?], [@Sendable () -> Void]) = state.withLock { state in
            defer {
                for index in state.slots.indices { state.slots[index].handler = nil }
                for index in state.timers.indices { state.timers[index] = ({}, nil) }
                state.armedTimers = 0
            }
            // Released outside the lock: a handler's captures may end in deinits that
            // call back into this thread (unwatch).
            return (state.slots.map(\.handler), state.timers.map(\.handler))
        }
        let pollers: [Poller] = state.withLock { state in
            defer {
                state.pollers = []
                state.activePollers = 0
            }
            return state.pollers
        }
        withExtendedLifetime((dropped, pollers)) {}
    }

    /// Runs the work queued so far, oldest first, outside the lock (work may queue more,
    /// which runs at the next wake-up).
    private func runQueuedWork() {
        let batch = state.withLock { state in
            defer { state.work = [] }
            return state.work
        }
        batch.forEach { $0() }
    }
}

/// The handshake of `IOThread.whileParked`: the thread says it is parked, the caller
/// releases it.
private final class ParkGate: Sendable {
    let parked = Atomic<Bool>(false)
    let released = Atomic<Bool>(false)
}
