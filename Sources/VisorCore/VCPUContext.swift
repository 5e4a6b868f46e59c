public import VisorKVM

/// What exit handlers may do to the vCPU that exited: read and write its registers, inject
/// events, and read its whole state. The real vCPU implements it; unit tests use a fake.
public protocol VCPUContext: ExitDataChannel {
    var id: UInt32 { get }
    func registers() throws(KVMError) -> Registers
    func setRegisters(_ registers: Registers) throws(KVMError)
    func specialRegisters() throws(KVMError) -> SpecialRegisters
    /// XCR0, for XGETBV.
    func xcr0() throws(KVMError) -> UInt64
    /// Delivers `injection` when the guest next runs.
    func inject(_ injection: Injection) throws(KVMError)
}

extension VCPUHandle: VCPUContext {}

/// A vCPU that a run loop can drive: enter the guest until the next exit, and be made to
/// leave `KVM_RUN` from another thread. The real vCPU implements it over `KVM_RUN` and the
/// run page's immediate-exit flag; tests use a fake, so the run loop, the lifecycle and the
/// kick protocol are tested without KVM.
package protocol RunnableVCPU: VCPUContext, AnyObject, Sendable {
    /// Runs the guest until its next exit; `.interrupted` when a signal or the immediate-exit
    /// flag ended the call.
    func run() throws(KVMError) -> VMExit
    /// Whether `requestImmediateExit(true)` is in force.
    var immediateExitRequested: Bool { get }
    /// Makes the next `run()` (or, with a signal, the current one) return `.interrupted`.
    func requestImmediateExit(_ flag: Bool)
}

extension VCPUHandle: RunnableVCPU {}
