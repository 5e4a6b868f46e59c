package import VisorHost

/// The header in front of every vsock packet (virtio 1.2, section 5.10.6), 44 bytes,
/// little-endian. The device copies it out of guest memory once and then checks it.
package struct VsockHeader: Equatable, Sendable {
    package static let size = 44
    /// The host's context ID, as the guest addresses it.
    package static let hostCID: UInt64 = 2
    /// `type` of a stream socket, the only one offered.
    package static let typeStream: UInt16 = 1

    /// Operations (5.10.6).
    package enum Operation {
        package static let request: UInt16 = 1
        package static let response: UInt16 = 2
        package static let reset: UInt16 = 3
        package static let shutdown: UInt16 = 4
        package static let readWrite: UInt16 = 5
        package static let creditUpdate: UInt16 = 6
        package static let creditRequest: UInt16 = 7
    }

    /// SHUTDOWN flags: the sender will receive no more, or send no more.
    package enum ShutdownFlag {
        package static let receive: UInt32 = 1
        package static let send: UInt32 = 2
    }

    package var sourceCID: UInt64 = 0
    package var destinationCID: UInt64 = 0
    package var sourcePort: UInt32 = 0
    package var destinationPort: UInt32 = 0
    /// The payload's length.
    package var length: UInt32 = 0
    package var type: UInt16 = VsockHeader.typeStream
    package var operation: UInt16 = 0
    package var flags: UInt32 = 0
    /// The sender's receive buffer, and the bytes it has taken from it so far (credit).
    package var bufferAllocation: UInt32 = 0
    package var forwardCount: UInt32 = 0

    package init(
        sourceCID: UInt64 = 0, destinationCID: UInt64 = 0, sourcePort: UInt32 = 0, destinationPort: UInt32 = 0,
        length: UInt32 = 0, type: UInt16 = VsockHeader.typeStream, operation: UInt16 = 0, flags: UInt32 = 0,
        bufferAllocation: UInt32 = 0, forwardCount: UInt32 = 0
    ) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.type = type
        self.operation = operation
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    /// Decodes the first 44 bytes of `bytes`; nil when there are fewer.
    package init?(_ bytes: some RandomAccessCollection<UInt8>) {
        guard bytes.count >= Self.size else { return nil }
        let base = bytes.startIndex
        func field(_ offset: Int, _ width: Int) -> UInt64 {
            var value: UInt64 = 0
            for i in 0..<width {
                value |= UInt64(bytes[bytes.index(base, offsetBy: offset + i)]) << (8 * UInt64(i))
            }
            return value
        }
        sourceCID = field(0, 8)
        destinationCID = field(8, 8)
        sourcePort = UInt32(truncatingIfNeeded: field(16, 4))
        destinationPort = UInt32(truncatingIfNeeded: field(20, 4))
        length = UInt32(truncatingIfNeeded: field(24, 4))
        type = UInt16(truncatingIfNeeded: field(28, 2))
        operation = UInt16(truncatingIfNeeded: field(30, 2))
        flags = UInt32(truncatingIfNeeded: field(32, 4))
        bufferAllocation = UInt32(truncatingIfNeeded: field(36, 4))
        forwardCount = UInt32(truncatingIfNeeded: field(40, 4))
    }

    /// The 44 encoded bytes.
    package var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        encode(into: &out, at: 0)
        return out
    }

    /// Writes the 44 bytes into `buffer[index..<index + 44]`, which must lie inside it:
    /// the device builds each packet in one buffer it keeps, with no array per packet.
    package func encode(into buffer: inout [UInt8], at index: Int) {
        precondition(index >= 0 && index <= buffer.count - Self.size, "a vsock header past its buffer")
        var at = index
        func put(_ value: UInt64, _ width: Int) {
            for i in 0..<width { buffer[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            at += width
        }
        put(sourceCID, 8)
        put(destinationCID, 8)
        put(UInt64(sourcePort), 4)
        put(UInt64(destinationPort), 4)
        put(UInt64(length), 4)
        put(UInt64(type), 2)
        put(UInt64(operation), 2)
        put(UInt64(flags), 4)
        put(UInt64(bufferAllocation), 4)
        put(UInt64(forwardCount), 4)
    }
}

/// What the vsock device asks of the host side: stream sockets named by handle, and
/// readiness reported back through `VirtioVsockDevice.hostSocketReady(_:events:)` and
/// `listenerReady()`. `VsockUnixHost` is the real one (Unix sockets on an I/O thread);
/// tests and fuzz targets use fakes.
///
/// The device calls these while holding its lock, so none may call back into the device
/// synchronously.
package protocol VsockHostSide: AnyObject, Sendable {
    /// Starts reporting to `device`: the listener's connections and sockets' readiness.
    func start(device: VirtioVsockDevice)
    /// A waiting host connection, `.none` when there is none, `.failed` when accepting
    /// failed (say, out of descriptors).
    func accept() -> SocketAccept
    /// Whether the listener's connections are reported (off while accepting fails); returns
    /// whether they now are as asked (false: the watch could not be made).
    func watchListener(_ on: Bool) -> Bool
    /// A socket connected to the host's listener for `port`, or nil when none listens.
    func connect(port: UInt32) -> Int32?
    func send(_ handle: Int32, _ bytes: ArraySlice<UInt8>) -> SocketTransfer
    /// At most `count` bytes into `buffer` from `offset` on (never past its end);
    /// `.transferred(0)` is the end of input.
    func receive(_ handle: Int32, into buffer: inout [UInt8], at offset: Int, count: Int, peek: Bool) -> SocketTransfer
    func shutdownOutput(_ handle: Int32)
    /// Closes the socket and ends its reports.
    func close(_ handle: Int32)
    /// Which readiness of `handle` to report; neither ends its reports until asked again.
    /// Returns whether the reports now are as asked (false: the watch could not be made or
    /// changed, and the device ends the connection).
    func watch(_ handle: Int32, readable: Bool, writable: Bool) -> Bool
    /// Runs `work` where the host side's reports run (the I/O thread), after what runs
    /// there now and what was asked before it: the device's reset, which a vCPU thread
    /// makes, hands it the socket closes and listener watch a vCPU thread's seccomp filter
    /// refuses.
    func perform(_ work: @escaping @Sendable () -> Void)
    /// The monotonic clock the device's deadlines are in, in nanoseconds.
    var now: UInt64 { get }
    /// Calls the device's `deadlinePassed()` where the reports run, once `now` reaches
    /// `deadline`; a later call replaces the deadline asked before.
    func wake(at deadline: UInt64)
}
