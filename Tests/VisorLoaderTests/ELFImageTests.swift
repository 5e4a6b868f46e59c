import Testing
import TestSupport
import VisorMemory
@testable import VisorLoader

@Suite("ELFImage: parsing and loading a valid image")
struct ELFValidTests {
    @Test("entry and PT_LOAD segments are parsed; other program headers are skipped")
    func parse() throws {
        let image = try ELFImage(parsing: ELFBuilder.valid().bytes())
        #expect(image.entry == 0x20_0004)
        #expect(
            image.segments == [
                ELFSegment(
                    physicalAddress: 0x20_0000, virtualAddress: 0x20_0000, fileOffset: 0x200,
                    fileSize: 16, memorySize: 16, executable: true, writable: false),
                ELFSegment(
                    physicalAddress: 0x20_1000, virtualAddress: 0x20_1000, fileOffset: 0x210,
                    fileSize: 8, memorySize: 0x100, executable: false, writable: true),
            ])
        #expect(ELFImage.isELF(ELFBuilder.valid().bytes()))
    }

    @Test("load copies p_filesz bytes, zero-fills up to p_memsz, and touches nothing else")
    func load() throws {
        let bytes = ELFBuilder.valid().bytes()
        let image = try ELFImage(parsing: bytes)
        let ram = try guestRAM(4 << 20)
        try image.load(bytes, into: ram, reservedEnd: 0x10_0000)
        #expect(try ram.read(16, at: 0x20_0000) == ELFBuilder.code)
        #expect(try ram.read(8, at: 0x20_1000) == ELFBuilder.initialized)
        #expect(try ram.read(0xF8, at: 0x20_1008) == [UInt8](repeating: 0, count: 0xF8), "BSS is zeroed")
        #expect(try ram.readUInt8(at: 0x20_1100) == 0xAA, "nothing past p_memsz")
        #expect(try ram.readUInt8(at: 0x20_0010) == 0xAA, "nothing past the text segment")
        #expect(try ram.readUInt8(at: 0x1F_FFFF) == 0xAA, "nothing before the text segment")
        #expect(try ram.readUInt8(at: 0x20_0FFF) == 0xAA)
        #expect(try ram.read(0x100, at: 0) == [UInt8](repeating: 0xAA, count: 0x100), "the reserved area is untouched")
    }

    @Test("a segment with p_filesz 0 is all zeros; one with p_memsz 0 is ignored even outside RAM")
    func emptySegments() throws {
        var b = ELFBuilder.oneSegment(at: 0x30_0000)
        b.headers.append(.load(at: 0x30_1000, offset: 0, filesz: 0, memsz: 0x20, flags: 6))
        b.headers.append(.load(at: 0xFFFF_0000_0000, offset: 0, filesz: 0, memsz: 0, flags: 6))
        let bytes = b.bytes()
        let image = try ELFImage(parsing: bytes)
        #expect(image.segments.count == 3)
        let ram = try guestRAM(4 << 20)
        try image.load(bytes, into: ram, reservedEnd: 0x10_0000)
        #expect(try ram.read(0x20, at: 0x30_1000) == [UInt8](repeating: 0, count: 0x20))
        #expect(try ram.readUInt8(at: 0x30_1020) == 0xAA)
    }

    @Test("a segment ending exactly at the end of RAM and starting exactly at reservedEnd loads")
    func exactFit() throws {
        let bytes = ELFBuilder.oneSegment(at: 0x10_0000, memsz: 0x10_0000).bytes()
        let ram = try guestRAM(2 << 20)
        try ELFImage(parsing: bytes).load(bytes, into: ram, reservedEnd: 0x10_0000)
        #expect(try ram.read(16, at: 0x10_0000) == ELFBuilder.code)
        #expect(try ram.readUInt8(at: 0x1F_FFFF) == 0)
    }
}

@Suite("ELFImage: errors")
struct ELFErrorTests {
    func parse(_ b: ELFBuilder) throws(LoaderError) -> ELFImage { try ELFImage(parsing: b.bytes()) }

    /// Parses and loads into 4 MiB of RAM with the first MiB reserved.
    func load(_ b: ELFBuilder, ram: GuestMemory? = nil) throws {
        let bytes = b.bytes()
        let image = try ELFImage(parsing: bytes)
        try image.load(bytes, into: ram ?? guestRAM(4 << 20), reservedEnd: 0x10_0000)
    }

    @Test("a file without the ELF magic is .notELF, and the message points to --load-address")
    func notELF() {
        #expect(throws: LoaderError.notELF) {
            try ELFImage(parsing: [0xEA, 0x00, 0x7C, 0x00, 0x00] + [UInt8](repeating: 0, count: 100))
        }
        #expect(throws: LoaderError.notELF) { try ELFImage(parsing: []) }
        #expect(throws: LoaderError.notELF) { try ELFImage(parsing: [0x7F, 0x45, 0x4C]) }
        #expect(!ELFImage.isELF([0x7F, 0x45, 0x4C, 0x47]))
        #expect(LoaderError.notELF.description.contains("--load-address"))
        #expect(
            LoaderError.notELF.description
                == "not an ELF file (no \\x7fELF magic); to run a raw real-mode binary, pass --load-address")
    }

    @Test("ELFCLASS32 is .wrongClass(1)")
    func wrongClass() {
        var b = ELFBuilder.valid()
        b.elfClass = 1
        #expect(throws: LoaderError.wrongClass(1)) { try parse(b) }
        #expect(LoaderError.wrongClass(1).description.contains("ELFCLASS64"))
    }

    @Test("a big-endian file is .wrongEndianness")
    func bigEndian() {
        var b = ELFBuilder.valid()
        b.data = 2
        #expect(throws: LoaderError.wrongEndianness) { try parse(b) }
    }

    @Test("an aarch64 (183) file is .wrongMachine(183)")
    func wrongMachine() {
        var b = ELFBuilder.valid()
        b.machine = 183
        #expect(throws: LoaderError.wrongMachine(183)) { try parse(b) }
        #expect(LoaderError.wrongMachine(183).description == "ELF machine 183 is not x86-64 (62)")
    }

    @Test("ET_DYN (3) is .wrongType(3)")
    func wrongType() {
        var b = ELFBuilder.valid()
        b.type = 3
        #expect(throws: LoaderError.wrongType(3)) { try parse(b) }
        #expect(LoaderError.wrongType(3).description.contains("ET_EXEC"))
    }

    @Test("a file cut inside the ELF header is .malformed")
    func truncatedHeader() {
        let bytes = Array(ELFBuilder.valid().bytes().prefix(63))
        #expect(throws: LoaderError.malformed("file is shorter than an ELF64 header")) { try ELFImage(parsing: bytes) }
        #expect(throws: LoaderError.malformed("file is shorter than an ELF64 header")) {
            try ELFImage(parsing: [0x7F, 0x45, 0x4C, 0x46])
        }
    }

    @Test("program headers past the end of the file are .malformed")
    func headersPastEnd() {
        var b = ELFBuilder.valid()
        b.phnum = 12  // 12 * 56 bytes from offset 64 runs past the 0x218-byte file
        #expect(throws: LoaderError.malformed("program headers run past the end of the file")) { try parse(b) }
        let cut = Array(ELFBuilder.valid().bytes().prefix(64 + 56 + 20))  // cut inside the second header
        #expect(throws: LoaderError.malformed("program headers run past the end of the file")) { try ELFImage(parsing: cut) }
        var far = ELFBuilder.valid().bytes()
        put(&far, 32, UInt64.max - 10)  // e_phoff
        #expect(throws: LoaderError.malformed("program headers run past the end of the file")) { try ELFImage(parsing: far) }
    }

    @Test("zero program headers is .noLoadableSegments; a header size below 56 is .malformed")
    func headerCounts() {
        var none = ELFBuilder.valid()
        none.phnum = 0
        #expect(throws: LoaderError.noLoadableSegments) { try parse(none) }
        var small = ELFBuilder.valid().bytes()
        put(&small, 54, UInt16(32))
        #expect(throws: LoaderError.malformed("program header size 32 is smaller than 56")) { try ELFImage(parsing: small) }
    }

    @Test("a segment whose file range runs past the end of the file is .malformed")
    func segmentPastEnd() {
        var b = ELFBuilder.oneSegment(at: 0x20_0000, filesz: 0x1000, memsz: 0x1000)
        #expect(throws: LoaderError.malformed("segment 0 runs past the end of the file")) { try parse(b) }
        b.headers[0] = .load(at: 0x20_0000, offset: 0x211, filesz: 0, memsz: 0x10)  // file is 0x210 bytes
        #expect(throws: LoaderError.malformed("segment 0 runs past the end of the file")) { try parse(b) }
        b.headers[0] = .load(at: 0x20_0000, offset: .max, filesz: 2, memsz: 2)
        #expect(throws: LoaderError.malformed("segment 0 runs past the end of the file")) { try parse(b) }
        b.headers[0] = .load(at: 0x20_0000, offset: 0x201, filesz: .max, memsz: .max)
        #expect(throws: LoaderError.malformed("segment 0 runs past the end of the file")) { try parse(b) }
        // Exactly to the end is fine.
        b.headers[0] = .load(at: 0x20_0000, offset: 0x200, filesz: 16, memsz: 16)
        #expect(throws: Never.self) { try parse(b) }
    }

    @Test("p_filesz > p_memsz is .malformed, naming the segment and both sizes")
    func fileBiggerThanMemory() {
        var b = ELFBuilder.valid()
        b.headers[1].memsz = 4
        #expect(throws: LoaderError.malformed("segment 1 has more file bytes (8) than memory bytes (4)")) { try parse(b) }
    }

    @Test("no PT_LOAD among the program headers is .noLoadableSegments")
    func noLoad() {
        var b = ELFBuilder.valid()
        b.headers[0].type = 6  // PT_PHDR
        b.headers[1].type = 0x6474_E551  // PT_GNU_STACK
        #expect(throws: LoaderError.noLoadableSegments) { try parse(b) }
        #expect(LoaderError.noLoadableSegments.description == "ELF file has no PT_LOAD segments")
    }

    @Test("an address range wrapping past UInt64.max is .malformed, for p_paddr and for p_vaddr")
    func wrapAround() {
        var b = ELFBuilder.oneSegment(at: UInt64.max - 0xFFF, filesz: 0, memsz: 0x2000)
        #expect(throws: LoaderError.malformed("segment 0 wraps around the address space")) { try parse(b) }
        b.headers[0] = ProgramHeader(offset: 0x200, vaddr: UInt64.max - 0xF, paddr: 0x20_0000, filesz: 16, memsz: 16)
        #expect(throws: LoaderError.malformed("segment 0 wraps around the address space")) { try parse(b) }
        b.headers[0] = ProgramHeader(offset: 0x200, vaddr: 0x20_0000, paddr: UInt64.max - 0xF, filesz: 16, memsz: 16)
        #expect(throws: LoaderError.malformed("segment 0 wraps around the address space")) { try parse(b) }
        // Ending exactly at UInt64.max parses (and then fails to load, outside RAM).
        b.headers[0] = .load(at: UInt64.max - 16, offset: 0x200, filesz: 16, memsz: 16)
        b.entry = UInt64.max - 16
        #expect(throws: LoaderError.segmentOutsideRAM(address: UInt64.max - 16, size: 16)) { try load(b) }
    }

    @Test("a segment outside RAM is .segmentOutsideRAM, whether past the end or straddling it")
    func outsideRAM() {
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0x80_0000, size: 16)) {
            try load(.oneSegment(at: 0x80_0000))
        }
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0x3F_FFF0, size: 0x20)) {
            try load(.oneSegment(at: 0x3F_FFF0, memsz: 0x20))
        }
        #expect(LoaderError.segmentOutsideRAM(address: 0x80_0000, size: 16).description.contains("--memory"))
    }

    @Test("a segment inside a gap between two RAM regions is .segmentOutsideRAM")
    func inGap() throws {
        let ram = try GuestMemory(regions: [GuestRegion(start: 0, size: 2 << 20), GuestRegion(start: 4 << 20, size: 2 << 20)])
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0x1F_FFF8, size: 16)) {
            try load(.oneSegment(at: 0x1F_FFF8), ram: ram)
        }
        #expect(throws: Never.self) { try load(.oneSegment(at: 0x40_0000), ram: ram) }
    }

    @Test("a segment reaching into the reserved first MiB is .segmentOverlapsReserved")
    func reserved() {
        #expect(throws: LoaderError.segmentOverlapsReserved(address: 0xFF000, size: 0x2000, reservedEnd: 0x10_0000)) {
            try load(.oneSegment(at: 0xFF000, memsz: 0x2000))
        }
        #expect(throws: LoaderError.segmentOverlapsReserved(address: 0x7C00, size: 16, reservedEnd: 0x10_0000)) {
            try load(.oneSegment(at: 0x7C00))
        }
        #expect(
            LoaderError.segmentOverlapsReserved(address: 0x7C00, size: 16, reservedEnd: 0x10_0000).description
                == "segment at 0x7c00 of 16 bytes overlaps the VMM's reserved area below 0x100000; link the guest at or above 0x100000"
        )
    }

    @Test("p_vaddr != p_paddr is .virtualDiffersFromPhysical")
    func virtualDiffers() {
        var b = ELFBuilder.oneSegment(at: 0x20_0000)
        b.headers[0].vaddr = 0xFFFF_FFFF_8020_0000
        b.entry = 0xFFFF_FFFF_8020_0000
        #expect(throws: LoaderError.virtualDiffersFromPhysical(virtual: 0xFFFF_FFFF_8020_0000, physical: 0x20_0000)) {
            try load(b)
        }
    }

    @Test("an entry point outside every executable segment is .entryNotLoaded")
    func entryNotLoaded() {
        var inData = ELFBuilder.valid()
        inData.entry = 0x20_1000  // inside the R+W data segment
        #expect(throws: LoaderError.entryNotLoaded(0x20_1000)) { try load(inData) }
        var pastText = ELFBuilder.valid()
        pastText.entry = 0x20_0010  // one past the 16-byte text segment
        #expect(throws: LoaderError.entryNotLoaded(0x20_0010)) { try load(pastText) }
        var before = ELFBuilder.valid()
        before.entry = 0x1F_FFFF
        #expect(throws: LoaderError.entryNotLoaded(0x1F_FFFF)) { try load(before) }
        var inBSS = ELFBuilder.oneSegment(at: 0x20_0000, filesz: 16, memsz: 0x100)
        inBSS.entry = 0x20_00FF  // in the zero-filled part of an executable segment: allowed
        #expect(throws: Never.self) { try load(inBSS) }
    }

    @Test("a failing check leaves guest memory untouched, even for segments checked earlier")
    func nothingWrittenOnFailure() throws {
        var b = ELFBuilder.valid()
        b.headers[1].paddr = 0x80_0000  // second segment outside RAM (and vaddr differs)
        b.headers[1].vaddr = 0x80_0000
        let ram = try guestRAM(4 << 20)
        #expect(throws: LoaderError.segmentOutsideRAM(address: 0x80_0000, size: 0x100)) { try load(b, ram: ram) }
        #expect(try ram.read(16, at: 0x20_0000) == [UInt8](repeating: 0xAA, count: 16))
    }
}
