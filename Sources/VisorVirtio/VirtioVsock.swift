package import VisorMemory
package import VisorHost
import Synchronization

/// The socket device (virtio 1.2, section 5.10; device ID 19) in Firecracker's hybrid
/// design: guest stream sockets reach host programs through Unix sockets (`VsockHostSide`).
///
/// Queues: rx (0) carries packets to the guest, tx (1) packets from it, event (2) is left
/// alone. The configuration is the guest's CID (u64). Stream sockets only.
///
/// - A host program connects to the device's listener and sends `CONNECT <port>\n`; the
///   device asks the guest (REQUEST from a fresh host port, counting up from 2^30) and, on
///   the guest's RESPONSE, writes `OK <hostport>\n` and relays bytes both ways; on the
///   guest's RST it closes the host connection. A bad line (not a decimal port, longer than
///   `maximumLineLength`) closes it too.
/// - The end of a host program's input reaches the guest as a SHUTDOWN with only
///   VIRTIO_VSOCK_SHUTDOWN_F_SEND: the guest may still send until it shuts its own side.
/// - A guest REQUEST to host port P connects to the host side's listener for P; none
///   there: RST.
///
/// Each tx packet's header is copied out of guest memory once, then checked: source CID the
/// guest's, destination the host's (2), type STREAM, a known operation, a length of at most
/// `maximumPayload` that equals the payload present. A malformed packet gets a RST where it
/// names a connection (and the connection ends), else it is dropped; both are counted.
///
/// Credit (5.10.6.3): the device never sends a connection more payload than the guest's
/// last advertised `buf_alloc` less what it has not yet forwarded, and advertises
/// `bufferSize` of its own; a guest that sends past it gets a RST. A CREDIT_UPDATE goes
/// out when the guest asks (CREDIT_REQUEST) or half the buffer was freed since it last
/// heard, at most one waiting per connection. Everything is bounded:
/// `maximumConnections` (host connections waiting for their line included),
/// `bufferSize` bytes buffered per connection, `maximumControlPackets` packets waiting for
/// rx buffers, and a queue's worth of packets per notification or host wake-up.
///
/// Deadlines (as Firecracker's muxer): a host program has `lineTimeout` to send its whole
/// `CONNECT` line, and the guest `requestTimeout` to answer the REQUEST it caused; past
/// either, the host connection is closed (and the guest sent a RST for the request), so
/// a silent program or guest cannot hold one of the `maximumConnections` slots.
package final class VirtioVsockDevice: VirtioDevice {
    package static let queueSize: UInt16 = 256
    /// The receive buffer each connection advertises (its host-bound bytes never exceed it).
    package static let bufferSize: UInt32 = 64 * 1024
    /// The largest payload of one packet, either way.
    package static let maximumPayload: UInt32 = 64 * 1024
    /// Connections, host ones waiting for their `CONNECT` line included.
    package static let maximumConnections = 1024
    /// Control packets (RESPONSE, RST, SHUTDOWN, credit) waiting for rx buffers.
    package static let maximumControlPackets = 4096
    /// The longest `CONNECT <port>\n` line, newline included.
    package static let maximumLineLength = 32
    /// The most bytes a connection's host-bound buffer holds, sent ones not yet dropped
    /// included: the guest's credit (`bufferSize`) and the longest `OK <port>\n` line.
    package static let pendingLimit = Int(bufferSize) + 14
    /// The first host port a host-initiated connection gets.
    package static let firstHostPort: UInt32 = 1 << 30
    /// How long a host program has for its `CONNECT` line, from its connection's accept.
    package static let lineTimeout: UInt64 = 2_000_000_000
    /// How long the guest has to answer a host connection's REQUEST (Firecracker's
    /// `CONN_REQUEST_TIMEOUT_MS`).
    package static let requestTimeout: UInt64 = 2_000_000_000

    /// A connection, by its two ports.
    package struct Key: Hashable, Sendable {
        package var hostPort: UInt32
        package var guestPort: UInt32
        package init(hostPort: UInt32, guestPort: UInt32) {
            self.hostPort = hostPort
            self.guestPort = guestPort
        }
    }

    private struct Connection {
        enum Phase { case connecting, established }
        var handle: Int32
        var phase: Phase
        /// While `.connecting`: when the guest's answer is due (`VsockHostSide.now`).
        var deadline: UInt64 = 0
        /// Tells this connection from an earlier one with the same ports, for the control
        /// packets queued for that one.
        var serial: UInt64
        /// Guest-to-host bytes not yet sent to the host socket, from `pendingStart`; the
        /// first `prefix` of them are the `OK` line, which the guest's credit does not count.
        /// Never more than `pendingLimit` bytes, sent ones included (see `serveTransmitted`).
        var pending: [UInt8] = []
        var pendingStart = 0
        var prefix = 0
        /// fwd_cnt: guest bytes sent on to the host, and its value in our last packet.
        var forwarded: UInt32 = 0
        var advertised: UInt32 = 0
        /// tx_cnt: payload bytes sent to the guest; the guest's buf_alloc and fwd_cnt.
        var sent: UInt32 = 0
        var peerAllocation: UInt32 = 0
        var peerForwarded: UInt32 = 0
        /// The guest will send (receive) no more.
        var guestSendDone = false
        var guestReceiveDone = false
        /// The guest shut down both ways: RST once the pending bytes are out.
        var resetWhenDrained = false
        /// The host's input ended (SHUTDOWN sent).
        var hostEnded = false
        /// Waiting in `dataReady` for an rx buffer.
        var queued = false
        /// A CREDIT_REQUEST went out since the credit last ran out.
        var creditAsked = false
        /// A CREDIT_UPDATE waits in `control` (one at a time: it carries the counters of
        /// when it goes out); the guest asked for it with a CREDIT_REQUEST.
        var updateQueued = false
        var updateAsked = false
        /// The readiness asked of the host side.
        var readable = false
        var writable = false

        var pendingCount: Int { pending.count - pendingStart }
        /// Guest bytes buffered (the `OK` prefix aside).
        var guestPending: Int { pendingCount - prefix }
        /// What the guest can still take (0 when its counters make no sense).
        var credit: UInt32 {
            let inFlight = sent &- peerForwarded
            return inFlight > peerAllocation ? 0 : peerAllocation - inFlight
        }
    }

    private struct ControlPacket {
        var key: Key
        var operation: UInt16
        var flags: UInt32 = 0
        /// The connection it was queued for (`Connection.serial`; RST: none).
        var serial: UInt64 = 0
    }

    private struct State {
        var rx: Virtqueue?
        var tx: Virtqueue?
        /// The event queue, used once: the transport reset after a snapshot's restore.
        var event: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioVsockDevice.queueSize))
        /// An rx chain taken but not used (the host had nothing after all).
        var spare = DescriptorChain(capacity: Int(VirtioVsockDevice.queueSize))
        var hasSpare = false
        var connections: [Key: Connection] = [:]
        var keys: [Int32: Key] = [:]
        /// Host connections still sending their `CONNECT` line: what came of it, and when
        /// the whole line is due.
        var lines: [Int32: (bytes: [UInt8], deadline: UInt64)] = [:]
        /// The deadline the host side was last asked to wake the device at, if still ahead.
        var wake: UInt64?
        var control: [ControlPacket] = []
        var controlStart = 0
        var dataReady: [Key] = []
        var nextHostPort = VirtioVsockDevice.firstHostPort
        var serial: UInt64 = 0
        var listenerPaused = false
        /// Header and payload on their way in or out.
        var packet: [UInt8] = []
        var counters = VirtioCounters()
        /// Host connections closed for a missed deadline (line or guest answer).
        var timeouts: UInt64 = 0
        var connectionCount: Int { connections.count + lines.count }
    }
    private let state = Mutex(State())
    /// The guest's context ID (3 to 2^32 - 2; checked by the configuration).
    package let guestCID: UInt64
    private let host: any VsockHostSide

    /// A device for the guest `guestCID` whose host side is `host`, which it starts.
    package init(guestCID: UInt64, host: any VsockHostSide) {
        self.guestCID = guestCID
        self.host = host
        host.start(device: self)
    }

    deinit {
        state.withLock { state in
            for handle in state.keys.keys { host.close(handle) }
            for handle in state.lines.keys { host.close(handle) }
        }
    }

    package var deviceType: UInt32 { 19 }
    package var deviceFeatures: UInt64 { 0 }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize, Self.queueSize] }

    /// Packets completed (both ways, malformed ones among them) and payload bytes relayed.
    package var counters: VirtioCounters { state.withLock { $0.counters } }

    /// Host connections closed because their line or the guest's answer came too late.
    package var timeoutCount: UInt64 { state.withLock { $0.timeouts } }

    /// The connections open now (for tests).
    package var connectionKeys: [Key] { state.withLock { Array($0.connections.keys) } }
    /// Whether `key` is a host connection whose REQUEST the guest has not answered (for tests).
    package func isConnecting(_ key: Key) -> Bool {
        state.withLock { $0.connections[key]?.phase == .connecting }
    }
    /// The bytes `key`'s host-bound buffer holds and its capacity (for tests).
    package func hostBoundBuffer(_ key: Key) -> (count: Int, capacity: Int)? {
        state.withLock { state in state.connections[key].map { ($0.pending.count, $0.pending.capacity) } }
    }
    /// Connections waiting for an rx buffer, repeats included (for tests).
    package var dataReadyCount: Int { state.withLock { $0.dataReady.count } }
    /// Host connections still sending their line (for tests).
    package var waitingLineCount: Int { state.withLock { $0.lines.count } }

    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<UInt64(min(width, 8)) {
            let (at, overflow) = offset.addingReportingOverflow(i)
            guard !overflow, at < 8 else { break }
            value |= (guestCID >> (8 * at) & 0xFF) << (8 * i)
        }
        return value
    }

    /// The guest's CID is read-only.
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        guard queues.count >= 2, let rx = queues[0], let tx = queues[1] else {
            throw VirtioActivationError("the rx and tx queues are not ready")
        }
        state.withLock { state in
            state.rx = rx
            state.tx = tx
            state.event = queues.count > 2 ? queues[2] : nil
            state.memory = memory
            state.interrupt = interrupt
            if state.packet.isEmpty {
                state.packet = [UInt8](repeating: 0, count: VsockHeader.size + Int(Self.maximumPayload))
            }
        }
    }

    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the event the device sends after a restore.
    package static let transportResetEvent: UInt32 = 0

    /// After a restore the host connections of the old process are gone: the device tells
    /// the driver with a transport-reset event (5.10.6.6) on the event queue, and the guest
    /// closes every connection and reads its CID again, as after a Firecracker restore. No
    /// buffer on the event queue: nothing is sent (the driver keeps one there).
    package func resumedFromSnapshot() {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            guard var event = state.event, let memory = state.memory else { return nil }
            var chain = DescriptorChain(capacity: 4)
            let written: UInt32
            switch event.pop(into: &chain, memory: memory) {
            case .empty:
                return nil
            case .invalid:
                written = 0
            case .chain:
                if let buffer = chain.writable.first, buffer.length >= 4,
                    (try? memory.write(Self.transportResetEvent, at: buffer.address)) != nil
                {
                    written = 4
                } else {
                    written = 0
                }
            }
            _ = event.push(head: chain.head, length: written, memory: memory)
            let signal = event.needsInterrupt(memory: memory)
            state.event = event
            return signal ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    /// Forgets the queues and ends every connection; host connections still sending their
    /// line stay, and are closed when it comes. What the guest sees is reset at once (no
    /// connection, no packet waiting); the host sockets are closed, and a paused listener
    /// watched again, by the host side's thread (`VsockHostSide.perform`), since a reset
    /// comes from a vCPU thread, whose seccomp filter refuses `close` and `epoll_ctl`. Until
    /// then an old socket's reports find no connection and are ignored, and its descriptor,
    /// still open, cannot be a new connection's.
    package func reset() {
        let (handles, resume): ([Int32], Bool) = state.withLock { state in
            let handles = Array(state.keys.keys)
            state.connections = [:]
            state.keys = [:]
            state.control = []
            state.controlStart = 0
            state.dataReady = []
            state.hasSpare = false
            state.rx = nil
            state.tx = nil
            state.event = nil
            state.memory = nil
            state.interrupt = nil
            let resume = state.listenerPaused && state.connectionCount < Self.maximumConnections
            if resume { state.listenerPaused = false }
            return (handles, resume)
        }
        guard !handles.isEmpty || resume else { return }
        let host = self.host
        host.perform { [weak self] in
            handles.forEach { host.close($0) }
            if resume, !host.watchListener(true) { self?.listenerResumeFailed() }
        }
    }

    package func notify(queue index: Int) {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            var wants = false
            if index == 1 { wants = serveTransmit(&state) }
            if index == 0 || index == 1 { wants = fillReceive(&state) || wants }
            return wants ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    // MARK: Host events (from the host side's thread)

    /// The listener has connections waiting: accepts a few (closing them at once beyond
    /// `maximumConnections`); each then sends its `CONNECT` line.
    package func listenerReady() {
        state.withLock { state in
            for _ in 0..<16 {
                switch host.accept() {
                case .none: return
                case .failed:
                    // Out of descriptors, say: stop asking until a connection ends.
                    state.listenerPaused = true
                    _ = host.watchListener(false)
                    return
                case .accepted(let handle):
                    guard state.connectionCount < Self.maximumConnections else {
                        host.close(handle)
                        continue
                    }
                    // Unwatched, its line would never be read: closed at once.
                    guard host.watch(handle, readable: true, writable: false) else {
                        host.close(handle)
                        continue
                    }
                    let deadline = host.now &+ Self.lineTimeout
                    state.lines[handle] = ([], deadline)
                    scheduleWake(&state, at: deadline)
                }
            }
        }
    }

    /// A host socket is ready.
    package func hostSocketReady(_ handle: Int32, events: IOEvents) {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            if state.lines[handle] != nil {
                return readLine(&state, handle: handle) ? state.interrupt : nil
            }
            guard let key = state.keys[handle], var connection = state.connections[key] else { return nil }
            if events.contains(.writable) || (events.contains(.hangUp) && connection.writable) {
                flushToHost(&state, key)
                guard let updated = state.connections[key] else { return fillReceive(&state) ? state.interrupt : nil }
                connection = updated
            }
            if connection.readable, events.contains(.readable) || events.contains(.hangUp) {
                connection.queued = true
                state.connections[key] = connection
                state.dataReady.append(key)
                updateInterest(&state, key)
            }
            return fillReceive(&state) ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    // MARK: The CONNECT line

    /// Reads what came of `handle`'s line, up to its newline and never past it; returns
    /// whether rx buffers were used.
    private func readLine(_ state: inout State, handle: Int32) -> Bool {
        guard var line = state.lines[handle]?.bytes else { return false }
        let room = Self.maximumLineLength - line.count
        var peeked = [UInt8](repeating: 0, count: room)
        let count: Int
        switch host.receive(handle, into: &peeked, at: 0, count: room, peek: true) {
        case .transferred(let n) where n > 0: count = n
        case .wouldBlock: return false
        default:
            closeLine(&state, handle)
            return false
        }
        let newline = peeked[0..<count].firstIndex(of: UInt8(ascii: "\n"))
        let take = newline.map { $0 + 1 } ?? count
        // Consumes what was peeked: the line's bytes only, so data after it stays queued.
        var consumed = [UInt8](repeating: 0, count: take)
        guard host.receive(handle, into: &consumed, at: 0, count: take, peek: false) == .transferred(take) else {
            closeLine(&state, handle)
            return false
        }
        line += consumed
        guard newline != nil else {
            if line.count >= Self.maximumLineLength { closeLine(&state, handle) } else { state.lines[handle]?.bytes = line }
            return false
        }
        state.lines[handle] = nil
        guard let port = Self.parseConnect(line), state.rx != nil else {
            host.close(handle)
            resumeListener(&state)
            return false
        }
        // A fresh host port: the next one no open connection to this guest port uses.
        var key = Key(hostPort: state.nextHostPort, guestPort: port)
        for _ in 0...Self.maximumConnections where state.connections[key] != nil {
            key.hostPort = key.hostPort == UInt32.max ? Self.firstHostPort : key.hostPort + 1
        }
        state.nextHostPort = key.hostPort == UInt32.max ? Self.firstHostPort : key.hostPort + 1
        let serial = nextSerial(&state)
        let deadline = host.now &+ Self.requestTimeout
        state.connections[key] = Connection(handle: handle, phase: .connecting, deadline: deadline, serial: serial)
        state.keys[handle] = key
        scheduleWake(&state, at: deadline)
        _ = host.watch(handle, readable: false, writable: false)  // ending a watch cannot fail
        queueControl(&state, ControlPacket(key: key, operation: VsockHeader.Operation.request))
        return fillReceive(&state)
    }

    private func closeLine(_ state: inout State, _ handle: Int32) {
        state.lines[handle] = nil
        host.close(handle)
        resumeListener(&state)
    }

    // MARK: Deadlines

    /// Asks the host side to wake the device at `deadline` unless it will already wake it
    /// at or before then. Deadlines are made in increasing order (now plus a fixed time),
    /// so the earliest one pending is the one asked for.
    private func scheduleWake(_ state: inout State, at deadline: UInt64) {
        if let wake = state.wake, wake <= deadline { return }
        state.wake = deadline
        host.wake(at: deadline)
    }

    /// A deadline passed (on the host side's thread): host connections whose line did not
    /// come in time are closed; a host connection whose REQUEST the guest has not answered
    /// in time is closed and the guest gets a RST for it. Then the next deadline is asked
    /// for.
    package func deadlinePassed() {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            let now = host.now
            state.wake = nil
            var next: UInt64?
            for (handle, line) in state.lines {
                if line.deadline <= now {
                    closeLine(&state, handle)
                    state.timeouts += 1
                } else {
                    next = min(next ?? line.deadline, line.deadline)
                }
            }
            var expired: [Key] = []
            for (key, connection) in state.connections where connection.phase == .connecting {
                if connection.deadline <= now {
                    expired.append(key)
                } else {
                    next = min(next ?? connection.deadline, connection.deadline)
                }
            }
            for key in expired {
                reset(&state, key)
                state.timeouts += 1
            }
            if let next { scheduleWake(&state, at: next) }
            return !expired.isEmpty && fillReceive(&state) ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    /// The port of a `CONNECT <port>\n` line: decimal, 1 to 10 digits, at most 2^32 - 1.
    package static func parseConnect(_ line: [UInt8]) -> UInt32? {
        let prefix = Array("CONNECT ".utf8)
        guard line.count > prefix.count + 1, line.starts(with: prefix), line.last == UInt8(ascii: "\n") else { return nil }
        let digits = line[prefix.count..<(line.count - 1)]
        guard digits.count <= 10 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(digit - UInt8(ascii: "0"))
        }
        return value <= UInt64(UInt32.max) ? UInt32(value) : nil
    }

    // MARK: Guest to host

    /// Serves the tx queue: at most a queue's worth of packets. Returns whether the driver
    /// wants an interrupt for the used buffers.
    private func serveTransmit(_ state: inout State) -> Bool {
        guard var queue = state.tx, let memory = state.memory else { return false }
        var completed = false
        for _ in 0..<Int(queue.size) {
            let result = queue.pop(into: &state.chain, memory: memory)
            if result == .empty { break }
            if result == .chain {
                serveTransmitted(&state, memory: memory)
            } else {
                state.counters.malformed += 1
            }
            queue.push(head: state.chain.head, length: 0, memory: memory)
            state.counters.requests += 1
            completed = true
        }
        let wants = completed && queue.needsInterrupt(memory: memory)
        state.tx = queue
        return wants
    }

    /// Copies `count` bytes of the chain's readable buffers, from byte `skip` on, into
    /// `state.packet` at `at`. Returns false when guest memory fails.
    private func gather(_ state: inout State, skip: Int, count: Int, at: Int, memory: GuestMemory) -> Bool {
        var skip = skip
        var done = 0
        for element in state.chain.readable where done < count {
            var length = Int(element.length)
            var address = element.address
            if skip >= length {
                skip -= length
                continue
            }
            address += UInt64(skip)
            length -= skip
            skip = 0
            let take = min(length, count - done)
            do { try memory.read(into: &state.packet, startingAt: at + done, count: take, at: address) } catch {
                return false
            }
            done += take
        }
        return done == count
    }

    /// One tx packet, whose chain passed the queue's checks.
    private func serveTransmitted(_ state: inout State, memory: GuestMemory) {
        let chain = state.chain
        guard chain.writable.isEmpty, chain.readableLength >= UInt32(VsockHeader.size),
            gather(&state, skip: 0, count: VsockHeader.size, at: 0, memory: memory),
            let header = VsockHeader(state.packet[0..<VsockHeader.size])
        else {
            state.counters.malformed += 1
            return
        }
        // Packets not from this guest to the host name no connection of ours: dropped.
        guard header.sourceCID == guestCID, header.destinationCID == VsockHeader.hostCID else {
            state.counters.malformed += 1
            return
        }
        let key = Key(hostPort: header.destinationPort, guestPort: header.sourcePort)
        let payload = chain.readableLength - UInt32(VsockHeader.size)
        guard header.type == VsockHeader.typeStream, header.length <= Self.maximumPayload, header.length == payload,
            (VsockHeader.Operation.request...VsockHeader.Operation.creditRequest).contains(header.operation)
        else {
            state.counters.malformed += 1
            if header.operation != VsockHeader.Operation.reset { reset(&state, key) } else { close(&state, key) }
            return
        }
        typealias Op = VsockHeader.Operation
        if header.operation == Op.request {
            connectToHost(&state, key, header: header)
            return
        }
        if header.operation == Op.reset {
            close(&state, key)
            return
        }
        guard var connection = state.connections[key] else {
            reset(&state, key)
            return
        }
        connection.peerAllocation = header.bufferAllocation
        connection.peerForwarded = header.forwardCount
        if connection.credit > 0 { connection.creditAsked = false }
        state.connections[key] = connection
        switch header.operation {
        case Op.response:
            guard connection.phase == .connecting else { return reset(&state, key) }
            connection.phase = .established
            connection.pending = Array("OK \(key.hostPort)\n".utf8)
            connection.prefix = connection.pending.count
            state.connections[key] = connection
            flushToHost(&state, key)
        case Op.readWrite:
            guard connection.phase == .established, !connection.guestSendDone,
                connection.guestPending + Int(header.length) <= Int(Self.bufferSize)
            else {
                state.counters.malformed += 1
                return reset(&state, key)
            }
            guard header.length > 0 else { break }
            guard gather(&state, skip: VsockHeader.size, count: Int(header.length), at: 0, memory: memory) else {
                return reset(&state, key)
            }
            // Bytes already sent go once they are half the buffer (amortized), or when
            // keeping them would take the buffer past `pendingLimit`: the credit check
            // above bounds what is unsent, so the buffer never grows past that.
            if connection.pendingStart > 0,
                connection.pendingStart >= connection.pending.count / 2
                    || connection.pending.count + Int(header.length) > Self.pendingLimit
            {
                connection.pending.removeFirst(connection.pendingStart)
                connection.pendingStart = 0
            }
            connection.pending += state.packet[0..<Int(header.length)]
            state.connections[key] = connection
            state.counters.bytes += UInt64(header.length)
            flushToHost(&state, key)
        case Op.shutdown:
            guard connection.phase == .established else { return reset(&state, key) }
            let flags = header.flags & (VsockHeader.ShutdownFlag.receive | VsockHeader.ShutdownFlag.send)
            if flags & VsockHeader.ShutdownFlag.receive != 0 { connection.guestReceiveDone = true }
            if flags & VsockHeader.ShutdownFlag.send != 0 { connection.guestSendDone = true }
            if connection.guestReceiveDone, connection.guestSendDone { connection.resetWhenDrained = true }
            state.connections[key] = connection
            flushToHost(&state, key)
        case Op.creditRequest:
            queueCreditUpdate(&state, key, asked: true)
        default:
            // CREDIT_UPDATE: the credit was taken above.
            break
        }
        if state.connections[key] != nil { updateInterest(&state, key) }
    }

    /// A guest REQUEST: a connection to the host's listener for the port, or RST.
    private func connectToHost(_ state: inout State, _ key: Key, header: VsockHeader) {
        if state.connections[key] != nil {
            // A second REQUEST for an open connection: both end.
            state.counters.malformed += 1
            return reset(&state, key)
        }
        guard state.connectionCount < Self.maximumConnections, let handle = host.connect(port: key.hostPort) else {
            return reset(&state, key)
        }
        let serial = nextSerial(&state)
        var connection = Connection(handle: handle, phase: .established, serial: serial)
        connection.peerAllocation = header.bufferAllocation
        connection.peerForwarded = header.forwardCount
        state.connections[key] = connection
        state.keys[handle] = key
        queueControl(&state, ControlPacket(key: key, operation: VsockHeader.Operation.response))
        updateInterest(&state, key)
    }

    /// Sends what the connection holds for the host; ends it on a failed socket, shuts the
    /// host's input down (or resets) once the guest is done and everything is out.
    private func flushToHost(_ state: inout State, _ key: Key) {
        guard var connection = state.connections[key] else { return }
        if connection.pendingCount > 0 {
            let result = host.send(connection.handle, connection.pending[connection.pendingStart...])
            switch result {
            case .transferred(let n):
                let fromPrefix = min(n, connection.prefix)
                connection.prefix -= fromPrefix
                connection.forwarded &+= UInt32(n - fromPrefix)
                connection.pendingStart += n
                if connection.pendingStart == connection.pending.count {
                    connection.pending.removeAll(keepingCapacity: true)
                    connection.pendingStart = 0
                }
            case .wouldBlock:
                break
            case .failed:
                return reset(&state, key)
            }
        }
        state.connections[key] = connection
        if connection.pendingCount == 0 {
            if connection.resetWhenDrained { return reset(&state, key) }
            if connection.guestSendDone { host.shutdownOutput(connection.handle) }
        }
        // Credit back to the guest once half the buffer was freed since it last heard.
        if freedSinceAdvertised(connection), !connection.guestReceiveDone {
            queueCreditUpdate(&state, key, asked: false)
        }
        updateInterest(&state, key)
    }

    // MARK: Host to guest

    /// Asks the host side for the readiness the connection can act on: readable while it is
    /// established, the guest takes data and has credit, and it is not already waiting for
    /// an rx buffer; writable while bytes wait for the host.
    private func updateInterest(_ state: inout State, _ key: Key) {
        guard var connection = state.connections[key] else { return }
        let readable =
            connection.phase == .established && !connection.guestReceiveDone && !connection.hostEnded
            && !connection.queued && connection.credit > 0
        let writable = connection.pendingCount > 0
        if connection.phase == .established, connection.credit == 0, !connection.creditAsked, !connection.hostEnded,
            !connection.guestReceiveDone
        {
            // Out of credit: ask the guest for an update rather than wait for one.
            connection.creditAsked = true
            state.connections[key] = connection
            queueControl(&state, ControlPacket(key: key, operation: VsockHeader.Operation.creditRequest))
        }
        if readable != connection.readable || writable != connection.writable {
            // A change the host side could not make is not recorded as made: the
            // connection could wait forever for a report that never comes, or its socket
            // keep waking the I/O thread. It ends, with a RST.
            guard host.watch(connection.handle, readable: readable, writable: writable) else {
                return reset(&state, key)
            }
            connection.readable = readable
            connection.writable = writable
            state.connections[key] = connection
        }
    }

    private func nextSerial(_ state: inout State) -> UInt64 {
        state.serial &+= 1
        return state.serial
    }

    /// Queues `packet` for an rx buffer; one for a connection (all but RST) goes out only
    /// to that connection, never to a later one with the same ports.
    @discardableResult
    private func queueControl(_ state: inout State, _ packet: ControlPacket) -> Bool {
        guard state.control.count - state.controlStart < Self.maximumControlPackets else {
            state.counters.malformed += 1
            return false
        }
        var packet = packet
        if packet.operation != VsockHeader.Operation.reset { packet.serial = state.connections[packet.key]?.serial ?? 0 }
        state.control.append(packet)
        return true
    }

    /// Whether half the buffer was freed since the guest last heard the connection's
    /// fwd_cnt: worth a CREDIT_UPDATE of its own.
    private func freedSinceAdvertised(_ connection: Connection) -> Bool {
        connection.forwarded &- connection.advertised >= Self.bufferSize / 2
    }

    /// Queues a CREDIT_UPDATE for `key` unless one already waits (which will carry the
    /// counters of when it goes out); `asked`: the guest sent CREDIT_REQUEST.
    private func queueCreditUpdate(_ state: inout State, _ key: Key, asked: Bool) {
        guard var connection = state.connections[key] else { return }
        if asked { connection.updateAsked = true }
        if !connection.updateQueued {
            connection.updateQueued = queueControl(&state, ControlPacket(key: key, operation: VsockHeader.Operation.creditUpdate))
        }
        state.connections[key] = connection
    }

    /// RST to the guest for `key`, and the connection (if any) ends.
    private func reset(_ state: inout State, _ key: Key) {
        close(&state, key)
        queueControl(&state, ControlPacket(key: key, operation: VsockHeader.Operation.reset))
    }

    /// Ends the connection `key`, if open: its host socket is closed, and it leaves
    /// `dataReady` (so that list holds each open connection at most once: a guest that
    /// reopens a connection while posting no rx buffers cannot grow it).
    private func close(_ state: inout State, _ key: Key) {
        guard let connection = state.connections.removeValue(forKey: key) else { return }
        if connection.queued { state.dataReady.removeAll { $0 == key } }
        state.keys[connection.handle] = nil
        host.close(connection.handle)
        resumeListener(&state)
    }

    /// Watches the listener again if it was paused and there is room; if the watch fails
    /// it stays paused, to be tried again when the next connection ends.
    private func resumeListener(_ state: inout State) {
        guard state.listenerPaused, state.connectionCount < Self.maximumConnections else { return }
        state.listenerPaused = !host.watchListener(true)
    }

    /// The listener's watch, asked for by a reset on the host side's thread, failed.
    private func listenerResumeFailed() {
        state.withLock { $0.listenerPaused = true }
    }

    /// The next rx chain: the one kept back, or a new one (malformed ones, and ones too
    /// short for a header, completed with length 0 on the way).
    private func takeReceiveChain(_ state: inout State, queue: inout Virtqueue, memory: GuestMemory) -> Bool {
        if state.hasSpare {
            swap(&state.chain, &state.spare)
            state.hasSpare = false
            return true
        }
        for _ in 0..<Int(queue.size) {
            let result = queue.pop(into: &state.chain, memory: memory)
            if result == .empty { return false }
            if result == .chain, state.chain.readable.isEmpty, state.chain.writableLength >= UInt32(VsockHeader.size) {
                return true
            }
            state.counters.malformed += 1
            state.counters.requests += 1
            queue.push(head: state.chain.head, length: 0, memory: memory)
        }
        return false
    }

    /// Writes `state.packet[0..<count]` into the chain's writable buffers and completes it.
    private func deliver(_ state: inout State, count: Int, queue: inout Virtqueue, memory: GuestMemory) {
        var done = 0
        for element in state.chain.writable where done < count {
            let take = min(Int(element.length), count - done)
            do { try memory.write(state.packet[done..<(done + take)], at: element.address) } catch { break }
            done += take
        }
        queue.push(head: state.chain.head, length: UInt32(done), memory: memory)
        state.counters.requests += 1
    }

    /// The header of a packet from the host to the guest for `key`.
    private func header(_ state: inout State, _ key: Key, operation: UInt16, length: UInt32 = 0, flags: UInt32 = 0)
        -> VsockHeader
    {
        var header = VsockHeader(
            sourceCID: VsockHeader.hostCID, destinationCID: guestCID, sourcePort: key.hostPort,
            destinationPort: key.guestPort, length: length, operation: operation, flags: flags)
        if var connection = state.connections[key] {
            header.bufferAllocation = Self.bufferSize
            header.forwardCount = connection.forwarded
            connection.advertised = connection.forwarded
            state.connections[key] = connection
        }
        return header
    }

    /// Fills rx buffers: control packets first, then data from host sockets that are
    /// ready, as far as each guest socket's credit allows; at most a queue's worth. Returns
    /// whether the driver wants an interrupt.
    private func fillReceive(_ state: inout State) -> Bool {
        guard var queue = state.rx, let memory = state.memory else { return false }
        var completed = false
        defer { state.rx = queue }
        // A queue's worth of rx chains at most. Skipping what needs no chain (a control
        // packet whose connection ended, a connection no longer waiting) does not count:
        // each such step shortens a bounded list, and counting it could leave buffers and
        // waiting data behind with nothing to bring the device back.
        var used = 0
        while used < Int(queue.size) {
            if state.controlStart < state.control.count {
                let packet = state.control[state.controlStart]
                if packet.operation != VsockHeader.Operation.reset, state.connections[packet.key]?.serial != packet.serial {
                    // Its connection ended (a later one may have its ports): dropped.
                    advanceControl(&state)
                    continue
                }
                let isUpdate = packet.operation == VsockHeader.Operation.creditUpdate
                if isUpdate, let connection = state.connections[packet.key], !connection.updateAsked,
                    !freedSinceAdvertised(connection)
                {
                    // Unasked, and packets since told the guest most of it: not needed.
                    state.connections[packet.key]?.updateQueued = false
                    advanceControl(&state)
                    continue
                }
                guard takeReceiveChain(&state, queue: &queue, memory: memory) else { break }
                advanceControl(&state)
                if isUpdate {
                    state.connections[packet.key]?.updateQueued = false
                    state.connections[packet.key]?.updateAsked = false
                }
                let made = header(&state, packet.key, operation: packet.operation, flags: packet.flags)
                made.encode(into: &state.packet, at: 0)
                deliver(&state, count: VsockHeader.size, queue: &queue, memory: memory)
                completed = true
                used += 1
                continue
            }
            guard let key = state.dataReady.first else { break }
            guard var connection = state.connections[key], connection.queued else {
                state.dataReady.removeFirst()
                continue
            }
            let credit = connection.credit
            guard credit > 0, !connection.guestReceiveDone, !connection.hostEnded else {
                state.dataReady.removeFirst()
                connection.queued = false
                state.connections[key] = connection
                updateInterest(&state, key)
                continue
            }
            guard takeReceiveChain(&state, queue: &queue, memory: memory) else { break }
            guard state.chain.writableLength > UInt32(VsockHeader.size) else {
                // Room for a header alone carries no data: kept back, this buffer would be
                // taken again on every readiness of the socket, and the I/O thread would
                // spin. Completed empty and counted; the connection waits for the next one.
                state.counters.malformed += 1
                state.counters.requests += 1
                queue.push(head: state.chain.head, length: 0, memory: memory)
                completed = true
                used += 1
                continue
            }
            state.dataReady.removeFirst()
            connection.queued = false
            state.connections[key] = connection
            let room = Int(state.chain.writableLength) - VsockHeader.size
            let count = min(room, Int(credit), Int(Self.maximumPayload))
            // Straight into the packet buffer, behind the header's room (`count` is at
            // most `maximumPayload`, which the buffer holds after a header).
            var result = SocketTransfer.wouldBlock
            if count > 0 {
                result = host.receive(connection.handle, into: &state.packet, at: VsockHeader.size, count: count, peek: false)
            }
            switch result {
            case .transferred(let n) where n > 0:
                let n = min(n, count)
                connection.sent &+= UInt32(n)
                state.connections[key] = connection
                let made = header(&state, key, operation: VsockHeader.Operation.readWrite, length: UInt32(n))
                made.encode(into: &state.packet, at: 0)
                state.counters.bytes += UInt64(n)
                deliver(&state, count: VsockHeader.size + n, queue: &queue, memory: memory)
                completed = true
                used += 1
            case .transferred:
                // The end of the host's input: the guest hears that no more will come.
                connection.hostEnded = true
                state.connections[key] = connection
                // SEND alone (5.10.6.5): the host will send no more, but it may still take
                // what the guest sends until the guest shuts down its side.
                let flags = VsockHeader.ShutdownFlag.send
                let made = header(&state, key, operation: VsockHeader.Operation.shutdown, flags: flags)
                made.encode(into: &state.packet, at: 0)
                deliver(&state, count: VsockHeader.size, queue: &queue, memory: memory)
                completed = true
                used += 1
            case .wouldBlock:
                swap(&state.chain, &state.spare)
                state.hasSpare = true
            case .failed:
                swap(&state.chain, &state.spare)
                state.hasSpare = true
                reset(&state, key)
                continue
            }
            updateInterest(&state, key)
        }
        return completed && queue.needsInterrupt(memory: memory)
    }

    private func advanceControl(_ state: inout State) {
        state.controlStart += 1
        if state.controlStart == state.control.count {
            state.control.removeAll(keepingCapacity: true)
            state.controlStart = 0
        } else if state.controlStart >= 1024 {
            state.control.removeFirst(state.controlStart)
            state.controlStart = 0
        }
    }
}
