// Events a VMM delivers to a vCPU: exceptions, NMIs and external interrupts.

/// An event to deliver to the guest: an exception, an NMI or an external interrupt.
public enum Injection: Sendable, Equatable, CustomStringConvertible {
    /// Exception `vector` (0-31). The error code is pushed only for the vectors that
    /// architecturally take one (8, 10-14, 17, 21, 29, 30); for the others it is ignored.
    case exception(vector: UInt8, errorCode: UInt32?)
    /// #PF with its error code; CR2 is set to `address` first.
    case pageFault(errorCode: UInt32, address: UInt64)
    /// A non-maskable interrupt (`KVM_NMI`).
    case nmi
    /// External interrupt `vector` (32-255), delivered once the guest has RFLAGS.IF set.
    case interrupt(vector: UInt8)
    /// The delivery of a software interrupt (`int n`, any vector 0-255) whose instruction
    /// the VMM finished: the VMM has made the gate checks and moved RIP past the
    /// instruction. It goes in through `KVM_SET_VCPU_EVENTS` as an interrupt already
    /// accepted, so neither RFLAGS.IF nor the local APIC's priority holds it back, and no
    /// error code is pushed.
    case softwareInterrupt(vector: UInt8)

    /// #UD.
    public static let invalidOpcode = Injection.exception(vector: 6, errorCode: nil)
    /// #GP with an error code, 0 by default.
    public static func generalProtection(_ errorCode: UInt32 = 0) -> Injection {
        .exception(vector: 13, errorCode: errorCode)
    }

    /// Whether exception `vector` pushes an error code.
    public static func vectorHasErrorCode(_ vector: UInt8) -> Bool {
        [8, 10, 11, 12, 13, 14, 17, 21, 29, 30].contains(vector)
    }

    public var description: String {
        switch self {
        case .exception(let vector, let code):
            "exception \(vector)" + (code.map { " error 0x\(hex($0))" } ?? "")
        case .pageFault(let code, let address): "#PF error 0x\(hex(code)) at 0x\(hex(address))"
        case .nmi: "NMI"
        case .interrupt(let vector): "interrupt \(vector)"
        case .softwareInterrupt(let vector): "int 0x\(hex(vector))"
        }
    }
}

/// An injection the vCPU cannot take, e.g. an exception vector above 31.
public struct InjectionError: Error, Equatable, CustomStringConvertible {
    public let injection: Injection
    public let reason: String
    public var description: String { "cannot inject \(injection): \(reason)" }
}

extension Injection {
    /// Checks that the vector fits the kind of event.
    public func validate() throws(InjectionError) {
        switch self {
        case .exception(let vector, _) where vector > 31:
            throw InjectionError(injection: self, reason: "exception vectors are 0-31; use .interrupt for \(vector)")
        case .interrupt(let vector) where vector < 32:
            throw InjectionError(injection: self, reason: "interrupt vectors are 32-255; use .exception for \(vector)")
        default: break
        }
    }
}

extension VCPUHandle {
    /// Delivers `injection` when the guest next runs: an exception through
    /// `KVM_SET_VCPU_EVENTS` (CR2 first for #PF), an NMI with `KVM_NMI`, an interrupt through
    /// the local APIC or `KVM_INTERRUPT`.
    package func inject(_ injection: Injection) throws(KVMError) {
        switch injection {
        case .exception(let vector, let errorCode):
            var events = try self.events()
            events.exception.injected = true
            events.exception.pending = false
            events.exception.vector = vector
            events.exception.hasErrorCode = errorCode != nil && Injection.vectorHasErrorCode(vector)
            events.exception.errorCode = events.exception.hasErrorCode ? errorCode! : 0
            events.flags = 0
            try setEvents(events)
        case .pageFault(let errorCode, let address):
            var special = try specialRegisters()
            special.cr2 = address
            try setSpecialRegisters(special)
            try inject(.exception(vector: 14, errorCode: errorCode))
        case .nmi:
            try injectNMI()
        case .interrupt(let vector):
            try injectInterrupt(vector: vector)
        case .softwareInterrupt(let vector):
            // Not `soft`: for a soft interrupt the kernel would take the instruction length
            // from the last hardware exit, and RIP is already past the instruction.
            var events = try self.events()
            events.interrupt.injected = true
            events.interrupt.vector = vector
            events.interrupt.soft = false
            events.flags = 0
            try setEvents(events)
        }
    }
}

private func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }
