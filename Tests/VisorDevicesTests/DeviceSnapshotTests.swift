import Testing
import Synchronization
import VisorCore
import VisorSnapshot
@testable import VisorDevices

/// Saves `source`, restores it into `target` (a device built as the source was), and checks
/// the target saves the same bytes; also that every truncation of the state is refused and
/// leaves the target as it was.
private func checkRoundTrip(_ source: some SnapshotStateful, into target: some SnapshotStateful) throws {
    var writer = SnapshotWriter()
    source.saveState(to: &writer)
    let saved = writer.bytes
    for length in 0..<saved.count {
        var before = SnapshotWriter()
        target.saveState(to: &before)
        var reader = SnapshotReader(Array(saved.prefix(length)))
        #expect(throws: SnapshotError.self) { try target.restoreState(from: &reader) }
        var after = SnapshotWriter()
        target.saveState(to: &after)
        #expect(after.bytes == before.bytes, "a failed restore changed the device")
    }
    var reader = SnapshotReader(saved)
    try target.restoreState(from: &reader)
    try reader.finish("the device state")
    var again = SnapshotWriter()
    target.saveState(to: &again)
    #expect(again.bytes == saved)
}

/// Records every interrupt-line change.
private final class Lines: Sendable {
    let changes = Mutex<[(UInt32, Bool)]>([])
    var line: @Sendable (UInt32, Bool) -> Void { { irq, level in self.changes.withLock { $0.append((irq, level)) } } }
}

@Suite("Device snapshots")
struct DeviceSnapshotTests {
    @Test("COM1: FIFO, registers and a raised line come back; the line is raised again")
    func serial() throws {
        let source = Serial16550Device(output: { _ in }, interruptLine: { _ in })
        _ = source.portWrite(port: 0x3FB, offset: 3, width: 1, value: 0x80)  // DLAB
        _ = source.portWrite(port: 0x3F8, offset: 0, width: 1, value: 0x01)  // DLL 115200
        _ = source.portWrite(port: 0x3FB, offset: 3, width: 1, value: 0x03)  // 8N1
        _ = source.portWrite(port: 0x3F9, offset: 1, width: 1, value: 0x01)  // IER: data
        _ = source.portWrite(port: 0x3FC, offset: 4, width: 1, value: 0x08)  // OUT2
        _ = source.portWrite(port: 0x3FF, offset: 7, width: 1, value: 0x5A)  // SCR
        #expect(source.receive(Array("hi".utf8)) == 2)
        let raised = Mutex<[Bool]>([])
        let target = Serial16550Device(output: { _ in }, interruptLine: { level in raised.withLock { $0.append(level) } })
        try checkRoundTrip(source, into: target)
        #expect(raised.withLock { $0 }.last == true)
        #expect(target.portRead(port: 0x3F8, offset: 0, width: 1) == UInt32(UInt8(ascii: "h")))
        #expect(target.portRead(port: 0x3F8, offset: 0, width: 1) == UInt32(UInt8(ascii: "i")))
        #expect(target.portRead(port: 0x3FF, offset: 7, width: 1) == 0x5A)
        #expect(target.receiveSpace == Serial16550.fifoCapacity)
    }

    @Test("COM1: reserved register bits in a snapshot are refused")
    func serialReservedBits() throws {
        var writer = SnapshotWriter()
        Serial16550Device(output: { _ in }).saveState(to: &writer)
        var bytes = writer.bytes
        bytes[4] = 0xF0  // IER, after an empty FIFO's 4-byte length
        var reader = SnapshotReader(bytes)
        #expect(throws: SnapshotError.invalid("the 16550 IER", reason: "is 0xf0, which sets reserved bits")) {
            try Serial16550Device(output: { _ in }).restoreState(from: &reader)
        }
    }

    @Test("i8042: the output queue, a pending parameter and the keyboard come back")
    func i8042() throws {
        let lines = Lines()
        let source = I8042Device(interruptLine: { _, _ in })
        _ = source.portWrite(port: 0x64, offset: 0, width: 1, value: 0xD2)  // next data byte: keyboard output
        _ = source.portWrite(port: 0x60, offset: 0, width: 1, value: 0x1C)
        _ = source.portWrite(port: 0x60, offset: 0, width: 1, value: 0xED)  // keyboard: set LEDs, waits
        _ = source.portWrite(port: 0x64, offset: 0, width: 1, value: 0x60)  // next data byte: command byte
        let target = I8042Device(interruptLine: lines.line)
        try checkRoundTrip(source, into: target)
        #expect(lines.changes.withLock { $0.map(\.0) } == [I8042Device.keyboardIRQ])
        #expect(target.portRead(port: 0x60, offset: 0, width: 1) == 0x1C)
        #expect(target.portRead(port: 0x60, offset: 0, width: 1) == 0xFA)  // the keyboard's ACK of 0xED
        _ = target.portWrite(port: 0x60, offset: 0, width: 1, value: 0x47)  // the pending command byte
        #expect(target.controller.commandByte == 0x47)
    }

    @Test("CMOS: RAM and the clock's offset come back, so the restored clock is right later")
    func cmos() throws {
        let now = Mutex<Int64>(1_709_991_907)
        let source = CMOSDevice(clock: { now.withLock { $0 } })
        _ = source.portWrite(port: 0x70, offset: 0, width: 1, value: 0x09)  // year
        _ = source.portWrite(port: 0x71, offset: 1, width: 1, value: 0x30)  // 2030
        _ = source.portWrite(port: 0x70, offset: 0, width: 1, value: 0x40)
        _ = source.portWrite(port: 0x71, offset: 1, width: 1, value: 0xA5)  // a RAM byte
        let before = source.guestTime
        now.withLock { $0 += 3600 }  // the snapshot waits an hour
        let target = CMOSDevice(clock: { now.withLock { $0 } })
        try checkRoundTrip(source, into: target)
        #expect(target.guestTime == before + 3600)
        _ = target.portWrite(port: 0x70, offset: 0, width: 1, value: 0x40)
        #expect(target.portRead(port: 0x71, offset: 1, width: 1) == 0xA5)
    }

    @Test("CMOS: a stopped clock comes back stopped at the same time; absurd fields are refused")
    func cmosStopped() throws {
        let source = CMOSDevice(clock: { 1_709_991_907 })
        _ = source.portWrite(port: 0x70, offset: 0, width: 1, value: 0x0B)
        _ = source.portWrite(port: 0x71, offset: 1, width: 1, value: 0x82)  // SET, 24-hour
        let target = CMOSDevice(clock: { 1_800_000_000 })
        try checkRoundTrip(source, into: target)
        #expect(target.cmos.clockStopped)
        #expect(target.guestTime == 1_709_991_907)
        var writer = SnapshotWriter()
        source.saveState(to: &writer)
        var bytes = writer.bytes
        bytes[4 + 128 + 1 + 8 + 1 + 8] = 13  // the month field
        var reader = SnapshotReader(bytes)
        #expect(throws: SnapshotError.invalid("the stopped RTC's month", reason: "is 13")) {
            try target.restoreState(from: &reader)
        }
    }

    @Test("PM1, the reset register, PCI CONFIG_ADDRESS and the POST code come back")
    func legacy() throws {
        let pm1 = PM1Device(), pm1Target = PM1Device()
        _ = pm1.portWrite(port: 0x602, offset: 2, width: 2, value: 0x0121)  // PM1_EN
        try checkRoundTrip(pm1, into: pm1Target)
        #expect(pm1Target.registers.enable == 0x0121)

        let reset = ResetControlDevice(), resetTarget = ResetControlDevice()
        _ = reset.portWrite(port: 0xCF9, offset: 0, width: 1, value: 0x02)
        try checkRoundTrip(reset, into: resetTarget)
        #expect(resetTarget.portRead(port: 0xCF9, offset: 0, width: 1) == 0x02)

        let pci = PCIConfigDevice(), pciTarget = PCIConfigDevice()
        _ = pci.portWrite(port: 0xCF8, offset: 0, width: 4, value: 0x8000_F800)
        try checkRoundTrip(pci, into: pciTarget)
        #expect(pciTarget.configAddress == 0x8000_F800)

        let post = PostCodeDevice(), postTarget = PostCodeDevice()
        _ = post.portWrite(port: 0x80, offset: 0, width: 1, value: 0x42)
        try checkRoundTrip(post, into: postTarget)
        #expect(postTarget.lastCode == 0x42 && postTarget.writes == 1)
    }

    @Test("every PC device with state has it in its platform entry")
    func platformEntries() throws {
        let platform = try Platform(kind: .pc, consoleOutput: { _ in }, irqLine: nil)
        let named = platform.devices.filter { $0.state != nil }.map(\.name)
        #expect(named == ["com1", "cmos-rtc", "i8042", "acpi-pm1a", "reset-control", "post-code", "pci-config"])
    }
}
