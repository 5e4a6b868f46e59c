internal import CKVM
public import VisorSnapshot

/// One model-specific register and its value.
package struct MSREntry: Sendable, Equatable, SnapshotCodable {
    package var index: UInt32
    package var value: UInt64

    package init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }

    package func encode(to writer: inout SnapshotWriter) {
        writer.write(index)
        writer.write(value)
    }

    package init(from reader: inout SnapshotReader) throws(SnapshotError) {
        index = try reader.readUInt32("an MSR index")
        value = try reader.readUInt64("an MSR value")
    }
}

extension CPUIDEntry: SnapshotCodable {
    public func encode(to writer: inout SnapshotWriter) {
        for word in [function, index, flags, eax, ebx, ecx, edx] { writer.write(word) }
    }

    public init(from reader: inout SnapshotReader) throws(SnapshotError) {
        let function = try reader.readUInt32("a CPUID leaf")
        let index = try reader.readUInt32("a CPUID subleaf")
        let flags = try reader.readUInt32("CPUID flags")
        let eax = try reader.readUInt32("CPUID EAX"), ebx = try reader.readUInt32("CPUID EBX")
        let ecx = try reader.readUInt32("CPUID ECX"), edx = try reader.readUInt32("CPUID EDX")
        self.init(function: function, index: index, flags: flags, eax: eax, ebx: ebx, ecx: ecx, edx: edx)
    }
}

/// Everything a vCPU needs to resume exactly where it stopped, as KVM holds it.
///
/// Each kernel structure is kept as its exact bytes (the kernel's ABI for them is stable);
/// reading one back checks its length against the structure's size, and every list against
/// a bound. `VCPUHandle.captureState()` makes one, `VCPUHandle.restoreState(_:)` puts it
/// into a fresh vCPU.
package struct VCPUState: Sendable, Equatable, SnapshotCodable {
    /// The encoding's own version, written first: a reader refuses any other.
    package static let encodingVersion: UInt32 = 1
    /// The largest XSAVE area read back (`KVM_CAP_XSAVE2` reports about 3-11 KiB today).
    package static let maxXSAVESize = 1 << 16
    /// The most MSRs read back.
    package static let maxMSRs = KVMSystem.maxSaveableMSRs
    /// The most CPUID entries read back.
    package static let maxCPUIDEntries = Int(CKVM_MAX_CPUID_ENTRIES)

    /// `struct kvm_regs`.
    package var regs: [UInt8]
    /// `struct kvm_sregs`, with the pending-interrupt bitmap.
    package var sregs: [UInt8]
    /// `struct kvm_debugregs`.
    package var debugRegs: [UInt8]
    /// `struct kvm_fpu`.
    package var fpu: [UInt8]
    /// The XSAVE area (`KVM_GET_XSAVE2`, or `KVM_GET_XSAVE`'s 4 KiB): at least 4 KiB.
    package var xsave: [UInt8]
    /// `struct kvm_xcrs`.
    package var xcrs: [UInt8]
    /// `struct kvm_lapic_state`, or empty for a VM without the in-kernel irqchip.
    package var lapic: [UInt8]
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST` this vCPU could read, IA32_TSC among them.
    package var msrs: [MSREntry]
    /// `struct kvm_vcpu_events`.
    package var events: [UInt8]
    /// `KVM_GET_MP_STATE`.
    package var mpState: UInt32
    /// The vCPU's TSC frequency in kHz (`KVM_GET_TSC_KHZ`), or 0 where KVM does not say.
    package var tscKHz: UInt32
    /// The CPUID table the vCPU was given (`KVM_GET_CPUID2`).
    package var cpuid: [CPUIDEntry]

    package init(
        regs: [UInt8], sregs: [UInt8], debugRegs: [UInt8], fpu: [UInt8], xsave: [UInt8], xcrs: [UInt8],
        lapic: [UInt8], msrs: [MSREntry], events: [UInt8], mpState: UInt32, tscKHz: UInt32, cpuid: [CPUIDEntry]
    ) {
        self.regs = regs
        self.sregs = sregs
        self.debugRegs = debugRegs
        self.fpu = fpu
        self.xsave = xsave
        self.xcrs = xcrs
        self.lapic = lapic
        self.msrs = msrs
        self.events = events
        self.mpState = mpState
        self.tscKHz = tscKHz
        self.cpuid = cpuid
    }

    package func encode(to writer: inout SnapshotWriter) {
        writer.write(Self.encodingVersion)
        writer.write(bytes: regs)
        writer.write(bytes: sregs)
        writer.write(bytes: debugRegs)
        writer.write(bytes: fpu)
        writer.write(bytes: xsave)
        writer.write(bytes: xcrs)
        writer.write(bytes: lapic)
        writer.write(array: msrs)
        writer.write(bytes: events)
        writer.write(mpState)
        writer.write(tscKHz)
        writer.write(array: cpuid)
    }

    package init(from reader: inout SnapshotReader) throws(SnapshotError) {
        let version = try reader.readUInt32("the vCPU state's version")
        guard version == Self.encodingVersion else {
            throw .invalid("the vCPU state", reason: "has encoding version \(version), not \(Self.encodingVersion)")
        }
        regs = try reader.readBytes("the vCPU's general registers", exactly: KernelLayout.regs)
        sregs = try reader.readBytes("the vCPU's special registers", exactly: KernelLayout.sregs)
        debugRegs = try reader.readBytes("the vCPU's debug registers", exactly: KernelLayout.debugRegs)
        fpu = try reader.readBytes("the vCPU's FPU state", exactly: KernelLayout.fpu)
        xsave = try reader.readBytes("the vCPU's XSAVE area", maxCount: Self.maxXSAVESize)
        guard xsave.count >= KernelLayout.xsave else {
            throw .invalid("the vCPU's XSAVE area", reason: "is \(xsave.count) bytes, less than \(KernelLayout.xsave)")
        }
        xcrs = try reader.readBytes("the vCPU's XCRs", exactly: KernelLayout.xcrs)
        lapic = try reader.readBytes("the vCPU's local APIC", maxCount: KernelLayout.lapic)
        guard lapic.isEmpty || lapic.count == KernelLayout.lapic else {
            throw .invalid("the vCPU's local APIC", reason: "is \(lapic.count) bytes, not \(KernelLayout.lapic) or 0")
        }
        msrs = try reader.readArray("the vCPU's MSRs", maxCount: Self.maxMSRs)
        events = try reader.readBytes("the vCPU's pending events", exactly: KernelLayout.events)
        mpState = try reader.readUInt32("the vCPU's MP state", below: 16)
        tscKHz = try reader.readUInt32("the vCPU's TSC frequency")
        cpuid = try reader.readArray("the vCPU's CPUID table", maxCount: Self.maxCPUIDEntries)
    }

    // MARK: Reading the state

    /// The general registers, RIP and RFLAGS.
    package var registers: Registers? { kernelValue(kvm_regs(), from: regs).map(Registers.init) }

    /// The special registers.
    package var specialRegisters: SpecialRegisters? {
        kernelValue(kvm_sregs(), from: sregs).map(SpecialRegisters.init)
    }

    /// The value of MSR `index`, if it was saved.
    package func msr(_ index: UInt32) -> UInt64? { msrs.first { $0.index == index }?.value }

    /// IA32_TSC.
    package static let tscMSR: UInt32 = 0x10
    /// IA32_TSC_DEADLINE: restored after IA32_TSC, which it is compared against.
    package static let tscDeadlineMSR: UInt32 = 0x6E0

    /// The MSRs in the order `KVM_SET_MSRS` needs them: IA32_TSC first (the TSC offset the
    /// others are relative to), IA32_TSC_DEADLINE last (it arms the timer against the TSC
    /// now in force), the rest as KVM listed them.
    package var msrsInRestoreOrder: [MSREntry] {
        let tsc = msrs.filter { $0.index == Self.tscMSR }
        let deadline = msrs.filter { $0.index == Self.tscDeadlineMSR }
        let rest = msrs.filter { $0.index != Self.tscMSR && $0.index != Self.tscDeadlineMSR }
        return tsc + rest + deadline
    }

    // MARK: Host compatibility

    /// A CPUID register holding feature bits: leaf, subleaf, which register, and the bits
    /// KVM sets by itself whatever its supported table says.
    package struct FeatureRegister: Sendable {
        package let leaf: UInt32
        package let subleaf: UInt32
        package let register: String
        /// Bits exempt from the check: KVM mirrors them from guest state (OSXSAVE, OSPKE),
        /// or offers them outside `KVM_GET_SUPPORTED_CPUID` (TSC deadline through
        /// KVM_CAP_TSC_DEADLINE_TIMER, the hypervisor bit).
        package let exempt: UInt32
        let read: @Sendable (CPUIDEntry) -> UInt32
    }

    /// The usual feature registers a guest's kernel decides with.
    package static let featureRegisters: [FeatureRegister] = [
        FeatureRegister(leaf: 1, subleaf: 0, register: "ECX", exempt: 1 << 24 | 1 << 27 | 1 << 31) { $0.ecx },
        FeatureRegister(leaf: 1, subleaf: 0, register: "EDX", exempt: 0) { $0.edx },
        FeatureRegister(leaf: 7, subleaf: 0, register: "EBX", exempt: 0) { $0.ebx },
        FeatureRegister(leaf: 7, subleaf: 0, register: "ECX", exempt: 1 << 4) { $0.ecx },
        FeatureRegister(leaf: 7, subleaf: 0, register: "EDX", exempt: 0) { $0.edx },
        FeatureRegister(leaf: 0xD, subleaf: 1, register: "EAX", exempt: 0) { $0.eax },
        FeatureRegister(leaf: 0x8000_0001, subleaf: 0, register: "ECX", exempt: 0) { $0.ecx },
        FeatureRegister(leaf: 0x8000_0001, subleaf: 0, register: "EDX", exempt: 0) { $0.edx },
    ]

    /// Refuses, naming the first leaf, register and bit, when the saved CPUID gives the
    /// guest a feature in the usual feature registers (`featureRegisters`) that `supported`
    /// (this host's `KVM_GET_SUPPORTED_CPUID`) lacks. A guest that was told it has a
    /// feature uses it without asking again, so resuming it without one crashes it.
    package func checkCompatible(withSupported supported: [CPUIDEntry]) throws(KVMError) {
        for feature in Self.featureRegisters {
            guard let saved = Self.entry(feature.leaf, feature.subleaf, in: cpuid) else { continue }
            let offered = Self.entry(feature.leaf, feature.subleaf, in: supported).map(feature.read) ?? 0
            let missing = feature.read(saved) & ~offered & ~feature.exempt
            if missing != 0 {
                throw .incompatibleCPU(
                    leaf: feature.leaf, subleaf: feature.subleaf, register: feature.register,
                    bit: missing.trailingZeroBitCount)
            }
        }
    }

    /// A dictionary key for a leaf and subleaf.
    static func key(_ leaf: UInt32, _ subleaf: UInt32) -> UInt64 { UInt64(leaf) << 32 | UInt64(subleaf) }

    /// The entry for `leaf`; for leaves 7 and 0xD (indexed by subleaf) the one for `subleaf`.
    static func entry(_ leaf: UInt32, _ subleaf: UInt32, in table: [CPUIDEntry]) -> CPUIDEntry? {
        let indexed = leaf == 7 || leaf == 0xD
        return table.first { $0.function == leaf && (!indexed || $0.index == subleaf) }
    }
}
