import Glibc

/// An error from the KVM layer. Each case's message names what failed and, where there
/// is one, what the user can do about it.
public enum KVMError: Error, Equatable, CustomStringConvertible {
    /// The KVM device could not be opened.
    case cannotOpenDevice(path: String, errno: Int32)
    /// The kernel speaks a KVM API version other than 12.
    case unsupportedAPIVersion(Int32)
    /// A capability SwiftVisor needs is missing.
    case missingCapability(String)
    /// An ioctl failed.
    case ioctl(name: String, errno: Int32)
    /// Mapping a vCPU's shared run page failed.
    case mapRunPage(errno: Int32)
    /// The kernel reported something the shared run page cannot hold.
    case malformedRunPage(String)
    /// Saved vCPU state gives the guest a CPU feature this host's KVM does not offer:
    /// CPUID `leaf`.`subleaf`, `register`, `bit`.
    case incompatibleCPU(leaf: UInt32, subleaf: UInt32, register: String, bit: Int)
    /// Saved vCPU state ran its TSC at `savedKHz`; this host's vCPU runs at `hostKHz` and
    /// KVM cannot scale it, for `reason`.
    case tscFrequencyMismatch(savedKHz: UInt32, hostKHz: UInt32, reason: String)
    /// Saved VM or vCPU state does not fit the VM or vCPU it is restored into.
    case stateMismatch(String)
    /// The vCPU's state cannot be read yet: finishing its last instruction produced this
    /// exit, whose data is in the run page; handle it, then capture again.
    case exitPending(VMExit)

    public var description: String {
        switch self {
        case .cannotOpenDevice(let path, let errno):
            let hint: String
            switch errno {
            case ENOENT: hint = "KVM is not available: load the kvm module or enable virtualization"
            case EACCES, EPERM: hint = "add your user to the group that owns \(path) (often 'kvm') or run as root"
            default: hint = "check that KVM works on this machine"
            }
            return "cannot open \(path): \(errnoText(errno)); \(hint)"
        case .unsupportedAPIVersion(let found):
            return "KVM API version \(found) is not supported; SwiftVisor needs version 12"
        case .missingCapability(let name):
            return "the host's KVM lacks \(name), which SwiftVisor needs"
        case .ioctl(let name, let errno):
            return "\(name) failed: \(errnoText(errno))"
        case .mapRunPage(let errno):
            return "mapping the vCPU run page failed: \(errnoText(errno))"
        case .malformedRunPage(let what):
            return "the kernel's run page is malformed: \(what)"
        case .incompatibleCPU(let leaf, let subleaf, let register, let bit):
            return "the saved vCPU was given CPUID leaf 0x\(String(leaf, radix: 16)) subleaf \(subleaf) "
                + "\(register) bit \(bit), a CPU feature this host's KVM does not offer; restore on a host "
                + "whose CPU has it, or snapshot a guest whose CPU policy hides it"
        case .tscFrequencyMismatch(let saved, let host, let reason):
            return "the saved vCPU's TSC ran at \(saved) kHz and this host's runs at \(host) kHz, and \(reason); "
                + "restore on a host with the same TSC frequency or with TSC scaling"
        case .stateMismatch(let what):
            return "the saved state does not fit this VM: \(what)"
        case .exitPending(let exit):
            return "the vCPU's state cannot be saved in the middle of an instruction: handle its exit \(exit) "
                + "(VCPUHandle.completePendingExit) and save again"
        }
    }
}

/// `strerror` text followed by the errno number, e.g. "Permission denied (errno 13)".
package func errnoText(_ code: Int32) -> String {
    // SAFETY: strerror returns a NUL-terminated string valid until the next call on this
    // thread; it is copied into a String at once.
    if let text = unsafe strerror(code) {
        return unsafe "\(String(cString: text)) (errno \(code))"
    }
    return "errno \(code)"
}
