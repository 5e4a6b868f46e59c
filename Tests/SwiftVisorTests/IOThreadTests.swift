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
