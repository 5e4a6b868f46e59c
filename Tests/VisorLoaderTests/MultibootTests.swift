import Testing
import TestSupport
import VisorMemory
@testable import VisorLoader

/// Little multiboot images for the tests: an ELF32 or ELF64 file or a flat image with the
/// address fields, each with its header at a chosen offset.
enum MultibootImages {
    static let magic: UInt32 = 0x1BAD_B002
    static let code: [UInt8] = [0xB8, 0x00, 0x00, 0x00, 0x00, 0xE7, 0xF4, 0xF4]

    /// magic, flags, checksum (right unless `checksum` is given).
    static func header(flags: UInt32 = 3, checksum: UInt32? = nil) -> [UInt8] {
        le(magic) + le(flags) + le(checksum ?? (0 &- magic &- flags))
    }

    static func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le64(_ v: UInt64) -> [UInt8] { le(UInt32(truncatingIfNeeded: v)) + le(UInt32(v >> 32)) }

    /// An ELF32 i386 executable: a 52-byte header, program headers at 52, and `payload`
    /// at 0x100 (which the caller's segments point into); the multiboot header at 0x80.
    static func elf32(
        entry: UInt32, segments: [(offset: UInt32, vaddr: UInt32, paddr: UInt32, filesz: UInt32, memsz: UInt32)],
        payload: [UInt8] = code, flags: UInt32 = 3, machine: UInt16 = 3
    ) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 0x100)
        out.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        out[4] = 1
        out[5] = 1
        out[6] = 1
        out.replaceSubrange(16..<18, with: le16(2))
        out.replaceSubrange(18..<20, with: le16(machine))
        out.replaceSubrange(24..<28, with: le(entry))
        out.replaceSubrange(28..<32, with: le(52))
        out.replaceSubrange(42..<44, with: le16(32))
        out.replaceSubrange(44..<46, with: le16(UInt16(segments.count)))
        for (i, s) in segments.enumerated() {
            let at = 52 + i * 32
            let ph = le(1) + le(s.offset) + le(s.vaddr) + le(s.paddr) + le(s.filesz) + le(s.memsz) + le(7) + le(4)
            out.replaceSubrange(at..<(at + 32), with: ph)
        }
        out.replaceSubrange(0x80..<0x8C, with: header(flags: flags))
        return out + payload
    }

    /// A flat image: 16 bytes of code, the header with address fields at offset 16, code.
    static func flat(
        load: UInt32 = 0x8000, headerAddress: UInt32? = nil, loadEnd: UInt32 = 0, bssEnd: UInt32 = 0,
        entry: UInt32? = nil
    ) -> [UInt8] {
        let flags: UInt32 = 0x1_0003
        return code + code + header(flags: flags) + le(headerAddress ?? load + 16) + le(load) + le(loadEnd) + le(bssEnd)
            + le(entry ?? load) + code
    }
}

@Suite("Multiboot: the header")
struct MultibootHeaderTests {
    @Test("found 4-byte aligned anywhere in the first 8 KiB, not past it, not unaligned")
    func search() throws {
        let header = MultibootImages.header()
        for offset in [0, 4, 8188 - 12 + 4] {
            let bytes = [UInt8](repeating: 0, count: offset) + header + [0, 0, 0, 0]
            #expect(try MultibootHeader(searching: bytes).offset == offset)
            #expect(MultibootHeader.hasMagic(bytes))
        }
        let late = [UInt8](repeating: 0, count: 8184) + header
        #expect(throws: LoaderError.multibootNoHeader) { try MultibootHeader(searching: late) }
        let unaligned = [0, 0] + header + [0, 0]
        #expect(throws: LoaderError.multibootNoHeader) { try MultibootHeader(searching: unaligned) }
        #expect(!MultibootHeader.hasMagic(unaligned))
        #expect(throws: LoaderError.multibootNoHeader) { try MultibootHeader(searching: []) }
    }

    @Test("a bad checksum is refused; a later good header is taken")
    func checksum() throws {
        let bad = MultibootImages.header(checksum: 0)
        #expect(throws: LoaderError.multibootChecksum(offset: 8)) {
            try MultibootHeader(searching: [UInt8](repeating: 0, count: 8) + bad)
        }
        let both = bad + MultibootImages.header(flags: 1)
        let header = try MultibootHeader(searching: both)
        #expect(header.offset == 12)
        #expect(header.flags == 1)
    }

    @Test("required flags 0 and 1 are honoured; 2 and the other bits 3-15 are refused; 16-31 are optional")
    func flags() throws {
        #expect(try MultibootHeader(searching: MultibootImages.header(flags: 0x3)).flags == 3)
        #expect(try MultibootHeader(searching: MultibootImages.header(flags: 0xFFFE_0003)).flags == 0xFFFE_0003)
        #expect(throws: LoaderError.multibootUnsupportedFlags(0x4)) {
            try MultibootHeader(searching: MultibootImages.header(flags: 0x7))
        }
        #expect(throws: LoaderError.multibootUnsupportedFlags(0x8000)) {
            try MultibootHeader(searching: MultibootImages.header(flags: 0x8000))
        }
    }

    @Test("address fields cut off by the end of the file are refused")
    func truncatedAddressFields() {
        #expect(throws: LoaderError.multibootAddressFields("the header's address fields run past the end of the file")) {
            try MultibootHeader(searching: MultibootImages.header(flags: 0x1_0000) + [0, 0, 0, 0])
        }
    }
}

@Suite("Multiboot: planning and loading")
struct MultibootPlanTests {
    static let ram: [Range<UInt64>] = [0..<(16 << 20)]

    @Test("ELF32: PT_LOAD segments at p_paddr, zero-filled, entered in 32-bit protected mode with EAX and EBX")
    func elf32() throws {
        let bytes = MultibootImages.elf32(
            entry: 0x10_0004, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 0x20)])
        let plan = try MultibootPlan(image: bytes, ram: Self.ram, commandLine: "", modules: [])
        #expect(plan.segments == [.init(address: 0x10_0000, fileRange: 0x100..<0x108, memorySize: 0x20)])
        #expect(plan.entry == 0x10_0004)
        let memory = try guestRAM(16 << 20)
        let state = try plan.load(image: bytes, modules: [], into: memory)
        #expect(try memory.read(8, at: 0x10_0000) == MultibootImages.code)
        #expect(try memory.read(0x18, at: 0x10_0008) == [UInt8](repeating: 0, count: 0x18))
        #expect(try memory.readUInt8(at: 0x10_0020) == 0xAA)
        #expect(state.mode == .protected32(gdtBase: plan.gdtAddress, gdtLimit: 23, codeSelector: 8, dataSelector: 0x10))
        #expect(state.rip == 0x10_0004)
        #expect(state.rax == 0x2BAD_B002)
        #expect(state.rbx == plan.infoAddress)
        #expect(state.rflags == 2, "interrupts off")
        #expect(try memory.readUInt64(at: plan.gdtAddress + 8) == 0x00CF_9A00_0000_FFFF)
        #expect(try memory.readUInt64(at: plan.gdtAddress + 16) == 0x00CF_9200_0000_FFFF)
    }

    @Test("segments below 1 MiB load, and the loader's block avoids them")
    func lowSegments() throws {
        // The image covers 0x8000-0x20000, so the block cannot take its preferred 0x10000.
        let bytes = MultibootImages.elf32(entry: 0x8000, segments: [(0x100, 0x8000, 0x8000, 8, 0x18000)])
        let plan = try MultibootPlan(image: bytes, ram: Self.ram, commandLine: "x", modules: [])
        #expect(plan.segments[0].address == 0x8000)
        #expect(plan.blockAddress == 0x20000)
    }

    @Test("ELF64: the entry is translated from virtual to physical")
    func elf64() throws {
        var b = ELFBuilder()
        b.entry = 0xFFFF_FFFF_8000_0010
        b.payload = MultibootImages.header() + MultibootImages.code
        b.headers = [
            ProgramHeader(offset: 0x200, vaddr: 0xFFFF_FFFF_8000_0000, paddr: 0x40_0000, filesz: 20, memsz: 0x1000)
        ]
        let bytes = b.bytes()
        let plan = try MultibootPlan(image: bytes, ram: Self.ram, commandLine: "", modules: [])
        #expect(plan.entry == 0x40_0010)
        #expect(plan.segments == [.init(address: 0x40_0000, fileRange: 0x200..<0x214, memorySize: 0x1000)])
    }

    @Test("address fields: load_addr from the header's offset, load_end 0 is the file's end, bss_end adds zeros")
    func addressFields() throws {
        let bytes = MultibootImages.flat(load: 0x7FF0, bssEnd: 0x8100, entry: 0x8000)
        let plan = try MultibootPlan(image: bytes, ram: Self.ram, commandLine: "", modules: [])
        // The header is at offset 16 and header_addr is load + 16: the file loads from 0.
        #expect(plan.segments == [.init(address: 0x7FF0, fileRange: 0..<bytes.count, memorySize: 0x110)])
        #expect(plan.entry == 0x8000)
        let withEnd = MultibootImages.flat(load: 0x8000, loadEnd: 0x8010)
        let second = try MultibootPlan(image: withEnd, ram: Self.ram, commandLine: "", modules: [])
        #expect(second.segments == [.init(address: 0x8000, fileRange: 0..<16, memorySize: 16)])
        // header_addr further in than the header's offset: the file starts before the image.
        let shifted = MultibootImages.flat(load: 0x8000, headerAddress: 0x800C)
        let third = try MultibootPlan(image: shifted, ram: Self.ram, commandLine: "", modules: [])
        #expect(third.segments == [.init(address: 0x8000, fileRange: 4..<shifted.count, memorySize: UInt64(shifted.count - 4))])
    }

    @Test("the information, memory map, module list and strings, byte for byte")
    func infoLayout() throws {
        let bytes = MultibootImages.elf32(entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 0x2000)])
        let modules = [
            MultibootModule(bytes: Array("first module".utf8), string: "one a=1"),
            MultibootModule(bytes: [UInt8](repeating: 7, count: 0x1001), string: "two"),
        ]
        let ram: [Range<UInt64>] = [0..<(64 << 20), (4 << 30)..<((4 << 30) + (1 << 20))]
        let plan = try MultibootPlan(image: bytes, ram: ram, commandLine: "console=ttyS0", modules: modules)
        #expect(plan.blockAddress == 0x10000)
        #expect(plan.infoAddress == 0x10020)
        // Modules go page-aligned after the image: 0x102000, then 0x103000 (the first is 12 bytes).
        #expect(plan.moduleAddresses == [0x10_2000, 0x10_3000])
        let b = plan.block
        func u32(_ at: Int) -> UInt32 { le32(b, at) }
        func u64(_ at: Int) -> UInt64 { le64(b, at) }
        func string(_ address: UInt32) -> String {
            let start = Int(UInt64(address) - plan.blockAddress)
            let end = b[start...].firstIndex(of: 0)!
            return String(decoding: b[start..<end], as: UTF8.self)
        }
        let info = 32
        #expect(u32(info) == 0x24D, "flags: mem, cmdline, mods, mmap, loader name")
        #expect(u32(info + 4) == 639)
        #expect(u32(info + 8) == (64 << 10) - 1024)
        #expect(u32(info + 12) == 0, "no boot device")
        #expect(string(u32(info + 16)) == "console=ttyS0")
        #expect(u32(info + 20) == 2)
        #expect(string(u32(info + 64)) == "SwiftVisor")
        // The memory map: 5 entries of 24 bytes right after the 88-byte information.
        #expect(u32(info + 44) == 5 * 24)
        #expect(u32(info + 48) == 0x10000 + 32 + 88)
        let mmap = info + 88
        let expected: [(UInt64, UInt64, UInt32)] = [
            (0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x10_0000, (64 << 20) - 0x10_0000, 1),
            (4 << 30, 1 << 20, 1),
        ]
        for (i, e) in expected.enumerated() {
            let at = mmap + i * 24
            #expect(u32(at) == 20)
            #expect(u64(at + 4) == e.0)
            #expect(u64(at + 12) == e.1)
            #expect(u32(at + 20) == e.2)
        }
        let mods = mmap + 5 * 24
        #expect(u32(info + 24) == UInt32(0x10000 + mods))
        #expect(u32(mods) == 0x10_2000)
        #expect(u32(mods + 4) == 0x10_2000 + 12)
        #expect(string(u32(mods + 8)) == "one a=1")
        #expect(u32(mods + 12) == 0)
        #expect(u32(mods + 16) == 0x10_3000)
        #expect(u32(mods + 20) == 0x10_4001)
        #expect(string(u32(mods + 24)) == "two")
        // Strings follow the module list: command line, loader name, module strings.
        #expect(u32(info + 16) == UInt32(0x10000 + mods + 32))
        #expect(b.count == mods + 32 + 14 + 11 + 8 + 4)

        let memory = try guestRAM(64 << 20)
        _ = try plan.load(image: bytes, modules: modules, into: memory)
        #expect(try memory.read(12, at: 0x10_2000) == Array("first module".utf8))
        #expect(try memory.read(0x1001, at: 0x10_3000) == modules[1].bytes)
        #expect(try memory.read(b.count, at: 0x10000) == b)
    }

    @Test("RAM beyond what mem_upper can count clamps it instead of trapping")
    func hugeRAM() throws {
        let bytes = MultibootImages.elf32(entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 8)])
        let plan = try MultibootPlan(image: bytes, ram: [0..<(8 << 40)], commandLine: "", modules: [])
        #expect(le32(plan.block, 32 + 8) == UInt32.max)
    }

    @Test("bad input: each a typed error")
    func badInput() throws {
        func plan(_ bytes: [UInt8], ram: [Range<UInt64>] = Self.ram, modules: [MultibootModule] = []) throws {
            _ = try MultibootPlan(image: bytes, ram: ram, commandLine: "", modules: modules)
        }
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0x200_0000, size: 8)) {
            try plan(MultibootImages.elf32(entry: 0x200_0000, segments: [(0x100, 0x200_0000, 0x200_0000, 8, 8)]))
        }
        // Above 4 GiB, even where RAM is, paging off cannot reach it.
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0xFFFF_F000, size: 0x2000)) {
            try plan(
                MultibootImages.elf32(entry: 0xFFFF_F000, segments: [(0x100, 0xFFFF_F000, 0xFFFF_F000, 8, 0x2000)]),
                ram: [0..<(3 << 30), (3 << 30)..<(5 << 30)])
        }
        #expect(throws: LoaderError.segmentsOverlap(first: 0x10_0000, second: 0x10_0800)) {
            try plan(
                MultibootImages.elf32(
                    entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 0x1000), (0x100, 0, 0x10_0800, 8, 8)]))
        }
        #expect(throws: LoaderError.entryNotLoaded(0x30_0000)) {
            try plan(MultibootImages.elf32(entry: 0x30_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 8)]))
        }
        #expect(throws: LoaderError.moduleDoesNotFit(index: 0, size: 16 << 20)) {
            try plan(
                MultibootImages.elf32(entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 8)]),
                modules: [MultibootModule(bytes: [UInt8](repeating: 0, count: 16 << 20), string: "")])
        }
        #expect(throws: LoaderError.wrongMachine(62)) {
            try plan(MultibootImages.elf32(entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 8, 8)], machine: 62))
        }
        #expect(throws: LoaderError.malformed("segment 0 runs past the end of the file")) {
            try plan(MultibootImages.elf32(entry: 0x10_0000, segments: [(0x100, 0x10_0000, 0x10_0000, 0x1000, 0x1000)]))
        }
        #expect(throws: LoaderError.multibootNotELF) { try plan([0, 0, 0, 0] + MultibootImages.header()) }
        #expect(throws: LoaderError.memoryTooSmall(needed: 0x10_0000, have: 0x8_0000)) {
            try plan(MultibootImages.flat(), ram: [0..<0x8_0000])
        }
        #expect(throws: LoaderError.multibootAddressFields("load_addr 0x8020 is above header_addr 0x8010")) {
            try plan(MultibootImages.flat(load: 0x8020, headerAddress: 0x8010))
        }
        #expect(
            throws: LoaderError.multibootAddressFields(
                "header_addr - load_addr (0x20) is more than the header's offset in the file")
        ) {
            try plan(MultibootImages.flat(load: 0x8000, headerAddress: 0x8020))
        }
        #expect(throws: LoaderError.multibootAddressFields("load_end_addr 0x8000 is not above load_addr 0x8000")) {
            try plan(MultibootImages.flat(load: 0x8000, loadEnd: 0x8000))
        }
        #expect(throws: LoaderError.multibootAddressFields("load_end_addr asks for 4096 bytes; the file has 56 from load_addr")) {
            try plan(MultibootImages.flat(load: 0x8000, loadEnd: 0x9000))
        }
        #expect(throws: LoaderError.multibootAddressFields("bss_end_addr 0x8010 is below the loaded end 0x8038")) {
            try plan(MultibootImages.flat(load: 0x8000, bssEnd: 0x8010))
        }
        #expect(throws: LoaderError.entryNotLoaded(0x9000)) { try plan(MultibootImages.flat(load: 0x8000, entry: 0x9000)) }
        // Every message is one line.
        let errors: [LoaderError] = [
            .multibootNoHeader, .multibootChecksum(offset: 4), .multibootUnsupportedFlags(4), .multibootNotELF,
            .multibootAddressFields("x"), .segmentsOverlap(first: 1, second: 2), .moduleDoesNotFit(index: 0, size: 1),
            .multibootNoRoom(size: 1), .tooManyModules(count: 2000, limit: 1024),
        ]
        for error in errors { #expect(!error.description.contains("\n")) }
    }
}
