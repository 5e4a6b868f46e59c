// The network device, driven by a hostile driver on one side and a TAP's stand-in (a
// SOCK_SEQPACKET pair) on the other.
import FuzzDeviceTargets
import VisorHost
import VisorMemory
import VisorVirtio

private enum NetLayout {
    static let memorySize: UInt64 = 256 * 1024
    /// (descriptors, available, used) of the receive and transmit queues.
    static let receive: (UInt64, UInt64, UInt64) = (0x1000, 0x2000, 0x3000)
    static let transmit: (UInt64, UInt64, UInt64) = (0x4000, 0x5000, 0x6000)
    /// Where descriptors may point: everything above the rings.
    static let buffers: UInt64 = 0x8000
    static var buffersSize: UInt64 { memorySize - buffers }
}

/// The first byte picks the two queue sizes (powers of two to 256) and, with a nibble past
/// 8, EVENT_IDX; then each step is an op
/// byte: 0/1 a receive/transmit descriptor (index, an address in the buffer area, a length
/// from a list or any, NEXT/WRITE flags, any next), 2/3 a receive/transmit head made
/// available, 4 a frame from the host (a length from a list around the limits, or any up
/// to 70,000, its bytes numbered by the frame), 5 the TAP readable, 6 a transmit
/// notification, 7 a receive notification, 8 an 8-byte write in the buffer area or an
/// available ring.
///
/// Checks: every frame the device writes to the TAP is exactly a valid transmit chain's
/// readable bytes (at least 12, at most 12 + 65,535, no writable buffer) with the header
/// zeroed, in the order the chains completed, and nothing else is written; transmit chains
/// complete with length 0; a receive chain's used length never exceeds its writable
/// length, and a non-zero one holds the clean header and one of the host's frames, whole,
/// in the order they were sent; the used indices move by exactly the chains completed, at
/// most `framesPerWakeUp` per wake-up and a queue's worth per notification; with EVENT_IDX,
/// a drained transmit queue has asked to be notified for the next entry.
func fuzzVirtioNet(_ data: [UInt8]) {
    var input = ByteReader(data)
    let sizes = input.byte()
    let receiveSize = UInt16(1) << (sizes % 9)
    let transmitSize = UInt16(1) << ((sizes >> 4) % 9)
    // A nibble past 8 (which picks a size modulo 9) also negotiates EVENT_IDX.
    let eventIndex = sizes & 0x0F > 8 || sizes >> 4 > 8
    guard let memory = try? GuestMemory(size: NetLayout.memorySize),
        let (tap, peer) = try? HostTap.socketPair(),
        let receiveQueue = try? Virtqueue(
            size: receiveSize, maximum: VirtioNetDevice.queueSize, descriptors: NetLayout.receive.0,
            available: NetLayout.receive.1, used: NetLayout.receive.2, eventIndex: eventIndex, memory: memory),
        let transmitQueue = try? Virtqueue(
            size: transmitSize, maximum: VirtioNetDevice.queueSize, descriptors: NetLayout.transmit.0,
            available: NetLayout.transmit.1, used: NetLayout.transmit.2, eventIndex: eventIndex, memory: memory)
    else { preconditionFailure("cannot set up the net target") }
    // Recognisable guest bytes everywhere the buffers may be.
    let pattern = (0..<Int(NetLayout.buffersSize)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
    try? memory.write(pattern, at: NetLayout.buffers)
    let device = VirtioNetDevice(tap: tap, mac: [6, 0, 0xAC, 0x10, 0, 1])
    do {
        try device.activate(
            features: 0, queues: [receiveQueue, transmitQueue], memory: memory, interrupt: VirtioInterrupt { _ in })
    } catch {
        preconditionFailure("activation refused: \(error)")
    }
    var receiveAvailable: UInt16 = 0
    var transmitAvailable: UInt16 = 0
    var sent: [[UInt8]] = []  // frames from the host, header and all
    var lastMatched = -1
    var scratch = [UInt8](repeating: 0, count: 70_000)
    let lengths: [UInt32] = [0, 1, 11, 12, 13, 60, 72, 1514, 1526, 4096, 65_535, 65_547, 65_548]
    let frameLengths = [0, 5, 11, 12, 13, 72, 1526, 65_547, 65_548, 65_549]

    func setDescriptor(_ rings: (UInt64, UInt64, UInt64), size: UInt16, _ input: inout ByteReader) {
        let index = UInt64(input.byte()) % UInt64(size)
        let address = NetLayout.buffers + UInt64(input.uint32()) % NetLayout.buffersSize
        let pick = input.byte()
        let length = pick < 0xE0 ? lengths[Int(pick) % lengths.count] : input.uint32()
        let flags = UInt16(input.byte() & 3)
        let next = UInt16(input.byte())
        let at = rings.0 + 16 * index
        try? memory.write(address, at: at)
        try? memory.write(length, at: at + 8)
        try? memory.write(flags, at: at + 12)
        try? memory.write(next, at: at + 14)
    }
    func makeAvailable(_ rings: (UInt64, UInt64, UInt64), size: UInt16, index: inout UInt16, head: UInt16) {
        try? memory.write(head, at: rings.1 + 4 + 2 * UInt64(index % size))
        index &+= 1
        try? memory.write(index, at: rings.1 + 2)
    }
    /// A chain's buffers as the rules have it (no indirect descriptors: not negotiated), or
    /// nil when it is malformed.
    func walk(_ rings: (UInt64, UInt64, UInt64), size: UInt16, head: UInt32) -> [(UInt64, UInt32, Bool)]? {
        guard head < UInt32(size) else { return nil }
        var buffers: [(UInt64, UInt32, Bool)] = []
        var index = UInt64(head)
        var total: UInt64 = 0
        for _ in 0..<Int(size) {
            let at = rings.0 + 16 * index
            guard let address = try? memory.readUInt64(at: at), let length = try? memory.readUInt32(at: at + 8),
                let flags = try? memory.readUInt16(at: at + 12), let next = try? memory.readUInt16(at: at + 14)
            else { return nil }
            guard flags & 4 == 0, memory.contains(address, count: UInt64(length)) else { return nil }
            total += UInt64(length)
            guard total <= UInt64(UInt32.max) else { return nil }
            let writable = flags & 2 != 0
            if !writable, buffers.contains(where: { $0.2 }) { return nil }
            buffers.append((address, length, writable))
            guard flags & 1 != 0 else { return buffers }
            guard UInt64(next) < UInt64(size) else { return nil }
            index = UInt64(next)
        }
        return nil
    }
    func overlapping(_ buffers: [(UInt64, UInt32, Bool)]) -> Bool {
        let ranges = buffers.map { ($0.0, $0.0 + UInt64($0.1)) }.sorted { $0.0 < $1.0 }
        return zip(ranges, ranges.dropFirst()).contains { $0.1 > $1.0 }
    }
    func usedIndex(_ rings: (UInt64, UInt64, UInt64)) -> UInt16 { (try? memory.readUInt16(at: rings.2 + 2)) ?? 0 }
    func usedElement(_ rings: (UInt64, UInt64, UInt64), size: UInt16, _ slot: UInt16) -> (UInt32, UInt32) {
        let at = rings.2 + 4 + 8 * UInt64(slot % size)
        return ((try? memory.readUInt32(at: at)) ?? 0, (try? memory.readUInt32(at: at + 4)) ?? 0)
    }
    func hostReceives() -> [UInt8]? {
        guard case .done(let n) = peer.receive(into: &scratch) else { return nil }
        return Array(scratch[0..<n])
    }

    var steps = 0
    while !input.isAtEnd, steps < 400 {
        steps += 1
        switch input.byte() % 9 {
        case 0: setDescriptor(NetLayout.receive, size: receiveSize, &input)
        case 1: setDescriptor(NetLayout.transmit, size: transmitSize, &input)
        case 2: makeAvailable(NetLayout.receive, size: receiveSize, index: &receiveAvailable, head: UInt16(input.byte()))
        case 3: makeAvailable(NetLayout.transmit, size: transmitSize, index: &transmitAvailable, head: UInt16(input.byte()))
        case 4:
            let pick = input.byte()
            let length = pick < 0xE0 ? frameLengths[Int(pick) % frameLengths.count] : Int(input.uint16()) + Int(pick & 7) * 1000
            let number = UInt8(truncatingIfNeeded: sent.count)
            let frame = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ Int(number)) }
            if peer.send(frame, count: length) == .done(length) { sent.append(frame) }
        case 5:
            let before = usedIndex(NetLayout.receive)
            let requests = device.counters.requests
            device.backendReady(.readable)
            let after = usedIndex(NetLayout.receive)
            let completed = device.counters.requests - requests
            precondition(completed <= UInt64(VirtioNetDevice.framesPerWakeUp), "one wake-up completed \(completed) chains")
            precondition(UInt64(after &- before) == completed, "the receive used index moved by \(after &- before)")
            var slot = before
            var last: (UInt32, [(UInt64, UInt32, Bool)])?
            while slot != after {
                let (head, length) = usedElement(NetLayout.receive, size: receiveSize, slot)
                slot &+= 1
                guard length > 0 else { continue }
                guard let buffers = walk(NetLayout.receive, size: receiveSize, head: head) else {
                    preconditionFailure("a malformed receive chain got \(length) bytes")
                }
                precondition(!buffers.contains { !$0.2 }, "a receive chain with a readable buffer got bytes")
                precondition(UInt64(length) <= buffers.reduce(0) { $0 + UInt64($1.1) }, "used length past the chain")
                last = (length, buffers)
            }
            // The last frame delivered, unless its own buffers overlap (a later chain of the
            // same wake-up could not overwrite it): the clean header and one of the host's
            // frames, whole, later than the last one seen.
            if let (length, buffers) = last, !overlapping(buffers) {
                var got: [UInt8] = []
                for buffer in buffers where got.count < Int(length) {
                    let take = min(Int(buffer.1), Int(length) - got.count)
                    got += (try? memory.read(take, at: buffer.0)) ?? []
                }
                precondition(Array(got.prefix(12)) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "the receive header is not clean")
                let match = sent.indices.first { index in
                    index > lastMatched && sent[index].count == got.count
                        && sent[index].dropFirst(12).elementsEqual(got.dropFirst(12))
                }
                guard let match else { preconditionFailure("a delivered frame is none of the host's, in order") }
                lastMatched = match
            }
        case 6:
            let before = usedIndex(NetLayout.transmit)
            let requests = device.counters.requests
            device.notify(queue: VirtioNetDevice.transmitQueue)
            let after = usedIndex(NetLayout.transmit)
            let completed = device.counters.requests - requests
            precondition(completed <= UInt64(transmitSize), "one notification completed \(completed) chains")
            precondition(UInt64(after &- before) == completed, "the transmit used index moved by \(after &- before)")
            var slot = before
            while slot != after {
                let (head, length) = usedElement(NetLayout.transmit, size: transmitSize, slot)
                slot &+= 1
                precondition(length == 0, "a transmit chain completed with length \(length)")
                guard let buffers = walk(NetLayout.transmit, size: transmitSize, head: head),
                    !buffers.contains(where: { $0.2 })
                else { continue }
                let total = buffers.reduce(0) { $0 + Int($1.1) }
                guard total >= 12, total <= 12 + VirtioNetDevice.maximumFrame else { continue }
                var expected: [UInt8] = []
                for buffer in buffers { expected += (try? memory.read(Int(buffer.1), at: buffer.0)) ?? [] }
                for i in 0..<12 { expected[i] = 0 }
                guard let frame = hostReceives() else { preconditionFailure("a valid transmit chain sent nothing") }
                precondition(frame == expected, "a frame on the TAP is not its chain's bytes")
            }
            precondition(hostReceives() == nil, "the TAP got a frame no valid chain holds")
            if eventIndex, after == transmitAvailable {
                // Drained: the device asked to be notified for the next entry.
                let event = try? memory.readUInt16(at: NetLayout.transmit.2 + 4 + 8 * UInt64(transmitSize))
                precondition(event == transmitAvailable, "a drained transmit queue asked for no notification")
            }
        case 7:
            device.notify(queue: VirtioNetDevice.receiveQueue)
        default:
            let pick = input.byte()
            let address: UInt64 =
                pick & 3 == 0
                ? NetLayout.receive.1 + UInt64(input.byte()) % 512
                : pick & 3 == 1
                    ? NetLayout.transmit.1 + UInt64(input.byte()) % 512
                    : NetLayout.buffers + UInt64(input.uint32()) % (NetLayout.buffersSize - 8)
            try? memory.write(input.uint64(), at: address)
        }
    }
}
