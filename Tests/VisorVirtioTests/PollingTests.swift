import Foundation
import Synchronization
import Testing
import VisorHost
import VisorMemory
import VisorVirtio

/// vring_need_event (2.7.10): whether a driver that moved its available index from `old`
/// to `new` notifies, given the device's avail_event.
func driverNotifies(event: UInt16, new: UInt16, old: UInt16) -> Bool { (new &- event &- 1) < (new &- old) }

@Suite("Polled virtqueues")
struct PollingTests {
    @Test("with EVENT_IDX, a suppressed queue's avail_event stays behind what the driver adds; resuming asks again")
    func suppressWithEventIndex() throws {
        let memory = try FakeDriver.memory()
        var fake = FakeDriver(memory: memory)
        var queue = try fake.queue(eventIndex: true)
        let availEvent = fake.used + 4 + 8 * UInt64(fake.size)
        for slot in 0..<8 { try fake.setDescriptor(UInt64(slot), address: 0x10_000, length: 8) }
        queue.suppressNotifications(memory: memory)
        #expect(queue.suppressingNotifications)
        for slot: UInt16 in 0..<3 { try fake.makeAvailable(slot) }
        #expect(!driverNotifies(event: try memory.readUInt16(at: availEvent), new: 3, old: 0))
        // Nor one whose last notification came before entries the device has taken since.
        #expect(!driverNotifies(event: try memory.readUInt16(at: availEvent), new: 3, old: 0 &- 5))
        var chain = DescriptorChain()
        var counters = VirtioCounters()
        let served = queue.serveAvailable(memory: memory, chain: &chain, counters: &counters) { _ in
            VirtioCompletion(written: 0, bytes: 0)
        }
        #expect(served.count == 3)
        // Serving moved avail_event along, half the index space on: the driver's next
        // entries do not notify either, whatever index it last notified at.
        #expect(try memory.readUInt16(at: availEvent) == 3 &+ 0x8000)
        for slot: UInt16 in 3..<5 { try fake.makeAvailable(slot) }
        #expect(!driverNotifies(event: 3 &+ 0x8000, new: 5, old: 3))
        #expect(!driverNotifies(event: 3 &+ 0x8000, new: 5, old: 1))
        // Resuming reports the two that came meanwhile, which no notification will bring.
        let cameMeanwhile = queue.resumeNotifications(memory: memory)
        #expect(cameMeanwhile)
        #expect(!queue.suppressingNotifications)
        _ = queue.serveAvailable(memory: memory, chain: &chain, counters: &counters) { _ in
            VirtioCompletion(written: 0, bytes: 0)
        }
        let cameAfter = queue.resumeNotifications(memory: memory)
        #expect(!cameAfter)
        #expect(try memory.readUInt16(at: availEvent) == 5)
        try fake.makeAvailable(5)
        #expect(driverNotifies(event: 5, new: 6, old: 5))
    }

    @Test("without EVENT_IDX, a suppressed queue sets NO_NOTIFY in used.flags, and resuming clears it")
    func suppressWithFlags() throws {
        let memory = try FakeDriver.memory()
        var fake = FakeDriver(memory: memory)
        var queue = try fake.queue()
        queue.suppressNotifications(memory: memory)
        #expect(try memory.readUInt16(at: fake.used) == Virtqueue.usedNoNotify)
        let none = queue.resumeNotifications(memory: memory)
        #expect(!none)
        #expect(try memory.readUInt16(at: fake.used) == 0)
        try fake.setDescriptor(0, address: 0x10_000, length: 8)
        queue.suppressNotifications(memory: memory)
        try fake.makeAvailable(0)
        let one = queue.resumeNotifications(memory: memory)
        #expect(one)
    }

    @Test("a polled block device serves requests the driver never notified, then asks for notifications again")
    func blockDevicePolls() throws {
        let h = try BlockHarness(eventIndex: true)
        let thread = try IOThread()
        #expect(thread.start() == 0)
        defer { thread.stop() }
        // Long enough that a test thread held up under load still finds the thread polling.
        let window: UInt64 = 1_000_000_000
        h.device.attach(to: thread, pollWindow: window, adaptive: false)
        let availEvent = h.fake.used + 4 + 8 * UInt64(h.fake.size)
        // A notified request (served here, as on a vCPU thread's exit) starts the poll and
        // tells the driver not to notify.
        #expect(try h.submit(type: BlockHarness.T.read, sector: 1, dataLength: 512, dataWritable: true).status == 0)
        #expect(try h.memory.readUInt16(at: availEvent) == 1 &+ 0x8000)
        #expect(IOThreadPolling.eventually { thread.isPolling })
        // Requests the driver makes available without notifying are served by the poll.
        for n: UInt16 in 1...3 {
            try h.makeAvailable(type: BlockHarness.T.read, sector: UInt64(n), dataLength: 512, dataWritable: true)
            #expect(IOThreadPolling.eventually { h.fake.usedIndex == n + 1 })
            let expected = Array(BlockHarness.pattern(4096)[(512 * Int(n))..<(512 * Int(n) + 512)])
            #expect(try h.memory.read(512, at: BlockHarness.data) == expected)
        }
        // A window after the last one, the poll rests: avail_event asks for the next entry.
        #expect(IOThreadPolling.eventually { !thread.isPolling })
        #expect(try h.memory.readUInt16(at: availEvent) == 4)
        // Not polled any more: an unnotified request waits, and a notification serves it.
        try h.makeAvailable(type: BlockHarness.T.read, sector: 5, dataLength: 512, dataWritable: true)
        usleep(50_000)
        #expect(h.fake.usedIndex == 4)
        h.device.notify(queue: 0)
        #expect(h.fake.usedIndex == 5)
    }
}

enum IOThreadPolling {
    /// Waits up to two seconds for `condition`.
    static func eventually(_ condition: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<2000 {
            if try condition() { return true }
            usleep(1000)
        }
        return try condition()
    }
}

@Suite("Polled network transmit queue")
struct NetPollingTests {
    @Test("a polled transmit queue sends frames the driver never notified, with NO_NOTIFY set, then clears it")
    func transmitPolls() throws {
        let h = try NetHarness()
        let thread = try IOThread()
        try h.device.attach(to: thread, pollWindow: 1_000_000_000, adaptive: false)
        #expect(thread.start() == 0)
        defer { thread.stop() }
        let flags = h.transmit.used
        // A notified frame starts the poll: the driver is told not to notify.
        try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60, seed: 0)])
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.hostReceives() == [UInt8](repeating: 0, count: 12) + NetHarness.frame(60, seed: 0))
        #expect(try h.memory.readUInt16(at: flags) == Virtqueue.usedNoNotify)
        #expect(IOThreadPolling.eventually { thread.isPolling })
        // Frames made available with no notification go out.
        for seed: UInt8 in 1...3 {
            try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60, seed: seed)])
            var got: [UInt8]?
            #expect(
                IOThreadPolling.eventually {
                    got = h.hostReceives(); return got != nil
                })
            #expect(got == [UInt8](repeating: 0, count: 12) + NetHarness.frame(60, seed: seed))
        }
        // The window passes: notifications are asked for again, and nothing is polled.
        #expect(IOThreadPolling.eventually { !thread.isPolling })
        #expect(try h.memory.readUInt16(at: flags) == 0)
        try h.postTransmit([NetHarness.dirtyHeader, NetHarness.frame(60, seed: 9)])
        usleep(50_000)
        #expect(h.hostReceives() == nil)
        h.device.notify(queue: VirtioNetDevice.transmitQueue)
        #expect(h.hostReceives() == [UInt8](repeating: 0, count: 12) + NetHarness.frame(60, seed: 9))
    }
}
