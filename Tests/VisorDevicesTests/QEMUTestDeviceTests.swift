import Synchronization
import Testing
import VisorCore
@testable import VisorDevices

@Suite("QEMU's test devices")
struct QEMUTestDeviceTests {
    /// Records every line change the device makes.
    final class Lines: Sendable {
        let changes = Mutex<[(UInt32, Bool)]>([])
        var sink: @Sendable (UInt32, Bool) -> Void { { line, high in self.changes.withLock { $0.append((line, high)) } } }
        var all: [String] { changes.withLock { $0.map { "\($0.0)=\($0.1 ? 1 : 0)" } } }
    }

    func read(_ device: QEMUTestDevice, _ port: UInt16, _ width: UInt8) -> UInt32 {
        let base = port >= QEMUTestDevice.interruptLinePort ? QEMUTestDevice.interruptLinePort : QEMUTestDevice.latchPort
        return device.portRead(port: port, offset: port - base, width: width)
    }

    func write(_ device: QEMUTestDevice, _ port: UInt16, _ width: UInt8, _ value: UInt32) {
        let base = port >= QEMUTestDevice.interruptLinePort ? QEMUTestDevice.interruptLinePort : QEMUTestDevice.latchPort
        #expect(device.portWrite(port: port, offset: port - base, width: width, value: value) == .continue)
    }

    @Test("the latch reads back what was written at widths 1, 2 and 4, byte lane by byte lane")
    func latch() {
        let device = QEMUTestDevice(interruptLine: nil)
        #expect(read(device, 0xE0, 4) == 0)
        write(device, 0xE0, 1, 0x1234_5612)
        #expect(read(device, 0xE0, 1) == 0x12)
        #expect(read(device, 0xE0, 4) == 0x12, "a byte write sets one lane")
        write(device, 0xE0, 2, 0x3456)
        #expect(read(device, 0xE0, 2) == 0x3456)
        write(device, 0xE0, 4, 0x789A_BCDE)
        #expect(read(device, 0xE0, 4) == 0x789A_BCDE)
        write(device, 0xE2, 1, 0x55)
        #expect(read(device, 0xE0, 4) == 0x7855_BCDE)
        #expect(read(device, 0xE1, 2) == 0x55BC)
        #expect(read(device, 0xE3, 1) == 0x78)
        // Lanes past 0xE3 read 0xFF and are not written.
        #expect(read(device, 0xE3, 2) == 0xFF78)
        #expect(read(device, 0xE2, 4) == 0xFFFF_7855)
        write(device, 0xE3, 4, 0xAABB_CC11)
        #expect(device.latch == 0x1155_BCDE)
    }

    @Test("line ports raise and lower GSI n by the written byte; reads give the level; past line 23 nothing")
    func interruptLines() {
        let lines = Lines()
        let device = QEMUTestDevice(interruptLine: lines.sink)
        write(device, 0x2000 + 10, 1, 1)
        write(device, 0x2000 + 10, 1, 0)
        write(device, 0x2000 + 5, 1, 0x80)  // any nonzero byte is high
        #expect(read(device, 0x2005, 1) == 1)
        #expect(read(device, 0x2004, 4) == 0x0000_0100)
        write(device, 0x2016, 2, 0x0001)  // lanes: line 22 high, line 23 low
        write(device, 0x2017, 4, 0x0101_0101)  // only line 23 exists
        #expect(lines.all == ["10=1", "10=0", "5=1", "22=1", "23=0", "23=1"])
        #expect(read(device, 0x2017, 2) == 0xFF01)
        #expect(device.lineLevels.enumerated().filter(\.element).map(\.offset) == [5, 22, 23])
    }

    @Test("without an interrupt controller the line ports keep their levels and raise nothing")
    func noController() {
        let device = QEMUTestDevice(interruptLine: nil)
        write(device, 0x2003, 1, 1)
        #expect(read(device, 0x2003, 1) == 1)
    }

    @Test("the MMIO window reads back what was written at widths 1, 2, 4 and 8, across and to its end")
    func iomem() {
        let device = QEMUTestDevice(interruptLine: nil)
        let base = QEMUTestDevice.memoryBase
        #expect(device.mmioWrite(address: base + 0x10, offset: 0x10, width: 8, value: 0x0102_0304_0506_0708) == .continue)
        #expect(device.mmioRead(address: base + 0x10, offset: 0x10, width: 8) == 0x0102_0304_0506_0708)
        #expect(device.mmioRead(address: base + 0x12, offset: 0x12, width: 4) == 0x0304_0506)
        #expect(device.mmioRead(address: base + 0x17, offset: 0x17, width: 2) == 0x0001)
        _ = device.mmioWrite(address: base + 0x11, offset: 0x11, width: 1, value: 0xAA)
        _ = device.mmioWrite(address: base + 0x14, offset: 0x14, width: 2, value: 0xBBCC)
        #expect(device.mmioRead(address: base + 0x10, offset: 0x10, width: 8) == 0x0102_BBCC_0506_AA08)
        let last = UInt64(QEMUTestDevice.memorySize)
        _ = device.mmioWrite(address: base + last - 4, offset: last - 4, width: 8, value: 0x1111_1111_2222_2222)
        #expect(device.mmioRead(address: base + last - 4, offset: last - 4, width: 4) == 0x2222_2222)
        #expect(device.mmioRead(address: base + last - 2, offset: last - 2, width: 4) == 0xFFFF_2222, "past the end: 0xFF")
        #expect(device.mmioRead(address: base + last, offset: last, width: 1) == 0xFF)
    }

    @Test("placed where QEMU puts it: 0xE0-0xE3, 0x2000-0x2017, 64 KiB at 0xFF000000; nothing in the ACPI tables")
    func placement() throws {
        let placed = try QEMUTestDevice(interruptLine: nil).platformDevice()
        #expect(placed.ports.map(\.range) == [try PortRange(base: 0xE0, count: 4), try PortRange(base: 0x2000, count: 24)])
        #expect(placed.mmio.map(\.range) == [try MMIORange(start: 0xFF00_0000, size: 0x1_0000)])
        #expect(placed.aml.isEmpty && placed.irqs.isEmpty)
        let platform = try Platform(kind: .minimal, consoleOutput: { _ in }, irqLine: nil, qemuTestDevices: true)
        #expect(platform.qemuTestDevice != nil)
        var ports = PortBus()
        var mmio = MMIOBus()
        try platform.register(ports: &ports, mmio: &mmio)
        #expect(ports.entry(for: 0x2017)?.name == "qemu-testdev-irq-line")
        #expect(ports.entry(for: 0x2018) == nil)
        let plain = try Platform(kind: .minimal, consoleOutput: { _ in }, irqLine: nil)
        #expect(plain.qemuTestDevice == nil)
    }
}
