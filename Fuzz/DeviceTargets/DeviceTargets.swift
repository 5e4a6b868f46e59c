// Device models by register: bytes become a sequence of register accesses.
import Synchronization
import VisorCore
import VisorDevices

/// Each step is one op byte and its operands. Op (low 2 bits): 0 write, 1 read,
/// 2 one received byte, 3 a burst of received bytes (count in the next byte).
package func fuzzSerial16550(_ data: [UInt8]) {
    var input = ByteReader(data)
    var uart = Serial16550()
    // The model: THR writes with DLAB clear and loopback off leave the UART, in order.
    var divisorLatch = false
    var loopback = false
    var expected: [UInt8] = []
    var sent: [UInt8] = []
    while !input.isAtEnd {
        let op = input.byte()
        // Mostly the eight registers; sometimes any offset, to reach the "no such register" path.
        let offset = op & 0x80 != 0 ? input.byte() : (op >> 2) & 7
        switch op & 3 {
        case 0:
            let value = input.byte()
            if offset == 0 && !divisorLatch && !loopback { expected.append(value) }
            if offset == 3 { divisorLatch = value & 0x80 != 0 }
            if offset == 4 { loopback = value & 0x10 != 0 }
            if let byte = uart.write(offset: offset, value: value) { sent.append(byte) }
        case 1:
            let before = uart.receivedCount
            let value = uart.read(offset: offset)
            if offset > 7 { precondition(value == 0xFF, "16550: offset \(offset) read \(value), not 0xFF") }
            if offset == 0 && !divisorLatch {
                precondition(uart.receivedCount == max(before - 1, 0), "16550: RBR read did not pop one byte")
            }
        case 2:
            let before = uart.receivedCount
            let taken = uart.receive(input.byte())
            precondition(taken == (before < Serial16550.fifoCapacity), "16550: receive took a byte into a full FIFO")
        default:
            for _ in 0..<Int(input.byte()) { uart.receive(input.byte()) }
        }
        precondition(uart.receivedCount <= Serial16550.fifoCapacity, "16550: receive FIFO holds \(uart.receivedCount) bytes")
        precondition(uart.receiveSpace == Serial16550.fifoCapacity - uart.receivedCount, "16550: receive space disagrees")
        if uart.ier == 0 { precondition(!uart.interruptPending, "16550: interrupt pending with IER=0") }
        if uart.pcInterruptLine { precondition(uart.mcr & Serial16550.mcrOUT2 != 0, "16550: PC line high without OUT2") }
        precondition(uart.interruptPending == (uart.iir & 1 == 0), "16550: IIR bit 0 disagrees with the pending interrupt")
    }
    precondition(sent == expected, "16550: sent \(sent), the THR writes were \(expected)")
}

/// Records the level last driven on each interrupt line.
package final class LineRecorder: Sendable {
    private let levels = Mutex<[UInt32: Bool]>([:])
    package init() {}
    package func set(_ irq: UInt32, _ level: Bool) {
        levels.withLock { levels in
            precondition(levels[irq, default: false] != level, "IRQ \(irq) driven to \(level) twice in a row")
            levels[irq] = level
        }
    }
    package func level(_ irq: UInt32) -> Bool { levels.withLock { $0[irq, default: false] } }
}

/// Each step is an op byte: bit 0 read or write, bit 1 data or command port, bits 2-3
/// the access width; a write takes the next byte as its value.
package func fuzzI8042(_ data: [UInt8]) {
    var input = ByteReader(data)
    let lines = LineRecorder()
    let device = I8042Device(interruptLine: { irq, level in lines.set(irq, level) })
    while !input.isAtEnd {
        let op = input.byte()
        let port = op & 2 == 0 ? I8042Device.dataPort : I8042Device.commandPort
        let width: UInt8 = [1, 1, 2, 4][Int(op >> 2) & 3]
        if op & 1 == 0 {
            let value = device.portRead(port: port, offset: 0, width: width)
            if width > 1 {
                precondition(value >> 8 == UInt32(allOnes(width: width) >> 8), "i8042: upper bytes of a wide IN are not ones")
            }
        } else {
            _ = device.portWrite(port: port, offset: 0, width: width, value: UInt32(input.byte()))
        }
        let controller = device.controller
        precondition(controller.outputCount <= I8042.queueCapacity, "i8042: output queue holds \(controller.outputCount)")
        precondition(lines.level(I8042Device.keyboardIRQ) == controller.keyboardInterruptLevel, "i8042: IRQ 1 level is stale")
        precondition(lines.level(I8042Device.auxIRQ) == controller.auxInterruptLevel, "i8042: IRQ 12 level is stale")
        precondition(
            controller.status & I8042.statusOutputFull != 0 || controller.outputCount == 0, "i8042: OBF clear with bytes queued")
    }
}

/// The first 5 bytes pick the clock (seconds since 1970, under 2^40); then each step is an
/// op byte: bit 0 read or write, bit 1 index or data port; a write takes the next byte.
package func fuzzCMOS(_ data: [UInt8]) {
    var input = ByteReader(data)
    var seconds: Int64 = 0
    for _ in 0..<5 { seconds = seconds << 8 | Int64(input.byte()) }
    let now = seconds
    let device = CMOSDevice(clock: { now }, memoryBelow4GiB: 0xC000_0000, memoryAbove4GiB: 1 << 33)
    var index: UInt8 = 0
    // Plain RAM bytes (outside the clock and control registers) read back what was written.
    var written = [UInt8?](repeating: nil, count: 128)
    let clockRegisters: Set<UInt8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x32]
    while !input.isAtEnd {
        let op = input.byte()
        let offset: UInt16 = op & 2 == 0 ? 0 : 1
        if op & 1 == 0 {
            let value = UInt8(truncatingIfNeeded: device.portRead(port: CMOSDevice.base + offset, offset: offset, width: 1))
            if offset == 0 {
                precondition(value == index, "CMOS: index port reads \(value), \(index) was written")
            } else if let expected = written[Int(index & 0x7F)] {
                precondition(value == expected, "CMOS: register \(index & 0x7F) reads \(value), \(expected) was written")
            }
        } else {
            let value = input.byte()
            _ = device.portWrite(port: CMOSDevice.base + offset, offset: offset, width: 1, value: UInt32(value))
            if offset == 0 {
                index = value
            } else if !clockRegisters.contains(index & 0x7F) {
                written[Int(index & 0x7F)] = value
            }
        }
    }
}
