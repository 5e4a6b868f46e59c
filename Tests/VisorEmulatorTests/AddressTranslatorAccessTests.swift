import Testing
import VisorKVM
import VisorMemory
@testable import VisorEmulator

// Entry bits.
private let p: UInt64 = 1 << 0
private let rw: UInt64 = 1 << 1
private let us: UInt64 = 1 << 2
private let accessedBit: UInt64 = 1 << 5
private let dirtyBit: UInt64 = 1 << 6
private let ps: UInt64 = 1 << 7
private let xd: UInt64 = 1 << 63

// Control bits.
private let pg: UInt64 = 1 << 31 | 1
private let wp: UInt64 = 1 << 16
private let pse: UInt64 = 1 << 4
private let paeBit: UInt64 = 1 << 5
private let la57: UInt64 = 1 << 12
private let smep: UInt64 = 1 << 20
private let smap: UInt64 = 1 << 21
private let lma: UInt64 = 1 << 8 | 1 << 10
private let nxe: UInt64 = 1 << 11

// #PF error-code bits.
private let faultP: UInt32 = 1, faultW: UInt32 = 2, faultU: UInt32 = 4, faultRSVD: UInt32 = 8, faultID: UInt32 = 16

private typealias Access = AddressTranslator.Access

private func translator(
    cr0: UInt64 = pg, cr3: UInt64 = 0x1000, cr4: UInt64, efer: UInt64 = 0, maxPhysicalAddress: Int = 52
) -> AddressTranslator {
    var sregs = SpecialRegisters()
    (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (cr0, cr3, cr4, efer)
    return AddressTranslator(sregs, physicalAddressBits: maxPhysicalAddress)
}

/// The outcome of one access: the physical address or the #PF error code.
private func outcome(_ t: AddressTranslator, _ linear: UInt64, _ access: Access, _ memory: GuestMemory) -> Result<
    UInt64, AddressTranslator.AccessFault
> {
    do throws(AddressTranslator.AccessFault) { return .success(try t.translate(linear, access: access, memory: memory)) } catch {
        return .failure(error)
    }
}

private func fault(_ code: UInt32) -> Result<UInt64, AddressTranslator.AccessFault> { .failure(.pageFault(errorCode: code)) }

private let userRead = Access(.read, .user), userWrite = Access(.write, .user), userFetch = Access(.fetch, .user)
private let kernelRead = Access(.read, .supervisor), kernelWrite = Access(.write, .supervisor)
private let kernelFetch = Access(.fetch, .supervisor)

/// 4-level tables in 64 KiB: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000, whose
/// entry 0 maps linear 0 to page 0x8000. `leaf` and `upper` are the flags of the PTE and of
/// the three upper entries.
private func longModeTables(leaf: UInt64 = p | rw | us, upper: UInt64 = p | rw | us) throws -> GuestMemory {
    let memory = try GuestMemory(size: 0x10000)
    try memory.write(0x2000 | upper, at: 0x1000)
    try memory.write(0x3000 | upper, at: 0x2000)
    try memory.write(0x4000 | upper, at: 0x3000)
    try memory.write(0x8000 | leaf, at: 0x4000)
    return memory
}

private let longMode = translator(cr4: paeBit, efer: lma)

@Suite("AddressTranslator: access rights, reserved bits, accessed and dirty flags")
struct AccessRightsTests {
    @Test("U/S: a user access needs U/S at every level; supervisor accesses do not")
    func userSupervisor() throws {
        let memory = try longModeTables()
        #expect(outcome(longMode, 0x123, userRead, memory) == .success(0x8123))
        try memory.write(0x4000 | p | rw, at: 0x3000)  // the PDE drops U/S
        #expect(outcome(longMode, 0x123, userRead, memory) == fault(faultP | faultU))
        #expect(outcome(longMode, 0x123, userWrite, memory) == fault(faultP | faultW | faultU))
        #expect(outcome(longMode, 0x123, kernelRead, memory) == .success(0x8123))
    }

    @Test("R/W: user writes need R/W at every level; supervisor writes only with CR0.WP")
    func readWrite() throws {
        let memory = try longModeTables()
        try memory.write(0x3000 | p | us, at: 0x2000)  // the PDPTE drops R/W
        #expect(outcome(longMode, 0, userRead, memory) == .success(0x8000))
        #expect(outcome(longMode, 0, userWrite, memory) == fault(faultP | faultW | faultU))
        #expect(outcome(longMode, 0, kernelWrite, memory) == .success(0x8000), "CR0.WP clear")
        let withWP = translator(cr0: pg | wp, cr4: paeBit, efer: lma)
        #expect(outcome(withWP, 0, kernelWrite, memory) == fault(faultP | faultW))
        #expect(outcome(withWP, 0, kernelRead, memory) == .success(0x8000))
    }

    @Test("NX with EFER.NXE: no fetch where XD is set at any level, I/D in the error code")
    func noExecute() throws {
        let memory = try longModeTables()
        try memory.write(0x3000 | p | rw | us | xd, at: 0x2000)
        let t = translator(cr4: paeBit, efer: lma | nxe)
        #expect(outcome(t, 0, kernelFetch, memory) == fault(faultP | faultID))
        #expect(outcome(t, 0, userFetch, memory) == fault(faultP | faultU | faultID))
        #expect(outcome(t, 0, userRead, memory) == .success(0x8000))
        #expect(outcome(t, 0x1000, kernelFetch, memory) == fault(faultID), "not present: I/D without P")
    }

    @Test("XD without EFER.NXE is a reserved bit; fetches carry no I/D then")
    func noExecuteDisabled() throws {
        let memory = try longModeTables(leaf: p | rw | us | xd)
        #expect(outcome(longMode, 0, kernelRead, memory) == fault(faultP | faultRSVD))
        #expect(outcome(longMode, 0, userFetch, memory) == fault(faultP | faultU | faultRSVD))
        let clean = try longModeTables()
        #expect(outcome(longMode, 0, kernelFetch, clean) == .success(0x8000))
    }

    @Test("SMEP: a supervisor fetch from a user-mode address faults; from a supervisor one it does not")
    func smepRule() throws {
        let memory = try longModeTables()
        let t = translator(cr4: paeBit | smep, efer: lma)
        #expect(outcome(t, 0, kernelFetch, memory) == fault(faultP | faultID))
        #expect(outcome(t, 0, userFetch, memory) == .success(0x8000))
        #expect(outcome(t, 0, kernelRead, memory) == .success(0x8000), "SMEP leaves data alone")
        #expect(outcome(longMode, 0, kernelFetch, memory) == .success(0x8000), "without SMEP")
        try memory.write(0x8000 | p | rw, at: 0x4000)  // a supervisor-mode address
        #expect(outcome(t, 0, kernelFetch, memory) == .success(0x8000))
        let thirtyTwo = try GuestMemory(size: 0x10000)
        try thirtyTwo.write(UInt32(0x2000 | 0x7), at: 0x1000)
        try thirtyTwo.write(UInt32(0x8000 | 0x7), at: 0x2000)
        let t32 = translator(cr4: smep)
        #expect(outcome(t32, 0, kernelFetch, thirtyTwo) == fault(faultP | faultID), "32-bit paging too")
    }

    @Test("SMAP: supervisor data accesses to user pages fault unless explicit with RFLAGS.AC")
    func smapRule() throws {
        let memory = try longModeTables()
        let t = translator(cr4: paeBit | smap, efer: lma)
        #expect(outcome(t, 0, kernelRead, memory) == fault(faultP))
        #expect(outcome(t, 0, kernelWrite, memory) == fault(faultP | faultW))
        #expect(outcome(t, 0, Access(.read, .supervisor, alignmentCheck: true), memory) == .success(0x8000))
        #expect(outcome(t, 0, Access(.write, .supervisor, alignmentCheck: true), memory) == .success(0x8000))
        #expect(outcome(t, 0, Access(.read, .implicitSupervisor, alignmentCheck: true), memory) == fault(faultP))
        #expect(outcome(t, 0, kernelFetch, memory) == .success(0x8000), "SMAP leaves fetches alone")
        #expect(outcome(t, 0, userWrite, memory) == .success(0x8000), "and user accesses")
        let wpAC = translator(cr0: pg | wp, cr4: paeBit | smap, efer: lma)
        try memory.write(0x8000 | p | us, at: 0x4000)
        #expect(
            outcome(wpAC, 0, Access(.write, .supervisor, alignmentCheck: true), memory) == fault(faultP | faultW),
            "AC lifts SMAP, not R/W")
    }

    @Test("reserved bits in 4-level paging: PS in a PML4E, bits above MAXPHYADDR, low bits of large pages")
    func reservedLongMode() throws {
        let memory = try longModeTables()
        try memory.write(0x2000 | p | rw | us | ps, at: 0x1000)
        #expect(outcome(longMode, 0, kernelRead, memory) == fault(faultP | faultRSVD))
        try memory.write(0x2000 | p | rw | us, at: 0x1000)
        try memory.write(0x8000 | 1 << 45 | p | rw | us, at: 0x4000)
        let narrow = translator(cr4: paeBit, efer: lma, maxPhysicalAddress: 40)
        #expect(outcome(narrow, 0, userWrite, memory) == fault(faultP | faultW | faultU | faultRSVD))
        #expect(outcome(longMode, 0, kernelRead, memory) == .success(0x2000_0000_8000), "bit 45 is an address bit at 52")
        try memory.write(0x20_0000 | 1 << 13 | p | rw | us | ps, at: 0x3000)  // a 2 MiB page with bit 13
        #expect(outcome(longMode, 0, kernelRead, memory) == fault(faultP | faultRSVD))
        try memory.write(0x4000_0000 | 1 << 20 | p | rw | us | ps, at: 0x2000)  // a 1 GiB page with bit 20
        #expect(outcome(longMode, 0, kernelRead, memory) == fault(faultP | faultRSVD))
        let before = try memory.read(0x10000, at: 0)
        #expect(outcome(longMode, 0x1000_0000_0000, kernelRead, memory) == fault(0), "not present beats nothing")
        #expect(try memory.read(0x10000, at: 0) == before, "a faulting walk writes nothing")
    }

    @Test("reserved bits in PAE paging: PDPTE bits 2:1 and 8:5, bit 62 of a PDE, bit 13 of a 2 MiB PDE")
    func reservedPAE() throws {
        let memory = try GuestMemory(size: 0x10000)
        let t = translator(cr3: 0x1000, cr4: paeBit)
        try memory.write(0x3000 | p | rw, at: 0x1000)  // R/W is reserved in a PDPTE
        try memory.write(0x20_0000 | p | rw | us | ps, at: 0x3000)
        #expect(outcome(t, 0, userRead, memory) == fault(faultP | faultU | faultRSVD))
        try memory.write(0x3000 | p | 1 << 5, at: 0x1000)
        #expect(outcome(t, 0, userRead, memory) == fault(faultP | faultU | faultRSVD))
        try memory.write(0x3000 | p, at: 0x1000)
        #expect(outcome(t, 0x1234, userRead, memory) == .success(0x20_1234))
        try memory.write(0x20_0000 | 1 << 62 | p | rw | us | ps, at: 0x3000)
        #expect(outcome(t, 0, userRead, memory) == fault(faultP | faultU | faultRSVD), "62:52 is reserved in PAE")
        try memory.write(0x20_0000 | 1 << 13 | p | rw | us | ps, at: 0x3000)
        #expect(outcome(t, 0, userRead, memory) == fault(faultP | faultU | faultRSVD))
    }

    @Test("reserved bits in 32-bit paging: bit 21 and PSE-36 bits above MAXPHYADDR in a 4 MiB PDE")
    func reserved32Bit() throws {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(UInt32(0x0040_0000 | 1 << 21 | 0x87), at: 0x1000)
        let t = translator(cr4: pse, maxPhysicalAddress: 36)
        #expect(outcome(t, 0x1234, userRead, memory) == fault(faultP | faultU | faultRSVD))
        try memory.write(UInt32(0x0040_0000 | 1 << 17 | 0x87), at: 0x1000)  // physical bit 36
        #expect(outcome(t, 0x1234, userRead, memory) == fault(faultP | faultU | faultRSVD))
        let wide = translator(cr4: pse, maxPhysicalAddress: 40)
        #expect(outcome(wide, 0x1234, userRead, memory) == .success(0x10_0040_1234))
        #expect(outcome(translator(cr4: 0), 0x1234, userRead, memory) == fault(faultU), "no PSE: a table outside RAM")
    }

    @Test("a 4 MiB page under 32-bit paging with CR4.PSE: its PDE holds the rights and the flags")
    func thirtyTwoBitLargePage() throws {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(UInt32(0x0C00_0000 | 0x83), at: 0x1000 + 3 * 4)  // P, R/W, PS; supervisor
        let t = translator(cr0: pg | wp, cr4: pse)
        #expect(outcome(t, 0x00D2_3456, userRead, memory) == fault(faultP | faultU))
        #expect(outcome(t, 0x00D2_3456, kernelWrite, memory) == .success(0x0C12_3456))
        #expect(try memory.readUInt32(at: 0x1000 + 3 * 4) == 0x0C00_0000 | 0x83 | 0x60, "A and D set")
        #expect(try memory.readUInt32(at: 0x1000 + 2 * 4) == 0 && memory.readUInt32(at: 0x1000 + 4 * 4) == 0)
    }

    @Test("a 2 MiB page under PAE: rights come from the PDE, not the PDPTE")
    func paeLargePage() throws {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(0x3000 | p, at: 0x1020 + 8)  // PDPTE[1]: no R/W or U/S bits at all
        try memory.write(0x60_0000 | p | rw | us | ps, at: 0x3000 + 2 * 8)
        let t = translator(cr0: pg | wp, cr3: 0x1020, cr4: paeBit)
        let linear: UInt64 = 1 << 30 | 2 << 21 | 0x1_2345
        #expect(outcome(t, linear, userWrite, memory) == .success(0x61_2345))
        #expect(try memory.readUInt64(at: 0x1020 + 8) == 0x3000 | p, "a PDPTE has no accessed flag")
        #expect(try memory.readUInt64(at: 0x3000 + 2 * 8) == 0x60_0000 | p | rw | us | ps | accessedBit | dirtyBit)
        try memory.write(0x60_0000 | p | us | ps, at: 0x3000 + 2 * 8)
        #expect(outcome(t, linear, userWrite, memory) == fault(faultP | faultW | faultU))
    }

    @Test("a 1 GiB page in 4-level paging translates with its rights")
    func oneGiBPage() throws {
        let memory = try longModeTables()
        try memory.write(0x8000_0000 | p | us | ps, at: 0x2000 + 8)  // PDPT[1]: 1 GiB, read-only
        let linear: UInt64 = 1 << 30 | 0x2345_6789
        #expect(outcome(longMode, linear, userRead, memory) == .success(0xA345_6789))
        #expect(outcome(longMode, linear, userWrite, memory) == fault(faultP | faultW | faultU))
    }

    @Test("5-level paging: the PML5E's rights count too")
    func fiveLevel() throws {
        let memory = try longModeTables()
        try memory.write(0x1000 | p | rw, at: 0x5000 + 8)  // PML5[1] -> PML4, supervisor only
        let t = translator(cr3: 0x5000, cr4: paeBit | la57, efer: lma)
        #expect(outcome(t, 1 << 48 | 0x10, kernelRead, memory) == .success(0x8010))
        #expect(outcome(t, 1 << 48 | 0x10, userRead, memory) == fault(faultP | faultU))
        #expect(outcome(t, 0x10, kernelRead, memory) == fault(0), "PML5[0] is not present")
        #expect(outcome(t, 1 << 56, kernelRead, memory) == .failure(.nonCanonical))
        try memory.write(0x1000 | p | rw | ps, at: 0x5000 + 8)
        #expect(outcome(t, 1 << 48, kernelRead, memory) == fault(faultP | faultRSVD), "PS is reserved in a PML5E")
    }

    @Test("accessed flags at every level on success, dirty only in the leaf on a write, nothing on a fault")
    func accessedDirty() throws {
        let memory = try longModeTables()
        #expect(outcome(longMode, 0, userRead, memory) == .success(0x8000))
        for table: UInt64 in [0x1000, 0x2000, 0x3000, 0x4000] {
            #expect(try memory.readUInt64(at: table) & (accessedBit | dirtyBit) == accessedBit)
        }
        #expect(outcome(longMode, 0, userWrite, memory) == .success(0x8000))
        #expect(try memory.readUInt64(at: 0x4000) == 0x8000 | p | rw | us | accessedBit | dirtyBit)
        #expect(try memory.readUInt64(at: 0x3000) == 0x4000 | p | rw | us | accessedBit)
        let clean = try longModeTables(leaf: p | us)
        #expect(outcome(longMode, 0, userWrite, clean) == fault(faultP | faultW | faultU))
        #expect(try clean.readUInt64(at: 0x1000) == 0x2000 | p | rw | us, "a fault sets no flag")
        #expect(try clean.readUInt64(at: 0x4000) == 0x8000 | p | us)
        #expect(longMode.translate(0, memory: clean) == 0x8000)
        #expect(try clean.readUInt64(at: 0x1000) == 0x2000 | p | rw | us, "the presence-only walk writes nothing")
    }

    @Test("32-bit paging: A and D go into 4-byte entries and leave their neighbours alone")
    func accessedDirty32Bit() throws {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(UInt32(0x2000 | 0x7), at: 0x1000 + 4)  // PDE[1]
        try memory.write(UInt32(0xFFFF_FFFF), at: 0x1000)
        try memory.write(UInt32(0x9000 | 0x7), at: 0x2000 + 4 * 3)  // PTE[3]
        try memory.write(UInt32(0x1234_5678), at: 0x2000 + 4 * 2)
        let t = translator(cr4: 0)
        #expect(outcome(t, 0x0040_3ABC, userWrite, memory) == .success(0x9ABC))
        #expect(try memory.readUInt32(at: 0x1004) == 0x2000 | 0x27)
        #expect(try memory.readUInt32(at: 0x200C) == 0x9000 | 0x67)
        #expect(try memory.readUInt32(at: 0x1000) == 0xFFFF_FFFF && memory.readUInt32(at: 0x2008) == 0x1234_5678)
    }

    @Test("32-bit and PAE paging check rights now, as long mode always did")
    func legacyModesCheckRights() throws {
        let memory = try GuestMemory(size: 0x10000)
        try memory.write(UInt32(0x2000 | 0x3), at: 0x1000)  // PDE: supervisor
        try memory.write(UInt32(0x9000 | 0x7), at: 0x2000)
        let t = translator(cr4: 0)
        #expect(outcome(t, 0x10, userRead, memory) == fault(faultP | faultU))
        #expect(outcome(t, 0x10, kernelRead, memory) == .success(0x9010))
        #expect(outcome(t, 0x5000_0000, userWrite, memory) == fault(faultW | faultU), "not present")
        let off = translator(cr0: 1, cr4: smap | smep)
        #expect(outcome(off, 0x1_2345_6789, userFetch, memory) == .success(0x2345_6789), "no paging, no checks")
    }
}
