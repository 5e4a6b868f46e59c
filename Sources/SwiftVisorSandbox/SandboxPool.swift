import Synchronization

/// Hands out initialized sandboxes of one guest to any number of threads and resets each
/// when it comes back, so every use starts from the snapshot taken after READY.
///
/// ```swift
/// let pool = try SandboxPool(guest: image, count: 4) { sandbox in
///     sandbox.register("log") { (line: String) in print(line) }
/// }
/// let n: Int = try pool.withSandbox { try $0.call("add", 2, 3) }
/// ```
///
/// When every sandbox is out, a checkout creates a new one (a cold start); the pool keeps
/// up to `capacity` idle ones.
public final class SandboxPool: Sendable {
    private let idle = Mutex<[Sandbox]>([])
    private let make: @Sendable () throws(SandboxError) -> Sandbox
    /// The most idle sandboxes the pool keeps.
    public let capacity: Int

    /// Creates `count` sandboxes of `guest` now, each prepared by `setUp` (register host
    /// functions there; the snapshot the pool resets to is the one after READY, so
    /// `setUp` should not call the guest).
    public init(
        guest: [UInt8], configuration: SandboxConfiguration = SandboxConfiguration(), count: Int, capacity: Int? = nil,
        setUp: @escaping @Sendable (Sandbox) -> Void = { _ in }
    ) throws(SandboxError) {
        guard count >= 0 else { throw .invalidConfiguration("a pool's count must not be negative") }
        self.capacity = max(capacity ?? count, 1)
        make = { () throws(SandboxError) -> Sandbox in
            let sandbox = try Sandbox(guest: guest, configuration: configuration)
            setUp(sandbox)
            return sandbox
        }
        var made: [Sandbox] = []
        for _ in 0..<count { made.append(try make()) }
        idle.withLock { $0 = made }
    }

    /// The idle sandboxes now.
    public var idleCount: Int { idle.withLock { $0.count } }

    /// Takes an idle sandbox, or creates one when none is idle. Give it back with
    /// `checkIn(_:)`.
    public func checkOut() throws(SandboxError) -> Sandbox {
        if let sandbox = idle.withLock({ $0.popLast() }) { return sandbox }
        return try make()
    }

    /// Resets `sandbox` to the state after READY (whatever snapshots its user took or
    /// restored) and keeps it for the next checkout (or drops it when the pool is full or
    /// the reset failed).
    public func checkIn(_ sandbox: Sandbox) {
        do { try sandbox.resetToInitial() } catch { return }
        idle.withLock { if $0.count < capacity { $0.append(sandbox) } }
    }

    /// Runs `body` with a sandbox from the pool, and returns it to the pool afterwards.
    public func withSandbox<R>(_ body: (Sandbox) throws(SandboxError) -> R) throws(SandboxError) -> R {
        let sandbox = try checkOut()
        defer { checkIn(sandbox) }
        return try body(sandbox)
    }
}
