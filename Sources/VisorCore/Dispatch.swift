public import VisorKVM

/// Why a VM stopped without anything going wrong.
public enum StopReason: Sendable, Equatable, CustomStringConvertible {
    /// The guest executed HLT with interrupts off (or with nothing that could wake it).
    case halted
    /// The guest wrote its exit status to the debug-exit port.
    case guestExit(status: UInt8)
    /// An access nobody claimed, under the `stop` policy.
    case unclaimedPort(port: UInt16, isWrite: Bool, width: UInt8)
    case unclaimedMMIO(address: UInt64, isWrite: Bool, width: UInt8)
    /// The guest asked for power-off or reset (`KVM_EXIT_SYSTEM_EVENT`).
    case systemEvent(type: UInt32)
    /// The host asked the VM to stop.
    case requested
    /// The guest powered off through a platform device (ACPI PM1a control, SLP_TYP=S5 with
    /// SLP_EN).
    case powerOff(source: String)
    /// The guest asked the platform to reset it (i8042 command 0xFE, the ACPI reset
    /// register, or port 0xCF9).
    case reset(source: String)

    /// The process exit status the command-line tool uses: the guest's own status for a
    /// debug-port exit, 0 for a halt or power-off, 120 for an access stopped by policy.
    public var exitStatus: Int32 {
        switch self {
        case .halted, .systemEvent, .requested, .powerOff, .reset: 0
        case .guestExit(let status): Int32(status)
        case .unclaimedPort, .unclaimedMMIO: 120
        }
    }

    public var description: String {
        switch self {
        case .halted: "guest halted"
        case .guestExit(let status): "guest exited with status \(status)"
        case .unclaimedPort(let port, let isWrite, let width):
            "unclaimed port access: \(isWrite ? "OUT" : "IN") of \(width) bytes at port 0x\(hex(port))"
        case .unclaimedMMIO(let address, let isWrite, let width):
            "unclaimed MMIO access: \(isWrite ? "write" : "read") of \(width) bytes at 0x\(hex(address))"
        case .systemEvent(let type): "guest requested system event \(type)"
        case .requested: "stopped on request"
        case .powerOff(let source): "guest powered off (\(source))"
        case .reset(let source): "guest requested a reset (\(source))"
        }
    }
}

/// A fatal exit: the guest cannot continue.
public enum FatalExit: Sendable, Equatable, CustomStringConvertible {
    case tripleFault
    case internalError(suberror: UInt32, data: [UInt64])
    case failedEntry(hardwareReason: UInt64, cpu: UInt32)
    case malformedExit(String)
    case unhandledExit(reason: UInt32)
    /// `KVM_RUN` itself failed.
    case runFailed(String)
    /// A device asked for an injection the vCPU cannot take.
    case badInjection(String)
    /// KVM could not emulate an instruction, and neither could SwiftVisor.
    case cannotEmulate(String)

    /// The process exit status the command-line tool uses for this failure.
    public var exitStatus: Int32 {
        switch self {
        case .tripleFault: 121
        case .internalError, .cannotEmulate: 122
        case .failedEntry: 123
        case .malformedExit, .unhandledExit, .badInjection: 124
        case .runFailed: 125
        }
    }

    public var description: String {
        switch self {
        case .tripleFault:
            "triple fault (KVM_EXIT_SHUTDOWN): the guest hit an exception it could not handle"
        case .internalError(let suberror, let data):
            "KVM internal error, suberror \(suberror)\(suberror == 1 ? " (instruction emulation failed)" : "")"
                + (data.isEmpty ? "" : ", data " + data.map { "0x\(hex($0))" }.joined(separator: " "))
        case .failedEntry(let reason, let cpu):
            "VM entry failed on CPU \(cpu), hardware reason 0x\(hex(reason))"
        case .malformedExit(let what): "malformed exit: \(what)"
        case .unhandledExit(let reason):
            "unhandled exit \(ExitReason(rawValue: reason)?.kernelName ?? "reason \(reason)")"
        case .runFailed(let why): "running the vCPU failed: \(why)"
        case .badInjection(let why): "device injection failed: \(why)"
        case .cannotEmulate(let what): "cannot emulate \(what)"
        }
    }
}

/// The result of handling one exit.
public enum ExitOutcome: Sendable, Equatable {
    /// Resume the guest.
    case handled
    /// End the VM normally.
    case stop(StopReason)
    /// End the VM with a diagnostic.
    case fatal(FatalExit)
}

/// Routes exits to the port and MMIO buses and decides everything else.
///
/// `dispatch` is a plain function from an exit to an outcome: it needs no KVM, so unit
/// tests drive it with hand-made exits and a fake data channel.
public struct ExitDispatcher: Sendable {
    public var ports: PortBus
    public var mmio: MMIOBus
    public var unclaimedPorts: UnclaimedAccessPolicy
    public var unclaimedMMIO: UnclaimedAccessPolicy
    /// Where `log`-policy messages go (the machine sends them to stderr).
    public var log: @Sendable (String) -> Void
    /// Hypercalls: an OUT to `hypercalls.port` runs a handler from the table.
    public var hypercalls: HypercallTable?
    /// The MSR policy for accesses KVM routes to user space.
    public var msrs: MSREmulator?
    /// Receives a line for each MSR access that raised #GP (the machine's trace).
    public var traceDenied: (@Sendable (String) -> Void)?
    /// Finishes instructions KVM failed to emulate; with none, such a failure is fatal.
    public var emulationFailureHandler: (any EmulationFailureHandler)?

    public init(
        ports: PortBus = PortBus(), mmio: MMIOBus = MMIOBus(),
        unclaimedPorts: UnclaimedAccessPolicy = .block,
        unclaimedMMIO: UnclaimedAccessPolicy = .block,
        hypercalls: HypercallTable? = nil,
        log: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.ports = ports
        self.mmio = mmio
        self.unclaimedPorts = unclaimedPorts
        self.unclaimedMMIO = unclaimedMMIO
        self.hypercalls = hypercalls
        self.log = log
    }

    /// Handles one exit of `vcpu`, which carries the exit's I/O elements, takes the MMIO
    /// read result, and gives hypercalls and injections access to registers and events.
    @inline(__always)
    public func dispatch(_ exit: VMExit, vcpu data: some VCPUContext) -> ExitOutcome {
        switch exit {
        case .io(let access):
            return handlePort(access, data: data)
        case .mmio(let access):
            return handleMMIO(access, data: data)
        case .halt:
            return .stop(.halted)
        case .shutdown:
            return .fatal(.tripleFault)
        case .internalError(let suberror, let payload):
            if suberror == 1, let emulationFailureHandler,
                let outcome = emulationFailureHandler.finish(data: payload, vcpu: data)
            {
                return outcome
            }
            return .fatal(.internalError(suberror: suberror, data: payload))
        case .failEntry(let reason, let cpu):
            return .fatal(.failedEntry(hardwareReason: reason, cpu: cpu))
        case .systemEvent(let type):
            return .stop(.systemEvent(type: type))
        case .interrupted:
            return .handled
        case .malformedIO(let port, let width, let count):
            return .fatal(
                .malformedExit("I/O exit at port 0x\(hex(port)) with width \(width) and count \(count) does not fit the run page")
            )
        case .exception:
            return .fatal(.unhandledExit(reason: ExitReason.exception.rawValue))
        case .debug:
            return .fatal(.unhandledExit(reason: ExitReason.debug.rawValue))
        case .msr(let index, let value):
            return handleMSR(index: index, value: value, vcpu: data)
        case .other(let reason, _):
            return .fatal(.unhandledExit(reason: reason))
        }
    }

    /// Applies the MSR policy; with no policy, every routed access raises #GP.
    func handleMSR(index: UInt32, value: UInt64?, vcpu: some VCPUContext) -> ExitOutcome {
        let result = msrs?.access(MSRAccess(index: index, writeValue: value, vcpu: vcpu.id)) ?? .fault
        switch result {
        case .value(let v): vcpu.completeMSR(value: v, fault: false)
        case .fault:
            vcpu.completeMSR(value: 0, fault: true)
            if let traceDenied {
                let rip = (try? vcpu.registers().rip).map { "0x\(hex($0))" } ?? "?"
                traceDenied("vcpu\(vcpu.id) \(value == nil ? "rdmsr" : "wrmsr") 0x\(hex(index)) denied (#GP) at rip=\(rip)")
            }
        }
        return .handled
    }

    /// Delivers every element of a (possibly string) port access in order.
    @inline(__always)
    func handlePort(_ access: PortAccess, data: some VCPUContext) -> ExitOutcome {
        let count = Int(access.count)
        if let hypercalls, access.port == hypercalls.port, access.isWrite {
            return hypercalls.handle(data)
        }
        guard let route = ports.route(for: access.port) else {
            if case .end(let outcome) = unclaimed(.port(access), policy: unclaimedPorts) { return outcome }
            if !access.isWrite { fillAllOnes(count, access.width, data) }
            return .handled
        }
        guard let device = route.device else {
            if !access.isWrite { fillAllOnes(count, access.width, data) }
            return .handled
        }
        let offset = access.port &- route.base
        if access.isWrite {
            let action =
                count == 1
                ? device.portWrite(port: access.port, offset: offset, width: access.width, value: data.ioElement(0))
                : device.portWrite(
                    port: access.port, offset: offset, width: access.width, count: count,
                    element: { data.ioElement($0) })
            if action != .continue { return apply(action, data) }
        } else {
            for i in 0..<count {
                data.setIOElement(i, device.portRead(port: access.port, offset: offset, width: access.width))
            }
        }
        return .handled
    }

    /// Carries out a device's request to stop or inject.
    func apply(_ action: DeviceAction, _ vcpu: some VCPUContext) -> ExitOutcome {
        switch action {
        case .continue:
            return .handled
        case .stop(let reason):
            return .stop(reason)
        case .inject(let injection):
            do throws(InjectionError) { try injection.validate() } catch {
                return .fatal(.badInjection(error.description))
            }
            do throws(KVMError) { try vcpu.inject(injection) } catch {
                return .fatal(.badInjection("\(injection): \(error)"))
            }
            return .handled
        }
    }

    @inline(__always)
    func fillAllOnes(_ count: Int, _ width: UInt8, _ data: some ExitDataChannel) {
        let ones = UInt32(truncatingIfNeeded: allOnes(width: width))
        for i in 0..<count { data.setIOElement(i, ones) }
    }

    @inline(__always)
    func handleMMIO(_ access: MMIOAccess, data: some VCPUContext) -> ExitOutcome {
        guard let index = mmio.index(for: access.address) else {
            if case .end(let outcome) = unclaimed(.mmio(access), policy: unclaimedMMIO) { return outcome }
            if !access.isWrite { data.setMMIOData(allOnes(width: access.width)) }
            return .handled
        }
        let entry = mmio.entries[index]
        let offset = access.address - entry.range.start
        if access.isWrite {
            let value = access.value & allOnes(width: access.width)
            let action = entry.device.mmioWrite(
                address: access.address, offset: offset,
                width: access.width, value: value)
            if action != .continue { return apply(action, data) }
        } else {
            data.setMMIOData(
                entry.device.mmioRead(address: access.address, offset: offset, width: access.width)
                    & allOnes(width: access.width))
        }
        return .handled
    }
}

// MARK: Unclaimed accesses

/// An access no device claimed, on either bus.
enum UnclaimedAccess {
    case port(PortAccess)
    case mmio(MMIOAccess)

    /// The line the `log` policy writes. Built only when logging.
    var logLine: String {
        switch self {
        case .port(let access):
            "unclaimed port \(access.isWrite ? "OUT" : "IN") of \(access.width) bytes at 0x\(hex(access.port)) x\(access.count)"
        case .mmio(let access):
            "unclaimed MMIO \(access.isWrite ? "write" : "read") of \(access.width) bytes at 0x\(hex(access.address))"
        }
    }

    /// Why the `stop` policy stops the VM.
    var stopReason: StopReason {
        switch self {
        case .port(let access): .unclaimedPort(port: access.port, isWrite: access.isWrite, width: access.width)
        case .mmio(let access): .unclaimedMMIO(address: access.address, isWrite: access.isWrite, width: access.width)
        }
    }
}

/// What the unclaimed-access policy makes of an access.
enum UnclaimedVerdict: Equatable {
    /// Complete the access as a blocked one: the bus fills reads with all ones; writes vanish.
    case fillAllOnes
    /// End the exit with this outcome.
    case end(ExitOutcome)
}

extension ExitDispatcher {
    /// Applies `policy` to an access no device claimed: the one place both buses decide
    /// what `block`, `log` and `stop` mean. The `block` path builds no string and
    /// allocates nothing.
    @inline(__always)
    func unclaimed(_ access: UnclaimedAccess, policy: UnclaimedAccessPolicy) -> UnclaimedVerdict {
        switch policy {
        case .block:
            return .fillAllOnes
        case .log:
            log(access.logLine)
            return .fillAllOnes
        case .stop:
            return .end(.stop(access.stopReason))
        }
    }
}
