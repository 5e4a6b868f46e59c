// The PCI configuration mechanism #1 ports (0xCF8-0xCFF) on their port adapter.
import VisorCore
import VisorDevices

/// Each step is an op byte: bit 0 read or write, bits 2-1 the width (1, 2 or 4 bytes), bits
/// 5-3 the port (0xCF8 + n); a write takes four more bytes as its value.
///
/// Checks: a 32-bit read of 0xCF8 returns the last 32-bit value written there (a narrower
/// write leaves it alone); every other read is all ones, since no device is behind any
/// configuration address; a write never stops the VM.
package func fuzzPCIConfig(_ data: [UInt8]) {
    var input = ByteReader(data)
    let device = PCIConfigDevice()
    var address: UInt32 = 0
    while !input.isAtEnd {
        let op = input.byte()
        let width: UInt8 = [1, 2, 4, 4][Int(op >> 1) & 3]
        let port = PCIConfigDevice.addressPort + UInt16((op >> 3) & 7)
        if op & 1 == 0 {
            let value = device.portRead(port: port, offset: 0, width: width)
            let expected =
                port == PCIConfigDevice.addressPort && width == 4 ? address : UInt32(truncatingIfNeeded: allOnes(width: width))
            precondition(
                value == expected, "PCI: IN of \(width) at 0x\(String(port, radix: 16)) read \(value), the model \(expected)")
        } else {
            let value = input.uint32()
            if port == PCIConfigDevice.addressPort && width == 4 { address = value }
            precondition(
                device.portWrite(port: port, offset: 0, width: width, value: value) == .continue, "PCI: a write stopped the VM")
        }
        precondition(
            device.configAddress == address, "PCI: the configuration address is \(device.configAddress), the model \(address)")
    }
}
