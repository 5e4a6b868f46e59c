public import VisorKVM
public import VisorMemory

/// A hypercall as the guest made it. KVM keeps VMCALL to itself, so SwiftVisor's hypercalls
/// are an OUT to a port.
///
/// The ABI: RAX holds the call number and RBX, RCX, RSI, RDI the arguments; the guest then
/// executes `out dx, al` with DX = `HypercallTable.defaultPort`. The result comes back in RAX
/// (and, for calls that return more, RBX, RCX, RSI). RDX carries the port, so no argument.
public struct HypercallRequest: Sendable, Equatable {
    public var number: UInt64
    public var arguments: [UInt64]
    public var vcpu: UInt32
}

/// What a hypercall handler answers.
public enum HypercallResult: Sendable, Equatable {
    /// Return `rax` (and optionally RBX, RCX, RSI) to the guest.
    case value(UInt64, rbx: UInt64? = nil, rcx: UInt64? = nil, rsi: UInt64? = nil)
    /// Stop the VM.
    case stop(StopReason)
    /// Deliver an event instead of returning (e.g. #UD for a bad call).
    case inject(Injection)
}

/// A hypercall handler. It runs on the vCPU thread that made the call.
public typealias HypercallHandler = @Sendable (HypercallRequest) -> HypercallResult

/// The table of hypercall handlers, by number. Unknown numbers inject #UD, as MiniVisor does
/// for unknown VMCALLs.
public struct HypercallTable: Sendable {
    /// The port guests write to make a hypercall.
    public static let defaultPort: UInt16 = 0x502

    /// The built-in calls.
    public enum Number {
        /// Identity: RAX = 0, RBX = "SwftVisr" as a little-endian u64, RCX = ABI version,
        /// RSI = the calling vCPU's ID.
        public static let identity: UInt64 = 0
        /// Console write: RBX = guest-physical address, RCX = length (at most 64 KiB).
        /// RAX = bytes written, or -EFAULT when the buffer is not entirely in guest RAM,
        /// or -EINVAL when the length is too large.
        public static let consoleWrite: UInt64 = 1
        /// Exit: RBX = status; the VM stops with guest status RBX & 0xFF.
        public static let exit: UInt64 = 2
    }

    /// "SwftVisr", little-endian.
    public static let signature: UInt64 = 0x7273_6956_7466_7753
    public static let abiVersion: UInt64 = 1
    public static let consoleWriteLimit: UInt64 = 64 * 1024
    /// Negative errno values as returned in RAX.
    public static let efault = UInt64(bitPattern: -14)
    public static let einval = UInt64(bitPattern: -22)

    public var port: UInt16
    private var handlers: [UInt64: HypercallHandler] = [:]

    public init(port: UInt16 = defaultPort) {
        self.port = port
    }

    /// The built-in calls, with console output going to `console` and memory checked
    /// against `memory`.
    public static func standard(
        memory: GuestMemory, console: @escaping ConsoleOutput,
        port: UInt16 = defaultPort
    ) -> HypercallTable {
        var table = HypercallTable(port: port)
        table.register(Number.identity) { request in
            .value(0, rbx: signature, rcx: abiVersion, rsi: UInt64(request.vcpu))
        }
        table.register(Number.consoleWrite) { request in
            let address = request.arguments[0], length = request.arguments[1]
            guard length <= consoleWriteLimit else { return .value(einval) }
            guard let bytes = try? memory.read(Int(length), at: address) else { return .value(efault) }
            console(bytes.span)
            return .value(length)
        }
        table.register(Number.exit) { request in
            .stop(.guestExit(status: UInt8(truncatingIfNeeded: request.arguments[0])))
        }
        return table
    }

    /// Adds or replaces the handler for `number`.
    public mutating func register(_ number: UInt64, _ handler: @escaping HypercallHandler) {
        handlers[number] = handler
    }

    public mutating func unregister(_ number: UInt64) {
        handlers[number] = nil
    }

    public var numbers: [UInt64] { handlers.keys.sorted() }

    /// Runs the call in the vCPU's registers and writes the result back.
    func handle(_ vcpu: some VCPUContext) -> ExitOutcome {
        do throws(KVMError) {
            var registers = try vcpu.registers()
            let request = HypercallRequest(
                number: registers.rax, arguments: [registers.rbx, registers.rcx, registers.rsi, registers.rdi],
                vcpu: vcpu.id)
            let result = handlers[request.number]?(request) ?? .inject(.invalidOpcode)
            switch result {
            case .value(let rax, let rbx, let rcx, let rsi):
                registers.rax = rax
                if let rbx { registers.rbx = rbx }
                if let rcx { registers.rcx = rcx }
                if let rsi { registers.rsi = rsi }
                try vcpu.setRegisters(registers)
                return .handled
            case .stop(let reason):
                return .stop(reason)
            case .inject(let injection):
                try vcpu.inject(injection)
                return .handled
            }
        } catch {
            return .fatal(.runFailed("hypercall: \(error)"))
        }
    }
}
