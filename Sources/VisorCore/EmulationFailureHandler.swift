/// Finishes instructions the host's KVM could not emulate. The dispatcher hands it every
/// `KVM_EXIT_INTERNAL_ERROR` with suberror 1 (`KVM_INTERNAL_ERROR_EMULATION`).
///
/// Such failures are rare, so the dispatcher calls the handler through an existential; the
/// port and MMIO paths never touch it. `VisorEmulator`'s `InstructionEmulator` is the
/// standard handler.
public protocol EmulationFailureHandler: Sendable {
    /// Tries to finish the instruction at `vcpu`'s RIP. `data` is the failure's data as KVM
    /// reported it; it may carry the instruction bytes.
    ///
    /// Returns the exit's outcome, or nil when the handler does not know the instruction;
    /// the VM then stops with the internal error.
    func finish(data: [UInt64], vcpu: some VCPUContext) -> ExitOutcome?
}
