import Glibc

/// An error writing, checking or merging a memory file. Messages name the file offset and
/// say what to do.
public enum MemoryFileError: Error, Equatable, CustomStringConvertible {
    /// A system call on the file failed (`operation` names it: "write", "truncate", ...).
    case io(operation: String, offset: UInt64, errno: Int32)
    /// `pwrite` wrote nothing, though bytes were left to write (a full disk reports ENOSPC
    /// instead; this is a file that accepts no more).
    case shortWrite(offset: UInt64, remaining: Int)
    /// A dirty bitmap does not have one word per 64 pages of each region.
    case bitmapMismatch(region: Int, words: Int, expected: Int)
    /// A diff and the base it is merged onto are not the same size (not the same machine).
    case sizeMismatch(diff: UInt64, base: UInt64)
    /// The filesystem reports data where no dirty page was written: it has no holes, or
    /// holes coarser than 4 KiB pages, so a diff file on it cannot tell written pages from
    /// the rest.
    case holesNotPrecise(offset: UInt64)
    /// The file to write is the one the memory is mapped from (a restored guest): writing
    /// it would change or truncate the guest's own memory under it.
    case overwritesBackingFile

    public var description: String {
        switch self {
        case .io(let operation, let offset, let errno):
            return "cannot \(operation) the memory file at offset \(offset): \(GuestMemoryError.reason(errno))"
        case .shortWrite(let offset, let remaining):
            return "the memory file accepted no more bytes at offset \(offset) (\(remaining) left to write)"
        case .bitmapMismatch(let region, let words, let expected):
            return "the dirty bitmap of region \(region) has \(words) words, but the region needs \(expected)"
        case .sizeMismatch(let diff, let base):
            return "the diff memory file holds \(diff) bytes but the base holds \(base): they are not of the same machine"
        case .holesNotPrecise(let offset):
            return "the filesystem reports data at offset \(offset) where no dirty page was written: "
                + "diff memory files need a filesystem with 4 KiB holes (ext4, xfs, btrfs, tmpfs)"
        case .overwritesBackingFile:
            return "the memory file to write is the one this guest's memory is mapped from; write the snapshot to another file"
        }
    }
}

/// What writing a memory file did.
public struct MemoryFileStatistics: Sendable, Equatable {
    /// The file's size: the guest's total RAM.
    public var fileSize: UInt64
    /// The pages written as data; the rest of the file is holes.
    public var pagesWritten: UInt64
    /// The bytes written as data (`pagesWritten` pages).
    public var bytesWritten: UInt64 { pagesWritten * GuestMemory.pageSize }
}

/// Memory files: a guest's RAM in one file, the regions concatenated in address order
/// (region i at the sum of the earlier regions' sizes; no header, no index), as
/// `GuestMemory.writeMemoryFile(to:)` and `writeDiffMemoryFile(to:dirtyPages:)` write
/// them and `GuestMemory(regions:backingFile:)` maps them.
///
/// - A full file is sparse: all-zero pages are holes, so a fresh guest's file is small.
/// - A diff file is as big as a full one but holds data only at the dirty pages (written
///   even when zero); everything else is a hole, which is how `mergeDiff` tells them apart.
public enum MemoryFile {
    /// lseek whences Glibc hides behind _GNU_SOURCE (the same on every Linux architecture).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// Copies the data ranges of the diff file `diff` (found with `SEEK_DATA`/`SEEK_HOLE`)
    /// onto the full memory file `base` at the same offsets, making `base` equal to guest
    /// memory at the diff's time. Merge diffs in the order they were taken. `base` must not
    /// be mapped by a running guest.
    ///
    /// - Throws: `sizeMismatch` unless both files have the same size; `io` or `shortWrite`
    ///   when reading or writing fails (then `base` may be partly merged).
    public static func mergeDiff(_ diff: Int32, onto base: Int32) throws(MemoryFileError) {
        let diffSize = try size(of: diff)
        let baseSize = try size(of: base)
        guard diffSize == baseSize else { throw .sizeMismatch(diff: diffSize, base: baseSize) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        try forEachDataRange(of: diff, size: diffSize) { (start, end) throws(MemoryFileError) in
            var offset = start
            while offset < end {
                let chunk = Int(min(end - offset, UInt64(buffer.count)))
                let got = try read(diff, into: &buffer, count: chunk, at: offset)
                // A data range ends before the file's size, so only a file cut short meanwhile
                // reads nothing here.
                guard got > 0 else { throw .io(operation: "read (the diff shrank)", offset: offset, errno: EIO) }
                // SAFETY: `buffer` holds at least `got` <= chunk bytes and is pinned for the call.
                let failure: MemoryFileError? = unsafe buffer.withUnsafeBytes { bytes in
                    do throws(MemoryFileError) {
                        try unsafe writeAll(base, UnsafeRawBufferPointer(rebasing: bytes[0..<got]), at: offset)
                        return nil
                    } catch { return error }
                }
                if let failure { throw failure }
                offset += UInt64(got)
            }
        }
    }

    /// The size of the file `fd`.
    static func size(of fd: Int32) throws(MemoryFileError) -> UInt64 {
        var info = stat()
        // SAFETY: fstat writes one struct stat into `info`, pinned for the call.
        guard unsafe fstat(fd, &info) == 0 else { throw .io(operation: "inspect (fstat)", offset: 0, errno: errno) }
        return UInt64(max(info.st_size, 0))
    }

    /// Calls `body` with each range `[start, end)` of `fd` that holds data (not a hole), in
    /// order, up to `size`.
    static func forEachDataRange(
        of fd: Int32, size: UInt64, _ body: (UInt64, UInt64) throws(MemoryFileError) -> Void
    ) throws(MemoryFileError) {
        var offset: UInt64 = 0
        while offset < size {
            let start = lseek(fd, off_t(offset), seekData)
            if start < 0 {
                if errno == ENXIO { return }  // no data past offset
                throw .io(operation: "find data (SEEK_DATA) in", offset: offset, errno: errno)
            }
            let hole = lseek(fd, start, seekHole)
            guard hole >= start else { throw .io(operation: "find a hole (SEEK_HOLE) in", offset: UInt64(start), errno: errno) }
            let end = min(UInt64(hole), size)
            if UInt64(start) >= end { return }
            try body(UInt64(start), end)
            offset = end
        }
    }

    /// Reads up to `count` bytes at `offset` into `buffer` (retrying EINTR and short
    /// reads); fewer only at the end of the file. Returns how many.
    static func read(_ fd: Int32, into buffer: inout [UInt8], count: Int, at offset: UInt64) throws(MemoryFileError) -> Int {
        var done = 0
        while done < count {
            // SAFETY: pread writes at most count - done bytes at index done of `buffer`,
            // which holds at least `count`; the buffer is pinned for the call.
            let n = unsafe buffer.withUnsafeMutableBytes { bytes in
                unsafe pread(fd, bytes.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "read", offset: offset + UInt64(done), errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `bytes` to `fd` at `offset` (pwrite, retrying EINTR and short writes).
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(MemoryFileError) {
        var done = 0
        while done < bytes.count {
            // SAFETY: pwrite reads at most count - done bytes from index done of `bytes`.
            let n = unsafe pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "write", offset: offset + UInt64(done), errno: errno)
            }
            guard n > 0 else { throw .shortWrite(offset: offset + UInt64(done), remaining: bytes.count - done) }
            done += n
        }
    }

    /// Empties `fd` and sets its size to `size`: one hole.
    static func resetToHole(_ fd: Int32, size: UInt64) throws(MemoryFileError) {
        guard size <= UInt64(Int64.max) else { throw .io(operation: "size", offset: size, errno: EFBIG) }
        guard ftruncate(fd, 0) == 0 else { throw .io(operation: "truncate", offset: 0, errno: errno) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw .io(operation: "extend (ftruncate)", offset: size, errno: errno) }
    }
}

extension GuestMemory {
    /// Writes all guest RAM to the file `fd` as a full memory file (see `MemoryFile`):
    /// `fd` is emptied and sized to `totalSize`, then every page that is not all zero is
    /// written at its offset; zero pages stay holes. Pages are read as they are now:
    /// pause the vCPUs first.
    ///
    /// Reading a never-touched page of anonymous memory maps the kernel's shared zero page,
    /// so this allocates no guest memory.
    ///
    /// - Throws: `overwritesBackingFile` when `fd` is the file this memory is mapped from;
    ///   `io` or `shortWrite` when the file cannot be truncated or written.
    @discardableResult
    public func writeMemoryFile(to fd: Int32) throws(MemoryFileError) -> MemoryFileStatistics {
        try refuseBackingFile(fd)
        let total = totalSize
        try MemoryFile.resetToHole(fd, size: total)
        let zero = UnsafeMutableRawPointer.allocate(byteCount: Int(Self.pageSize), alignment: Int(Self.pageSize))
        // SAFETY: `zero` was just allocated with pageSize bytes; freed on every exit.
        unsafe zero.initializeMemory(as: UInt8.self, repeating: 0, count: Int(Self.pageSize))
        defer { unsafe zero.deallocate() }
        var pages: UInt64 = 0
        for m in mappings {
            var page: UInt64 = 0
            let count = m.pageCount
            while page < count {
                // SAFETY: page < pageCount, so the page lies inside the mapping; `zero`
                // holds pageSize bytes.
                if unsafe memcmp(m.base + Int(page << Self.pageShift), zero, Int(Self.pageSize)) == 0 {
                    page += 1
                    continue
                }
                var end = page + 1
                // SAFETY: as above, for each page below pageCount.
                while end < count, unsafe memcmp(m.base + Int(end << Self.pageShift), zero, Int(Self.pageSize)) != 0 {
                    end += 1
                }
                try write(m, pages: page..<end, to: fd)
                pages += end - page
                page = end
            }
        }
        return MemoryFileStatistics(fileSize: total, pagesWritten: pages)
    }

    /// Writes the pages marked in `dirtyPages` (one bitmap per region, as `takeDirtyPages()`
    /// and KVM's dirty log give them; OR them together first) to `fd` as a diff memory
    /// file (see `MemoryFile`): `fd` is emptied and sized to `totalSize`, each dirty page
    /// is written at its offset, even when zero, and the rest stays holes. Then checks that
    /// the filesystem reports exactly those pages as data, which `MemoryFile.mergeDiff`
    /// relies on.
    ///
    /// - Throws: `bitmapMismatch` unless each bitmap has `(pages + 63) / 64` words;
    ///   `holesNotPrecise` on a filesystem without page-sized holes; as `writeMemoryFile`.
    @discardableResult
    public func writeDiffMemoryFile(to fd: Int32, dirtyPages: [[UInt64]]) throws(MemoryFileError) -> MemoryFileStatistics {
        guard dirtyPages.count == mappings.count else {
            throw .bitmapMismatch(region: min(dirtyPages.count, mappings.count), words: 0, expected: 0)
        }
        for (i, m) in mappings.enumerated() where dirtyPages[i].count != m.bitmapWords {
            throw .bitmapMismatch(region: i, words: dirtyPages[i].count, expected: m.bitmapWords)
        }
        try refuseBackingFile(fd)
        let total = totalSize
        try MemoryFile.resetToHole(fd, size: total)
        var pages: UInt64 = 0
        for (i, m) in mappings.enumerated() {
            let bitmap = dirtyPages[i]
            var page: UInt64 = 0
            let count = m.pageCount
            while page < count {
                guard Self.isSet(bitmap, page) else {
                    // Skip a clear word at once.
                    page = bitmap[Int(page >> 6)] == 0 ? (page | 63) + 1 : page + 1
                    continue
                }
                var end = page + 1
                while end < count, Self.isSet(bitmap, end) { end += 1 }
                try write(m, pages: page..<end, to: fd)
                pages += end - page
                page = end
            }
        }
        try checkHoles(fd, size: total, dirtyPages: dirtyPages)
        return MemoryFileStatistics(fileSize: total, pagesWritten: pages)
    }

    /// Whether bit `page` is set in `bitmap` (which has a word for it).
    private static func isSet(_ bitmap: [UInt64], _ page: UInt64) -> Bool {
        bitmap[Int(page >> 6)] & (1 << (page & 63)) != 0
    }

    /// Writes the pages `range` of `m` to `fd` at their memory-file offsets.
    private func write(_ m: Mapping, pages range: Range<UInt64>, to fd: Int32) throws(MemoryFileError) {
        let offset = range.lowerBound << Self.pageShift
        let count = (range.upperBound - range.lowerBound) << Self.pageShift
        // SAFETY: range.upperBound <= pageCount, so [offset, offset + count) lies in the mapping.
        let bytes = unsafe UnsafeRawBufferPointer(start: m.base + Int(offset), count: Int(count))
        try unsafe MemoryFile.writeAll(fd, bytes, at: m.fileOffset + offset)
    }

    /// Throws unless every data range of `fd` consists of pages set in `dirtyPages`.
    private func checkHoles(_ fd: Int32, size: UInt64, dirtyPages: [[UInt64]]) throws(MemoryFileError) {
        try MemoryFile.forEachDataRange(of: fd, size: size) { (start, end) throws(MemoryFileError) in
            var offset = start & ~(Self.pageSize - 1)
            while offset < end {
                guard let i = mappings.lastIndex(where: { $0.fileOffset <= offset }) else { return }
                let page = (offset - mappings[i].fileOffset) >> Self.pageShift
                guard Self.isSet(dirtyPages[i], page) else { throw .holesNotPrecise(offset: offset) }
                offset += Self.pageSize
            }
        }
    }

    /// Throws `overwritesBackingFile` when `fd` is the file this memory was mapped from.
    private func refuseBackingFile(_ fd: Int32) throws(MemoryFileError) {
        guard let backing = backingFile else { return }
        var info = stat()
        // SAFETY: fstat writes one struct stat into `info`, pinned for the call.
        guard unsafe fstat(fd, &info) == 0 else { throw .io(operation: "inspect (fstat)", offset: 0, errno: errno) }
        if UInt64(info.st_dev) == backing.device, UInt64(info.st_ino) == backing.inode {
            throw .overwritesBackingFile
        }
    }

    /// The union of two sets of dirty bitmaps of this memory (KVM's log and the VMM's own),
    /// region by region; a bitmap missing from either side counts as clear.
    public static func union(_ a: [[UInt64]], _ b: [[UInt64]]) -> [[UInt64]] {
        (0..<max(a.count, b.count)).map { i in
            let x = i < a.count ? a[i] : [], y = i < b.count ? b[i] : []
            return (0..<max(x.count, y.count)).map { w in
                (w < x.count ? x[w] : 0) | (w < y.count ? y[w] : 0)
            }
        }
    }
}
