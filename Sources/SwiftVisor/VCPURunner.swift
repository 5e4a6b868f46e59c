import Glibc
import Synchronization
import VisorCore
import VisorHost
import VisorKVM

/// Runs a machine's vCPUs, one POSIX thread each, and carries out the lifecycle: start,
/// run to the end, pause, resume, stop, NMIs, and the kick that makes a vCPU leave
/// `KVM_RUN`.
///
/// It is generic over the vCPU so that unit tests drive it with fake vCPUs: the loop, the
/// lifecycle and the kick protocol (immediate-exit flag first, then the signal) are the
/// same code on KVM and in the tests.
final class VCPURunner<VCPU: RunnableVCPU>: Sendable {
    let vcpus: [VCPU]
    let dispatcher: ExitDispatcher
    let control: RunControl
    let collectStatistics: Bool
    let trace: (@Sendable (String) -> Void)?
    /// The state dump of a vCPU that hit a fatal exit (run on that vCPU's thread).
    let diagnose: @Sendable (VCPU) -> String
    /// Sends the kick signal to a vCPU thread; `pthread_kill` but in tests.
    let sendSignal: @Sendable (pthread_t, Int32) -> Void
    /// Confines each vCPU thread before its first run (`Seccomp.install(.vcpu)` on KVM);
    /// nil leaves the threads unconfined. A thrown error ends the VM before guest code runs.
    let confine: (@Sendable () throws(SeccompError) -> Void)?
    /// Each vCPU's running exit counts, by index (always on: two plain stores per exit).
    let liveExits: [LiveExitCounter]

    init(
        vcpus: [VCPU], dispatcher: ExitDispatcher, control: RunControl, collectStatistics: Bool = false,
        trace: (@Sendable (String) -> Void)? = nil,
        diagnose: @escaping @Sendable (VCPU) -> String = { _ in "" },
        sendSignal: @escaping @Sendable (pthread_t, Int32) -> Void = { _ = pthread_kill($0, $1) },
        confine: (@Sendable () throws(SeccompError) -> Void)? = nil
    ) {
        self.vcpus = vcpus
        self.dispatcher = dispatcher
        self.control = control
        self.collectStatistics = collectStatistics
        self.trace = trace
        self.diagnose = diagnose
        self.sendSignal = sendSignal
        self.confine = confine
        self.liveExits = vcpus.map { _ in LiveExitCounter() }
        VCPUSignals.installKickHandler()
    }

    // MARK: Lifecycle

    /// Runs every vCPU to the end on its own thread; the calling thread waits.
    func run() throws(MachineError) -> RunReport {
        try control.claimStart()
        let report = runThreads()
        control.finish(report)
        return report
    }

    /// Starts the vCPU threads from a helper thread and returns at once.
    func start(paused: Bool = false) throws(MachineError) {
        try control.claimStart(paused: paused)
        let rc = VCPUThread.start { [self] in
            control.finish(runThreads())
        }
        if rc != 0 {
            let outcome = RunReport.Outcome.fatal(.runFailed("cannot start the vCPU threads: \(errnoText(rc))"))
            control.record(outcome)
            control.finish(RunReport(outcome: outcome))
            throw .cannotStartThread(errno: rc)
        }
    }

    func wait() async -> RunReport { await control.report() }

    /// Every vCPU's exits so far, added up (read racily while they run).
    var liveExitCounts: LiveExitCounts {
        var total = LiveExitCounts()
        for counter in liveExits { counter.add(to: &total) }
        return total
    }

    /// Stops every vCPU and returns the report; a machine that never started gets a
    /// `.requested` report at once.
    func stop() async -> RunReport {
        if control.claimStopBeforeStart() {
            control.record(.stopped(.requested))
            control.finish(RunReport(outcome: .stopped(.requested)))
        }
        requestStop()
        await untilAllOut { control.isFinished }
        return await wait()
    }

    /// How often a stop or pause kicks the vCPUs again until they are out. A kick that lands
    /// between a vCPU's last look at the phase and a blocking `write(2)` (a console or trace
    /// line on a full pipe) is lost; the next one ends the write, which then gives up.
    static var rekickMilliseconds: Int { 2 }

    /// Records the stop and kicks every vCPU once. `stop()` also kicks again until they are
    /// out; a caller of this one that must be sure does the same (see `SignalRouter`).
    func requestStop() {
        control.record(.stopped(.requested))
        kickAll()
    }

    /// Parks every vCPU outside `KVM_RUN`; returns once all are parked or the VM ended.
    func pause() async {
        guard control.requestPause() else { return }
        kickAll()
        await untilAllOut { control.allParkedOrDone }
    }

    /// `pause()` for a thread that cannot await (the command line's signal thread).
    func pauseBlocking() {
        guard control.requestPause() else { return }
        kickAll()
        var polls = 0
        while !control.allParkedOrDone {
            HostIO.sleep(nanoseconds: 100_000)
            polls += 1
            if polls % (Self.rekickMilliseconds * 10) == 0, !control.allParkedOrDone { kickAll() }
        }
    }

    /// Waits until `done`, looking every 100 us and kicking the vCPUs again every
    /// `rekickMilliseconds`.
    private func untilAllOut(_ done: () -> Bool) async {
        var polls = 0
        while !done() {
            try? await Task.sleep(for: .microseconds(100))
            polls += 1
            if polls % (Self.rekickMilliseconds * 10) == 0, !done() { kickAll() }
        }
    }

    func resume() { control.resume() }

    var isPaused: Bool { control.phase.load(ordering: .relaxed) == .paused && control.allParkedOrDone }

    func injectNMI(vcpu index: Int) {
        guard vcpus.indices.contains(index) else { return }
        control.requestNMI(index)
        kick(index)
    }

    // MARK: Kicks

    func kickAll() {
        for index in vcpus.indices { kick(index) }
    }

    /// Makes vCPU `index` leave `KVM_RUN`: the immediate-exit flag covers a vCPU about to
    /// enter (or whose thread has not started yet), the signal one already inside.
    func kick(_ index: Int) {
        vcpus[index].requestImmediateExit(true)
        control.withRunningThread(index) { sendSignal($0, VCPUSignals.kick) }
    }

    // MARK: The threads

    /// Starts one thread per vCPU, joins them, and builds the report.
    func runThreads() -> RunReport {
        var threads: [pthread_t] = []
        for index in vcpus.indices {
            var thread = pthread_t()
            let rc = VCPUThread.create(&thread) { [self] in vcpuLoop(index) }
            guard rc == 0 else {
                control.record(.fatal(.runFailed("cannot start vCPU thread \(index): \(errnoText(rc))")))
                kickAll()
                break
            }
            threads.append(thread)
        }
        for thread in threads { VCPUThread.join(thread) }
        let perVCPU = control.statistics()
        var merged: ExitStatistics?
        if collectStatistics, var total = perVCPU.first {
            for other in perVCPU.dropFirst() { total.merge(other) }
            merged = total
        }
        return RunReport(
            outcome: control.outcome ?? .stopped(.requested), diagnostic: control.diagnostic,
            statistics: merged, vcpuStatistics: collectStatistics ? perVCPU : [])
    }

    /// One vCPU's thread: the exit loop, with every host write on this thread (console,
    /// trace, log) giving up once the machine is pausing or stopping.
    func vcpuLoop(_ index: Int) {
        let control = self.control
        WriteGiveUp.during({ control.wantsVCPUsOut }, run: { exitLoop(index) })
        // The machine is stopping. Until every other vCPU is out too, kick them again every
        // few milliseconds: the first kick is lost on one that was about to block in a
        // write(2) (see rekickMilliseconds). The last one out finds none left.
        while control.hasRunningThreads {
            HostIO.sleep(nanoseconds: UInt64(Self.rekickMilliseconds) * 1_000_000)
            kickAll()
        }
    }

    /// One vCPU's exit loop. Steady state: run, dispatch; no allocation.
    private func exitLoop(_ index: Int) {
        VCPUSignals.unblock([VCPUSignals.kick])
        control.threadStarted(index)
        let vcpu = vcpus[index]
        let live = liveExits[index]
        var statistics: ExitStatistics? = collectStatistics ? ExitStatistics() : nil
        defer { control.threadExited(index, statistics) }
        // The vCPU's filter goes on here, after set-up and before the first KVM_RUN: from
        // now on this thread runs guest-driven code (see the README's threat model).
        if let confine {
            do throws(SeccompError) { try confine() } catch {
                return finish(.fatal(.runFailed("vCPU \(index): \(error)")), vcpu, index)
            }
        }
        let trace = self.trace
        let startTime = trace == nil ? 0 : HostIO.monotonicNanoseconds()
        while true {
            // After a kick, clear its flag first and then look at the phase: a kick sent
            // after the look sets the flag again, so the next run returns at once (see
            // kick(_:)). Without a kick the flag is already clear and the exit path pays
            // one load.
            if vcpu.immediateExitRequested {
                vcpu.requestImmediateExit(false)
                atomicMemoryFence(ordering: .sequentiallyConsistent)
            }
            switch control.phase.load(ordering: .sequentiallyConsistent) {
            case .running:
                break
            case .paused:
                // Let KVM finish the access the last exit started (an IN's result into
                // RAX, RIP past the instruction) without running guest code, so that the
                // state seen while paused (and saved by a snapshot) is an instruction
                // boundary. Finishing can take one more exit (the next element of a string
                // I/O or MMIO access): it is served like any other, then KVM is asked again.
                vcpu.requestImmediateExit(true)
                finishing: while let exit = try? vcpu.run() {
                    if case .interrupted = exit { break finishing }
                    live.record(exit)
                    switch dispatcher.dispatch(exit, vcpu: vcpu) {
                    case .handled: continue finishing
                    case .stop(let reason): return finish(.stopped(reason), vcpu, index)
                    case .fatal(let fatal): return finish(.fatal(fatal), vcpu, index)
                    }
                }
                control.park()
                continue
            case .created, .stopping, .stopped:
                return
            }
            if control.takeNMI(index) {
                do { try vcpu.inject(.nmi) } catch {
                    return finish(.fatal(.runFailed("NMI: \(error)")), vcpu, index)
                }
            }
            let exit: VMExit
            do { exit = try vcpu.run() } catch {
                return finish(.fatal(.runFailed(error.description)), vcpu, index)
            }
            if case .interrupted = exit { continue }
            live.record(exit)
            let exitTime = statistics == nil ? 0 : HostIO.monotonicNanoseconds()
            let outcome = dispatcher.dispatch(exit, vcpu: vcpu)
            if statistics != nil {
                statistics?.record(exit, nanoseconds: HostIO.monotonicNanoseconds() &- exitTime)
            }
            if let trace {
                let micros = (HostIO.monotonicNanoseconds() &- startTime) / 1000
                trace("[\(micros / 1_000_000).\(pad6(micros % 1_000_000))] vcpu\(vcpu.id) \(traceDescription(exit, data: vcpu))")
            }
            switch outcome {
            case .handled: continue
            case .stop(let reason): return finish(.stopped(reason), vcpu, index)
            case .fatal(let fatal): return finish(.fatal(fatal), vcpu, index)
            }
        }
    }

    /// Records how vCPU `index` ended the VM (the first vCPU to end it wins) and kicks the
    /// others out; this one is on its way out already.
    private func finish(_ outcome: RunReport.Outcome, _ vcpu: VCPU, _ index: Int) {
        if control.record(outcome), case .fatal(let fatal) = outcome {
            control.setDiagnostic("fatal: \(fatal)\n" + diagnose(vcpu))
        }
        for other in vcpus.indices where other != index { kick(other) }
    }
}

func pad6(_ value: UInt64) -> String {
    let s = String(value)
    return String(repeating: "0", count: max(0, 6 - s.count)) + s
}
