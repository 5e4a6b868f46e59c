import Glibc
import Synchronization
import Testing
import VisorHost

/// The I/O thread's watches: readiness reaches the handler, watches can be added from a
/// handler, changed, and ended, and an ended watch's handler never runs again.
@Suite("I/O thread watches")
struct IOThreadTests {
    static func pipePair() -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        // SAFETY: pipe writes two descriptors into the two-element array's buffer.
        let rc = unsafe ends.withUnsafeMutableBufferPointer { unsafe pipe($0.baseAddress) }
        precondition(rc == 0)
        return (ends[0], ends[1])
    }

    static func put(_ byte: UInt8, to fd: Int32) {
        var value = byte
        // SAFETY: write(2) reads one byte from `value`, a local that outlives the call.
        _ = unsafe Glibc.write(fd, &value, 1)
    }

    static func drain(_ fd: Int32) -> Int {
        var buffer = [UInt8](repeating: 0, count: 64)
        // SAFETY: read(2) writes at most buffer.count bytes into the array's buffer.
        return unsafe buffer.withUnsafeMutableBytes { unsafe Glibc.read(fd, $0.baseAddress, $0.count) }
    }

    /// Waits up to two seconds for `condition`.
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<2000 {
            if condition() { return true }
            usleep(1000)
        }
        return condition()
    }

    @Test("a readable pipe runs its handler, with readable reported")
    func readable() throws {
        let thread = try IOThread()
        let (r, w) = Self.pipePair()
        defer { close(r); close(w) }
        let seen = Mutex<[UInt8]>([])
        let reported = Atomic<UInt32>(0)
        try thread.watch(r, for: .readable) { events in
            reported.store(events.rawValue, ordering: .relaxed)
            var byte: UInt8 = 0
            // SAFETY: read(2) writes one byte into `byte`, a local that outlives the call.
            if unsafe Glibc.read(r, &byte, 1) == 1 { seen.withLock { $0.append(byte) } }
        }
        #expect(thread.start() == 0)
        defer { thread.stop() }
        Self.put(7, to: w)
        Self.put(9, to: w)
        #expect(Self.eventually { seen.withLock { $0 } == [7, 9] })
        #expect(IOEvents(rawValue: reported.load(ordering: .relaxed)).contains(.readable))
    }

    @Test("a timer fires once, on the thread, no sooner than its deadline; a disarmed one never fires")
    func timers() throws {
        let thread = try IOThread()
        #expect(thread.start() == 0)
        defer { thread.stop() }
        let fired = Mutex<[UInt64]>([])
        let late = thread.addTimer { fired.withLock { $0.append(HostIO.monotonicNanoseconds()) } }
        let never = thread.addTimer { fired.withLock { $0.append(0) } }
        let armed = HostIO.monotonicNanoseconds()
        thread.arm(never, at: armed + 20_000_000)
        thread.arm(late, at: armed + 30_000_000)
        thread.disarm(never)
        #expect(Self.eventually { !fired.withLock { $0 }.isEmpty })
        usleep(50_000)
        let times = fired.withLock { $0 }
        #expect(times.count == 1)
        #expect(times.allSatisfy { $0 >= armed + 30_000_000 })
        // Armed again, for a deadline already past: at once.
        thread.arm(late, at: 0)
        #expect(Self.eventually { fired.withLock { $0 }.count == 2 })
    }

    @Test("an ended watch never runs again, and its slot serves a new watch")
    func unwatch() throws {
        let thread = try IOThread()
        let (r1, w1) = Self.pipePair()
        let (r2, w2) = Self.pipePair()
        defer { [r1, w1, r2, w2].forEach { close($0) } }
        let first = Atomic<Int>(0)
        let second = Atomic<Int>(0)
        let watch = try thread.watch(r1, for: .readable) { _ in
            _ = Self.drain(r1)
            first.add(1, ordering: .relaxed)
        }
        #expect(thread.start() == 0)
        defer { thread.stop() }
        Self.put(1, to: w1)
        #expect(Self.eventually { first.load(ordering: .relaxed) == 1 })
        thread.unwatch(watch, descriptor: r1)
        thread.unwatch(watch, descriptor: r1)  // twice: a stale token does nothing
        try thread.watch(r2, for: .readable) { _ in
            _ = Self.drain(r2)
            second.add(1, ordering: .relaxed)
        }
        Self.put(1, to: w1)
        Self.put(1, to: w2)
        #expect(Self.eventually { second.load(ordering: .relaxed) == 1 })
        usleep(20_000)
        #expect(first.load(ordering: .relaxed) == 1)
    }

    @Test("a handler adds a watch, and a watch changes from readable to writable")
    func addFromHandlerAndChange() throws {
        let thread = try IOThread()
        let (r1, w1) = Self.pipePair()
        let (r2, w2) = Self.pipePair()
        defer { [r1, w1, r2, w2].forEach { close($0) } }
        let writableSeen = Atomic<Int>(0)
        let inner = Atomic<Int>(0)
        try thread.watch(r1, for: .readable) { _ in
            _ = Self.drain(r1)
            // From the handler: watch the write end of the second pipe for reading (never
            // readable), then switch it to writable, which a pipe with room is at once.
            if let watch = try? thread.watch(
                w2, for: .readable,
                handler: { events in
                    if events.contains(.writable), inner.load(ordering: .relaxed) == 0 {
                        inner.store(1, ordering: .relaxed)
                        writableSeen.add(1, ordering: .relaxed)
                    }
                })
            {
                try? thread.change(watch, descriptor: w2, to: .writable)
            }
        }
        #expect(thread.start() == 0)
        defer { thread.stop() }
        Self.put(1, to: w1)
        #expect(Self.eventually { writableSeen.load(ordering: .relaxed) == 1 })
    }

    @Test("an eventfd source takes the count before its handler runs")
    func eventSource() throws {
        let thread = try IOThread()
        let event = try EventFD()
        let runs = Atomic<Int>(0)
        try thread.add(event) { runs.add(1, ordering: .relaxed) }
        #expect(thread.start() == 0)
        defer { thread.stop() }
        event.signal()
        #expect(Self.eventually { runs.load(ordering: .relaxed) >= 1 })
        usleep(20_000)
        // Taken: the level-triggered watch does not fire again on its own.
        #expect(runs.load(ordering: .relaxed) == 1)
        #expect(event.take() == 0)
    }

    @Test("perform runs work on the thread, in the order asked; at once on the caller's while the thread is not running")
    func perform() throws {
        let thread = try IOThread()
        let me = pthread_self()
        // Not started: nothing would serve a queue, so the work runs here.
        let early = Mutex<pthread_t?>(nil)
        thread.perform { early.withLock { $0 = pthread_self() } }
        #expect(early.withLock { $0 } == me)

        let event = try EventFD()
        let handlerThread = Mutex<pthread_t?>(nil)
        try thread.add(event) { handlerThread.withLock { $0 = pthread_self() } }
        #expect(thread.start() == 0)
        event.signal()
        #expect(Self.eventually { handlerThread.withLock { $0 } != nil })
        let ran = Mutex<[(Int, pthread_t)]>([])
        for i in 0..<100 { thread.perform { ran.withLock { $0.append((i, pthread_self())) } } }
        #expect(Self.eventually { ran.withLock { $0.count } == 100 })
        let runs = ran.withLock { $0 }
        #expect(runs.map(\.0) == Array(0..<100))
        #expect(runs.allSatisfy { $0.1 == handlerThread.withLock { $0 } && $0.1 != me })

        // Work queued by work runs too, at the next wake-up; after stop(), work runs at once.
        let nested = Atomic<Int>(0)
        thread.perform { thread.perform { nested.add(1, ordering: .relaxed) } }
        #expect(Self.eventually { nested.load(ordering: .relaxed) == 1 })
        thread.stop()
        let late = Mutex<pthread_t?>(nil)
        thread.perform { late.withLock { $0 = pthread_self() } }
        #expect(late.withLock { $0 } == me)
    }

    /// Holds the I/O thread, as a device does, and is held by its handlers, as a transport
    /// is by its queue's notification handler.
    final class Holder: Sendable {
        let thread: IOThread
        init(_ thread: IOThread) { self.thread = thread }
        deinit { IOThreadTests.releasedHolders.add(1, ordering: .relaxed) }
    }
    static let releasedHolders = Atomic<Int>(0)

    @Test(
        "stop() drops every handler and timer, so a device that holds the thread and is held by its handlers is freed",
        arguments: [false, true])
    func stopBreaksCycles(started: Bool) throws {
        let before = Self.releasedHolders.load(ordering: .relaxed)
        let event = try EventFD()
        do {
            let thread = try IOThread()
            let holder = Holder(thread)
            try thread.add(event) { _ = holder }
            let timer = thread.addTimer { _ = holder }
            thread.arm(timer, at: .max)
            if started { #expect(thread.start() == 0) }
            thread.stop()
        }
        #expect(Self.releasedHolders.load(ordering: .relaxed) == before + 1)
    }
}

@Suite("I/O thread pollers")
struct IOThreadPollerTests {
    /// What a poller saw: calls of poll and rest, and on which thread.
    final class Record: Sendable {
        let polls = Atomic<Int>(0)
        let rests = Atomic<Int>(0)
        /// poll finds work on its first `work` calls; rest reports work on its first `restWork` calls.
        let work: Int
        let restWork: Int
        let onThread = Atomic<Bool>(true)
        let thread = Mutex<pthread_t?>(nil)
        init(work: Int, restWork: Int = 0) {
            self.work = work
            self.restWork = restWork
        }
        func note() {
            let me = pthread_self()
            thread.withLock { thread in
                if let thread, pthread_equal(thread, me) == 0 { onThread.store(false, ordering: .relaxed) }
                thread = me
            }
        }
    }

    @Test("a poller started from another thread polls while it finds work, rests after its window, and then stops")
    func pollsThenRests() throws {
        let thread = try IOThread()
        #expect(thread.start() == 0)
        defer { thread.stop() }
        let record = Record(work: 50, restWork: 1)
        let poller = thread.addPoller(
            window: 20_000_000, adaptive: false,
            poll: {
                record.note()
                return record.polls.add(1, ordering: .relaxed).newValue <= record.work
            },
            rest: {
                record.note()
                return record.rests.add(1, ordering: .relaxed).newValue <= record.restWork
            })
        #expect(!thread.isPolling)
        // The thread sleeps in epoll_wait with nothing armed: only the start's wake-up
        // can bring it to poll.
        usleep(20_000)
        let started = HostIO.monotonicNanoseconds()
        #expect(thread.startPolling(poller))
        #expect(IOThreadTests.eventually { !thread.isPolling && record.rests.load(ordering: .relaxed) == 2 })
        let elapsed = HostIO.monotonicNanoseconds() - started
        // The work, one window, a rest that found work (polling goes on), another window, a
        // rest that did not: at least two windows.
        let polls = record.polls.load(ordering: .relaxed)
        #expect(polls > record.work)
        #expect(elapsed >= 40_000_000)
        let onThread = record.onThread.load(ordering: .relaxed)
        #expect(onThread)
        // Stopped: nothing more runs.
        let pollsWhenStopped = record.polls.load(ordering: .relaxed)
        usleep(50_000)
        let pollsAfter = record.polls.load(ordering: .relaxed)
        let rests = record.rests.load(ordering: .relaxed)
        #expect(pollsAfter == pollsWhenStopped)
        #expect(rests == 2)
    }

    @Test("starting a poller that polls already changes nothing; stop() drops the pollers")
    func startTwiceAndStop() throws {
        let thread = try IOThread()
        #expect(thread.start() == 0)
        let record = Record(work: Int.max)
        let poller = thread.addPoller(
            window: 1_000_000_000, adaptive: false,
            poll: { record.polls.add(1, ordering: .relaxed).newValue <= record.work },
            rest: { record.rests.add(1, ordering: .relaxed).newValue <= record.restWork })
        #expect(thread.startPolling(poller))
        #expect(thread.startPolling(poller))
        #expect(IOThreadTests.eventually { record.polls.load(ordering: .relaxed) > 100 })
        thread.stop()
        #expect(!thread.isPolling)
        let polls = record.polls.load(ordering: .relaxed)
        usleep(20_000)
        let pollsAfter = record.polls.load(ordering: .relaxed)
        let rests = record.rests.load(ordering: .relaxed)
        #expect(pollsAfter == polls)
        #expect(rests == 0)
    }

    @Test("an adaptive window starts at 0, grows while work comes back within the maximum, and shrinks to 0 when it does not")
    func adaptiveWindow() throws {
        let thread = try IOThread()
        #expect(thread.start() == 0)
        defer { thread.stop() }
        // A second: the gaps below must stay within it even on a loaded machine.
        let maximum: UInt64 = 1_000_000_000
        let poller = thread.addPoller(window: maximum, poll: { false }, rest: { false })
        // The first work: nothing to judge by, no polling.
        #expect(!thread.startPolling(poller))
        #expect(thread.pollWindow(poller) == 0)
        // Work again soon (well within the maximum) and later than each window: the window
        // grows, 4 us and then doubling, and each time the thread polls and then rests.
        var expected: UInt64 = 4_000
        for _ in 0..<4 {
            usleep(2_000)
            #expect(thread.startPolling(poller))
            #expect(thread.pollWindow(poller) == expected)
            #expect(IOThreadTests.eventually { !thread.isPolling })
            expected *= 2
        }
        // Work after longer than the maximum: the window halves, and below 4 us it is 0.
        var window = thread.pollWindow(poller)
        while window > 0 {
            for _ in 0..<2 { usleep(UInt32(maximum / 2000) + 10_000) }  // usleep takes under a second
            let polls = thread.startPolling(poller)
            let halved = window / 2 < 4_000 ? 0 : window / 2
            #expect(thread.pollWindow(poller) == halved)
            #expect(polls == (halved > 0))
            #expect(IOThreadTests.eventually { !thread.isPolling })
            window = halved
        }
    }

    @Test("a start that comes while the thread rests the poller keeps it polling; before start(), nothing polls")
    func startDuringRest() throws {
        let thread = try IOThread()
        let holder = Mutex<IOPoller?>(nil)
        let rests = Atomic<Int>(0)
        let poller = thread.addPoller(
            window: 2_000_000, adaptive: false, poll: { false },
            rest: {
                // The first rest finds nothing, but a notification served meanwhile (here,
                // from inside the rest) started polling again and silenced its driver.
                if rests.add(1, ordering: .relaxed).newValue == 1, let poller = holder.withLock({ $0 }) {
                    #expect(thread.startPolling(poller))
                }
                return false
            })
        holder.withLock { $0 = poller }
        // Not started: a device must not silence its driver.
        #expect(!thread.startPolling(poller))
        #expect(thread.start() == 0)
        defer { thread.stop() }
        #expect(thread.startPolling(poller))
        #expect(IOThreadTests.eventually { !thread.isPolling })
        // Polling went on after the first rest, to a second one.
        #expect(rests.load(ordering: .relaxed) == 2)
    }
}
