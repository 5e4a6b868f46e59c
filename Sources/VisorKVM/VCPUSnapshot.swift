internal import CKVM
import Glibc

/// Capturing a vCPU's whole state from KVM and putting it back into a fresh vCPU.
extension VCPUHandle {
    /// Reads everything KVM holds for this vCPU (see `VCPUState`). Call it while the vCPU
    /// is not running (between `run()` calls on the vCPU's thread), with the last exit
    /// handled (an IN exit's data stored).
    ///
    /// First it lets KVM finish the instruction of the last exit (`completePendingExit()`):
    /// until then an OUT or an MMIO access is half done, RIP still on it, and a restored
    /// guest would run it twice. When that needs user space once more (a string I/O or
    /// MMIO access that goes on), it throws `.exitPending` with that exit: the caller
    /// handles it like any exit and captures again. Then the MP state, because reading it makes KVM process a
    /// pending INIT or SIPI, which changes the registers and the APIC; then the rest.
    package func captureState() throws(KVMError) -> VCPUState {
        if let exit = try completePendingExit() { throw .exitPending(exit) }
        let mp = try mpState()
        var regs = kvm_regs()
        try ioctlStruct(fd, CKVM_GET_REGS, "KVM_GET_REGS", &regs)
        var sregs = kvm_sregs()
        try ioctlStruct(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &sregs)
        var fpu = kvm_fpu()
        try ioctlStruct(fd, CKVM_GET_FPU, "KVM_GET_FPU", &fpu)
        let xsave = try readXSAVE()
        var xcrs = kvm_xcrs()
        try ioctlStruct(fd, CKVM_GET_XCRS, "KVM_GET_XCRS", &xcrs)
        var debug = kvm_debugregs()
        try ioctlStruct(fd, CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &debug)
        var lapic: [UInt8] = []
        if vm.hasInterruptController {
            var state = kvm_lapic_state()
            try ioctlStruct(fd, CKVM_GET_LAPIC, "KVM_GET_LAPIC", &state)
            lapic = kernelBytes(of: state)
        }
        let khz = try tscKHz()
        let cpuid = try cpuidTable()
        let msrs = try readMSRs(vm.system.saveableMSRIndices())
        var events = kvm_vcpu_events()
        try ioctlStruct(fd, CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &events)
        return VCPUState(
            regs: kernelBytes(of: regs), sregs: kernelBytes(of: sregs), debugRegs: kernelBytes(of: debug),
            fpu: kernelBytes(of: fpu), xsave: xsave, xcrs: kernelBytes(of: xcrs), lapic: lapic, msrs: msrs,
            events: kernelBytes(of: events), mpState: mp, tscKHz: khz, cpuid: cpuid)
    }

    /// Puts `state` into this vCPU, which must be fresh (never run) and belong to a VM
    /// built like the one the state came from (same irqchip, guest memory restored).
    ///
    /// Refuses first, having changed only the fresh vCPU's CPUID table (`offeredCPUID()`),
    /// when the state's CPUID gives the guest a feature this host's KVM does not offer, or
    /// a vCPU register block does not fit. Then writes in the order
    /// KVM needs: CPUID (it decides which MSRs and XSAVE components exist), the TSC
    /// frequency, the MP state, general and special registers (the APIC base among them),
    /// FPU and XSAVE, XCRs, debug registers, the local APIC (after the APIC base), the MSRs
    /// (IA32_TSC first, IA32_TSC_DEADLINE last), and the pending events last, so nothing
    /// above clears them.
    package func restoreState(_ state: VCPUState) throws(KVMError) {
        try state.checkCompatible(withSupported: offeredCPUID())
        guard var regs = kernelValue(kvm_regs(), from: state.regs),
            var sregs = kernelValue(kvm_sregs(), from: state.sregs),
            var fpu = kernelValue(kvm_fpu(), from: state.fpu),
            var xcrs = kernelValue(kvm_xcrs(), from: state.xcrs),
            var debug = kernelValue(kvm_debugregs(), from: state.debugRegs),
            var events = kernelValue(kvm_vcpu_events(), from: state.events)
        else { throw .stateMismatch("a vCPU register block has the wrong size for this build") }
        var lapic: kvm_lapic_state?
        if !state.lapic.isEmpty {
            guard vm.hasInterruptController else {
                throw .stateMismatch("the vCPU had an in-kernel local APIC, and this VM has no in-kernel irqchip")
            }
            guard let value = kernelValue(kvm_lapic_state(), from: state.lapic) else {
                throw .stateMismatch("the local APIC state has the wrong size")
            }
            lapic = value
        } else if vm.hasInterruptController {
            throw .stateMismatch("the vCPU had no in-kernel local APIC, and this VM has the in-kernel irqchip")
        }
        let xsave = try fitXSAVE(state.xsave)

        try setCPUID(state.cpuid)
        try restoreTSCFrequency(state.tscKHz)
        var mp = kvm_mp_state(mp_state: state.mpState)
        try ioctlStruct(fd, CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", &mp)
        try ioctlStruct(fd, CKVM_SET_REGS, "KVM_SET_REGS", &regs)
        try ioctlStruct(fd, CKVM_SET_SREGS, "KVM_SET_SREGS", &sregs)
        try ioctlStruct(fd, CKVM_SET_FPU, "KVM_SET_FPU", &fpu)
        try writeXSAVE(xsave)
        try ioctlStruct(fd, CKVM_SET_XCRS, "KVM_SET_XCRS", &xcrs)
        try ioctlStruct(fd, CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", &debug)
        if var lapic {
            try ioctlStruct(fd, CKVM_SET_LAPIC, "KVM_SET_LAPIC", &lapic)
        }
        try setMSRs(state.msrsInRestoreOrder.map { ($0.index, $0.value) })
        try ioctlStruct(fd, CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &events)
    }

    // MARK: The parts

    /// Enters `KVM_RUN` with an immediate exit requested, which completes the instruction
    /// of the last I/O, MMIO or MSR exit without running the guest further, as the KVM API
    /// asks before reading a vCPU's state. Leaves the immediate-exit request as it found it.
    ///
    /// Returns nil when the vCPU is at an instruction boundary; or the next exit, when
    /// completing the last one needs user space again (a string I/O or an MMIO access that
    /// continues): the caller handles it like any exit and calls this again.
    package func completePendingExit() throws(KVMError) -> VMExit? {
        let requested = immediateExitRequested
        requestImmediateExit(true)
        defer { requestImmediateExit(requested) }
        switch try run() {
        case .interrupted: return nil
        case let exit: return exit
        }
    }

    /// What this host's KVM gives a vCPU that asks for every feature it supports: the
    /// `KVM_GET_SUPPORTED_CPUID` table set on this vCPU (which must be fresh: KVM refuses a
    /// changed table once a vCPU has run) and read back, each register ORed with the
    /// supported one. On most hosts that is the supported table itself; a nested KVM may add
    /// the host CPU's own features whatever the VMM asks (see PLATFORM.md), and a guest
    /// there was given those too, so they count as offered.
    package func offeredCPUID() throws(KVMError) -> [CPUIDEntry] {
        let supported = try vm.system.supportedCPUID()
        try setCPUID(supported)
        let given = try cpuidTable()
        var listed: [UInt64: CPUIDEntry] = [:]
        for entry in supported { listed[VCPUState.key(entry.function, entry.index)] = entry }
        var offered: [CPUIDEntry] = []
        offered.reserveCapacity(given.count + supported.count)
        for var entry in given {
            if let table = listed.removeValue(forKey: VCPUState.key(entry.function, entry.index)) {
                entry.eax |= table.eax
                entry.ebx |= table.ebx
                entry.ecx |= table.ecx
                entry.edx |= table.edx
            }
            offered.append(entry)
        }
        return offered + supported.filter { listed[VCPUState.key($0.function, $0.index)] != nil }
    }

    /// The TSC frequency in kHz (`KVM_GET_TSC_KHZ`), or 0 where KVM cannot tell it.
    package func tscKHz() throws(KVMError) -> UInt32 {
        guard vm.system.check(.getTSCKHz) > 0 else { return 0 }
        return UInt32(try checkedIoctl("KVM_GET_TSC_KHZ") { ckvm_ioctl_none(fd, CKVM_GET_TSC_KHZ) })
    }

    /// Makes this vCPU's TSC run at `savedKHz` (0: unknown, left alone): nothing to do when
    /// it already does, `KVM_SET_TSC_KHZ` where KVM can scale the TSC, a refusal otherwise.
    func restoreTSCFrequency(_ savedKHz: UInt32) throws(KVMError) {
        guard savedKHz != 0 else { return }
        let current = try tscKHz()
        guard current != savedKHz else { return }
        guard vm.system.check(.tscControl) > 0 else {
            throw .tscFrequencyMismatch(
                savedKHz: savedKHz, hostKHz: current, reason: "this host's KVM cannot scale the TSC (no KVM_CAP_TSC_CONTROL)")
        }
        if ckvm_ioctl_value(fd, CKVM_SET_TSC_KHZ, UInt(savedKHz)) < 0 {
            throw .tscFrequencyMismatch(
                savedKHz: savedKHz, hostKHz: current, reason: "KVM_SET_TSC_KHZ failed: \(errnoText(errno))")
        }
    }

    /// The CPUID table this vCPU was given (`KVM_GET_CPUID2`).
    package func cpuidTable() throws(KVMError) -> [CPUIDEntry] {
        // SAFETY: withCPUIDBuffer gives a header with room for nent entries, which is all the
        // kernel writes; readCPUID reads back at most the nent the kernel left there.
        unsafe try withCPUIDBuffer(capacity: Int(CKVM_MAX_CPUID_ENTRIES)) { (buffer) throws(KVMError) in
            _ = try checkedIoctl("KVM_GET_CPUID2") { unsafe ckvm_ioctl_pointer(fd, CKVM_GET_CPUID2, buffer) }
            return unsafe readCPUID(buffer)
        }
    }

    /// The size of this VM's XSAVE area: what `KVM_CAP_XSAVE2` reports, at least 4 KiB.
    var xsaveSize: Int { max(KernelLayout.xsave, Int(vm.check(.xsave2))) }

    /// The XSAVE area: `KVM_GET_XSAVE2` with the size `KVM_CAP_XSAVE2` gives, or the
    /// legacy 4 KiB `KVM_GET_XSAVE` where KVM lacks it.
    func readXSAVE() throws(KVMError) -> [UInt8] {
        let size = xsaveSize
        guard size <= VCPUState.maxXSAVESize else {
            throw .stateMismatch("KVM's XSAVE area is \(size) bytes, more than the \(VCPUState.maxXSAVESize) SwiftVisor keeps")
        }
        let useXSAVE2 = vm.check(.xsave2) > 0
        var area = [UInt8](repeating: 0, count: size)
        _ = try checkedIoctl(useXSAVE2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE") {
            // SAFETY: the array is `size` bytes, pinned for the call: KVM_GET_XSAVE writes
            // 4 KiB (size is at least that) and KVM_GET_XSAVE2 the KVM_CAP_XSAVE2 size.
            unsafe area.withUnsafeMutableBytes {
                unsafe ckvm_ioctl_pointer(fd, useXSAVE2 ? CKVM_GET_XSAVE2 : CKVM_GET_XSAVE, $0.baseAddress)
            }
        }
        return area
    }

    /// The saved XSAVE area at the size this VM's KVM reads: padded with zeros (components
    /// past the end are absent from its header), or cut when the bytes past the host's
    /// size are all zero; refused when they hold state this host cannot take.
    func fitXSAVE(_ saved: [UInt8]) throws(KVMError) -> [UInt8] {
        let size = xsaveSize
        if saved.count <= size { return saved + [UInt8](repeating: 0, count: size - saved.count) }
        guard saved[size...].allSatisfy({ $0 == 0 }) else {
            throw .stateMismatch(
                "the saved XSAVE area is \(saved.count) bytes and holds state past the \(size) bytes this host's KVM takes")
        }
        return Array(saved[..<size])
    }

    /// Writes an XSAVE area of `xsaveSize` bytes (`KVM_SET_XSAVE` reads that many).
    func writeXSAVE(_ area: [UInt8]) throws(KVMError) {
        var area = area
        guard area.count == xsaveSize else { throw .stateMismatch("the XSAVE area is \(area.count) bytes, not \(xsaveSize)") }
        _ = try checkedIoctl("KVM_SET_XSAVE") {
            // SAFETY: the array is xsaveSize bytes, the size KVM reads, pinned for the call.
            unsafe area.withUnsafeMutableBytes { unsafe ckvm_ioctl_pointer(fd, CKVM_SET_XSAVE, $0.baseAddress) }
        }
    }

    /// Reads the MSRs `indices` (`KVM_GET_MSRS`) and keeps those KVM can read for this vCPU.
    ///
    /// KVM reads them in order and stops at the first it refuses, returning how many it
    /// read: that one is dropped and the reading goes on after it.
    package func readMSRs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        var result: [MSREntry] = []
        result.reserveCapacity(indices.count)
        var next = 0
        while next < indices.count {
            let batch = Array(indices[next...])
            let entries = try getMSRs(batch)
            result += entries
            next += entries.count + 1  // skip the one KVM refused (past the end when none)
        }
        return result
    }

    /// One `KVM_GET_MSRS` call: the values of the leading MSRs of `indices` KVM could read.
    private func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        let headerSize = MemoryLayout<kvm_msrs>.size
        let entrySize = MemoryLayout<kvm_msr_entry>.stride
        let bytes = headerSize + indices.count * entrySize
        // SAFETY: the buffer is allocated, zeroed and freed here, and used only in this call.
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { unsafe raw.deallocate() }
        unsafe raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        // SAFETY: the buffer holds the kvm_msrs header and indices.count entries after it;
        // nmsrs tells the kernel exactly that count.
        let header = unsafe raw.bindMemory(to: kvm_msrs.self, capacity: 1)
        unsafe header.pointee.nmsrs = UInt32(indices.count)
        let slots = unsafe raw.advanced(by: headerSize).bindMemory(to: kvm_msr_entry.self, capacity: indices.count)
        indices.enumerated().forEach { i, index in unsafe slots[i].index = index }
        // SAFETY: nmsrs matches the entries in the buffer, so the kernel writes only the buffer.
        let read = try checkedIoctl("KVM_GET_MSRS") { unsafe ckvm_ioctl_pointer(fd, CKVM_GET_MSRS, header) }
        let count = min(Int(read), indices.count)
        return (0..<count).map { i in unsafe MSREntry(index: slots[i].index, value: slots[i].data) }
    }
}
