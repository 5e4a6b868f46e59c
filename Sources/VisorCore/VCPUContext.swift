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
