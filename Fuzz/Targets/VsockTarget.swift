// The vsock device, driven by a hostile guest and by host programs, on a fake host side.
import FuzzDeviceTargets
import Synchronization
import VisorHost
import VisorMemory
import VisorVirtio

private enum VsockLayout {
    static let memorySize: UInt64 = 512 * 1024
    static let queueSize: UInt16 = 16
    static let rxDescriptors: UInt64 = 0x1000
    static let rxAvailable: UInt64 = 0x2000
    static let rxUsed: UInt64 = 0x3000
    static let txDescriptors: UInt64 = 0x4000
    static let txAvailable: UInt64 = 0x5000
    static let txUsed: UInt64 = 0x6000
    /// rx buffer i at rxBuffers + i * 0x2000; the tx packet at txBuffer.
    static let rxBuffers: UInt64 = 0x10000
    static let txBuffer: UInt64 = 0x40000
    static let cid: UInt64 = 3
}

/// Host sockets as byte queues, deterministic, with no descriptors.
private final class FuzzVsockHost: VsockHostSide {
    struct Socket {
        var input: [UInt8] = []
        var inputEnded = false
        var outputCount = 0
        var closed = false
        var readable = false
        var writable = false
        var sendLimit: Int?
    }
    struct State {
        var sockets: [Int32: Socket] = [:]
        var waiting: [Int32] = []
        var nextHandle: Int32 = 10
        var acceptFails = false
        /// New watches and changes fail (ending one never does).
        var watchesFail = false
        /// Work the device handed to `perform`, held back as an I/O thread would hold it.
        var deferred: [@Sendable () -> Void] = []
        /// The clock, moved by the input, and the deadline the device asked to be woken at.
        var now: UInt64 = 1_000_000_000
        var wake: UInt64?
    }
    let state = Mutex(State())

    func start(device: VirtioVsockDevice) {}
    func accept() -> SocketAccept {
        state.withLock { state in
            if state.acceptFails { return .failed }
            return state.waiting.isEmpty ? .none : .accepted(state.waiting.removeFirst())
        }
    }
    func watchListener(_ on: Bool) -> Bool { true }
    func connect(port: UInt32) -> Int32? {
        // Even ports have a listener.
        guard port % 2 == 0 else { return nil }
        return state.withLock { state in
            state.nextHandle += 1
            state.sockets[state.nextHandle] = Socket()
            return state.nextHandle
        }
    }
    func send(_ handle: Int32, _ bytes: ArraySlice<UInt8>) -> SocketTransfer {
        state.withLock { state in
            guard var socket = state.sockets[handle] else { preconditionFailure("a send on an unknown socket") }
            precondition(!socket.closed, "a send on a closed socket")
            let take = min(bytes.count, socket.sendLimit ?? bytes.count)
            guard take > 0 || bytes.isEmpty else { return .wouldBlock }
            socket.outputCount += take
            state.sockets[handle] = socket
            return .transferred(take)
        }
    }
    func receive(_ handle: Int32, into buffer: inout [UInt8], at offset: Int, count: Int, peek: Bool) -> SocketTransfer {
        state.withLock { state in
            guard var socket = state.sockets[handle] else { preconditionFailure("a receive on an unknown socket") }
            precondition(!socket.closed, "a receive on a closed socket")
            let take = min(count, buffer.count - offset, socket.input.count)
            if take == 0 { return socket.inputEnded ? .transferred(0) : .wouldBlock }
            buffer.replaceSubrange(offset..<(offset + take), with: socket.input[0..<take])
            if !peek { socket.input.removeFirst(take) }
            state.sockets[handle] = socket
            return .transferred(take)
        }
    }
    func shutdownOutput(_ handle: Int32) {}
    func close(_ handle: Int32) {
        state.withLock { state in
            precondition(state.sockets[handle]?.closed == false, "a socket closed twice")
            state.sockets[handle]?.closed = true
        }
    }
    func perform(_ work: @escaping @Sendable () -> Void) { state.withLock { $0.deferred.append(work) } }
    /// Runs the held-back work, in order, as the I/O thread would.
    func runDeferred() {
        let work = state.withLock { state in
            defer { state.deferred = [] }
            return state.deferred
        }
        work.forEach { $0() }
    }
    var now: UInt64 { state.withLock { $0.now } }
    func wake(at deadline: UInt64) { state.withLock { $0.wake = deadline } }
    /// Moves the clock on by `nanoseconds`; wakes the device when its deadline passed.
    func advance(by nanoseconds: UInt64, device: VirtioVsockDevice) {
        let due = state.withLock { state in
            state.now += nanoseconds
            guard let wake = state.wake, wake <= state.now else { return false }
            state.wake = nil
            return true
        }
        if due { device.deadlinePassed() }
    }
    func watch(_ handle: Int32, readable: Bool, writable: Bool) -> Bool {
        state.withLock { state in
            precondition(state.sockets[handle]?.closed == false, "a watch on a closed socket")
            if state.watchesFail, readable || writable { return false }
            state.sockets[handle]?.readable = readable
            state.sockets[handle]?.writable = writable
            return true
        }
    }
}

/// The vsock device with a fake host side (host ports with a listener: the even ones). Each
/// step is an op byte: 0 a host program connects and sends a `CONNECT` line (a good port,
/// a bad or unfinished line) and perhaps data after it; 1 the guest sends one packet (any
/// operation, ports from a small set, well-formed or with a wrong CID, type, length or
/// payload, in one or two buffers); 2 rx buffers made available (writable or not, of
/// lengths short of a header to 4 KiB) and a notification; 3 a host program sends bytes;
/// 4 a host program ends its input or its socket stops taking bytes (or takes them
/// again); 5 a watched host socket reports what it is watched for; 6 the guest consumes
/// bytes and sends CREDIT_UPDATE; 7 the listener reports, after a byte says whether
/// accepting fails, whether watches fail, whether the driver resets the device and sets it
/// up again on fresh rings, and whether the I/O thread runs the work the device handed the
/// host side (a reset's socket closes), which otherwise waits, and whether the clock moves
/// on (by nothing, 0.5, 1.999, 2 or 5 seconds), waking the device if its deadline passed.
///
/// The guest advertises a fixed buffer per connection (from its ports) and, as fwd_cnt,
/// the bytes it consumed. Checks: the payload delivered on a connection, less what the
/// guest consumed, never exceeds that buffer (the device honours the guest's credit);
/// every used rx length fits its buffer and is at least a header, unless 0, and tx
/// lengths are 0; a connection the guest resets is gone at once, and so is one the device
/// resets, unless the guest asked for it again since, and none outlives a device reset;
/// the fake host sees no use of a closed socket; at the end, once the held-back work has
/// run, every host socket the device took and did not close is a connection's or a
/// waiting line's (none leaks). Deadlines: while a line or an unanswered host connection
/// waits, the device has asked to be woken; once the clock moved 5 seconds past them, none
/// waits.
func fuzzVirtioVsock(_ data: [UInt8]) {
    typealias L = VsockLayout
    typealias Op = VsockHeader.Operation
    var input = ByteReader(data)
    let host = FuzzVsockHost()
    guard let memory = try? GuestMemory(size: L.memorySize),
        let rx = try? Virtqueue(
            size: L.queueSize, maximum: VirtioVsockDevice.queueSize, descriptors: L.rxDescriptors,
            available: L.rxAvailable, used: L.rxUsed, memory: memory),
        let tx = try? Virtqueue(
            size: L.queueSize, maximum: VirtioVsockDevice.queueSize, descriptors: L.txDescriptors,
            available: L.txAvailable, used: L.txUsed, memory: memory)
    else { preconditionFailure("cannot set up the vsock target") }
    let device = VirtioVsockDevice(guestCID: L.cid, host: host)
    do {
        try device.activate(features: 0, queues: [rx, tx, nil], memory: memory, interrupt: VirtioInterrupt { _ in })
    } catch {
        preconditionFailure("activation refused: \(error)")
    }

    struct Peer {
        var received: UInt64 = 0
        var consumed: UInt64 = 0
        /// The guest sent a REQUEST (or a RESPONSE) for it since it last saw the device's
        /// RESPONSE: a connection may exist that the device's earlier RST did not end.
        var requested = false
    }
    var peers: [VirtioVsockDevice.Key: Peer] = [:]
    let allocations: [UInt32] = [0, 1, 10, 100, 4096, 65536]
    func allocation(_ key: VirtioVsockDevice.Key) -> UInt32 { allocations[Int((key.hostPort ^ key.guestPort) % 6)] }

    // rx: descriptor i is buffer i, one descriptor per chain; which are with the device.
    var rxLengths = [UInt32](repeating: 0, count: Int(L.queueSize))
    var rxWritable = [Bool](repeating: false, count: Int(L.queueSize))
    var rxBusy = [Bool](repeating: false, count: Int(L.queueSize))
    var rxAvailableIndex: UInt16 = 0
    var rxSeen: UInt16 = 0
    var txAvailableIndex: UInt16 = 0
    var txSeen: UInt16 = 0

    func setDescriptor(_ table: UInt64, _ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        let at = table + 16 * UInt64(index)
        try? memory.write(address, at: at)
        try? memory.write(length, at: at + 8)
        try? memory.write(flags, at: at + 12)
        try? memory.write(next, at: at + 14)
    }

    /// Reads what the device completed since the last look and checks it.
    func collect() {
        let txUsed = (try? memory.readUInt16(at: L.txUsed + 2)) ?? 0
        while txSeen != txUsed {
            let length = (try? memory.readUInt32(at: L.txUsed + 4 + 8 * UInt64(txSeen % L.queueSize) + 4)) ?? 1
            precondition(length == 0, "a tx packet completed with length \(length)")
            txSeen &+= 1
        }
        let rxUsed = (try? memory.readUInt16(at: L.rxUsed + 2)) ?? 0
        while rxSeen != rxUsed {
            let element = L.rxUsed + 4 + 8 * UInt64(rxSeen % L.queueSize)
            rxSeen &+= 1
            let id = Int((try? memory.readUInt32(at: element)) ?? 0xFFFF)
            let length = (try? memory.readUInt32(at: element + 4)) ?? 0xFFFF_FFFF
            precondition(id < Int(L.queueSize) && rxBusy[id], "rx completed descriptor \(id), not the device's")
            rxBusy[id] = false
            precondition(length <= (rxWritable[id] ? rxLengths[id] : 0), "used length \(length) past the buffer")
            guard length > 0 else { continue }
            precondition(length >= UInt32(VsockHeader.size), "a packet shorter than its header")
            let address = L.rxBuffers + UInt64(id) * 0x2000
            guard let bytes = try? memory.read(Int(length), at: address), let header = VsockHeader(bytes) else {
                preconditionFailure("cannot read a delivered packet")
            }
            precondition(header.sourceCID == VsockHeader.hostCID && header.destinationCID == L.cid, "wrong CIDs")
            precondition(Int(header.length) == bytes.count - VsockHeader.size, "a header length that is not the payload's")
            let key = VirtioVsockDevice.Key(hostPort: header.sourcePort, guestPort: header.destinationPort)
            var peer = peers[key] ?? Peer()
            switch header.operation {
            case Op.request:
                peer = Peer(requested: peer.requested)
            case Op.response:
                peer.requested = false
            case Op.readWrite:
                peer.received += UInt64(header.length)
                precondition(
                    peer.received - peer.consumed <= UInt64(allocation(key)),
                    "\(peer.received - peer.consumed) bytes in flight with a \(allocation(key))-byte buffer")
            case Op.reset:
                // A RST queued before a host connection took the same ports may come after
                // it; the guest answers that connection's REQUEST on its own.
                if !peer.requested, !device.isConnecting(key) {
                    precondition(!device.connectionKeys.contains(key), "a connection outlived the device's RST")
                }
            default:
                break
            }
            peers[key] = peer
        }
    }

    let hostPorts: [UInt32] = [VirtioVsockDevice.firstHostPort, VirtioVsockDevice.firstHostPort + 1, 52, 53]
    let lengths: [UInt32] = [0, 10, 44, 45, 100, 4096 + 44, 0x2000]
    var steps = 0
    while !input.isAtEnd, steps < 400 {
        steps += 1
        switch input.byte() % 8 {
        case 0:
            let lines = ["CONNECT 1\n", "CONNECT 2\n", "CONNECT 4294967295\n", "CONNECT x\n", "CONNECT 12", "\n"]
            var bytes = Array(lines[Int(input.byte()) % lines.count].utf8)
            bytes += [UInt8](repeating: 0x55, count: Int(input.byte() % 8))
            let handle = host.state.withLock { state in
                state.nextHandle += 1
                state.sockets[state.nextHandle] = FuzzVsockHost.Socket(input: bytes)
                state.waiting.append(state.nextHandle)
                return state.nextHandle
            }
            device.listenerReady()
            if host.state.withLock({ $0.sockets[handle]?.readable == true && $0.sockets[handle]?.closed == false }) {
                device.hostSocketReady(handle, events: .readable)
            }
        case 1:
            let pick = input.byte()
            let operation = pick < 0xF0 ? UInt16(1 + pick % 7) : UInt16(input.byte())
            let key = VirtioVsockDevice.Key(
                hostPort: hostPorts[Int(input.byte()) % hostPorts.count], guestPort: UInt32(input.byte() % 4))
            let payload = [UInt8](repeating: 0xA5, count: Int([0, 1, 100, 5000][Int(input.byte()) % 4]))
            var header = VsockHeader(
                sourceCID: L.cid, destinationCID: VsockHeader.hostCID, sourcePort: key.guestPort,
                destinationPort: key.hostPort, length: UInt32(payload.count), operation: operation,
                flags: UInt32(input.byte() % 4), bufferAllocation: allocation(key),
                forwardCount: UInt32(truncatingIfNeeded: peers[key]?.consumed ?? 0))
            let flaw = input.byte()
            switch flaw % 8 {
            case 1: header.sourceCID = 4
            case 2: header.destinationCID = L.cid
            case 3: header.type = 2
            case 4: header.length &+= 1
            default: break
            }
            var packet = header.bytes + payload
            if flaw % 8 == 5 { packet = Array(packet.prefix(30)) }
            try? memory.write(packet, at: L.txBuffer)
            if flaw & 0x10 != 0, packet.count > VsockHeader.size {
                setDescriptor(L.txDescriptors, 0, address: L.txBuffer, length: 44, flags: 1, next: 1)
                setDescriptor(
                    L.txDescriptors, 1, address: L.txBuffer + 44, length: UInt32(packet.count - 44), flags: 0)
            } else {
                setDescriptor(L.txDescriptors, 0, address: L.txBuffer, length: UInt32(packet.count), flags: 0)
            }
            try? memory.write(UInt16(0), at: L.txAvailable + 4 + 2 * UInt64(txAvailableIndex % L.queueSize))
            txAvailableIndex &+= 1
            try? memory.write(txAvailableIndex, at: L.txAvailable + 2)
            if header.sourceCID == L.cid, header.destinationCID == VsockHeader.hostCID, operation == Op.request {
                peers[key] = Peer(requested: true)
            }
            if operation == Op.response { peers[key, default: Peer()].requested = true }
            device.notify(queue: 1)
            collect()
            let wellFormed =
                flaw % 8 == 0 || flaw % 8 > 5
            if wellFormed, operation == Op.reset {
                precondition(!device.connectionKeys.contains(key), "a connection outlived the guest's RST")
            }
        case 2:
            let count = Int(input.byte() % 8)
            for _ in 0..<count {
                guard let slot = (0..<Int(L.queueSize)).first(where: { !rxBusy[$0] }) else { break }
                let shape = input.byte()
                rxLengths[slot] = lengths[Int(shape) % lengths.count]
                rxWritable[slot] = shape & 0x80 == 0
                rxBusy[slot] = true
                setDescriptor(
                    L.rxDescriptors, UInt16(slot), address: L.rxBuffers + UInt64(slot) * 0x2000, length: rxLengths[slot],
                    flags: rxWritable[slot] ? 2 : 0)
                try? memory.write(UInt16(slot), at: L.rxAvailable + 4 + 2 * UInt64(rxAvailableIndex % L.queueSize))
                rxAvailableIndex &+= 1
                try? memory.write(rxAvailableIndex, at: L.rxAvailable + 2)
            }
            device.notify(queue: 0)
            collect()
        case 3, 4, 5:
            let op = input.byte()
            let handles = host.state.withLock { state in state.sockets.filter { !$0.value.closed }.keys.sorted() }
            guard !handles.isEmpty else { continue }
            let handle = handles[Int(input.byte()) % handles.count]
            let count = Int(input.uint16() % 9000)
            host.state.withLock { state in
                switch op % 6 {
                case 0, 1, 2: state.sockets[handle]?.input += [UInt8](repeating: 0x3C, count: count)
                case 3: state.sockets[handle]?.inputEnded = true
                case 4: state.sockets[handle]?.sendLimit = count % 3 == 0 ? nil : count % 100
                default: break
                }
            }
            guard let socket = host.state.withLock({ $0.sockets[handle] }) else { continue }
            var events: IOEvents = []
            if socket.readable { events.insert(.readable) }
            if socket.writable { events.insert(.writable) }
            if !events.isEmpty { device.hostSocketReady(handle, events: events) }
            collect()
        case 6:
            let known = peers.keys.sorted { ($0.hostPort, $0.guestPort) < ($1.hostPort, $1.guestPort) }
            guard !known.isEmpty else { continue }
            let key = known[Int(input.byte()) % known.count]
            var peer = peers[key] ?? Peer()
            peer.consumed = min(peer.received, peer.consumed + UInt64(input.uint16()))
            peers[key] = peer
            let header = VsockHeader(
                sourceCID: L.cid, destinationCID: VsockHeader.hostCID, sourcePort: key.guestPort,
                destinationPort: key.hostPort, operation: Op.creditUpdate, bufferAllocation: allocation(key),
                forwardCount: UInt32(truncatingIfNeeded: peer.consumed))
            try? memory.write(header.bytes, at: L.txBuffer)
            setDescriptor(L.txDescriptors, 0, address: L.txBuffer, length: 44, flags: 0)
            try? memory.write(UInt16(0), at: L.txAvailable + 4 + 2 * UInt64(txAvailableIndex % L.queueSize))
            txAvailableIndex &+= 1
            try? memory.write(txAvailableIndex, at: L.txAvailable + 2)
            device.notify(queue: 1)
            collect()
        default:
            let choice = input.byte()
            host.state.withLock {
                $0.acceptFails = choice & 1 != 0
                $0.watchesFail = choice & 2 != 0
            }
            if choice & 4 != 0 {
                // The driver resets the device and sets it up again on fresh rings; the
                // host side's work (closing the sockets) waits until asked for below.
                device.reset()
                precondition(device.connectionKeys.isEmpty, "a connection outlived the device's reset")
                try? memory.write(
                    [UInt8](repeating: 0, count: Int(L.txUsed) + 0x1000 - Int(L.rxDescriptors)), at: L.rxDescriptors)
                guard
                    let rx = try? Virtqueue(
                        size: L.queueSize, maximum: VirtioVsockDevice.queueSize, descriptors: L.rxDescriptors,
                        available: L.rxAvailable, used: L.rxUsed, memory: memory),
                    let tx = try? Virtqueue(
                        size: L.queueSize, maximum: VirtioVsockDevice.queueSize, descriptors: L.txDescriptors,
                        available: L.txAvailable, used: L.txUsed, memory: memory),
                    (try? device.activate(
                        features: 0, queues: [rx, tx, nil], memory: memory, interrupt: VirtioInterrupt { _ in })) != nil
                else { preconditionFailure("cannot set the vsock device up again") }
                peers = [:]
                rxBusy = [Bool](repeating: false, count: Int(L.queueSize))
                rxAvailableIndex = 0
                rxSeen = 0
                txAvailableIndex = 0
                txSeen = 0
            }
            if choice & 8 != 0 { host.runDeferred() }
            device.listenerReady()
            if choice & 16 != 0 {
                let steps: [UInt64] = [0, 500_000_000, 1_999_999_999, 2_000_000_000, 5_000_000_000]
                let step = steps[Int(input.byte()) % steps.count]
                host.advance(by: step, device: device)
                if step >= 5_000_000_000 {
                    precondition(device.waitingLineCount == 0, "a CONNECT line outlived its deadline")
                    precondition(
                        !device.connectionKeys.contains { device.isConnecting($0) },
                        "a host connection's REQUEST outlived its deadline")
                }
                collect()
            }
        }
        let waiting = device.waitingLineCount > 0 || device.connectionKeys.contains { device.isConnecting($0) }
        precondition(!waiting || host.state.withLock { $0.wake != nil }, "something waits with no wake-up asked for")
    }
    // Every socket the device took (accepted or connected) and still holds is a
    // connection's or a waiting line's; once its work has run, it holds no other open.
    host.runDeferred()
    let open = host.state.withLock { state in
        state.sockets.filter { !$0.value.closed && !state.waiting.contains($0.key) }.count
    }
    precondition(
        open == device.connectionKeys.count + device.waitingLineCount,
        "\(open) host sockets open for \(device.connectionKeys.count) connections and \(device.waitingLineCount) lines")
}
