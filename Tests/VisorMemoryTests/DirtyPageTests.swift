import Glibc
import Testing
@testable import VisorMemory

/// An unlinked temporary file, closed when released.
final class TemporaryFile {
    let fd: Int32

    init() {
        var template = Array("/tmp/swiftvisor-memory-XXXXXX".utf8CString)
        // SAFETY: mkstemp rewrites the NUL-terminated template in place; unlink reads it.
        fd = unsafe template.withUnsafeMutableBufferPointer { name in
            let fd = unsafe mkstemp(name.baseAddress!)
            unsafe unlink(name.baseAddress!)
            return fd
        }
        precondition(fd >= 0, "cannot create a temporary file")
    }

    deinit { close(fd) }

    var size: Int64 {
        var info = stat()
        _ = unsafe fstat(fd, &info)
        return Int64(info.st_size)
    }

    /// Bytes allocated on disk (st_blocks is in 512-byte units).
    var allocated: Int64 {
        var info = stat()
        _ = unsafe fstat(fd, &info)
        return Int64(info.st_blocks) * 512
    }

    func read(_ count: Int, at offset: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = unsafe bytes.withUnsafeMutableBytes { unsafe pread(fd, $0.baseAddress!, count, off_t(offset)) }
        precondition(n == count)
        return bytes
    }
}

/// Two regions with a gap: 1 MiB at 0 and 2 MiB at 4 MiB.
let twoRegions = [GuestRegion(start: 0, size: 1 << 20), GuestRegion(start: 4 << 20, size: 2 << 20)]

/// The set pages of each region's bitmap.
func setPages(_ bitmaps: [[UInt64]]) -> [[UInt64]] {
    bitmaps.map { words in
        words.indices.flatMap { w in (0..<64).compactMap { b in words[w] & (1 << UInt64(b)) != 0 ? UInt64(w * 64 + b) : nil } }
    }
}

@Suite("GuestMemory: dirty pages")
struct DirtyPageTests {
    /// The pages `body` dirtied in a fresh two-region memory with tracking on.
    func dirtied(_ body: (GuestMemory) throws -> Void) throws -> [[UInt64]] {
        let memory = try GuestMemory(regions: twoRegions)
        memory.dirtyTracking = true
        try body(memory)
        let pages = setPages(memory.takeDirtyPages())
        #expect(setPages(memory.takeDirtyPages()) == [[], []], "a take clears the bitmap")
        return pages
    }

    @Test("each write path marks exactly the pages it touched")
    func writePaths() throws {
        #expect(try dirtied { try $0.write([1, 2, 3, 4], at: 0x1FFE) } == [[1, 2], []])
        #expect(try dirtied { try $0.write([UInt8](repeating: 9, count: 0x1000), at: 0x3000) } == [[3], []])
        #expect(try dirtied { try $0.fill(7, count: 0x2001, at: 0x3000) } == [[3, 4, 5], []])
        #expect(try dirtied { try $0.load([1, 2], at: 0x6800, zeroFillingTo: 0x1000) } == [[6, 7], []])
        #expect(try dirtied { try $0.write(UInt8(1), at: 0x9FFF) } == [[9], []])
        #expect(try dirtied { try $0.write(UInt16(1), at: 0x9FFF) } == [[9, 10], []])
        #expect(try dirtied { try $0.write(UInt32(1), at: 0x9FFE) } == [[9, 10], []])
        #expect(try dirtied { try $0.write(UInt64(1), at: (4 << 20) + 0x1FFC) } == [[], [1, 2]])
        #expect(
            try dirtied {
                _ = try $0.compareExchange16(at: 0xB000, expected: (0, 0), desired: (1, 1))
            } == [[0xB], []])
        let file = TemporaryFile()
        #expect(ftruncate(file.fd, 0x4000) == 0)
        #expect(try dirtied { _ = try $0.readFromFile(fd: file.fd, offset: 0, into: 0xCF00, count: 0x200) } == [[0xC, 0xD], []])
    }

    @Test("a write across many bitmap words marks every page, and only those")
    func wideWrite() throws {
        // Pages 60...129 of region 0: the tail of word 0, all of word 1, the head of word 2.
        let pages = try dirtied { try $0.fill(1, count: 70 * 4096, at: 60 * 4096) }
        #expect(pages == [Array(60...129), []])
        let all = try dirtied { try $0.fill(1, count: 1 << 20, at: 0) }
        #expect(all == [Array(0..<256), []])
    }

    @Test("reads, failed writes and writes with tracking off mark nothing")
    func nothingMarked() throws {
        #expect(
            try dirtied { memory in
                _ = try memory.read(0x3000, at: 0)
                _ = try memory.readUInt64(at: 0x5000)
                let file = TemporaryFile()
                _ = try memory.writeToFile(fd: file.fd, offset: 0, from: 0, count: 0x2000)
                #expect(throws: GuestMemoryError.self) { try memory.write(UInt32(1), at: (1 << 20) - 2) }
                try memory.write([UInt8](), at: 0x4000)
            } == [[], []])
        let memory = try GuestMemory(regions: twoRegions)
        try memory.write(UInt64(1), at: 0)
        #expect(setPages(memory.takeDirtyPages()) == [[], []])
    }
}
