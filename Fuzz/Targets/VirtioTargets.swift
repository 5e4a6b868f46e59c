// Virtqueues and the virtio-mmio transport, driven by a hostile driver.
import FuzzDeviceTargets
import VisorCore
import VisorHost
import VisorMemory
import VisorVirtio

/// The layout both targets put a queue at, in 64 KiB of guest memory.
private enum Layout {
    static let memorySize: UInt64 = 64 * 1024
    static let descriptors: UInt64 = 0x1000
    static let available: UInt64 = 0x2000
    static let used: UInt64 = 0x3000
}

/// The input first picks a queue size (1-256, any value), whether indirect descriptors
/// were negotiated, then fills the descriptor table, the available ring and an indirect
/// table at 0x8000 with its bytes; the rest of memory is zero. The queue is popped until
/// empty, at most 300 times.
///
/// Checks: every popped chain equals what a reference walker, written separately from the
/// spec's rules, finds for the same head (its buffers, or that it is invalid); every buffer
/// lies in RAM; the lengths add up without passing 32 bits; a queue whose available index
/// runs more than its size ahead yields nothing.
func fuzzVirtqueue(_ data: [UInt8]) {
    var input = ByteReader(data)
    let size = UInt16(input.byte()) + 1
    let indirect = input.byte() & 1 != 0
    guard let memory = try? GuestMemory(size: Layout.memorySize) else { preconditionFailure("cannot map test memory") }
    let tableBytes = Array((0..<Int(size) * 16).map { _ in input.byte() })
    let ringBytes = Array((0..<4 + Int(size) * 2).map { _ in input.byte() })
    let indirectBytes = input.rest().prefix(4096)
    do {
        try memory.write(tableBytes, at: Layout.descriptors)
        try memory.write(ringBytes, at: Layout.available)
        try memory.write(Array(indirectBytes), at: 0x8000)
    } catch {
        preconditionFailure("the layout does not fit")
    }
    let maximum: UInt16 = 256
    guard
        var queue = try? Virtqueue(
            size: size, maximum: maximum, descriptors: Layout.descriptors, available: Layout.available,
            used: Layout.used, indirect: indirect, memory: memory)
    else {
        // Only a size that is not a power of two is refused here.
        precondition(size & (size - 1) != 0, "a valid layout was refused")
        return
    }
    let availableIndex = (try? memory.readUInt16(at: Layout.available + 2)) ?? 0
    var chain = DescriptorChain()
    var popped = 0
    while popped < 300 {
        let result = queue.pop(into: &chain, memory: memory)
        if result == .empty { break }
        precondition(UInt16(popped) < size && availableIndex <= size, "popped past the available index")
        let headSlot = Layout.available + 4 + 2 * UInt64(UInt16(popped) % size)
        let head = (try? memory.readUInt16(at: headSlot)) ?? 0
        precondition(chain.head == head, "the chain's head is not the ring's entry")
        let expected = referenceWalk(head: head, size: size, indirect: indirect, memory: memory)
        switch (result, expected) {
        case (.chain, .some(let buffers)):
            let got = chain.readable.map { ($0.address, $0.length, false) } + chain.writable.map { ($0.address, $0.length, true) }
            precondition(got.count == buffers.count, "the chain has \(got.count) buffers, the reference \(buffers.count)")
            for (a, b) in zip(got, buffers) {
                precondition(a.0 == b.0 && a.1 == b.1 && a.2 == b.2, "a buffer differs from the reference")
                precondition(memory.contains(a.0, count: UInt64(a.1)), "a buffer outside RAM")
            }
            precondition(
                UInt64(chain.readableLength) + UInt64(chain.writableLength) == buffers.reduce(0) { $0 + UInt64($1.1) },
                "the lengths do not add up")
        case (.invalid, .none):
            precondition(chain.readable.isEmpty && chain.writable.isEmpty, "an invalid chain kept buffers")
        default:
            preconditionFailure("pop gave \(result), the reference \(expected == nil ? "invalid" : "a chain")")
        }
        queue.push(head: chain.head, length: 0, memory: memory)
        popped += 1
    }
    if availableIndex > size { precondition(popped == 0 && queue.isBroken, "a runaway index was served") }
    if availableIndex <= size { precondition(popped == Int(availableIndex), "popped \(popped) of \(availableIndex)") }
}

/// The spec's rules for a descriptor chain, written as plainly as possible: nil when the
/// chain is malformed, else its buffers (address, length, device-writable) in order.
private func referenceWalk(
    head: UInt16, size: UInt16, indirect: Bool, memory: GuestMemory, table descriptorTable: UInt64 = Layout.descriptors
) -> [(UInt64, UInt32, Bool)]? {
    func descriptor(_ table: UInt64, _ i: Int) -> (UInt64, UInt32, UInt16, UInt16)? {
        let at = table + UInt64(16 * i)
        guard let a = try? memory.readUInt64(at: at), let l = try? memory.readUInt32(at: at + 8),
            let f = try? memory.readUInt16(at: at + 12), let n = try? memory.readUInt16(at: at + 14)
        else { return nil }
        return (a, l, f, n)
    }
    var buffers: [(UInt64, UInt32, Bool)] = []
    var total: UInt64 = 0
    var sawWritable = false
    var visited = Set<Int>()
    var table = descriptorTable
    var count = Int(size)
    var i = Int(head)
    var nested = false
    guard i < count else { return nil }
    while true {
        // Revisiting a descriptor in the same table is a loop.
        guard visited.insert(i).inserted else { return nil }
        guard let (address, length, flags, next) = descriptor(table, i) else { return nil }
        if flags & 4 != 0 {
            guard indirect, !nested, flags & 1 == 0, length > 0, length % 16 == 0, length / 16 <= 1024,
                memory.contains(address, count: UInt64(length))
            else { return nil }
            table = address
            count = Int(length / 16)
            i = 0
            nested = true
            visited = []
            continue
        }
        guard memory.contains(address, count: UInt64(length)) else { return nil }
        total += UInt64(length)
        guard total <= UInt64(UInt32.max) else { return nil }
        let writable = flags & 2 != 0
        if !writable, sawWritable { return nil }
        sawWritable = sawWritable || writable
        buffers.append((address, length, writable))
        guard flags & 1 != 0 else { return buffers }
        guard Int(next) < count else { return nil }
        i = Int(next)
    }
}

/// The entropy device behind the virtio-mmio transport. Each step is an op byte: 0-3 a
/// register write (an offset byte picks one of the transport's registers, or any offset,
/// then a width byte and a 32-bit value), 4 a register read, 5 a guest-memory write of 8
/// bytes anywhere in RAM, 6 the Linux
/// driver's handshake with one queue at the fixed layout, 7 a notify of queue 0.
///
/// Checks: the interrupt line is high exactly when InterruptStatus is non-zero; the device
/// is active exactly when DRIVER_OK is set and DEVICE_NEEDS_RESET clear; FEATURES_OK is
/// never set with features outside the offered ones; one step completes at most a queue's
/// worth of requests, and none gets more than 64 KiB. (The used ring cannot witness the
/// count: a hostile driver may point the device's buffers at it.)
func fuzzVirtioEntropy(_ data: [UInt8]) {
    typealias R = VirtioMMIOTransport.Register
    typealias S = VirtioMMIOTransport.Status
    var input = ByteReader(data)
    guard let memory = try? GuestMemory(size: Layout.memorySize) else { preconditionFailure("cannot map test memory") }
    let device = VirtioEntropyDevice()
    let line = LineLevel()
    let transport = VirtioMMIOTransport(device: device, memory: memory, eventIndex: input.byte() & 1 != 0) { line.level = $0 }
    let registers: [UInt64] = [
        R.deviceFeaturesSelect, R.driverFeatures, R.driverFeaturesSelect, R.queueSelect, R.queueSize, R.queueReady,
        R.queueNotify, R.interruptAcknowledge, R.status, R.queueDescriptorLow, R.queueDescriptorHigh, R.queueDriverLow,
        R.queueDriverHigh, R.queueDeviceLow, R.queueDeviceHigh, R.configuration,
    ]
    var driverFeatures: UInt64 = 0
    var driverFeaturesSelect: UInt32 = 0
    func write(_ offset: UInt64, _ value: UInt32, width: UInt8 = 4) {
        if offset == R.driverFeaturesSelect, width == 4 { driverFeaturesSelect = value }
        let status = transport.status
        if offset == R.driverFeatures, width == 4, status & S.driver != 0, status & S.featuresOK == 0 {
            if driverFeaturesSelect == 0 { driverFeatures = driverFeatures & ~0xFFFF_FFFF | UInt64(value) }
            if driverFeaturesSelect == 1 { driverFeatures = driverFeatures & 0xFFFF_FFFF | UInt64(value) << 32 }
        }
        if offset == R.status, value == 0 { driverFeatures = 0 }
        _ = transport.mmioWrite(address: offset, offset: offset, width: width, value: UInt64(value))
    }
    var lastRequests: UInt64 = 0
    var lastBytes: UInt64 = 0
    var steps = 0
    while !input.isAtEnd, steps < 2000 {
        steps += 1
        switch input.byte() & 7 {
        case 0, 1, 2, 3:
            let pick = input.byte()
            let offset = pick < 0xF0 ? registers[Int(pick) % registers.count] : UInt64(input.uint16() & 0xFFF)
            let width: UInt8 = [4, 4, 4, 1, 2, 8][Int(input.byte()) % 6]
            write(offset, input.uint32(), width: width)
        case 4:
            _ = transport.mmioRead(
                address: 0, offset: UInt64(input.uint16() & 0xFFF), width: [1, 2, 4, 8][Int(input.byte()) % 4])
        case 5:
            let at = UInt64(input.uint16()) % (Layout.memorySize - 8)
            try? memory.write(input.uint64(), at: at)
        case 6:
            write(R.status, 0)
            write(R.status, S.acknowledge | S.driver)
            write(R.driverFeaturesSelect, 1)
            write(R.driverFeatures, 1)
            write(R.status, S.acknowledge | S.driver | S.featuresOK)
            write(R.queueSelect, 0)
            write(R.queueSize, UInt32(1) << (input.byte() % 9))
            write(R.queueDescriptorLow, UInt32(Layout.descriptors))
            write(R.queueDriverLow, UInt32(Layout.available))
            write(R.queueDeviceLow, UInt32(Layout.used))
            write(R.queueReady, 1)
            write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        default:
            write(R.queueNotify, 0)
        }
        let status = transport.status
        let interruptStatus = UInt32(truncatingIfNeeded: transport.mmioRead(address: 0, offset: R.interruptStatus, width: 4))
        precondition(line.level == (interruptStatus != 0), "the line is \(line.level) with status \(interruptStatus)")
        precondition(
            transport.isActive == (status & S.driverOK != 0 && status & S.deviceNeedsReset == 0),
            "active \(transport.isActive) with status 0x\(String(status, radix: 16))")
        if status & S.featuresOK != 0 {
            precondition(driverFeatures & ~transport.offeredFeatures == 0, "FEATURES_OK with features not offered")
        }
        let requests = device.counters.requests
        let bytes = device.counters.bytes
        precondition(requests - lastRequests <= 256, "one step served \(requests - lastRequests) requests")
        precondition(
            bytes - lastBytes <= (requests - lastRequests) * UInt64(VirtioEntropyDevice.maximumRequestBytes),
            "a request got more than 64 KiB")
        lastRequests = requests
        lastBytes = bytes
    }
}

/// An interrupt line's last level, set by the transport.
private final class LineLevel: @unchecked Sendable {
    var level = false
}

/// The layout of the block target: rings as above, buffers only in the upper half of RAM,
/// so no buffer can alias a ring and the used ring is a faithful witness.
private enum BlockLayout {
    static let buffers: UInt64 = 0x8000
    static let buffersSize: UInt64 = 0x8000
}

/// The block device on a disk of 1-8 sectors (an unlinked temporary file) (read-only or not, from the first
/// byte), with a queue of any power-of-two size (second byte). Each step is an op byte:
/// 0 a descriptor (any index, an address in the buffer half of RAM, a chosen or any
/// length, NEXT/WRITE flags, any next), 1 a head made available, 2 a request header
/// anywhere in the buffer half (a known or unknown type, a sector near the disk or
/// anywhere), 3 an 8-byte write in the buffer half, 4 a notification, 5 a well-formed
/// header/data/status chain made available.
///
/// Checks after each notification: guest RAM changed only inside device-writable
/// descriptors and the used ring; the used index moved by exactly the requests completed,
/// at most a queue's worth; the last request completed has length 0 (malformed) or at most
/// its writable bytes, and then its status byte is 0, 1 or 2; the disk keeps its size, and
/// a read-only disk keeps every byte.
func fuzzVirtioBlock(_ data: [UInt8]) {
    var input = ByteReader(data)
    let flags = input.byte()
    let readOnly = flags & 1 != 0
    let sectors = 1 + Int(flags >> 1 & 7)
    let size = UInt16(1) << (input.byte() % 9)
    let original = (0..<sectors * 512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    guard let memory = try? GuestMemory(size: Layout.memorySize),
        let file = try? HostDiskFile.anonymous(contents: original, readOnly: false),
        let queue = try? Virtqueue(
            size: size, maximum: VirtioBlockDevice.queueSize, descriptors: Layout.descriptors,
            available: Layout.available, used: Layout.used, memory: memory)
    else { preconditionFailure("cannot set up the block target") }
    let device = VirtioBlockDevice(file: file, readOnly: readOnly)
    do {
        try device.activate(features: 0, queues: [queue], memory: memory, interrupt: VirtioInterrupt { _ in })
    } catch {
        preconditionFailure("activation refused: \(error)")
    }
    var availableIndex: UInt16 = 0
    func makeAvailable(_ head: UInt16) {
        try? memory.write(head, at: Layout.available + 4 + 2 * UInt64(availableIndex % size))
        availableIndex &+= 1
        try? memory.write(availableIndex, at: Layout.available + 2)
    }
    func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let at = Layout.descriptors + 16 * UInt64(index % size)
        try? memory.write(address, at: at)
        try? memory.write(length, at: at + 8)
        try? memory.write(flags, at: at + 12)
        try? memory.write(next, at: at + 14)
    }
    func bufferAddress(_ raw: UInt16, room: UInt64 = 1) -> UInt64 {
        BlockLayout.buffers + UInt64(raw) % (BlockLayout.buffersSize - room + 1)
    }
    let lengths: [UInt32] = [1, 15, 16, 20, 21, 100, 512, 513, 1024, 1025, 2048, 0]
    let types: [UInt32] = [0, 1, 4, 8, 0, 1, 2, 3, 0xFFFF_FFFF]
    func sector(_ input: inout ByteReader) -> UInt64 {
        let pick = input.byte()
        return pick < 0xC0 ? UInt64(pick) % UInt64(sectors + 2) : input.uint64()
    }
    var notifications = 0
    func notifyAndCheck() {
        notifications += 1
        guard let before = try? memory.read(Int(Layout.memorySize), at: 0) else { preconditionFailure("cannot read RAM") }
        let usedBefore = (try? memory.readUInt16(at: Layout.used + 2)) ?? 0
        let requestsBefore = device.counters.requests
        device.notify(queue: 0)
        guard let after = try? memory.read(Int(Layout.memorySize), at: 0) else { preconditionFailure("cannot read RAM") }
        // What the device may write: writable descriptors (the table cannot change during
        // a notification: no buffer reaches it) and the used ring.
        var allowed: [(UInt64, UInt64)] = [(Layout.used, Layout.used + 6 + 8 * UInt64(size))]
        for i in 0..<UInt64(size) {
            let at = Layout.descriptors + 16 * i
            guard let address = try? memory.readUInt64(at: at), let length = try? memory.readUInt32(at: at + 8),
                let descriptorFlags = try? memory.readUInt16(at: at + 12), descriptorFlags & 2 != 0
            else { continue }
            allowed.append((address, address &+ UInt64(length)))
        }
        for offset in 0..<before.count where before[offset] != after[offset] {
            let address = UInt64(offset)
            precondition(allowed.contains { address >= $0.0 && address < $0.1 }, "RAM changed at 0x\(String(address, radix: 16))")
        }
        let usedAfter = (try? memory.readUInt16(at: Layout.used + 2)) ?? 0
        let completed = device.counters.requests - requestsBefore
        precondition(completed <= UInt64(size), "one notification completed \(completed) requests")
        precondition(UInt64(usedAfter &- usedBefore) == completed, "the used index moved by \(usedAfter &- usedBefore)")
        if completed > 0 {
            let element = Layout.used + 4 + 8 * UInt64((usedAfter &- 1) % size)
            let head = (try? memory.readUInt32(at: element)) ?? 0
            let length = (try? memory.readUInt32(at: element + 4)) ?? 0
            if length > 0 { checkStatus(head: head, length: length) }
        }
        guard let contents = file.contents() else { preconditionFailure("cannot read the disk") }
        precondition(contents.count == original.count, "the disk's size changed to \(contents.count)")
        if readOnly { precondition(contents == original, "a read-only disk was written") }
    }
    /// A completed request's chain, walked again (the table has not changed): its status
    /// byte is the last byte of its last writable buffer.
    func checkStatus(head: UInt32, length: UInt32) {
        var index = UInt64(head)
        var writable: UInt64 = 0
        var last: (UInt64, UInt32)? = nil
        for _ in 0..<Int(size) {
            let at = Layout.descriptors + 16 * index
            guard let address = try? memory.readUInt64(at: at), let count = try? memory.readUInt32(at: at + 8),
                let descriptorFlags = try? memory.readUInt16(at: at + 12), let next = try? memory.readUInt16(at: at + 14)
            else { break }
            if descriptorFlags & 2 != 0 {
                writable += UInt64(count)
                last = (address, count)
            }
            guard descriptorFlags & 1 != 0 else { break }
            index = UInt64(next)
        }
        guard let (address, count) = last, count > 0 else { preconditionFailure("a chain without a status byte completed") }
        precondition(UInt64(length) <= writable, "used length \(length) with \(writable) writable bytes")
        let status = (try? memory.readUInt8(at: address + UInt64(count) - 1)) ?? 0xFF
        precondition(status <= 2, "status \(status)")
    }
    var steps = 0
    while !input.isAtEnd, steps < 300, notifications < 16 {
        steps += 1
        switch input.byte() % 6 {
        case 0:
            let index = UInt16(input.byte())
            let address = bufferAddress(input.uint16())
            let pick = input.byte()
            let length = pick < 0xF0 ? lengths[Int(pick) % lengths.count] : UInt32(input.uint16())
            let descriptorFlags = UInt16(input.byte() & 3)
            setDescriptor(index, address: address, length: length, flags: descriptorFlags, next: UInt16(input.byte()))
        case 1:
            makeAvailable(UInt16(input.byte()) % (size + 1))
        case 2:
            let at = bufferAddress(input.uint16(), room: 16)
            try? memory.write(types[Int(input.byte()) % types.count], at: at)
            try? memory.write(UInt32(0), at: at + 4)
            try? memory.write(sector(&input), at: at + 8)
        case 3:
            try? memory.write(input.uint64(), at: bufferAddress(input.uint16(), room: 8))
        case 4:
            notifyAndCheck()
        default:
            let head = UInt16(input.byte()) % size
            let header = bufferAddress(input.uint16(), room: 16)
            let type = types[Int(input.byte()) % types.count]
            try? memory.write(type, at: header)
            try? memory.write(UInt32(0), at: header + 4)
            try? memory.write(sector(&input), at: header + 8)
            let dataLength = UInt32(input.byte() % 5) * 512
            let dataAddress = bufferAddress(input.uint16(), room: UInt64(max(dataLength, 1)))
            let status = bufferAddress(input.uint16())
            let dataWritable: UInt16 = type == 1 ? 0 : 2
            if dataLength > 0 {
                setDescriptor(head, address: header, length: 16, flags: 1, next: (head &+ 1) % size)
                setDescriptor(
                    head &+ 1, address: dataAddress, length: dataLength, flags: 1 | dataWritable, next: (head &+ 2) % size)
                setDescriptor(head &+ 2, address: status, length: 1, flags: 2, next: 0)
            } else {
                setDescriptor(head, address: header, length: 16, flags: 1, next: (head &+ 1) % size)
                setDescriptor(head &+ 1, address: status, length: 1, flags: 2, next: 0)
            }
            makeAvailable(head)
        }
    }
    notifyAndCheck()
}

/// The console's receive queue, beside the transmit queue at `Layout`; buffers only in the
/// upper half of RAM, so neither ring can be a buffer.
private enum ConsoleLayout {
    static let descriptors: UInt64 = 0x4000
    static let available: UInt64 = 0x5000
    static let used: UInt64 = 0x6000
    static let buffers: UInt64 = 0x8000
    static let buffersSize: UInt64 = 0x8000
}

/// The console device with both queues of one power-of-two size (first byte), the transmit
/// queue at `Layout` and the receive queue at `ConsoleLayout`. Each step is an op byte: 0 a
/// descriptor in either table (any index, an address in the buffer half, a length, any
/// NEXT/WRITE flags, any next), 1 a head made available on either queue, 2 an 8-byte
/// write in the buffer half, 3 a transmit notification, 4 input of 0-255 bytes.
///
/// Checks: after a transmit notification, the output is exactly the readable bytes of the
/// newly completed chains that a reference walker finds valid and wholly readable, in order,
/// and at most a queue's worth completed; after input, at most the offered bytes were
/// taken, RAM changed only inside the receive queue's writable descriptors and used ring,
/// and the completed chains' writable buffers, up to their used lengths, hold exactly the
/// bytes taken, in order.
func fuzzVirtioConsole(_ data: [UInt8]) {
    var input = ByteReader(data)
    let size = UInt16(1) << (input.byte() % 9)
    let output = OutputRecorder()
    guard let memory = try? GuestMemory(size: Layout.memorySize),
        let transmit = try? Virtqueue(
            size: size, maximum: VirtioConsoleDevice.queueSize, descriptors: Layout.descriptors,
            available: Layout.available, used: Layout.used, memory: memory),
        let receive = try? Virtqueue(
            size: size, maximum: VirtioConsoleDevice.queueSize, descriptors: ConsoleLayout.descriptors,
            available: ConsoleLayout.available, used: ConsoleLayout.used, memory: memory)
    else { preconditionFailure("cannot set up the console target") }
    let device = VirtioConsoleDevice { output.append($0) }
    do {
        try device.activate(features: 0, queues: [receive, transmit], memory: memory, interrupt: VirtioInterrupt { _ in })
    } catch {
        preconditionFailure("activation refused: \(error)")
    }
    var availableIndex: [UInt16] = [0, 0]
    let rings: [(descriptors: UInt64, available: UInt64, used: UInt64)] = [
        (ConsoleLayout.descriptors, ConsoleLayout.available, ConsoleLayout.used),
        (Layout.descriptors, Layout.available, Layout.used),
    ]
    func usedIndex(_ queue: Int) -> UInt16 { (try? memory.readUInt16(at: rings[queue].used + 2)) ?? 0 }
    func usedElement(_ queue: Int, _ slot: UInt16) -> (UInt16, UInt32) {
        let at = rings[queue].used + 4 + 8 * UInt64(slot % size)
        return (UInt16(truncatingIfNeeded: (try? memory.readUInt32(at: at)) ?? 0), (try? memory.readUInt32(at: at + 4)) ?? 0)
    }
    let lengths: [UInt32] = [0, 1, 7, 64, 100, 4095, 4096, 4097, 9000]
    var steps = 0
    while !input.isAtEnd, steps < 300 {
        steps += 1
        switch input.byte() % 5 {
        case 0:
            let queue = Int(input.byte() & 1)
            let index = UInt64(input.byte()) % UInt64(size)
            let pick = input.byte()
            let length = pick < 0xF0 ? lengths[Int(pick) % lengths.count] : UInt32(input.uint16())
            let room = UInt64(max(length, 1))
            let address =
                room <= ConsoleLayout.buffersSize
                ? ConsoleLayout.buffers + UInt64(input.uint16()) % (ConsoleLayout.buffersSize - room + 1)
                : ConsoleLayout.buffers
            let at = rings[queue].descriptors + 16 * index
            try? memory.write(address, at: at)
            try? memory.write(length, at: at + 8)
            try? memory.write(UInt16(input.byte() & 3), at: at + 12)
            try? memory.write(UInt16(input.byte()), at: at + 14)
        case 1:
            let queue = Int(input.byte() & 1)
            let head = UInt16(input.byte()) % (size + 1)
            try? memory.write(head, at: rings[queue].available + 4 + 2 * UInt64(availableIndex[queue] % size))
            availableIndex[queue] &+= 1
            try? memory.write(availableIndex[queue], at: rings[queue].available + 2)
        case 2:
            let at = ConsoleLayout.buffers + UInt64(input.uint16()) % (ConsoleLayout.buffersSize - 7)
            try? memory.write(input.uint64(), at: at)
        case 3:
            let before = usedIndex(1)
            let outputBefore = output.count
            device.notify(queue: VirtioConsoleDevice.transmitQueue)
            let after = usedIndex(1)
            precondition(after &- before <= size, "one notification completed \(after &- before) chains")
            var expected: [UInt8] = []
            var slot = before
            while slot != after {
                let (head, length) = usedElement(1, slot)
                precondition(length == 0, "a transmit chain completed with length \(length)")
                if let chain = referenceWalk(head: head, size: size, indirect: false, memory: memory),
                    !chain.contains(where: { $0.2 })
                {
                    for (address, count, _) in chain {
                        expected += (try? memory.read(Int(count), at: address)) ?? []
                    }
                }
                slot &+= 1
            }
            let sent = output.bytes(from: outputBefore)
            precondition(sent == expected, "sent \(sent.count) bytes, expected \(expected.count)")
        default:
            let offered = (0..<Int(input.byte())).map { _ in input.byte() }
            guard let before = try? memory.read(Int(Layout.memorySize), at: 0) else { preconditionFailure("cannot read RAM") }
            let usedBefore = usedIndex(0)
            let taken = device.receive(offered)
            precondition(taken >= 0 && taken <= offered.count, "took \(taken) of \(offered.count) bytes")
            guard let after = try? memory.read(Int(Layout.memorySize), at: 0) else { preconditionFailure("cannot read RAM") }
            var allowed: [(UInt64, UInt64)] = [(ConsoleLayout.used, ConsoleLayout.used + 6 + 8 * UInt64(size))]
            for i in 0..<UInt64(size) {
                let at = ConsoleLayout.descriptors + 16 * i
                guard let address = try? memory.readUInt64(at: at), let length = try? memory.readUInt32(at: at + 8),
                    let flags = try? memory.readUInt16(at: at + 12), flags & 2 != 0
                else { continue }
                allowed.append((address, address &+ UInt64(length)))
            }
            for offset in 0..<before.count where before[offset] != after[offset] {
                let address = UInt64(offset)
                precondition(
                    allowed.contains { address >= $0.0 && address < $0.1 }, "RAM changed at 0x\(String(address, radix: 16))")
            }
            // Replays the completed chains on a copy of RAM as the spec says the device
            // writes them (exact even when buffers overlap), then compares.
            var model = before
            var delivered = 0
            var slot = usedBefore
            while slot != usedIndex(0) {
                let (head, length) = usedElement(0, slot)
                var left = Int(length)
                if left > 0 {
                    let chain = referenceWalk(
                        head: head, size: size, indirect: false, memory: memory, table: ConsoleLayout.descriptors)
                    guard let chain else { preconditionFailure("a malformed receive chain completed with length \(length)") }
                    for (address, count, writable) in chain where left > 0 {
                        precondition(writable, "input written into a chain with a readable buffer")
                        let piece = min(Int(count), left)
                        for i in 0..<piece { model[Int(address) + i] = offered[delivered + i] }
                        delivered += piece
                        left -= piece
                    }
                    precondition(left == 0, "used length \(length) beyond the chain's writable buffers")
                }
                slot &+= 1
            }
            precondition(delivered == taken, "\(delivered) bytes in used chains, \(taken) taken")
            let buffers = Int(ConsoleLayout.buffers)..<Int(ConsoleLayout.buffers + ConsoleLayout.buffersSize)
            precondition(model[buffers] == after[buffers], "the input arrived changed")
        }
    }
}

/// The console target's output, appended by the device.
private final class OutputRecorder: @unchecked Sendable {
    private var bytes: [UInt8] = []
    var count: Int { bytes.count }
    func append(_ span: Span<UInt8>) {
        for i in span.indices { bytes.append(span[i]) }
    }
    func bytes(from start: Int) -> [UInt8] { Array(bytes[start...]) }
}
