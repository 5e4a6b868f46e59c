import Synchronization
import Testing
import VisorCore
import VisorMemory
import VisorSnapshot
import VisorVirtio

/// The transport's snapshot state, with the entropy device and a fake driver: what a
/// restored device must do with a queue the driver set up in the old process.
@Suite("virtio-mmio transport snapshots")
struct VirtioSnapshotTests {
    typealias R = VirtioMMIOTransport.Register

    /// An entropy device whose driver negotiated VERSION_1, set up queue 0 and said DRIVER_OK.
    static func activeEntropy() throws -> (
        memory: GuestMemory, transport: VirtioMMIOTransport, driver: MMIODriver, fake: FakeDriver
    ) {
        let memory = try FakeDriver.memory()
        let transport = VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }
        let driver = MMIODriver(transport: transport)
        let fake = FakeDriver(memory: memory)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, fake)
        driver.driverOK()
        return (memory, transport, driver, fake)
    }

    @Test("an active device restored into a new transport serves the next request where the old one stopped")
    func activeDeviceContinues() throws {
        let (memory, old, driver, setUp) = try Self.activeEntropy()
        var fake = setUp
        for head: UInt16 in 0..<3 {
            try fake.setDescriptor(UInt64(head), address: 0x10_000 + 64 * UInt64(head), length: 16, flags: Virtqueue.flagWrite)
            try fake.makeAvailable(head)
            driver.write(R.queueNotify, 0)
        }
        #expect(fake.usedIndex == 3)
        // One more request made available, but its notification went to the old process.
        try fake.setDescriptor(3, address: 0x10_400, length: 16, flags: Virtqueue.flagWrite)
        try fake.makeAvailable(3)
        var writer = SnapshotWriter()
        old.saveState(to: &writer)

        let line = LineRecorder()
        let restored = VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { line.set($0) }
        var reader = SnapshotReader(writer.bytes)
        try restored.restoreState(from: &reader)
        try reader.finish("the transport")
        #expect(restored.isActive)
        // Served once on restore (the lost notification), from the fourth entry: not again
        // from the first.
        #expect(fake.usedIndex == 4)
        #expect(fake.usedElement(3) == (3, 16))
        #expect(line.level, "the used buffer raised the interrupt")
        var again = SnapshotWriter()
        restored.saveState(to: &again)
        #expect(again.bytes.count == writer.bytes.count)
        #expect(MMIODriver(transport: restored).read(R.status) == driver.read(R.status))
    }

    @Test("a restored queue asks for notifications again, whatever suppression the saved rings held")
    func restoreResumesNotifications() throws {
        let (memory, old, _, fake) = try Self.activeEntropy()
        // The old device was polling when it was saved: NO_NOTIFY in used.flags (this driver
        // did not negotiate EVENT_IDX).
        try memory.write(Virtqueue.usedNoNotify, at: fake.used)
        var writer = SnapshotWriter()
        old.saveState(to: &writer)
        let restored = VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }
        var reader = SnapshotReader(writer.bytes)
        try restored.restoreState(from: &reader)
        #expect(restored.isActive)
        #expect(try memory.readUInt16(at: fake.used) == 0)
    }

    @Test("a device the driver never started comes back inactive, with its registers")
    func inactiveDevice() throws {
        let memory = try FakeDriver.memory()
        let old = VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }
        MMIODriver(transport: old).negotiate(VirtioFeature.version1)
        var writer = SnapshotWriter()
        old.saveState(to: &writer)
        let restored = VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }
        var reader = SnapshotReader(writer.bytes)
        try restored.restoreState(from: &reader)
        #expect(!restored.isActive)
        #expect(restored.status == old.status)
    }

    @Test("states the handshake cannot reach are refused: an active device without DRIVER_OK, foreign features")
    func refusals() throws {
        let (memory, old, _, setUp) = try Self.activeEntropy()
        var fake = setUp
        try fake.setAvailableIndex(0)
        var writer = SnapshotWriter()
        old.saveState(to: &writer)
        var noDriverOK = writer.bytes
        noDriverOK[0] &= ~UInt8(VirtioMMIOTransport.Status.driverOK)
        var reader = SnapshotReader(noDriverOK)
        #expect(throws: SnapshotError.self) {
            try VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }.restoreState(from: &reader)
        }
        var foreign = writer.bytes
        foreign[12 + 7] = 0x80  // driver features bit 63
        reader = SnapshotReader(foreign)
        #expect(throws: SnapshotError.invalid("the virtio driver features", reason: "include features the device does not offer"))
        {
            try VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }.restoreState(from: &reader)
        }
        for length in 0..<writer.bytes.count {
            var short = SnapshotReader(Array(writer.bytes.prefix(length)))
            #expect(throws: SnapshotError.self) {
                try VirtioMMIOTransport(device: VirtioEntropyDevice(), memory: memory) { _ in }.restoreState(from: &short)
            }
        }
    }
}
