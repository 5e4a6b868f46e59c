import Glibc
import Synchronization
import VisorHost
import VisorKVM

/// A sandbox's time limit per call: armed when a call starts, disarmed when it ends. A
/// process-wide watchdog thread looks at every armed timer every `tick`; it notes the tick
/// at which it first sees a call (by its generation) and kicks the vCPU out of `KVM_RUN`
/// once the call is older than its limit: the immediate-exit flag (for a vCPU about to
/// enter), then the kick signal to the calling thread (for one inside). It kicks again on
/// every tick while the call stays armed past its limit, so a kick that came between two
/// `KVM_RUN`s is not the last. The call then sees `.interrupted` with `fired` set.
///
/// The vCPU runs with a signal mask (`KVM_SET_SIGNAL_MASK`) that lets the kick in whatever
/// the calling thread's own mask, so a call from any thread (a Swift concurrency worker
/// blocks every signal) can be kicked. On a thread that blocks the kick, a kick that
/// arrives outside `KVM_RUN` stays pending after it (the thread's mask is back) and would
/// end every later `KVM_RUN` at once: the run loop takes it with `takePendingKick()` on
/// every `.interrupted` exit, and runs the vCPU again unless the limit fired.
///
/// Arming and disarming take an uncontended lock and read no clock, so a call pays a few
/// nanoseconds for its limit; the price is precision: a call may run up to two ticks longer
/// than its limit (the watchdog starts counting at the first tick that sees it).
final class CallTimer: Sendable {
    private struct State {
        var armed = false
        var fired = false
        var generation: UInt64 = 0
        var limit: UInt64 = 0
        var thread = pthread_t()
        /// The watchdog's: the generation it last saw armed, and when.
        var seenGeneration: UInt64 = 0
        var seenAt: UInt64 = 0
    }
    private let state = Mutex(State())
    private let vcpu: VCPUHandle

    init(vcpu: VCPUHandle) throws(KVMError) {
        self.vcpu = vcpu
        VCPUSignals.installKickHandler()
        try vcpu.allowSignalDuringRun(VCPUSignals.kick)
    }

    /// Starts the limit for a call on the calling thread.
    func arm(nanoseconds: UInt64) {
        vcpu.requestImmediateExit(false)
        let me = pthread_self()
        state.withLock { s in
            s.generation &+= 1
            s.limit = nanoseconds
            s.thread = me
            s.fired = false
            s.armed = true
        }
    }

    /// Ends the limit; returns whether it fired. After this returns, no kick is sent for
    /// this call (the watchdog kicks only under the lock).
    @discardableResult
    func disarm() -> Bool {
        state.withLock {
            $0.armed = false
            return $0.fired
        }
    }

    private static let kickSignals = [VCPUSignals.kick]

    /// Takes a kick left pending on the calling thread (one that blocks it); no effect
    /// otherwise. A system call, made only after an `.interrupted` exit.
    func takePendingKick() {
        _ = VCPUSignals.wait(for: Self.kickSignals, milliseconds: 0)
    }

    /// Whether the limit fired during the current call.
    var fired: Bool { state.withLock { $0.fired } }

    /// Called by the watchdog every tick: kicks the vCPU when the call is past its limit,
    /// and again on every later tick until the call ends.
    func check(now: UInt64) {
        state.withLock {
            guard $0.armed else { return }
            if !$0.fired {
                if $0.seenGeneration != $0.generation {
                    $0.seenGeneration = $0.generation
                    $0.seenAt = now
                    return
                }
                guard now &- $0.seenAt >= $0.limit else { return }
                $0.fired = true
            }
            vcpu.requestImmediateExit(true)
            // The thread is inside the call (armed, and disarm waits for this lock), so it exists.
            _ = pthread_kill($0.thread, VCPUSignals.kick)
        }
    }
}

/// The watchdog thread: runs while any timer is registered.
final class Watchdog: Sendable {
    static let shared = Watchdog()
    /// How often the watchdog looks at the timers.
    static let tickNanoseconds: UInt64 = 2_000_000

    private struct State {
        var timers: [ObjectIdentifier: CallTimer] = [:]
        var running = false
    }
    private let state = Mutex(State())

    /// Adds `timer`, starting the watchdog thread when it is not running; returns the
    /// error number when the thread cannot start (the timer is not added then: a limit
    /// nobody enforces is worse than an error).
    func register(_ timer: CallTimer) -> Int32? {
        let start = state.withLock { s -> Bool in
            s.timers[ObjectIdentifier(timer)] = timer
            if s.running { return false }
            s.running = true
            return true
        }
        guard start else { return nil }
        let rc = HostThread.detach { [self] in loop() }
        guard rc != 0 else { return nil }
        state.withLock {
            $0.running = false
            $0.timers.removeValue(forKey: ObjectIdentifier(timer))
        }
        return rc
    }

    func unregister(_ timer: CallTimer) {
        _ = state.withLock { $0.timers.removeValue(forKey: ObjectIdentifier(timer)) }
    }

    private func loop() {
        // The watchdog must never take the kick itself.
        VCPUSignals.block([VCPUSignals.kick])
        while true {
            HostIO.sleep(nanoseconds: Self.tickNanoseconds)
            let now = HostIO.monotonicNanoseconds()
            let done = state.withLock { s -> Bool in
                if s.timers.isEmpty {
                    s.running = false
                    return true
                }
                for timer in s.timers.values { timer.check(now: now) }
                return false
            }
            if done { return }
        }
    }
}
