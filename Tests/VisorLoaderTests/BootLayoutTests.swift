import Testing
import TestSupport
import VisorMemory
@testable import VisorLoader

/// Walks the boot page tables by hand for `address`: PML4 -> PDPT -> PD (2 MiB leaf),
/// checking the flags of every level. Returns the physical address, or nil if unmapped.
private func walk(_ address: UInt64, in memory: GuestMemory) throws -> UInt64? {
    let cr3 = BootLayout.pml4Address
    let pml4e = try memory.readUInt64(at: cr3 + ((address >> 39) & 0x1FF) * 8)
    guard pml4e & 1 != 0 else { return nil }
    #expect(pml4e & 0xFFF == 0x7, "PML4E flags")
    let pdpte = try memory.readUInt64(at: (pml4e & 0x000F_FFFF_FFFF_F000) + ((address >> 30) & 0x1FF) * 8)
    guard pdpte & 1 != 0 else { return nil }
    #expect(pdpte & 0xFFF == 0x7, "PDPTE flags (no 1 GiB pages)")
    let pde = try memory.readUInt64(at: (pdpte & 0x000F_FFFF_FFFF_F000) + ((address >> 21) & 0x1FF) * 8)
    guard pde & 1 != 0 else { return nil }
    #expect(pde & 0xFFF == 0x87, "PDE flags: 2 MiB page, user, writable, present")
    return (pde & 0x000F_FFFF_FFE0_0000) | (address & 0x1F_FFFF)
}

@Suite("BootLayout.prepareLongMode")
struct BootLayoutTests {
    @Test("the layout constants are the documented guest entry contract")
    func constants() {
        #expect(BootLayout.gdtAddress == 0x1000)
        #expect(BootLayout.bootInfoAddress == 0x2000)
        #expect(BootLayout.commandLineAddress == 0x2100)
        #expect(BootLayout.commandLineLimit == 3839)
        #expect(BootLayout.pml4Address == 0x8000)
        #expect(BootLayout.pdptAddress == 0x9000)
        #expect(BootLayout.firstPageDirectory == 0x20000)
        #expect(BootLayout.stackTop == 0x10_0000)
        #expect(BootLayout.reservedEnd == 0x10_0000)
        #expect(BootLayout.mappableLimit == 96 << 30)
        #expect(BootLayout.bootInfoMagic == 0x4942_5653)
    }

    @Test("entry state: 64-bit mode with the VMM's tables, RIP = entry, RSP 0x100000, RDI = boot info")
    func entryState() throws {
        let ram = try guestRAM(8 << 20)
        let state = try BootLayout.prepareLongMode(memory: ram, entry: 0x20_0004, commandLine: "")
        #expect(state.mode == .long64(pageTableRoot: 0x8000, gdtBase: 0x1000, gdtLimit: 23))
        #expect(state.rip == 0x20_0004)
        #expect(state.rsp == 0x10_0000)
        #expect(state.rdi == 0x2000)
        #expect(state.rflags == 0x2)
    }

    @Test("boot info: magic SVBI, version 1, RAM size, command line address and length, vCPU count")
    func bootInfo() throws {
        let ram = try guestRAM(8 << 20)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x20_0000, commandLine: "console=ttyS0 quiet", vcpuCount: 4)
        #expect(try ram.readUInt32(at: 0x2000) == 0x4942_5653)
        #expect(try ram.read(4, at: 0x2000) == Array("SVBI".utf8))
        #expect(try ram.readUInt32(at: 0x2004) == 1)
        #expect(try ram.readUInt64(at: 0x2008) == 8 << 20)
        #expect(try ram.readUInt64(at: 0x2010) == 0x2100)
        #expect(try ram.readUInt64(at: 0x2018) == 19)
        #expect(try ram.readUInt32(at: 0x2020) == 4)
        #expect(try ram.readUInt32(at: 0x2024) == 0, "reserved field, over memory that held 0xAA")
        #expect(try ram.read(20, at: 0x2100) == Array("console=ttyS0 quiet".utf8) + [0])
    }

    @Test("an empty command line gives address 0, length 0, and a lone NUL; the default vCPU count is 1")
    func emptyCommandLine() throws {
        let ram = try guestRAM(2 << 20)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "")
        #expect(try ram.readUInt64(at: 0x2010) == 0)
        #expect(try ram.readUInt64(at: 0x2018) == 0)
        #expect(try ram.readUInt32(at: 0x2020) == 1)
        #expect(try ram.readUInt8(at: 0x2100) == 0)
    }

    @Test("the command-line length counts UTF-8 bytes")
    func utf8CommandLine() throws {
        let ram = try guestRAM(2 << 20)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "héllo")
        #expect(try ram.readUInt64(at: 0x2018) == 6)
        #expect(try ram.read(7, at: 0x2100) == [0x68, 0xC3, 0xA9, 0x6C, 0x6C, 0x6F, 0x00])
    }

    @Test("a command line of exactly commandLineLimit bytes fits, NUL at 0x2fff")
    func commandLineAtLimit() throws {
        let ram = try guestRAM(2 << 20)
        let line = String(repeating: "x", count: BootLayout.commandLineLimit)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: line)
        #expect(try ram.readUInt64(at: 0x2018) == 3839)
        #expect(try ram.readUInt8(at: 0x2FFE) == UInt8(ascii: "x"))
        #expect(try ram.readUInt8(at: 0x2FFF) == 0)
    }

    @Test("a command line longer than commandLineLimit is .commandLineTooLong and nothing is written")
    func commandLineTooLong() throws {
        let ram = try guestRAM(2 << 20)
        let line = String(repeating: "y", count: BootLayout.commandLineLimit + 1)
        #expect(throws: LoaderError.commandLineTooLong(length: 3840, limit: 3839)) {
            try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: line)
        }
        #expect(try ram.read(0x10, at: 0x1000) == [UInt8](repeating: 0xAA, count: 0x10))
        #expect(try ram.readUInt64(at: 0x8000) == 0xAAAA_AAAA_AAAA_AAAA)
        #expect(
            LoaderError.commandLineTooLong(length: 3840, limit: 3839).description
                == "command line of 3840 bytes is longer than the 3839 bytes allowed")
    }

    @Test("RAM smaller than 1 MiB, or not covering [0, 1 MiB), is .memoryTooSmall")
    func memoryTooSmall() throws {
        let small = try guestRAM(0xF_F000)
        #expect(throws: LoaderError.memoryTooSmall(needed: 0x10_0000, have: 0xF_F000)) {
            try BootLayout.prepareLongMode(memory: small, entry: 0x10_0000, commandLine: "")
        }
        #expect(try small.readUInt8(at: 0x1000) == 0xAA, "nothing written")
        let notAtZero = try GuestMemory(regions: [GuestRegion(start: 0x1000, size: 2 << 20)])
        #expect(throws: LoaderError.memoryTooSmall(needed: 0x10_0000, have: 2 << 20)) {
            try BootLayout.prepareLongMode(memory: notAtZero, entry: 0x10_0000, commandLine: "")
        }
        let split = try GuestMemory(regions: [
            GuestRegion(start: 0, size: 0x8_0000), GuestRegion(start: 0x8_0000, size: 0x10_0000),
        ])
        #expect(throws: LoaderError.memoryTooSmall(needed: 0x10_0000, have: 0x18_0000)) {
            try BootLayout.prepareLongMode(memory: split, entry: 0x10_0000, commandLine: "")
        }
    }

    @Test("RAM ending past what the page tables can map is .memoryTooLarge")
    func memoryTooLarge() throws {
        let ram = try GuestMemory(regions: [GuestRegion(start: 0, size: 1 << 20), GuestRegion(start: 200 << 30, size: 0x1000)])
        #expect(throws: LoaderError.memoryTooLarge(end: (200 << 30) + 0x1000, limit: 96 << 30)) {
            try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "")
        }
    }

    @Test("GDT: null, 64-bit ring-0 code at 0x08 (L set, D clear), ring-0 data at 0x10")
    func gdt() throws {
        let ram = try guestRAM(2 << 20)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "")
        #expect(try ram.readUInt64(at: 0x1000) == 0)
        let code = try ram.readUInt64(at: 0x1008)
        let data = try ram.readUInt64(at: 0x1010)
        #expect(code == 0x00AF_9A00_0000_FFFF)
        #expect(data == 0x00CF_9200_0000_FFFF)
        #expect(code >> 47 & 1 == 1, "present")
        #expect(code >> 45 & 3 == 0, "DPL 0")
        #expect(code >> 40 & 0xF == 0xA, "execute/read code")
        #expect(code >> 53 & 1 == 1, "L: 64-bit")
        #expect(code >> 54 & 1 == 0, "D must be clear with L")
        #expect(data >> 40 & 0xF == 0x2, "read/write data")
    }

    @Test("page tables identity-map 4 GiB with 2 MiB pages when RAM is small, and nothing beyond")
    func pageTablesSmallRAM() throws {
        let ram = try guestRAM(8 << 20)
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "")
        #expect(try ram.readUInt64(at: 0x8000) == 0x9000 | 0x7)
        #expect(try ram.readUInt64(at: 0x8008) == 0, "only PML4 entry 0")
        for gib in 0..<UInt64(4) {
            #expect(try ram.readUInt64(at: 0x9000 + gib * 8) == (0x20000 + gib * 0x1000) | 0x7)
        }
        #expect(try ram.readUInt64(at: 0x9000 + 4 * 8) == 0, "nothing above 4 GiB")
        #expect(try ram.readUInt64(at: 0x20000) == 0x87)
        #expect(try ram.readUInt64(at: 0x20008) == 0x20_0000 | 0x87)
        #expect(try ram.readUInt64(at: 0x23000 + 511 * 8) == 0xFFE0_0000 | 0x87)
        for address: UInt64 in [0, 0x10_0000, 0x20_0004, 0x7F_FFFF, 0xD000_0000, 0xFEE0_0030, 0xFFFF_FFFF] {
            #expect(try walk(address, in: ram) == address, "0x\(String(address, radix: 16))")
        }
        #expect(try walk(0x1_0000_0000, in: ram) == nil)
        // Memory was dirty (0xAA): unused entries of the GDT, boot info, PML4 and PDPT must
        // still read as zero; memory above the reserved area is untouched.
        #expect(try ram.readUInt64(at: 0x1018) == 0, "no fourth GDT descriptor")
        #expect(try ram.read(0x1000 - 0x18, at: 0x1018) == [UInt8](repeating: 0, count: 0x1000 - 0x18))
        #expect(try ram.read(0x100 - 0x24, at: 0x2024) == [UInt8](repeating: 0, count: 0x100 - 0x24), "rest of boot info")
        #expect(try ram.read(0x1000 - 8, at: 0x8008) == [UInt8](repeating: 0, count: 0x1000 - 8), "rest of PML4")
        #expect(try ram.read(0x1000 - 32, at: 0x9020) == [UInt8](repeating: 0, count: 0x1000 - 32), "rest of PDPT")
        #expect(try ram.readUInt8(at: 0x10_0000) == 0xAA)
    }

    @Test("with more than 4 GiB (and a gap), every RAM byte up to the last is mapped")
    func pageTablesLargeRAM() throws {
        let ram = try GuestMemory(regions: [
            GuestRegion(start: 0, size: 16 << 20),
            GuestRegion(start: 5 << 30, size: 2 << 20),
        ])
        _ = try BootLayout.prepareLongMode(memory: ram, entry: 0x10_0000, commandLine: "")
        let last: UInt64 = (5 << 30) + (2 << 20) - 1
        #expect(try walk(last, in: ram) == last)
        #expect(try walk(0xD000_0000, in: ram) == 0xD000_0000)
        #expect(try walk(0x1_2345_6789, in: ram) == 0x1_2345_6789)
        for gib in 0..<UInt64(6) {
            #expect(try ram.readUInt64(at: 0x9000 + gib * 8) == (0x20000 + gib * 0x1000) | 0x7)
        }
        #expect(try ram.readUInt64(at: 0x9000 + 6 * 8) == 0, "six directories for RAM ending in the sixth GiB")
        #expect(try walk(6 << 30, in: ram) == nil)
        #expect(try ram.readUInt64(at: 0x2008) == 18 << 20, "boot info reports the RAM size, not its end")
    }
}

@Suite("FlatBinaryLoader")
struct FlatBinaryLoaderTests {
    @Test("loads at 0x7C00 with CS = DS = ... = 0x7C0, IP 0, SP 0xFFF0")
    func loadsAtBootSector() throws {
        let ram = try guestRAM(1 << 20)
        let image: [UInt8] = [0xFA, 0xB0, 0x2A, 0xE6, 0xF4, 0xF4]
        let state = try FlatBinaryLoader.load(image, at: 0x7C00, into: ram)
        #expect(state.mode == .real(segment: 0x7C0))
        #expect(state.rip == 0)
        #expect(state.rsp == 0xFFF0)
        #expect(state.rdi == 0)
        #expect(state.rflags == 0x2)
        #expect(try ram.read(6, at: 0x7C00) == image)
        #expect(try ram.readUInt8(at: 0x7BFF) == 0xAA)
        #expect(try ram.readUInt8(at: 0x7C06) == 0xAA)
    }

    @Test("the highest load address 0xFFFF0 gives segment 0xFFFF")
    func highest() throws {
        let ram = try guestRAM(2 << 20)
        let state = try FlatBinaryLoader.load([0xF4], at: 0xFFFF0, into: ram)
        #expect(state.mode == .real(segment: 0xFFFF))
        #expect(try ram.readUInt8(at: 0xFFFF0) == 0xF4)
        #expect(FlatBinaryLoader.highestLoadAddress == 0xFFFF0)
    }

    @Test("an address that is not a multiple of 16 is rejected")
    func unaligned() throws {
        let ram = try guestRAM(1 << 20)
        #expect(throws: LoaderError.loadAddressInvalid(0x7C01, "it must be a multiple of 16")) {
            try FlatBinaryLoader.load([0xF4], at: 0x7C01, into: ram)
        }
        #expect(throws: LoaderError.loadAddressInvalid(0x7C08, "it must be a multiple of 16")) {
            try FlatBinaryLoader.load([0xF4], at: 0x7C08, into: ram)
        }
    }

    @Test("an address above 0xFFFF0 is rejected")
    func tooHigh() throws {
        let ram = try guestRAM(2 << 20)
        #expect(throws: LoaderError.loadAddressInvalid(0x10_0000, "real mode reaches only 0x0-0xffff0 as a segment start")) {
            try FlatBinaryLoader.load([0xF4], at: 0x10_0000, into: ram)
        }
        #expect(LoaderError.loadAddressInvalid(0x10_0000, "why").description == "load address 0x100000 is invalid: why")
    }

    @Test("an empty image is rejected")
    func empty() throws {
        let ram = try guestRAM(1 << 20)
        #expect(throws: LoaderError.malformed("the image is empty")) {
            try FlatBinaryLoader.load([], at: 0x7C00, into: ram)
        }
    }

    @Test("an image running past the end of RAM is .imageTooLarge with the room left, and nothing is written")
    func pastEnd() throws {
        let ram = try guestRAM(0x10000)
        let image = [UInt8](repeating: 0x90, count: 0x200)
        #expect(throws: LoaderError.imageTooLarge(size: 0x200, limit: 0x100)) {
            try FlatBinaryLoader.load(image, at: 0xFF00, into: ram)
        }
        #expect(try ram.readUInt8(at: 0xFF00) == 0xAA)
        #expect(throws: LoaderError.imageTooLarge(size: 0x200, limit: 0)) {
            try FlatBinaryLoader.load(image, at: 0x2_0000, into: ram)
        }
        // Exactly to the end fits.
        #expect(throws: Never.self) { try FlatBinaryLoader.load([UInt8](repeating: 1, count: 0x100), at: 0xFF00, into: ram) }
        #expect(try ram.readUInt8(at: 0xFFFF) == 1)
    }
}
