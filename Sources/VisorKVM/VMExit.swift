/// KVM's exit reasons (`KVM_EXIT_*`), every one the kernel headers define for x86 and the
/// ones shared with other architectures, so a trace or diagnostic can always name an exit.
public enum ExitReason: UInt32, Sendable, CaseIterable {
    case unknown = 0, exception = 1, io = 2, hypercall = 3, debug = 4, hlt = 5, mmio = 6
    case irqWindowOpen = 7, shutdown = 8, failEntry = 9, intr = 10, setTPR = 11
    case tprAccess = 12, s390Sieic = 13, s390Reset = 14, dcr = 15, nmi = 16
    case internalError = 17, osi = 18, paprHcall = 19, s390Ucontrol = 20, watchdog = 21
    case s390Tsch = 22, epr = 23, systemEvent = 24, s390Stsi = 25, ioapicEOI = 26
    case hyperv = 27, armNISV = 28, x86Rdmsr = 29, x86Wrmsr = 30, dirtyRingFull = 31
    case apResetHold = 32, x86BusLock = 33, xen = 34, riscvSBI = 35, riscvCSR = 36
    case notify = 37, loongarchIOCSR = 38, memoryFault = 39

    /// The kernel's name for the reason, e.g. `KVM_EXIT_IO`.
    public var kernelName: String {
        switch self {
        case .unknown: "KVM_EXIT_UNKNOWN"
        case .exception: "KVM_EXIT_EXCEPTION"
        case .io: "KVM_EXIT_IO"
        case .hypercall: "KVM_EXIT_HYPERCALL"
        case .debug: "KVM_EXIT_DEBUG"
        case .hlt: "KVM_EXIT_HLT"
        case .mmio: "KVM_EXIT_MMIO"
        case .irqWindowOpen: "KVM_EXIT_IRQ_WINDOW_OPEN"
        case .shutdown: "KVM_EXIT_SHUTDOWN"
        case .failEntry: "KVM_EXIT_FAIL_ENTRY"
        case .intr: "KVM_EXIT_INTR"
        case .setTPR: "KVM_EXIT_SET_TPR"
        case .tprAccess: "KVM_EXIT_TPR_ACCESS"
        case .s390Sieic: "KVM_EXIT_S390_SIEIC"
        case .s390Reset: "KVM_EXIT_S390_RESET"
        case .dcr: "KVM_EXIT_DCR"
        case .nmi: "KVM_EXIT_NMI"
        case .internalError: "KVM_EXIT_INTERNAL_ERROR"
        case .osi: "KVM_EXIT_OSI"
        case .paprHcall: "KVM_EXIT_PAPR_HCALL"
        case .s390Ucontrol: "KVM_EXIT_S390_UCONTROL"
        case .watchdog: "KVM_EXIT_WATCHDOG"
        case .s390Tsch: "KVM_EXIT_S390_TSCH"
        case .epr: "KVM_EXIT_EPR"
        case .systemEvent: "KVM_EXIT_SYSTEM_EVENT"
        case .s390Stsi: "KVM_EXIT_S390_STSI"
        case .ioapicEOI: "KVM_EXIT_IOAPIC_EOI"
        case .hyperv: "KVM_EXIT_HYPERV"
        case .armNISV: "KVM_EXIT_ARM_NISV"
        case .x86Rdmsr: "KVM_EXIT_X86_RDMSR"
        case .x86Wrmsr: "KVM_EXIT_X86_WRMSR"
        case .dirtyRingFull: "KVM_EXIT_DIRTY_RING_FULL"
        case .apResetHold: "KVM_EXIT_AP_RESET_HOLD"
        case .x86BusLock: "KVM_EXIT_X86_BUS_LOCK"
        case .xen: "KVM_EXIT_XEN"
        case .riscvSBI: "KVM_EXIT_RISCV_SBI"
        case .riscvCSR: "KVM_EXIT_RISCV_CSR"
        case .notify: "KVM_EXIT_NOTIFY"
        case .loongarchIOCSR: "KVM_EXIT_LOONGARCH_IOCSR"
        case .memoryFault: "KVM_EXIT_MEMORY_FAULT"
        }
    }
}

/// A port I/O exit: `in`/`out`, or `ins`/`outs` with a repeat count.
public struct PortAccess: Sendable, Equatable {
    public var isWrite: Bool
    public var port: UInt16
    /// Bytes per element: 1, 2 or 4.
    public var width: UInt8
    /// Elements transferred by this exit (1 for `in`/`out`; up to a page's worth for string I/O).
    public var count: UInt32

    public init(isWrite: Bool, port: UInt16, width: UInt8, count: UInt32 = 1) {
        self.isWrite = isWrite
        self.port = port
        self.width = width
        self.count = count
    }
}

/// An MMIO exit: a guest access to a guest-physical address with no memory behind it.
public struct MMIOAccess: Sendable, Equatable {
    public var isWrite: Bool
    public var address: UInt64
    /// Bytes accessed: 1, 2, 4 or 8.
    public var width: UInt8
    /// For a write, the value written (low `width` bytes); 0 for a read.
    public var value: UInt64

    public init(isWrite: Bool, address: UInt64, width: UInt8, value: UInt64 = 0) {
        self.isWrite = isWrite
        self.address = address
        self.width = width
        self.value = value
    }
}

/// One VM exit, decoded from the vCPU's run page into a value that owns its data.
/// `VCPUHandle.run()` returns it; nothing outside this module reads the run page.
///
/// Port I/O data is the one exception: a string I/O exit can carry a page of elements,
/// which stay in the run page and are read and written through `ExitDataChannel`, so that
/// the exit path never allocates.
public enum VMExit: Sendable, Equatable {
    case io(PortAccess)
    case mmio(MMIOAccess)
    /// The guest executed HLT; `interruptsEnabled` is RFLAGS.IF at that point.
    case halt(interruptsEnabled: Bool)
    /// Triple fault (or another reason the vCPU shut down).
    case shutdown
    /// KVM could not continue, e.g. it failed to emulate an instruction.
    case internalError(suberror: UInt32, data: [UInt64])
    /// VM entry failed; the reason is the hardware's.
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    case systemEvent(type: UInt32)
    case exception(vector: UInt32, errorCode: UInt32)
    case debug
    /// `KVM_RUN` came back without an exit to handle: a signal or an immediate-exit request
    /// interrupted it (`EINTR`, `EAGAIN` or `KVM_EXIT_INTR`).
    case interrupted
    /// An I/O exit whose data area does not fit the run page: never produced by a correct
    /// kernel, and never trusted.
    case malformedIO(port: UInt16, width: UInt8, count: UInt32)
    /// RDMSR or WRMSR that KVM routed to user space (`KVM_EXIT_X86_RDMSR`/`WRMSR`);
    /// `value` is nil for a read.
    case msr(index: UInt32, value: UInt64?)
    /// Any other exit reason, by number; `ExitReason(rawValue:)` names the known ones.
    case other(reason: UInt32, hardwareReason: UInt64)

    /// The KVM exit reason this exit came from.
    public var reason: ExitReason? {
        switch self {
        case .io, .malformedIO: .io
        case .mmio: .mmio
        case .halt: .hlt
        case .shutdown: .shutdown
        case .internalError: .internalError
        case .failEntry: .failEntry
        case .systemEvent: .systemEvent
        case .exception: .exception
        case .debug: .debug
        case .interrupted: .intr
        case .msr(_, let value): value == nil ? .x86Rdmsr : .x86Wrmsr
        case .other(let reason, _): ExitReason(rawValue: reason)
        }
    }
}

/// The data of the current exit that lives in the vCPU's run page: I/O elements and the
/// MMIO read result. The real vCPU implements it over the run page; tests use a fake.
public protocol ExitDataChannel {
    /// Element `index` (< the exit's count) of an OUT/OUTS exit, zero-extended.
    func ioElement(_ index: Int) -> UInt32
    /// Sets element `index` of an IN/INS exit; only the low `width` bytes are used.
    func setIOElement(_ index: Int, _ value: UInt32)
    /// Sets the value an MMIO read returns; only the low `width` bytes are used.
    func setMMIOData(_ value: UInt64)
    /// Completes an MSR exit: the value a read returns, or #GP.
    func completeMSR(value: UInt64, fault: Bool)
}
