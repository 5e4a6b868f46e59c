import Testing
import VisorMemory
import VisorVirtio

@Suite("Split virtqueue against a hostile driver")
struct VirtqueueTests {
    @Test("a well-formed chain: readable then writable buffers, completed on the used ring")
    func wellFormedChain() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.setDescriptor(0, address: 0x10_000, length: 16, flags: Virtqueue.flagNext, next: 3)
        try driver.setDescriptor(3, address: 0x11_000, length: 512, flags: Virtqueue.flagNext | Virtqueue.flagWrite, next: 5)
        try driver.setDescriptor(5, address: 0x12_000, length: 1, flags: Virtqueue.flagWrite)
        try driver.makeAvailable(0)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pop(into: &chain, memory: memory) == .chain)
        #expect(chain.head == 0)
        #expect(chain.readable == [DescriptorElement(address: 0x10_000, length: 16)])
        #expect(chain.writable == [.init(address: 0x11_000, length: 512), .init(address: 0x12_000, length: 1)])
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
        #expect(queue.pop(into: &chain, memory: memory) == .empty)
        let pushed = queue.push(head: 0, length: 513, memory: memory)
        #expect(pushed)
        #expect(driver.usedIndex == 1)
        #expect(driver.usedElement(0) == (0, 513))
    }

    @Test("a chain that loops stops after queue-size hops and comes back invalid, with its head")
    func loopingChain() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.setDescriptor(2, address: 0x10_000, length: 8, flags: Virtqueue.flagNext, next: 4)
        try driver.setDescriptor(4, address: 0x10_000, length: 8, flags: Virtqueue.flagNext, next: 2)
        try driver.makeAvailable(2)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.tooLong))
        #expect(chain.head == 2 && chain.readable.isEmpty && chain.writable.isEmpty)
        queue.push(head: chain.head, length: 0, memory: memory)
        #expect(driver.usedElement(0) == (2, 0))
        // A chain of exactly queue-size descriptors is fine.
        for i in 0..<8 {
            try driver.setDescriptor(
                UInt64(i), address: 0x10_000, length: 1, flags: i < 7 ? Virtqueue.flagNext : 0, next: UInt16(i + 1))
        }
        try driver.makeAvailable(0)
        #expect(queue.pop(into: &chain, memory: memory) == .chain)
        #expect(chain.readable.count == 8)
    }

    @Test("a head or next index out of range comes back invalid; the head is reported as the driver gave it")
    func indicesOutOfRange() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.makeAvailable(300)
        try driver.setDescriptor(1, address: 0x10_000, length: 8, flags: Virtqueue.flagNext, next: 8)
        try driver.makeAvailable(1)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.headOutOfRange))
        #expect(chain.head == 300)
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.nextOutOfRange))
        #expect(chain.head == 1)
    }

    @Test("an available index more than queue-size ahead breaks the queue until reset, with no busy loop")
    func availableIndexTooFarAhead() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.setDescriptor(0, address: 0x10_000, length: 8)
        try driver.setAvailableIndex(9)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pending(memory: memory) == nil)
        #expect(queue.isBroken)
        // Even once the index looks sane again, the queue stays stopped.
        try driver.setAvailableIndex(1)
        for _ in 0..<1000 { #expect(queue.pop(into: &chain, memory: memory) == .empty) }
        // Exactly queue-size ahead is legal.
        var fresh = try driver.queue()
        try driver.setAvailableIndex(8)
        #expect(fresh.pending(memory: memory) == 8)
        // And the 16-bit index wraps.
        try driver.setAvailableIndex(0)
        var wrapped = try driver.queue()
        #expect(wrapped.pending(memory: memory) == 0)
    }

    @Test("a buffer outside guest RAM, or whose address plus length wraps 64 bits, makes the chain invalid")
    func buffersOutsideMemory() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.setDescriptor(0, address: 0xF_FFF0, length: 0x20)
        try driver.setDescriptor(1, address: UInt64.max - 3, length: 0x10)
        try driver.setDescriptor(2, address: 0x2_0000_0000, length: 1)
        for head: UInt16 in [0, 1, 2] { try driver.makeAvailable(head) }
        var queue = try driver.queue()
        var chain = DescriptorChain()
        for _ in 0..<3 { #expect(queue.pop(into: &chain, memory: memory) == .invalid(.bufferOutsideMemory)) }
    }

    @Test("a chain whose total length overflows 32 bits is invalid")
    func totalLengthOverflow() throws {
        let memory = try FakeDriver.memory(3 << 30)
        var driver = FakeDriver(memory: memory)
        for i: UInt64 in 0..<3 {
            try driver.setDescriptor(
                i, address: 0x10_000, length: 0x7000_0000, flags: i < 2 ? Virtqueue.flagNext : 0, next: UInt16(i + 1))
        }
        try driver.makeAvailable(0)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.totalLengthOverflow))
    }

    @Test("a readable buffer after a writable one makes the chain invalid")
    func readableAfterWritable() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        try driver.setDescriptor(0, address: 0x10_000, length: 8, flags: Virtqueue.flagWrite | Virtqueue.flagNext, next: 1)
        try driver.setDescriptor(1, address: 0x11_000, length: 8)
        try driver.makeAvailable(0)
        var queue = try driver.queue()
        var chain = DescriptorChain()
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.readableAfterWritable))
    }

    @Test("the indirect flag: refused when not negotiated; when negotiated, a table in RAM with a sane length, never nested")
    func indirectDescriptors() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        let table: UInt64 = 0x8000
        try driver.setDescriptor(0, address: 0x10_000, length: 4, flags: Virtqueue.flagNext, next: 1, table: table)
        try driver.setDescriptor(1, address: 0x11_000, length: 64, flags: Virtqueue.flagWrite, table: table)
        try driver.setDescriptor(0, address: table, length: 32, flags: Virtqueue.flagIndirect)
        try driver.makeAvailable(0)
        var chain = DescriptorChain()
        var plain = try driver.queue(indirect: false)
        #expect(plain.pop(into: &chain, memory: memory) == .invalid(.indirectNotNegotiated))

        var queue = try driver.queue(indirect: true)
        #expect(queue.pop(into: &chain, memory: memory) == .chain)
        #expect(chain.readable == [.init(address: 0x10_000, length: 4)])
        #expect(chain.writable == [.init(address: 0x11_000, length: 64)])

        // Nested, with NEXT, a length not a multiple of 16, empty, or outside RAM.
        try driver.setDescriptor(1, address: table, length: 32, flags: Virtqueue.flagIndirect, table: table)
        try driver.setDescriptor(0, address: 0x10_000, length: 4, flags: Virtqueue.flagNext, next: 1, table: table)
        try driver.makeAvailable(0)
        #expect(queue.pop(into: &chain, memory: memory) == .invalid(.badIndirectTable))
        for (length, flags, address): (UInt32, UInt16, UInt64) in [
            (32, Virtqueue.flagIndirect | Virtqueue.flagNext, table), (24, Virtqueue.flagIndirect, table),
            (0, Virtqueue.flagIndirect, table), (32, Virtqueue.flagIndirect, 0xFFFF0),
            (UInt32(16 * (Virtqueue.maximumIndirectDescriptors + 1)), Virtqueue.flagIndirect, table),
        ] {
            try driver.setDescriptor(3, address: address, length: length, flags: flags)
            try driver.makeAvailable(3)
            let result = queue.pop(into: &chain, memory: memory)
            #expect(result == .invalid(.badIndirectTable) || result == .invalid(.bufferOutsideMemory), "\(length) \(flags)")
        }
    }

    @Test("layouts refused at DRIVER_OK: size 0, not a power of two, above the maximum, misaligned, outside RAM")
    func layouts() throws {
        let memory = try FakeDriver.memory()
        func make(_ size: UInt16, _ d: UInt64 = 0x1000, _ a: UInt64 = 0x2000, _ u: UInt64 = 0x3000) throws(Virtqueue.LayoutError)
        {
            _ = try Virtqueue(size: size, maximum: 256, descriptors: d, available: a, used: u, memory: memory)
        }
        for size: UInt16 in [0, 3, 100, 512, 0xFFFF] {
            #expect(throws: Virtqueue.LayoutError.size(size, maximum: 256)) { try make(size) }
        }
        #expect(throws: Virtqueue.LayoutError.misaligned(ring: "descriptor table", address: 0x1008)) { try make(8, 0x1008) }
        #expect(throws: Virtqueue.LayoutError.misaligned(ring: "available ring", address: 0x2001)) { try make(8, 0x1000, 0x2001) }
        #expect(throws: Virtqueue.LayoutError.misaligned(ring: "used ring", address: 0x3002)) {
            try make(8, 0x1000, 0x2000, 0x3002)
        }
        #expect(throws: Virtqueue.LayoutError.outsideMemory(ring: "used ring", address: 0xFFFF8, length: 70)) {
            try make(8, 0x1000, 0x2000, 0xFFFF8)
        }
        #expect(
            throws: Virtqueue.LayoutError.outsideMemory(ring: "descriptor table", address: 0xFFFF_FFFF_FFFF_FFF0, length: 128)
        ) {
            try make(8, 0xFFFF_FFFF_FFFF_FFF0)
        }
        try make(256)
    }

    @Test("interrupt suppression: NO_INTERRUPT without EVENT_IDX, and used_event with it")
    func interruptSuppression() throws {
        let memory = try FakeDriver.memory()
        let driver = FakeDriver(memory: memory)
        var plain = try driver.queue()
        #expect(plain.needsInterrupt(memory: memory) == true)
        try driver.setAvailableFlags(Virtqueue.availNoInterrupt)
        #expect(plain.needsInterrupt(memory: memory) == false)

        var event = try driver.queue(eventIndex: true)
        try driver.setUsedEvent(1)  // interrupt once the used index passes 1
        event.push(head: 0, length: 0, memory: memory)  // used index 1
        #expect(event.needsInterrupt(memory: memory) == true)  // the first always signals
        event.push(head: 0, length: 0, memory: memory)  // used index 2: crossed used_event 1
        #expect(event.needsInterrupt(memory: memory) == true)
        event.push(head: 0, length: 0, memory: memory)  // used index 3: used_event 1 already passed
        #expect(event.needsInterrupt(memory: memory) == false)
        try driver.setUsedEvent(3)
        event.push(head: 0, length: 0, memory: memory)  // 4 crosses 3
        #expect(event.needsInterrupt(memory: memory) == true)
        event.requestNotification(memory: memory)
        #expect(try memory.readUInt16(at: driver.used + 4 + 8 * 8) == event.nextAvailable)
    }

    /// A one-descriptor chain at head `head` (readable, 4 bytes).
    static func simpleChain(_ driver: FakeDriver, _ head: UInt64) throws {
        try driver.setDescriptor(head, address: FakeDriver.bufferBase + 0x100 * head, length: 4)
    }

    @Test("serveAvailable with EVENT_IDX publishes avail_event and serves entries the driver added meanwhile")
    func eventIndexRecheck() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        for head in 0..<8 { try Self.simpleChain(driver, UInt64(head)) }
        var queue = try driver.queue(eventIndex: true)
        var chain = DescriptorChain(capacity: 8)
        var counters = VirtioCounters()
        try driver.makeAvailable(0)
        var added = false
        // The first request's service adds another entry without a notification, as a driver
        // racing with the device does; the device must still see it.
        let served = queue.serveAvailable(memory: memory, chain: &chain, counters: &counters) { _ in
            if !added {
                added = true
                try? driver.makeAvailable(1)
            }
            return VirtioCompletion(written: 0, bytes: 4)
        }
        #expect(counters.requests == 2)
        #expect(served == Virtqueue.Served(interrupt: true, more: false, count: 2))
        #expect(try memory.readUInt16(at: driver.used + 4 + 8 * 8) == 2)  // avail_event: notify for entry 2
        #expect(driver.usedIndex == 2)
    }

    @Test("serveAvailable stops at a queue's worth and reports that entries are left; without EVENT_IDX avail_event is untouched")
    func eventIndexBound() throws {
        let memory = try FakeDriver.memory()
        var driver = FakeDriver(memory: memory)
        for head in 0..<8 { try Self.simpleChain(driver, UInt64(head)) }
        for eventIndex in [true, false] {
            try memory.write(UInt16(0xBEEF), at: driver.used + 4 + 8 * 8)
            var queue = try driver.queue(eventIndex: eventIndex)
            try memory.write(UInt16(0), at: driver.used + 2)
            try driver.setAvailableIndex(0)
            var chain = DescriptorChain(capacity: 8)
            var counters = VirtioCounters()
            for head in 0..<8 { try driver.makeAvailable(UInt16(head)) }
            // Each completion makes one more entry available: the ring never runs dry.
            var next: UInt16 = 0
            let served = queue.serveAvailable(memory: memory, chain: &chain, counters: &counters) { chain in
                try? driver.makeAvailable(next % 8)
                next &+= 1
                return VirtioCompletion(written: 0, bytes: 0)
            }
            #expect(counters.requests == 8)
            #expect(served.more == eventIndex)
            #expect(queue.pending(memory: memory) == 8)
            let availableEvent = try memory.readUInt16(at: driver.used + 4 + 8 * 8)
            #expect(availableEvent == (eventIndex ? 8 : 0xBEEF))
        }
    }
}
