internal import CKVM
import Glibc

/// A KVM vCPU file descriptor and its shared `kvm_run` page. Owns both.
///
/// Thread use: one thread runs the vCPU and reads the run page. `requestImmediateExit`
/// may be called from any thread: it is a single byte store that the kernel reads on
/// entry to `KVM_RUN`. That is why the type is `@unchecked Sendable`.
///
/// `@safe`: the run page mapping never leaves this type; `RunPage` reads and writes it,
/// checking every offset the kernel gives against its size.
@safe package final class VCPUHandle: @unchecked Sendable {
    let fd: Int32
    public let id: UInt32
    let vm: VMHandle
    /// The start of the shared run page mapping, `mapSize` bytes mapped from `fd`. Valid
    /// until `deinit` unmaps it.
    private let mapping: UnsafeMutableRawPointer
    let mapSize: Int
    /// The run page over `mapping`: decodes exits and carries their data.
    let runPage: RunPage

    init(fd: Int32, id: UInt32, mapSize: Int, vm: VMHandle) throws(KVMError) {
        guard mapSize >= RunPage.structSize else {
            throw .malformedRunPage("map size \(mapSize) is smaller than struct kvm_run")
        }
        // SAFETY: mmap creates a new mapping and touches no existing memory; the result is
        // checked against MAP_FAILED before it is used.
        let mapping = unsafe mmap(nil, mapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapping = unsafe mapping, unsafe mapping != MAP_FAILED else { throw .mapRunPage(errno: errno) }
        do {
            // SAFETY: the kernel maps a struct kvm_run at offset 0 of the vCPU fd, page
            // aligned, and the mapping is mapSize bytes, read and write; it stays mapped
            // until deinit, and runPage is never used after that.
            self.runPage = try unsafe RunPage(unsafeBase: mapping, size: mapSize)
        } catch {
            // SAFETY: the mapping made above, mapSize long, which nothing else uses.
            unsafe munmap(mapping, mapSize)
            throw error
        }
        unsafe self.mapping = unsafe mapping
        self.fd = fd
        self.id = id
        self.mapSize = mapSize
        self.vm = vm
    }

    deinit {
        // SAFETY: `mapping` is the mapping made in init, `mapSize` long; nothing uses it
        // (or runPage) after deinit.
        unsafe munmap(mapping, mapSize)
        close(fd)
    }

    // MARK: Running

    /// Enters the guest until the next exit (`KVM_RUN`) and returns that exit, decoded from
    /// the run page. `.interrupted` means a signal or an immediate-exit request ended the
    /// call before or during guest execution; no exit is pending then.
    ///
    /// Cheap for I/O and MMIO exits: one system call, a few loads, no allocation. The data of
    /// a string I/O exit stays in the run page, read and written through `ExitDataChannel`
    /// until the next `run()`.
    @inline(__always)
    public func run() throws(KVMError) -> VMExit {
        if ckvm_ioctl_none(fd, CKVM_RUN) == 0 { return runPage.decodeExit() }
        let code = errno
        if code == EINTR || code == EAGAIN { return .interrupted }
        throw KVMError.ioctl(name: "KVM_RUN", errno: code)
    }

    /// Whether `requestImmediateExit(true)` is in force.
    @inline(__always) package var immediateExitRequested: Bool { runPage.immediateExitRequested }

    /// Makes the next (or current, when combined with a signal) `KVM_RUN` return at once.
    public func requestImmediateExit(_ flag: Bool) { runPage.requestImmediateExit(flag) }

    /// Lets `signal` interrupt `KVM_RUN` on this vCPU whatever the running thread's mask
    /// (`KVM_SET_SIGNAL_MASK`): `KVM_RUN` runs with the calling thread's current mask
    /// minus `signal`.
    package func allowSignalDuringRun(_ signal: Int32) throws(KVMError) {
        let code = ckvm_set_vcpu_signal_mask_allowing(fd, signal)
        if code != 0 { throw KVMError.ioctl(name: "KVM_SET_SIGNAL_MASK", errno: code) }
    }

    // MARK: Registers and state

    public func registers() throws(KVMError) -> Registers {
        var k = kvm_regs()
        try ioctlStruct(fd, CKVM_GET_REGS, "KVM_GET_REGS", &k)
        return Registers(k)
    }

    public func setRegisters(_ registers: Registers) throws(KVMError) {
        var k = registers.kernel
        try ioctlStruct(fd, CKVM_SET_REGS, "KVM_SET_REGS", &k)
    }

    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var k = kvm_sregs()
        try ioctlStruct(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &k)
        return SpecialRegisters(k)
    }

    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(KVMError) {
        var k = kvm_sregs()
        try ioctlStruct(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &k)
        registers.apply(to: &k)
        try ioctlStruct(fd, CKVM_SET_SREGS, "KVM_SET_SREGS", &k)
    }

    public func fpu() throws(KVMError) -> FPUState {
        var k = kvm_fpu()
        try ioctlStruct(fd, CKVM_GET_FPU, "KVM_GET_FPU", &k)
        return FPUState(k)
    }

    public func setFPU(_ state: FPUState) throws(KVMError) {
        var k = kvm_fpu()
        state.apply(to: &k)
        try ioctlStruct(fd, CKVM_SET_FPU, "KVM_SET_FPU", &k)
    }

    public func events() throws(KVMError) -> VCPUEvents {
        var k = kvm_vcpu_events()
        try ioctlStruct(fd, CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &k)
        return VCPUEvents(k)
    }

    public func setEvents(_ events: VCPUEvents) throws(KVMError) {
        var k = kvm_vcpu_events()
        try ioctlStruct(fd, CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &k)
        events.apply(to: &k)
        try ioctlStruct(fd, CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &k)
    }

    /// The vCPU's multiprocessing state (`KVM_GET_MP_STATE`), e.g. `KVM_MP_STATE_RUNNABLE` (0)
    /// or `KVM_MP_STATE_INIT_RECEIVED` (2, waiting for SIPI).
    public func mpState() throws(KVMError) -> UInt32 {
        var state = kvm_mp_state()
        try ioctlStruct(fd, CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", &state)
        return state.mp_state
    }

    /// Sets the multiprocessing state (`KVM_SET_MP_STATE`). Needs the in-kernel irqchip.
    public func setMPState(_ value: UInt32) throws(KVMError) {
        var state = kvm_mp_state(mp_state: value)
        try ioctlStruct(fd, CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", &state)
    }

    public static let mpStateRunnable: UInt32 = 0
    public static let mpStateWaitForSIPI: UInt32 = 2

    /// Queues a non-maskable interrupt for the vCPU (`KVM_NMI`).
    public func injectNMI() throws(KVMError) {
        _ = try checkedIoctl("KVM_NMI") { ckvm_ioctl_none(fd, CKVM_NMI) }
    }

    /// Queues external interrupt `vector` for this vCPU, delivered once RFLAGS.IF is set:
    /// through its local APIC (an MSI to its APIC ID) with the in-kernel interrupt
    /// controller, or with `KVM_INTERRUPT` without one.
    public func injectInterrupt(vector: UInt8) throws(KVMError) {
        if vm.hasInterruptController {
            try vm.signalMSI(address: 0xFEE0_0000 | UInt64(id & 0xFF) << 12, data: UInt32(vector))
        } else {
            var request = kvm_interrupt(irq: UInt32(vector))
            try ioctlStruct(fd, CKVM_INTERRUPT, "KVM_INTERRUPT", &request)
        }
    }

    /// Extended control register XCR0 (`KVM_GET_XCRS`).
    public func xcr0() throws(KVMError) -> UInt64 {
        var xcrs = kvm_xcrs()
        try ioctlStruct(fd, CKVM_GET_XCRS, "KVM_GET_XCRS", &xcrs)
        let count = min(Int(xcrs.nr_xcrs), 16)
        // SAFETY: xcrs.xcrs is a fixed array of 16 kvm_xcr, and count is capped at 16; the
        // buffer does not escape the closure.
        return unsafe withUnsafeBytes(of: &xcrs.xcrs) { raw in
            let list = unsafe raw.bindMemory(to: kvm_xcr.self)
            return (0..<count).first { unsafe list[$0].xcr == 0 }.map { unsafe list[$0].value } ?? 1
        }
    }

    /// Debug registers DR0-DR3, DR6 and DR7.
    public func debugRegisters() throws(KVMError) -> (db: [UInt64], dr6: UInt64, dr7: UInt64) {
        var k = kvm_debugregs()
        try ioctlStruct(fd, CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &k)
        return ([k.db.0, k.db.1, k.db.2, k.db.3], k.dr6, k.dr7)
    }

    /// Sets what CPUID reports to this vCPU (`KVM_SET_CPUID2`).
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        unsafe try withCPUIDBuffer(capacity: entries.count) { (header) throws(KVMError) in
            // SAFETY: withCPUIDBuffer allocated room for entries.count entries after the header.
            let slots = unsafe UnsafeMutableRawPointer(header).advanced(by: MemoryLayout<kvm_cpuid2>.size)
                .assumingMemoryBound(to: kvm_cpuid_entry2.self)
            for (i, e) in entries.enumerated() {
                var k = kvm_cpuid_entry2()
                k.function = e.function; k.index = e.index; k.flags = e.flags
                k.eax = e.eax; k.ebx = e.ebx; k.ecx = e.ecx; k.edx = e.edx
                unsafe slots[i] = k
            }
            // SAFETY: header.nent equals the entries that follow it, so the kernel reads only
            // the buffer.
            _ = try checkedIoctl("KVM_SET_CPUID2") { unsafe ckvm_ioctl_pointer(fd, CKVM_SET_CPUID2, header) }
        }
    }

    /// Writes model-specific registers (`KVM_SET_MSRS`). Throws when the kernel accepts
    /// fewer than all of them, naming the first it refused.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        let bytes = MemoryLayout<kvm_msrs>.size + msrs.count * MemoryLayout<kvm_msr_entry>.stride
        // SAFETY: the buffer is allocated, zeroed and freed here, and used only in this call.
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { unsafe raw.deallocate() }
        unsafe raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        // SAFETY: the buffer holds the kvm_msrs header and msrs.count entries after it;
        // nmsrs tells the kernel exactly that count.
        let header = unsafe raw.bindMemory(to: kvm_msrs.self, capacity: 1)
        unsafe header.pointee.nmsrs = UInt32(msrs.count)
        let slots = unsafe raw.advanced(by: MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, msr) in msrs.enumerated() {
            unsafe slots[i].index = msr.index
            unsafe slots[i].data = msr.value
        }
        // SAFETY: nmsrs matches the entries in the buffer, so the kernel reads only the buffer.
        let written = try checkedIoctl("KVM_SET_MSRS") { unsafe ckvm_ioctl_pointer(fd, CKVM_SET_MSRS, header) }
        if Int(written) < msrs.count {
            let refused = msrs[Int(written)].index
            throw KVMError.ioctl(name: "KVM_SET_MSRS (MSR 0x\(String(refused, radix: 16)) refused)", errno: EINVAL)
        }
    }
}

// MARK: The current exit's data

/// The run page's data channel: `RunPage` range-checks every element against the page.
extension VCPUHandle: ExitDataChannel {
    /// Element `index` of the current I/O exit's data, zero-extended.
    /// Precondition (the dispatcher keeps it): the exit was decoded as `.io` and `index` is
    /// below its count; an element outside the page reads all ones.
    @inline(__always) public func ioElement(_ index: Int) -> UInt32 { runPage.ioElement(index) }

    /// Stores element `index` of the current IN exit's data; KVM copies it into the guest.
    /// Precondition as for `ioElement`; an element outside the page is not written.
    @inline(__always) public func setIOElement(_ index: Int, _ value: UInt32) { runPage.setIOElement(index, value) }

    /// Sets the value an MMIO read returns to the guest (KVM uses the low `width` bytes).
    @inline(__always) package func setMMIOData(_ value: UInt64) { runPage.setMMIOData(value) }

    /// Completes an MSR exit: the value a read returns, and whether the guest gets #GP.
    @inline(__always) package func completeMSR(value: UInt64, fault: Bool) {
        runPage.completeMSR(value: value, fault: fault)
    }
}
