internal import CKVM
import Glibc
import Synchronization

/// A KVM capability, as asked with `KVM_CHECK_EXTENSION`.
package struct KVMCapability: Sendable, Hashable, CustomStringConvertible {
    package let rawValue: Int32
    package let name: String
    package init(_ rawValue: Int32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }
    package var description: String { name }

    package static let userMemory = KVMCapability(Int32(KVM_CAP_USER_MEMORY), name: "KVM_CAP_USER_MEMORY")
    package static let setTSSAddress = KVMCapability(Int32(KVM_CAP_SET_TSS_ADDR), name: "KVM_CAP_SET_TSS_ADDR")
    package static let immediateExit = KVMCapability(Int32(KVM_CAP_IMMEDIATE_EXIT), name: "KVM_CAP_IMMEDIATE_EXIT")
    package static let extendedCPUID = KVMCapability(Int32(KVM_CAP_EXT_CPUID), name: "KVM_CAP_EXT_CPUID")
    package static let vcpuEvents = KVMCapability(Int32(KVM_CAP_VCPU_EVENTS), name: "KVM_CAP_VCPU_EVENTS")
    package static let nrVCPUs = KVMCapability(Int32(KVM_CAP_NR_VCPUS), name: "KVM_CAP_NR_VCPUS")
    package static let maxVCPUs = KVMCapability(Int32(KVM_CAP_MAX_VCPUS), name: "KVM_CAP_MAX_VCPUS")
    package static let userSpaceMSR = KVMCapability(Int32(KVM_CAP_X86_USER_SPACE_MSR), name: "KVM_CAP_X86_USER_SPACE_MSR")
    package static let msrFilter = KVMCapability(Int32(KVM_CAP_X86_MSR_FILTER), name: "KVM_CAP_X86_MSR_FILTER")
    package static let ioEventFD = KVMCapability(Int32(KVM_CAP_IOEVENTFD), name: "KVM_CAP_IOEVENTFD")
    package static let irqFD = KVMCapability(Int32(KVM_CAP_IRQFD), name: "KVM_CAP_IRQFD")
    package static let nrMemslots = KVMCapability(Int32(KVM_CAP_NR_MEMSLOTS), name: "KVM_CAP_NR_MEMSLOTS")
    /// Answers the size of the vCPU XSAVE area `KVM_GET_XSAVE2` uses (0 when absent).
    package static let xsave2 = KVMCapability(CKVM_CAP_XSAVE2, name: "KVM_CAP_XSAVE2")
    package static let tscControl = KVMCapability(CKVM_CAP_TSC_CONTROL, name: "KVM_CAP_TSC_CONTROL")
    package static let getTSCKHz = KVMCapability(CKVM_CAP_GET_TSC_KHZ, name: "KVM_CAP_GET_TSC_KHZ")
}

/// One CPUID leaf/subleaf as KVM reports and accepts it (`struct kvm_cpuid_entry2`).
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(
        function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
        eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    ) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// The KVM subsystem: an open `/dev/kvm`. Owns and closes its file descriptor.
package final class KVMSystem: Sendable {
    /// The only KVM API version that exists; the kernel has reported 12 since 2.6.22.
    package static let requiredAPIVersion: Int32 = 12

    let fd: Int32
    /// The MSR indices `KVM_GET_MSR_INDEX_LIST` returned, read once.
    private let saveableMSRs = Mutex<[UInt32]?>(nil)
    /// The table `KVM_GET_SUPPORTED_CPUID` returned, read once.
    private let supportedCPUIDTable = Mutex<[CPUIDEntry]?>(nil)
    /// Size of each vCPU's shared `kvm_run` mapping.
    package let vcpuMapSize: Int

    /// Opens the KVM device and checks its API version.
    /// - Parameter path: the device node; tests point it elsewhere to exercise the errors.
    package init(path: String = "/dev/kvm") throws(KVMError) {
        // SAFETY: open reads the NUL-terminated copy of `path` Swift passes for the call.
        let fd = unsafe open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw .cannotOpenDevice(path: path, errno: errno) }
        do throws(KVMError) {
            let version = try checkedIoctl("KVM_GET_API_VERSION") {
                ckvm_ioctl_none(fd, CKVM_GET_API_VERSION)
            }
            try Self.checkAPIVersion(version)
            for capability in [KVMCapability.userMemory, .setTSSAddress, .immediateExit, .extendedCPUID, .vcpuEvents] {
                let present = try checkedIoctl("KVM_CHECK_EXTENSION") {
                    ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(capability.rawValue))
                }
                if present <= 0 { throw KVMError.missingCapability(capability.name) }
            }
            vcpuMapSize = Int(
                try checkedIoctl("KVM_GET_VCPU_MMAP_SIZE") {
                    ckvm_ioctl_none(fd, CKVM_GET_VCPU_MMAP_SIZE)
                })
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The systems opened by `shared(path:)`, one per device path, kept for the life of
    /// the process.
    private static let opened = Mutex<[String: KVMSystem]>([:])

    /// The process's one open `path` (opened on first use; a failure is not remembered).
    /// Every machine is built through it, so building a machine after a guest reset
    /// opens no file, which lets the main thread's seccomp filter refuse `open`; and a
    /// process holds one descriptor to KVM however many machines it builds, as other
    /// monitors do.
    package static func shared(path: String = "/dev/kvm") throws(KVMError) -> KVMSystem {
        try opened.withLock { (systems) throws(KVMError) -> KVMSystem in
            if let system = systems[path] { return system }
            let system = try KVMSystem(path: path)
            systems[path] = system
            return system
        }
    }

    /// Accepts only API version 12, the one every kernel since 2.6.22 reports.
    package static func checkAPIVersion(_ version: Int32) throws(KVMError) {
        guard version == requiredAPIVersion else { throw .unsupportedAPIVersion(version) }
    }

    /// The result of `KVM_CHECK_EXTENSION` for `capability`: 0 when absent, otherwise
    /// positive (some capabilities report a number, such as a limit).
    package func check(_ capability: KVMCapability) -> Int32 {
        max(0, ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(capability.rawValue)))
    }

    /// The CPUID entries KVM can offer a guest (`KVM_GET_SUPPORTED_CPUID`). Read from the
    /// kernel once and remembered: the table does not change while the module is loaded,
    /// and the ioctl costs a few hundred microseconds, which a restore would pay per vCPU.
    package func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        if let known = supportedCPUIDTable.withLock({ $0 }) { return known }
        // SAFETY: withCPUIDBuffer gives a header with room for nent entries, which is all the
        // kernel writes; readCPUID reads back at most the nent the kernel left there.
        let table = unsafe try withCPUIDBuffer(capacity: Int(CKVM_MAX_CPUID_ENTRIES)) { (buffer) throws(KVMError) in
            _ = try checkedIoctl("KVM_GET_SUPPORTED_CPUID") {
                unsafe ckvm_ioctl_pointer(fd, CKVM_GET_SUPPORTED_CPUID, buffer)
            }
            return unsafe readCPUID(buffer)
        }
        supportedCPUIDTable.withLock { $0 = table }
        return table
    }

    /// The most MSR indices `saveableMSRIndices()` accepts from the kernel (it lists a
    /// few hundred).
    package static let maxSaveableMSRs = 4096

    /// The MSRs KVM lists as vCPU state to save and restore (`KVM_GET_MSR_INDEX_LIST`):
    /// the MSRs it keeps for the guest and those it emulates. Some of them a given vCPU
    /// cannot read (its CPUID lacks the feature); `VCPUHandle.captureState()` keeps only
    /// those it can. Read from the kernel once and remembered.
    package func saveableMSRIndices() throws(KVMError) -> [UInt32] {
        if let known = saveableMSRs.withLock({ $0 }) { return known }
        // First ask with room for none: the kernel answers E2BIG and the count it needs.
        var probe: [UInt32] = [0]
        let first = unsafe probe.withUnsafeMutableBytes { raw in
            // SAFETY: nmsrs (probe[0]) is 0, so the kernel writes only the count word.
            unsafe ckvm_ioctl_pointer(fd, CKVM_GET_MSR_INDEX_LIST, raw.baseAddress)
        }
        if first < 0 && errno != E2BIG { throw .ioctl(name: "KVM_GET_MSR_INDEX_LIST", errno: errno) }
        let count = Int(probe[0])
        guard count <= Self.maxSaveableMSRs else {
            throw .stateMismatch("KVM lists \(count) saveable MSRs, more than the \(Self.maxSaveableMSRs) SwiftVisor reads")
        }
        var list = [UInt32](repeating: 0, count: count + 1)
        list[0] = UInt32(count)
        _ = try checkedIoctl("KVM_GET_MSR_INDEX_LIST") {
            // SAFETY: the array holds the count word and `count` index slots after it, and
            // the count word tells the kernel exactly that capacity; pinned for the call.
            unsafe list.withUnsafeMutableBytes { unsafe ckvm_ioctl_pointer(fd, CKVM_GET_MSR_INDEX_LIST, $0.baseAddress) }
        }
        let indices = Array(list[1..<(1 + min(Int(list[0]), count))])
        saveableMSRs.withLock { $0 = indices }
        return indices
    }

    /// Creates a virtual machine (`KVM_CREATE_VM`).
    package func createVM() throws(KVMError) -> VMHandle {
        let vmfd = try checkedIoctl("KVM_CREATE_VM") { ckvm_ioctl_value(fd, CKVM_CREATE_VM, 0) }
        return VMHandle(fd: vmfd, system: self)
    }
}

/// Runs `body` with a zeroed `kvm_cpuid2` that has room for `capacity` entries.
///
/// The buffer is allocated here with the header plus `capacity` trailing entries, as the
/// kernel's flexible array needs, and freed when `body` returns; `nent` says how many
/// entries the kernel may read or write, so it never touches memory past the allocation.
func withCPUIDBuffer<R>(
    capacity: Int, _ body: (UnsafeMutablePointer<kvm_cpuid2>) throws(KVMError) -> R
) throws(KVMError) -> R {
    let bytes = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
    // SAFETY: the buffer is allocated, zeroed and bound here, and freed when body returns;
    // body must not keep the pointer.
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: MemoryLayout<kvm_cpuid2>.alignment)
    defer { unsafe raw.deallocate() }
    unsafe raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    let header = unsafe raw.bindMemory(to: kvm_cpuid2.self, capacity: 1)
    unsafe header.pointee.nent = UInt32(capacity)
    return unsafe try body(header)
}

/// The entries of a filled `kvm_cpuid2`; `nent` was set by the kernel to at most the capacity.
func readCPUID(_ header: UnsafeMutablePointer<kvm_cpuid2>) -> [CPUIDEntry] {
    // SAFETY: the caller passes a header from withCPUIDBuffer; nent <= its capacity, and the
    // entries follow the header directly (flexible array member).
    let count = unsafe Int(header.pointee.nent)
    let entries = unsafe UnsafeMutableRawPointer(header).advanced(by: MemoryLayout<kvm_cpuid2>.size)
        .assumingMemoryBound(to: kvm_cpuid_entry2.self)
    return (0..<count).map { i in
        let e = unsafe entries[i]
        return CPUIDEntry(
            function: e.function, index: e.index, flags: e.flags,
            eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }
}

/// CPUID of the host processor itself, as this process sees it.
package func hostCPUID(leaf: UInt32, subleaf: UInt32 = 0) -> (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
    var registers: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
    // SAFETY: the tuple of four UInt32 is laid out as uint32_t[4], which the C function fills.
    unsafe withUnsafeMutablePointer(to: &registers) { pointer in
        unsafe pointer.withMemoryRebound(to: UInt32.self, capacity: 4) { unsafe ckvm_host_cpuid(leaf, subleaf, $0) }
    }
    return registers
}
