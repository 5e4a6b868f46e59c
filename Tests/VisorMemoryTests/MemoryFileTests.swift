import Glibc
import Testing
@testable import VisorMemory

/// All of guest RAM, region by region.
func contents(_ memory: GuestMemory) throws -> [[UInt8]] {
    try memory.regions.map { try memory.read(Int($0.size), at: $0.start) }
}

@Suite("Memory files")
struct MemoryFileTests {
    @Test("a full memory file maps back privately: equal bytes, and guest writes never reach the file")
    func roundTrip() throws {
        let memory = try GuestMemory(regions: twoRegions)
        try memory.write(Array("first region".utf8), at: 0x1234)
        try memory.fill(0xAB, count: 0x2000, at: 0xF_E000)  // the last pages of region 0
        try memory.write(UInt64(0x1122_3344_5566_7788), at: (4 << 20) + 0x10_0008)
        let file = TemporaryFile()
        let stats = try memory.writeMemoryFile(to: file.fd)
        #expect(stats.fileSize == 3 << 20)
        #expect(stats.pagesWritten == 1 + 2 + 1)  // page 0x1, pages 0xFE-0xFF, one page of region 1
        #expect(file.size == 3 << 20)
        // Region 1 starts in the file right after region 0.
        #expect(file.read(8, at: (1 << 20) + 0x10_0008) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])

        let restored = try GuestMemory(regions: twoRegions, backingFile: file.fd)
        #expect(try contents(restored) == contents(memory))
        try restored.write(Array("changed".utf8), at: 0x1234)
        try restored.fill(0x55, count: 0x1000, at: (4 << 20) + 0x8000)
        #expect(try restored.read(7, at: 0x1234) == Array("changed".utf8))
        #expect(file.read(12, at: 0x1234) == Array("first region".utf8))
        #expect(file.read(4, at: (1 << 20) + 0x8000) == [0, 0, 0, 0])
    }

    @Test("a full file of a mostly-zero 64 MiB guest is sparse")
    func sparse() throws {
        let memory = try GuestMemory(size: 64 << 20)
        try memory.write(UInt8(1), at: 0x5000)
        try memory.write(UInt32(7), at: 0x200_0000)
        try memory.write(UInt64(9), at: (64 << 20) - 8)
        let file = TemporaryFile()
        let stats = try memory.writeMemoryFile(to: file.fd)
        #expect(stats.pagesWritten == 3)
        #expect(file.size == 64 << 20)
        #expect(file.allocated <= 256 << 10, "allocated \(file.allocated) bytes")
        let restored = try GuestMemory(size: 64 << 20, backingFile: file.fd)
        #expect(try restored.readUInt64(at: (64 << 20) - 8) == 9)
        #expect(try restored.readUInt32(at: 0x200_0000) == 7)
    }

    @Test("a diff merged onto the full file it follows equals memory at the diff's time")
    func diffAndMerge() throws {
        let memory = try GuestMemory(regions: twoRegions)
        memory.dirtyTracking = true
        try memory.fill(0x11, count: 0x10_0000, at: 0)  // all of region 0
        try memory.write(Array(repeating: 0x22, count: 0x2000), at: 4 << 20)
        let base = TemporaryFile()
        try memory.writeMemoryFile(to: base.fd)
        _ = memory.takeDirtyPages()

        try memory.write(Array("new".utf8), at: 0x7FFE)  // pages 7 and 8 of region 0
        try memory.fill(0, count: 0x1000, at: 0x2_0000)  // zeroed: must still be written
        try memory.write(UInt16(0xBEEF), at: (4 << 20) + 0x1F_F000)  // the last page of region 1
        let dirty = memory.takeDirtyPages()
        #expect(setPages(dirty) == [[7, 8, 0x20], [0x1FF]])

        let diff = TemporaryFile()
        let stats = try memory.writeDiffMemoryFile(to: diff.fd, dirtyPages: dirty)
        #expect(stats.pagesWritten == 4)
        #expect(diff.size == 3 << 20)
        #expect(diff.allocated <= 64 << 10, "allocated \(diff.allocated) bytes")
        try MemoryFile.mergeDiff(diff.fd, onto: base.fd)
        let merged = try GuestMemory(regions: twoRegions, backingFile: base.fd)
        #expect(try contents(merged) == contents(memory))
        #expect(try merged.read(4, at: 0x2_0000) == [0, 0, 0, 0])
    }

    @Test("a diff with no dirty pages is all hole and merges as nothing")
    func emptyDiff() throws {
        let memory = try GuestMemory(size: 1 << 20)
        try memory.write(UInt8(3), at: 0)
        let base = TemporaryFile(), diff = TemporaryFile()
        try memory.writeMemoryFile(to: base.fd)
        let stats = try memory.writeDiffMemoryFile(to: diff.fd, dirtyPages: [[UInt64](repeating: 0, count: 4)])
        #expect(stats.pagesWritten == 0)
        try MemoryFile.mergeDiff(diff.fd, onto: base.fd)
        #expect(base.read(1, at: 0) == [3])
    }

    @Test("a memory file shorter than the regions is refused, naming both sizes")
    func tooSmall() throws {
        let file = TemporaryFile()
        #expect(ftruncate(file.fd, (3 << 20) - 4096) == 0)
        #expect(throws: GuestMemoryError.backingFileTooSmall(fileSize: (3 << 20) - 4096, required: 3 << 20)) {
            try GuestMemory(regions: twoRegions, backingFile: file.fd)
        }
        let message = "\(GuestMemoryError.backingFileTooSmall(fileSize: 4096, required: 8192))"
        #expect(message.contains("4096") && message.contains("8192"))
        #expect(throws: GuestMemoryError.cannotMapFile(size: 3 << 20, offset: 0, errno: EBADF)) {
            try GuestMemory(regions: twoRegions, backingFile: -1)
        }
    }

    @Test("a memory file is not written over the file the memory is mapped from")
    func refusesBackingFile() throws {
        let file = TemporaryFile()
        try GuestMemory(size: 1 << 20).writeMemoryFile(to: file.fd)
        let restored = try GuestMemory(size: 1 << 20, backingFile: file.fd)
        #expect(throws: MemoryFileError.overwritesBackingFile) { try restored.writeMemoryFile(to: file.fd) }
        let other = TemporaryFile()
        try restored.writeMemoryFile(to: other.fd)
    }

    @Test("a diff bitmap of the wrong shape, or a merge onto another size, is refused")
    func mismatches() throws {
        let memory = try GuestMemory(regions: twoRegions)
        let file = TemporaryFile()
        #expect(throws: MemoryFileError.bitmapMismatch(region: 1, words: 1, expected: 8)) {
            try memory.writeDiffMemoryFile(to: file.fd, dirtyPages: [[UInt64](repeating: 0, count: 4), [0]])
        }
        let small = TemporaryFile()
        try GuestMemory(size: 1 << 20).writeMemoryFile(to: small.fd)
        try memory.writeMemoryFile(to: file.fd)
        #expect(throws: MemoryFileError.sizeMismatch(diff: 1 << 20, base: 3 << 20)) {
            try MemoryFile.mergeDiff(small.fd, onto: file.fd)
        }
    }

    @Test("union ORs bitmaps region by region")
    func union() {
        #expect(GuestMemory.union([[1, 0], [4]], [[2, 8], [0]]) == [[3, 8], [4]])
        #expect(GuestMemory.union([[1]], []) == [[1]])
    }
}
