internal import CKVM

/// The general-purpose registers, RIP and RFLAGS of a vCPU (`struct kvm_regs`).
public struct Registers: Sendable, Equatable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and always set.
    public var rflags: UInt64 = 0x2

    public init() {}
}

/// A segment register with its hidden descriptor cache (`struct kvm_segment`).
public struct Segment: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0
    public var selector: UInt16 = 0
    public var type: UInt8 = 0
    public var present = false
    public var dpl: UInt8 = 0
    /// Default operation size (D/B): 32-bit when set.
    public var db = false
    /// Code or data (S) rather than system segment.
    public var s = false
    /// 64-bit code segment (L).
    public var l = false
    /// Granularity: limit in 4 KiB units.
    public var g = false
    public var avl = false
    public var unusable = false

    public init() {}

    public init(
        base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: Bool = true,
        dpl: UInt8 = 0, db: Bool = false, s: Bool = true, l: Bool = false, g: Bool = false
    ) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
    }
}

/// GDTR or IDTR.
public struct DescriptorTable: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0
    public init(base: UInt64 = 0, limit: UInt16 = 0) {
        self.base = base
        self.limit = limit
    }
}

/// Segment, descriptor-table and control registers, EFER and the APIC base (`struct kvm_sregs`).
public struct SpecialRegisters: Sendable, Equatable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment()
    public var gs = Segment(), ss = Segment(), tr = Segment(), ldt = Segment()
    public var gdt = DescriptorTable(), idt = DescriptorTable()
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0
    /// The pending external interrupt bitmap (256 bits as four words).
    public var interruptBitmap: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init() {}

    public static func == (a: SpecialRegisters, b: SpecialRegisters) -> Bool {
        a.cs == b.cs && a.ds == b.ds && a.es == b.es && a.fs == b.fs && a.gs == b.gs
            && a.ss == b.ss && a.tr == b.tr && a.ldt == b.ldt && a.gdt == b.gdt && a.idt == b.idt
            && a.cr0 == b.cr0 && a.cr2 == b.cr2 && a.cr3 == b.cr3 && a.cr4 == b.cr4
            && a.cr8 == b.cr8 && a.efer == b.efer && a.apicBase == b.apicBase
            && a.interruptBitmap == b.interruptBitmap
    }
}

/// The x87 and SSE state of a vCPU (`struct kvm_fpu`).
public struct FPUState: Sendable, Equatable {
    /// The eight x87 registers, 16 bytes each (80-bit values, padded).
    public var fpr: [UInt8] = Array(repeating: 0, count: 128)
    public var fcw: UInt16 = 0x37F
    public var fsw: UInt16 = 0
    public var ftwx: UInt8 = 0
    public var lastOpcode: UInt16 = 0
    public var lastIP: UInt64 = 0
    public var lastDP: UInt64 = 0
    /// XMM0-XMM15, 16 bytes each.
    public var xmm: [UInt8] = Array(repeating: 0, count: 256)
    public var mxcsr: UInt32 = 0x1F80

    public init() {}
}

/// Pending and injected events of a vCPU (`struct kvm_vcpu_events`).
public struct VCPUEvents: Sendable, Equatable {
    public struct Exception: Sendable, Equatable {
        public var injected = false
        public var vector: UInt8 = 0
        public var hasErrorCode = false
        public var pending = false
        public var errorCode: UInt32 = 0
        public init() {}
    }
    public struct Interrupt: Sendable, Equatable {
        public var injected = false
        public var vector: UInt8 = 0
        public var soft = false
        public var shadow: UInt8 = 0
        public init() {}
    }
    public struct NMI: Sendable, Equatable {
        public var injected = false
        public var pending = false
        public var masked = false
        public init() {}
    }
    public var exception = Exception()
    public var interrupt = Interrupt()
    public var nmi = NMI()
    public var sipiVector: UInt32 = 0
    /// `KVM_VCPUEVENT_VALID_*` flags: which optional fields the kernel should apply.
    public var flags: UInt32 = 0

    public init() {}
}

// MARK: Conversions to and from the kernel's structures

extension Registers {
    init(_ r: kvm_regs) {
        rax = r.rax; rbx = r.rbx; rcx = r.rcx; rdx = r.rdx
        rsi = r.rsi; rdi = r.rdi; rsp = r.rsp; rbp = r.rbp
        r8 = r.r8; r9 = r.r9; r10 = r.r10; r11 = r.r11
        r12 = r.r12; r13 = r.r13; r14 = r.r14; r15 = r.r15
        rip = r.rip; rflags = r.rflags
    }

    var kernel: kvm_regs {
        var r = kvm_regs()
        r.rax = rax; r.rbx = rbx; r.rcx = rcx; r.rdx = rdx
        r.rsi = rsi; r.rdi = rdi; r.rsp = rsp; r.rbp = rbp
        r.r8 = r8; r.r9 = r9; r.r10 = r10; r.r11 = r11
        r.r12 = r12; r.r13 = r13; r.r14 = r14; r.r15 = r15
        r.rip = rip; r.rflags = rflags
        return r
    }
}

extension Segment {
    init(_ s: kvm_segment) {
        base = s.base; limit = s.limit; selector = s.selector; type = s.type
        present = s.present != 0; dpl = s.dpl; db = s.db != 0; self.s = s.s != 0
        l = s.l != 0; g = s.g != 0; avl = s.avl != 0; unusable = s.unusable != 0
    }

    var kernel: kvm_segment {
        var k = kvm_segment()
        k.base = base; k.limit = limit; k.selector = selector; k.type = type
        k.present = present ? 1 : 0; k.dpl = dpl; k.db = db ? 1 : 0; k.s = s ? 1 : 0
        k.l = l ? 1 : 0; k.g = g ? 1 : 0; k.avl = avl ? 1 : 0; k.unusable = unusable ? 1 : 0
        return k
    }
}

extension SpecialRegisters {
    init(_ k: kvm_sregs) {
        cs = Segment(k.cs); ds = Segment(k.ds); es = Segment(k.es); fs = Segment(k.fs)
        gs = Segment(k.gs); ss = Segment(k.ss); tr = Segment(k.tr); ldt = Segment(k.ldt)
        gdt = DescriptorTable(base: k.gdt.base, limit: k.gdt.limit)
        idt = DescriptorTable(base: k.idt.base, limit: k.idt.limit)
        cr0 = k.cr0; cr2 = k.cr2; cr3 = k.cr3; cr4 = k.cr4; cr8 = k.cr8
        efer = k.efer; apicBase = k.apic_base
        interruptBitmap = k.interrupt_bitmap
    }

    /// Writes these registers over `k`, keeping fields Swift does not model.
    func apply(to k: inout kvm_sregs) {
        k.cs = cs.kernel; k.ds = ds.kernel; k.es = es.kernel; k.fs = fs.kernel
        k.gs = gs.kernel; k.ss = ss.kernel; k.tr = tr.kernel; k.ldt = ldt.kernel
        k.gdt.base = gdt.base; k.gdt.limit = gdt.limit
        k.idt.base = idt.base; k.idt.limit = idt.limit
        k.cr0 = cr0; k.cr2 = cr2; k.cr3 = cr3; k.cr4 = cr4; k.cr8 = cr8
        k.efer = efer; k.apic_base = apicBase
        k.interrupt_bitmap = interruptBitmap
    }
}

extension FPUState {
    init(_ k: kvm_fpu) {
        var copy = k
        // SAFETY: the raw views cover exactly the fixed-size C arrays and are copied out at once.
        fpr = unsafe withUnsafeBytes(of: &copy.fpr) { unsafe Array($0) }
        xmm = unsafe withUnsafeBytes(of: &copy.xmm) { unsafe Array($0) }
        fcw = k.fcw; fsw = k.fsw; ftwx = k.ftwx; lastOpcode = k.last_opcode
        lastIP = k.last_ip; lastDP = k.last_dp; mxcsr = k.mxcsr
    }

    func apply(to k: inout kvm_fpu) {
        // Copies at most the destination's size from arrays of the documented sizes.
        // SAFETY: each copy takes at most the destination array's size (prefix(dst.count)) from the
        // source, and neither view outlives its closure.
        unsafe withUnsafeMutableBytes(of: &k.fpr) { dst in
            unsafe fpr.withUnsafeBytes { src in
                unsafe dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(dst.count)))
            }
        }
        unsafe withUnsafeMutableBytes(of: &k.xmm) { dst in
            unsafe xmm.withUnsafeBytes { src in
                unsafe dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(dst.count)))
            }
        }
        k.fcw = fcw; k.fsw = fsw; k.ftwx = ftwx; k.last_opcode = lastOpcode
        k.last_ip = lastIP; k.last_dp = lastDP; k.mxcsr = mxcsr
    }
}

extension VCPUEvents {
    init(_ k: kvm_vcpu_events) {
        exception.injected = k.exception.injected != 0
        exception.vector = k.exception.nr
        exception.hasErrorCode = k.exception.has_error_code != 0
        exception.pending = k.exception.pending != 0
        exception.errorCode = k.exception.error_code
        interrupt.injected = k.interrupt.injected != 0
        interrupt.vector = k.interrupt.nr
        interrupt.soft = k.interrupt.soft != 0
        interrupt.shadow = k.interrupt.shadow
        nmi.injected = k.nmi.injected != 0
        nmi.pending = k.nmi.pending != 0
        nmi.masked = k.nmi.masked != 0
        sipiVector = k.sipi_vector
        flags = k.flags
    }

    func apply(to k: inout kvm_vcpu_events) {
        k.exception.injected = exception.injected ? 1 : 0
        k.exception.nr = exception.vector
        k.exception.has_error_code = exception.hasErrorCode ? 1 : 0
        k.exception.pending = exception.pending ? 1 : 0
        k.exception.error_code = exception.errorCode
        k.interrupt.injected = interrupt.injected ? 1 : 0
        k.interrupt.nr = interrupt.vector
        k.interrupt.soft = interrupt.soft ? 1 : 0
        k.interrupt.shadow = interrupt.shadow
        k.nmi.injected = nmi.injected ? 1 : 0
        k.nmi.pending = nmi.pending ? 1 : 0
        k.nmi.masked = nmi.masked ? 1 : 0
        k.sipi_vector = sipiVector
        k.flags = flags
    }
}
