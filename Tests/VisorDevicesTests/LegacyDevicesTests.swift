import Testing
import VisorCore
@testable import VisorDevices

@Suite("Port 0x80 POST-code sink")
struct PostCodeDeviceTests {

    @Test("counts writes of every width, keeps the last code's low byte, reads all ones")
    func sink() {
        let port = PostCodeDevice()
        #expect(PostCodeDevice.defaultPort == 0x80 && PostCodeDevice.portCount == 1)
        #expect(port.writes == 0 && port.lastCode == 0)
        #expect(port.portWrite(port: 0x80, offset: 0, width: 1, value: 0x12) == .continue)
        #expect(port.writes == 1 && port.lastCode == 0x12)
        #expect(port.portWrite(port: 0x80, offset: 0, width: 2, value: 0xABCD) == .continue)
        #expect(port.portWrite(port: 0x80, offset: 0, width: 4, value: 0x1234_5678) == .continue)
        #expect(port.writes == 3 && port.lastCode == 0x78)
        #expect(port.portRead(port: 0x80, offset: 0, width: 1) == 0xFF)
        #expect(port.portRead(port: 0x80, offset: 0, width: 2) == 0xFFFF)
        #expect(port.portRead(port: 0x80, offset: 0, width: 4) == 0xFFFF_FFFF)
        #expect(port.writes == 3, "reads are not counted")
    }

    @Test("a flood of writes from 4 threads: none is lost")
    func concurrentFlood() async {
        let port = PostCodeDevice()
        await withTaskGroup(of: Void.self) { group in
            for thread in 0..<4 {
                group.addTask {
                    for i in 0..<25_000 {
                        _ = port.portWrite(port: 0x80, offset: 0, width: 1, value: UInt32(truncatingIfNeeded: thread &+ i))
                    }
                }
            }
        }
        #expect(port.writes == 100_000)
    }
}

@Suite("PCI configuration mechanism #1 with no devices")
struct PCIConfigDeviceTests {

    private func out(_ device: PCIConfigDevice, _ port: UInt16, _ width: UInt8, _ value: UInt32) {
        #expect(device.portWrite(port: port, offset: 0, width: width, value: value) == .continue)
    }

    private func inp(_ device: PCIConfigDevice, _ port: UInt16, _ width: UInt8) -> UInt32 {
        device.portRead(port: port, offset: 0, width: width)
    }

    @Test("the ranges around 0xCF9")
    func ranges() {
        #expect(PCIConfigDevice.addressPort == 0xCF8 && PCIConfigDevice.addressPortCount == 1)
        #expect(PCIConfigDevice.addressUpperBase == 0xCFA && PCIConfigDevice.addressUpperCount == 2)
        #expect(PCIConfigDevice.dataBase == 0xCFC && PCIConfigDevice.dataPortCount == 4)
    }

    @Test("CONFIG_ADDRESS: doubleword writes are kept and read back; 0 at power-on")
    func address() {
        let pci = PCIConfigDevice()
        #expect(inp(pci, 0xCF8, 4) == 0)
        out(pci, 0xCF8, 4, 0x8000_1234)
        #expect(inp(pci, 0xCF8, 4) == 0x8000_1234)
        #expect(pci.configAddress == 0x8000_1234)
        out(pci, 0xCF8, 4, 0x7FFF_FFFF)
        #expect(inp(pci, 0xCF8, 4) == 0x7FFF_FFFF)
    }

    @Test("byte and word accesses at 0xCF8 and 0xCFA-0xCFB do not reach CONFIG_ADDRESS")
    func narrowAccesses() {
        let pci = PCIConfigDevice()
        out(pci, 0xCF8, 4, 0x8000_0000)
        out(pci, 0xCF8, 1, 0x00)
        out(pci, 0xCF8, 2, 0x0000)
        out(pci, 0xCFA, 1, 0x00)
        out(pci, 0xCFA, 2, 0x0000)
        out(pci, 0xCFB, 1, 0x01)
        out(pci, 0xCFA, 4, 0)
        #expect(inp(pci, 0xCF8, 4) == 0x8000_0000)
        #expect(inp(pci, 0xCF8, 1) == 0xFF)
        #expect(inp(pci, 0xCF8, 2) == 0xFFFF)
        #expect(inp(pci, 0xCFA, 1) == 0xFF)
        #expect(inp(pci, 0xCFB, 1) == 0xFF)
        #expect(inp(pci, 0xCFA, 4) == 0xFFFF_FFFF)
    }

    @Test("CONFIG_DATA reads all ones at every width and offset, enabled or not; writes are dropped")
    func data() {
        let pci = PCIConfigDevice()
        for address: UInt32 in [0, 0x8000_0000, 0x8000_0008, 0x80FF_FFFC] {
            out(pci, 0xCF8, 4, address)
            for port: UInt16 in 0xCFC...0xCFF {
                for width: UInt8 in [1, 2, 4] {
                    out(pci, port, width, 0)
                    #expect(inp(pci, port, width) == UInt32(truncatingIfNeeded: allOnes(width: width)))
                }
            }
            #expect(inp(pci, 0xCF8, 4) == address, "data writes leave the address alone")
        }
    }

    /// Linux 6.1's pci_conf1_read: the address, then the data port at the register's lane.
    private func conf1Read(_ pci: PCIConfigDevice, devfn: UInt32, reg: UInt32, len: UInt8) -> UInt32 {
        out(pci, 0xCF8, 4, 0x8000_0000 | devfn << 8 | reg & 0xFC)
        return inp(pci, 0xCFC + UInt16(reg & (len == 1 ? 3 : 2)), len)
    }

    @Test(
        "Linux 6.1's pci_check_type1 accepts the mechanism; without DMI its sanity check finds nothing; pci_check_type2 fails without touching 0xC000"
    )
    func linuxProbe() {
        let pci = PCIConfigDevice()
        // pci_check_type1.
        out(pci, 0xCFB, 1, 0x01)
        let saved = inp(pci, 0xCF8, 4)
        out(pci, 0xCF8, 4, 0x8000_0000)
        #expect(inp(pci, 0xCF8, 4) == 0x8000_0000, "type 1 is there")
        // pci_sanity_check without DMI: class 0x0600 / 0x0300 or vendor Intel/Compaq anywhere on bus 0?
        var found = false
        for devfn: UInt32 in 0..<256 {
            let classCode = conf1Read(pci, devfn: devfn, reg: 0x0A, len: 2)
            let vendor = conf1Read(pci, devfn: devfn, reg: 0x00, len: 2)
            #expect(classCode == 0xFFFF && vendor == 0xFFFF)
            if [0x0600, 0x0300].contains(classCode) || [0x8086, 0x0E11].contains(vendor) { found = true }
        }
        #expect(!found, "no host bridge: with no DMI date, Linux does not use type 1")
        out(pci, 0xCF8, 4, saved)
        #expect(inp(pci, 0xCF8, 4) == saved)
        // pci_check_type2: the three byte writes must not read back as 0x00.
        out(pci, 0xCFB, 1, 0x00)
        out(pci, 0xCF8, 1, 0x00)
        out(pci, 0xCFA, 1, 0x00)
        let type2 = inp(pci, 0xCF8, 1) == 0x00 && inp(pci, 0xCFA, 1) == 0x00
        #expect(!type2, "type 2 is rejected before its sanity check reaches ports 0xC000-0xCFFF")
    }
}
