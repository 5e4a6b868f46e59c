import Glibc
import Synchronization
import VisorCore
import VisorHost

/// Where a machine is in its life: one value, read with one atomic load per exit.
///
///     created ──start──▶ running ◀──resume── paused   (start(paused:) goes to paused)
///        │                  │ └────pause────▶ │
///        │                  ▼                 ▼
///        └──stop──────▶ stopping ◀────────────┘   (a stop, a guest exit or a fatal exit)
///                           │   a start after requestStop() runs from here: the vCPUs
///                           │   leave at once and the report says .requested
///                           │
///                           ▼ every vCPU thread has left, the report is published
///                        stopped
///
/// `stopping` and `stopped` are final: nothing leads out of them.
enum MachinePhase: UInt8, AtomicRepresentable, Sendable, CustomStringConvertible {
    case created, running, paused, stopping, stopped

    var description: String {
        switch self {
        case .created: "created"
        case .running: "running"
        case .paused: "paused"
        case .stopping: "stopping"
        case .stopped: "stopped"
        }
    }
}

/// The state a machine's vCPU threads share with its controller: the phase, the outcome,
/// each vCPU thread's slot (for kicks), pending NMIs, statistics, and the report with the
/// tasks waiting for it.
final class RunControl: Sendable {
    let phase = Atomic<MachinePhase>(.created)
    /// vCPUs parked by a pause, and vCPU threads that have left their loop.
    let parked = Atomic<Int>(0)
    let exited = Atomic<Int>(0)
    /// Pending NMIs of all vCPUs, so that the exit loop checks one atomic, not a lock.
    private let nmisPending = Atomic<Int>(0)
    private let vcpuCount: Int
    private let state: Mutex<State>

    /// A vCPU thread as kicks see it. The thread fills its own slot when it starts and
    /// empties it (under the lock kicks take) before it returns, so a kick never reaches a
    /// thread that has been joined; a kick before the thread started is covered by the
    /// immediate-exit flag, which the thread reads before its first `KVM_RUN`.
    enum ThreadSlot {
        case notStarted
        case running(pthread_t)
        case exited
    }

    struct State {
        var outcome: RunReport.Outcome?
        var diagnostic: String?
        var threads: [ThreadSlot]
        var nmis: Set<Int> = []
        var statistics: [ExitStatistics?]
        var report: RunReport?
        var waiters: [CheckedContinuation<RunReport, Never>] = []
    }

    init(vcpuCount: Int) {
        self.vcpuCount = vcpuCount
        state = Mutex(
            State(
                threads: Array(repeating: .notStarted, count: vcpuCount),
                statistics: Array(repeating: nil, count: vcpuCount)))
    }

    // MARK: Phase transitions

    /// Set by the first start or by a stop before any start: a machine runs once.
    private let startClaimed = Atomic<Bool>(false)

    /// Claims the one run: created → running. A stop requested before the start
    /// (`requestStop()`) leaves the phase at stopping, so the vCPUs leave at once and the run
    /// reports `.requested`; a machine that was stopped or ran before throws.
    /// With `paused`, created → paused instead: the vCPU threads start and park before
    /// running any guest code (a restored machine that waits for `resume()`).
    func claimStart(paused: Bool = false) throws(MachineError) {
        guard !startClaimed.exchange(true, ordering: .sequentiallyConsistent) else { throw .alreadyRan }
        _ = phase.compareExchange(
            expected: .created, desired: paused ? .paused : .running, ordering: .sequentiallyConsistent)
    }

    /// Claims the one run for a stop before start (the caller then publishes the report);
    /// returns whether this call claimed it.
    func claimStopBeforeStart() -> Bool {
        guard !startClaimed.exchange(true, ordering: .sequentiallyConsistent) else { return false }
        beginStopping()
        return true
    }

    /// running → paused; returns whether the machine is paused now.
    func requestPause() -> Bool {
        let (exchanged, current) = phase.compareExchange(
            expected: .running, desired: .paused,
            ordering: .sequentiallyConsistent)
        return exchanged || current == .paused
    }

    /// paused → running.
    func resume() {
        _ = phase.compareExchange(expected: .paused, desired: .running, ordering: .sequentiallyConsistent)
    }

    /// Any phase but stopped → stopping.
    func beginStopping() {
        var current = phase.load(ordering: .sequentiallyConsistent)
        while current != .stopping, current != .stopped {
            let (exchanged, now) = phase.compareExchange(
                expected: current, desired: .stopping,
                ordering: .sequentiallyConsistent)
            if exchanged { return }
            current = now
        }
    }

    /// Whether the vCPUs are to leave `KVM_RUN`: pausing or stopping. A host write blocked
    /// on a vCPU thread gives up then.
    var wantsVCPUsOut: Bool { phase.load(ordering: .relaxed) != .running }

    // MARK: Outcome

    /// Records the VM's outcome if none is recorded yet, and moves to `stopping`. Returns
    /// whether this call set it.
    @discardableResult
    func record(_ outcome: RunReport.Outcome) -> Bool {
        let first = state.withLock { state in
            guard state.outcome == nil else { return false }
            state.outcome = outcome
            return true
        }
        beginStopping()
        return first
    }

    var outcome: RunReport.Outcome? { state.withLock { $0.outcome } }
    var diagnostic: String? { state.withLock { $0.diagnostic } }
    func setDiagnostic(_ text: String) { state.withLock { $0.diagnostic = text } }

    // MARK: vCPU threads

    /// Called by vCPU thread `index` as it starts, before its first `KVM_RUN`.
    func threadStarted(_ index: Int) {
        let me = pthread_self()
        state.withLock { $0.threads[index] = .running(me) }
    }

    /// Called by vCPU thread `index` as it leaves its loop.
    func threadExited(_ index: Int, _ statistics: ExitStatistics?) {
        state.withLock { state in
            state.statistics[index] = statistics
            state.threads[index] = .exited
        }
        exited.add(1, ordering: .sequentiallyConsistent)
    }

    /// Calls `send` with vCPU thread `index` if that thread is in its loop, under the lock
    /// the thread takes to leave it.
    func withRunningThread(_ index: Int, _ send: (pthread_t) -> Void) {
        state.withLock { state in
            if case .running(let thread) = state.threads[index] { send(thread) }
        }
    }

    /// Whether any vCPU thread is still in its loop.
    var hasRunningThreads: Bool {
        state.withLock { state in
            state.threads.contains { if case .running = $0 { true } else { false } }
        }
    }

    func statistics() -> [ExitStatistics] { state.withLock { $0.statistics.compactMap { $0 } } }

    // MARK: NMIs

    func requestNMI(_ index: Int) {
        state.withLock { state in
            if state.nmis.insert(index).inserted { nmisPending.add(1, ordering: .sequentiallyConsistent) }
        }
    }

    func takeNMI(_ index: Int) -> Bool {
        guard nmisPending.load(ordering: .sequentiallyConsistent) > 0 else { return false }
        return state.withLock { state in
            guard state.nmis.remove(index) != nil else { return false }
            nmisPending.subtract(1, ordering: .sequentiallyConsistent)
            return true
        }
    }

    // MARK: Pausing

    /// Waits outside KVM_RUN while the machine is paused.
    func park() {
        parked.add(1, ordering: .sequentiallyConsistent)
        while phase.load(ordering: .sequentiallyConsistent) == .paused {
            HostIO.sleep(nanoseconds: 500_000)
        }
        parked.subtract(1, ordering: .sequentiallyConsistent)
    }

    var allParkedOrDone: Bool {
        isFinished || parked.load(ordering: .sequentiallyConsistent) >= vcpuCount - exited.load(ordering: .sequentiallyConsistent)
    }

    // MARK: The report

    var isFinished: Bool { state.withLock { $0.report != nil } }

    /// Publishes the final report, moves to `stopped`, and wakes everyone waiting for it.
    func finish(_ report: RunReport) {
        let waiters = state.withLock { state -> [CheckedContinuation<RunReport, Never>] in
            state.report = report
            defer { state.waiters = [] }
            return state.waiters
        }
        phase.store(.stopped, ordering: .sequentiallyConsistent)
        for waiter in waiters { waiter.resume(returning: report) }
    }

    func report() async -> RunReport {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> RunReport? in
                if let report = state.report { return report }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
