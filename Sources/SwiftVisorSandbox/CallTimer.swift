import Glibc
import Synchronization
import VisorHost
import VisorKVM

/// A sandbox's time limit per call: armed when a call starts, disarmed when it ends. A
/// process-wide watchdog thread looks at every armed timer every `tick` and kicks a vCPU
/// whose call is past its deadline out of `KVM_RUN`: the immediate-exit flag first (for a
/// vCPU about to enter), then the kick signal to the calling thread (for one inside). The
/// call then sees `.interrupted` with `fired` set.
///
/// Arming and disarming take an uncontended lock and make no system call, so a call pays
/// nothing for its limit; the price is precision: a call may run up to one tick longer.
final class CallTimer: Sendable {
    private struct State {
        var armed = false
        var fired = false
        var deadline: UInt64 = 0
        var thread = pthread_t()
        /// The last thread that called, whose mask lets the kick signal in.
        var unblocked: pthread_t? = nil
    }
    private let state = Mutex(State())
    private let vcpu: VCPUHandle

    init(vcpu: VCPUHandle) {
        self.vcpu = vcpu
        VCPUSignals.installKickHandler()
    }

    /// Starts the limit for a call on the calling thread.
    func arm(nanoseconds: UInt64) {
        vcpu.requestImmediateExit(false)
        let now = HostIO.monotonicNanoseconds()
        let (deadline, overflow) = now.addingReportingOverflow(nanoseconds)
        let me = pthread_self()
        // A thread may have inherited a mask that blocks the kick (SwiftVisor blocks it
        // outside vCPU threads); the first call on each new thread lets it in.
        if state.withLock({ $0.unblocked.map { pthread_equal($0, me) == 0 } ?? true }) {
            VCPUSignals.unblock([VCPUSignals.kick])
            state.withLock { $0.unblocked = me }
        }
        state.withLock {
            $0.deadline = overflow ? .max : deadline
            $0.thread = me
            $0.fired = false
            $0.armed = true
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

    /// Whether the limit fired during the current call.
    var fired: Bool { state.withLock { $0.fired } }

    /// Called by the watchdog: kicks the vCPU when the call is past its deadline.
    func check(now: UInt64) {
        state.withLock {
            guard $0.armed, !$0.fired, now >= $0.deadline else { return }
            $0.fired = true
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

    func register(_ timer: CallTimer) {
        let start = state.withLock { s -> Bool in
            s.timers[ObjectIdentifier(timer)] = timer
            if s.running { return false }
            s.running = true
            return true
        }
        if start {
            let rc = HostThread.detach { [self] in loop() }
            if rc != 0 { state.withLock { $0.running = false } }
        }
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
