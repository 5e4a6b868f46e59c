package import VisorMemory
import Synchronization

/// One split virtqueue (virtio 1.2, section 2.7) as the device sees it: three rings in guest
/// RAM that a driver, which may be hostile, writes as it likes.
///
/// Nothing here trusts guest memory. Each descriptor is copied out once and then checked;
/// a chain that loops, leaves the table, points outside RAM, wraps 64 bits, adds up to
/// more than 32 bits, or puts a readable buffer after a writable one comes back as an
/// invalid chain, which the device completes with length 0 so the slot is not lost. An
/// available index more than a queue's size ahead of the device's stops the queue until
/// the driver resets the device: there is no way to tell which entries are real.
///
/// No allocation per request: `pop(into:)` fills a `DescriptorChain` whose arrays keep
/// their capacity between requests.
package struct Virtqueue: Sendable {
    /// Descriptor flags (2.7.5).
    package static let flagNext: UInt16 = 1
    package static let flagWrite: UInt16 = 2
    package static let flagIndirect: UInt16 = 4
    /// `avail.flags` bit 0: the driver does not want an interrupt (without EVENT_IDX).
    package static let availNoInterrupt: UInt16 = 1
    /// `used.flags` bit 0: the device does not want notifications (without EVENT_IDX).
    package static let usedNoNotify: UInt16 = 1
    /// The most descriptors an indirect table may hold, whatever its length says.
    package static let maximumIndirectDescriptors = 1024

    /// The driver's layout, as validated by `init(size:descriptors:available:used:memory:)`.
    package let size: UInt16
    package let descriptorTable: UInt64
    package let availableRing: UInt64
    package let usedRing: UInt64
    /// Whether VIRTIO_F_INDIRECT_DESC was negotiated.
    package let indirectAllowed: Bool
    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    package let eventIndex: Bool

    /// The next available-ring entry the device reads.
    package private(set) var nextAvailable: UInt16 = 0
    /// The next used-ring entry the device writes.
    package private(set) var nextUsed: UInt16 = 0
    /// Set when the driver's available index ran more than `size` ahead: the queue stops.
    package private(set) var isBroken = false
    /// `nextUsed` when the driver was last interrupted (for EVENT_IDX).
    private var signalledUsed: UInt16 = 0
    private var signalledOnce = false
    /// The device polls this queue and has asked the driver not to notify it
    /// (`suppressNotifications`).
    package private(set) var suppressingNotifications = false

    /// Why a layout was refused at DRIVER_OK.
    package enum LayoutError: Error, Equatable, CustomStringConvertible {
        case size(UInt16, maximum: UInt16)
        case misaligned(ring: String, address: UInt64)
        case outsideMemory(ring: String, address: UInt64, length: UInt64)

        package var description: String {
            switch self {
            case .size(let size, let maximum):
                "queue size \(size) is not a power of two from 1 to \(maximum)"
            case .misaligned(let ring, let address):
                "the \(ring) at 0x\(String(address, radix: 16)) is misaligned"
            case .outsideMemory(let ring, let address, let length):
                "the \(ring) (\(length) bytes at 0x\(String(address, radix: 16))) is not wholly in guest RAM"
            }
        }
    }

    /// Checks a driver's queue layout (2.7, 4.2.3.2): a size that is a non-zero power of two
    /// no larger than `maximum`, each ring aligned (16, 2 and 4 bytes) and wholly in RAM.
    /// `resumingAt` is where a restored queue's device side stands: the entries it took
    /// and returned so far (a fresh queue starts at 0).
    package init(
        size: UInt16, maximum: UInt16, descriptors: UInt64, available: UInt64, used: UInt64,
        indirect: Bool = false, eventIndex: Bool = false, memory: GuestMemory, resumingAt index: UInt16 = 0
    ) throws(LayoutError) {
        guard size != 0, size <= maximum, size & (size &- 1) == 0 else { throw .size(size, maximum: maximum) }
        let n = UInt64(size)
        // Lengths with the EVENT_IDX trailers, present or not: a driver lays them out anyway.
        let rings: [(String, UInt64, UInt64, UInt64)] = [
            ("descriptor table", descriptors, 16, 16 * n),
            ("available ring", available, 2, 6 + 2 * n),
            ("used ring", used, 4, 6 + 8 * n),
        ]
        for (ring, address, alignment, length) in rings {
            guard address % alignment == 0 else { throw .misaligned(ring: ring, address: address) }
            guard memory.contains(address, count: length) else {
                throw .outsideMemory(ring: ring, address: address, length: length)
            }
        }
        self.size = size
        self.descriptorTable = descriptors
        self.availableRing = available
        self.usedRing = used
        self.indirectAllowed = indirect
        self.eventIndex = eventIndex
        nextAvailable = index
        nextUsed = index
        signalledUsed = index
    }

    /// What `pop(into:memory:)` found.
    package enum PopResult: Equatable, Sendable {
        /// No new entry in the available ring (or the queue is broken).
        case empty
        /// A chain that passed every check, in `chain`.
        case chain
        /// An entry whose chain is malformed; `chain.head` names it (possibly out of range),
        /// and it must be completed with length 0. `reason` says what was wrong.
        case invalid(ChainError)
    }

    /// What makes a chain invalid.
    package enum ChainError: Error, Equatable, Sendable {
        case headOutOfRange
        case nextOutOfRange
        case tooLong
        case bufferOutsideMemory
        case totalLengthOverflow
        case readableAfterWritable
        case indirectNotNegotiated
        case badIndirectTable
        case memoryFault
    }

    /// The number of entries the driver has made available and the device not yet taken,
    /// or nil when the index is more than `size` ahead (the queue is then broken).
    package mutating func pending(memory: GuestMemory) -> UInt16? {
        guard !isBroken else { return nil }
        guard let index = try? memory.readUInt16(at: availableRing + 2) else {
            isBroken = true
            return nil
        }
        let ahead = index &- nextAvailable
        if ahead > size {
            isBroken = true
            return nil
        }
        return ahead
    }

    /// Takes the next available chain into `chain`. The chain's buffers are checked to lie
    /// in guest RAM; device-readable ones come before device-writable ones.
    package mutating func pop(into chain: inout DescriptorChain, memory: GuestMemory) -> PopResult {
        chain.clear()
        guard let pending = pending(memory: memory), pending > 0 else { return .empty }
        // The entry is read after the index that published it.
        atomicMemoryFence(ordering: .acquiring)
        let slot = UInt64(nextAvailable % size)
        guard let head = try? memory.readUInt16(at: availableRing + 4 + 2 * slot) else {
            isBroken = true
            return .empty
        }
        nextAvailable &+= 1
        chain.head = head
        do throws(ChainError) {
            try walk(head: head, into: &chain, memory: memory)
            return .chain
        } catch {
            chain.readable.removeAll(keepingCapacity: true)
            chain.writable.removeAll(keepingCapacity: true)
            chain.readableLength = 0
            chain.writableLength = 0
            return .invalid(error)
        }
    }

    private struct Descriptor {
        var address: UInt64
        var length: UInt32
        var flags: UInt16
        var next: UInt16
    }

    /// Copies descriptor `index` of the table at `table` out of guest memory, once.
    private func readDescriptor(_ table: UInt64, _ index: UInt64, memory: GuestMemory) throws(ChainError) -> Descriptor {
        let at = table + 16 * index
        do {
            return Descriptor(
                address: try memory.readUInt64(at: at), length: try memory.readUInt32(at: at + 8),
                flags: try memory.readUInt16(at: at + 12), next: try memory.readUInt16(at: at + 14))
        } catch {
            throw .memoryFault
        }
    }

    private func walk(head: UInt16, into chain: inout DescriptorChain, memory: GuestMemory) throws(ChainError) {
        guard head < size else { throw .headOutOfRange }
        var table = descriptorTable
        var tableSize = UInt64(size)
        var index = UInt64(head)
        var hops = 0
        var maximumHops = Int(size)
        var inIndirect = false
        var total: UInt64 = 0
        while true {
            hops += 1
            guard hops <= maximumHops else { throw .tooLong }
            let descriptor = try readDescriptor(table, index, memory: memory)
            if descriptor.flags & Self.flagIndirect != 0 {
                // An indirect descriptor: only when negotiated, never inside another, never
                // with NEXT (2.7.5.3.1), and its table in RAM with a sane length.
                guard indirectAllowed else { throw .indirectNotNegotiated }
                guard !inIndirect, descriptor.flags & Self.flagNext == 0 else { throw .badIndirectTable }
                let length = UInt64(descriptor.length)
                guard length != 0, length % 16 == 0, length / 16 <= UInt64(Self.maximumIndirectDescriptors) else {
                    throw .badIndirectTable
                }
                guard memory.contains(descriptor.address, count: length) else { throw .bufferOutsideMemory }
                table = descriptor.address
                tableSize = length / 16
                index = 0
                hops = 0
                maximumHops = Int(tableSize)
                inIndirect = true
                continue
            }
            let length = UInt64(descriptor.length)
            guard memory.contains(descriptor.address, count: length) else { throw .bufferOutsideMemory }
            total += length
            guard total <= UInt64(UInt32.max) else { throw .totalLengthOverflow }
            let element = DescriptorElement(address: descriptor.address, length: descriptor.length)
            if descriptor.flags & Self.flagWrite != 0 {
                chain.writable.append(element)
                chain.writableLength += descriptor.length
            } else {
                guard chain.writable.isEmpty else { throw .readableAfterWritable }
                chain.readable.append(element)
                chain.readableLength += descriptor.length
            }
            guard descriptor.flags & Self.flagNext != 0 else { return }
            guard UInt64(descriptor.next) < tableSize else { throw .nextOutOfRange }
            index = UInt64(descriptor.next)
        }
    }

    /// What `serveAvailable` did: whether the driver wants an interrupt, whether entries
    /// were left when the bound was reached (the device must then reschedule the queue), and
    /// whether it stopped at a chain its `admit` refused (a rate limiter: the chain stays in
    /// the available ring, and the device serves the queue again when its timer fires).
    package struct Served: Equatable, Sendable {
        package var interrupt: Bool
        package var more: Bool
        package var throttled: Bool
        /// The chains completed.
        package var count: Int
        package init(interrupt: Bool, more: Bool, throttled: Bool = false, count: Int = 0) {
            self.interrupt = interrupt
            self.more = more
            self.throttled = throttled
            self.count = count
        }
    }

    /// Puts the chain `pop` just took back in the available ring: the next `pop` takes it
    /// again. Only right after a `pop` that returned `.chain`.
    package mutating func unpop() {
        nextAvailable &-= 1
    }

    /// Serves up to one queue's worth of available chains, the bounded work of one
    /// notification: each valid chain goes to `serve`, which returns what it wrote into the
    /// chain's device-writable buffers and the payload bytes it moved, or nil when the
    /// request inside is malformed; a malformed chain (or request) completes with length 0,
    /// so its slot is not lost. Every chain goes back on the used ring and is counted.
    /// `context` is the device's own working state, lent to `serve` (a closure cannot
    /// capture the device state that `chain` and `counters` are part of).
    ///
    /// With EVENT_IDX, once the ring looks empty it publishes `avail_event` (notify me for
    /// the next entry) and looks again, since the driver may have added entries meanwhile
    /// without notifying; if entries are still there when the bound is reached, `more` says
    /// so and the caller must reschedule the queue.
    ///
    /// `admit` sees each valid chain first; when it refuses, the chain goes back to the
    /// available ring untouched and serving stops (`throttled`).
    package mutating func serveAvailable<Context>(
        memory: GuestMemory, chain: inout DescriptorChain, counters: inout VirtioCounters,
        context: inout Context, admit: (borrowing DescriptorChain, inout Context) -> Bool,
        _ serve: (borrowing DescriptorChain, inout Context) -> VirtioCompletion?
    ) -> Served {
        var served = 0
        var more = false
        var throttled = false
        outer: while true {
            while served < Int(size) {
                let result = pop(into: &chain, memory: memory)
                if result == .empty { break }
                if result == .chain, !admit(chain, &context) {
                    unpop()
                    throttled = true
                    break outer
                }
                var written: UInt32 = 0
                if result == .chain, let completion = serve(chain, &context) {
                    written = completion.written
                    counters.bytes &+= completion.bytes
                } else {
                    counters.malformed &+= 1
                }
                push(head: chain.head, length: written, memory: memory)
                counters.requests &+= 1
                served += 1
            }
            guard eventIndex, !suppressingNotifications else { break }
            requestNotification(memory: memory)
            // avail_event must be visible before the index is read again (the driver's side
            // orders its index write before reading avail_event).
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            guard let left = pending(memory: memory), left > 0 else { break }
            if served >= Int(size) {
                more = true
                break
            }
        }
        // Keeps avail_event half the index space away (see `suppressNotifications`).
        if suppressingNotifications, eventIndex, served > 0 { writeAvailEvent(Self.farEvent(nextAvailable), memory: memory) }
        return Served(
            interrupt: served > 0 && needsInterrupt(memory: memory), more: more, throttled: throttled, count: served)
    }

    /// `serveAvailable` that admits every chain.
    package mutating func serveAvailable<Context>(
        memory: GuestMemory, chain: inout DescriptorChain, counters: inout VirtioCounters,
        context: inout Context, _ serve: (borrowing DescriptorChain, inout Context) -> VirtioCompletion?
    ) -> Served {
        serveAvailable(memory: memory, chain: &chain, counters: &counters, context: &context, admit: { _, _ in true }, serve)
    }

    /// `serveAvailable` for a device with no working state of its own.
    package mutating func serveAvailable(
        memory: GuestMemory, chain: inout DescriptorChain, counters: inout VirtioCounters,
        _ serve: (borrowing DescriptorChain) -> VirtioCompletion?
    ) -> Served {
        var none: Void = ()
        return serveAvailable(memory: memory, chain: &chain, counters: &counters, context: &none) { chain, _ in
            serve(chain)
        }
    }

    /// Puts `head` on the used ring with `length` bytes written, then publishes the new
    /// used index. Returns false when the used ring is not in RAM (it was checked at
    /// activation, so only a changed memory map could do that).
    @discardableResult
    package mutating func push(head: UInt16, length: UInt32, memory: GuestMemory) -> Bool {
        let slot = UInt64(nextUsed % size)
        let element = usedRing + 4 + 8 * slot
        do {
            try memory.write(UInt32(head), at: element)
            try memory.write(length, at: element + 4)
            // The element must be visible before the index that publishes it.
            atomicMemoryFence(ordering: .releasing)
            nextUsed &+= 1
            try memory.write(nextUsed, at: usedRing + 2)
            return true
        } catch {
            return false
        }
    }

    /// Whether the driver wants an interrupt for what was pushed since the last one: with
    /// EVENT_IDX, when `used_event` lies in the entries just published (2.7.10); without,
    /// unless `avail.flags` has NO_INTERRUPT.
    package mutating func needsInterrupt(memory: GuestMemory) -> Bool {
        // The used index written before must be visible before the driver's used_event (or
        // avail.flags) is read: the driver writes those, then reads the used index, and
        // without a full fence on both sides each could see the other's old value and no
        // interrupt would come for a buffer the driver waits on (x86 reorders a store
        // before a later load).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            guard let usedEvent = try? memory.readUInt16(at: availableRing + 4 + 2 * UInt64(size)) else { return true }
            let old = signalledUsed
            let new = nextUsed
            let first = !signalledOnce
            signalledUsed = new
            signalledOnce = true
            // vring_need_event: new - event - 1 < new - old, in 16-bit arithmetic.
            return first || (new &- usedEvent &- 1) < (new &- old)
        }
        guard let flags = try? memory.readUInt16(at: availableRing) else { return true }
        return flags & Self.availNoInterrupt == 0
    }

    /// With EVENT_IDX, tells the driver to notify when the available index passes
    /// `nextAvailable` (writes `avail_event`); without, does nothing.
    package func requestNotification(memory: GuestMemory) {
        guard eventIndex else { return }
        writeAvailEvent(nextAvailable, memory: memory)
    }

    private func writeAvailEvent(_ value: UInt16, memory: GuestMemory) {
        try? memory.write(value, at: usedRing + 4 + 8 * UInt64(size))
    }

    /// An `avail_event` no driver's batch passes: half the index space past `index`. A
    /// driver notifies when its new entries, from the index at its last notification, pass
    /// the event (vring_need_event); from any index near `index`, that takes 32,768 entries,
    /// where one just behind `index` would still be passed by a driver whose last
    /// notification came before entries the device took while polling.
    private static func farEvent(_ index: UInt16) -> UInt16 { index &+ 0x8000 }

    /// Asks the driver not to notify, while the device polls the queue (2.7.10): with
    /// EVENT_IDX, `avail_event` half the index space away, which no batch passes
    /// (`serveAvailable` moves it along as entries are taken); without, NO_NOTIFY in
    /// `used.flags`. The driver may still notify, which is harmless. Until
    /// `resumeNotifications`.
    package mutating func suppressNotifications(memory: GuestMemory) {
        suppressingNotifications = true
        if eventIndex {
            writeAvailEvent(Self.farEvent(nextAvailable), memory: memory)
        } else {
            try? memory.write(Self.usedNoNotify, at: usedRing)
        }
    }

    /// The end of a poll window (a poller's rest, `IOThread.addPoller`): asks the driver to
    /// notify again, and returns whether polling should go on instead: entries came
    /// meanwhile and the device can serve them now (`canServe`; not while throttled), in
    /// which case the driver is told again not to notify.
    package mutating func endPollWindow(memory: GuestMemory, canServe: Bool) -> Bool {
        guard resumeNotifications(memory: memory), canServe else { return false }
        suppressNotifications(memory: memory)
        return true
    }

    /// Asks the driver to notify again for the next entry, and returns whether entries
    /// came while it was told not to (which it will not notify for: the device must serve
    /// them). A restored queue calls this too: the saved guest RAM may hold the
    /// suppression of a device that was polling when it was saved.
    @discardableResult
    package mutating func resumeNotifications(memory: GuestMemory) -> Bool {
        suppressingNotifications = false
        if eventIndex {
            writeAvailEvent(nextAvailable, memory: memory)
        } else {
            try? memory.write(UInt16(0), at: usedRing)
        }
        // The request must be visible before the index is read again (the driver's side
        // orders its index write before reading avail_event or used.flags).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return (pending(memory: memory) ?? 0) > 0
    }
}

/// What a device made of one request: the bytes it wrote into the chain's device-writable
/// buffers (the used length) and the payload bytes it moved, for statistics.
package struct VirtioCompletion: Sendable, Equatable {
    package var written: UInt32
    package var bytes: UInt64
    package init(written: UInt32, bytes: UInt64) {
        self.written = written
        self.bytes = bytes
    }
}

/// One guest buffer of a chain: `length` bytes at guest-physical `address`, checked to lie
/// in RAM when the chain was popped.
package struct DescriptorElement: Equatable, Sendable {
    package var address: UInt64
    package var length: UInt32
    package init(address: UInt64, length: UInt32) {
        self.address = address
        self.length = length
    }
}

/// A chain popped from a virtqueue: its head index and its buffers, device-readable first.
/// Reused between requests, so its arrays keep their capacity.
package struct DescriptorChain: Sendable {
    package var head: UInt16 = 0
    package var readable: [DescriptorElement] = []
    package var writable: [DescriptorElement] = []
    /// Sums of the lengths (at most UInt32.max, checked when popped).
    package var readableLength: UInt32 = 0
    package var writableLength: UInt32 = 0

    package init(capacity: Int = 0) {
        readable.reserveCapacity(capacity)
        writable.reserveCapacity(capacity)
    }

    mutating func clear() {
        head = 0
        readable.removeAll(keepingCapacity: true)
        writable.removeAll(keepingCapacity: true)
        readableLength = 0
        writableLength = 0
    }
}
