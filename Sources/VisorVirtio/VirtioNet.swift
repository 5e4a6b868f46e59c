package import VisorMemory
package import VisorHost
import Synchronization

/// The network device (virtio 1.2, section 5.1; device ID 1) on a TAP interface: a receive
/// queue (0) and a transmit queue (1), each frame behind the 12-byte `virtio_net_hdr`,
/// which is exactly what a TAP opened with `IFF_VNET_HDR` and a header size of 12 reads and
/// writes (`HostTap`).
///
/// Offered: VIRTIO_NET_F_MAC (the configuration's MAC address) and VIRTIO_NET_F_STATUS
/// (the link always up), and VIRTIO_NET_F_MTU when an MTU is configured. Left out, on purpose: checksum and segmentation offloads,
/// mergeable receive buffers, the control queue and multiqueue. Without offloads the header
/// carries nothing, so the device writes it as zeros both ways (`num_buffers` 1 to the
/// guest), and a driver's header fields that ask for offloads never reach the host kernel.
///
/// The device serves both directions on the machine's I/O thread:
/// - **Receive** (host to guest): while the receive queue has buffers, the TAP is watched
///   for readability; each wake-up moves at most `framesPerWakeUp` frames, each read with
///   one read(2) into a scratch buffer allocated once and copied into one receive chain.
///   When the queue runs out of buffers the device stops watching the TAP (a
///   level-triggered epoll would otherwise spin) until the driver notifies the receive
///   queue. A frame longer than the chain's device-writable bytes, or longer than
///   `maximumFrame`, is dropped and counted (`VirtioCounters.dropped`), never truncated; its
///   chain, if it took one, completes with length 0.
/// - **Transmit** (guest to host): a notification serves at most one queue's worth of
///   chains. A chain's device-readable bytes are the header and the frame, at least 12 and
///   at most 12 + `maximumFrame` bytes; a chain outside that, or with a device-writable
///   buffer, is malformed. Each frame is one write(2); when the TAP refuses it (full, or
///   down), the frame is dropped and counted: no waiting, so no queue builds up.
///
/// Every chain completes, malformed ones with length 0 (counted in `malformed`).
/// `requests` counts completed chains both ways, `bytes` the frame bytes moved (headers
/// not included). A TAP that reports an error or hang-up is no longer watched.
package final class VirtioNetDevice: VirtioDevice {
    package static let queueSize: UInt16 = 256
    /// The longest frame, after the header, either way.
    package static let maximumFrame = 65535
    /// The most frames one readable TAP wake-up moves to the guest.
    package static let framesPerWakeUp = 64
    /// The receive and transmit queues' indices.
    package static let receiveQueue = 0
    package static let transmitQueue = 1

    /// Device feature bits (5.1.3).
    package enum Feature {
        package static let mtu: UInt64 = 1 << 3
        package static let mac: UInt64 = 1 << 5
        package static let status: UInt64 = 1 << 16
    }
    /// VIRTIO_NET_S_LINK_UP in the configuration's status.
    package static let linkUp: UInt16 = 1

    private struct State {
        var receive: Virtqueue?
        var transmit: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioNetDevice.queueSize))
        /// One frame with its header, and a spare byte to tell a too-long frame (the kernel
        /// cuts a read to the buffer); allocated once.
        var scratch = [UInt8](repeating: 0, count: HostTap.headerSize + VirtioNetDevice.maximumFrame + 1)
        var counters = VirtioCounters()
        /// The I/O thread's watch on the TAP, while there is one.
        var watch: IOWatch?
        var thread: IOThread?
        /// Whether the watch asks for readability (as epoll has it: a change that failed
        /// leaves it as it was).
        var receiving = false
        /// The transmit side's buffer for one frame, apart from `scratch`, which may hold a
        /// received frame the receive limiter deferred; allocated once.
        var transmitScratch = [UInt8](repeating: 0, count: HostTap.headerSize + VirtioNetDevice.maximumFrame + 1)
        /// The length (with the header) of a frame read from the TAP and kept in `scratch`
        /// because the receive limiter refused it: delivered before anything else is read.
        var deferredFrame: Int?
        var receiveLimiter = RateLimiter()
        var transmitLimiter = RateLimiter()
        /// Whether a direction stopped at a frame its limiter refused (the timer is armed).
        var receiveThrottled = false
        var transmitThrottled = false
        var timer: IOTimer?
        /// The I/O thread's poller for the transmit queue, when attached with a poll window.
        var poller: IOPoller?
    }
    private let state = Mutex(State())
    private let tap: HostTap
    /// The monotonic clock in nanoseconds, for the rate limiters (a fake one in tests).
    private let clock: @Sendable () -> UInt64
    /// The configuration space: mac[6], status, max_virtqueue_pairs (1) and, with an MTU,
    /// mtu (little-endian 16 bits each).
    private let configuration: [UInt8]
    /// The MTU offered with VIRTIO_NET_F_MTU, if any.
    package let mtu: UInt16?

    /// A network device on `tap` with MAC address `mac` (6 bytes), offering `mtu` (68 to
    /// 65,535) with VIRTIO_NET_F_MTU when given. `receiveLimiter` and
    /// `transmitLimiter` limit each direction (bandwidth: frame bytes without the header;
    /// ops: frames), on `clock` (monotonic nanoseconds); a throttled direction resumes from a
    /// timer of the I/O thread (`attach(to:)`).
    package init(
        tap: HostTap, mac: [UInt8], mtu: UInt16? = nil, receiveLimiter: RateLimiter = RateLimiter(),
        transmitLimiter: RateLimiter = RateLimiter(), clock: @escaping @Sendable () -> UInt64 = HostIO.monotonicNanoseconds
    ) {
        precondition(mac.count == 6, "a MAC address has 6 bytes")
        self.tap = tap
        self.clock = clock
        state.withLock { state in
            state.receiveLimiter = receiveLimiter
            state.transmitLimiter = transmitLimiter
        }
        self.mtu = mtu
        var configuration = mac + [UInt8(truncatingIfNeeded: Self.linkUp), UInt8(truncatingIfNeeded: Self.linkUp >> 8)]
        if let mtu { configuration += [1, 0, UInt8(truncatingIfNeeded: mtu), UInt8(truncatingIfNeeded: mtu >> 8)] }
        self.configuration = configuration
    }

    deinit {
        state.withLock { state in
            if let watch = state.watch { state.thread?.unwatch(watch, descriptor: tap.fd) }
        }
    }

    /// Serves the TAP on `thread` (asking for readability once the driver activated the
    /// device). The device leaves the watch when it is released. With a `pollWindow`
    /// (nanoseconds), the thread polls a busy transmit queue as it does a disk's
    /// (`VirtioBlockDevice.attach(to:pollWindow:adaptive:)`): the driver is told not to
    /// notify while frames keep coming.
    package func attach(to thread: IOThread, pollWindow: UInt64 = 0, adaptive: Bool = true) throws(HostFileError) {
        let poller =
            pollWindow > 0
            ? thread.addPoller(
                window: pollWindow, adaptive: adaptive, poll: { [weak self] in self?.pollTransmit() ?? false },
                rest: { [weak self] in self?.restTransmit() ?? false }) : nil
        try state.withLock { (state) throws(HostFileError) in
            // The handler takes the device's lock, so it cannot run before this returns.
            state.watch = try thread.watch(tap.fd, for: state.receiving ? .readable : []) { [weak self] events in
                self?.backendReady(events)
            }
            state.thread = thread
            state.timer = thread.addTimer { [weak self] in self?.timerFired() }
            state.poller = poller
        }
    }

    /// The poller's round (on the I/O thread): sends what the driver made available since;
    /// returns whether it completed anything.
    private func pollTransmit() -> Bool {
        let served = state.withLock { state in
            state.transmit?.suppressingNotifications == true && !state.transmitThrottled
                ? serveTransmit(&state) : (interrupt: nil, count: 0)
        }
        served.interrupt?.signalUsedBuffer()
        return served.count > 0
    }

    /// The poll window passed with nothing sent: the driver is asked to notify again.
    /// Returns whether frames came meanwhile (polling then goes on).
    private func restTransmit() -> Bool {
        state.withLock { state in
            guard var queue = state.transmit, let memory = state.memory else { return false }
            defer { state.transmit = queue }
            return queue.endPollWindow(memory: memory, canServe: !state.transmitThrottled)
        }
    }

    /// The throttle timer fired (the I/O thread calls this; tests may too): each throttled
    /// direction is served again (and throttles again if its limiter still refuses).
    package func timerFired() {
        let (receive, transmit) = state.withLock { state in
            defer {
                state.receiveThrottled = false
                state.transmitThrottled = false
            }
            // The TAP is watched again (the receive side stopped watching it when throttled).
            if state.receiveThrottled, state.receive != nil { setReceiving(true, &state) }
            return (state.receiveThrottled, state.transmitThrottled)
        }
        if receive { backendReady(.readable) }
        if transmit { self.transmit() }
    }

    /// When each direction is served again (monotonic nanoseconds), or nil when it is not
    /// throttled (for tests).
    package var throttledUntil: (receive: UInt64?, transmit: UInt64?) {
        state.withLock { state in
            (
                state.receiveThrottled ? state.receiveLimiter.blockedUntil : nil,
                state.transmitThrottled ? state.transmitLimiter.blockedUntil : nil
            )
        }
    }

    /// Replaces buckets of the receive and transmit limiters (see `RateLimiter.update`: new
    /// buckets start full, nil leaves a bucket as it is), and serves a throttled direction
    /// again at once.
    package func updateRateLimiters(
        receiveBandwidth: TokenBucket?? = nil, receiveOps: TokenBucket?? = nil, transmitBandwidth: TokenBucket?? = nil,
        transmitOps: TokenBucket?? = nil
    ) {
        let (thread, timer, throttled) = state.withLock { state in
            state.receiveLimiter.update(bandwidth: receiveBandwidth, ops: receiveOps)
            state.transmitLimiter.update(bandwidth: transmitBandwidth, ops: transmitOps)
            return (state.thread, state.timer, state.receiveThrottled || state.transmitThrottled)
        }
        guard throttled else { return }
        if let thread, let timer { thread.arm(timer, at: 0) } else { timerFired() }
    }

    /// Arms the timer for the earliest deadline of the throttled directions.
    private func armTimer(_ state: inout State) {
        guard let thread = state.thread, let timer = state.timer else { return }
        var deadline = UInt64.max
        if state.receiveThrottled { deadline = min(deadline, state.receiveLimiter.blockedUntil ?? 0) }
        if state.transmitThrottled { deadline = min(deadline, state.transmitLimiter.blockedUntil ?? 0) }
        thread.arm(timer, at: deadline)
    }

    package var deviceType: UInt32 { 1 }
    package var deviceFeatures: UInt64 { Feature.mac | Feature.status | (mtu != nil ? Feature.mtu : 0) }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize] }
    /// EVENT_IDX: the transmit queue publishes `avail_event` when drained and looks again
    /// (`Virtqueue.serveAvailable`), the receive queue when it runs out of buffers.
    package var supportsEventIndex: Bool { true }

    /// Chains completed both ways (malformed ones among them), frame bytes moved, and
    /// frames dropped.
    package var counters: VirtioCounters { state.withLock { $0.counters } }

    /// Whether the device currently waits for the TAP to be readable (for tests).
    package var isReceiving: Bool { state.withLock { $0.receiving } }

    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<UInt64(min(width, 8)) {
            let (at, overflow) = offset.addingReportingOverflow(i)
            guard !overflow, at < UInt64(configuration.count) else { break }
            value |= UInt64(configuration[Int(at)]) << (8 * i)
        }
        return value
    }

    /// Nothing in the configuration is writable (the MAC is the device's, 5.1.4.1).
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        guard queues.count == 2, let receive = queues[0], let transmit = queues[1] else {
            throw VirtioActivationError("the receive and transmit queues must both be ready")
        }
        let thread = state.withLock { state in
            state.receive = receive
            state.transmit = transmit
            state.memory = memory
            state.interrupt = interrupt
            return state.thread
        }
        followQueues(on: thread)
    }

    package func reset() {
        let thread = state.withLock { state in
            state.receive = nil
            state.transmit = nil
            state.memory = nil
            state.interrupt = nil
            state.deferredFrame = nil
            state.receiveThrottled = false
            state.transmitThrottled = false
            return state.thread
        }
        followQueues(on: thread)
    }

    /// After an activation or a reset, which come from a vCPU thread: the watch asks for
    /// readability while there is a receive queue, changed on the I/O thread (`thread`,
    /// where there is one), since a vCPU thread's seccomp filter refuses epoll_ctl. The
    /// I/O thread reads the state when it gets there, so a reset and an activation in
    /// quick succession end as the last one left it. Called outside the lock: a stopped
    /// thread runs the work at once.
    private func followQueues(on thread: IOThread?) {
        let work: @Sendable () -> Void = { [weak self] in
            guard let self else { return }
            state.withLock { state in setReceiving(state.receive != nil, &state) }
        }
        if let thread { thread.perform(work) } else { work() }
    }

    package func notify(queue index: Int) {
        switch index {
        case Self.receiveQueue:
            // New receive buffers: watch the TAP again; its readiness moves the frames. A
            // deferred frame is not in the TAP any more: it is moved now.
            let deferred = state.withLock { state in
                guard state.receive != nil, !state.receiveThrottled else { return false }
                setReceiving(true, &state)
                return state.deferredFrame != nil
            }
            if deferred { backendReady(.readable) }
        case Self.transmitQueue:
            transmit()
        default:
            break
        }
    }

    /// Changes whether the watch asks for readability (on the I/O thread, or with no
    /// thread attached). A change that fails leaves the flag as it was: it is tried again
    /// at the driver's next receive notification or, to stop, at the TAP's next readiness.
    private func setReceiving(_ on: Bool, _ state: inout State) {
        guard state.receiving != on else { return }
        if let watch = state.watch, let thread = state.thread {
            do throws(HostFileError) { try thread.change(watch, descriptor: tap.fd, to: on ? .readable : []) } catch {
                return
            }
        }
        state.receiving = on
    }

    /// The TAP is ready (the I/O thread calls this; tests may too): moves up to
    /// `framesPerWakeUp` frames into receive chains.
    package func backendReady(_ events: IOEvents) {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            if events.contains(.hangUp), !events.contains(.readable) {
                backendFailed(&state)
                return nil
            }
            var completed = false
            if state.receiveThrottled { return nil }
            let now = state.receiveLimiter.isEnabled ? clock() : 0
            for _ in 0..<Self.framesPerWakeUp {
                guard var queue = state.receive, let memory = state.memory else {
                    // Reset: stop watching (the reset's own change may have been refused).
                    setReceiving(false, &state)
                    break
                }
                guard let pending = queue.pending(memory: memory), pending > 0 else {
                    // No buffers (or a broken queue): ask for the driver's notification and
                    // look again, since under EVENT_IDX buffers added before the request
                    // was seen are not notified; then wait for it.
                    let came = queue.resumeNotifications(memory: memory)
                    state.receive = queue
                    if came { continue }
                    setReceiving(false, &state)
                    break
                }
                let length: Int
                if let deferred = state.deferredFrame {
                    length = deferred
                    state.deferredFrame = nil
                } else {
                    switch tap.receive(into: &state.scratch) {
                    case .wouldBlock:
                        return completed ? interruptIfWanted(&state, memory: memory) : nil
                    case .failed, .done(0):
                        backendFailed(&state)
                        return completed ? interruptIfWanted(&state, memory: memory) : nil
                    case .done(let n):
                        length = n
                    }
                    guard length >= HostTap.headerSize, length < state.scratch.count else {
                        // Shorter than a header (not from a TAP), or cut to the scratch buffer.
                        state.counters.dropped += 1
                        continue
                    }
                }
                if state.receiveLimiter.isEnabled,
                    !state.receiveLimiter.consume(bytes: UInt64(length - HostTap.headerSize), now: now)
                {
                    // Kept for later, and the TAP left unwatched until the timer fires.
                    state.deferredFrame = length
                    state.receiveThrottled = true
                    setReceiving(false, &state)
                    armTimer(&state)
                    break
                }
                let result = queue.pop(into: &state.chain, memory: memory)
                if result == .empty {  // pending said otherwise: the memory map changed
                    state.receive = queue
                    break
                }
                var written: UInt32 = 0
                if result != .chain || !state.chain.readable.isEmpty {
                    state.counters.malformed += 1
                    state.counters.dropped += 1
                } else if Int(state.chain.writableLength) < length {
                    state.counters.dropped += 1
                } else if deliver(&state, length: length, memory: memory) {
                    written = UInt32(length)
                    state.counters.bytes += UInt64(length - HostTap.headerSize)
                } else {
                    state.counters.malformed += 1
                    state.counters.dropped += 1
                }
                queue.push(head: state.chain.head, length: written, memory: memory)
                state.counters.requests += 1
                state.receive = queue
                completed = true
            }
            guard completed, let memory = state.memory else { return nil }
            return interruptIfWanted(&state, memory: memory)
        }
        interrupt?.signalUsedBuffer()
    }

    /// The receive queue's interrupt, when the driver wants one for what was just pushed.
    private func interruptIfWanted(_ state: inout State, memory: GuestMemory) -> VirtioInterrupt? {
        guard var queue = state.receive else { return nil }
        let wants = queue.needsInterrupt(memory: memory)
        state.receive = queue
        return wants ? state.interrupt : nil
    }

    /// The TAP reported an error or its end: stop watching it for good.
    private func backendFailed(_ state: inout State) {
        if let watch = state.watch, let thread = state.thread { thread.unwatch(watch, descriptor: tap.fd) }
        state.watch = nil
        state.receiving = false
    }

    /// Copies the frame in the scratch buffer (`length` bytes with the header) into the
    /// chain's writable buffers, which hold at least that many. The header goes out as
    /// zeros with `num_buffers` 1: nothing was offloaded (5.1.6.4.1). False on a memory fault.
    private func deliver(_ state: inout State, length: Int, memory: GuestMemory) -> Bool {
        for i in 0..<HostTap.headerSize { state.scratch[i] = 0 }
        state.scratch[10] = 1
        var done = 0
        for element in state.chain.writable where done < length {
            let count = min(Int(element.length), length - done)
            do { try memory.write(state.scratch[done..<(done + count)], at: element.address) } catch { return false }
            done += count
        }
        return true
    }

    /// Sends the transmit queue's chains, at most one queue's worth.
    private func transmit() {
        let interrupt = state.withLock { state in serveTransmit(&state).interrupt }
        interrupt?.signalUsedBuffer()
    }

    /// Sends the transmit queue's chains (a notification's work, or a poll's) and returns
    /// the interrupt to raise, if the driver wants one, and the chains completed. When
    /// frames were sent and the queue is not polled yet, asks the I/O thread to poll it,
    /// and if it does, tells the driver not to notify.
    private func serveTransmit(_ state: inout State) -> (interrupt: VirtioInterrupt?, count: Int) {
        guard var queue = state.transmit, let memory = state.memory else { return (nil, 0) }
        // The scratch buffer is lent to the loop (a swap, not a copy), with the count of
        // frames the TAP refused.
        var work = TransmitWork(limiter: state.transmitLimiter)
        swap(&work.scratch, &state.transmitScratch)
        let served: Virtqueue.Served
        if work.limiter.isEnabled {
            work.now = clock()
            served = queue.serveAvailable(
                memory: memory, chain: &state.chain, counters: &state.counters, context: &work,
                admit: { chain, work in
                    // A malformed chain goes through, to be completed as such.
                    let total = Int(chain.readableLength)
                    let frame = UInt64(total >= HostTap.headerSize ? total - HostTap.headerSize : 0)
                    return work.limiter.consume(bytes: frame, now: work.now)
                },
                { chain, work in send(chain, &work, memory: memory) })
            state.transmitLimiter = work.limiter
        } else {
            served = queue.serveAvailable(memory: memory, chain: &state.chain, counters: &state.counters, context: &work) {
                chain, work in
                send(chain, &work, memory: memory)
            }
        }
        swap(&work.scratch, &state.transmitScratch)
        state.counters.dropped += work.dropped
        state.transmit = queue
        if served.throttled {
            state.transmitThrottled = true
            armTimer(&state)
        }
        if served.count > 0, !served.throttled, !queue.suppressingNotifications, let thread = state.thread,
            let poller = state.poller, thread.startPolling(poller)
        {
            queue.suppressNotifications(memory: memory)
            state.transmit = queue
        }
        // Under EVENT_IDX, entries left at the bound are served after the other devices.
        if served.more { state.interrupt?.reschedule(queue: Self.transmitQueue) }
        return (served.interrupt ? state.interrupt : nil, served.count)
    }

    private struct TransmitWork {
        var scratch: [UInt8] = []
        var dropped: UInt64 = 0
        var limiter: RateLimiter
        var now: UInt64 = 0
    }

    /// Writes a transmit chain's header (zeroed) and frame to the TAP as one frame. Nil when
    /// the chain is malformed: a device-writable buffer, fewer than 12 bytes, more than
    /// 12 + `maximumFrame`, or a memory fault. A frame the TAP refuses is dropped and counted.
    private func send(_ chain: borrowing DescriptorChain, _ work: inout TransmitWork, memory: GuestMemory)
        -> VirtioCompletion?
    {
        let total = Int(chain.readableLength)
        guard chain.writable.isEmpty, total >= HostTap.headerSize, total <= HostTap.headerSize + Self.maximumFrame
        else { return nil }
        var done = 0
        for element in chain.readable {
            let count = Int(element.length)
            do { try memory.read(into: &work.scratch, startingAt: done, count: count, at: element.address) } catch {
                return nil
            }
            done += count
        }
        for i in 0..<HostTap.headerSize { work.scratch[i] = 0 }
        guard case .done(total) = tap.send(work.scratch, count: total) else {
            work.dropped += 1
            return VirtioCompletion(written: 0, bytes: 0)
        }
        return VirtioCompletion(written: 0, bytes: UInt64(total - HostTap.headerSize))
    }
}
