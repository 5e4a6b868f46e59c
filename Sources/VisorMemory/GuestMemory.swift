import Glibc
import Synchronization
internal import CGuestAtomics

/// An error from guest memory. Messages name the address range involved.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// A region description is unusable (zero size, not page-aligned, overlapping, overflowing).
    case invalidLayout(String)
    /// The host refused to map the memory.
    case cannotMap(size: UInt64, errno: Int32)
    /// An access falls outside guest RAM or straddles the end of a region.
    case outOfBounds(address: UInt64, count: UInt64)
    /// A memory file to restore from is shorter than the regions it must back.
    case backingFileTooSmall(fileSize: UInt64, required: UInt64)
    /// The host refused to inspect (`fstat`) or map a memory file to restore from.
    case cannotMapFile(size: UInt64, offset: UInt64, errno: Int32)

    public var description: String {
        switch self {
        case .invalidLayout(let why):
            return "invalid guest memory layout: \(why)"
        case .cannotMap(let size, let errno):
            return "cannot allocate \(size / 1024 / 1024) MiB of guest memory: \(Self.reason(errno))"
        case .outOfBounds(let address, let count):
            return "guest memory access of \(count) bytes at 0x\(String(address, radix: 16)) is outside guest RAM"
        case .backingFileTooSmall(let fileSize, let required):
            return "the memory file holds \(fileSize) bytes but the guest's memory regions need \(required): "
                + "it is truncated or belongs to a machine with more memory"
        case .cannotMapFile(let size, let offset, let errno):
            return "cannot map \(size) bytes of the memory file at offset \(offset): \(Self.reason(errno))"
        }
    }
}

extension GuestMemoryError {
    /// The text of `errno` (strerror), or its number.
    static func reason(_ errno: Int32) -> String {
        // SAFETY: strerror's string is copied into a String at once.
        unsafe strerror(errno).map { unsafe String(cString: $0) } ?? "errno \(errno)"
    }
}

/// One contiguous range of guest-physical RAM.
public struct GuestRegion: Sendable, Equatable {
    /// First guest-physical address.
    public let start: UInt64
    /// Size in bytes, a multiple of the page size.
    public let size: UInt64
    /// One past the last address.
    public var end: UInt64 { start + size }

    public init(start: UInt64, size: UInt64) {
        self.start = start
        self.size = size
    }
}

/// Guest RAM: one or more host mappings, each backing a guest-physical region. The
/// mappings are anonymous, or (to restore a snapshot) private copy-on-write mappings of a
/// memory file. They are advised `MADV_DONTDUMP`, so a core file of the VMM holds no guest RAM.
///
/// Every access is bounds-checked against the regions and fails with
/// `GuestMemoryError.outOfBounds` rather than touching host memory outside them. No raw
/// pointer leaves this type; the one host address it hands out (`hostMappings`) is for
/// registering the memory with the hypervisor.
///
/// The memory is shared with the guest, which may change it at any time, so reads are
/// snapshots. Concurrent accesses from several threads are as safe as the guest's own
/// concurrent accesses: they cannot go out of bounds, though racing writes may interleave.
///
/// **Dirty pages.** With `dirtyTracking` on, every write through this type (the VMM's own
/// writes: device emulation, the instruction emulator, loaders) sets the bit of each 4 KiB
/// page it touched in a per-region bitmap, which `takeDirtyPages()` returns and clears.
/// The guest's own writes are not seen here: KVM logs those (`KVM_MEM_LOG_DIRTY_PAGES`),
/// and a diff snapshot writes the union of both bitmaps. With tracking off a write costs
/// one extra predictable branch; with it on, an atomic OR per touched bitmap word. Neither
/// allocates.
public final class GuestMemory: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096
    static let pageShift: UInt64 = 12

    /// `@safe`: its pointers are read only inside this type, and every use of them is marked
    /// `unsafe` with why it stays inside the mapping or bitmap.
    @safe struct Mapping {
        let region: GuestRegion
        /// The host mapping, `region.size` bytes long, valid until `deinit`.
        let base: UnsafeMutableRawPointer
        /// The dirty bitmap: bit `p % 64` of word `p / 64` is page `p` of the region;
        /// `bitmapWords` words, valid until `deinit`.
        let dirty: UnsafeMutablePointer<UInt64>
        /// Where the region starts in a memory file: the sum of the earlier regions' sizes.
        let fileOffset: UInt64

        var pageCount: UInt64 { region.size >> GuestMemory.pageShift }
        var bitmapWords: Int { Int((pageCount + 63) / 64) }
    }

    let mappings: [Mapping]
    /// Whether writes mark pages dirty.
    private let tracking = Atomic<Bool>(false)
    /// The device and inode of the memory file the regions were mapped from, if any.
    let backingFile: (device: UInt64, inode: UInt64)?

    /// The regions, ordered by address.
    public var regions: [GuestRegion] { mappings.map(\.region) }

    /// Total RAM in bytes.
    public var totalSize: UInt64 { mappings.reduce(0) { $0 + $1.region.size } }

    /// Maps `regions` (any order; they must not overlap) as fresh zeroed anonymous memory.
    /// On failure nothing stays mapped.
    public init(regions: [GuestRegion]) throws(GuestMemoryError) {
        let sorted = try Self.validate(regions)
        mappings = try Self.map(sorted, file: nil)
        backingFile = nil
    }

    /// Maps `regions` (any order; they must not overlap) from the memory file `fd`, to
    /// restore a snapshot lazily.
    ///
    /// The memory file holds the regions concatenated in address order: region i starts
    /// at the file offset equal to the sum of the sizes of the regions before it. Each
    /// region is mapped `MAP_PRIVATE`, copy-on-write: nothing is read now, a page loads
    /// from the file when first touched (by the guest or the VMM), and writes go to
    /// private copies, never to the file. So mapping takes microseconds whatever the size.
    ///
    /// `fd` may be closed once this returns (the mappings keep the file). The file must
    /// not be truncated while the memory lives (the guest would take SIGBUS) and should
    /// not be modified (pages not yet copied would show the change).
    ///
    /// - Throws: `backingFileTooSmall` when the file is shorter than the regions' total
    ///   size, `cannotMapFile` when it cannot be inspected or mapped, `invalidLayout` as
    ///   `init(regions:)` does. On failure nothing stays mapped.
    public init(regions: [GuestRegion], backingFile fd: Int32) throws(GuestMemoryError) {
        let sorted = try Self.validate(regions)
        let total = sorted.reduce(UInt64(0)) { $0 + $1.size }
        var info = stat()
        // SAFETY: fstat writes one struct stat into `info`, which is pinned for the call.
        guard unsafe fstat(fd, &info) == 0 else { throw .cannotMapFile(size: total, offset: 0, errno: errno) }
        let fileSize = UInt64(max(info.st_size, 0))
        // This also keeps every file offset below Int64.max, as st_size is.
        guard fileSize >= total else { throw .backingFileTooSmall(fileSize: fileSize, required: total) }
        mappings = try Self.map(sorted, file: fd)
        backingFile = (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// The regions sorted by address, or why they are unusable. (Their total size cannot
    /// overflow: they do not overlap and each ends at most at UInt64.max.)
    private static func validate(_ regions: [GuestRegion]) throws(GuestMemoryError) -> [GuestRegion] {
        let sorted = regions.sorted { $0.start < $1.start }
        guard !sorted.isEmpty else { throw .invalidLayout("no memory regions") }
        var previousEnd: UInt64 = 0
        for (i, r) in sorted.enumerated() {
            guard r.size > 0 else { throw .invalidLayout("a region has size zero") }
            guard r.start % Self.pageSize == 0, r.size % Self.pageSize == 0 else {
                throw .invalidLayout("region at 0x\(String(r.start, radix: 16)) of \(r.size) bytes is not page-aligned")
            }
            guard r.start <= UInt64.max - r.size else {
                throw .invalidLayout("region at 0x\(String(r.start, radix: 16)) wraps around the address space")
            }
            if i > 0, r.start < previousEnd {
                throw .invalidLayout("regions overlap at 0x\(String(r.start, radix: 16))")
            }
            previousEnd = r.end
        }
        return sorted
    }

    /// Maps each of `sorted` (validated): anonymous when `file` is nil, else privately
    /// from `file` at the sum of the earlier regions' sizes. Each mapping gets a zeroed
    /// dirty bitmap. On failure everything made so far is released.
    private static func map(_ sorted: [GuestRegion], file: Int32?) throws(GuestMemoryError) -> [Mapping] {
        var made: [Mapping] = []
        func release() {
            // SAFETY: each mapping and bitmap in `made` was made below with these sizes
            // and has not been handed out.
            made.forEach { m in
                unsafe munmap(m.base, Int(m.region.size))
                unsafe m.dirty.deallocate()
            }
        }
        var fileOffset: UInt64 = 0
        for r in sorted {
            let flags = file == nil ? MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE : MAP_PRIVATE | MAP_NORESERVE
            // SAFETY: mmap makes a fresh mapping of exactly r.size bytes (anonymous, or
            // private copy-on-write of the file, so writes never reach the file), checked
            // against MAP_FAILED before it is kept. With a file, fileOffset is a sum of
            // page-aligned sizes below the file's size (checked by the caller), so it fits off_t.
            guard r.size <= UInt64(Int.max),
                let base = unsafe mmap(
                    nil, Int(r.size), PROT_READ | PROT_WRITE, flags, file ?? -1, file == nil ? 0 : off_t(fileOffset)),
                unsafe base != MAP_FAILED
            else {
                // A size beyond Int.max never reached mmap, so errno would be stale.
                let code = r.size > UInt64(Int.max) ? ENOMEM : errno
                release()
                if file != nil { throw .cannotMapFile(size: r.size, offset: fileOffset, errno: code) }
                throw .cannotMap(size: r.size, errno: code)
            }
            let words = Int((r.size / Self.pageSize + 63) / 64)
            let dirty = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            // SAFETY: `dirty` was just allocated with `words` elements.
            unsafe dirty.initialize(repeating: 0, count: words)
            unsafe made.append(Mapping(region: r, base: base, dirty: dirty, fileOffset: fileOffset))
            fileOffset += r.size
            // Guest RAM stays out of core dumps: a crash of the VMM must not write the
            // guest's memory (its keys, its users' data) into a core file. The advice
            // cannot fail on a fresh mapping; if it does, no RAM is handed out without it.
            // SAFETY: `base` is the mapping of `r.size` bytes made just above; madvise only
            // changes how the kernel treats it. On failure every mapping made so far is
            // unmapped, and none of them has been handed out.
            if unsafe madvise(base, Int(r.size), MADV_DONTDUMP) != 0 {
                let code = errno
                release()
                throw .cannotMap(size: r.size, errno: code)
            }
        }
        return made
    }

    /// A single region at guest-physical 0.
    public convenience init(size: UInt64) throws(GuestMemoryError) {
        try self.init(regions: [GuestRegion(start: 0, size: size)])
    }

    /// A single region at guest-physical 0, mapped from a memory file as
    /// `init(regions:backingFile:)` does.
    public convenience init(size: UInt64, backingFile fd: Int32) throws(GuestMemoryError) {
        try self.init(regions: [GuestRegion(start: 0, size: size)], backingFile: fd)
    }

    deinit {
        // SAFETY: each mapping and bitmap was made in init with this size; nothing can use
        // them after deinit.
        mappings.forEach { m in
            unsafe munmap(m.base, Int(m.region.size))
            unsafe m.dirty.deallocate()
        }
    }

    /// Host mappings for the hypervisor's memory slots: each region with the host address
    /// of its first byte. The addresses stay valid as long as this object lives.
    public var hostMappings: [(region: GuestRegion, hostAddress: UInt)] {
        mappings.map { unsafe ($0.region, UInt(bitPattern: $0.base)) }
    }

    /// Whether `[address, address + count)` lies inside one region.
    public func contains(_ address: UInt64, count: UInt64) -> Bool {
        locate(address, count) != nil
    }

    /// The mapping and offset holding `[address, address + count)`, or nil.
    @inline(__always)
    private func locate(_ address: UInt64, _ count: UInt64) -> (Mapping, Int)? {
        for m in mappings where address >= m.region.start {
            let offset = address - m.region.start
            if offset < m.region.size, count <= m.region.size - offset {
                return (m, Int(offset))
            }
        }
        return nil
    }

    /// Runs `body` with the host bytes of `[address, address + count)`.
    /// The buffer must not escape `body`: it is valid only while the mapping is, and only
    /// for the checked range.
    private func withBytes<R>(
        at address: UInt64, count: Int, _ body: (UnsafeMutableRawBufferPointer) -> R
    ) throws(GuestMemoryError) -> R {
        guard count >= 0, let (m, offset) = locate(address, UInt64(count)) else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        // SAFETY: locate proved offset + count <= region.size, the length of the mapping.
        return unsafe body(UnsafeMutableRawBufferPointer(start: m.base + offset, count: count))
    }

    /// As `withBytes`, for a write: afterwards, with tracking on, marks every page of the
    /// range dirty (also when `body` wrote less, or nothing). The mark follows the write,
    /// so a take that races it either sees the new bytes or leaves the bit for the next one.
    @inline(__always)
    private func withWritableBytes<R>(
        at address: UInt64, count: Int, _ body: (UnsafeMutableRawBufferPointer) -> R
    ) throws(GuestMemoryError) -> R {
        guard count >= 0, let (m, offset) = locate(address, UInt64(count)) else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        // SAFETY: locate proved offset + count <= region.size, the length of the mapping.
        let result = unsafe body(UnsafeMutableRawBufferPointer(start: m.base + offset, count: count))
        if tracking.load(ordering: .relaxed), count > 0 {
            Self.markDirty(m, offset: UInt64(offset), count: UInt64(count))
        }
        return result
    }

    /// Sets the bits of the pages `[offset, offset + count)` of `m` (count > 0, range in the
    /// region): whole words at a time, one atomic OR per word.
    private static func markDirty(_ m: Mapping, offset: UInt64, count: UInt64) {
        let first = offset >> pageShift
        let last = (offset + count - 1) >> pageShift
        var word = first >> 6
        let lastWord = last >> 6
        while word <= lastWord {
            let low = word == first >> 6 ? first & 63 : 0
            let high = word == lastWord ? last & 63 : 63
            let bits = (UInt64.max >> (63 - high)) & (UInt64.max << low)
            // SAFETY: last < pageCount, so word <= lastWord < bitmapWords, the bitmap's length.
            unsafe cga_bitmap_set(m.dirty + Int(word), bits)
            word += 1
        }
    }

    // MARK: Dirty pages

    /// Whether the VMM's writes to guest RAM mark pages dirty (see the type's notes).
    /// Turning it on does not clear the bitmap; take it first to start afresh.
    public var dirtyTracking: Bool {
        get { tracking.load(ordering: .relaxed) }
        set { tracking.store(newValue, ordering: .relaxed) }
    }

    /// The pages the VMM wrote since the last take, and clears them: one bitmap per region
    /// in address order, bit `p % 64` of word `p / 64` for page `p` of the region (the
    /// layout of KVM's dirty log for the region's slot). Each word is taken atomically, so
    /// a page written meanwhile is in this bitmap or the next.
    public func takeDirtyPages() -> [[UInt64]] {
        mappings.map { m in
            // SAFETY: every index is below bitmapWords, the bitmap's length.
            (0..<m.bitmapWords).map { unsafe cga_bitmap_take(m.dirty + $0) }
        }
    }

    /// Copies `[address, address + count)` of `source` to the same addresses here: how a
    /// sandbox puts back the pages a call dirtied from its snapshot. Both memories must hold
    /// the whole range (in one region each); with tracking on the pages are marked dirty.
    package func copy(from source: GuestMemory, at address: UInt64, count: Int) throws(GuestMemoryError) {
        guard count >= 0, let (from, fromOffset) = source.locate(address, UInt64(count)) else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        guard count > 0 else { return }
        unsafe try withWritableBytes(at: address, count: count) { target in
            // SAFETY: locate proved fromOffset + count <= the source region's size, the length
            // of its mapping; the target buffer is exactly `count` bytes of this memory. The
            // two memories are distinct mappings (or the same bytes, which copyMemory allows).
            unsafe target.baseAddress!.copyMemory(from: from.base + fromOffset, byteCount: count)
        }
    }

    // MARK: Bytes

    // SAFETY (every accessor below): withBytes proved the range lies in one mapping and
    // passes a buffer of exactly that range; the buffer is used only inside the closure.

    /// Reads `count` bytes at `address`.
    public func read(_ count: Int, at address: UInt64) throws(GuestMemoryError) -> [UInt8] {
        unsafe try withBytes(at: address, count: count) { unsafe Array($0) }
    }

    /// Copies `count` bytes at `address` into `buffer` starting at its index 0, without allocating
    /// when the buffer is already large enough.
    public func read(into buffer: inout [UInt8], count: Int, at address: UInt64) throws(GuestMemoryError) {
        if buffer.count < count { buffer.append(contentsOf: repeatElement(0, count: count - buffer.count)) }
        // SAFETY: `buffer` has at least `count` bytes (grown above), as many as `source`.
        unsafe try withBytes(at: address, count: count) { source in
            unsafe buffer.withUnsafeMutableBytes { unsafe $0.copyMemory(from: UnsafeRawBufferPointer(source)) }
        }
    }

    /// Copies `count` bytes at `address` into `buffer[index..<index + count]`, to gather a
    /// chain's buffers into one host buffer; throws, copying nothing, when that range is not
    /// wholly inside `buffer` or the guest range not wholly in RAM. Never grows the buffer.
    public func read(into buffer: inout [UInt8], startingAt index: Int, count: Int, at address: UInt64)
        throws(GuestMemoryError)
    {
        guard index >= 0, count >= 0, index <= buffer.count, count <= buffer.count - index else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        // SAFETY: `buffer[index..<index + count]` lies inside the array (checked above), and
        // `source` holds exactly `count` bytes (checked by withBytes).
        unsafe try withBytes(at: address, count: count) { source in
            unsafe buffer.withUnsafeMutableBytes { destination in
                unsafe UnsafeMutableRawBufferPointer(rebasing: destination[index..<(index + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(source))
            }
        }
    }

    /// Reads up to `count` bytes of the file `fd` at `offset` straight into guest RAM at
    /// `address` (pread(2), retried on EINTR and short reads), with no host buffer between.
    /// Returns the bytes read: `count`, or fewer at the end of the file or on an error
    /// (`errno` says which). Throws when the guest range is not wholly in one region, or
    /// `offset + count` does not fit a file offset; nothing is read then.
    public func readFromFile(fd: Int32, offset: UInt64, into address: UInt64, count: Int) throws(GuestMemoryError) -> Int {
        guard count >= 0, Self.fileEnd(offset, count) != nil else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        return unsafe try withWritableBytes(at: address, count: count) { destination in
            var done = 0
            while done < count {
                // SAFETY: pread(2) writes at most count - done bytes from offset done (< count)
                // of `destination`, which withBytes proved to be `count` bytes of one mapping.
                let n = unsafe pread(fd, destination.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0, errno == EINTR { continue }
                guard n > 0 else { break }
                done += n
            }
            return done
        }
    }

    /// Writes `count` bytes of guest RAM at `address` to the file `fd` at `offset`
    /// (pwrite(2), retried on EINTR and short writes), with no host buffer between. Returns
    /// the bytes written: `count`, or fewer on an error (`errno` says which). Throws as
    /// `readFromFile` does.
    public func writeToFile(fd: Int32, offset: UInt64, from address: UInt64, count: Int) throws(GuestMemoryError) -> Int {
        guard count >= 0, Self.fileEnd(offset, count) != nil else {
            throw .outOfBounds(address: address, count: UInt64(max(count, 0)))
        }
        return unsafe try withBytes(at: address, count: count) { source in
            var done = 0
            while done < count {
                // SAFETY: pwrite(2) reads at most count - done bytes from offset done (< count)
                // of `source`, which withBytes proved to be `count` bytes of one mapping.
                let n = unsafe pwrite(fd, source.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0, errno == EINTR { continue }
                guard n > 0 else { break }
                done += n
            }
            return done
        }
    }

    /// `offset + count` when it fits a file offset (`off_t`), else nil.
    private static func fileEnd(_ offset: UInt64, _ count: Int) -> UInt64? {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        return overflow || end > UInt64(Int64.max) ? nil : end
    }

    /// Writes `bytes` at `address`.
    ///
    /// Contiguous collections (arrays, array slices) are copied with one `memcpy`; others
    /// element by element. The generic path runs unspecialised across modules at tens of
    /// nanoseconds a byte, which cost seconds for a 50 MB kernel.
    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        unsafe try withWritableBytes(at: address, count: bytes.count) { destination in
            // SAFETY: `destination` holds exactly `bytes.count` bytes (checked by withBytes),
            // and a contiguous buffer of the collection has that many.
            let copied: Void? = bytes.withContiguousStorageIfAvailable { source in
                unsafe destination.copyMemory(from: UnsafeRawBufferPointer(source))
            }
            if copied == nil {
                _ = unsafe destination.initializeMemory(as: UInt8.self, from: bytes)
            }
        }
    }

    /// Sets `count` bytes at `address` to `value`.
    public func fill(_ value: UInt8, count: UInt64, at address: UInt64) throws(GuestMemoryError) {
        guard count <= UInt64(Int.max) else { throw .outOfBounds(address: address, count: count) }
        _ = unsafe try withWritableBytes(at: address, count: Int(count)) { destination in
            unsafe destination.initializeMemory(as: UInt8.self, repeating: value).count
        }
    }

    /// Copies `bytes` to `address` and zeroes the rest of `[address, address + size)`: what
    /// loading one program segment takes, with one bounds check, one `memcpy` and one
    /// `memset`. Fails, touching nothing, unless the whole range lies in one region and
    /// `bytes` fit in it.
    public func load(_ bytes: ArraySlice<UInt8>, at address: UInt64, zeroFillingTo size: UInt64) throws(GuestMemoryError) {
        guard UInt64(bytes.count) <= size, size <= UInt64(Int.max) else {
            throw .outOfBounds(address: address, count: size)
        }
        unsafe try withWritableBytes(at: address, count: Int(size)) { destination in
            // SAFETY: `destination` holds `size` bytes (checked by withBytes), at least
            // `bytes.count` (checked above); the source buffer does not escape the closure.
            let copied = unsafe bytes.withUnsafeBytes { source in
                unsafe destination.copyMemory(from: source)
                return source.count
            }
            unsafe UnsafeMutableRawBufferPointer(rebasing: destination[copied...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    // MARK: Atomics

    /// Atomically compares the 16 bytes at `address` (16-byte aligned) with `expected` and,
    /// if equal, replaces them with `desired`. Returns whether it replaced them and the
    /// value found (little-endian low and high halves). Other vCPUs see it as one access.
    public func compareExchange16(
        at address: UInt64, expected: (low: UInt64, high: UInt64),
        desired: (low: UInt64, high: UInt64)
    )
        throws(GuestMemoryError) -> (exchanged: Bool, found: (low: UInt64, high: UInt64))
    {
        guard address % 16 == 0 else { throw .outOfBounds(address: address, count: 16) }
        return unsafe try withWritableBytes(at: address, count: 16) { bytes in
            var low = expected.low, high = expected.high
            // SAFETY: withBytes proved the 16 bytes lie in one mapping, and the address is
            // 16-byte aligned (host mappings are page-aligned), as cmpxchg16b requires.
            let equal = unsafe cga_compare_exchange_16(bytes.baseAddress!, &low, &high, desired.low, desired.high)
            return (equal != 0, (low, high))
        }
    }

    // MARK: Little-endian integers

    // SAFETY (every accessor below): withBytes proved the 1, 2, 4 or 8 bytes lie in one
    // mapping; loadUnaligned and storeBytes cope with any alignment.

    public func readUInt8(at address: UInt64) throws(GuestMemoryError) -> UInt8 {
        unsafe try withBytes(at: address, count: 1) { unsafe $0.load(as: UInt8.self) }
    }
    public func readUInt16(at address: UInt64) throws(GuestMemoryError) -> UInt16 {
        unsafe try withBytes(at: address, count: 2) { unsafe UInt16(littleEndian: $0.loadUnaligned(as: UInt16.self)) }
    }
    public func readUInt32(at address: UInt64) throws(GuestMemoryError) -> UInt32 {
        unsafe try withBytes(at: address, count: 4) { unsafe UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
    }
    public func readUInt64(at address: UInt64) throws(GuestMemoryError) -> UInt64 {
        unsafe try withBytes(at: address, count: 8) { unsafe UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    public func write(_ value: UInt8, at address: UInt64) throws(GuestMemoryError) {
        unsafe try withWritableBytes(at: address, count: 1) { unsafe $0.storeBytes(of: value, as: UInt8.self) }
    }
    public func write(_ value: UInt16, at address: UInt64) throws(GuestMemoryError) {
        unsafe try withWritableBytes(at: address, count: 2) { unsafe $0.storeBytes(of: value.littleEndian, as: UInt16.self) }
    }
    public func write(_ value: UInt32, at address: UInt64) throws(GuestMemoryError) {
        unsafe try withWritableBytes(at: address, count: 4) { unsafe $0.storeBytes(of: value.littleEndian, as: UInt32.self) }
    }
    public func write(_ value: UInt64, at address: UInt64) throws(GuestMemoryError) {
        unsafe try withWritableBytes(at: address, count: 8) { unsafe $0.storeBytes(of: value.littleEndian, as: UInt64.self) }
    }
}
