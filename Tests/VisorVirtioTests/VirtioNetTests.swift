import Foundation
import Synchronization
import Testing
import VisorHost
import VisorKVM
import VisorMemory
import VisorVirtio

/// A network device on one end of a SOCK_SEQPACKET pair (a TAP's stand-in), driven by two
/// fake drivers: the receive queue's rings at 0x1000-0x3FFF, the transmit queue's at
/// 0x4000-0x6FFF, buffers from 0x10000.
final class NetHarness {
    let memory: GuestMemory
    var receive: FakeDriver
    var transmit: FakeDriver
    let device: VirtioNetDevice
    /// The host's end: what the device writes arrives here, and what is written here
    /// arrives at the device.
    private(set) var peer: HostTap
    /// Replaced by a new pair's end, which closes the old peer: the device's end hangs up.
    func closePeer() { peer = (try? HostTap.socketPair().peer) ?? peer }
    /// Interrupts raised (the line going high).
    final class Count: Sendable {
        let value = Atomic<Int>(0)
    }
    let raised = Count()
    var interrupts: Int { raised.value.load(ordering: .relaxed) }
    /// The device's interrupt (the driver acknowledges it here).
    let interrupt: VirtioInterrupt
    static let mac: [UInt8] = [0x06, 0x00, 0xAC, 0x10, 0x00, 0x01]

    init(
        receiveSize: UInt16 = 8, receiveLimiter: RateLimiter = RateLimiter(), transmitLimiter: RateLimiter = RateLimiter(),
        clock: @escaping @Sendable () -> UInt64 = { 0 }, eventIndex: Bool = false
    ) throws {
        memory = try FakeDriver.memory()
        receive = FakeDriver(memory: memory, size: receiveSize, descriptors: 0x1000, available: 0x2000, used: 0x3000)
        transmit = FakeDriver(memory: memory, descriptors: 0x4000, available: 0x5000, used: 0x6000)
        let (tap, peer) = try HostTap.socketPair()
        self.peer = peer
        device = VirtioNetDevice(
            tap: tap, mac: Self.mac, receiveLimiter: receiveLimiter, transmitLimiter: transmitLimiter, clock: clock)
        interrupt = VirtioInterrupt { [raised] level in if level { raised.value.add(1, ordering: .relaxed) } }
        try device.activate(
            features: 0, queues: [try receive.queue(eventIndex: eventIndex), try transmit.queue(eventIndex: eventIndex)],
            memory: memory, interrupt: interrupt)
    }

    /// Sends one datagram from the host's side.
    func hostSends(_ bytes: [UInt8]) {
        #expect(peer.send(bytes, count: bytes.count) == .done(bytes.count))
    }

    /// The next datagram the device wrote, or nil when there is none.
    func hostReceives() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        guard case .done(let n) = peer.receive(into: &buffer) else { return nil }
        return Array(buffer[0..<n])
    }

    /// Posts a receive chain of device-writable buffers of `lengths` bytes (descriptors
    /// from `first`, buffers 64 KiB apart from `address`).
    func postReceive(_ lengths: [UInt32], first: UInt16 = 0, address: UInt64 = 0x10_000, readableFirst: Bool = false) throws {
        for (i, length) in lengths.enumerated() {
            let last = i == lengths.count - 1
            let writable = !(readableFirst && i == 0)
            try receive.setDescriptor(
                UInt64(first) + UInt64(i), address: address + 0x1_0000 * UInt64(i), length: length,
                flags: (last ? 0 : Virtqueue.flagNext) | (writable ? Virtqueue.flagWrite : 0),
                next: first + UInt16(i) + 1)
        }
        try receive.makeAvailable(first)
    }

    /// Posts a transmit chain of `parts`, each a device-readable buffer (device-writable
    /// where `writable` says), at 0x80000 upward.
    func postTransmit(_ parts: [[UInt8]], writable: Set<Int> = []) throws {
        var address: UInt64 = 0x8_0000
        for (i, part) in parts.enumerated() {
            try memory.write(part, at: address)
            let last = i == parts.count - 1
            try transmit.setDescriptor(
                UInt64(i), address: address, length: UInt32(part.count),
                flags: (last ? 0 : Virtqueue.flagNext) | (writable.contains(i) ? Virtqueue.flagWrite : 0),
                next: UInt16(i + 1))
            address += 0x1_0000
        }
        try transmit.makeAvailable(0)
    }

    static func frame(_ count: Int, seed: UInt8 = 0) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &+ Int(seed)) } }
    /// A header as a TAP might write it, with fields the device must not pass on.
    static let dirtyHeader: [UInt8] = [1, 4, 0x10, 0, 0x20, 0, 0x30, 0, 0x40, 0, 0x77, 0x77]
    /// The header the guest gets: nothing offloaded, one buffer.
    static let cleanHeader: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
}

@Suite("virtio net device")
struct VirtioNetTests {
    typealias F = VirtioNetDevice.Feature

    @Test("configuration: the MAC and LINK_UP; two queues of 256; MAC and STATUS offered, nothing writable")
    func configuration() throws {
        let h = try NetHarness()
        #expect(h.device.deviceType == 1)
        #expect(h.device.queueMaximumSizes == [256, 256])
        #expect(h.device.deviceFeatures == F.mac | F.status)
        #expect(h.device.readConfiguration(offset: 0, width: 4) == 0x10AC_0006)
        #expect(h.device.readConfiguration(offset: 4, width: 2) == 0x0100)
        #expect(h.device.readConfiguration(offset: 0, width: 8) == 0x0001_0100_10AC_0006)
        #expect(h.device.readConfiguration(offset: 6, width: 2) == 1)
        #expect(h.device.readConfiguration(offset: 7, width: 4) == 0)
        #expect(h.device.readConfiguration(offset: 8, width: 2) == 0)
        #expect(h.device.readConfiguration(offset: UInt64.max, width: 8) == 0)
        h.device.writeConfiguration(offset: 0, width: 4, value: 0xFFFF_FFFF)
        #expect(h.device.readConfiguration(offset: 0, width: 4) == 0x10AC_0006)
    }

    @Test("configuration with an MTU: VIRTIO_NET_F_MTU offered, max_virtqueue_pairs 1 and the MTU after the status")
    func configurationWithMTU() throws {
        let (tap, _) = try HostTap.socketPair()
        let device = VirtioNetDevice(tap: tap, mac: NetHarness.mac, mtu: 9000)
        #expect(device.deviceFeatures == F.mac | F.status | F.mtu)
        #expect(device.readConfiguration(offset: 6, width: 2) == 1)
        #expect(device.readConfiguration(offset: 8, width: 2) == 1)
        #expect(device.readConfiguration(offset: 10, width: 2) == 9000)
        #expect(device.readConfiguration(offset: 12, width: 2) == 0)
    }

    @Test("receive: a frame from the TAP lands in a chain of two buffers, with a clean header")
    func receiveFrame() throws {
        let h = try NetHarness()
        let frame = NetHarness.frame(100)
        try h.postReceive([20, 2000])
        h.hostSends(NetHarness.dirtyHeader + frame)
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 112)
        let got = try h.memory.read(20, at: 0x10_000) + h.memory.read(92, at: 0x20_000)
        #expect(got == NetHarness.cleanHeader + frame)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 0, bytes: 100, dropped: 0))
        #expect(h.interrupts == 1)
        // The queue is empty now: the device waits for the driver before reading more.
        #expect(!h.device.isReceiving)
    }

    @Test("transmit: a chain's header and frame go out as one datagram, the header zeroed; used length 0")
    func transmitFrame() throws {
        let h = try NetHarness()
        let frame = NetHarness.frame(1500, seed: 7)
        try h.postTransmit([NetHarness.dirtyHeader + Array(frame[0..<14]), Array(frame[14...])])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.transmit.usedIndex == 1)
        #expect(h.transmit.usedElement(0).length == 0)
        #expect(h.hostReceives() == [UInt8](repeating: 0, count: 12) + frame)
        #expect(h.hostReceives() == nil)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 0, bytes: 1500, dropped: 0))
        #expect(h.interrupts == 1)
    }

    @Test("receive: a frame bigger than the chain is dropped and counted, not truncated; the next one fits")
    func frameBiggerThanChain() throws {
        let h = try NetHarness()
        try h.postReceive([12 + 30])
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(31))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 0)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 0, bytes: 0, dropped: 1))
        // The guest's buffer was not written.
        #expect(try h.memory.read(12, at: 0x10_000) == [UInt8](repeating: 0, count: 12))
        try h.postReceive([12 + 30], first: 1)
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(30))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 2)
        #expect(h.receive.usedElement(1).length == 42)
        #expect(h.device.counters == VirtioCounters(requests: 2, malformed: 0, bytes: 30, dropped: 1))
    }

    @Test("receive: a frame longer than 65,535 bytes after its header is dropped without taking a chain")
    func frameBiggerThanMaximum() throws {
        let h = try NetHarness()
        try h.postReceive([65_535, 65_535])
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(65_536))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 0)
        #expect(h.device.counters.dropped == 1)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(65_535))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 65_547)
    }

    @Test("receive: a chain with a device-readable buffer is malformed; it completes with 0 and the frame is dropped")
    func receiveReadableBuffer() throws {
        let h = try NetHarness()
        try h.postReceive([12, 2000], readableFirst: true)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 0)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 1, bytes: 0, dropped: 1))
    }

    @Test("transmit: a chain with a device-writable buffer is malformed; nothing reaches the TAP")
    func transmitWritableBuffer() throws {
        let h = try NetHarness()
        try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60)], writable: [1])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.transmit.usedIndex == 1)
        #expect(h.transmit.usedElement(0).length == 0)
        #expect(h.hostReceives() == nil)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 1, bytes: 0, dropped: 0))
    }

    @Test("transmit: fewer than 12 bytes, or more than 12 + 65,535, is malformed")
    func transmitBadLengths() throws {
        let h = try NetHarness()
        try h.postTransmit([Array(NetHarness.dirtyHeader[0..<11])])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(65_535), [1]])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.transmit.usedIndex == 2)
        #expect(h.hostReceives() == nil)
        #expect(h.device.counters == VirtioCounters(requests: 2, malformed: 2, bytes: 0, dropped: 0))
    }

    @Test("receive: with no buffers the device stops watching the TAP; the driver's notification resumes it")
    func noBuffersThenNotify() throws {
        let h = try NetHarness()
        #expect(h.device.isReceiving)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        h.device.backendReady(.readable)
        #expect(!h.device.isReceiving)
        #expect(h.device.counters == VirtioCounters())
        try h.postReceive([2048])
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        #expect(h.device.isReceiving)
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 72)
        #expect(try h.memory.read(72, at: 0x10_000) == NetHarness.cleanHeader + NetHarness.frame(60))
        // The frame was not lost while the device waited; the queue is empty again.
        #expect(!h.device.isReceiving)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        // A reset stops it too, and a notification without queues does not start it.
        h.device.reset()
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        #expect(!h.device.isReceiving)
    }

    @Test("receive: one wake-up moves at most framesPerWakeUp frames")
    func boundedWakeUp() throws {
        let h = try NetHarness(receiveSize: 256)
        let count = VirtioNetDevice.framesPerWakeUp + 3
        for i in 0..<count {
            try h.receive.setDescriptor(
                UInt64(i), address: 0x10_000 + 0x1000 * UInt64(i), length: 2048, flags: Virtqueue.flagWrite)
            try h.receive.makeAvailable(UInt16(i))
            h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        }
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == UInt16(VirtioNetDevice.framesPerWakeUp))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == UInt16(count))
        #expect(h.device.counters == VirtioCounters(requests: UInt64(count), bytes: 60 * UInt64(count)))
    }

    @Test("on a running I/O thread, a frame reaches the guest once the driver posts a buffer and notifies")
    func onIOThread() async throws {
        let h = try NetHarness()
        let thread = try IOThread()
        try h.device.attach(to: thread)
        #expect(thread.start() == 0)
        defer { thread.stop() }
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        // No buffer: the thread stops watching rather than spinning.
        try await waitUntil { !h.device.isReceiving }
        let wakeUps = thread.wakeUpCount
        try await Task.sleep(for: .milliseconds(50))
        #expect(thread.wakeUpCount == wakeUps)
        try h.postReceive([2048])
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        try await waitUntil { h.receive.usedIndex == 1 }
        #expect(h.receive.usedElement(0).length == 72)
        // The TAP's hang-up ends the watch: no spinning on it either.
        h.closePeer()
        try await waitUntil { !h.device.isReceiving }
        let after = thread.wakeUpCount
        try await Task.sleep(for: .milliseconds(50))
        #expect(thread.wakeUpCount <= after + 1)
    }

    @Test("a reset and an activation from a thread whose filter refuses epoll_ctl change the watch on the I/O thread")
    func resetUnderVCPUFilter() async throws {
        let h = try NetHarness()
        let thread = try IOThread()
        try h.device.attach(to: thread)
        #expect(thread.start() == 0)
        defer { thread.stop() }
        #expect(h.device.isReceiving)
        let device = h.device
        let receive = try h.receive.queue()
        let transmit = try h.transmit.queue()
        let memory = h.memory
        /// Runs `body` on a new thread confined as a vCPU thread is; whether the filter went on.
        func confined(_ body: @escaping @Sendable () -> Void) -> Bool {
            let installed = Mutex<Bool>(false)
            var vcpu = pthread_t()
            let rc = VCPUThread.create(&vcpu) {
                let ok = (try? Seccomp.install(.vcpu)) != nil
                installed.withLock { $0 = ok }
                body()
            }
            guard rc == 0 else { return false }
            VCPUThread.join(vcpu)
            return installed.withLock { $0 }
        }
        #expect(confined { device.reset() })
        try await waitUntil { !h.device.isReceiving }
        #expect(
            confined {
                try? device.activate(
                    features: 0, queues: [receive, transmit], memory: memory, interrupt: VirtioInterrupt { _ in })
            })
        try await waitUntil { h.device.isReceiving }
        // The watch asks for readability again: a frame reaches a posted buffer.
        try h.postReceive([2048])
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(60))
        try await waitUntil { h.receive.usedIndex == 1 }
    }

    func waitUntil(_ condition: () -> Bool) async throws {
        for _ in 0..<1000 where !condition() { try await Task.sleep(for: .milliseconds(5)) }
        #expect(condition())
    }
}

@Suite("virtio net device with EVENT_IDX")
struct VirtioNetEventIndexTests {
    @Test("the device offers EVENT_IDX; a drained transmit queue asks to be notified for the next frame")
    func transmitAsksForTheNext() throws {
        let h = try NetHarness(eventIndex: true)
        #expect(h.device.supportsEventIndex)
        let availEvent = h.transmit.used + 4 + 8 * UInt64(h.transmit.size)
        for seed: UInt8 in 0..<3 {
            try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60, seed: seed)])
            h.device.notify(queue: VirtioNetDevice.transmitQueue)
            #expect(h.hostReceives() == [UInt8](repeating: 0, count: 12) + NetHarness.frame(60, seed: seed))
            #expect(try h.memory.readUInt16(at: availEvent) == UInt16(seed) + 1)
        }
    }

    @Test("a receive queue out of buffers asks to be notified, and serves buffers added meanwhile at once")
    func receiveAsksWhenOut() throws {
        let h = try NetHarness(eventIndex: true)
        let availEvent = h.receive.used + 4 + 8 * UInt64(h.receive.size)
        try h.postReceive([2048])
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(100, seed: 1))
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(100, seed: 2))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        // Out of buffers: it asked for the driver's next one and stopped reading the TAP.
        #expect(try h.memory.readUInt16(at: availEvent) == 1)
        #expect(!h.device.isReceiving)
        // A buffer the driver adds, notified, takes the second frame.
        try h.postReceive([2048], first: 2, address: 0x40_000)
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 2)
        #expect(try h.memory.read(112, at: 0x40_000) == NetHarness.cleanHeader + NetHarness.frame(100, seed: 2))
    }

    @Test("interrupts follow the driver's used_event")
    func interruptsFollowUsedEvent() throws {
        let h = try NetHarness(eventIndex: true)
        // The driver wants an interrupt only once the used index passes 2 (after the third).
        try h.transmit.setUsedEvent(2)
        var interrupts: [Int] = []
        for seed: UInt8 in 0..<3 {
            try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60, seed: seed)])
            h.device.notify(queue: VirtioNetDevice.transmitQueue)
            interrupts.append(h.interrupts)
            h.interrupt.acknowledge(VirtioInterrupt.usedBuffer)
        }
        // The first push always signals (nothing signalled yet), then only past used_event.
        #expect(interrupts == [1, 1, 2])
    }
}
