internal import CKVM
import Glibc
import Synchronization

/// A KVM virtual machine file descriptor. Owns and closes it.
package final class VMHandle: Sendable {
    let fd: Int32
    private let interruptController = Atomic<Bool>(false)
    /// The page count of each slot registered with dirty logging (see DirtyLog.swift).
    let dirtyLogSlots = Mutex<[UInt32: UInt64]>([:])
    private let pit = Atomic<Bool>(false)

    /// Whether `createPIT()` succeeded.
    package var hasPIT: Bool { pit.load(ordering: .acquiring) }

    /// Whether `createInterruptController()` succeeded.
    package var hasInterruptController: Bool { interruptController.load(ordering: .acquiring) }
    /// Keeps the system handle (and its vCPU map size) alive as long as the VM.
    let system: KVMSystem

    init(fd: Int32, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { close(fd) }

    /// The result of `KVM_CHECK_EXTENSION` on this VM.
    package func check(_ capability: KVMCapability) -> Int32 {
        max(0, ckvm_ioctl_value(fd, CKVM_CHECK_EXTENSION, UInt(capability.rawValue)))
    }

    /// Maps guest-physical memory to host memory (`KVM_SET_USER_MEMORY_REGION`).
    ///
    /// - Parameter hostAddress: the start of a host mapping of at least `size` bytes that
    ///   stays mapped while the VM exists. The caller (the machine, with guest memory it
    ///   owns for the VM's lifetime) guarantees this; the kernel accesses the memory.
    /// - Parameter logDirtyPages: have KVM log the guest's writes to the slot
    ///   (`KVM_MEM_LOG_DIRTY_PAGES`), for `dirtyLog(slot:pageCount:)`.
    package func setMemoryRegion(
        slot: UInt32, guestPhysical: UInt64, size: UInt64,
        hostAddress: UInt, readOnly: Bool = false, logDirtyPages: Bool = false
    ) throws(KVMError) {
        let flags = (readOnly ? UInt32(KVM_MEM_READONLY) : 0) | (logDirtyPages ? CKVM_MEM_LOG_DIRTY_PAGES : 0)
        var region = kvm_userspace_memory_region(
            slot: slot, flags: flags,
            guest_phys_addr: guestPhysical, memory_size: size, userspace_addr: UInt64(hostAddress))
        try ioctlStruct(fd, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
        recordDirtyLogSlot(slot, size: logDirtyPages ? size : 0)
    }

    /// Places the three pages Intel's real-mode support needs (`KVM_SET_TSS_ADDR`).
    package func setTSSAddress(_ address: UInt64) throws(KVMError) {
        _ = try checkedIoctl("KVM_SET_TSS_ADDR") { ckvm_ioctl_value(fd, CKVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// Places the identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`).
    package func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try ioctlStruct(fd, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &value)
    }

    /// Sends chosen MSRs to user space: enables `KVM_CAP_X86_USER_SPACE_MSR` for filtered,
    /// unknown and invalid accesses, and installs a filter whose `ranges` (base, count)
    /// exit while every other MSR stays with KVM.
    package func routeMSRsToUserSpace(_ ranges: [(base: UInt32, count: UInt32)]) throws(KVMError) {
        var enable = kvm_enable_cap()
        enable.cap = CKVM_CAP_X86_USER_SPACE_MSR
        enable.args.0 = CKVM_MSR_EXIT_REASON_FILTER | CKVM_MSR_EXIT_REASON_UNKNOWN | CKVM_MSR_EXIT_REASON_INVAL
        try ioctlStruct(fd, CKVM_ENABLE_CAP, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)", &enable)
        guard ranges.count <= Int(CKVM_MSR_FILTER_MAX_RANGES) else {
            throw .ioctl(name: "KVM_X86_SET_MSR_FILTER (more than \(CKVM_MSR_FILTER_MAX_RANGES) ranges)", errno: EINVAL)
        }
        let bases = ranges.map(\.base), counts = ranges.map(\.count)
        _ = try checkedIoctl("KVM_X86_SET_MSR_FILTER") {
            // SAFETY: bases and counts each hold ranges.count values, pinned for the call; the
            // shim copies them into the filter before the ioctl.
            unsafe ckvm_set_msr_exit_ranges(fd, bases, counts, Int32(ranges.count))
        }
    }

    /// Creates the in-kernel interrupt controllers: two 8259 PICs, an IOAPIC and a local
    /// APIC per vCPU (`KVM_CREATE_IRQCHIP`). Must precede vCPU creation.
    package func createInterruptController() throws(KVMError) {
        _ = try checkedIoctl("KVM_CREATE_IRQCHIP") { ckvm_ioctl_none(fd, CKVM_CREATE_IRQCHIP) }
        interruptController.store(true, ordering: .releasing)
    }

    /// Sends a message-signalled interrupt (`KVM_SIGNAL_MSI`): with the in-kernel irqchip,
    /// address 0xFEE00000 | (APIC ID << 12) and data = vector deliver a fixed, edge-triggered
    /// interrupt to that local APIC.
    package func signalMSI(address: UInt64, data: UInt32) throws(KVMError) {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        _ = try checkedIoctl("KVM_SIGNAL_MSI") {
            // SAFETY: `msi` is pinned for the call; KVM_SIGNAL_MSI reads exactly one struct kvm_msi.
            unsafe withUnsafeMutablePointer(to: &msi) { unsafe ckvm_ioctl_pointer(fd, CKVM_SIGNAL_MSI, $0) }
        }
    }

    /// Creates the in-kernel 8254 PIT (`KVM_CREATE_PIT2`), with a dummy speaker port.
    package func createPIT() throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = CKVM_PIT_SPEAKER_DUMMY
        try ioctlStruct(fd, CKVM_CREATE_PIT2, "KVM_CREATE_PIT2", &config)
        pit.store(true, ordering: .releasing)
    }

    /// Sets the level of interrupt line `irq` (GSI) of the in-kernel PIC and IOAPIC
    /// (`KVM_IRQ_LINE`). Callable from any thread.
    package func setIRQLine(_ irq: UInt32, high: Bool) throws(KVMError) {
        var level = kvm_irq_level()
        level.irq = irq
        level.level = high ? 1 : 0
        try ioctlStruct(fd, CKVM_IRQ_LINE, "KVM_IRQ_LINE", &level)
    }

    /// Makes a guest write of `length` bytes equal to `value` at MMIO `address` signal the
    /// eventfd `fd` inside the kernel, with no exit to user space (`KVM_IOEVENTFD` with
    /// DATAMATCH). A write of any other value still exits. With `remove`, undoes it.
    package func setMMIOEventFD(address: UInt64, length: UInt32, value: UInt64, fd: Int32, remove: Bool = false)
        throws(KVMError)
    {
        var event = kvm_ioeventfd()
        event.datamatch = value
        event.addr = address
        event.len = length
        event.fd = fd
        event.flags = CKVM_IOEVENTFD_FLAG_DATAMATCH | (remove ? CKVM_IOEVENTFD_FLAG_DEASSIGN : 0)
        try ioctlStruct(self.fd, CKVM_IOEVENTFD, "KVM_IOEVENTFD", &event)
    }

    /// Makes each signal of the eventfd `fd` inject an edge on interrupt line `gsi` of the
    /// in-kernel interrupt controller (`KVM_IRQFD`), from any thread, with no ioctl. With
    /// `remove`, undoes it.
    package func setIRQFD(_ fd: Int32, gsi: UInt32, remove: Bool = false) throws(KVMError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: fd)
        irqfd.gsi = gsi
        irqfd.flags = remove ? CKVM_IRQFD_FLAG_DEASSIGN : 0
        try ioctlStruct(self.fd, CKVM_IRQFD, "KVM_IRQFD", &irqfd)
    }

    /// Creates vCPU `id` and maps its run page (`KVM_CREATE_VCPU`).
    package func createVCPU(id: UInt32) throws(KVMError) -> VCPUHandle {
        let vcpufd = try checkedIoctl("KVM_CREATE_VCPU") { ckvm_ioctl_value(fd, CKVM_CREATE_VCPU, UInt(id)) }
        do throws(KVMError) {
            return try VCPUHandle(fd: vcpufd, id: id, mapSize: system.vcpuMapSize, vm: self)
        } catch {
            close(vcpufd)
            throw error
        }
    }
}
