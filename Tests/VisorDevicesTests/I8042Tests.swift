import Testing
import Synchronization
import VisorCore
@testable import VisorDevices

/// Records every change the device drives on its interrupt lines, in order.
private final class LineRecorder: Sendable {
    let events = Mutex<[String]>([])
    var callback: @Sendable (UInt32, Bool) -> Void {
        { irq, level in self.events.withLock { $0.append("\(irq)\(level ? "+" : "-")") } }
    }
    func take() -> [String] {
        events.withLock { events in
            defer { events = [] }; return events
        }
    }
}

private let dataPort = I8042Device.dataPort
private let commandPort = I8042Device.commandPort

extension I8042 {
    /// Reads every waiting byte.
    fileprivate mutating func drain() -> [UInt8] {
        var bytes: [UInt8] = []
        while status & I8042.statusOutputFull != 0 { bytes.append(readData()) }
        return bytes
    }

    /// A command with no reset expected.
    fileprivate mutating func send(command: UInt8) {
        #expect(writeCommand(command) == nil)
    }

    fileprivate mutating func send(data: UInt8) {
        #expect(writeData(data) == nil)
    }
}

@Suite("i8042 keyboard controller model")
struct I8042ModelTests {

    @Test("power-on state: status 0x14, command byte 0x65, empty queue, output port 0x03")
    func powerOn() {
        var kbc = I8042()
        #expect(kbc.readStatus() == 0x14, "system flag and not-inhibited; OBF, IBF, AUX, timeout clear")
        #expect(kbc.commandByte == 0x65)
        #expect(kbc.outputCount == 0)
        #expect(kbc.outputPort == 0x03)
        #expect(!kbc.keyboardInterruptLevel && !kbc.auxInterruptLevel)
        #expect(kbc.readData() == 0, "empty output buffer reads 0 before any byte was read")
        #expect(kbc.keyboardScanning && kbc.keyboardScanSet == 2 && kbc.keyboardLEDs == 0)
    }

    @Test("status bit 3 tells whether the last write went to the command port")
    func commandDataBit() {
        var kbc = I8042()
        kbc.send(command: 0xAE)
        #expect(kbc.readStatus() & I8042.statusCommandData != 0)
        kbc.send(data: 0xF4)
        #expect(kbc.readStatus() & I8042.statusCommandData == 0)
        #expect(kbc.drain() == [0xFA])
    }

    @Test("0x20 reads the command byte, 0x60 writes it; status bit 2 follows its system flag")
    func commandByteReadWrite() {
        var kbc = I8042()
        kbc.send(command: 0x20)
        #expect(kbc.readStatus() == 0x1D, "OBF set, controller byte (AUX clear), command bit set")
        #expect(kbc.readData() == 0x65)
        kbc.send(command: 0x60)
        #expect(kbc.outputCount == 0, "0x60 waits for its parameter and answers nothing")
        kbc.send(data: 0x00)
        #expect(kbc.commandByte == 0x00)
        #expect(kbc.readStatus() & I8042.statusSystemFlag == 0)
        kbc.send(command: 0x20)
        #expect(kbc.drain() == [0x00])
        kbc.send(command: 0x60)
        kbc.send(data: 0x47)
        #expect(kbc.commandByte == 0x47)
        #expect(kbc.readStatus() & I8042.statusSystemFlag != 0)
    }

    @Test("0x21-0x3F and 0x61-0x7F read and write the other 31 bytes of internal RAM")
    func internalRAM() {
        var kbc = I8042()
        for index: UInt8 in 1...0x1F {
            kbc.send(command: 0x60 + index)
            kbc.send(data: index &* 7)
        }
        for index: UInt8 in 1...0x1F {
            kbc.send(command: 0x20 + index)
            #expect(kbc.drain() == [index &* 7])
        }
        #expect(kbc.commandByte == 0x65, "RAM writes above byte 0 leave the command byte alone")
    }

    @Test("self-test 0xAA -> 0x55; interface tests 0xAB and 0xA9 -> 0x00; 0xA4 -> 0xF1; 0xC0 -> 0x80; 0xE0 -> 0x00")
    func testsAndQueries() {
        var kbc = I8042()
        for (cmd, reply): (UInt8, UInt8) in [(0xAA, 0x55), (0xAB, 0x00), (0xA9, 0x00), (0xA4, 0xF1), (0xC0, 0x80), (0xE0, 0x00)] {
            kbc.send(command: cmd)
            #expect(kbc.readStatus() & I8042.statusAuxData == 0, "controller replies are not AUX data")
            #expect(kbc.drain() == [reply], "command 0x\(String(cmd, radix: 16))")
        }
    }

    @Test("0xAD/0xAE and 0xA7/0xA8 set and clear the disable bits of the command byte")
    func enableDisable() {
        var kbc = I8042()
        kbc.send(command: 0xAD)
        #expect(kbc.commandByte & I8042.ctrKeyboardDisable != 0)
        kbc.send(command: 0xAE)
        #expect(kbc.commandByte & I8042.ctrKeyboardDisable == 0)
        kbc.send(command: 0xA8)
        #expect(kbc.commandByte & I8042.ctrAuxDisable == 0)
        kbc.send(command: 0xA7)
        #expect(kbc.commandByte & I8042.ctrAuxDisable != 0)
        #expect(kbc.commandByte == 0x65)
        #expect(kbc.outputCount == 0, "none of them answers")
    }

    @Test("0xD0 reads the output port with the buffer-full bits; 0xD1 writes it; 0xDD/0xDF gate A20")
    func outputPort() {
        var kbc = I8042()
        kbc.send(command: 0xD0)
        #expect(kbc.outputPort == 0x13, "its own reply is waiting: keyboard buffer full")
        #expect(kbc.drain() == [0x03])
        kbc.send(command: 0xD1)
        kbc.send(data: 0xDF)  // Linux's A20 write: reset line high, no reset
        #expect(kbc.outputPort == 0xCF, "bits 4 and 5 are computed, not stored")
        kbc.send(command: 0xDD)
        #expect(kbc.outputPort & I8042.outputPortA20 == 0)
        kbc.send(command: 0xDF)
        #expect(kbc.outputPort & I8042.outputPortA20 != 0)
        kbc.send(command: 0xD3)
        kbc.send(data: 0x11)
        #expect(kbc.outputPort & 0x30 == 0x20, "an AUX byte waiting sets bit 5")
        _ = kbc.drain()
        kbc.send(command: 0xD1)
        #expect(kbc.writeData(0xFE) == .outputPortWrite, "reset line (bit 0) low resets")
    }

    @Test("pulse commands 0xF0-0xFF reset when they pulse bit 0 (0xFE), not otherwise (0xFF)")
    func pulseReset() {
        var kbc = I8042()
        #expect(kbc.writeCommand(0xFE) == .pulseCommand)
        #expect(kbc.writeCommand(0xF0) == .pulseCommand)
        #expect(kbc.writeCommand(0xFC) == .pulseCommand)
        #expect(kbc.writeCommand(0xFF) == nil, "Linux's null command for SMM firmware")
        #expect(kbc.writeCommand(0xF1) == nil)
        #expect(kbc.outputCount == 0)
    }

    @Test("0xD2 and 0xD3 put the next data byte in the queue as keyboard or AUX data")
    func writeOutputBuffers() {
        var kbc = I8042()
        kbc.send(command: 0xD2)
        kbc.send(data: 0x1C)
        #expect(kbc.readStatus() & (I8042.statusOutputFull | I8042.statusAuxData) == I8042.statusOutputFull)
        #expect(kbc.readData() == 0x1C)
        kbc.send(command: 0xD3)
        kbc.send(data: 0x5A)
        #expect(kbc.readStatus() & (I8042.statusOutputFull | I8042.statusAuxData) == I8042.statusOutputFull | I8042.statusAuxData)
        #expect(kbc.readData() == 0x5A)
        #expect(kbc.readStatus() & I8042.statusAuxData == 0, "AUX bit goes with the byte")
    }

    @Test("0xD4 sends to the empty AUX port: 0xFE with the timeout and AUX bits")
    func auxDeviceAbsent() {
        var kbc = I8042()
        kbc.send(command: 0xD4)
        kbc.send(data: 0xF2)
        let status = kbc.readStatus()
        #expect(status & I8042.statusTimeout != 0)
        #expect(status & I8042.statusAuxData != 0)
        #expect(kbc.readData() == 0xFE)
        #expect(kbc.readStatus() & I8042.statusTimeout == 0, "timeout bit goes with the byte")
    }

    @Test("a data write without a pending controller command goes to the keyboard")
    func dataGoesToKeyboard() {
        var kbc = I8042()
        kbc.send(command: 0xD1)  // pending parameter...
        kbc.send(command: 0xAE)  // ...cancelled by a new command
        kbc.send(data: 0xF4)
        #expect(kbc.drain() == [0xFA], "the byte reached the keyboard, not the output port")
        #expect(kbc.outputPort == 0x03)
    }

    @Test("unknown controller commands are ignored")
    func unknownCommands() {
        var kbc = I8042()
        for cmd: UInt8 in [0x00, 0x10, 0x90, 0xA0, 0xB5, 0xC8, 0xE5] {
            kbc.send(command: cmd)
        }
        #expect(kbc.outputCount == 0)
        #expect(kbc.commandByte == 0x65)
    }
}

@Suite("i8042 keyboard device")
struct I8042KeyboardTests {

    @Test("0xFF reset -> 0xFA 0xAA and default state")
    func reset() {
        var kbc = I8042()
        kbc.send(data: 0xED); kbc.send(data: 0x07)
        kbc.send(data: 0xF5)
        _ = kbc.drain()
        kbc.send(data: 0xFF)
        #expect(kbc.drain() == [0xFA, 0xAA])
        #expect(kbc.keyboardScanning && kbc.keyboardLEDs == 0 && kbc.keyboardScanSet == 2)
    }

    @Test("0xF2 identify -> 0xFA 0xAB 0x41 translated, 0xFA 0xAB 0x83 untranslated")
    func identify() {
        var kbc = I8042()
        kbc.send(data: 0xF2)
        #expect(kbc.drain() == [0xFA, 0xAB, 0x41])
        kbc.send(command: 0x60)
        kbc.send(data: 0x25)  // translation off
        kbc.send(data: 0xF2)
        #expect(kbc.drain() == [0xFA, 0xAB, 0x83])
    }

    @Test("0xF4 enables and 0xF5 disables scanning; 0xF6 and 0xF7-0xFD are acknowledged")
    func enableDisable() {
        var kbc = I8042()
        kbc.send(data: 0xF5)
        #expect(!kbc.keyboardScanning)
        kbc.send(data: 0xF4)
        #expect(kbc.keyboardScanning)
        for cmd: UInt8 in 0xF6...0xFD { kbc.send(data: cmd) }
        #expect(kbc.drain() == [UInt8](repeating: 0xFA, count: 10))
    }

    @Test("0xED sets the LEDs and 0xF3 the typematic rate: ACK for the command and the parameter")
    func parameters() {
        var kbc = I8042()
        kbc.send(data: 0xED)
        kbc.send(data: 0x05)
        #expect(kbc.keyboardLEDs == 0x05)
        kbc.send(data: 0xF3)
        kbc.send(data: 0x20)
        #expect(kbc.keyboardTypematic == 0x20)
        #expect(kbc.drain() == [0xFA, 0xFA, 0xFA, 0xFA])
    }

    @Test("0xF0 queries (0) or sets (1-3) the scan-code set; other values are refused")
    func scanSet() {
        var kbc = I8042()
        kbc.send(data: 0xF0); kbc.send(data: 0x00)
        #expect(kbc.drain() == [0xFA, 0xFA, 0x41], "ACK for the command and for the parameter, then set 2, translated")
        kbc.send(data: 0xF0); kbc.send(data: 0x03)
        #expect(kbc.keyboardScanSet == 3)
        kbc.send(data: 0xF0); kbc.send(data: 0x09)
        #expect(kbc.keyboardScanSet == 3)
        #expect(kbc.drain() == [0xFA, 0xFA, 0xFA, 0xFE])
        kbc.send(command: 0x60); kbc.send(data: 0x25)
        kbc.send(data: 0xF0); kbc.send(data: 0x00)
        #expect(kbc.drain() == [0xFA, 0xFA, 0x03], "set 3, untranslated")
    }

    @Test("a command byte in place of a parameter starts the new command")
    func commandCancelsParameter() {
        var kbc = I8042()
        kbc.send(data: 0xED)
        kbc.send(data: 0xF5)
        #expect(!kbc.keyboardScanning)
        #expect(kbc.keyboardLEDs == 0)
        #expect(kbc.drain() == [0xFA, 0xFA])
    }

    @Test("0xEE echoes, 0xFE resends the last byte, unknown bytes get 0xFE")
    func echoResendUnknown() {
        var kbc = I8042()
        kbc.send(data: 0xEE)
        #expect(kbc.drain() == [0xEE])
        kbc.send(data: 0xF2)
        _ = kbc.drain()
        kbc.send(data: 0xFE)
        #expect(kbc.drain() == [0x41], "the last byte sent was the second ID byte (translated)")
        for byte: UInt8 in [0x00, 0x42, 0x7F, 0xEF, 0xF1] {
            kbc.send(data: byte)
            #expect(kbc.drain() == [0xFE], "byte 0x\(String(byte, radix: 16))")
        }
    }

    @Test("a flood of commands fills the 16-byte queue and drops the rest; reads past the end repeat the last byte")
    func flood() {
        var kbc = I8042()
        for _ in 0..<1000 { kbc.send(data: 0xF2) }
        #expect(kbc.outputCount == I8042.queueCapacity)
        let bytes = kbc.drain()
        #expect(bytes.count == 16)
        #expect(Array(bytes.prefix(6)) == [0xFA, 0xAB, 0x41, 0xFA, 0xAB, 0x41])
        #expect(kbc.readData() == bytes.last)
        #expect(kbc.readData() == bytes.last)
        #expect(kbc.readStatus() & I8042.statusOutputFull == 0)
        kbc.send(data: 0xEE)
        #expect(kbc.drain() == [0xEE], "the queue works again once emptied")
    }
}

@Suite("i8042 on the port bus")
struct I8042DeviceTests {

    @Test("ports 0x60 and 0x64 by number; wide accesses use the low byte; other ports read all ones")
    func portsAndWidths() {
        let device = I8042Device()
        #expect(device.portRead(port: commandPort, offset: 0, width: 1) == 0x14)
        #expect(device.portRead(port: commandPort, offset: 0, width: 2) == 0xFF14)
        #expect(device.portRead(port: commandPort, offset: 0, width: 4) == 0xFFFF_FF14)
        #expect(device.portWrite(port: commandPort, offset: 0, width: 4, value: 0xFFFF_FF20) == .continue)
        #expect(device.portRead(port: dataPort, offset: 0, width: 2) == 0xFF65)
        #expect(device.portRead(port: 0x61, offset: 1, width: 1) == 0xFF)
        #expect(device.portWrite(port: 0x61, offset: 1, width: 1, value: 0xFE) == .continue)
        #expect(device.portRead(port: 0x62, offset: 2, width: 4) == 0xFFFF_FFFF)
    }

    @Test("0xFE stops the VM with a reset from \"i8042\"; the output port's reset line from \"i8042 output port\"")
    func resets() {
        let device = I8042Device()
        #expect(device.portWrite(port: commandPort, offset: 0, width: 1, value: 0xFE) == .stop(.reset(source: "i8042")))
        #expect(device.portWrite(port: commandPort, offset: 0, width: 1, value: 0xD1) == .continue)
        #expect(device.portWrite(port: dataPort, offset: 0, width: 1, value: 0xDF) == .continue)
        #expect(device.portWrite(port: commandPort, offset: 0, width: 1, value: 0xD1) == .continue)
        #expect(device.portWrite(port: dataPort, offset: 0, width: 1, value: 0x00) == .stop(.reset(source: "i8042 output port")))
    }

    @Test("IRQ 1 rises when a byte is waiting and the command byte enables it, and falls when it is read")
    func keyboardInterrupt() {
        let lines = LineRecorder()
        let device = I8042Device(interruptLine: lines.callback)
        _ = device.portWrite(port: commandPort, offset: 0, width: 1, value: 0xAA)
        #expect(lines.take() == ["1+"])
        #expect(device.portRead(port: commandPort, offset: 0, width: 1) & 1 == 1)
        #expect(lines.take() == [], "a status read changes nothing")
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0x55)
        #expect(lines.take() == ["1-"])
        // Three bytes: one edge each.
        _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: 0xF2)
        #expect(lines.take() == ["1+"])
        for expected: UInt32 in [0xFA, 0xAB] {
            #expect(device.portRead(port: dataPort, offset: 0, width: 1) == expected)
            #expect(lines.take() == ["1-", "1+"])
        }
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0x41)
        #expect(lines.take() == ["1-"])
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0x41, "empty: the last byte again")
        #expect(lines.take() == [])
    }

    @Test("no IRQ while the command byte disables it; enabling it with a byte waiting raises the line")
    func interruptEnable() {
        let lines = LineRecorder()
        let device = I8042Device(interruptLine: lines.callback)
        _ = device.portWrite(port: commandPort, offset: 0, width: 1, value: 0x60)
        _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: 0x64)  // KBDINT and AUXINT off
        _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: 0xEE)
        _ = device.portWrite(port: commandPort, offset: 0, width: 1, value: 0xD3)
        _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: 0x77)
        #expect(lines.take() == [])
        // Enable both; the keyboard byte is at the head, so IRQ 1 rises; IRQ 12 waits its turn.
        _ = device.portWrite(port: commandPort, offset: 0, width: 1, value: 0x60)
        _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: 0x47)
        #expect(lines.take() == ["1+"])
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0xEE)
        #expect(lines.take() == ["1-", "12+"])
        #expect(device.portRead(port: commandPort, offset: 0, width: 1) & 0x21 == 0x21)
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0x77)
        #expect(lines.take() == ["12-"])
    }

    @Test("hostile guest: 20,000 random accesses never break the queue bound or the line levels")
    func fuzz() {
        let lines = LineRecorder()
        let device = I8042Device(interruptLine: lines.callback)
        var rng = SplitMix(seed: 0x8042)
        var keyboardLine = false, auxLine = false
        for _ in 0..<20_000 {
            let port = rng.next() % 2 == 0 ? dataPort : commandPort
            let width = UInt8([1, 2, 4][Int(rng.next() % 3)])
            if rng.next() % 2 == 0 {
                var value = UInt32(truncatingIfNeeded: rng.next())
                // Keep the reset commands out so that the run is not all stops.
                if port == commandPort && value & 0xF1 == 0xF0 { value |= 1 }
                _ = device.portWrite(port: port, offset: 0, width: width, value: value)
            } else {
                let value = device.portRead(port: port, offset: 0, width: width)
                #expect(value | 0xFF == UInt32(truncatingIfNeeded: allOnes(width: width)))
            }
            for event in lines.take() {
                switch event {
                case "1+": #expect(!keyboardLine); keyboardLine = true
                case "1-": #expect(keyboardLine); keyboardLine = false
                case "12+": #expect(!auxLine); auxLine = true
                default: #expect(auxLine); auxLine = false
                }
            }
            let state = device.controller
            #expect(state.outputCount <= I8042.queueCapacity)
            #expect(keyboardLine == state.keyboardInterruptLevel)
            #expect(auxLine == state.auxInterruptLevel)
        }
    }
}

/// A small deterministic generator for the fuzz tests.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Linux 6.1's i8042 probe and atkbd's first commands, step by step, against the device. The
/// driver polls with a timeout (`i8042_wait_read`: 10,000 polls, 50 us apart) and waits for
/// interrupts with timeouts; here every byte it waits for must already be there.
@Suite("Linux 6.1 i8042 probe against the device")
struct I8042LinuxProbeTests {

    /// The driver side: polls like `__i8042_command`, failing where Linux would time out.
    private struct Driver {
        let device: I8042Device
        var status: UInt8 { UInt8(truncatingIfNeeded: device.portRead(port: commandPort, offset: 0, width: 1)) }

        /// i8042_flush: at most 16 bytes.
        func flush() -> Bool {
            var count = 0
            while status & 0x01 != 0 {
                count += 1
                if count > 16 { return false }
                _ = device.portRead(port: dataPort, offset: 0, width: 1)
            }
            return true
        }

        /// __i8042_command: (command >> 12) parameters out, (command >> 8) & 0xF bytes back.
        /// Returns nil where Linux would time out or see an AUX-loop error.
        func command(_ code: Int, _ params: [UInt8] = []) -> [UInt8]? {
            #expect(status & 0x02 == 0, "IBF never set")
            #expect(device.portWrite(port: I8042Device.commandPort, offset: 0, width: 1, value: UInt32(code & 0xFF)) == .continue)
            for byte in params.prefix((code >> 12) & 0xF) {
                _ = device.portWrite(port: I8042Device.dataPort, offset: 0, width: 1, value: UInt32(byte))
            }
            var replies: [UInt8] = []
            for _ in 0..<((code >> 8) & 0xF) {
                let now = status
                guard now & 0x01 != 0 else { return nil }  // wait_read would time out
                if code == 0x11D3 && now & 0x20 == 0 { return nil }
                replies.append(UInt8(truncatingIfNeeded: device.portRead(port: dataPort, offset: 0, width: 1)))
            }
            return replies
        }
    }

    @Test("controller check, init, AUX detection (no MUX), keyboard port and atkbd's ID")
    func probe() throws {
        let lines = LineRecorder()
        let device = I8042Device(interruptLine: lines.callback)
        let driver = Driver(device: device)

        // i8042_platform_init (x86): A20 through the output port, then the null command.
        #expect(driver.command(0x10D1, [0xDF]) == [])
        #expect(driver.command(0x00FF) == [])

        // i8042_controller_check and i8042_controller_init.
        #expect(driver.flush())
        let ctr0 = try #require(driver.command(0x0120))
        let ctr1 = try #require(driver.command(0x0120))
        #expect(ctr0 == ctr1, "a stable CTR read")
        #expect(driver.status & 0x10 != 0, "no 'Keylock active' warning")
        var ctr = ctr0[0]
        ctr |= 0x10; ctr &= ~0x01  // disable keyboard and its IRQ
        #expect(ctr & 0x40 != 0, "translation stays on: not i8042_direct")
        #expect(driver.command(0x1060, [ctr]) == [])
        #expect(driver.flush())

        // i8042_check_aux: loopback, then toggling AUX through the command byte.
        #expect(driver.flush())
        #expect(driver.command(0x11D3, [0x5A]) == [0x5A], "AUX loopback works: an AUX port exists")
        #expect(driver.command(0x00A7) == [])
        #expect(try #require(driver.command(0x0120))[0] & 0x20 != 0)
        #expect(driver.command(0x00A8) == [])
        #expect(try #require(driver.command(0x0120))[0] & 0x20 == 0)
        // IRQ delivery test: enable AUX and its IRQ, loop 0xA5 back without reading it.
        ctr &= ~0x20; ctr |= 0x02
        #expect(driver.command(0x1060, [ctr]) == [])
        _ = lines.take()
        #expect(driver.command(0x10D3, [0xA5]) == [])
        #expect(lines.take() == ["12+"], "IRQ 12 fires for the test byte")
        #expect(driver.status & 0x21 == 0x21)
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0xA5)
        #expect(lines.take() == ["12-"])
        ctr |= 0x20; ctr &= ~0x02
        #expect(driver.command(0x1060, [ctr]) == [])

        // i8042_check_mux: an echo of the third byte means no active multiplexer.
        #expect(driver.flush())
        #expect(driver.command(0x11D3, [0xF0]) == [0xF0])
        #expect(driver.command(0x11D3, [0x56]) == [0x56])
        #expect(driver.command(0x11D3, [0xA4]) == [0xA4], "param == val: Linux decides there is no MUX")

        // i8042_enable_aux_port, then i8042_setup_kbd: i8042_enable_kbd_port.
        ctr &= ~0x20; ctr |= 0x02
        #expect(driver.command(0x1060, [ctr]) == [])
        ctr &= ~0x10; ctr |= 0x01
        #expect(driver.command(0x1060, [ctr]) == [])
        _ = lines.take()

        // atkbd_probe: GETID through the keyboard port; each byte arrives with an IRQ 1 edge.
        #expect(device.portWrite(port: dataPort, offset: 0, width: 1, value: 0xF2) == .continue)
        var id: [UInt8] = []
        while driver.status & 0x01 != 0 {
            #expect(driver.status & 0x20 == 0)
            id.append(UInt8(truncatingIfNeeded: device.portRead(port: dataPort, offset: 0, width: 1)))
        }
        #expect(id == [0xFA, 0xAB, 0x41])
        #expect(lines.take() == ["1+", "1-", "1+", "1-", "1+", "1-"])
        // atkbd_deactivate, LEDs, activate.
        for byte: UInt8 in [0xF5, 0xED, 0x00, 0xF4] {
            _ = device.portWrite(port: dataPort, offset: 0, width: 1, value: UInt32(byte))
            #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0xFA)
        }
        // psmouse's first command to the (empty) AUX port fails at once with a timeout.
        #expect(driver.command(0x10D4, [0xF2]) == [])
        #expect(driver.status & 0x61 == 0x61, "OBF, AUX and timeout")
        #expect(device.portRead(port: dataPort, offset: 0, width: 1) == 0xFE)
    }
}

@Suite("i8042: keys pressed by the host")
struct I8042HostKeysTests {
    @Test("Ctrl-Alt-Delete arrives translated to set 1 (1D 38 E0 53, then the releases), each byte with an IRQ 1 edge")
    func ctrlAltDeleteTranslated() {
        let lines = LineRecorder()
        let device = I8042Device(interruptLine: lines.callback)
        #expect(device.pressCtrlAltDelete())
        var bytes: [UInt8] = []
        while device.portRead(port: commandPort, offset: 0, width: 1) & 0x01 != 0 {
            bytes.append(UInt8(truncatingIfNeeded: device.portRead(port: dataPort, offset: 0, width: 1)))
        }
        #expect(bytes == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])
        #expect(lines.take() == Array(repeating: ["1+", "1-"], count: 8).flatMap { $0 })
    }

    @Test("with translation off the keyboard's set-2 bytes arrive as they are")
    func ctrlAltDeleteUntranslated() {
        var kbc = I8042()
        kbc.send(command: 0x60)
        kbc.send(data: 0x25)  // the power-on command byte without translation (bit 6)
        let typed = kbc.keyboardType(I8042.ctrlAltDelete)
        #expect(typed)
        #expect(kbc.drain() == I8042.ctrlAltDelete)
    }

    @Test("all or nothing: with too little room in the 16-byte queue nothing is queued")
    func fullQueue() {
        var kbc = I8042()
        var typed = kbc.keyboardType(I8042.ctrlAltDelete)
        #expect(typed && kbc.outputCount == 8)
        typed = kbc.keyboardType(I8042.ctrlAltDelete)
        #expect(typed && kbc.outputCount == 16)
        typed = kbc.keyboardType(I8042.ctrlAltDelete)
        #expect(!typed && kbc.outputCount == 16)
        _ = kbc.drain()
        typed = kbc.keyboardType(I8042.ctrlAltDelete)
        #expect(typed)
    }
}
