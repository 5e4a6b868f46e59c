import Testing
import VisorCore
@testable import VisorDevices

private let powerOff = DeviceAction.stop(.powerOff(source: "ACPI PM1a control, S5"))

@Suite("ACPI PM1 registers")
struct PM1RegistersTests {

    @Test("power-on: PM1_STS 0, PM1_EN 0, PM1_CNT reads SCI_EN")
    func powerOn() {
        let pm = PM1Registers()
        #expect(pm.status == 0 && pm.enable == 0)
        #expect(pm.control == 0x0001)
        #expect((0...3).map { pm.readEventByte(offset: $0) } == [0, 0, 0, 0])
        #expect((0...1).map { pm.readControlByte(offset: $0) } == [0x01, 0x00])
        #expect(pm.readEventByte(offset: 4) == 0xFF && pm.readControlByte(offset: 2) == 0xFF)
    }

    @Test("PM1_STS is write-1-to-clear, byte by byte; guest writes never set bits")
    func statusW1C() {
        var pm = PM1Registers()
        pm.writeEventByte(offset: 0, value: 0xFF)
        pm.writeEventByte(offset: 1, value: 0xFF)
        #expect(pm.status == 0)
        pm.setStatus(0x8121)
        pm.writeEventByte(offset: 0, value: 0x01)
        #expect(pm.status == 0x8120)
        pm.writeEventByte(offset: 1, value: 0x80)
        #expect(pm.status == 0x0120)
        #expect(pm.readEventByte(offset: 0) == 0x20 && pm.readEventByte(offset: 1) == 0x01)
        pm.writeEventByte(offset: 0, value: 0x00)
        #expect(pm.status == 0x0120, "writing 0 clears nothing")
    }

    @Test("PM1_EN keeps what the guest writes, byte by byte")
    func enable() {
        var pm = PM1Registers()
        pm.writeEventByte(offset: 2, value: 0x21)
        pm.writeEventByte(offset: 3, value: 0x05)
        #expect(pm.enable == 0x0521)
        #expect(pm.readEventByte(offset: 2) == 0x21 && pm.readEventByte(offset: 3) == 0x05)
        pm.writeEventByte(offset: 3, value: 0xFF)
        #expect(pm.enable == 0xFF21)
        pm.writeEventByte(offset: 9, value: 0xFF)
        #expect(pm.enable == 0xFF21 && pm.status == 0)
    }

    @Test("PM1_CNT: SCI_EN reads 1, GBL_RLS and SLP_EN read 0, SLP_TYP and BM_RLD are kept")
    func control() {
        var pm = PM1Registers()
        #expect(pm.writeControl(0x0000) == nil)
        #expect(pm.control == 0x0001, "SCI_EN stays 1 even when written 0")
        #expect(pm.writeControl(0x0C06) == nil)
        #expect(pm.control == 0x0C03, "SLP_TYP 3 and BM_RLD kept, GBL_RLS dropped")
        #expect(pm.sleepType == 3)
    }

    @Test("Linux's power-off: SLP_TYP=5, then SLP_TYP=5 with SLP_EN -> power off")
    func linuxPowerOff() {
        var pm = PM1Registers()
        #expect(pm.writeControl(0x1401) == nil)
        #expect(pm.control == 0x1401)
        #expect(pm.writeControl(0x3401) == .powerOff)
        #expect(pm.control & 0x2000 == 0, "SLP_EN reads 0")
    }

    @Test("SLP_EN acts on the write that sets it, with the SLP_TYP the register then holds")
    func byteWrites() {
        var pm = PM1Registers()
        #expect(pm.writeControl(0x0001, mask: 0x00FF) == nil)
        #expect(pm.writeControl(0x1400, mask: 0xFF00) == nil, "SLP_TYP alone")
        #expect(
            pm.writeControl(0x2000, mask: 0xFF00) == .unsupported(sleepType: 0),
            "a high-byte write replaces SLP_TYP with what it carries")
        var again = PM1Registers()
        #expect(again.writeControl(0x1400, mask: 0xFF00) == nil)
        #expect(again.writeControl(0x0001, mask: 0x00FF) == nil)
        #expect(again.writeControl(0x3400, mask: 0xFF00) == .powerOff)
        var low = PM1Registers()
        #expect(low.writeControl(0x3400, mask: 0x00FF) == nil, "the SLP_EN bit outside the mask is not written")
        #expect(low.sleepType == 0)
    }

    @Test("other sleep types are ignored: SLP_TYP kept, WAK_STS set so a waiting guest resumes")
    func otherSleepTypes() {
        for type: UInt16 in [0, 1, 2, 3, 4, 6, 7] {
            var pm = PM1Registers()
            #expect(pm.writeControl(0x2000 | type << 10) == .unsupported(sleepType: UInt8(type)))
            #expect(pm.sleepType == UInt8(type))
            #expect(pm.status & PM1Registers.wakeStatus != 0)
            pm.writeEventByte(offset: 1, value: 0x80)
            #expect(pm.status == 0)
        }
    }

    @Test("the S5 sleep type is configurable")
    func configurableS5() {
        var pm = PM1Registers(s5SleepType: 0)
        #expect(pm.writeControl(0x3400) == .unsupported(sleepType: 5))
        #expect(pm.writeControl(0x2000) == .powerOff)
    }
}

@Suite("ACPI power management on the port bus")
struct PM1DeviceTests {

    @Test("the default blocks: event 0x600-0x603, control 0x604-0x605")
    func defaults() {
        #expect(PM1Device.defaultEventBlockBase == 0x600 && PM1Device.eventBlockLength == 4)
        #expect(PM1Device.defaultControlBlockBase == 0x604 && PM1Device.controlBlockLength == 2)
        let device = PM1Device()
        #expect(device.portRead(port: 0x604, offset: 4, width: 2) == 0x0001)
        #expect(device.portRead(port: 0x600, offset: 0, width: 2) == 0x0000)
    }

    @Test("Linux's two 16-bit PM1a control writes power off")
    func linuxPowerOff() {
        let device = PM1Device()
        #expect(device.portWrite(port: 0x604, offset: 0, width: 2, value: 0x1401) == .continue)
        #expect(device.portWrite(port: 0x604, offset: 0, width: 2, value: 0x3401) == powerOff)
    }

    @Test("byte writes to either half of PM1_CNT; SLP_EN in the high byte powers off on that write")
    func byteWrites() {
        let device = PM1Device()
        #expect(device.portWrite(port: 0x604, offset: 0, width: 1, value: 0x01) == .continue)
        #expect(device.portWrite(port: 0x605, offset: 1, width: 1, value: 0x14) == .continue)
        #expect(device.portRead(port: 0x605, offset: 1, width: 1) == 0x14)
        #expect(device.portWrite(port: 0x605, offset: 1, width: 1, value: 0x34) == powerOff)
    }

    @Test("another sleep type continues; SLP_TYP reads back, SLP_EN does not")
    func otherSleep() {
        let device = PM1Device()
        #expect(device.portWrite(port: 0x604, offset: 0, width: 2, value: 0x2C01) == .continue)
        #expect(device.portRead(port: 0x604, offset: 0, width: 2) == 0x0C01)
        #expect(device.portRead(port: 0x601, offset: 1, width: 1) == 0x80, "WAK_STS")
    }

    @Test("status and enable through ports: W1C words, kept enable, dword at 0x600 covers both")
    func eventBlock() {
        let device = PM1Device()
        _ = device.portWrite(port: 0x602, offset: 2, width: 2, value: 0x0121)
        #expect(device.portRead(port: 0x602, offset: 2, width: 2) == 0x0121)
        _ = device.portWrite(port: 0x604, offset: 4, width: 2, value: 0x2801)  // S2: sets WAK_STS
        #expect(device.portRead(port: 0x600, offset: 0, width: 4) == 0x0121_8000)
        _ = device.portWrite(port: 0x600, offset: 0, width: 4, value: 0x0300_8000)  // clear WAK_STS, EN = 0x0300
        #expect(device.portRead(port: 0x600, offset: 0, width: 4) == 0x0300_0000)
        #expect(device.registers.enable == 0x0300)
    }

    @Test("accesses straddling the blocks decode lane by lane; lanes outside both read 0xFF and are dropped")
    func straddling() {
        let device = PM1Device()
        _ = device.portWrite(port: 0x602, offset: 2, width: 2, value: 0xBEEF)
        #expect(device.portRead(port: 0x602, offset: 2, width: 4) == 0x0001_BEEF, "EN, then PM1_CNT")
        #expect(device.portRead(port: 0x604, offset: 4, width: 4) == 0xFFFF_0001, "PM1_CNT, then nothing")
        #expect(device.portRead(port: 0x605, offset: 5, width: 4) == 0xFFFF_FF00)
        #expect(device.portRead(port: 0x606, offset: 6, width: 2) == 0xFFFF)
        // A dword at 0x602 whose upper half sets SLP_EN with S5 powers off.
        #expect(device.portWrite(port: 0x602, offset: 2, width: 4, value: 0x3401_0000) == powerOff)
        #expect(device.registers.enable == 0x0000)
        #expect(device.portWrite(port: 0x606, offset: 6, width: 4, value: 0xFFFF_FFFF) == .continue)
        #expect(device.portWrite(port: 0x5FF, offset: 0, width: 2, value: 0xFFFF) == .continue)
        #expect(device.registers.status == 0, "0x600's lane of that word is W1C: nothing to clear")
    }

    @Test("blocks at other bases and another S5 type")
    func otherBases() {
        let device = PM1Device(eventBlockBase: 0xB000, controlBlockBase: 0xB010, s5SleepType: 7)
        #expect(device.portRead(port: 0x604, offset: 0, width: 2) == 0xFFFF)
        #expect(device.portWrite(port: 0xB010, offset: 0, width: 2, value: 0x3401) == .continue)
        #expect(
            device.portWrite(port: 0xB010, offset: 0, width: 2, value: 0x3C01)
                == .stop(.powerOff(source: "ACPI PM1a control, S5")))
        _ = device.portWrite(port: 0xB002, offset: 2, width: 2, value: 0x0100)
        #expect(device.portRead(port: 0xB002, offset: 2, width: 2) == 0x0100)
    }
}

@Suite("Reset control register (port 0xCF9)")
struct ResetControlTests {

    @Test("bit 2 resets; bits 1 and 3 are kept; bit 2 does not read back")
    func model() {
        var reg = ResetControl()
        #expect(reg.value == 0)
        #expect(reg.write(0x02) == false)
        #expect(reg.value == 0x02)
        #expect(reg.write(0x0A) == false)
        #expect(reg.value == 0x0A)
        #expect(reg.write(0x06) == true)
        #expect(reg.value == 0x02)
        #expect(reg.write(0xFF) == true)
        #expect(reg.value == 0xFB)
    }

    @Test("the FADT reset value 0x06 stops with a reset from port 0xCF9")
    func fadtReset() {
        let device = ResetControlDevice()
        #expect(ResetControlDevice.defaultPort == 0xCF9 && ResetControlDevice.portCount == 1)
        #expect(device.portWrite(port: 0xCF9, offset: 0, width: 1, value: 0x06) == .stop(.reset(source: "port 0xCF9")))
    }

    @Test("Linux's CF9 reset: read, write value|2 (continues), write value|6 (resets)")
    func linuxSequence() {
        let device = ResetControlDevice()
        let cf9 = UInt8(device.portRead(port: 0xCF9, offset: 0, width: 1)) & ~0x06
        #expect(device.portWrite(port: 0xCF9, offset: 0, width: 1, value: UInt32(cf9 | 2)) == .continue)
        #expect(device.portRead(port: 0xCF9, offset: 0, width: 1) == 0x02)
        #expect(device.portWrite(port: 0xCF9, offset: 0, width: 1, value: UInt32(cf9 | 6)) == .stop(.reset(source: "port 0xCF9")))
    }

    @Test("wide accesses use the low byte; wide reads have ones above it")
    func widths() {
        let device = ResetControlDevice()
        #expect(device.portWrite(port: 0xCF9, offset: 0, width: 4, value: 0xFFFF_FF0A) == .continue)
        #expect(device.portRead(port: 0xCF9, offset: 0, width: 2) == 0xFF0A)
        #expect(device.portRead(port: 0xCF9, offset: 0, width: 4) == 0xFFFF_FF0A)
        #expect(device.portWrite(port: 0xCF9, offset: 0, width: 2, value: 0x0004) == .stop(.reset(source: "port 0xCF9")))
    }
}
