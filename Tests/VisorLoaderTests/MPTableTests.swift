import Testing
@testable import VisorLoader
import VisorMemory

@Suite("MP table")
struct MPTableTests {
    func sum(_ bytes: ArraySlice<UInt8>) -> UInt8 { bytes.reduce(0, &+) }
    func le16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
    func le32(_ b: [UInt8], _ at: Int) -> UInt32 { UInt32(le16(b, at)) | UInt32(le16(b, at + 2)) << 16 }

    @Test(
        "the floating pointer is 16 bytes, signed _MP_, revision 1.4, checksummed, pointing at the table",
        arguments: [1, 2, 8])
    func floatingPointer(processors: Int) {
        let (pointer, _) = MPTable.build(processors: processors)
        #expect(pointer.count == 16)
        #expect(Array(pointer[0..<4]) == Array("_MP_".utf8))
        #expect(le32(pointer, 4) == UInt32(MPTable.configTableAddress))
        #expect(pointer[8] == 1)
        #expect(pointer[9] == 4)
        #expect(sum(pointer[...]) == 0)
        #expect(pointer[11] == 0, "feature byte 1 = 0: a configuration table is present")
    }

    @Test(
        "the configuration table lists every processor, the ISA bus, the IOAPIC and 18 interrupt entries",
        arguments: [1, 2, 4, 32])
    func configTable(processors: Int) {
        let (_, table) = MPTable.build(processors: processors)
        #expect(Array(table[0..<4]) == Array("PCMP".utf8))
        #expect(Int(le16(table, 4)) == table.count)
        #expect(table[6] == 4)
        #expect(sum(table[...]) == 0, "base table checksum")
        #expect(Array(table[8..<16]) == Array("SWFTVISR".utf8))
        let entryCount = Int(le16(table, 34))
        #expect(entryCount == processors + 1 + 1 + 16 + 2)
        #expect(le32(table, 36) == 0xFEE0_0000)
        #expect(table.count == 44 + processors * 20 + 8 + 8 + 18 * 8)

        // Walk the entries by type and size.
        var at = 44
        var cpus: [(id: UInt8, flags: UInt8)] = [], buses = 0, ioapics: [(UInt8, UInt32)] = [], intsrc = 0, lint = 0
        for _ in 0..<entryCount {
            switch table[at] {
            case 0: cpus.append((table[at + 1], table[at + 3])); at += 20
            case 1: buses += 1; #expect(Array(table[at + 2..<at + 8]) == Array("ISA   ".utf8)); at += 8
            case 2: ioapics.append((table[at + 1], le32(table, at + 4))); at += 8
            case 3: #expect(table[at + 5] == table[at + 7], "ISA IRQ n goes to IOAPIC pin n"); intsrc += 1; at += 8
            case 4: lint += 1; at += 8
            default: Issue.record("unknown entry type \(table[at])"); return
            }
        }
        #expect(at == table.count)
        #expect(cpus.map(\.id) == (0..<processors).map { UInt8($0) })
        #expect(cpus.first?.flags == 0x03, "the BSP is enabled and marked BP")
        #expect(cpus.dropFirst().allSatisfy { $0.flags == 0x01 })
        #expect(buses == 1 && intsrc == 16 && lint == 2)
        #expect(ioapics.count == 1)
        #expect(ioapics.first?.0 == UInt8(processors))
        #expect(ioapics.first?.1 == 0xFEC0_0000)
    }

    @Test("the boot layout writes the table for the vCPU count and refuses counts that do not fit")
    func bootLayoutWritesIt() throws {
        let memory = try GuestMemory(size: 4 << 20)
        _ = try BootLayout.prepareLongMode(memory: memory, entry: 0x100000, commandLine: "", vcpuCount: 3)
        #expect(try memory.read(4, at: MPTable.floatingPointerAddress) == Array("_MP_".utf8))
        #expect(try memory.readUInt16(at: MPTable.configTableAddress + 34) == 3 + 20)
        #expect(try memory.readUInt32(at: BootLayout.bootInfoAddress + 32) == 3)
        #expect(throws: LoaderError.self) {
            try BootLayout.prepareLongMode(
                memory: memory, entry: 0x100000, commandLine: "",
                vcpuCount: UInt32(MPTable.maxProcessors + 1))
        }
    }
}
