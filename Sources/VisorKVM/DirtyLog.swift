internal import CKVM
import Glibc
import Synchronization

// Dirty-page logging for diff snapshots. A slot registered with
// `setMemoryRegion(..., logDirtyPages: true)` has KVM record which of its pages the guest
// wrote; `dirtyLog(slot:pageCount:)` returns that bitmap and clears it (KVM's default
// get-and-clear semantics, which need no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: that
// capability only splits the clear out into KVM_CLEAR_DIRTY_LOG, for huge guests). Writes
// the VMM makes itself are not in this log; guest memory tracks those.

extension VMHandle {
    /// Records (size > 0) or forgets (size 0) the page count of a dirty-logged slot, so
    /// `dirtyLog` can size the bitmap the kernel writes exactly.
    func recordDirtyLogSlot(_ slot: UInt32, size: UInt64) {
        dirtyLogSlots.withLock { slots in
            if size > 0 { slots[slot] = size / 4096 } else { slots[slot] = nil }
        }
    }

    /// The pages of `slot` the guest wrote since the slot was registered or the last call,
    /// and clears them (`KVM_GET_DIRTY_LOG`): bit `p % 64` of word `p / 64` is page `p` of
    /// the slot; `(pageCount + 63) / 64` words.
    ///
    /// Take it with the vCPUs paused to get a consistent set (a running vCPU may dirty a
    /// page just after its bit was read, which lands in the next call's bitmap).
    ///
    /// - Throws: `KVMError.ioctl` when `slot` was not registered with `logDirtyPages`, or
    ///   `pageCount` is not its page count (`EINVAL`), or the ioctl fails.
    package func dirtyLog(slot: UInt32, pageCount: UInt64) throws(KVMError) -> [UInt64] {
        var bitmap: [UInt64] = []
        try dirtyLog(slot: slot, pageCount: pageCount, into: &bitmap)
        return bitmap
    }

    /// As `dirtyLog(slot:pageCount:)`, into `bitmap`, which is resized to the slot's word
    /// count (no allocation when it already has that count, as on every call after the first).
    package func dirtyLog(slot: UInt32, pageCount: UInt64, into bitmap: inout [UInt64]) throws(KVMError) {
        let registered = dirtyLogSlots.withLock { $0[slot] }
        guard let pages = registered, pages == pageCount else {
            let why =
                registered.map { "slot \(slot) has \($0) pages, not \(pageCount)" } ?? "slot \(slot) does not log dirty pages"
            throw .ioctl(name: "KVM_GET_DIRTY_LOG (\(why))", errno: EINVAL)
        }
        let words = Int((pages + 63) / 64)
        if bitmap.count != words { bitmap = [UInt64](repeating: 0, count: words) }
        _ = try checkedIoctl("KVM_GET_DIRTY_LOG") {
            // SAFETY: the kernel writes ALIGN(npages, 64) / 8 bytes for the slot, and the slot
            // has exactly `pages` pages (recorded when it was registered), so the bitmap's
            // (pages + 63) / 64 words hold it; the array is pinned for the call.
            unsafe bitmap.withUnsafeMutableBufferPointer { unsafe ckvm_get_dirty_log(fd, slot, $0.baseAddress!) }
        }
    }
}
