import Glibc
import Testing
@testable import VisorMemory

@Suite("GuestMemory: layout")
struct GuestMemoryLayoutTests {
    @Test("a zero-size region is .invalidLayout")
    func zeroSize() {
        #expect(throws: GuestMemoryError.invalidLayout("a region has size zero")) { try GuestMemory(size: 0) }
        #expect(throws: GuestMemoryError.invalidLayout("a region has size zero")) {
            try GuestMemory(regions: [GuestRegion(start: 0, size: 0x1000), GuestRegion(start: 0x2000, size: 0)])
        }
    }

    @Test("no regions at all is .invalidLayout")
    func noRegions() {
        #expect(throws: GuestMemoryError.invalidLayout("no memory regions")) { try GuestMemory(regions: []) }
    }

    @Test("an unaligned start or size is .invalidLayout")
    func unaligned() {
        #expect(throws: GuestMemoryError.invalidLayout("region at 0x0 of 4097 bytes is not page-aligned")) {
            try GuestMemory(size: 4097)
        }
        #expect(throws: GuestMemoryError.invalidLayout("region at 0x800 of 4096 bytes is not page-aligned")) {
            try GuestMemory(regions: [GuestRegion(start: 0x800, size: 0x1000)])
        }
    }

    @Test("overlapping regions are .invalidLayout, in any order")
    func overlapping() {
        #expect(throws: GuestMemoryError.invalidLayout("regions overlap at 0x1000")) {
            try GuestMemory(regions: [GuestRegion(start: 0, size: 0x2000), GuestRegion(start: 0x1000, size: 0x2000)])
        }
        #expect(throws: GuestMemoryError.invalidLayout("regions overlap at 0x1000")) {
            try GuestMemory(regions: [GuestRegion(start: 0x1000, size: 0x1000), GuestRegion(start: 0, size: 0x10000)])
        }
        #expect(throws: GuestMemoryError.invalidLayout("regions overlap at 0x4000")) {
            try GuestMemory(regions: [GuestRegion(start: 0x4000, size: 0x1000), GuestRegion(start: 0x4000, size: 0x1000)])
        }
        #expect(
            GuestMemoryError.invalidLayout("regions overlap at 0x4000").description
                == "invalid guest memory layout: regions overlap at 0x4000")
    }

    @Test("a region wrapping past the end of the 64-bit space is .invalidLayout")
    func wraps() {
        #expect(throws: GuestMemoryError.invalidLayout("region at 0xfffffffffffff000 wraps around the address space")) {
            try GuestMemory(regions: [GuestRegion(start: 0xFFFF_FFFF_FFFF_F000, size: 0x2000)])
        }
    }

    @Test("an enormous region (1 << 60 bytes) fails with .cannotMap rather than crashing")
    func enormous() {
        let error = #expect(throws: GuestMemoryError.self) { try GuestMemory(size: 1 << 60) }
        guard case .cannotMap(let size, let code)? = error else {
            Issue.record("expected .cannotMap, got \(String(describing: error))")
            return
        }
        #expect(size == 1 << 60)
        #expect(code == ENOMEM)
        #expect(error?.description == "cannot allocate 1099511627776 MiB of guest memory: Cannot allocate memory")
    }

    @Test("when a later region cannot be mapped, the whole layout fails with .cannotMap")
    func laterRegionFails() {
        let error = #expect(throws: GuestMemoryError.self) {
            try GuestMemory(regions: [GuestRegion(start: 0, size: 0x1000), GuestRegion(start: 1 << 61, size: 1 << 60)])
        }
        #expect(error == .cannotMap(size: 1 << 60, errno: ENOMEM))
    }

    // For a region larger than Int.max, mmap never runs; the error once carried a stale
    // errno (0, "Success") instead of ENOMEM.
    @Test("a region larger than Int.max fails with .cannotMap carrying a real error code, not a stale errno")
    func largerThanInt() {
        errno = 0
        let error = #expect(throws: GuestMemoryError.self) { try GuestMemory(size: 1 << 63) }
        guard case .cannotMap(let size, let code)? = error else {
            Issue.record("expected .cannotMap, got \(String(describing: error))")
            return
        }
        #expect(size == 1 << 63)
        #expect(code != 0, "errno 0 means no error was recorded")
        #expect(error?.description.hasSuffix("Success") == false, "\(error!)")
    }

    @Test("regions are kept in address order with their sizes and host mappings")
    func multiRegionLayout() throws {
        let memory = try GuestMemory(regions: [
            GuestRegion(start: 0x10_0000, size: 0x2000),
            GuestRegion(start: 0, size: 0x1_0000),
        ])
        #expect(memory.regions == [GuestRegion(start: 0, size: 0x1_0000), GuestRegion(start: 0x10_0000, size: 0x2000)])
        #expect(memory.totalSize == 0x1_2000)
        #expect(memory.regions[1].end == 0x10_2000)
        #expect(memory.hostMappings.count == 2)
        #expect(memory.hostMappings.map(\.region) == memory.regions)
        #expect(memory.hostMappings.allSatisfy { $0.hostAddress != 0 && $0.hostAddress % 4096 == 0 })
        #expect(GuestMemory.pageSize == 4096)
    }

    @Test("fresh memory reads as zeros")
    func zeroed() throws {
        let memory = try GuestMemory(size: 0x2000)
        #expect(try memory.read(0x2000, at: 0) == [UInt8](repeating: 0, count: 0x2000))
    }
}

@Suite("GuestMemory: access")
struct GuestMemoryAccessTests {
    /// [0, 64 KiB) and [128 KiB, 192 KiB), with a 64 KiB gap.
    func gapped() throws -> GuestMemory {
        try GuestMemory(regions: [GuestRegion(start: 0, size: 0x1_0000), GuestRegion(start: 0x2_0000, size: 0x1_0000)])
    }

    @Test("every integer width is written and read little-endian")
    func integers() throws {
        let memory = try GuestMemory(size: 0x1000)
        try memory.write(UInt8(0xA5), at: 0x10)
        try memory.write(UInt16(0x1234), at: 0x20)
        try memory.write(UInt32(0xDEAD_BEEF), at: 0x30)
        try memory.write(UInt64(0x0123_4567_89AB_CDEF), at: 0x40)
        #expect(try memory.read(1, at: 0x10) == [0xA5])
        #expect(try memory.read(2, at: 0x20) == [0x34, 0x12])
        #expect(try memory.read(4, at: 0x30) == [0xEF, 0xBE, 0xAD, 0xDE])
        #expect(try memory.read(8, at: 0x40) == [0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01])
        #expect(try memory.readUInt8(at: 0x10) == 0xA5)
        #expect(try memory.readUInt16(at: 0x20) == 0x1234)
        #expect(try memory.readUInt32(at: 0x30) == 0xDEAD_BEEF)
        #expect(try memory.readUInt64(at: 0x40) == 0x0123_4567_89AB_CDEF)
        // Unaligned and from raw bytes.
        try memory.write([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09], at: 0x101)
        #expect(try memory.readUInt16(at: 0x101) == 0x0201)
        #expect(try memory.readUInt32(at: 0x103) == 0x0605_0403)
        #expect(try memory.readUInt64(at: 0x102) == 0x0908_0706_0504_0302)
        try memory.write(UInt64(0xFFEE_DDCC_BBAA_9988), at: 0x203)
        #expect(try memory.readUInt64(at: 0x203) == 0xFFEE_DDCC_BBAA_9988)
    }

    @Test("accesses ending exactly at the end of a region work; one byte further throws .outOfBounds")
    func endOfRegion() throws {
        let memory = try GuestMemory(size: 0x1000)
        try memory.write(UInt64(0x1122_3344_5566_7788), at: 0xFF8)
        #expect(try memory.readUInt64(at: 0xFF8) == 0x1122_3344_5566_7788)
        #expect(try memory.readUInt8(at: 0xFFF) == 0x11)
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFF9, count: 8)) { try memory.readUInt64(at: 0xFF9) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFD, count: 4)) { try memory.readUInt32(at: 0xFFD) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFF, count: 2)) { try memory.readUInt16(at: 0xFFF) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1000, count: 1)) { try memory.readUInt8(at: 0x1000) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFF9, count: 8)) { try memory.write(UInt64(0), at: 0xFF9) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFD, count: 4)) { try memory.write(UInt32(0), at: 0xFFD) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFF, count: 2)) { try memory.write(UInt16(0), at: 0xFFF) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1000, count: 1)) { try memory.write(UInt8(0), at: 0x1000) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xF00, count: 0x101)) { try memory.read(0x101, at: 0xF00) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFE, count: 3)) { try memory.write([1, 2, 3], at: 0xFFE) }
        #expect(throws: GuestMemoryError.outOfBounds(address: .max, count: 8)) { try memory.readUInt64(at: .max) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0, count: 0)) { try memory.read(-1, at: 0) }
        // The failed write left the last bytes alone.
        #expect(try memory.readUInt16(at: 0xFFE) == 0x1122)
        #expect(
            GuestMemoryError.outOfBounds(address: 0xFF9, count: 8).description
                == "guest memory access of 8 bytes at 0xff9 is outside guest RAM")
    }

    @Test("accesses in or across the gap between two regions throw .outOfBounds")
    func acrossGap() throws {
        let memory = try gapped()
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFFC, count: 8)) { try memory.readUInt64(at: 0xFFFC) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1_0000, count: 1)) { try memory.readUInt8(at: 0x1_0000) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1_8000, count: 4)) { try memory.write(UInt32(1), at: 0x1_8000) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1_FFFE, count: 4)) { try memory.readUInt32(at: 0x1_FFFE) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFF0, count: 0x1_0020)) {
            try memory.read(0x1_0020, at: 0xFFF0)
        }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x3_0000, count: 1)) { try memory.write(UInt8(1), at: 0x3_0000) }
        // Both regions work on either side of the gap.
        try memory.write(UInt32(0xCAFE_F00D), at: 0xFFFC)
        try memory.write(UInt32(0xABCD_EF01), at: 0x2_0000)
        try memory.write(UInt32(0x7777_7777), at: 0x2_FFFC)
        #expect(try memory.readUInt32(at: 0xFFFC) == 0xCAFE_F00D)
        #expect(try memory.readUInt32(at: 0x2_0000) == 0xABCD_EF01)
        #expect(try memory.readUInt32(at: 0x2_FFFC) == 0x7777_7777)
    }

    @Test("an access straddling two adjacent regions is rejected: each access lies in one region")
    func adjacentRegions() throws {
        let memory = try GuestMemory(regions: [GuestRegion(start: 0, size: 0x1000), GuestRegion(start: 0x1000, size: 0x1000)])
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFC, count: 8)) { try memory.readUInt64(at: 0xFFC) }
        #expect(!memory.contains(0xFFC, count: 8))
        #expect(memory.contains(0x1000, count: 0x1000))
    }

    @Test("contains is true only for ranges inside one region")
    func contains() throws {
        let memory = try gapped()
        #expect(memory.contains(0, count: 0x1_0000))
        #expect(memory.contains(0xFFFF, count: 1))
        #expect(!memory.contains(0xFFFF, count: 2))
        #expect(!memory.contains(0x1_0000, count: 1))
        #expect(memory.contains(0x2_0000, count: 0x1_0000))
        #expect(!memory.contains(0x2_0000, count: 0x1_0001))
        #expect(memory.contains(0x2_FFFF, count: 0))
        #expect(!memory.contains(0x3_0000, count: 0), "a zero-length range at a region's end is outside")
        #expect(!memory.contains(0x2_0000, count: .max))
        #expect(!memory.contains(.max, count: 1))
    }

    @Test("fill sets exactly the requested bytes, and fails without writing when out of bounds")
    func fill() throws {
        let memory = try GuestMemory(size: 0x2000)
        try memory.fill(0xCC, count: 0x100, at: 0x80)
        #expect(try memory.readUInt8(at: 0x7F) == 0)
        #expect(try memory.read(0x100, at: 0x80) == [UInt8](repeating: 0xCC, count: 0x100))
        #expect(try memory.readUInt8(at: 0x180) == 0)
        try memory.fill(0x11, count: 0x2000, at: 0)
        #expect(try memory.read(0x2000, at: 0) == [UInt8](repeating: 0x11, count: 0x2000))
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1F00, count: 0x101)) {
            try memory.fill(0x22, count: 0x101, at: 0x1F00)
        }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0, count: .max)) { try memory.fill(0x22, count: .max, at: 0) }
        #expect(try memory.readUInt8(at: 0x1F00) == 0x11)
        try memory.fill(0x33, count: 0, at: 0x10)
        #expect(try memory.readUInt8(at: 0x10) == 0x11)
    }

    @Test("read(into:) copies into a reused buffer, growing it only when needed")
    func readInto() throws {
        let memory = try GuestMemory(size: 0x1000)
        try memory.write([1, 2, 3, 4, 5], at: 0x10)
        var buffer: [UInt8] = [9, 9, 9, 9, 9, 9, 9, 9]
        try memory.read(into: &buffer, count: 3, at: 0x10)
        #expect(buffer == [1, 2, 3, 9, 9, 9, 9, 9])
        var small: [UInt8] = []
        try memory.read(into: &small, count: 5, at: 0x10)
        #expect(small == [1, 2, 3, 4, 5])
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFE, count: 4)) {
            try memory.read(into: &small, count: 4, at: 0xFFE)
        }
    }

    @Test("read(into:startingAt:) gathers at an offset, never past the buffer, never growing it")
    func readIntoAtOffset() throws {
        let memory = try GuestMemory(size: 0x1000)
        try memory.write([1, 2, 3, 4, 5], at: 0x10)
        var buffer: [UInt8] = [9, 9, 9, 9, 9, 9]
        try memory.read(into: &buffer, startingAt: 2, count: 3, at: 0x10)
        #expect(buffer == [9, 9, 1, 2, 3, 9])
        try memory.read(into: &buffer, startingAt: 6, count: 0, at: 0x10)
        for (index, count) in [(4, 3), (-1, 1), (7, 0), (0, -1), (Int.max, 2)] {
            #expect(throws: GuestMemoryError.self) { try memory.read(into: &buffer, startingAt: index, count: count, at: 0x10) }
        }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFE, count: 4)) {
            try memory.read(into: &buffer, startingAt: 0, count: 4, at: 0xFFE)
        }
        #expect(buffer == [9, 9, 1, 2, 3, 9])
    }

    @Test("load copies a segment and zeroes the rest, or fails without writing")
    func load() throws {
        let memory = try GuestMemory(size: 0x2000)
        try memory.fill(0xEE, count: 0x2000, at: 0)
        let file: [UInt8] = [9, 1, 2, 3, 9]
        try memory.load(file[1..<4], at: 0x100, zeroFillingTo: 0x10)
        #expect(try memory.read(0x12, at: 0xFF) == [0xEE, 1, 2, 3] + [UInt8](repeating: 0, count: 13) + [0xEE])
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1FF8, count: 0x10)) {
            try memory.load(file[...], at: 0x1FF8, zeroFillingTo: 0x10)
        }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x200, count: 2)) {
            try memory.load(file[...], at: 0x200, zeroFillingTo: 2)
        }
        #expect(try memory.read(8, at: 0x1FF8) == [UInt8](repeating: 0xEE, count: 8))
        #expect(try memory.read(5, at: 0x200) == [UInt8](repeating: 0xEE, count: 5))
    }
}

@Suite("GuestMemory: host mappings")
struct GuestMemoryHostMappingTests {
    /// The VmFlags of the /proc/self/smaps entry that holds `address`. (The kernel may
    /// merge a region with an adjacent mapping of the same flags, so the entry can start
    /// below the region.)
    static func vmFlags(ofMappingAt address: UInt) -> [Substring]? {
        // SAFETY: the FILE is used only here and closed by the defer; fgets writes at most
        // line.count bytes into `line`, a local array that outlives each call.
        guard let file = unsafe fopen("/proc/self/smaps", "r") else { return nil }
        defer { unsafe fclose(file) }
        var inMapping = false
        var line = [CChar](repeating: 0, count: 4096)
        while unsafe fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let range = text.prefix { $0 != " " }.split(separator: "-")
            if range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16) {
                inMapping = start <= address && address < end
            } else if inMapping, text.hasPrefix("VmFlags:") {
                return text.dropFirst("VmFlags:".count).split(whereSeparator: \.isWhitespace)
            }
        }
        return nil
    }

    @Test("every region is advised MADV_DONTDUMP: smaps shows the dd flag, so a core file holds no guest RAM")
    func dontDump() throws {
        let memory = try GuestMemory(regions: [GuestRegion(start: 0, size: 0x10000), GuestRegion(start: 0x100000, size: 0x4000)])
        for mapping in memory.hostMappings {
            let flags = try #require(Self.vmFlags(ofMappingAt: mapping.hostAddress))
            #expect(flags.contains("dd"), "VmFlags of the region at 0x\(String(mapping.region.start, radix: 16)): \(flags)")
        }
    }
}

@Suite("GuestMemory: file I/O")
struct GuestMemoryFileTests {
    /// An unlinked temporary file holding `bytes`.
    func temporaryFile(_ bytes: [UInt8]) throws -> Int32 {
        var template = Array("/tmp/swiftvisor-memory-XXXXXX".utf8CString)
        // SAFETY: mkstemp rewrites the template's X in place; unlink and pwrite read the
        // NUL-terminated name and `bytes`' own buffer, each valid for its call.
        let fd = unsafe template.withUnsafeMutableBufferPointer { unsafe mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        _ = unsafe template.withUnsafeBufferPointer { unsafe unlink($0.baseAddress!) }
        let written = unsafe bytes.withUnsafeBytes { unsafe pwrite(fd, $0.baseAddress, $0.count, 0) }
        try #require(written == bytes.count)
        return fd
    }

    @Test("readFromFile and writeToFile move bytes between a file and guest RAM; short at the end of the file")
    func roundTrip() throws {
        let memory = try GuestMemory(size: 1 << 16)
        let fd = try temporaryFile((0..<1024).map { UInt8($0 % 251) })
        defer { close(fd) }
        #expect(try memory.readFromFile(fd: fd, offset: 512, into: 0x1000, count: 512) == 512)
        #expect(try memory.read(512, at: 0x1000) == (512..<1024).map { UInt8($0 % 251) })
        #expect(try memory.readFromFile(fd: fd, offset: 1000, into: 0x2000, count: 100) == 24)
        try memory.fill(0xAB, count: 16, at: 0x3000)
        #expect(try memory.writeToFile(fd: fd, offset: 8, from: 0x3000, count: 16) == 16)
        #expect(try memory.readFromFile(fd: fd, offset: 0, into: 0x4000, count: 32) == 32)
        #expect(
            try memory.read(32, at: 0x4000) == (0..<8).map { UInt8($0) } + [UInt8](repeating: 0xAB, count: 16)
                + (24..<32).map { UInt8($0) })
    }

    @Test("a guest range outside RAM, or an offset past off_t, throws and moves nothing")
    func refusals() throws {
        let memory = try GuestMemory(size: 1 << 16)
        let fd = try temporaryFile([UInt8](repeating: 7, count: 512))
        defer { close(fd) }
        #expect(throws: GuestMemoryError.self) { try memory.readFromFile(fd: fd, offset: 0, into: 0xFF00, count: 512) }
        #expect(throws: GuestMemoryError.self) { try memory.writeToFile(fd: fd, offset: 0, from: 0x1_0000, count: 1) }
        #expect(throws: GuestMemoryError.self) { try memory.readFromFile(fd: fd, offset: 0, into: 0, count: -1) }
        #expect(throws: GuestMemoryError.self) {
            try memory.writeToFile(fd: fd, offset: UInt64(Int64.max), from: 0, count: 1)
        }
        #expect(throws: GuestMemoryError.self) { try memory.readFromFile(fd: fd, offset: UInt64.max, into: 0, count: 512) }
        #expect(try memory.read(512, at: 0xFE00) == [UInt8](repeating: 0, count: 512))
    }
}
