// Memory with a PROT_NONE guard page after it, for targets that hand a raw pointer to the
// code under test: an access past the end faults at once instead of reading a neighbour.
import Glibc

/// `pages` pages of zeroed, readable and writable memory, then one PROT_NONE guard page.
/// The region is `[base, base + size)` where `size = pages * 4096`; the guard page starts
/// at `base + size`. Reads and writes through this type are checked against the region.
///
/// `@safe`: the pointer stays inside this type except through `withBase`, whose closure
/// must not keep it; every access below is marked `unsafe` with why it stays inside.
@safe final class GuardedPages {
    static let pageSize = 4096
    private let mapping: UnsafeMutableRawPointer
    /// Bytes usable before the guard page.
    let size: Int

    init(pages: Int) {
        precondition(pages >= 1 && pages <= 16, "GuardedPages: \(pages) pages")
        size = pages * Self.pageSize
        // SAFETY: mmap creates a new private anonymous mapping and touches no existing
        // memory; the result is checked against MAP_FAILED before it is used.
        let raw = unsafe mmap(nil, size + Self.pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let raw = unsafe raw, unsafe raw != MAP_FAILED else { preconditionFailure("GuardedPages: mmap failed") }
        unsafe mapping = unsafe raw
        // SAFETY: the last page of the mapping just made; nothing else uses it.
        guard unsafe mprotect(raw.advanced(by: size), Self.pageSize, PROT_NONE) == 0 else {
            preconditionFailure("GuardedPages: mprotect failed")
        }
    }

    deinit {
        // SAFETY: the mapping made in init, size plus the guard page long; nothing uses it
        // after deinit (withBase's closures do not keep the pointer).
        unsafe munmap(mapping, size + Self.pageSize)
    }

    /// Copies `bytes` to `offset`. Traps when they do not fit the region.
    func write(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset <= size && bytes.count <= size - offset, "GuardedPages: write outside")
        // SAFETY: offset + bytes.count <= size (checked above), inside the readable part.
        unsafe bytes.withUnsafeBytes {
            unsafe mapping.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
        }
    }

    /// `count` bytes from `offset`. Traps when they do not fit the region.
    func bytes(at offset: Int, count: Int) -> [UInt8] {
        precondition(offset >= 0 && count >= 0 && offset <= size && count <= size - offset, "GuardedPages: read outside")
        // SAFETY: offset + count <= size (checked above), inside the readable part.
        return unsafe Array(UnsafeRawBufferPointer(start: mapping.advanced(by: offset), count: count))
    }

    /// Runs `body` with the start of the region plus `offset` (a multiple of 8, at most
    /// `size`). The pointer must not outlive `body`.
    func withBase<R>(offset: Int, _ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> R {
        precondition(offset >= 0 && offset <= size && offset % 8 == 0, "GuardedPages: bad base offset")
        // SAFETY: offset <= size keeps the pointer inside the mapping; body does not keep it,
        // and self stays alive for the call.
        return try withExtendedLifetime(self) { try unsafe body(mapping.advanced(by: offset)) }
    }
}
