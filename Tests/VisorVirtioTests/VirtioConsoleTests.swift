import Synchronization
import Testing
import VisorMemory
import VisorVirtio

/// The console device driven through its device interface: output from transmit chains,
/// input into receive buffers, and the malformed cases of each.
@Suite("virtio console device")
struct VirtioConsoleTests {
    final class Output: Sendable {
        private let bytes = Mutex<[UInt8]>([])
        private let calls = Atomic<Int>(0)
        var text: [UInt8] { bytes.withLock { $0 } }
        var callCount: Int { calls.load(ordering: .relaxed) }
        func append(_ span: Span<UInt8>) {
            calls.add(1, ordering: .relaxed)
            bytes.withLock { out in
                for i in span.indices { out.append(span[i]) }
            }
        }
    }

    /// A console with both queues at the fake drivers' layouts: receiveq at 0x1000.., transmitq at 0x4000...
    struct Harness {
        let memory: GuestMemory
        var receive: FakeDriver
        var transmit: FakeDriver
        let device: VirtioConsoleDevice
        let output = Output()
        let line = LineRecorder()

        init(receiveReady: Bool = true) throws {
            memory = try FakeDriver.memory()
            receive = FakeDriver(memory: memory, descriptors: 0x1000, available: 0x2000, used: 0x3000)
            transmit = FakeDriver(memory: memory, descriptors: 0x4000, available: 0x5000, used: 0x6000)
            let output = self.output
            device = VirtioConsoleDevice { output.append($0) }
            let line = self.line
            try device.activate(
                features: 0, queues: [receiveReady ? try receive.queue() : nil, try transmit.queue()], memory: memory,
                interrupt: VirtioInterrupt { line.set($0) })
        }
    }

    @Test("identity: device 3, two queues, no features; output is served on the vCPU, input queue on the I/O thread")
    func identity() throws {
        let h = try Harness()
        #expect(h.device.deviceType == 3)
        #expect(h.device.queueMaximumSizes == [256, 256])
        #expect(h.device.deviceFeatures == 0)
        #expect(h.device.servesNotificationsOnVCPU(queue: 1))
        #expect(!h.device.servesNotificationsOnVCPU(queue: 0))
        #expect(h.device.readConfiguration(offset: 0, width: 4) == 0)
    }

    @Test("a transmit chain of two buffers reaches the output in order; used length 0; interrupt")
    func transmit() throws {
        var h = try Harness()
        try h.memory.write(Array("hello, ".utf8), at: 0x10_000)
        try h.memory.write(Array("world\n".utf8), at: 0x11_000)
        try h.transmit.setDescriptor(0, address: 0x10_000, length: 7, flags: Virtqueue.flagNext, next: 1)
        try h.transmit.setDescriptor(1, address: 0x11_000, length: 6)
        try h.transmit.makeAvailable(0)
        h.device.notify(queue: 1)
        #expect(h.output.text == Array("hello, world\n".utf8))
        #expect(h.transmit.usedIndex == 1)
        #expect(h.transmit.usedElement(0).length == 0)
        #expect(h.line.raises == 1)
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 0, bytes: 13))
    }

    @Test("a transmit buffer larger than the staging buffer goes out in pieces, every byte")
    func transmitLarge() throws {
        var h = try Harness()
        let big = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 % 253) }
        try h.memory.write(big, at: 0x20_000)
        try h.transmit.setDescriptor(0, address: 0x20_000, length: UInt32(big.count))
        try h.transmit.makeAvailable(0)
        h.device.notify(queue: 1)
        #expect(h.output.text == big)
        #expect(h.output.callCount == 3)  // 4096 + 4096 + 1808
    }

    @Test("a transmit chain with a device-writable buffer is malformed: nothing is written, length 0")
    func transmitMalformed() throws {
        var h = try Harness()
        try h.memory.write(Array("secret".utf8), at: 0x10_000)
        try h.transmit.setDescriptor(0, address: 0x10_000, length: 6, flags: Virtqueue.flagWrite)
        try h.transmit.makeAvailable(0)
        h.device.notify(queue: 1)
        #expect(h.output.text.isEmpty)
        #expect(h.transmit.usedIndex == 1)
        #expect(h.device.counters.malformed == 1)
    }

    @Test("input fills receive buffers as far as they go; the rest is left to the caller")
    func receive() throws {
        var h = try Harness()
        try h.receive.setDescriptor(0, address: 0x30_000, length: 4, flags: Virtqueue.flagWrite)
        try h.receive.setDescriptor(1, address: 0x31_000, length: 3, flags: Virtqueue.flagWrite)
        try h.receive.makeAvailable(0)
        try h.receive.makeAvailable(1)
        #expect(h.device.receive(Array("abcdefghij".utf8)) == 7)
        #expect(try h.memory.read(4, at: 0x30_000) == Array("abcd".utf8))
        #expect(try h.memory.read(3, at: 0x31_000) == Array("efg".utf8))
        #expect(h.receive.usedIndex == 2)
        #expect(h.receive.usedElement(0).length == 4 && h.receive.usedElement(1).length == 3)
        #expect(h.line.raises == 1)
        // No buffer left: nothing is taken, and nothing is lost.
        #expect(h.device.receive(Array("hij".utf8)) == 0)
        #expect(h.device.receivedBytes == 7)
    }

    @Test("input before activation, with the receive queue unused, or into a readable buffer, takes nothing")
    func receiveRefused() throws {
        let idle = VirtioConsoleDevice { _ in }
        #expect(idle.receive([1, 2, 3]) == 0)
        let outputOnly = try Harness(receiveReady: false)
        #expect(outputOnly.device.receive([1, 2, 3]) == 0)
        var h = try Harness()
        try h.receive.setDescriptor(0, address: 0x30_000, length: 4)
        try h.receive.makeAvailable(0)
        #expect(h.device.receive([1, 2, 3]) == 0)
        #expect(h.receive.usedIndex == 1)
        #expect(h.receive.usedElement(0).length == 0)
        #expect(h.device.counters.malformed == 1)
    }

    @Test("activation without the transmit queue is refused; a reset forgets the queues")
    func activation() throws {
        let memory = try FakeDriver.memory()
        let fake = FakeDriver(memory: memory)
        let device = VirtioConsoleDevice { _ in }
        #expect(throws: VirtioActivationError.self) {
            try device.activate(
                features: 0, queues: [try fake.queue(), nil], memory: memory, interrupt: VirtioInterrupt { _ in })
        }
        var h = try Harness()
        h.device.reset()
        try h.transmit.setDescriptor(0, address: 0x10_000, length: 1)
        try h.transmit.makeAvailable(0)
        h.device.notify(queue: 1)
        #expect(h.transmit.usedIndex == 0)
    }
}
