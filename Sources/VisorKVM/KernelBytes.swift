internal import CKVM

/// Kernel state structures as bytes, for snapshots.
///
/// Every structure here (`kvm_regs`, `kvm_sregs`, `kvm_lapic_state`, ...) is plain data of
/// the kernel's stable ABI: integers and arrays of integers, no pointers, no enums. So any
/// bytes of the right length are a valid value of the type, and a snapshot can keep each
/// one as its exact bytes. The length is the one check that matters, and it is made here.

/// The bytes of a kernel structure.
func kernelBytes<T>(of value: T) -> [UInt8] {
    // SAFETY: the buffer covers exactly `value`, pinned for the closure, and is copied out.
    unsafe withUnsafeBytes(of: value) { unsafe Array($0) }
}

/// The kernel structure whose bytes these are, or nil unless `bytes` is exactly its size.
/// `blank` is a value of the type (`kvm_regs()`), overwritten with the bytes.
func kernelValue<T>(_ blank: T, from bytes: [UInt8]) -> T? {
    guard bytes.count == MemoryLayout<T>.size else { return nil }
    var value = blank
    // SAFETY: T is a kernel structure of plain integers (unions of them at most), for which
    // every bit pattern is a value; the copy writes exactly its MemoryLayout<T>.size bytes,
    // the count checked above.
    unsafe withUnsafeMutableBytes(of: &value) { target in
        unsafe bytes.withUnsafeBytes { unsafe target.copyMemory(from: $0) }
    }
    return value
}

/// The sizes of the kernel structures a `VCPUState` or `VMState` keeps.
package enum KernelLayout {
    package static let regs = MemoryLayout<kvm_regs>.size
    package static let sregs = MemoryLayout<kvm_sregs>.size
    package static let debugRegs = MemoryLayout<kvm_debugregs>.size
    package static let fpu = MemoryLayout<kvm_fpu>.size
    /// `struct kvm_xsave`: the legacy 4 KiB area; `KVM_GET_XSAVE2` may use more.
    package static let xsave = MemoryLayout<kvm_xsave>.size
    package static let xcrs = MemoryLayout<kvm_xcrs>.size
    package static let lapic = MemoryLayout<kvm_lapic_state>.size
    package static let events = MemoryLayout<kvm_vcpu_events>.size
    package static let irqchip = MemoryLayout<kvm_irqchip>.size
    package static let pit = MemoryLayout<kvm_pit_state2>.size
}
