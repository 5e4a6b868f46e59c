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
