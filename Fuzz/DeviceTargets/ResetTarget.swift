// The reset control register (port 0xCF9) on its port adapter.
import VisorCore
import VisorDevices

/// Each step is an op byte: bit 0 read or write, bits 2-1 the width (1, 2 or 4 bytes); a
/// write takes two more bytes as its value.
///
/// Checks: a read returns the last byte written with RST_CPU (bit 2) clear, and ones above
/// the low byte; a write stops the VM with a reset exactly when it sets RST_CPU.
package func fuzzResetControl(_ data: [UInt8]) {
    var input = ByteReader(data)
    let device = ResetControlDevice()
    let port = ResetControlDevice.defaultPort
    var latched: UInt8 = 0
    while !input.isAtEnd {
        let op = input.byte()
        let width: UInt8 = [1, 2, 4, 1][Int(op >> 1) & 3]
        if op & 1 == 0 {
            let value = device.portRead(port: port, offset: 0, width: width)
            let expected = UInt32(latched) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
            precondition(value == expected, "reset: read \(value), the model \(expected)")
        } else {
            let value = UInt32(input.uint16())
            let action = device.portWrite(port: port, offset: 0, width: width, value: value)
            let byte = UInt8(truncatingIfNeeded: value)
            latched = byte & ~0x04
            let expected: DeviceAction = byte & 0x04 != 0 ? .stop(.reset(source: ResetControlDevice.resetSource)) : .continue
            precondition(action == expected, "reset: a write of 0x\(String(byte, radix: 16)) gave \(action)")
        }
    }
}
