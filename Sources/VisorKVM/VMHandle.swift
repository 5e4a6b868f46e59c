internal import CKVM
import Glibc

/// A KVM virtual machine file descriptor. Owns and closes it.
public final class VMHandle: Sendable {
    let fd: Int32
    /// Keeps the system handle (and its vCPU map size) alive as long as the VM.
    let system: KVMSystem

    init(fd: Int32, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { close(fd) }

    /// The result of `KVM_CHECK_EXTENSION` on this VM.
    public func check(_ capability: KVMCapability) -> Int32 {
        max(0, ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(capability.rawValue)))
    }

    /// Maps guest-physical memory to host memory (`KVM_SET_USER_MEMORY_REGION`).
    ///
    /// - Parameter hostAddress: the start of a host mapping of at least `size` bytes that
    ///   stays mapped while the VM exists. The caller (the machine, with guest memory it
    ///   owns for the VM's lifetime) guarantees this; the kernel accesses the memory.
    public func setMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64,
                                hostAddress: UInt, readOnly: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? UInt32(KVM_MEM_READONLY) : 0,
            guest_phys_addr: guestPhysical, memory_size: size, userspace_addr: UInt64(hostAddress))
        try ioctlStruct(fd, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
    }

    /// Places the three pages Intel's real-mode support needs (`KVM_SET_TSS_ADDR`).
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        _ = try checkedIoctl("KVM_SET_TSS_ADDR") { ckvm_ioctl_value(fd, CKVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// Places the identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`).
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try ioctlStruct(fd, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &value)
    }

    /// Sends chosen MSRs to user space: enables `KVM_CAP_X86_USER_SPACE_MSR` for filtered,
    /// unknown and invalid accesses, and installs a filter whose `ranges` (base, count)
    /// exit while every other MSR stays with KVM.
    public func routeMSRsToUserSpace(_ ranges: [(base: UInt32, count: UInt32)]) throws(KVMError) {
        var enable = kvm_enable_cap()
        enable.cap = CKVM_CAP_X86_USER_SPACE_MSR
        enable.args.0 = CKVM_MSR_EXIT_REASON_FILTER | CKVM_MSR_EXIT_REASON_UNKNOWN | CKVM_MSR_EXIT_REASON_INVAL
        try ioctlStruct(fd, CKVM_ENABLE_CAP, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)", &enable)
        guard ranges.count <= Int(CKVM_MSR_FILTER_MAX_RANGES) else {
            throw .ioctl(name: "KVM_X86_SET_MSR_FILTER (more than \(CKVM_MSR_FILTER_MAX_RANGES) ranges)", errno: EINVAL)
        }
        let bases = ranges.map(\.base), counts = ranges.map(\.count)
        _ = try checkedIoctl("KVM_X86_SET_MSR_FILTER") {
            ckvm_set_msr_exit_ranges(fd, bases, counts, Int32(ranges.count))
        }
    }

    /// Creates vCPU `id` and maps its run page (`KVM_CREATE_VCPU`).
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPUHandle {
        let vcpufd = try checkedIoctl("KVM_CREATE_VCPU") { ckvm_ioctl_value(fd, CKVM_CREATE_VCPU, UInt(id)) }
        do throws(KVMError) {
            return try VCPUHandle(fd: vcpufd, id: id, mapSize: system.vcpuMapSize, vm: self)
        } catch {
            close(vcpufd)
            throw error
        }
    }
}
