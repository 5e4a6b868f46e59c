/// How big a sandbox is and what a call may use.
public struct SandboxConfiguration: Sendable {
    /// Guest RAM in bytes: a multiple of 4096, from 8 MiB to 1 GiB. Pages the guest never
    /// touches cost no host memory.
    public var memorySize: Int = 8 << 20
    /// The guest's stack, at the top of RAM, below it an unmapped guard page.
    public var stackSize: Int = 256 << 10
    /// The call area (ABI.md): a 64-byte header, then the input and output buffers, half
    /// each. Bounds the size of a call's arguments and results.
    public var callAreaSize: Int = 64 << 10
    /// The longest a call may run (including its host calls), or nil for no limit. A zero
    /// or negative limit is an invalid configuration (`Sandbox.init` throws).
    public var timeLimit: Duration? = .seconds(1)
    /// The most bytes a call may print.
    public var outputLimit: Int = 64 << 10
    /// Receives what the guest prints (each PRINT's text). Nil drops it.
    public var output: (@Sendable (String) -> Void)? = nil

    public init() {}

    /// The defaults with the given fields changed.
    public init(
        memorySize: Int = 8 << 20, stackSize: Int = 256 << 10, callAreaSize: Int = 64 << 10,
        timeLimit: Duration? = .seconds(1), outputLimit: Int = 64 << 10, output: (@Sendable (String) -> Void)? = nil
    ) {
        self.memorySize = memorySize
        self.stackSize = stackSize
        self.callAreaSize = callAreaSize
        self.timeLimit = timeLimit
        self.outputLimit = outputLimit
        self.output = output
    }

    /// The time limit in nanoseconds (nil for none), rounded up to 1 ns and capped at
    /// `UInt64.max`; a zero or negative limit is refused.
    func timeLimitNanoseconds() throws(SandboxError) -> UInt64? {
        guard let timeLimit else { return nil }
        let (seconds, attoseconds) = timeLimit.components
        guard seconds >= 0, attoseconds >= 0, seconds > 0 || attoseconds > 0 else {
            throw .invalidConfiguration("the time limit \(timeLimit) must be positive (nil for none)")
        }
        let (ns, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        let (total, overflow2) = ns.addingReportingOverflow(UInt64((attoseconds + 999_999_999) / 1_000_000_000))
        return overflow || overflow2 ? .max : total
    }
}
