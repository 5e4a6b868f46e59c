// The ACPI PM1a event and control blocks on their port adapter.
import VisorCore
import VisorDevices

/// Each step is an op byte: bit 0 read or write, bits 2-1 the width (1, 2 or 4 bytes), bits
/// 7-3 the port, from 4 below the event block; a write takes two more bytes as its value.
///
/// A model of the three registers (status: write 1 to clear, set WAK_STS on an unsupported
/// sleep; enable: stored; control: SCI_EN always reads 1, SLP_EN and GBL_RLS never read back)
/// must read exactly as the device does, lane by lane; lanes outside both blocks read 0xFF.
/// A write that sets SLP_EN with SLP_TYP 5 must stop the VM with power-off, and no other.
package func fuzzPM1(_ data: [UInt8]) {
    var input = ByteReader(data)
    let device = PM1Device()
    let eventBase = Int(PM1Device.defaultEventBlockBase)
    let controlBase = Int(PM1Device.defaultControlBlockBase)
    var status: UInt16 = 0
    var enable: UInt16 = 0
    var control: UInt16 = 0
    func lane(_ port: Int) -> UInt8 {
        switch port - eventBase {
        case 0, 1: return UInt8(truncatingIfNeeded: status >> (8 * (port - eventBase)))
        case 2, 3: return UInt8(truncatingIfNeeded: enable >> (8 * (port - eventBase - 2)))
        case 4,
            5 where controlBase == eventBase + 4:
            return UInt8(truncatingIfNeeded: (control | 1) >> (8 * (port - controlBase)))
        default: return 0xFF
        }
    }
    while !input.isAtEnd {
        let op = input.byte()
        let width = [1, 2, 4, 1][Int(op >> 1) & 3]
        let port = eventBase - 4 + Int(op >> 3)
        if op & 1 == 0 {
            let value = device.portRead(port: UInt16(port), offset: 0, width: UInt8(width))
            var expected: UInt32 = 0
            for i in 0..<width { expected |= UInt32(lane(port + i)) << (8 * i) }
            precondition(
                value == expected, "PM1: IN of \(width) at 0x\(String(port, radix: 16)) read \(value), the model \(expected)")
        } else {
            let value = UInt32(input.uint16()) | UInt32(input.byte()) << 16
            var controlValue: UInt16 = 0
            var controlMask: UInt16 = 0
            for i in 0..<width {
                let byte = UInt16(UInt8(truncatingIfNeeded: value >> (8 * i)))
                switch port + i - eventBase {
                case 0, 1: status &= ~(byte << (8 * (port + i - eventBase)))
                case 2, 3:
                    let shift = UInt16(8 * (port + i - eventBase - 2))
                    enable = enable & ~(0xFF << shift) | byte << shift
                case 4, 5:
                    controlValue |= byte << (8 * (port + i - controlBase))
                    controlMask |= 0xFF << (8 * (port + i - controlBase))
                default: break
                }
            }
            var expectPowerOff = false
            if controlMask != 0 {
                control = (control & ~controlMask | controlValue & controlMask) & ~0x2005
                if controlValue & controlMask & 0x2000 != 0 {
                    if (control >> 10) & 7 == 5 { expectPowerOff = true } else { status |= 0x8000 }
                }
            }
            let action = device.portWrite(port: UInt16(port), offset: 0, width: UInt8(width), value: value)
            precondition((action != .continue) == expectPowerOff, "PM1: a write at 0x\(String(port, radix: 16)) gave \(action)")
        }
    }
}
