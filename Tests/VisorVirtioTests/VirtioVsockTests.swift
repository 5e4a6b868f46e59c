import Foundation
import Synchronization
import Testing
import VisorHost
import VisorKVM
import VisorMemory
import VisorVirtio

/// A host side with no sockets: connections are byte queues the test reads and fills.
final class FakeVsockHost: VsockHostSide {
    struct Socket {
        /// What the host program sent, not yet received by the device.
        var input: [UInt8] = []
        var inputEnded = false
        /// What the device sent to the host program.
        var output: [UInt8] = []
        var outputShut = false
        var closed = false
        var readable = false
        var writable = false
        /// Bytes one send may take (nil: all); 0 makes sends block.
        var sendLimit: Int?
    }
    struct State {
        var sockets: [Int32: Socket] = [:]
        var waiting: [Int32] = []
        /// Host ports with a listener (`uds_path_P`).
        var listening: Set<UInt32> = []
        var nextHandle: Int32 = 100
        var listenerWatched = false
        /// Accepting fails (out of descriptors, say).
        var acceptFails = false
        /// Watches of these sockets, and the listener's, fail (epoll refusing them).
        var watchFails: Set<Int32> = []
        var listenerWatchFails = false
        var deferWork = false
        var deferred: [@Sendable () -> Void] = []
        /// The threads sockets were closed on.
        var closedOn: [pthread_t] = []
        /// The clock, moved by `advance(by:)`, and the wake-up the device asked for.
        var now: UInt64 = 1_000_000_000
        var wake: UInt64?
    }
    let state = Mutex(State())

    func start(device: VirtioVsockDevice) { state.withLock { $0.listenerWatched = true } }
    func accept() -> SocketAccept {
        state.withLock { state in
            if state.acceptFails { return .failed }
            return state.waiting.isEmpty ? .none : .accepted(state.waiting.removeFirst())
        }
    }
    func watchListener(_ on: Bool) -> Bool {
        state.withLock { state in
            if on, state.listenerWatchFails { return false }
            state.listenerWatched = on
            return true
        }
    }
    func connect(port: UInt32) -> Int32? {
        state.withLock { state in
            guard state.listening.contains(port) else { return nil }
            state.nextHandle += 1
            state.sockets[state.nextHandle] = Socket()
            return state.nextHandle
        }
    }
    func send(_ handle: Int32, _ bytes: ArraySlice<UInt8>) -> SocketTransfer {
        state.withLock { state in
            guard var socket = state.sockets[handle], !socket.closed else { return .failed }
            let take = min(bytes.count, socket.sendLimit ?? bytes.count)
            guard take > 0 || bytes.isEmpty else { return .wouldBlock }
            socket.output += bytes.prefix(take)
            state.sockets[handle] = socket
            return .transferred(take)
        }
    }
    func receive(_ handle: Int32, into buffer: inout [UInt8], at offset: Int, count: Int, peek: Bool) -> SocketTransfer {
        state.withLock { state in
            guard var socket = state.sockets[handle], !socket.closed else { return .failed }
            let take = min(count, buffer.count - offset, socket.input.count)
            if take == 0 { return socket.inputEnded ? .transferred(0) : .wouldBlock }
            buffer.replaceSubrange(offset..<(offset + take), with: socket.input[0..<take])
            if !peek { socket.input.removeFirst(take) }
            state.sockets[handle] = socket
            return .transferred(take)
        }
    }
    func shutdownOutput(_ handle: Int32) { state.withLock { $0.sockets[handle]?.outputShut = true } }
    func close(_ handle: Int32) {
        state.withLock { state in
            state.sockets[handle]?.closed = true
            state.closedOn.append(pthread_self())
        }
    }
    func watch(_ handle: Int32, readable: Bool, writable: Bool) -> Bool {
        state.withLock { state in
            if state.watchFails.contains(handle) { return false }
            state.sockets[handle]?.readable = readable
            state.sockets[handle]?.writable = writable
            return true
        }
    }

    /// Where the work runs: at once, unless `deferWork` holds it for `runDeferredWork`.
    func perform(_ work: @escaping @Sendable () -> Void) {
        let run = state.withLock { state in
            guard state.deferWork else { return true }
            state.deferred.append(work)
            return false
        }
        if run { work() }
    }
    /// Runs the work `perform` held back, in order.
    func runDeferredWork() {
        let work = state.withLock { state in
            defer { state.deferred = [] }
            return state.deferred
        }
        work.forEach { $0() }
    }

    var now: UInt64 { state.withLock { $0.now } }
    func wake(at deadline: UInt64) { state.withLock { $0.wake = deadline } }
    /// Moves the clock on and, if the asked-for wake-up is due, wakes `device` as the
    /// I/O thread's timer would.
    func advance(by nanoseconds: UInt64, waking device: VirtioVsockDevice) {
        let due = state.withLock { state in
            state.now += nanoseconds
            guard let wake = state.wake, wake <= state.now else { return false }
            state.wake = nil
            return true
        }
        if due { device.deadlinePassed() }
    }
    var wakeAt: UInt64? { state.withLock { $0.wake } }

    func socket(_ handle: Int32) -> Socket? { state.withLock { $0.sockets[handle] } }
    /// A host program connects and sends `input`; returns its handle.
    func hostConnects(sending input: [UInt8]) -> Int32 {
        state.withLock { state in
            state.nextHandle += 1
            state.sockets[state.nextHandle] = Socket(input: input)
            state.waiting.append(state.nextHandle)
            return state.nextHandle
        }
    }
    func hostSends(_ handle: Int32, _ bytes: [UInt8]) { state.withLock { $0.sockets[handle]?.input += bytes } }
    func hostEnds(_ handle: Int32) { state.withLock { $0.sockets[handle]?.inputEnded = true } }
    func setSendLimit(_ handle: Int32, _ limit: Int?) { state.withLock { $0.sockets[handle]?.sendLimit = limit } }
    /// The handles the guest connected to (not accepted ones).
    var lastHandle: Int32 { state.withLock { $0.nextHandle } }
}

/// The vsock device with a fake host side and a fake driver for its rx and tx queues.
final class VsockHarness {
    static let guestCID: UInt64 = 3
    let memory: GuestMemory
    var rx: FakeDriver
    var tx: FakeDriver
    let host = FakeVsockHost()
    let device: VirtioVsockDevice
    /// rx buffers: 8 of `rxBufferSize` bytes from 0x40000; tx buffers from 0x80000.
    static let rxBuffers: UInt64 = 0x40_000
    static let txBuffers: UInt64 = 0x80_000
    var rxBufferSize: UInt32 = 44 + 4096
    private var rxSeen: UInt16 = 0
    private var txSlot: UInt16 = 0

    /// With `side`, the device's host side is that one instead of `host`.
    init(side: (any VsockHostSide)? = nil) throws {
        memory = try FakeDriver.memory()
        rx = FakeDriver(memory: memory, size: 8, descriptors: 0x1000, available: 0x2000, used: 0x3000)
        tx = FakeDriver(memory: memory, size: 8, descriptors: 0x4000, available: 0x5000, used: 0x6000)
        device = VirtioVsockDevice(guestCID: Self.guestCID, host: side ?? host)
        try device.activate(
            features: 0, queues: [try rx.queue(), try tx.queue(), nil], memory: memory, interrupt: VirtioInterrupt { _ in })
    }

    /// The driver sets the device up again after a reset: fresh rings at the same places.
    func reactivate() throws {
        try memory.write([UInt8](repeating: 0, count: 0x6000), at: 0x1000)
        rx = FakeDriver(memory: memory, size: 8, descriptors: 0x1000, available: 0x2000, used: 0x3000)
        tx = FakeDriver(memory: memory, size: 8, descriptors: 0x4000, available: 0x5000, used: 0x6000)
        rxSeen = 0
        txSlot = 0
        try device.activate(
            features: 0, queues: [try rx.queue(), try tx.queue(), nil], memory: memory, interrupt: VirtioInterrupt { _ in })
    }

    /// Makes `count` rx buffers available (without a notification).
    func offerReceiveBuffers(_ count: Int = 1) throws {
        for _ in 0..<count {
            let slot = rx.availableIndex % rx.size
            try rx.setDescriptor(
                UInt64(slot), address: Self.rxBuffers + UInt64(slot) * 0x4000, length: rxBufferSize, flags: Virtqueue.flagWrite)
            try rx.makeAvailable(slot)
        }
    }

    /// The used lengths of the rx buffers completed since the last look, without reading
    /// them as packets (for buffers completed empty).
    func usedLengths() -> [UInt32] {
        var lengths: [UInt32] = []
        while rxSeen != rx.usedIndex {
            lengths.append(rx.usedElement(rxSeen).length)
            rxSeen &+= 1
        }
        return lengths
    }

    /// The packets the device delivered since the last call: header and payload, and
    /// checks that each used length fits its buffer.
    func received() throws -> [(VsockHeader, [UInt8])] {
        var packets: [(VsockHeader, [UInt8])] = []
        while rxSeen != rx.usedIndex {
            let element = rx.usedElement(rxSeen)
            rxSeen &+= 1
            #expect(element.length <= rxBufferSize)
            #expect(element.length >= 44)
            let bytes = try memory.read(Int(element.length), at: Self.rxBuffers + UInt64(element.id) * 0x4000)
            let header = try #require(VsockHeader(bytes))
            #expect(Int(header.length) == bytes.count - 44)
            packets.append((header, Array(bytes[44...])))
        }
        return packets
    }

    /// The guest sends one packet (header and payload in one buffer, or `split` in two).
    func send(_ header: VsockHeader, _ payload: [UInt8] = [], split: Bool = false) throws {
        let slot = txSlot % tx.size
        txSlot &+= 2
        let address = Self.txBuffers + UInt64(slot) * 0x8000
        try memory.write(header.bytes + payload, at: address)
        if split {
            try tx.setDescriptor(UInt64(slot), address: address, length: 44, flags: Virtqueue.flagNext, next: slot + 1)
            try tx.setDescriptor(UInt64(slot + 1), address: address + 44, length: UInt32(payload.count))
        } else {
            try tx.setDescriptor(UInt64(slot), address: address, length: UInt32(44 + payload.count))
        }
        try tx.makeAvailable(slot)
        device.notify(queue: 1)
    }

    /// A packet from the guest's port `guestPort` to host port `hostPort`.
    func packet(
        _ operation: UInt16, guestPort: UInt32 = 5000, hostPort: UInt32, length: Int = 0, flags: UInt32 = 0,
        allocation: UInt32 = 64 * 1024, forwarded: UInt32 = 0
    ) -> VsockHeader {
        VsockHeader(
            sourceCID: Self.guestCID, destinationCID: 2, sourcePort: guestPort, destinationPort: hostPort,
            length: UInt32(length), operation: operation, flags: flags, bufferAllocation: allocation,
            forwardCount: forwarded)
    }

    /// A host program connects with `line`: accepted and its line read.
    func hostConnects(_ line: String) -> Int32 {
        let handle = host.hostConnects(sending: Array(line.utf8))
        device.listenerReady()
        device.hostSocketReady(handle, events: .readable)
        return handle
    }
}

typealias Op = VsockHeader.Operation

@Suite("virtio vsock")
struct VirtioVsockTests {
    @Test("the configuration space holds the guest's CID, little-endian")
    func configuration() throws {
        let device = VirtioVsockDevice(guestCID: 0x1_2345_6789, host: FakeVsockHost())
        #expect(device.deviceType == 19)
        #expect(device.queueMaximumSizes.count == 3)
        #expect(device.readConfiguration(offset: 0, width: 8) == 0x1_2345_6789)
        #expect(device.readConfiguration(offset: 4, width: 4) == 1)
        #expect(device.readConfiguration(offset: 8, width: 4) == 0)
    }

    @Test("CONNECT lines: a decimal port of at most 32 bits, and a newline")
    func connectLines() {
        func parse(_ s: String) -> UInt32? { VirtioVsockDevice.parseConnect(Array(s.utf8)) }
        #expect(parse("CONNECT 1234\n") == 1234)
        #expect(parse("CONNECT 4294967295\n") == UInt32.max)
        #expect(parse("CONNECT 4294967296\n") == nil)
        #expect(parse("CONNECT \n") == nil)
        #expect(parse("CONNECT 12a\n") == nil)
        #expect(parse("CONNECT -1\n") == nil)
        #expect(parse("connect 1\n") == nil)
        #expect(parse("CONNECT 1") == nil)
        #expect(parse("CONNECT 00000000001\n") == nil)
    }

    @Test("a host connection: CONNECT, REQUEST, RESPONSE, OK, then bytes both ways")
    func hostInitiated() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = h.hostConnects("CONNECT 1234\nhello")
        let request = try h.received()
        try #require(request.count == 1)
        let (header, _) = request[0]
        #expect(header.operation == Op.request)
        #expect(header.sourceCID == 2 && header.destinationCID == VsockHarness.guestCID)
        #expect(header.destinationPort == 1234)
        #expect(header.sourcePort >= VirtioVsockDevice.firstHostPort)
        #expect(header.bufferAllocation == VirtioVsockDevice.bufferSize)
        // Nothing is read from the host program before the guest answers.
        #expect(h.host.socket(handle)?.readable == false)
        let hostPort = header.sourcePort
        try h.send(h.packet(Op.response, guestPort: 1234, hostPort: hostPort))
        #expect(h.host.socket(handle)?.output == Array("OK \(hostPort)\n".utf8))
        // The bytes after the line go to the guest.
        #expect(h.host.socket(handle)?.readable == true)
        h.device.hostSocketReady(handle, events: .readable)
        let data = try h.received()
        try #require(data.count == 1)
        #expect(data[0].0.operation == Op.readWrite)
        #expect(data[0].1 == Array("hello".utf8))
        // And the guest's bytes to the host program.
        try h.send(h.packet(Op.readWrite, guestPort: 1234, hostPort: hostPort, length: 3), [1, 2, 3])
        #expect(h.host.socket(handle)?.output == Array("OK \(hostPort)\n".utf8) + [1, 2, 3])
        #expect(h.device.connectionKeys.count == 1)
    }

    @Test("a RST answering the REQUEST closes the host connection, with no OK line")
    func hostInitiatedRefused() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(2)
        let handle = h.hostConnects("CONNECT 1234\n")
        let hostPort = try #require(try h.received().first?.0.sourcePort)
        try h.send(h.packet(Op.reset, guestPort: 1234, hostPort: hostPort))
        #expect(h.host.socket(handle)?.closed == true)
        #expect(h.host.socket(handle)?.output == [])
        #expect(h.device.connectionKeys.isEmpty)
        // No RST answers a RST.
        #expect(try h.received().isEmpty)
    }

    @Test("a host program that never finishes its CONNECT line is closed after the line timeout")
    func lineTimeout() throws {
        let h = try VsockHarness()
        let start = h.host.now
        let silent = h.hostConnects("")
        let partial = h.hostConnects("CONNECT 12")
        #expect(h.device.waitingLineCount == 2)
        #expect(h.host.wakeAt == start + VirtioVsockDevice.lineTimeout)
        // A line that arrives in time is served as usual; the others wait on.
        h.host.advance(by: VirtioVsockDevice.lineTimeout - 1, waking: h.device)
        #expect(h.device.waitingLineCount == 2)
        #expect(h.host.socket(silent)?.closed == false)
        h.host.advance(by: 1, waking: h.device)
        #expect(h.host.socket(silent)?.closed == true)
        #expect(h.host.socket(partial)?.closed == true)
        #expect(h.device.waitingLineCount == 0)
        #expect(h.device.timeoutCount == 2)
        // Nothing left to wait for: no wake-up asked.
        #expect(h.host.wakeAt == nil)
    }

    @Test("a REQUEST the guest never answers ends after the request timeout: the host side closes, the guest gets a RST")
    func requestTimeout() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let first = h.hostConnects("CONNECT 1234\n")
        h.host.advance(by: VirtioVsockDevice.requestTimeout / 2, waking: h.device)
        let second = h.hostConnects("CONNECT 1235\n")
        let requests = try h.received()
        try #require(requests.count == 2)
        #expect(requests.allSatisfy { $0.0.operation == Op.request })
        // The guest answers the second one only.
        try h.send(h.packet(Op.response, guestPort: 1235, hostPort: requests[1].0.sourcePort))
        h.host.advance(by: VirtioVsockDevice.requestTimeout / 2, waking: h.device)
        #expect(h.host.socket(first)?.closed == true)
        #expect(h.host.socket(first)?.output == [])
        let reset = try h.received()
        try #require(reset.count == 1)
        #expect(reset[0].0.operation == Op.reset)
        #expect(reset[0].0.sourcePort == requests[0].0.sourcePort && reset[0].0.destinationPort == 1234)
        // The answered connection lives on, past any deadline.
        h.host.advance(by: 10 * VirtioVsockDevice.requestTimeout, waking: h.device)
        #expect(h.host.socket(second)?.closed == false)
        #expect(h.device.connectionKeys.count == 1)
        #expect(h.device.timeoutCount == 1)
        // A guest answer that comes after the RST names no connection: it gets a RST too.
        try h.send(h.packet(Op.response, guestPort: 1234, hostPort: requests[0].0.sourcePort))
        #expect(try h.received().map(\.0.operation) == [Op.reset])
    }

    @Test("bad CONNECT lines close the connection; a partial line waits, and a long one is cut")
    func badLines() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(2)
        for line in ["CONNECT x\n", "HELLO\n", "CONNECT 99999999999\n"] {
            let handle = h.hostConnects(line)
            #expect(h.host.socket(handle)?.closed == true, "\(line)")
        }
        let partial = h.hostConnects("CONNECT 12")
        #expect(h.host.socket(partial)?.closed == false)
        #expect(h.device.waitingLineCount == 1)
        h.host.hostSends(partial, Array("34\n".utf8))
        h.device.hostSocketReady(partial, events: .readable)
        #expect(try h.received().first?.0.destinationPort == 1234)
        let long = h.hostConnects(String(repeating: "A", count: 40))
        #expect(h.host.socket(long)?.closed == true)
        let ended = h.hostConnects("CONN")
        h.host.hostEnds(ended)
        h.device.hostSocketReady(ended, events: .readable)
        #expect(h.host.socket(ended)?.closed == true)
    }

    @Test("a guest connection to a host port with a listener: RESPONSE, then a relay")
    func guestInitiated() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        h.host.state.withLock { _ = $0.listening.insert(52) }
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52))
        let response = try h.received()
        try #require(response.count == 1)
        #expect(response[0].0.operation == Op.response)
        #expect(response[0].0.sourcePort == 52 && response[0].0.destinationPort == 7000)
        let handle = h.host.lastHandle
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 4), [9, 8, 7, 6], split: true)
        #expect(h.host.socket(handle)?.output == [9, 8, 7, 6])
        h.host.hostSends(handle, [1, 1])
        h.device.hostSocketReady(handle, events: .readable)
        let data = try h.received()
        #expect(data.map(\.1) == [[1, 1]])
    }

    @Test("a guest connection to a host port nobody listens on gets a RST")
    func guestInitiatedNoListener() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(2)
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 53))
        let reply = try h.received()
        try #require(reply.count == 1)
        #expect(reply[0].0.operation == Op.reset)
        #expect(reply[0].0.sourcePort == 53 && reply[0].0.destinationPort == 7000)
        #expect(h.device.connectionKeys.isEmpty)
    }

    /// An established guest connection to host port 52 from guest port 7000 whose guest
    /// advertises `allocation` bytes; returns its handle.
    func established(_ h: VsockHarness, allocation: UInt32) throws -> Int32 {
        h.host.state.withLock { _ = $0.listening.insert(52) }
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52, allocation: allocation))
        _ = try h.received()
        return h.host.lastHandle
    }

    @Test("the guest never gets more than its credit, and more once it reports progress")
    func creditToGuest() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(1)
        let handle = try established(h, allocation: 100)
        h.host.hostSends(handle, [UInt8](repeating: 0xAB, count: 1000))
        try h.offerReceiveBuffers(4)
        h.device.hostSocketReady(handle, events: .readable)
        h.device.notify(queue: 0)
        var packets = try h.received()
        #expect(packets.filter { $0.0.operation == Op.readWrite }.reduce(0) { $0 + $1.1.count } == 100)
        // Out of credit: the device stops reading and asks for an update.
        #expect(h.host.socket(handle)?.readable == false)
        #expect(packets.contains { $0.0.operation == Op.creditRequest })
        // The guest took 60 bytes: 60 more may come.
        try h.send(h.packet(Op.creditUpdate, guestPort: 7000, hostPort: 52, allocation: 100, forwarded: 60))
        #expect(h.host.socket(handle)?.readable == true)
        h.device.hostSocketReady(handle, events: .readable)
        packets = try h.received()
        #expect(packets.filter { $0.0.operation == Op.readWrite }.reduce(0) { $0 + $1.1.count } == 60)
        // A guest claiming to have taken more than was sent has no credit at all.
        try h.send(h.packet(Op.creditUpdate, guestPort: 7000, hostPort: 52, allocation: 100, forwarded: 500))
        h.device.hostSocketReady(handle, events: .readable)
        #expect(try h.received().allSatisfy { $0.0.operation != Op.readWrite })
    }

    @Test("the guest may not send past the device's buffer: RST, and the connection ends")
    func creditFromGuest() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = try established(h, allocation: 4096)
        h.host.setSendLimit(handle, 0)
        let chunk = [UInt8](repeating: 1, count: 32 * 1024)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: chunk.count), chunk)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: chunk.count), chunk)
        #expect(h.device.connectionKeys.count == 1)
        #expect(h.host.socket(handle)?.writable == true)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 1), [1])
        #expect(h.device.connectionKeys.isEmpty)
        #expect(h.host.socket(handle)?.closed == true)
        #expect(try h.received().contains { $0.0.operation == Op.reset })
    }

    @Test("bytes the host socket cannot take wait, and credit flows back as they drain")
    func drainAndCreditUpdate() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = try established(h, allocation: 4096)
        h.host.setSendLimit(handle, 0)
        let chunk = [UInt8](repeating: 2, count: 40 * 1024)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: chunk.count), chunk)
        #expect(h.host.socket(handle)?.output == [])
        h.host.setSendLimit(handle, nil)
        h.device.hostSocketReady(handle, events: .writable)
        #expect(h.host.socket(handle)?.output.count == chunk.count)
        #expect(h.host.socket(handle)?.writable == false)
        let update = try h.received().first { $0.0.operation == Op.creditUpdate }
        #expect(update?.0.forwardCount == UInt32(chunk.count))
    }

    @Test("SHUTDOWN: send-done shuts the host's input after the bytes; both ways ends with a RST")
    func shutdown() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = try established(h, allocation: 4096)
        try h.send(h.packet(Op.shutdown, guestPort: 7000, hostPort: 52, flags: VsockHeader.ShutdownFlag.send))
        #expect(h.host.socket(handle)?.outputShut == true)
        #expect(h.device.connectionKeys.count == 1)
        // More data after SEND was shut down is a protocol error.
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 1), [1])
        #expect(h.device.connectionKeys.isEmpty)

        let second = try established(h, allocation: 4096)
        _ = try h.received()
        let both = VsockHeader.ShutdownFlag.send | VsockHeader.ShutdownFlag.receive
        try h.send(h.packet(Op.shutdown, guestPort: 7000, hostPort: 52, flags: both))
        #expect(h.host.socket(second)?.closed == true)
        #expect(try h.received().contains { $0.0.operation == Op.reset })
        #expect(h.device.connectionKeys.isEmpty)
    }

    @Test("the host program's end of input reaches the guest as SHUTDOWN with SEND alone; the guest may still send")
    func hostEnds() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = try established(h, allocation: 4096)
        h.host.hostEnds(handle)
        h.device.hostSocketReady(handle, events: .readable)
        let packets = try h.received()
        #expect(packets.map(\.0.operation) == [Op.shutdown])
        // The host will send no more; it has not said it will receive no more.
        #expect(packets.first?.0.flags == VsockHeader.ShutdownFlag.send)
        #expect(h.host.socket(handle)?.readable == false)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 5), Array("after".utf8))
        #expect(h.host.socket(handle)?.output == Array("after".utf8))
        #expect(h.device.connectionKeys.count == 1)
        try h.send(h.packet(Op.reset, guestPort: 7000, hostPort: 52))
        #expect(h.device.connectionKeys.isEmpty)
        #expect(h.host.socket(handle)?.closed == true)
    }

    @Test("malformed packets: a RST where they name a connection, dropped where they do not")
    func malformed() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(8)
        _ = try established(h, allocation: 4096)
        // Wrong CIDs: dropped, no answer.
        var header = h.packet(Op.readWrite, guestPort: 7000, hostPort: 52)
        header.sourceCID = 9
        try h.send(header)
        header = h.packet(Op.readWrite, guestPort: 7000, hostPort: 52)
        header.destinationCID = 3
        try h.send(header)
        #expect(try h.received().isEmpty)
        #expect(h.device.connectionKeys.count == 1)
        #expect(h.device.counters.malformed == 2)
        // A length that is not the payload's: RST, and the connection ends.
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 10), [1, 2])
        #expect(try h.received().map(\.0.operation) == [Op.reset])
        #expect(h.device.connectionKeys.isEmpty)
        // A wrong type, an unknown operation, a payload too large: RST.
        header = h.packet(Op.request, guestPort: 1, hostPort: 52)
        header.type = 2
        try h.send(header)
        try h.send(h.packet(99, guestPort: 2, hostPort: 52))
        try h.send(h.packet(Op.readWrite, guestPort: 3, hostPort: 52, length: 70000))
        // Operations on a connection that does not exist: RST; a RST: nothing.
        try h.send(h.packet(Op.readWrite, guestPort: 4, hostPort: 52, length: 1), [0])
        try h.send(h.packet(Op.reset, guestPort: 5, hostPort: 52))
        let replies = try h.received()
        #expect(replies.map(\.0.operation) == [Op.reset, Op.reset, Op.reset, Op.reset])
        #expect(replies.map(\.0.destinationPort) == [1, 2, 3, 4])
        // A header shorter than 44 bytes.
        try h.memory.write([UInt8](repeating: 0, count: 20), at: VsockHarness.txBuffers)
        try h.tx.setDescriptor(0, address: VsockHarness.txBuffers, length: 20)
        try h.tx.makeAvailable(0)
        h.device.notify(queue: 1)
        #expect(try h.received().isEmpty)
        #expect(h.device.connectionKeys.isEmpty)
    }

    @Test("an rx buffer too short for a header is completed empty and skipped")
    func shortReceiveBuffer() throws {
        let h = try VsockHarness()
        h.rxBufferSize = 20
        try h.offerReceiveBuffers(1)
        h.rxBufferSize = 44 + 4096
        try h.offerReceiveBuffers(1)
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 53))
        #expect(h.rx.usedElement(0).length == 0)
        #expect(h.rx.usedElement(1).length == 44)
    }

    @Test("an rx buffer with room for a header alone is completed empty when data is waiting, not kept back")
    func headerOnlyReceiveBuffer() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(1)
        let handle = try established(h, allocation: 4096)
        h.host.hostSends(handle, [UInt8](repeating: 0xCD, count: 10))
        h.rxBufferSize = 44
        try h.offerReceiveBuffers(2)
        let before = h.device.counters.malformed
        h.device.hostSocketReady(handle, events: .readable)
        // Both header-only buffers came back empty, and nothing was read from the socket.
        #expect(h.device.counters.malformed == before + 2)
        #expect(h.usedLengths() == [0, 0])
        // A buffer with room then carries the bytes.
        h.rxBufferSize = 44 + 4096
        try h.offerReceiveBuffers(1)
        h.device.notify(queue: 0)
        let packets = try h.received()
        #expect(packets.filter { $0.0.operation == Op.readWrite }.reduce(0) { $0 + $1.1.count } == 10)
    }

    @Test("a device reset ends every connection")
    func deviceReset() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(2)
        let handle = try established(h, allocation: 4096)
        h.device.reset()
        #expect(h.device.connectionKeys.isEmpty)
        #expect(h.host.socket(handle)?.closed == true)
        // A CONNECT with no driver closes at once.
        let late = h.hostConnects("CONNECT 1\n")
        #expect(h.host.socket(late)?.closed == true)
    }
}

extension VirtioVsockTests {
    @Test("a reset leaves the socket closes and the paused listener to the host side's thread, and the guest sees it at once")
    func resetOnHostThread() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(4)
        let handle = try established(h, allocation: 4096)
        h.host.hostSends(handle, Array("late".utf8))
        // Accepting fails: the listener is paused.
        h.host.state.withLock { $0.acceptFails = true }
        h.device.listenerReady()
        #expect(h.host.state.withLock { $0.listenerWatched } == false)
        h.host.state.withLock {
            $0.acceptFails = false
            $0.deferWork = true
        }

        h.device.reset()
        // The guest's view is reset at once; nothing was closed on this thread.
        #expect(h.device.connectionKeys.isEmpty)
        #expect(h.host.socket(handle)?.closed == false)
        #expect(h.host.state.withLock { $0.closedOn.isEmpty && !$0.listenerWatched })
        // Until the host side's thread closes it, the old socket's reports reach nothing,
        // and neither do the guest's packets for the old connection.
        try h.reactivate()
        try h.offerReceiveBuffers(4)
        h.device.hostSocketReady(handle, events: .readable)
        h.device.notify(queue: 0)
        #expect(try h.received().isEmpty)
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 3), [1, 2, 3])
        #expect(try h.received().map(\.0.operation) == [Op.reset])
        #expect(h.host.socket(handle)?.output == [])

        // The host side's thread runs the work: the socket closed there, the listener back.
        let host = h.host
        var thread = pthread_t()
        let ranOn = Mutex<pthread_t?>(nil)
        #expect(
            VCPUThread.create(&thread) {
                ranOn.withLock { $0 = pthread_self() }
                host.runDeferredWork()
            } == 0)
        VCPUThread.join(thread)
        #expect(h.host.socket(handle)?.closed == true)
        #expect(h.host.state.withLock { $0.closedOn } == [ranOn.withLock { $0 }].compactMap { $0 })
        #expect(h.host.state.withLock { $0.listenerWatched })
        // The listener takes connections again, and the guest hears of them.
        h.host.state.withLock { $0.deferWork = false }
        let late = h.hostConnects("CONNECT 9\n")
        #expect(h.host.socket(late)?.closed == false)
        #expect(try h.received().map(\.0.operation) == [Op.request])
    }
}

extension VirtioVsockTests {
    @Test(
        "a guest sending as its credit allows while the host takes bytes slowly never grows the host-bound buffer past its limit")
    func boundedHostBuffer() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(8)
        let handle = try established(h, allocation: 4096)
        let key = VirtioVsockDevice.Key(hostPort: 52, guestPort: 7000)
        h.host.setSendLimit(handle, 0)
        let chunk = [UInt8](repeating: 7, count: 4096)
        for _ in 0..<16 { try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: chunk.count), chunk) }
        var largest = 0
        var largestCapacity = 0
        // The host takes 1000 bytes at a time; the guest sends 1000 more each time.
        let piece = [UInt8](repeating: 8, count: 1000)
        for _ in 0..<300 {
            h.host.setSendLimit(handle, 1000)
            h.device.hostSocketReady(handle, events: .writable)
            h.host.setSendLimit(handle, 0)
            try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: piece.count), piece)
            let buffer = try #require(h.device.hostBoundBuffer(key))
            largest = max(largest, buffer.count)
            largestCapacity = max(largestCapacity, buffer.capacity)
        }
        #expect(largest <= VirtioVsockDevice.pendingLimit, "\(largest)")
        #expect(largestCapacity <= 2 * VirtioVsockDevice.pendingLimit, "\(largestCapacity)")
        #expect(h.host.socket(handle)?.output.count == 300 * 1000)
        // A byte past the credit ends the connection.
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 1), [1])
        #expect(h.device.connectionKeys.isEmpty)
    }

    @Test(
        "connections waiting for an rx buffer are listed once: a guest reopening one without posting buffers cannot grow the list"
    )
    func boundedDataReady() throws {
        let h = try VsockHarness()
        h.host.state.withLock { _ = $0.listening.insert(52) }
        // A RST waits for an rx buffer first, so the list is not served meanwhile.
        try h.send(h.packet(Op.readWrite, guestPort: 1, hostPort: 99, length: 1), [0])
        for _ in 0..<50 {
            try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52, allocation: 4096))
            let handle = h.host.lastHandle
            h.host.hostSends(handle, [1, 2, 3])
            h.device.hostSocketReady(handle, events: .readable)
            try h.send(h.packet(Op.reset, guestPort: 7000, hostPort: 52))
        }
        #expect(h.device.dataReadyCount == 0)
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52, allocation: 4096))
        h.host.hostSends(h.host.lastHandle, [1, 2, 3])
        h.device.hostSocketReady(h.host.lastHandle, events: .readable)
        #expect(h.device.dataReadyCount == 1)
        // Its bytes still arrive once buffers come.
        try h.offerReceiveBuffers(8)
        h.device.notify(queue: 0)
        let all = try h.received()
        let packets = all.filter { $0.0.operation == Op.readWrite }
        #expect(packets.map(\.1) == [[1, 2, 3]], "\(all.map { ($0.0.operation, $0.0.sourcePort, $0.0.destinationPort) })")
    }

    @Test("a watch the host side cannot change ends the connection with a RST; a CONNECT it cannot watch is closed")
    func failedWatch() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(8)
        let handle = try established(h, allocation: 4096)
        h.host.setSendLimit(handle, 0)
        h.host.state.withLock { _ = $0.watchFails.insert(handle) }
        // Bytes the host cannot take yet: the device must watch for writability, and cannot.
        try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: 3), [1, 2, 3])
        #expect(h.device.connectionKeys.isEmpty)
        #expect(h.host.socket(handle)?.closed == true)
        #expect(try h.received().map(\.0.operation) == [Op.reset])

        let next = h.host.state.withLock { state in
            state.watchFails.insert(state.nextHandle + 1)
            return state.nextHandle + 1
        }
        #expect(h.host.hostConnects(sending: Array("CONNECT 5\n".utf8)) == next)
        h.device.listenerReady()
        #expect(h.host.socket(next)?.closed == true)
        #expect(h.device.waitingLineCount == 0)
    }

    @Test("a paused listener resumes when a connection ends; a resume whose watch fails is tried again at the next")
    func listenerResumes() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(8)
        _ = try established(h, allocation: 4096)
        h.host.state.withLock { $0.acceptFails = true }
        h.device.listenerReady()
        #expect(h.host.state.withLock { $0.listenerWatched } == false)
        h.host.state.withLock {
            $0.acceptFails = false
            $0.listenerWatchFails = true
        }
        try h.send(h.packet(Op.reset, guestPort: 7000, hostPort: 52))
        #expect(h.host.state.withLock { $0.listenerWatched } == false)
        h.host.state.withLock { $0.listenerWatchFails = false }
        _ = try established(h, allocation: 4096)
        try h.send(h.packet(Op.reset, guestPort: 7000, hostPort: 52))
        #expect(h.host.state.withLock { $0.listenerWatched } == true)
    }

    @Test("one CREDIT_UPDATE waits at a time: drains past the threshold and CREDIT_REQUESTs while no rx buffer is free send one")
    func oneCreditUpdate() throws {
        let h = try VsockHarness()
        let handle = try established(h, allocation: 4096)
        h.host.setSendLimit(handle, 0)
        let chunk = [UInt8](repeating: 3, count: 10_000)
        for _ in 0..<6 { try h.send(h.packet(Op.readWrite, guestPort: 7000, hostPort: 52, length: chunk.count), chunk) }
        for _ in 0..<6 {
            h.host.setSendLimit(handle, 10_000)
            h.device.hostSocketReady(handle, events: .writable)
        }
        #expect(h.host.socket(handle)?.output.count == 60_000)
        for _ in 0..<5 { try h.send(h.packet(Op.creditRequest, guestPort: 7000, hostPort: 52)) }
        try h.offerReceiveBuffers(8)
        h.device.notify(queue: 0)
        let updates = try h.received().filter { $0.0.operation == Op.creditUpdate }
        #expect(updates.count == 1)
        #expect(updates.first?.0.forwardCount == 60_000)
        // Asked again with buffers free: answered, though nothing changed.
        try h.send(h.packet(Op.creditRequest, guestPort: 7000, hostPort: 52))
        #expect(try h.received().map(\.0.operation) == [Op.creditUpdate])
    }

    @Test("CREDIT_REQUESTs that wait for an rx buffer get one CREDIT_UPDATE when it comes, though nothing changed")
    func creditRequestWaits() throws {
        let h = try VsockHarness()
        try h.offerReceiveBuffers(1)
        _ = try established(h, allocation: 4096)
        // No rx buffer left: each request's notification finds the update first in line.
        for _ in 0..<3 { try h.send(h.packet(Op.creditRequest, guestPort: 7000, hostPort: 52)) }
        try h.offerReceiveBuffers(4)
        h.device.notify(queue: 0)
        #expect(try h.received().map(\.0.operation) == [Op.creditUpdate])
    }
}

@Suite("virtio vsock under the vCPU seccomp filter")
struct VsockConfinedResetTests {
    @Test("a reset on a thread whose filter refuses close still closes the host socket, on the I/O thread")
    func resetUnderVCPUFilter() throws {
        let directory = try VsockUnixSocketTests.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/v.sock"
        let thread = try IOThread()
        // The I/O thread under its own filter: what it needs for the closes is allowed.
        #expect(thread.start(confine: { (try? Seccomp.install(.io)) != nil }) == 0)
        defer { thread.stop() }
        let h = try VsockHarness(side: VsockUnixHost(listener: try HostUnixListener.listen(path: path), thread: thread))
        try h.offerReceiveBuffers(8)
        h.device.notify(queue: 0)
        // The guest connects to host port 52, where a host program listens.
        let port52 = try HostUnixListener.listen(path: path + "_52")
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52))
        var accepted: Int32?
        #expect(
            eventually {
                if case .accepted(let fd) = HostSocket.accept(port52.descriptor) { accepted = fd }
                return accepted != nil
            })
        let peer = try #require(accepted)
        defer { HostSocket.close(peer) }
        #expect(try h.received().first?.0.operation == Op.response)
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(HostSocket.receive(peer, into: &buffer, count: 16) == .wouldBlock)

        // The reset, from a thread confined as a vCPU thread is.
        let device = h.device
        let installed = Mutex<Bool>(false)
        var vcpu = pthread_t()
        #expect(
            VCPUThread.create(&vcpu) {
                let confined = (try? Seccomp.install(.vcpu)) != nil
                installed.withLock { $0 = confined }
                device.reset()
            } == 0)
        VCPUThread.join(vcpu)
        #expect(installed.withLock { $0 })
        #expect(h.device.connectionKeys.isEmpty)
        // The host program reads the end: the device's socket was closed, not leaked.
        #expect(eventually { HostSocket.receive(peer, into: &buffer, count: 16) == .transferred(0) })

        // After the driver sets the device up again, a host program's CONNECT reaches the guest.
        try h.reactivate()
        try h.offerReceiveBuffers(8)
        h.device.notify(queue: 0)
        let client = try #require(HostSocket.connect(path: path))
        defer { HostSocket.close(client) }
        #expect(HostSocket.send(client, Array("CONNECT 77\n".utf8)[...]) == .transferred(11))
        var packets: [(VsockHeader, [UInt8])] = []
        #expect(
            try eventually {
                packets += try h.received(); return !packets.isEmpty
            })
        #expect(packets.first?.0.operation == Op.request && packets.first?.0.destinationPort == 77)
    }
}

/// Polls `condition` every millisecond for up to 10 s (only a hang takes that long).
func eventually(_ condition: () throws -> Bool) rethrows -> Bool {
    for _ in 0..<10_000 {
        if try condition() { return true }
        usleep(1000)
    }
    return false
}

@Suite("virtio vsock on Unix sockets")
struct VsockUnixSocketTests {
    static func directory() throws -> String {
        let path = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A vsock device on a real host side (a listener in a fresh folder, an I/O thread)
    /// with 8 rx buffers offered; `body` gets it and the listener's path.
    static func withUnixHarness(_ body: (VsockHarness, String) throws -> Void) throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/v.sock"
        let thread = try IOThread()
        #expect(thread.start() == 0)
        defer { thread.stop() }
        let h = try VsockHarness(side: VsockUnixHost(listener: try HostUnixListener.listen(path: path), thread: thread))
        try h.offerReceiveBuffers(8)
        h.device.notify(queue: 0)
        try body(h, path)
    }

    @Test("the listener refuses an existing or too long path, and removes its own when released")
    func listener() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/v.sock"
        var listener: HostUnixListener? = try HostUnixListener.listen(path: path)
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(throws: HostFileError.self) { try HostUnixListener.listen(path: path) }
        #expect(throws: HostFileError.self) {
            try HostUnixListener.listen(path: directory + "/" + String(repeating: "x", count: 108))
        }
        _ = listener
        listener = nil
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("the listener's path goes with the device, even while the I/O thread holds the device (as notifications do)")
    func noCycle() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/v.sock"
        do {
            let thread = try IOThread()
            let device = VirtioVsockDevice(
                guestCID: 3, host: VsockUnixHost(listener: try HostUnixListener.listen(path: path), thread: thread))
            // What the machine's queue notifications do: the thread's handler holds the device.
            try thread.add(try EventFD()) { _ = device.counters }
            #expect(FileManager.default.fileExists(atPath: path))
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("on the I/O thread's timer: a silent host program and an unanswered REQUEST are closed after their deadlines")
    func deadlinesOnTheIOThread() throws {
        try Self.withUnixHarness { h, path in try Self.deadlines(h, path: path) }
    }

    static func deadlines(_ h: VsockHarness, path: String) throws {
        let started = HostIO.monotonicNanoseconds()
        let silent = try #require(HostSocket.connect(path: path))
        defer { HostSocket.close(silent) }
        let unanswered = try #require(HostSocket.connect(path: path))
        defer { HostSocket.close(unanswered) }
        #expect(HostSocket.send(unanswered, Array("CONNECT 1234\n".utf8)[...]) == .transferred(13))
        var packets: [(VsockHeader, [UInt8])] = []
        #expect(
            try eventually {
                packets += try h.received(); return !packets.isEmpty
            })
        #expect(packets.first?.0.operation == Op.request)
        // Both host sockets end (read gives the end of input) once their deadline passed:
        // not before it, and well within a second after.
        func ended(_ handle: Int32) -> Bool {
            var buffer = [UInt8](repeating: 0, count: 16)
            return HostSocket.receive(handle, into: &buffer, count: 16, peek: false) == .transferred(0)
        }
        #expect(eventually { ended(silent) && ended(unanswered) })
        let elapsed = HostIO.monotonicNanoseconds() - started
        #expect(elapsed >= VirtioVsockDevice.lineTimeout && elapsed < VirtioVsockDevice.requestTimeout + 1_000_000_000)
        // The guest heard its REQUEST end with a RST.
        #expect(
            try eventually {
                packets += try h.received(); return packets.count >= 2
            })
        #expect(packets.last?.0.operation == Op.reset)
        #expect(h.device.timeoutCount == 2)
        #expect(h.device.waitingLineCount == 0 && h.device.connectionKeys.isEmpty)
    }

    @Test("a host program's CONNECT gets OK and a relay; a guest reaches PATH_P; the guest's RST closes the host side")
    func endToEnd() throws {
        try Self.withUnixHarness { h, path in try Self.endToEnd(h, path: path) }
    }

    static func endToEnd(_ h: VsockHarness, path: String) throws {
        let client = try #require(HostSocket.connect(path: path))
        defer { HostSocket.close(client) }
        #expect(HostSocket.send(client, Array("CONNECT 1234\n".utf8)[...]) == .transferred(13))
        var packets: [(VsockHeader, [UInt8])] = []
        #expect(
            try eventually {
                packets += try h.received(); return !packets.isEmpty
            })
        let request = try #require(packets.first?.0)
        #expect(request.operation == Op.request && request.destinationPort == 1234)
        try h.send(h.packet(Op.response, guestPort: 1234, hostPort: request.sourcePort))
        var buffer = [UInt8](repeating: 0, count: 64)
        var got: [UInt8] = []
        func read() -> SocketTransfer {
            let result = HostSocket.receive(client, into: &buffer, count: 64)
            if case .transferred(let n) = result { got += buffer[0..<n] }
            return result
        }
        let ok = Array("OK \(request.sourcePort)\n".utf8)
        #expect(
            eventually {
                _ = read(); return got.count >= ok.count
            })
        #expect(got == ok)
        #expect(HostSocket.send(client, Array("ping".utf8)[...]) == .transferred(4))
        packets = []
        #expect(
            try eventually {
                packets += try h.received(); return !packets.isEmpty
            })
        #expect(packets.first?.0.operation == Op.readWrite)
        #expect(packets.first?.1 == Array("ping".utf8))
        try h.send(h.packet(Op.readWrite, guestPort: 1234, hostPort: request.sourcePort, length: 4), Array("pong".utf8))
        got = []
        #expect(
            eventually {
                _ = read(); return got.count >= 4
            })
        #expect(got == Array("pong".utf8))

        // The guest connects to host port 52: PATH_52.
        let port52 = try HostUnixListener.listen(path: path + "_52")
        try h.send(h.packet(Op.request, guestPort: 7000, hostPort: 52))
        packets = []
        #expect(
            try eventually {
                packets += try h.received(); return !packets.isEmpty
            })
        #expect(packets.first?.0.operation == Op.response)
        var accepted: Int32?
        #expect(
            eventually {
                if case .accepted(let fd) = HostSocket.accept(port52.descriptor) { accepted = fd }
                return accepted != nil
            })
        if let accepted { HostSocket.close(accepted) }
        // Nothing at PATH_53: RST. (The closed connection to PATH_52 may send its SHUTDOWN
        // first.)
        try h.send(h.packet(Op.request, guestPort: 7001, hostPort: 53))
        packets = []
        #expect(
            try eventually {
                packets += try h.received()
                return packets.contains { $0.0.operation == Op.reset && $0.0.sourcePort == 53 }
            })

        // The guest resets the first connection: the host program reads the end.
        try h.send(h.packet(Op.reset, guestPort: 1234, hostPort: request.sourcePort))
        #expect(eventually { read() == .transferred(0) })
    }
}
