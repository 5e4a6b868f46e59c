import VisorCore
import VisorKVM

// A copy of the fake in VisorCoreTests/Fakes.swift, for the emulator's tests until the
// shared test-support target holds one for both.

// Moves to TestSupport
/// A fake vCPU over plain storage: the elements of a (string) I/O exit, the last MMIO read
/// result, registers and injected events, so tests see exactly what the dispatcher did.
final class FakeDataChannel: VCPUContext {
    let id: UInt32 = 0
    var elements: [UInt32]
    /// The vCPU's registers, as hypercalls read and write them.
    var regs = Registers()
    /// Every injection, in order.
    var injections: [Injection] = []

    func registers() throws(KVMError) -> Registers { regs }
    var sregs = SpecialRegisters()
    func specialRegisters() throws(KVMError) -> SpecialRegisters { sregs }
    var xcr: UInt64 = 0x7
    func xcr0() throws(KVMError) -> UInt64 { xcr }
    func setRegisters(_ registers: Registers) throws(KVMError) { regs = registers }
    func inject(_ injection: Injection) throws(KVMError) { injections.append(injection) }

    /// The last value passed to `setMMIOData`, nil until then.
    var mmioData: UInt64?
    /// How many times `setMMIOData` was called.
    var mmioSets = 0
    /// Indices read through `ioElement`, in order.
    var reads: [Int] = []
    /// Indices written through `setIOElement`, in order.
    var writes: [Int] = []

    init(_ elements: [UInt32] = [0]) {
        self.elements = elements
    }

    /// `count` elements all holding `value`.
    convenience init(count: Int, value: UInt32 = 0x5A5A_5A5A) {
        self.init(Array(repeating: value, count: count))
    }

    func ioElement(_ index: Int) -> UInt32 {
        reads.append(index)
        return elements[index]
    }

    func setIOElement(_ index: Int, _ value: UInt32) {
        writes.append(index)
        elements[index] = value
    }

    func setMMIOData(_ value: UInt64) {
        mmioData = value
        mmioSets += 1
    }

    /// The last MSR completion: (value, fault).
    var msrCompletion: (value: UInt64, fault: Bool)?
    func completeMSR(value: UInt64, fault: Bool) { msrCompletion = (value, fault) }
}
