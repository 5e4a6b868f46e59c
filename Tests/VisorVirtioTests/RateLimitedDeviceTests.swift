import Foundation
import Synchronization
import Testing
import VisorHost
import VisorMemory
import VisorVirtio

/// A monotonic clock the test moves by hand.
final class FakeClock: Sendable {
    let nanoseconds = Atomic<UInt64>(0)
    var now: @Sendable () -> UInt64 { { [self] in nanoseconds.load(ordering: .relaxed) } }
    func advance(milliseconds: UInt64) { nanoseconds.add(milliseconds * 1_000_000, ordering: .relaxed) }
}

@Suite("rate-limited virtio devices")
struct RateLimitedDeviceTests {
    typealias T = VirtioBlockDevice.RequestType

    /// Makes a one-sector read available without expecting it served.
    func post(_ h: BlockHarness) throws {
        try h.memory.write(T.read, at: BlockHarness.header)
        try h.memory.write(UInt64(0), at: BlockHarness.header + 8)
        try h.fake.setDescriptor(0, address: BlockHarness.header, length: 16, flags: Virtqueue.flagNext, next: 1)
        try h.fake.setDescriptor(
            1, address: BlockHarness.data, length: 512, flags: Virtqueue.flagNext | Virtqueue.flagWrite, next: 2)
        try h.fake.setDescriptor(2, address: BlockHarness.status, length: 1, flags: Virtqueue.flagWrite)
        try h.fake.makeAvailable(0)
    }

    @Test("block: an empty ops bucket stops the queue, keeps the request, and the timer resumes it")
    func blockOpsLimit() throws {
        let clock = FakeClock()
        let limiter = RateLimiter(ops: TokenBucket(size: 2, refillTimeMilliseconds: 1000, now: 0))
        let h = try BlockHarness(rateLimiter: limiter, clock: clock.now)
        #expect(try h.submit(type: T.read, sector: 0, dataLength: 512, dataWritable: true).status == 0)
        #expect(try h.submit(type: T.read, sector: 1, dataLength: 512, dataWritable: true).status == 0)
        try post(h)
        h.device.notify(queue: 0)
        #expect(h.fake.usedIndex == 2)
        // One op every 500 ms: the device waits at most 100 ms before trying again.
        #expect(h.device.throttledUntil == 100_000_000)
        // Notifications and early timers change nothing while blocked.
        h.device.notify(queue: 0)
        clock.advance(milliseconds: 50)
        h.device.timerFired()
        #expect(h.fake.usedIndex == 2)
        clock.advance(milliseconds: 450)
        h.device.timerFired()
        #expect(h.fake.usedIndex == 3)
        #expect(h.fake.usedElement(2).length == 513)
        #expect(h.device.throttledUntil == nil)
        #expect(h.device.counters.requests == 3)
    }

    @Test("block: the bandwidth bucket counts data bytes and refunds the op it took")
    func blockBandwidthLimit() throws {
        let clock = FakeClock()
        let limiter = RateLimiter(
            bandwidth: TokenBucket(size: 1024, refillTimeMilliseconds: 100, now: 0),
            ops: TokenBucket(size: 100, refillTimeMilliseconds: 100, now: 0))
        let h = try BlockHarness(rateLimiter: limiter, clock: clock.now)
        for sector in 0..<2 {
            #expect(try h.submit(type: T.read, sector: UInt64(sector), dataLength: 512, dataWritable: true).status == 0)
        }
        try post(h)
        h.device.notify(queue: 0)
        #expect(h.fake.usedIndex == 2)
        #expect(h.device.rateLimiter.ops?.budget == 98)
        #expect(h.device.rateLimiter.bandwidth?.budget == 0)
        clock.advance(milliseconds: 50)  // 512 bytes back
        h.device.timerFired()
        #expect(h.fake.usedIndex == 3)
        #expect(h.device.throttledUntil == nil)
    }

    @Test("block: a PATCH of the limiter resumes a throttled queue at once")
    func blockUpdateResumes() throws {
        let clock = FakeClock()
        let h = try BlockHarness(
            rateLimiter: RateLimiter(ops: TokenBucket(size: 1, refillTimeMilliseconds: 10_000, now: 0)), clock: clock.now)
        #expect(try h.submit(type: T.read, sector: 0, dataLength: 512, dataWritable: true).status == 0)
        try post(h)
        h.device.notify(queue: 0)
        #expect(h.fake.usedIndex == 1)
        h.device.updateRateLimiter(ops: .some(nil))
        #expect(h.fake.usedIndex == 2)
        #expect(!h.device.rateLimiter.isEnabled)
    }

    @Test("block: a new backing file changes the capacity and raises a configuration change")
    func blockReplaceFile() throws {
        let h = try BlockHarness(sectors: 8)
        #expect(h.device.readConfiguration(offset: 0, width: 8) == 8)
        let before = h.interrupt.configurationGeneration
        let path = NSTemporaryDirectory() + "swiftvisor-block-\(UUID().uuidString).img"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(repeating: 0xAB, count: 32 * 512).write(to: URL(fileURLWithPath: path))
        h.device.replaceFile(try HostDiskFile.open(path, readOnly: false))
        #expect(h.device.capacity == 32)
        #expect(h.device.readConfiguration(offset: 0, width: 8) == 32)
        #expect(h.device.readConfiguration(offset: 12, width: 4) == UInt64(VirtioBlockDevice.segmentMaximum))
        #expect(h.device.readConfiguration(offset: 20, width: 4) == 512)
        #expect(h.interrupt.configurationGeneration == before &+ 1)
        #expect(h.interrupt.status & VirtioInterrupt.configurationChange != 0)
        // Reads come from the new file, past the old capacity too.
        #expect(try h.submit(type: T.read, sector: 20, dataLength: 512, dataWritable: true).status == 0)
        #expect(try h.memory.readUInt8(at: BlockHarness.data) == 0xAB)
    }

    @Test("net: transmit stops at the ops limit, keeps the frame, and sends it when the timer fires")
    func netTransmitLimit() throws {
        let clock = FakeClock()
        let h = try NetHarness(
            transmitLimiter: RateLimiter(ops: TokenBucket(size: 1, refillTimeMilliseconds: 100, now: 0)), clock: clock.now)
        let frame = NetHarness.frame(60)
        try h.postTransmit([NetHarness.cleanHeader + frame])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.transmit.usedIndex == 1)
        #expect(h.hostReceives() == NetHarness.cleanHeader.map { _ in 0 } + frame)
        try h.postTransmit([NetHarness.cleanHeader + frame])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.transmit.usedIndex == 1)
        #expect(h.device.throttledUntil.transmit == 100_000_000)
        #expect(h.hostReceives() == nil)
        clock.advance(milliseconds: 100)
        h.device.timerFired()
        #expect(h.transmit.usedIndex == 2)
        #expect(h.hostReceives() != nil)
    }

    @Test("net: receive defers a frame over the bandwidth limit, unwatches the TAP, and delivers it later")
    func netReceiveLimit() throws {
        let clock = FakeClock()
        let h = try NetHarness(
            receiveLimiter: RateLimiter(bandwidth: TokenBucket(size: 100, refillTimeMilliseconds: 100, now: 0)),
            clock: clock.now)
        try h.postReceive([2000], first: 0, address: 0x10_000)
        try h.postReceive([2000], first: 1, address: 0x20_000)
        h.device.notify(queue: VirtioNetDevice.receiveQueue)
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(80))
        h.hostSends(NetHarness.dirtyHeader + NetHarness.frame(80, seed: 7))
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        #expect(!h.device.isReceiving)
        #expect(h.device.throttledUntil.receive != nil)
        // The TAP's readiness while throttled moves nothing.
        h.device.backendReady(.readable)
        #expect(h.receive.usedIndex == 1)
        try h.postReceive([2000], first: 2, address: 0x30_000)
        clock.advance(milliseconds: 100)
        h.device.timerFired()
        #expect(h.receive.usedIndex == 2)
        #expect(h.receive.usedElement(1).length == 92)
        #expect(try h.memory.read(80, at: 0x20_000 + 12) == NetHarness.frame(80, seed: 7))
        #expect(h.device.isReceiving)
        #expect(h.device.counters.dropped == 0)
    }
}
