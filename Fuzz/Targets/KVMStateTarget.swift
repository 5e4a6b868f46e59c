// The decoders of the vCPU and VM state a snapshot file holds: a file is as hostile as a
// guest, and these read its largest blocks.
import VisorKVM
import VisorSnapshot

/// The first byte picks the decoder (even: `VCPUState`, odd: `VMState`); the rest is the
/// encoding.
///
/// Checks: decoding throws a `SnapshotError` or gives a state whose every kernel block has
/// its structure's size (the local APIC, the irqchips and the PIT may be absent as a
/// whole), whose lists keep their bounds, and which encodes to exactly the bytes it read.
func fuzzKVMState(_ data: [UInt8]) {
    guard let selector = data.first else { return }
    let body = Array(data.dropFirst())
    var reader = SnapshotReader(body)
    var writer = SnapshotWriter()
    if selector & 1 == 0 {
        guard let state = try? reader.read(VCPUState.self) else { return }
        precondition(
            state.regs.count == KernelLayout.regs && state.sregs.count == KernelLayout.sregs
                && state.debugRegs.count == KernelLayout.debugRegs && state.fpu.count == KernelLayout.fpu
                && state.xcrs.count == KernelLayout.xcrs && state.events.count == KernelLayout.events,
            "kvm-state: a vCPU register block has the wrong size")
        precondition(
            (KernelLayout.xsave...VCPUState.maxXSAVESize).contains(state.xsave.count),
            "kvm-state: XSAVE area of \(state.xsave.count) bytes")
        precondition(state.lapic.isEmpty || state.lapic.count == KernelLayout.lapic, "kvm-state: local APIC size")
        precondition(
            state.msrs.count <= VCPUState.maxMSRs && state.cpuid.count <= VCPUState.maxCPUIDEntries,
            "kvm-state: a list beyond its bound")
        _ = state.registers
        _ = state.specialRegisters
        precondition(state.msrsInRestoreOrder.count == state.msrs.count, "kvm-state: the restore order lost MSRs")
        writer.write(state)
    } else {
        guard let state = try? reader.read(VMState.self) else { return }
        precondition(
            state.irqchips.isEmpty
                || (state.irqchips.count == 3 && state.irqchips.allSatisfy { $0.count == KernelLayout.irqchip }),
            "kvm-state: irqchip blocks")
        precondition(state.pit.map { $0.count == KernelLayout.pit } ?? true, "kvm-state: PIT block size")
        writer.write(state)
    }
    precondition(writer.bytes[...] == body[..<reader.position], "kvm-state: the encoding differs from the bytes read")
}
