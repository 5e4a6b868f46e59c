// Fake vCPUs for tests and benchmarks that run the exit core without KVM.
import Glibc
import Synchronization
import VisorCore
package import VisorKVM

/// A fake vCPU over plain storage: the elements of a (string) I/O exit, the last MMIO read
/// result, registers and injected events, so tests see exactly what the dispatcher did.
/// One thread only (it records into arrays).
package final class FakeDataChannel: VCPUContext {
    package let id: UInt32 = 0
    package var elements: [UInt32]
    /// The vCPU's registers, as hypercalls read and write them.
    package var regs = Registers()
    /// Every injection, in order.
    package var injections: [Injection] = []

    package func registers() throws(KVMError) -> Registers { regs }
    package var sregs = SpecialRegisters()
    package func specialRegisters() throws(KVMError) -> SpecialRegisters { sregs }
    package var xcr: UInt64 = 0x7
    package func xcr0() throws(KVMError) -> UInt64 { xcr }
    package func setRegisters(_ registers: Registers) throws(KVMError) { regs = registers }
    package func inject(_ injection: Injection) throws(KVMError) { injections.append(injection) }

    /// The last value passed to `setMMIOData`, nil until then.
    package var mmioData: UInt64?
    /// How many times `setMMIOData` was called.
    package var mmioSets = 0
    /// Indices read through `ioElement`, in order.
    package var reads: [Int] = []
    /// Indices written through `setIOElement`, in order.
    package var writes: [Int] = []

    package init(_ elements: [UInt32] = [0]) {
        self.elements = elements
    }

    /// `count` elements all holding `value`.
    package convenience init(count: Int, value: UInt32 = 0x5A5A_5A5A) {
        self.init(Array(repeating: value, count: count))
    }

    package func ioElement(_ index: Int) -> UInt32 {
        reads.append(index)
        return elements[index]
    }

    package func setIOElement(_ index: Int, _ value: UInt32) {
        writes.append(index)
        elements[index] = value
    }

    package func setMMIOData(_ value: UInt64) {
        mmioData = value
        mmioSets += 1
    }

    /// The last MSR completion: (value, fault).
    package var msrCompletion: (value: UInt64, fault: Bool)?
    package func completeMSR(value: UInt64, fault: Bool) { msrCompletion = (value, fault) }
}

/// A fake vCPU for the run loop: it returns the exits of its script in order, then behaves
/// like a guest spinning in ring 3, "running" until it is kicked. It follows KVM's rules
/// for `KVM_RUN`: the immediate-exit flag makes a call return `.interrupted` at once, and
/// the kick signal interrupts a call in progress (here a sleep, which the signal ends with
/// `EINTR`); a call in progress also looks at the flag every 200 us, as KVM notices a
/// pending signal on its next entry. Thread-safe: the runner's controller kicks it from
/// other threads.
package final class ScriptedVCPU: RunnableVCPU {
    package let id: UInt32
    private let flag = Atomic<Bool>(false)
    private let state: Mutex<State>

    struct State {
        var script: [Result<VMExit, KVMError>]
        var next = 0
        var runs = 0
        var guestEntries = 0
        var injections: [Injection] = []
        var inGuest = false
        var elements: [UInt32] = [0]
    }

    /// - Parameter script: what successive `run()` calls return once they enter the guest;
    ///   after the last, the vCPU spins until kicked.
    package init(id: UInt32 = 0, script: [Result<VMExit, KVMError>] = []) {
        self.id = id
        state = Mutex(State(script: script))
    }

    /// Calls of `run()`, and those that entered the "guest" (not stopped by the flag).
    package var runs: Int { state.withLock { $0.runs } }
    package var guestEntries: Int { state.withLock { $0.guestEntries } }
    package var injections: [Injection] { state.withLock { $0.injections } }
    /// Whether a `run()` call is in progress now.
    package var isInGuest: Bool { state.withLock { $0.inGuest } }
    /// Whether the script has been used up.
    package var scriptDone: Bool { state.withLock { $0.next >= $0.script.count } }

    package func run() throws(KVMError) -> VMExit {
        let step: Result<VMExit, KVMError>? = state.withLock { state in
            state.runs += 1
            if flag.load(ordering: .sequentiallyConsistent) { return .success(.interrupted) }
            state.guestEntries += 1
            guard state.next < state.script.count else {
                state.inGuest = true
                return nil
            }
            defer { state.next += 1 }
            return state.script[state.next]
        }
        if let step { return try step.get() }
        defer { state.withLock { $0.inGuest = false } }
        var pause = timespec(tv_sec: 0, tv_nsec: 200_000)
        while true {
            // SAFETY: nanosleep reads only `pause`, a local; no remainder is asked for.
            if unsafe nanosleep(&pause, nil) != 0 { return .interrupted }
            if flag.load(ordering: .sequentiallyConsistent) { return .interrupted }
            pause = timespec(tv_sec: 0, tv_nsec: 200_000)
        }
    }

    package var immediateExitRequested: Bool { flag.load(ordering: .sequentiallyConsistent) }
    package func requestImmediateExit(_ value: Bool) { flag.store(value, ordering: .sequentiallyConsistent) }

    package func registers() throws(KVMError) -> Registers { Registers() }
    package func setRegisters(_ registers: Registers) throws(KVMError) {}
    package func specialRegisters() throws(KVMError) -> SpecialRegisters { SpecialRegisters() }
    package func xcr0() throws(KVMError) -> UInt64 { 1 }
    package func inject(_ injection: Injection) throws(KVMError) { state.withLock { $0.injections.append(injection) } }
    /// Every OUT element reads as `value` (the scripts use one-element port writes).
    package func ioElement(_ index: Int) -> UInt32 { state.withLock { $0.elements[0] } }
    package func setIOElement(_ index: Int, _ value: UInt32) { state.withLock { $0.elements[0] = value } }
    package func setMMIOData(_ value: UInt64) {}
    package func completeMSR(value: UInt64, fault: Bool) {}
    /// Sets the value OUT exits carry.
    package func setOutValue(_ value: UInt32) { state.withLock { $0.elements[0] = value } }
}
