package import VisorMemory
package import VisorHost
import Synchronization

/// The block device (virtio 1.2, section 5.2; device ID 2): one request queue, backed by a
/// disk image the machine opened once (`HostDiskFile`).
///
/// A request is a 16-byte header (type, reserved, sector) in device-readable buffers,
/// copied out once and then checked; data buffers (readable for a write, writable for a
/// read); and a status byte, the last byte of the last device-writable buffer. Data moves
/// between guest RAM and the file with `GuestMemory.readFromFile`/`writeToFile`, through
/// no host buffer, and a request allocates nothing.
///
/// A chain whose header is shorter than 16 bytes, or that has no writable byte for the
/// status, is malformed: it completes with length 0 and nothing else is touched. A request
/// that reaches past the capacity (checked arithmetic), whose data is not a whole number of
/// sectors, or that writes a read-only disk gets `ioError`; an unknown type gets
/// `unsupported`. A read-only disk offers VIRTIO_BLK_F_RO and refuses writes whatever the
/// driver negotiated. One notification serves at most one queue's worth of requests.
package final class VirtioBlockDevice: VirtioDevice {
    package static let queueSize: UInt16 = 256
    package static let sectorSize: UInt64 = 512
    /// The most data buffers a request may have (offered as seg_max): the queue less the
    /// header and status.
    package static let segmentMaximum: UInt32 = UInt32(queueSize) - 2
    /// The length of the ID string GET_ID returns.
    package static let identifierLength = 20

    /// Request types (5.2.6).
    package enum RequestType {
        package static let read: UInt32 = 0
        package static let write: UInt32 = 1
        package static let flush: UInt32 = 4
        package static let getID: UInt32 = 8
    }

    /// Request status values (5.2.6).
    package enum Status {
        package static let ok: UInt8 = 0
        package static let ioError: UInt8 = 1
        package static let unsupported: UInt8 = 2
    }

    /// Device feature bits (5.2.3).
    package enum Feature {
        package static let segmentMaximum: UInt64 = 1 << 2
        package static let readOnly: UInt64 = 1 << 5
        package static let blockSize: UInt64 = 1 << 6
        package static let flush: UInt64 = 1 << 9
    }

    private struct State {
        var queue: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioBlockDevice.queueSize))
        var counters = VirtioCounters()
    }
    private let state = Mutex(State())
    private let file: HostDiskFile
    /// Whether writes are refused: the file was opened read-only, or the disk was configured so.
    package let readOnly: Bool
    /// The capacity in 512-byte sectors.
    package let capacity: UInt64
    /// The ID string, exactly `identifierLength` bytes (zero-padded).
    private let identifier: [UInt8]
    /// The configuration space: capacity, size_max, seg_max, geometry, blk_size.
    private let configuration: [UInt8]

    /// A block device on `file`, read-only when `readOnly` or when the file was opened so;
    /// `identifier` is the GET_ID string (cut to 20 bytes).
    package init(file: HostDiskFile, readOnly: Bool = false, identifier: String = "swiftvisor") {
        self.file = file
        self.readOnly = readOnly || file.readOnly
        self.capacity = file.size / Self.sectorSize
        var id = Array(identifier.utf8.prefix(Self.identifierLength))
        id.append(contentsOf: repeatElement(0, count: Self.identifierLength - id.count))
        self.identifier = id
        var configuration = [UInt8](repeating: 0, count: 24)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for i in 0..<width { configuration[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
        put(file.size / Self.sectorSize, at: 0, width: 8)
        put(UInt64(Self.segmentMaximum), at: 12, width: 4)
        put(Self.sectorSize, at: 20, width: 4)
        self.configuration = configuration
    }

    package var deviceType: UInt32 { 2 }
    package var deviceFeatures: UInt64 {
        Feature.segmentMaximum | Feature.blockSize | Feature.flush | (readOnly ? Feature.readOnly : 0)
    }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize] }
    package var supportsEventIndex: Bool { true }

    /// Requests completed, malformed chains among them, and data bytes moved.
    package var counters: VirtioCounters { state.withLock { $0.counters } }

    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<UInt64(min(width, 8)) {
            let (at, overflow) = offset.addingReportingOverflow(i)
            guard !overflow, at < UInt64(configuration.count) else { break }
            value |= UInt64(configuration[Int(at)]) << (8 * i)
        }
        return value
    }

    /// Nothing in the configuration is writable (no WCE or discard features).
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        guard let queue = queues.first ?? nil else { throw VirtioActivationError("the request queue is not ready") }
        state.withLock { state in
            state.queue = queue
            state.memory = memory
            state.interrupt = interrupt
        }
    }

    package func reset() {
        state.withLock { state in
            state.queue = nil
            state.memory = nil
            state.interrupt = nil
        }
    }

    package func notify(queue index: Int) {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            guard var queue = state.queue, let memory = state.memory else { return nil }
            let served = queue.serveAvailable(memory: memory, chain: &state.chain, counters: &state.counters) {
                serve($0, memory: memory)
            }
            state.queue = queue
            if served.more { state.interrupt?.reschedule(queue: index) }
            return served.interrupt ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    /// Serves the request in `chain`: the bytes written into its writable buffers (data and
    /// status) and the data bytes moved, or nil when the chain is malformed.
    private func serve(_ chain: borrowing DescriptorChain, memory: GuestMemory) -> VirtioCompletion? {
        guard chain.readableLength >= 16, let last = chain.writable.last, last.length > 0 else { return nil }
        // The header, copied once, byte by byte, whatever buffers it spans.
        var low: UInt64 = 0
        var high: UInt64 = 0
        var got: UInt64 = 0
        for element in chain.readable where got < 16 {
            let take = min(UInt64(element.length), 16 - got)
            for i in 0..<take {
                guard let byte = try? memory.readUInt8(at: element.address + i) else { return nil }
                if got < 8 { low |= UInt64(byte) << (8 * got) } else { high |= UInt64(byte) << (8 * (got - 8)) }
                got += 1
            }
        }
        let type = UInt32(truncatingIfNeeded: low)
        let sector = high
        // The chain was checked to lie in RAM, so the status address cannot wrap.
        let statusAddress = last.address + UInt64(last.length) - 1
        var status = Status.ok
        var dataWritten: UInt32 = 0
        var moved: UInt64 = 0
        switch type {
        case RequestType.read, RequestType.write:
            let isWrite = type == RequestType.write
            let length = isWrite ? UInt64(chain.readableLength) - 16 : UInt64(chain.writableLength) - 1
            if let start = range(sector: sector, length: length), !(isWrite && readOnly) {
                let complete: Bool
                (moved, complete) = transfer(chain, write: isWrite, start: start, length: length, memory: memory)
                if !isWrite { dataWritten = UInt32(moved) }
                if !complete { status = Status.ioError }
            } else {
                status = Status.ioError
            }
        case RequestType.flush:
            if !file.sync() { status = Status.ioError }
        case RequestType.getID:
            dataWritten = copyIdentifier(chain, memory: memory)
        default:
            status = Status.unsupported
        }
        do { try memory.write(status, at: statusAddress) } catch { return nil }
        return VirtioCompletion(written: dataWritten + 1, bytes: moved)
    }

    /// The byte offset of `length` bytes at `sector` when they are whole sectors and lie
    /// within the capacity, else nil.
    private func range(sector: UInt64, length: UInt64) -> UInt64? {
        guard length % Self.sectorSize == 0 else { return nil }
        let (start, overflow) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !overflow else { return nil }
        let (end, overflow2) = start.addingReportingOverflow(length)
        guard !overflow2, end <= file.size else { return nil }
        return start
    }

    /// Moves `length` data bytes between the file at `start` and the chain's data buffers:
    /// for a write, the readable buffers after the 16-byte header; for a read, the writable
    /// buffers before the status byte. Returns the bytes moved and whether that was all.
    private func transfer(
        _ chain: borrowing DescriptorChain, write: Bool, start: UInt64, length: UInt64, memory: GuestMemory
    ) -> (UInt64, Bool) {
        var skip: UInt64 = write ? 16 : 0
        var left = length
        var offset = start
        let buffers = write ? chain.readable : chain.writable
        for element in buffers where left > 0 {
            var address = element.address
            var count = UInt64(element.length)
            if skip > 0 {
                let skipped = min(skip, count)
                skip -= skipped
                address += skipped
                count -= skipped
            }
            count = min(count, left)
            guard count > 0 else { continue }
            let done: Int
            do {
                done =
                    write
                    ? try memory.writeToFile(fd: file.fd, offset: offset, from: address, count: Int(count))
                    : try memory.readFromFile(fd: file.fd, offset: offset, into: address, count: Int(count))
            } catch {
                return (length - left, false)
            }
            left -= UInt64(done)
            offset += UInt64(done)
            if UInt64(done) < count { return (length - left, false) }
        }
        return (length - left, left == 0)
    }

    /// Writes the ID string into the writable buffers before the status byte, as much as
    /// fits; returns the bytes written.
    private func copyIdentifier(_ chain: borrowing DescriptorChain, memory: GuestMemory) -> UInt32 {
        var left = min(Int(chain.writableLength) - 1, Self.identifierLength)
        var done = 0
        for element in chain.writable where left > 0 {
            let count = min(Int(element.length), left)
            do { try memory.write(identifier[done..<(done + count)], at: element.address) } catch { break }
            done += count
            left -= count
        }
        return UInt32(done)
    }
}
