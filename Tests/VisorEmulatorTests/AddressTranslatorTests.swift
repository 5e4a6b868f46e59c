import Testing
import TestSupport
import VisorKVM
import VisorMemory
@testable import VisorEmulator

private let present: UInt64 = 0x1
private let writable: UInt64 = 0x2
private let pageSize: UInt64 = 0x80
private let noExecute: UInt64 = 1 << 63

private let cr0PE: UInt64 = 1
private let cr0PG: UInt64 = 1 << 31
private let cr4PSE: UInt64 = 1 << 4
private let cr4PAE: UInt64 = 1 << 5
private let cr4LA57: UInt64 = 1 << 12
private let eferLME: UInt64 = 1 << 8
private let eferLMA: UInt64 = 1 << 10

private func translator(cr0: UInt64, cr3: UInt64 = 0, cr4: UInt64 = 0, efer: UInt64 = 0) -> AddressTranslator {
    var sregs = SpecialRegisters()
    sregs.cr0 = cr0
    sregs.cr3 = cr3
    sregs.cr4 = cr4
    sregs.efer = efer
    return AddressTranslator(sregs)
}

/// A linear address from its 4-level indices.
private func linear(pml4: UInt64, pdpt: UInt64, pd: UInt64 = 0, pt: UInt64 = 0, offset: UInt64 = 0) -> UInt64 {
    pml4 << 39 | pdpt << 30 | pd << 21 | pt << 12 | offset
}

@Suite("AddressTranslator: 4- and 5-level long mode")
struct LongModeTranslationTests {
    /// 2 MiB of RAM with hand-built tables:
    ///   PML4 0x1000: [1] -> PDPT 0x2000, [256] -> PDPT 0x2000, [3] -> 0x7fff00000000 (outside RAM)
    ///   PDPT 0x2000: [2] -> PD 0x3000, [7] 1 GiB page at 0x40_0000_0000, [8] -> PD outside RAM,
    ///                [0] 1 GiB page at 0x8000_0000, [4] not present
    ///   PD 0x3000:   [3] -> PT 0x4000, [5] 2 MiB page at 0x1_2340_0000 (PAT bit set), [6] not present
    ///   PT 0x4000:   [4] 4 KiB page at 0x12_3000 (NX set), [5] not present (but with an address)
    ///   PML5 0x6000: [1] -> PML4 0x1000
    let memory: GuestMemory

    init() throws {
        memory = try GuestMemory(size: 2 << 20)
        try memory.write(0x2000 | present | writable, at: 0x1000 + 1 * 8)
        try memory.write(0x2000 | present | writable, at: 0x1000 + 256 * 8)
        try memory.write(0x7FFF_0000_0000 | present | writable, at: 0x1000 + 3 * 8)
        try memory.write(0x3000 | present | writable, at: 0x2000 + 2 * 8)
        try memory.write(0x40_0000_0000 | pageSize | present | writable, at: 0x2000 + 7 * 8)
        try memory.write(0xF_FFFF_FFFF_F000 | present, at: 0x2000 + 8 * 8)
        try memory.write(0x8000_0000 | pageSize | present, at: 0x2000 + 0 * 8)
        try memory.write(0x5000 | writable, at: 0x2000 + 4 * 8)
        try memory.write(0x4000 | present | writable, at: 0x3000 + 3 * 8)
        try memory.write(0x1_2340_0000 | 0x1000 | pageSize | present | writable, at: 0x3000 + 5 * 8)
        try memory.write(UInt64(0), at: 0x3000 + 6 * 8)
        try memory.write(0x12_3000 | noExecute | present | writable, at: 0x4000 + 4 * 8)
        try memory.write(0x12_4000 | writable, at: 0x4000 + 5 * 8)
        try memory.write(0x1000 | present | writable, at: 0x6000 + 1 * 8)
    }

    var fourLevel: AddressTranslator {
        translator(cr0: cr0PG | cr0PE, cr3: 0x1000, cr4: cr4PAE, efer: eferLME | eferLMA)
    }

    @Test("a 4 KiB page translates, with NX and flags stripped and the page offset kept")
    func fourKiB() {
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 3, pt: 4, offset: 0x567), memory: memory) == 0x12_3567)
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 3, pt: 4), memory: memory) == 0x12_3000)
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 3, pt: 4, offset: 0xFFF), memory: memory) == 0x12_3FFF)
    }

    @Test("a 2 MiB page translates with a 21-bit offset and the PAT bit masked off")
    func twoMiB() {
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 5, offset: 0x1A_BCDE), memory: memory) == 0x1_235A_BCDE)
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 5), memory: memory) == 0x1_2340_0000)
    }

    @Test("a 1 GiB page translates with a 30-bit offset")
    func oneGiB() {
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 7, offset: 0x2345_6789), memory: memory) == 0x40_2345_6789)
    }

    @Test("a sign-extended higher-half address uses PML4 index 256")
    func higherHalf() {
        #expect(fourLevel.translate(0xFFFF_8000_0012_3456, memory: memory) == 0x8012_3456)
    }

    @Test("a not-present entry at any level gives nil")
    func notPresent() {
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 3, pt: 5), memory: memory) == nil, "PTE")
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 2, pd: 6), memory: memory) == nil, "PDE")
        #expect(fourLevel.translate(linear(pml4: 1, pdpt: 4), memory: memory) == nil, "PDPTE")
        #expect(fourLevel.translate(linear(pml4: 2, pdpt: 0), memory: memory) == nil, "PML4E")
    }

    @Test("table pointers outside RAM give nil instead of crashing")
    func hostileTables() {
        #expect(fourLevel.translate(linear(pml4: 3, pdpt: 0), memory: memory) == nil, "PML4E points outside RAM")
        #expect(
            fourLevel.translate(linear(pml4: 1, pdpt: 8), memory: memory) == nil, "PDPTE points at the top of the physical space")
        let badRoot = translator(cr0: cr0PG | cr0PE, cr3: 0xF_FFFF_FFFF_F000, cr4: cr4PAE, efer: eferLME | eferLMA)
        #expect(badRoot.translate(0, memory: memory) == nil, "CR3 outside RAM")
        let badRoot5 = translator(cr0: cr0PG | cr0PE, cr3: 0x4000_0000, cr4: cr4PAE | cr4LA57, efer: eferLME | eferLMA)
        #expect(badRoot5.translate(0, memory: memory) == nil)
        // A table of all-ones entries: present, PS set, pointing at the top of the physical space.
        let selfMap = try! GuestMemory(size: 0x2000)
        for i in 0..<UInt64(512) { try! selfMap.write(UInt64(0xFFFF_FFFF_FFFF_FFFF), at: 0x1000 + i * 8) }
        let allOnesTables = translator(cr0: cr0PG | cr0PE, cr3: 0x1000, cr4: cr4PAE, efer: eferLME | eferLMA)
        #expect(allOnesTables.translate(0x1234_5678, memory: selfMap) == nil)
    }

    @Test("5-level paging (CR4.LA57) walks the PML5 first")
    func fiveLevel() {
        let t = translator(cr0: cr0PG | cr0PE, cr3: 0x6000, cr4: cr4PAE | cr4LA57, efer: eferLME | eferLMA)
        #expect(t.translate(1 << 48 | linear(pml4: 1, pdpt: 2, pd: 3, pt: 4, offset: 0x567), memory: memory) == 0x12_3567)
        #expect(
            t.translate(linear(pml4: 1, pdpt: 2, pd: 3, pt: 4, offset: 0x567), memory: memory) == nil,
            "PML5 index 0 is not present")
    }

    @Test("readBytes reads through the tables and stops at the first byte that does not translate")
    func readBytes() throws {
        try memory.write([0xDE, 0xAD, 0xBE, 0xEF], at: 0x12_3FFC)
        let start = linear(pml4: 1, pdpt: 2, pd: 3, pt: 4, offset: 0xFFC)
        #expect(fourLevel.readBytes(at: start, count: 4, memory: memory) == [0xDE, 0xAD, 0xBE, 0xEF])
        // The next page (PT index 5) is not present.
        #expect(fourLevel.readBytes(at: start + 2, count: 6, memory: memory) == [0xBE, 0xEF])
        #expect(fourLevel.readBytes(at: linear(pml4: 2, pdpt: 0), count: 16, memory: memory) == [])
        // A page that translates to a physical address outside RAM reads nothing.
        #expect(fourLevel.readBytes(at: linear(pml4: 1, pdpt: 7), count: 4, memory: memory) == [])
    }
}

@Suite("AddressTranslator: paging off, 32-bit and PAE")
struct LegacyTranslationTests {
    @Test("with paging off, linear is physical (truncated to 32 bits outside long mode)")
    func pagingOff() throws {
        let memory = try GuestMemory(size: 0x1000)
        let real = translator(cr0: 0)
        #expect(real.translate(0x7C00, memory: memory) == 0x7C00)
        #expect(real.translate(0xFFFF_FFFF, memory: memory) == 0xFFFF_FFFF)
        #expect(real.translate(0x1_0000_1000, memory: memory) == 0x1000)
        let protected = translator(cr0: cr0PE, cr3: 0x1000, cr4: cr4PAE)
        #expect(protected.translate(0xDEAD_BEEF, memory: memory) == 0xDEAD_BEEF, "CR3/CR4 are ignored without CR0.PG")
        let lma = translator(cr0: cr0PE, efer: eferLMA)
        #expect(lma.translate(0x1_0000_1000, memory: memory) == 0x1_0000_1000)
    }

    /// 32-bit tables: page directory at 0x1000, page table at 0x2000.
    func thirtyTwoBitMemory() throws -> GuestMemory {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(UInt32(0x2000 | 0x3), at: 0x1000 + 1 * 4)  // PDE[1] -> PT
        try memory.write(UInt32(0x0C00_0000 | 0x83), at: 0x1000 + 3 * 4)  // PDE[3] 4 MiB page (with PSE)
        try memory.write(UInt32(0x0000_3000 | 0x2), at: 0x1000 + 2 * 4)  // PDE[2] not present
        try memory.write(UInt32(0x0015_6000 | 0x3), at: 0x2000 + 0x23 * 4)  // PTE[0x23]
        try memory.write(UInt32(0x0015_7000), at: 0x2000 + 0x24 * 4)  // PTE[0x24] not present
        return memory
    }

    @Test("32-bit paging: 4 KiB pages through a page table")
    func thirtyTwoBitSmall() throws {
        let memory = try thirtyTwoBitMemory()
        let t = translator(cr0: cr0PG | cr0PE, cr3: 0x1000)
        #expect(t.translate(0x0042_3ABC, memory: memory) == 0x15_6ABC)
        #expect(t.translate(0x1_0042_3ABC, memory: memory) == 0x15_6ABC, "linear is truncated to 32 bits")
        #expect(t.translate(0x0042_4000, memory: memory) == nil, "PTE not present")
        #expect(t.translate(0x0080_0000, memory: memory) == nil, "PDE not present")
        #expect(t.translate(0x0000_0000, memory: memory) == nil, "PDE zero")
    }

    @Test("32-bit paging: a 4 MiB page needs CR4.PSE; without it PS is ignored and the PDE is a table pointer")
    func thirtyTwoBitLarge() throws {
        let memory = try thirtyTwoBitMemory()
        let pse = translator(cr0: cr0PG | cr0PE, cr3: 0x1000, cr4: cr4PSE)
        #expect(pse.translate(0x00D2_3456, memory: memory) == 0x0C12_3456)
        let noPSE = translator(cr0: cr0PG | cr0PE, cr3: 0x1000)
        #expect(noPSE.translate(0x00D2_3456, memory: memory) == nil, "0x0C000000 as a table lies outside RAM")
        #expect(pse.translate(0x0042_3ABC, memory: memory) == 0x15_6ABC, "small pages still work with PSE")
    }

    /// PAE tables: PDPT at 0x1020 (32-byte aligned, not page aligned), PD 0x3000, PT 0x4000.
    func paeMemory() throws -> GuestMemory {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(0x3000 | present, at: 0x1020 + 2 * 8)  // PDPTE[2]
        try memory.write(UInt64(0), at: 0x1020 + 3 * 8)  // PDPTE[3] not present
        try memory.write(0x4000 | present | writable, at: 0x3000 + 4 * 8)  // PDE[4] -> PT
        try memory.write(0x1_2340_0000 | pageSize | present, at: 0x3000 + 5 * 8)  // PDE[5] 2 MiB page
        try memory.write(0x9_0000_0000 | present, at: 0x3000 + 6 * 8)  // PDE[6] -> PT outside RAM
        try memory.write(0x9_8000 | noExecute | present, at: 0x4000 + 6 * 8)  // PTE[6]
        return memory
    }

    @Test("PAE: 4 KiB and 2 MiB pages, CR3 bits 5-11 used as the PDPT address")
    func pae() throws {
        let memory = try paeMemory()
        let t = translator(cr0: cr0PG | cr0PE, cr3: 0x1020 | 0x18, cr4: cr4PAE)
        #expect(t.translate(0x8080_6321, memory: memory) == 0x9_8321)
        #expect(t.translate(2 << 30 | 5 << 21 | 0x5_4321, memory: memory) == 0x1_2345_4321)
        #expect(t.translate(0xF_8080_6321, memory: memory) == 0x9_8321, "linear is truncated to 32 bits")
        #expect(t.translate(3 << 30, memory: memory) == nil, "PDPTE not present")
        #expect(t.translate(2 << 30 | 6 << 21, memory: memory) == nil, "PT outside RAM")
        #expect(t.translate(2 << 30 | 4 << 21 | 7 << 12, memory: memory) == nil, "PTE zero")
        let badRoot = translator(cr0: cr0PG | cr0PE, cr3: 0xFFFF_FFE0, cr4: cr4PAE)
        #expect(badRoot.translate(0, memory: memory) == nil)
    }
}
