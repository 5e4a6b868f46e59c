import Testing
import VisorCore
@testable import VisorDevices

@Suite("fw_cfg and QEMU's debug-exit")
struct FirmwareConfigTests {
    static func read(_ device: FirmwareConfigDevice, _ selector: UInt16, count: Int) -> [UInt8] {
        _ = device.portWrite(port: 0x510, offset: 0, width: 2, value: UInt32(selector))
        return (0..<count).map { _ in UInt8(device.portRead(port: 0x511, offset: 1, width: 1)) }
    }

    static let device = FirmwareConfigDevice(
        memorySize: 0x1234_5000, cpuCount: 3, commandLine: "a b",
        files: [.init(name: "etc/e820", contents: [1, 2, 3])])

    @Test("the items' contents, little-endian numbers")
    func items() {
        let d = Self.device
        #expect(Self.read(d, 0x00, count: 4) == Array("QEMU".utf8))
        #expect(Self.read(d, 0x01, count: 4) == [1, 0, 0, 0], "traditional interface, no DMA")
        #expect(Self.read(d, 0x03, count: 8) == [0x00, 0x50, 0x34, 0x12, 0, 0, 0, 0])
        #expect(Self.read(d, 0x05, count: 2) == [3, 0])
        #expect(Self.read(d, 0x0F, count: 2) == [3, 0])
        #expect(Self.read(d, 0x14, count: 4) == [4, 0, 0, 0], "with the NUL")
        #expect(Self.read(d, 0x15, count: 4) == Array("a b\0".utf8))
        #expect(Self.read(d, 0x20, count: 3) == [1, 2, 3])
    }

    @Test("the file directory: count, then size, selector, reserved and a 56-byte name, big-endian")
    func directory() {
        let dir = Self.read(Self.device, 0x19, count: 4 + 64)
        #expect(Array(dir[0..<4]) == [0, 0, 0, 1])
        #expect(Array(dir[4..<8]) == [0, 0, 0, 3])
        #expect(Array(dir[8..<10]) == [0, 0x20])
        #expect(Array(dir[10..<12]) == [0, 0])
        #expect(Array(dir[12..<20]) == Array("etc/e820".utf8))
        #expect(dir[20..<68].allSatisfy { $0 == 0 })
        #expect(Self.device.item(0x19)?.count == 68)
    }

    @Test("reads past the end and of unknown items give 0; selecting rewinds; bit 14 is ignored")
    func edges() {
        let d = Self.device
        #expect(Self.read(d, 0x00, count: 6) == Array("QEMU".utf8) + [0, 0])
        #expect(Self.read(d, 0x02, count: 2) == [0, 0])
        #expect(Self.read(d, 0x8003, count: 2) == [0, 0], "no architecture items")
        #expect(Self.read(d, 0x4000, count: 4) == Array("QEMU".utf8))
        // The data byte also reads at the selector port; wider reads are refused (all ones),
        // and 1-byte writes change nothing.
        _ = d.portWrite(port: 0x510, offset: 0, width: 2, value: 0)
        #expect(d.portRead(port: 0x510, offset: 0, width: 1) == UInt32(UInt8(ascii: "Q")))
        #expect(d.portRead(port: 0x511, offset: 1, width: 2) == 0xFFFF)
        _ = d.portWrite(port: 0x511, offset: 1, width: 1, value: 5)
        _ = d.portWrite(port: 0x510, offset: 0, width: 4, value: 5)
        #expect(d.portRead(port: 0x511, offset: 1, width: 1) == UInt32(UInt8(ascii: "E")))
    }

    @Test("long file names are cut to 55 bytes and a NUL")
    func longName() {
        let d = FirmwareConfigDevice(
            memorySize: 0, cpuCount: 1, commandLine: "",
            files: [.init(name: String(repeating: "n", count: 80), contents: [])])
        let dir = d.item(0x19) ?? []
        #expect(dir.count == 68)
        #expect(dir[12..<67].allSatisfy { $0 == UInt8(ascii: "n") })
        #expect(dir[67] == 0)
    }

    @Test("QEMU's debug-exit: status (V << 1) | 1 at any width and port, low 8 bits; reads all ones")
    func qemuDebugExit() {
        let d = QEMUDebugExitDevice()
        for (value, status) in [(UInt32(0), UInt8(1)), (1, 3), (38, 77), (0x7F, 0xFF), (0x80, 1), (0xFFFF_FFFF, 0xFF)] {
            #expect(QEMUDebugExitDevice.status(for: value) == status)
            for (port, width) in [(UInt16(0xF4), UInt8(4)), (0xF5, 1), (0xF6, 2)] {
                #expect(
                    d.portWrite(port: port, offset: port - 0xF4, width: width, value: value) == .stop(.guestExit(status: status)))
            }
        }
        #expect(d.portRead(port: 0xF4, offset: 0, width: 4) == 0xFFFF_FFFF)
    }
}
