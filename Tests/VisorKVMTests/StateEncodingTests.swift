import Testing
import VisorKVM
import VisorSnapshot

/// Bytes 0, 1, 2, ... of the given length, offset by `seed`, so every field differs.
private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0) &+ seed }
}

private func sampleVCPU(lapic: Bool = true, xsaveSize: Int = KernelLayout.xsave) -> VCPUState {
    VCPUState(
        regs: pattern(KernelLayout.regs, seed: 1), sregs: pattern(KernelLayout.sregs, seed: 2),
        debugRegs: pattern(KernelLayout.debugRegs, seed: 3), fpu: pattern(KernelLayout.fpu, seed: 4),
        xsave: pattern(xsaveSize, seed: 5), xcrs: pattern(KernelLayout.xcrs, seed: 6),
        lapic: lapic ? pattern(KernelLayout.lapic, seed: 7) : [],
        msrs: [
            MSREntry(index: 0x6E0, value: 99), MSREntry(index: 0xC000_0080, value: 0x500), MSREntry(index: 0x10, value: 1234),
        ],
        events: pattern(KernelLayout.events, seed: 8), mpState: 0, tscKHz: 2_400_000,
        cpuid: [
            CPUIDEntry(function: 0, eax: 0xD, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
            CPUIDEntry(function: 1, eax: 0x806C1, ebx: 0, ecx: 0x8000_0001, edx: 1 << 4),
            CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 1 << 5, ecx: 0, edx: 0),
        ])
}

private func sampleVM(irqchip: Bool = true, pit: Bool = true) -> VMState {
    // Each irqchip block starts with its chip id (0, 1, 2) as a little-endian word.
    let chips: [[UInt8]] = (0..<3).map { id in
        [UInt8(id), 0, 0, 0] + pattern(KernelLayout.irqchip - 4, seed: UInt8(10 + id))
    }
    return VMState(irqchips: irqchip ? chips : [], pit: pit ? pattern(KernelLayout.pit, seed: 20) : nil, clock: 123_456_789)
}

private func encoded(_ value: some SnapshotCodable) -> [UInt8] {
    var writer = SnapshotWriter()
    writer.write(value)
    return writer.bytes
}

private func decode<T: SnapshotCodable>(_ type: T.Type, _ bytes: [UInt8]) throws(SnapshotError) -> T {
    var reader = SnapshotReader(bytes)
    let value = try reader.read(T.self)
    try reader.finish("the state")
    return value
}

@Suite("vCPU and VM state encoding")
struct StateEncodingTests {
    @Test("a vCPU state round-trips, with and without a local APIC, with a larger XSAVE area")
    func vcpuRoundTrip() throws {
        for state in [sampleVCPU(), sampleVCPU(lapic: false), sampleVCPU(xsaveSize: 11008)] {
            #expect(try decode(VCPUState.self, encoded(state)) == state)
        }
    }

    @Test("a VM state round-trips with and without irqchip and PIT")
    func vmRoundTrip() throws {
        for state in [sampleVM(), sampleVM(irqchip: false), sampleVM(pit: false), sampleVM(irqchip: false, pit: false)] {
            #expect(try decode(VMState.self, encoded(state)) == state)
        }
    }

    @Test("every truncation of a vCPU or VM state is refused as truncated")
    func truncated() {
        expectTruncationsRefused(VCPUState.self, encoded(sampleVCPU()))
        expectTruncationsRefused(VMState.self, encoded(sampleVM()))
    }

    private func expectTruncationsRefused<T: SnapshotCodable>(_ type: T.Type, _ bytes: [UInt8]) {
        // Every cut inside the header and the first blocks, then a stride through the rest.
        let cuts = Array(0..<64) + Array(stride(from: 64, to: bytes.count, by: 37))
        for cut in cuts {
            var reader = SnapshotReader(Array(bytes[..<cut]))
            do {
                _ = try reader.read(T.self)
                Issue.record("a cut at \(cut) of \(bytes.count) bytes was accepted")
            } catch {
                guard case .truncated = error else {
                    Issue.record("a cut at \(cut) gave \(error), not .truncated")
                    continue
                }
            }
        }
    }

    @Test("a kernel structure of the wrong length is refused, naming it")
    func wrongLength() {
        var state = sampleVCPU()
        state.sregs.removeLast()
        #expect(throws: SnapshotError.invalid("the vCPU's special registers", reason: "is 311 bytes long, not 312")) {
            _ = try decode(VCPUState.self, encoded(state))
        }
        state = sampleVCPU()
        state.lapic = [1, 2, 3]
        #expect(throws: SnapshotError.invalid("the vCPU's local APIC", reason: "is 3 bytes, not 1024 or 0")) {
            _ = try decode(VCPUState.self, encoded(state))
        }
        state = sampleVCPU(xsaveSize: 1024)
        #expect(throws: SnapshotError.invalid("the vCPU's XSAVE area", reason: "is 1024 bytes, less than 4096")) {
            _ = try decode(VCPUState.self, encoded(state))
        }
        state = sampleVCPU(xsaveSize: VCPUState.maxXSAVESize + 1)
        #expect(throws: SnapshotError.self) { _ = try decode(VCPUState.self, encoded(state)) }
        var vm = sampleVM()
        vm.pit?.append(0)
        #expect(throws: SnapshotError.invalid("the PIT", reason: "is 113 bytes long, more than the 112 allowed")) {
            _ = try decode(VMState.self, encoded(vm))
        }
    }

    @Test("counts and ids beyond their bounds are refused")
    func bounds() {
        // The MSR count is the word after the local APIC block.
        var bytes = encoded(sampleVCPU())
        let msrCountOffset =
            4
            + [
                KernelLayout.regs, KernelLayout.sregs, KernelLayout.debugRegs, KernelLayout.fpu,
                KernelLayout.xsave, KernelLayout.xcrs, KernelLayout.lapic,
            ].reduce(0) { $0 + 4 + $1 }
        #expect(bytes[msrCountOffset] == 3)
        bytes[msrCountOffset + 3] = 0x7F
        #expect(throws: SnapshotError.self) { _ = try decode(VCPUState.self, bytes) }

        var vm = sampleVM()
        vm.irqchips[1][0] = 2  // the PIC slave's block claims to be the IOAPIC
        #expect(throws: SnapshotError.invalid("the PIC slave", reason: "has chip id 2, not 1")) {
            _ = try decode(VMState.self, encoded(vm))
        }
        var version = encoded(sampleVM())
        version[0] = 9
        #expect(throws: SnapshotError.invalid("the VM state", reason: "has encoding version 9, not 1")) {
            _ = try decode(VMState.self, version)
        }
    }

    @Test("the general registers and MSRs read back from the bytes; TSC restores first, TSC deadline last")
    func accessors() throws {
        var state = sampleVCPU()
        var regs = [UInt8](repeating: 0, count: KernelLayout.regs)
        regs[16 * 8] = 0x34  // rip, the 17th word
        regs[16 * 8 + 1] = 0x12
        state.regs = regs
        #expect(state.registers?.rip == 0x1234)
        #expect(state.msr(0x10) == 1234)
        #expect(state.msr(0x11) == nil)
        #expect(state.msrsInRestoreOrder.map(\.index) == [0x10, 0xC000_0080, 0x6E0])
    }
}

@Suite("vCPU state host compatibility")
struct CPUCompatibilityTests {
    private let host: [CPUIDEntry] = [
        CPUIDEntry(function: 1, eax: 0x806C1, ebx: 0, ecx: 0x0000_0201, edx: 0x0000_0011),
        CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 0x0000_0021, ecx: 0, edx: 0),
        CPUIDEntry(function: 0xD, index: 1, flags: 1, eax: 0x1, ebx: 0, ecx: 0, edx: 0),
        CPUIDEntry(function: 0x8000_0001, eax: 0, ebx: 0, ecx: 0x1, edx: 0x2010_0000),
    ]

    private func state(_ entries: [CPUIDEntry]) -> VCPUState {
        var state = sampleVCPU()
        state.cpuid = entries
        return state
    }

    @Test("a guest given a subset of the host's features passes, whatever the other leaves say")
    func subsetPasses() throws {
        try state(host).checkCompatible(withSupported: host)
        try state([
            CPUIDEntry(function: 0, eax: 0xD, ebx: 1, ecx: 2, edx: 3),
            CPUIDEntry(function: 1, eax: 0xFFFF_FFFF, ebx: 0xFFFF_FFFF, ecx: 0x0000_0001, edx: 0x10),
            CPUIDEntry(function: 0x4000_0000, eax: 0xFFFF_FFFF, ebx: 0, ecx: 0, edx: 0),
        ]).checkCompatible(withSupported: host)
        try state([]).checkCompatible(withSupported: host)
    }

    @Test("each feature register refuses a bit the host lacks, naming leaf, subleaf, register and bit")
    func missingBitRefused() {
        let cases: [(CPUIDEntry, KVMError)] = [
            (
                CPUIDEntry(function: 1, eax: 0, ebx: 0, ecx: 1 << 12, edx: 0),
                .incompatibleCPU(leaf: 1, subleaf: 0, register: "ECX", bit: 12)
            ),
            (
                CPUIDEntry(function: 1, eax: 0, ebx: 0, ecx: 0, edx: 1 << 26),
                .incompatibleCPU(leaf: 1, subleaf: 0, register: "EDX", bit: 26)
            ),
            (
                CPUIDEntry(function: 7, index: 0, eax: 0, ebx: 1 << 16, ecx: 0, edx: 0),
                .incompatibleCPU(leaf: 7, subleaf: 0, register: "EBX", bit: 16)
            ),
            (
                CPUIDEntry(function: 7, index: 0, eax: 0, ebx: 0, ecx: 1 << 1, edx: 0),
                .incompatibleCPU(leaf: 7, subleaf: 0, register: "ECX", bit: 1)
            ),
            (
                CPUIDEntry(function: 7, index: 0, eax: 0, ebx: 0, ecx: 0, edx: 1 << 22),
                .incompatibleCPU(leaf: 7, subleaf: 0, register: "EDX", bit: 22)
            ),
            (
                CPUIDEntry(function: 0xD, index: 1, eax: 1 << 3, ebx: 0, ecx: 0, edx: 0),
                .incompatibleCPU(leaf: 0xD, subleaf: 1, register: "EAX", bit: 3)
            ),
            (
                CPUIDEntry(function: 0x8000_0001, eax: 0, ebx: 0, ecx: 1 << 5, edx: 0),
                .incompatibleCPU(leaf: 0x8000_0001, subleaf: 0, register: "ECX", bit: 5)
            ),
            (
                CPUIDEntry(function: 0x8000_0001, eax: 0, ebx: 0, ecx: 0, edx: 1 << 27),
                .incompatibleCPU(leaf: 0x8000_0001, subleaf: 0, register: "EDX", bit: 27)
            ),
        ]
        for (entry, error) in cases {
            #expect(throws: error) { try state([entry]).checkCompatible(withSupported: host) }
        }
    }

    @Test("a leaf the host does not list at all counts as no features; only 7 and 0xD match by subleaf")
    func absentLeaves() {
        let noLeaf7 = host.filter { $0.function != 7 }
        #expect(throws: KVMError.incompatibleCPU(leaf: 7, subleaf: 0, register: "EBX", bit: 0)) {
            try state([CPUIDEntry(function: 7, index: 0, eax: 0, ebx: 1, ecx: 0, edx: 0)]).checkCompatible(withSupported: noLeaf7)
        }
        // Leaf 0xD subleaf 0 is not a feature register; subleaf 1 is.
        #expect(throws: Never.self) {
            try state([CPUIDEntry(function: 0xD, index: 0, eax: 0xFF, ebx: 0, ecx: 0, edx: 0)]).checkCompatible(
                withSupported: host)
        }
    }

    @Test("bits KVM mirrors from guest state or offers outside its table are not refused")
    func exemptBits() throws {
        // OSXSAVE (1.ECX 27), TSC deadline (1.ECX 24), hypervisor (1.ECX 31), OSPKE (7.ECX 4).
        try state([
            CPUIDEntry(function: 1, eax: 0, ebx: 0, ecx: 1 << 27 | 1 << 24 | 1 << 31, edx: 0),
            CPUIDEntry(function: 7, index: 0, eax: 0, ebx: 0, ecx: 1 << 4, edx: 0),
        ]).checkCompatible(withSupported: host)
    }

    @Test("the messages say what is missing and what to do")
    func messages() {
        let cpu = KVMError.incompatibleCPU(leaf: 7, subleaf: 0, register: "EBX", bit: 5).description
        #expect(cpu.contains("CPUID leaf 0x7 subleaf 0 EBX bit 5"))
        #expect(cpu.contains("restore on a host whose CPU has it"))
        let tsc = KVMError.tscFrequencyMismatch(
            savedKHz: 2_400_000, hostKHz: 3_000_000, reason: "this host's KVM cannot scale the TSC"
        ).description
        #expect(tsc.contains("2400000 kHz") && tsc.contains("3000000 kHz") && tsc.contains("same TSC frequency"))
        #expect(
            KVMError.stateMismatch("the PIT state has the wrong size").description.hasPrefix(
                "the saved state does not fit this VM"))
        #expect(KVMError.exitPending(.halt(interruptsEnabled: false)).description.contains("handle its exit halt"))
    }
}
