import Foundation
import Testing
import VisorHost
import VisorMemory
import VisorVirtio

/// A block device on a temporary file of `sectors` sectors (byte i is i % 251), driven
/// directly through the device interface by a fake driver.
final class BlockHarness {
    let memory: GuestMemory
    var fake: FakeDriver
    let device: VirtioBlockDevice
    let path: String
    let interrupt = VirtioInterrupt { _ in }
    static let header: UInt64 = 0x10_000
    static let data: UInt64 = 0x20_000
    static let status: UInt64 = 0x30_000
    typealias T = VirtioBlockDevice.RequestType

    init(
        sectors: Int = 8, readOnly: Bool = false, openReadOnly: Bool = false, rateLimiter: RateLimiter = RateLimiter(),
        clock: @escaping @Sendable () -> UInt64 = { 0 }, eventIndex: Bool = false
    ) throws {
        path = NSTemporaryDirectory() + "swiftvisor-block-\(UUID().uuidString).img"
        try Data(Self.pattern(sectors * 512)).write(to: URL(fileURLWithPath: path))
        memory = try FakeDriver.memory()
        fake = FakeDriver(memory: memory)
        device = VirtioBlockDevice(
            file: try HostDiskFile.open(path, readOnly: openReadOnly), readOnly: readOnly, rateLimiter: rateLimiter,
            clock: clock)
        try device.activate(
            features: 0, queues: [try fake.queue(eventIndex: eventIndex)], memory: memory, interrupt: interrupt)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    static func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8($0 % 251) } }

    var file: [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }

    /// Submits a request: a header of `headerLength` bytes, `dataLength` bytes of data
    /// (device-writable when `dataWritable`), and a 1-byte status (device-writable unless
    /// `statusReadable`). Returns the used length and the status byte (0xFF when untouched).
    func submit(
        type: UInt32, sector: UInt64, dataLength: UInt32 = 0, dataWritable: Bool = false,
        headerLength: UInt32 = 16, statusReadable: Bool = false
    ) throws -> (length: UInt32, status: UInt8) {
        let before = try makeAvailable(
            type: type, sector: sector, dataLength: dataLength, dataWritable: dataWritable, headerLength: headerLength,
            statusReadable: statusReadable)
        device.notify(queue: 0)
        #expect(fake.usedIndex == before &+ 1)
        return (fake.usedElement(before).length, try memory.readUInt8(at: Self.status))
    }

    /// Writes a request as `submit` does and makes it available, with no notification;
    /// returns the used index before it.
    @discardableResult
    func makeAvailable(
        type: UInt32, sector: UInt64, dataLength: UInt32 = 0, dataWritable: Bool = false,
        headerLength: UInt32 = 16, statusReadable: Bool = false
    ) throws -> UInt16 {
        try memory.write(type, at: Self.header)
        try memory.write(UInt32(0), at: Self.header + 4)
        try memory.write(sector, at: Self.header + 8)
        try memory.write(UInt8(0xFF), at: Self.status)
        try fake.setDescriptor(0, address: Self.header, length: headerLength, flags: Virtqueue.flagNext, next: 1)
        var statusIndex: UInt16 = 1
        if dataLength > 0 {
            let flags = Virtqueue.flagNext | (dataWritable ? Virtqueue.flagWrite : 0)
            try fake.setDescriptor(1, address: Self.data, length: dataLength, flags: flags, next: 2)
            statusIndex = 2
        }
        try fake.setDescriptor(
            UInt64(statusIndex), address: Self.status, length: 1, flags: statusReadable ? 0 : Virtqueue.flagWrite)
        let before = fake.usedIndex
        try fake.makeAvailable(0)
        return before
    }
}

@Suite("virtio block device")
struct VirtioBlockTests {
    typealias T = VirtioBlockDevice.RequestType
    typealias F = VirtioBlockDevice.Feature

    @Test("configuration: capacity, seg_max, blk_size; features; reads past the end are 0")
    func configuration() throws {
        let h = try BlockHarness(sectors: 8)
        #expect(h.device.deviceType == 2)
        #expect(h.device.queueMaximumSizes == [256])
        #expect(h.device.deviceFeatures == F.segmentMaximum | F.blockSize | F.flush)
        #expect(h.device.readConfiguration(offset: 0, width: 8) == 8)
        #expect(h.device.readConfiguration(offset: 0, width: 4) == 8)
        #expect(h.device.readConfiguration(offset: 12, width: 4) == 254)
        #expect(h.device.readConfiguration(offset: 20, width: 4) == 512)
        #expect(h.device.readConfiguration(offset: 21, width: 1) == 2)
        #expect(h.device.readConfiguration(offset: 22, width: 4) == 0)
        #expect(h.device.readConfiguration(offset: 0x100, width: 8) == 0)
        #expect(h.device.readConfiguration(offset: UInt64.max, width: 8) == 0)
    }

    @Test("IN reads sectors into the data buffers; used length is data plus status")
    func read() throws {
        let h = try BlockHarness()
        let result = try h.submit(type: T.read, sector: 1, dataLength: 1024, dataWritable: true)
        #expect(result == (1025, 0))
        #expect(try h.memory.read(1024, at: BlockHarness.data) == Array(BlockHarness.pattern(4096)[512..<1536]))
        #expect(h.device.counters == VirtioCounters(requests: 1, malformed: 0, bytes: 1024))
    }

    @Test("OUT writes the data buffers to the file; used length is the status byte")
    func write() throws {
        let h = try BlockHarness()
        try h.memory.fill(0xAB, count: 512, at: BlockHarness.data)
        let result = try h.submit(type: T.write, sector: 3, dataLength: 512)
        #expect(result == (1, 0))
        var expected = BlockHarness.pattern(4096)
        expected.replaceSubrange(1536..<2048, with: repeatElement(0xAB, count: 512))
        #expect(h.file == expected)
    }

    @Test("FLUSH syncs the file and succeeds")
    func flush() throws {
        let h = try BlockHarness()
        #expect(try h.submit(type: T.flush, sector: 0) == (1, 0))
    }

    @Test("GET_ID writes the 20-byte ID string")
    func getID() throws {
        let h = try BlockHarness()
        #expect(try h.submit(type: T.getID, sector: 0, dataLength: 20, dataWritable: true) == (21, 0))
        var expected = Array("swiftvisor".utf8)
        expected += [UInt8](repeating: 0, count: 10)
        #expect(try h.memory.read(20, at: BlockHarness.data) == expected)
    }

    @Test("an unknown request type gets UNSUPP")
    func unsupported() throws {
        let h = try BlockHarness()
        #expect(try h.submit(type: 3, sector: 0) == (1, 2))
        #expect(try h.submit(type: 0xFFFF_FFFF, sector: 0, dataLength: 512, dataWritable: true) == (1, 2))
    }

    @Test("a request reaching past the capacity gets IOERR and moves nothing")
    func beyondCapacity() throws {
        let h = try BlockHarness(sectors: 8)
        #expect(try h.submit(type: T.read, sector: 7, dataLength: 1024, dataWritable: true) == (1, 1))
        #expect(try h.submit(type: T.read, sector: 8, dataLength: 512, dataWritable: true) == (1, 1))
        #expect(try h.submit(type: T.write, sector: 8, dataLength: 512) == (1, 1))
        #expect(try h.memory.read(1024, at: BlockHarness.data) == [UInt8](repeating: 0, count: 1024))
        #expect(h.file == BlockHarness.pattern(4096))
        // The last sector itself is fine.
        #expect(try h.submit(type: T.read, sector: 7, dataLength: 512, dataWritable: true) == (513, 0))
    }

    @Test("sectors near 2^64 overflow in the offset arithmetic and get IOERR, not a trap")
    func sectorOverflow() throws {
        let h = try BlockHarness()
        for sector: UInt64 in [UInt64.max, UInt64.max / 512, UInt64.max / 512 + 1, (1 << 55) - 1] {
            #expect(try h.submit(type: T.read, sector: sector, dataLength: 512, dataWritable: true) == (1, 1))
            #expect(try h.submit(type: T.write, sector: sector, dataLength: 512) == (1, 1))
        }
        #expect(h.file == BlockHarness.pattern(4096))
    }

    @Test("a header shorter than 16 bytes is malformed: length 0, status untouched")
    func shortHeader() throws {
        let h = try BlockHarness()
        #expect(try h.submit(type: T.read, sector: 0, dataLength: 512, dataWritable: true, headerLength: 15) == (0, 0xFF))
        #expect(h.device.counters.malformed == 1)
        #expect(try h.memory.read(512, at: BlockHarness.data) == [UInt8](repeating: 0, count: 512))
    }

    @Test("a status byte in a device-readable descriptor is malformed: nothing written")
    func statusReadOnly() throws {
        let h = try BlockHarness()
        try h.memory.fill(0xAB, count: 512, at: BlockHarness.data)
        #expect(try h.submit(type: T.write, sector: 0, dataLength: 512, statusReadable: true) == (0, 0xFF))
        #expect(try h.submit(type: T.flush, sector: 0, statusReadable: true) == (0, 0xFF))
        #expect(h.device.counters.malformed == 2)
        #expect(h.file == BlockHarness.pattern(4096))
    }

    @Test("a read-only disk offers F_RO and refuses writes with IOERR, whatever was negotiated")
    func readOnlyWrite() throws {
        for openReadOnly in [false, true] {
            let h = try BlockHarness(readOnly: !openReadOnly, openReadOnly: openReadOnly)
            #expect(h.device.deviceFeatures & F.readOnly != 0)
            try h.memory.fill(0xAB, count: 512, at: BlockHarness.data)
            #expect(try h.submit(type: T.write, sector: 0, dataLength: 512) == (1, 1))
            #expect(h.file == BlockHarness.pattern(4096))
            #expect(try h.submit(type: T.read, sector: 0, dataLength: 512, dataWritable: true) == (513, 0))
            #expect(try h.submit(type: T.flush, sector: 0) == (1, 0))
        }
    }

    @Test("data that is not a whole number of sectors gets IOERR")
    func partialSector() throws {
        let h = try BlockHarness()
        #expect(try h.submit(type: T.read, sector: 0, dataLength: 100, dataWritable: true) == (1, 1))
        #expect(try h.submit(type: T.write, sector: 0, dataLength: 513) == (1, 1))
        #expect(try h.memory.read(100, at: BlockHarness.data) == [UInt8](repeating: 0, count: 100))
        #expect(h.file == BlockHarness.pattern(4096))
    }

    @Test("opening refuses a missing path, a directory and a size not a multiple of 512")
    func openRefusals() throws {
        #expect(throws: HostFileError.self) { try HostDiskFile.open("/nonexistent/disk.img", readOnly: true) }
        #expect(throws: HostFileError.self) { try HostDiskFile.open(NSTemporaryDirectory(), readOnly: true) }
        let path = NSTemporaryDirectory() + "swiftvisor-block-\(UUID().uuidString).img"
        try Data(count: 1000).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: HostFileError.self) { try HostDiskFile.open(path, readOnly: true) }
    }
}
