import VisorKVM
import VisorLoader

/// The register values a vCPU starts with for an entry description: a pure function, so
/// every mode's segments, control registers and EFER are unit-tested without KVM.
struct EntryRegisters: Equatable {
    var special: SpecialRegisters
    var general: Registers

    /// The registers for `entry`, over `base`: the vCPU's special registers as KVM created
    /// them (the fields an entry does not name, such as the APIC base, keep their values).
    init(_ entry: EntryState, over base: SpecialRegisters) {
        var sregs = base
        switch entry.mode {
        case .real(let segment):
            let code = Segment(base: UInt64(segment) << 4, limit: 0xFFFF, selector: segment, type: 0xB)
            let data = Segment(base: UInt64(segment) << 4, limit: 0xFFFF, selector: segment, type: 0x3)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        case .long64(let root, let gdtBase, let gdtLimit, let codeSelector, let dataSelector):
            let code = Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, l: true, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, db: true, g: true)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            sregs.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            sregs.idt = DescriptorTable(base: 0, limit: 0)
            sregs.cr0 = 0x8001_0033  // PG | WP | NE | ET | MP | PE
            sregs.cr3 = root
            sregs.cr4 = 0x620  // OSXMMEXCPT | OSFXSR | PAE
            sregs.efer = 0x500  // LMA | LME
        case .protected32(let gdtBase, let gdtLimit, let codeSelector, let dataSelector):
            let code = Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, db: true, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, db: true, g: true)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            // A busy 32-bit TSS at 0 with limit 0x67, as the PVH ABI asks.
            sregs.tr = Segment(base: 0, limit: 0x67, selector: 0, type: 0xB, s: false)
            sregs.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            sregs.idt = DescriptorTable(base: 0, limit: 0)
            sregs.cr0 = 0x11  // ET | PE: paging off
            sregs.cr3 = 0
            sregs.cr4 = 0
            sregs.efer = 0
        }
        special = sregs
        general = Registers()
        general.rip = entry.rip
        general.rsp = entry.rsp
        general.rdi = entry.rdi
        general.rsi = entry.rsi
        general.rbx = entry.rbx
        general.rax = entry.rax
        general.rflags = entry.rflags
    }

    /// Sets these registers on `vcpu`.
    func apply(to vcpu: VCPUHandle) throws(KVMError) {
        try vcpu.setSpecialRegisters(special)
        try vcpu.setRegisters(general)
    }

    /// Sets the registers for `entry` on `vcpu`, over its current special registers.
    static func apply(_ entry: EntryState, to vcpu: VCPUHandle) throws(KVMError) {
        try EntryRegisters(entry, over: vcpu.specialRegisters()).apply(to: vcpu)
    }
}
