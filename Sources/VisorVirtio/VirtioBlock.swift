package import VisorMemory
package import VisorHost
import Synchronization

/// The block device (virtio 1.2, section 5.2; device ID 2): one request queue, backed by a
/// disk image the machine opened once (`HostDiskFile`).
///
/// A request is a 16-byte header (type, reserved, sector) in device-readable buffers,
/// copied out once and then checked; data buffers (readable for a write, writable for a
/// read); and a status byte, the last byte of the last device-writable buffer. Data moves
/// between guest RAM and the file with `GuestMemory.readFromFile`/`writeToFile`, through
/// no host buffer, and a request allocates nothing.
///
/// A chain whose header is shorter than 16 bytes, or that has no writable byte for the
/// status, is malformed: it completes with length 0 and nothing else is touched. A request
/// that reaches past the capacity (checked arithmetic), whose data is not a whole number of
/// sectors, or that writes a read-only disk gets `ioError`; an unknown type gets
/// `unsupported`. A read-only disk offers VIRTIO_BLK_F_RO and refuses writes whatever the
/// driver negotiated. One notification serves at most one queue's worth of requests.
package final class VirtioBlockDevice: VirtioDevice {
    package static let queueSize: UInt16 = 256
    package static let sectorSize: UInt64 = 512
    /// The most data buffers a request may have (offered as seg_max): the queue less the
    /// header and status.
    package static let segmentMaximum: UInt32 = UInt32(queueSize) - 2
    /// The length of the ID string GET_ID returns.
    package static let identifierLength = 20

    /// Request types (5.2.6).
    package enum RequestType {
        package static let read: UInt32 = 0
        package static let write: UInt32 = 1
        package static let flush: UInt32 = 4
        package static let getID: UInt32 = 8
    }

    /// Request status values (5.2.6).
    package enum Status {
        package static let ok: UInt8 = 0
        package static let ioError: UInt8 = 1
        package static let unsupported: UInt8 = 2
    }

    /// Device feature bits (5.2.3).
    package enum Feature {
        package static let segmentMaximum: UInt64 = 1 << 2
        package static let readOnly: UInt64 = 1 << 5
        package static let blockSize: UInt64 = 1 << 6
        package static let flush: UInt64 = 1 << 9
    }

    private struct State {
        var queue: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioBlockDevice.queueSize))
        var counters = VirtioCounters()
        /// The disk image; `replaceFile` swaps it between requests.
        var file: HostDiskFile
        var limiter = RateLimiter()
        /// Whether the queue stopped at a request the limiter refused (the timer is armed).
        var throttled = false
        /// The I/O thread and its timer that serves a throttled queue again, once attached.
        var thread: IOThread?
        var timer: IOTimer?
        /// The I/O thread's poller for the queue, when attached with a poll window.
        var poller: IOPoller?
    }
    private let state: Mutex<State>
    /// The monotonic clock in nanoseconds, for the rate limiter (a fake one in tests).
    private let clock: @Sendable () -> UInt64
    /// Whether writes are refused: the file was opened read-only, or the disk was configured so.
    package let readOnly: Bool
    /// The capacity in 512-byte sectors (it changes when `replaceFile` swaps the image).
    package var capacity: UInt64 { state.withLock { $0.file.size } / Self.sectorSize }
    /// The ID string, exactly `identifierLength` bytes (zero-padded).
    private let identifier: [UInt8]

    /// A block device on `file`, read-only when `readOnly` or when the file was opened so;
    /// `identifier` is the GET_ID string (cut to 20 bytes). `rateLimiter` limits its
    /// requests (bandwidth: data bytes; ops: requests), on `clock` (monotonic nanoseconds);
    /// a throttled queue is served again by a timer of the I/O thread (`attach(to:)`).
    package init(
        file: HostDiskFile, readOnly: Bool = false, identifier: String = "swiftvisor",
        rateLimiter: RateLimiter = RateLimiter(), clock: @escaping @Sendable () -> UInt64 = HostIO.monotonicNanoseconds
    ) {
        var initial = State(file: file)
        initial.limiter = rateLimiter
        self.state = Mutex(initial)
        self.clock = clock
        self.readOnly = readOnly || file.readOnly
        var id = Array(identifier.utf8.prefix(Self.identifierLength))
        id.append(contentsOf: repeatElement(0, count: Self.identifierLength - id.count))
        self.identifier = id
    }

    /// Serves a throttled queue again from a timer of `thread` (the thread that serves the
    /// queue's notifications); without one, only the driver's next notification does.
    /// With a `pollWindow` (nanoseconds), a notification that finds requests may start the
    /// thread polling the queue (`IOThread.addPoller`, whose window adapts up to this one
    /// unless not `adaptive`): the driver is asked not to notify, and the thread serves
    /// what it finds until the queue has been empty for the window.
    package func attach(to thread: IOThread, pollWindow: UInt64 = 0, adaptive: Bool = true) {
        let timer = thread.addTimer { [weak self] in self?.timerFired() }
        let poller =
            pollWindow > 0
            ? thread.addPoller(
                window: pollWindow, adaptive: adaptive, poll: { [weak self] in self?.poll() ?? false },
                rest: { [weak self] in self?.rest() ?? false }) : nil
        state.withLock { state in
            state.thread = thread
            state.timer = timer
            state.poller = poller
        }
    }

    /// The throttle timer fired (the I/O thread calls this; tests may too): serves the
    /// queue again if it was throttled.
    package func timerFired() {
        guard state.withLock({ $0.throttled }) else { return }
        notify(queue: 0)
    }

    /// When a throttled queue is served again (monotonic nanoseconds), or nil when it is not
    /// throttled (for tests).
    package var throttledUntil: UInt64? {
        state.withLock { $0.throttled ? $0.limiter.blockedUntil : nil }
    }

    /// The rate limiter as it stands (for tests).
    package var rateLimiter: RateLimiter { state.withLock { $0.limiter } }

    /// Replaces the limiter's buckets (see `RateLimiter.update`: new buckets start full,
    /// nil leaves a bucket as it is) and serves a throttled queue again at once.
    package func updateRateLimiter(bandwidth: TokenBucket?? = nil, ops: TokenBucket?? = nil) {
        let resume = state.withLock { state in
            state.limiter.update(bandwidth: bandwidth, ops: ops)
            return state.throttled
        }
        if resume { wake() }
    }

    /// Swaps the disk image for `file` (opened by the caller as this disk was: read-only or
    /// not) between requests, on the I/O thread when there is one, so the old file is closed
    /// there. The capacity follows the new file, and an active device raises a
    /// configuration-change interrupt (a new configuration generation), as Firecracker does.
    package func replaceFile(_ file: HostDiskFile) {
        let work: @Sendable () -> Void = { [weak self] in
            guard let self else { return }
            var replaced = file
            let interrupt = state.withLock { state in
                swap(&state.file, &replaced)
                return state.interrupt
            }
            interrupt?.signalConfigurationChange()
            // `replaced`, the old file, is released (closed) here.
        }
        if let thread = state.withLock({ $0.thread }) { thread.perform(work) } else { work() }
    }

    /// Serves the queue again soon: through the I/O thread's timer when attached.
    private func wake() {
        let (thread, timer) = state.withLock { ($0.thread, $0.timer) }
        if let thread, let timer { thread.arm(timer, at: 0) } else { timerFired() }
    }

    package var deviceType: UInt32 { 2 }
    package var deviceFeatures: UInt64 {
        Feature.segmentMaximum | Feature.blockSize | Feature.flush | (readOnly ? Feature.readOnly : 0)
    }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize] }
    package var supportsEventIndex: Bool { true }

    /// Requests completed, malformed chains among them, and data bytes moved.
    package var counters: VirtioCounters { state.withLock { $0.counters } }

    /// The configuration space (5.2.4): capacity (8 bytes at 0), seg_max (4 at 12) and
    /// blk_size (4 at 20); the rest reads 0.
    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 {
        let capacity = self.capacity
        var value: UInt64 = 0
        for i in 0..<UInt64(min(width, 8)) {
            let (at, overflow) = offset.addingReportingOverflow(i)
            guard !overflow, at < 24 else { break }
            let byte: UInt64
            switch at {
            case 0..<8: byte = capacity >> (8 * at)
            case 12..<16: byte = UInt64(Self.segmentMaximum) >> (8 * (at - 12))
            case 20..<24: byte = Self.sectorSize >> (8 * (at - 20))
            default: byte = 0
            }
            value |= (byte & 0xFF) << (8 * i)
        }
        return value
    }

    /// Nothing in the configuration is writable (no WCE or discard features).
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        guard let queue = queues.first ?? nil else { throw VirtioActivationError("the request queue is not ready") }
        state.withLock { state in
            state.queue = queue
            state.memory = memory
            state.interrupt = interrupt
        }
    }

    package func reset() {
        state.withLock { state in
            state.queue = nil
            state.memory = nil
            state.interrupt = nil
            state.throttled = false
        }
    }

    package func notify(queue index: Int) {
        let interrupt = state.withLock { state in serveQueue(&state, index: index).interrupt }
        interrupt?.signalUsedBuffer()
    }

    /// Serves the queue once (a notification's work, or a poll's) and returns the
    /// interrupt to raise, if the driver wants one, and the requests completed. When
    /// requests were found and the queue is not polled yet, asks the I/O thread to poll it
    /// (`IOThread.startPolling`, which decides by the time since the last ones), and if it
    /// does, tells the driver not to notify.
    private func serveQueue(_ state: inout State, index: Int) -> (interrupt: VirtioInterrupt?, count: Int) {
        guard var queue = state.queue, let memory = state.memory else { return (nil, 0) }
        var work = Work(file: state.file, limiter: state.limiter, now: 0)
        let served: Virtqueue.Served
        if work.limiter.isEnabled {
            work.now = clock()
            served = queue.serveAvailable(
                memory: memory, chain: &state.chain, counters: &state.counters, context: &work,
                admit: { chain, work in admit(chain, &work, memory: memory) },
                { chain, work in serve(chain, file: work.file, memory: memory) })
            state.limiter = work.limiter
        } else {
            served = queue.serveAvailable(memory: memory, chain: &state.chain, counters: &state.counters, context: &work) {
                chain, work in serve(chain, file: work.file, memory: memory)
            }
        }
        if served.count > 0, !served.throttled, !queue.suppressingNotifications, let thread = state.thread,
            let poller = state.poller, thread.startPolling(poller)
        {
            queue.suppressNotifications(memory: memory)
        }
        state.queue = queue
        state.throttled = served.throttled
        if served.throttled, let thread = state.thread, let timer = state.timer {
            thread.arm(timer, at: state.limiter.blockedUntil ?? 0)
        }
        if served.more { state.interrupt?.reschedule(queue: index) }
        return (served.interrupt ? state.interrupt : nil, served.count)
    }

    /// The poller's round (on the I/O thread): serves what the driver made available
    /// since; returns whether it completed anything (an index that moved and moved back,
    /// or a throttled request, is nothing).
    private func poll() -> Bool {
        let served = state.withLock { state in
            state.queue?.suppressingNotifications == true && !state.throttled
                ? serveQueue(&state, index: 0) : (interrupt: nil, count: 0)
        }
        served.interrupt?.signalUsedBuffer()
        return served.count > 0
    }

    /// The poll window passed with nothing found: the driver is asked to notify again.
    /// Returns whether requests came meanwhile (polling then goes on; the driver stays
    /// told not to notify). A throttled queue stops polling: its timer serves it.
    private func rest() -> Bool {
        state.withLock { state in
            guard var queue = state.queue, let memory = state.memory else { return false }
            defer { state.queue = queue }
            return queue.endPollWindow(memory: memory, canServe: !state.throttled)
        }
    }

    /// What a request is served with: the disk image, and the limiter at time `now`.
    private struct Work {
        let file: HostDiskFile
        var limiter: RateLimiter
        var now: UInt64
    }

    /// Whether the limiter lets the request in `chain` go: one operation, and for a read or
    /// write its data bytes (Firecracker charges nothing else to the bandwidth bucket). A
    /// malformed request goes through, to be completed as such.
    private func admit(_ chain: borrowing DescriptorChain, _ work: inout Work, memory: GuestMemory) -> Bool {
        var bytes: UInt64 = 0
        if let (type, _) = header(chain, memory: memory) {
            if type == RequestType.write, chain.readableLength >= 16 { bytes = UInt64(chain.readableLength) - 16 }
            if type == RequestType.read, chain.writableLength >= 1 { bytes = UInt64(chain.writableLength) - 1 }
        }
        return work.limiter.consume(bytes: bytes, now: work.now)
    }

    /// The request's type and sector, from its 16-byte header copied byte by byte whatever
    /// buffers it spans; nil when the chain is malformed.
    private func header(_ chain: borrowing DescriptorChain, memory: GuestMemory) -> (UInt32, UInt64)? {
        guard chain.readableLength >= 16, let last = chain.writable.last, last.length > 0 else { return nil }
        var low: UInt64 = 0
        var high: UInt64 = 0
        var got: UInt64 = 0
        for element in chain.readable where got < 16 {
            let take = min(UInt64(element.length), 16 - got)
            for i in 0..<take {
                guard let byte = try? memory.readUInt8(at: element.address + i) else { return nil }
                if got < 8 { low |= UInt64(byte) << (8 * got) } else { high |= UInt64(byte) << (8 * (got - 8)) }
                got += 1
            }
        }
        return (UInt32(truncatingIfNeeded: low), high)
    }

    /// Serves the request in `chain`: the bytes written into its writable buffers (data and
    /// status) and the data bytes moved, or nil when the chain is malformed.
    private func serve(_ chain: borrowing DescriptorChain, file: HostDiskFile, memory: GuestMemory) -> VirtioCompletion? {
        guard let (type, sector) = header(chain, memory: memory), let last = chain.writable.last else { return nil }
        // The chain was checked to lie in RAM, so the status address cannot wrap.
        let statusAddress = last.address + UInt64(last.length) - 1
        var status = Status.ok
        var dataWritten: UInt32 = 0
        var moved: UInt64 = 0
        switch type {
        case RequestType.read, RequestType.write:
            let isWrite = type == RequestType.write
            let length = isWrite ? UInt64(chain.readableLength) - 16 : UInt64(chain.writableLength) - 1
            if let start = range(sector: sector, length: length, size: file.size), !(isWrite && readOnly) {
                let complete: Bool
                (moved, complete) = transfer(chain, write: isWrite, start: start, length: length, file: file, memory: memory)
                if !isWrite { dataWritten = UInt32(moved) }
                if !complete { status = Status.ioError }
            } else {
                status = Status.ioError
            }
        case RequestType.flush:
            if !file.sync() { status = Status.ioError }
        case RequestType.getID:
            dataWritten = copyIdentifier(chain, memory: memory)
        default:
            status = Status.unsupported
        }
        do { try memory.write(status, at: statusAddress) } catch { return nil }
        return VirtioCompletion(written: dataWritten + 1, bytes: moved)
    }

    /// The byte offset of `length` bytes at `sector` when they are whole sectors and lie
    /// within the capacity, else nil.
    private func range(sector: UInt64, length: UInt64, size: UInt64) -> UInt64? {
        guard length % Self.sectorSize == 0 else { return nil }
        let (start, overflow) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !overflow else { return nil }
        let (end, overflow2) = start.addingReportingOverflow(length)
        guard !overflow2, end <= size else { return nil }
        return start
    }

    /// Moves `length` data bytes between the file at `start` and the chain's data buffers:
    /// for a write, the readable buffers after the 16-byte header; for a read, the writable
    /// buffers before the status byte. Returns the bytes moved and whether that was all.
    private func transfer(
        _ chain: borrowing DescriptorChain, write: Bool, start: UInt64, length: UInt64, file: HostDiskFile,
        memory: GuestMemory
    ) -> (UInt64, Bool) {
        var skip: UInt64 = write ? 16 : 0
        var left = length
        var offset = start
        let buffers = write ? chain.readable : chain.writable
        for element in buffers where left > 0 {
            var address = element.address
            var count = UInt64(element.length)
            if skip > 0 {
                let skipped = min(skip, count)
                skip -= skipped
                address += skipped
                count -= skipped
            }
            count = min(count, left)
            guard count > 0 else { continue }
            let done: Int
            do {
                done =
                    write
                    ? try memory.writeToFile(fd: file.fd, offset: offset, from: address, count: Int(count))
                    : try memory.readFromFile(fd: file.fd, offset: offset, into: address, count: Int(count))
            } catch {
                return (length - left, false)
            }
            left -= UInt64(done)
            offset += UInt64(done)
            if UInt64(done) < count { return (length - left, false) }
        }
        return (length - left, left == 0)
    }

    /// Writes the ID string into the writable buffers before the status byte, as much as
    /// fits; returns the bytes written.
    private func copyIdentifier(_ chain: borrowing DescriptorChain, memory: GuestMemory) -> UInt32 {
        var left = min(Int(chain.writableLength) - 1, Self.identifierLength)
        var done = 0
        for element in chain.writable where left > 0 {
            let count = min(Int(element.length), left)
            do { try memory.write(identifier[done..<(done + count)], at: element.address) } catch { break }
            done += count
            left -= count
        }
        return UInt32(done)
    }
}
