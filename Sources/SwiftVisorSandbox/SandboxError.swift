public import struct VisorKVM.Registers

/// The state of a guest at an exception: which one, where, and its registers.
public struct GuestTrap: Sendable, Equatable, CustomStringConvertible {
    /// The exception or interrupt vector (6 #UD, 13 #GP, 14 #PF, ...); 8 with
    /// `tripleFault` when the vCPU shut down.
    public var vector: UInt8
    /// The error code the CPU pushed, for the vectors that have one.
    public var errorCode: UInt64?
    /// The instruction that faulted (or the one after an `int n`).
    public var rip: UInt64
    /// The faulting address of a page fault.
    public var cr2: UInt64
    /// The general-purpose registers at the exception, with RIP, RSP and RFLAGS as the
    /// guest had them.
    public var registers: Registers
    /// The vCPU shut down (a fault while delivering a fault); the other fields are the
    /// state at the shutdown.
    public var tripleFault: Bool

    public init(
        vector: UInt8, errorCode: UInt64?, rip: UInt64, cr2: UInt64, registers: Registers, tripleFault: Bool = false
    ) {
        self.vector = vector
        self.errorCode = errorCode
        self.rip = rip
        self.cr2 = cr2
        self.registers = registers
        self.tripleFault = tripleFault
    }

    /// The vector's mnemonic, e.g. "#PF".
    public var name: String {
        let names: [UInt8: String] = [
            0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF", 10: "#TS",
            11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP",
        ]
        return names[vector] ?? "vector \(vector)"
    }

    public var description: String {
        if tripleFault { return "triple fault (shutdown) at RIP 0x\(String(rip, radix: 16))" }
        var text = "\(name) at RIP 0x\(String(rip, radix: 16))"
        if let errorCode { text += ", error code 0x\(String(errorCode, radix: 16))" }
        if vector == 14 { text += ", CR2 0x\(String(cr2, radix: 16))" }
        let r = registers
        text +=
            "; RAX=\(hex(r.rax)) RBX=\(hex(r.rbx)) RCX=\(hex(r.rcx)) RDX=\(hex(r.rdx)) RSI=\(hex(r.rsi)) RDI=\(hex(r.rdi))"
            + " RBP=\(hex(r.rbp)) RSP=\(hex(r.rsp)) R8=\(hex(r.r8)) R9=\(hex(r.r9)) R10=\(hex(r.r10)) R11=\(hex(r.r11))"
            + " R12=\(hex(r.r12)) R13=\(hex(r.r13)) R14=\(hex(r.r14)) R15=\(hex(r.r15)) RFLAGS=\(hex(r.rflags))"
        return text
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}

/// Everything that can go wrong with a sandbox. After any error from a call, the sandbox
/// restores its snapshot before the next call, so it keeps working.
public enum SandboxError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The guest raised an exception (or executed `int n`, `hlt`, `cli`, a privileged
    /// instruction, a bad memory access...): the call ended there.
    case guestTrap(GuestTrap)
    /// The call ran longer than the configuration's time limit (in nanoseconds).
    case timeLimit(nanoseconds: UInt64)
    /// The guest exports no function of that name (or a host function the guest called
    /// does not exist, when the guest passes that error on).
    case unknownFunction(String)
    /// Wrong argument count or types, as the receiving side says.
    case wrongArguments(String)
    /// The guest printed more than the configuration's output limit in one call.
    case outputLimit(Int)
    /// The guest gave up, with its message.
    case guestAbort(String)
    /// The guest's function reported an error (code 4 of the convention), with its message.
    case guestFailed(String)
    /// A message from the guest was malformed or too long: what was wrong.
    case badMessage(String)
    /// The guest image cannot be run as a sandbox: why.
    case invalidGuest(String)
    /// The configuration cannot work: why.
    case invalidConfiguration(String)
    /// The sandbox is already in a call, snapshot or restore: a host function called back
    /// into its own sandbox, or another thread is using it. A sandbox serves one caller at
    /// a time; use another sandbox (a `SandboxPool` hands them out).
    case busy
    /// KVM refused something or the vCPU stopped in a way a sandbox never should (an exit
    /// other than the port and exceptions): what happened.
    case hypervisor(String)

    public var description: String {
        switch self {
        case .guestTrap(let trap): "guest trap: \(trap)"
        case .timeLimit(let ns): "the call exceeded its time limit of \(ns / 1_000_000) ms"
        case .unknownFunction(let name): "unknown function '\(name)'"
        case .wrongArguments(let why): "wrong arguments: \(why)"
        case .outputLimit(let limit): "the guest printed more than the output limit of \(limit) bytes"
        case .guestAbort(let message): "the guest aborted: \(message)"
        case .guestFailed(let message): "the guest function failed: \(message)"
        case .badMessage(let why): "bad message from the guest: \(why)"
        case .invalidGuest(let why): "invalid sandbox guest: \(why)"
        case .invalidConfiguration(let why): "invalid sandbox configuration: \(why)"
        case .hypervisor(let why): "hypervisor: \(why)"
        case .busy: "the sandbox is already in use (a host function called back into it, or another thread uses it)"
        }
    }
}
