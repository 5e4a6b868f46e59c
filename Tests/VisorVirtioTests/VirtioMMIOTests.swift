import Synchronization
import Testing
import VisorCore
import VisorMemory
import VisorVirtio

/// The interrupt line as the transport drives it.
final class LineRecorder: Sendable {
    private let state = Mutex<(level: Bool, raises: Int)>((false, 0))
    var level: Bool { state.withLock { $0.level } }
    var raises: Int { state.withLock { $0.raises } }
    func set(_ level: Bool) {
        state.withLock { state in
            if level, !state.level { state.raises += 1 }
            state.level = level
        }
    }
}

/// Register access to a transport, the way a guest's driver makes it.
struct MMIODriver {
    let transport: VirtioMMIOTransport
    func read(_ offset: UInt64, width: UInt8 = 4) -> UInt32 {
        UInt32(truncatingIfNeeded: transport.mmioRead(address: 0xD000_0000 + offset, offset: offset, width: width))
    }
    func write(_ offset: UInt64, _ value: UInt32, width: UInt8 = 4) {
        #expect(
            transport.mmioWrite(address: 0xD000_0000 + offset, offset: offset, width: width, value: UInt64(value)) == .continue)
    }

    typealias R = VirtioMMIOTransport.Register
    typealias S = VirtioMMIOTransport.Status

    /// The Linux driver's sequence up to FEATURES_OK, accepting `features`.
    func negotiate(_ features: UInt64) {
        write(R.status, 0)
        write(R.status, S.acknowledge)
        write(R.status, S.acknowledge | S.driver)
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features))
        write(R.driverFeaturesSelect, 1)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        write(R.status, S.acknowledge | S.driver | S.featuresOK)
    }

    /// Queue `index` at the fake driver's layout.
    func setUpQueue(_ index: UInt32, _ fake: FakeDriver) {
        write(R.queueSelect, index)
        write(R.queueSize, UInt32(fake.size))
        write(R.queueDescriptorLow, UInt32(truncatingIfNeeded: fake.descriptors))
        write(R.queueDescriptorHigh, UInt32(truncatingIfNeeded: fake.descriptors >> 32))
        write(R.queueDriverLow, UInt32(truncatingIfNeeded: fake.available))
        write(R.queueDriverHigh, UInt32(truncatingIfNeeded: fake.available >> 32))
        write(R.queueDeviceLow, UInt32(truncatingIfNeeded: fake.used))
        write(R.queueDeviceHigh, UInt32(truncatingIfNeeded: fake.used >> 32))
        write(R.queueReady, 1)
    }

    func driverOK() { write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK) }
}

@Suite("virtio-mmio transport")
struct VirtioMMIOTests {
    typealias R = VirtioMMIOTransport.Register
    typealias S = VirtioMMIOTransport.Status

    func make(eventIndex: Bool = false) throws -> (MMIODriver, VirtioEntropyDevice, LineRecorder, GuestMemory) {
        let memory = try FakeDriver.memory()
        let device = VirtioEntropyDevice()
        let line = LineRecorder()
        let transport = VirtioMMIOTransport(device: device, memory: memory, eventIndex: eventIndex) { line.set($0) }
        return (MMIODriver(transport: transport), device, line, memory)
    }

    @Test("identification: magic, version 2, device ID, vendor, feature pages with VERSION_1, queue maximum")
    func identification() throws {
        let (driver, _, _, _) = try make()
        #expect(driver.read(R.magic) == 0x7472_6976)
        #expect(driver.read(R.version) == 2)
        #expect(driver.read(R.deviceID) == 4)
        #expect(driver.read(R.vendorID) == VirtioMMIOTransport.vendor)
        driver.write(R.deviceFeaturesSelect, 1)
        #expect(driver.read(R.deviceFeatures) & 1 == 1)  // bit 32
        driver.write(R.deviceFeaturesSelect, 0)
        #expect(driver.read(R.deviceFeatures) == 1 << 28)  // indirect descriptors
        driver.write(R.deviceFeaturesSelect, 0xFFFF_FFFF)
        #expect(driver.read(R.deviceFeatures) == 0)
        #expect(driver.read(R.queueSizeMaximum) == 256)
        #expect(driver.read(R.sharedMemoryLengthLow) == 0xFFFF_FFFF)
        // Narrow accesses to registers read 0; offsets with no register read 0.
        #expect(driver.read(R.magic, width: 1) == 0)
        #expect(driver.read(0x0C4) == 0)
    }

    @Test("QueueSel and QueueNotify take any 32-bit value; a queue that does not exist has size 0 and notifies nothing")
    func anyQueueIndex() throws {
        let (driver, device, _, _) = try make()
        for value: UInt32 in [1, 2, 255, 0x8000_0000, 0xFFFF_FFFF] {
            driver.write(R.queueSelect, value)
            #expect(driver.read(R.queueSizeMaximum) == 0)
            #expect(driver.read(R.queueReady) == 0)
            driver.write(R.queueReady, 1)
            driver.write(R.queueNotify, value)
        }
        #expect(driver.transport.notificationCount == 0)
        #expect(device.counters.requests == 0)
    }

    @Test("FEATURES_OK sticks only for a subset of the offered features that includes VERSION_1")
    func featureNegotiation() throws {
        let (driver, _, _, _) = try make()
        driver.negotiate(VirtioFeature.version1)
        #expect(driver.read(R.status) & S.featuresOK != 0)
        driver.negotiate(VirtioFeature.version1 | 1 << 5)  // not offered
        #expect(driver.read(R.status) & S.featuresOK == 0)
        driver.negotiate(0)  // a legacy driver
        #expect(driver.read(R.status) & S.featuresOK == 0)
        // FEATURES_OK without DRIVER first.
        driver.write(R.status, 0)
        driver.write(R.status, S.acknowledge | S.featuresOK)
        #expect(driver.read(R.status) & S.featuresOK == 0)
    }

    @Test("the status only gains bits (0 resets); features are fixed at FEATURES_OK; queues writable only before DRIVER_OK")
    func handshakeOrder() throws {
        let (driver, _, _, memory) = try make()
        let fake = FakeDriver(memory: memory)
        // Queue registers before FEATURES_OK are ignored.
        driver.write(R.status, S.acknowledge | S.driver)
        driver.setUpQueue(0, fake)
        #expect(driver.read(R.queueReady) == 0)
        driver.negotiate(VirtioFeature.version1)
        // Feature writes after FEATURES_OK are ignored, so DRIVER_OK activates with VERSION_1 only.
        driver.write(R.driverFeaturesSelect, 0)
        driver.write(R.driverFeatures, 1 << 28)
        driver.setUpQueue(0, fake)
        #expect(driver.read(R.queueReady) == 1)
        driver.driverOK()
        #expect(driver.transport.isActive)
        // Clearing bits is not a transition; queue registers after DRIVER_OK are ignored.
        driver.write(R.status, S.acknowledge)
        #expect(driver.read(R.status) == S.acknowledge | S.driver | S.featuresOK | S.driverOK)
        driver.write(R.queueReady, 0)
        #expect(driver.read(R.queueReady) == 1)
        // DEVICE_NEEDS_RESET is the device's bit: a driver's write of it is ignored.
        driver.write(R.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK | S.deviceNeedsReset)
        #expect(driver.read(R.status) & S.deviceNeedsReset == 0)
        #expect(driver.transport.isActive)
        // Reset.
        driver.write(R.status, 0)
        #expect(driver.read(R.status) == 0)
        #expect(!driver.transport.isActive)
        #expect(driver.read(R.queueReady) == 0)
    }

    @Test("DRIVER_OK with a bad queue sets DEVICE_NEEDS_RESET and raises a configuration-change interrupt")
    func failedActivation() throws {
        for layout in [(size: UInt16(3), used: UInt64(0x3000)), (size: 8, used: 0x3002), (size: 8, used: 0xFFFF8)] {
            let (driver, _, line, memory) = try make()
            driver.negotiate(VirtioFeature.version1)
            driver.setUpQueue(0, FakeDriver(memory: memory, size: layout.size, used: layout.used))
            driver.driverOK()
            #expect(driver.read(R.status) & S.deviceNeedsReset != 0)
            #expect(!driver.transport.isActive)
            #expect(driver.read(R.interruptStatus) == 2)
            #expect(driver.read(R.configurationGeneration) == 1)
            #expect(line.level)
            #expect(driver.transport.activationFailure != nil)
            driver.write(R.interruptAcknowledge, 2)
            #expect(!line.level)
        }
        // No ready queue at all: the entropy device refuses.
        let (driver, _, _, _) = try make()
        driver.negotiate(VirtioFeature.version1)
        driver.driverOK()
        #expect(driver.read(R.status) & S.deviceNeedsReset != 0)
    }

    @Test("entropy: a request is filled with random bytes, completed on the used ring, and interrupts; ACK lowers the line")
    func entropyRequest() throws {
        let (driver, device, line, memory) = try make()
        var fake = FakeDriver(memory: memory)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, fake)
        driver.driverOK()
        try fake.setDescriptor(0, address: 0x10_000, length: 32, flags: Virtqueue.flagWrite)
        try fake.makeAvailable(0)
        driver.write(R.queueNotify, 0)
        #expect(fake.usedIndex == 1)
        #expect(fake.usedElement(0) == (0, 32))
        #expect(try memory.read(32, at: 0x10_000) != [UInt8](repeating: 0, count: 32))
        #expect(line.level && line.raises == 1)
        #expect(driver.read(R.interruptStatus) == 1)
        driver.write(R.interruptAcknowledge, 1)
        #expect(!line.level)
        #expect(device.counters.requests == 1 && device.counters.bytes == 32)
    }

    @Test("entropy: a malformed request (a readable buffer, or a bad chain) still completes, with length 0")
    func entropyMalformed() throws {
        let (driver, device, _, memory) = try make()
        var fake = FakeDriver(memory: memory)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, fake)
        driver.driverOK()
        try fake.setDescriptor(0, address: 0x10_000, length: 32)  // readable
        try fake.setDescriptor(1, address: 0x10_000, length: 8, flags: Virtqueue.flagWrite | Virtqueue.flagNext, next: 1)  // loop
        try fake.makeAvailable(0)
        try fake.makeAvailable(1)
        try fake.makeAvailable(200)  // head out of range
        driver.write(R.queueNotify, 0)
        #expect(fake.usedIndex == 3)
        #expect(fake.usedElement(0) == (0, 0))
        #expect(fake.usedElement(1) == (1, 0))
        #expect(fake.usedElement(2) == (200, 0))
        #expect(device.counters.malformed == 3)
        #expect(try memory.read(32, at: 0x10_000) == [UInt8](repeating: 0, count: 32))
    }

    @Test("entropy: a request is capped at 64 KiB whatever its buffers add up to")
    func entropyCap() throws {
        let (driver, device, _, memory) = try make()
        var fake = FakeDriver(memory: memory)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, fake)
        driver.driverOK()
        try fake.setDescriptor(0, address: 0x20_000, length: 0x10_000, flags: Virtqueue.flagWrite | Virtqueue.flagNext, next: 1)
        try fake.setDescriptor(1, address: 0x40_000, length: 0x10_000, flags: Virtqueue.flagWrite)
        try fake.makeAvailable(0)
        driver.write(R.queueNotify, 0)
        #expect(fake.usedElement(0) == (0, 0x10_000))
        #expect(device.counters.bytes == 0x10_000)
        #expect(try memory.read(16, at: 0x40_000) == [UInt8](repeating: 0, count: 16))
    }

    @Test("a notification before DRIVER_OK, or after a reset, does nothing")
    func notifyWhenInactive() throws {
        let (driver, device, _, memory) = try make()
        var fake = FakeDriver(memory: memory)
        try fake.setDescriptor(0, address: 0x10_000, length: 32, flags: Virtqueue.flagWrite)
        try fake.makeAvailable(0)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, fake)
        driver.write(R.queueNotify, 0)
        #expect(device.counters.requests == 0)
        driver.driverOK()
        driver.write(R.status, 0)
        driver.write(R.queueNotify, 0)
        #expect(device.counters.requests == 0)
        #expect(fake.usedIndex == 0)
    }
}
