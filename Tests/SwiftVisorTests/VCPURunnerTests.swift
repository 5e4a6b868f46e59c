import Glibc
import Synchronization
import Testing
import TestSupport
@testable import SwiftVisor
import VisorCore
import VisorKVM

/// The run loop and the lifecycle over fake vCPUs: no KVM, real threads and real signals.
@Suite("vCPU runner with fake vCPUs")
struct VCPURunnerTests {
    /// A runner over `vcpus` with a debug-exit-like device at port 0x501 (a write of 0x2A
    /// stops the VM with status 42), recording every kick signal it sends.
    final class Harness: Sendable {
        let vcpus: [ScriptedVCPU]
        let device = RecordingPortDevice(stopValue: 0x2A, stopStatus: 42)
        let runner: VCPURunner<ScriptedVCPU>
        let signals = Atomic<Int>(0)

        init(_ vcpus: [ScriptedVCPU], statistics: Bool = false, trace: (@Sendable (String) -> Void)? = nil) {
            self.vcpus = vcpus
            var bus = PortBus()
            try! bus.register(device, name: "exit", range: PortRange(base: 0x501, count: 1))
            let counter = Signals()
            runner = VCPURunner(
                vcpus: vcpus, dispatcher: ExitDispatcher(ports: bus), control: RunControl(vcpuCount: vcpus.count),
                collectStatistics: statistics, trace: trace,
                diagnose: { "state of vcpu\($0.id)" },
                sendSignal: { thread, signal in
                    counter.count.add(1, ordering: .relaxed)
                    pthread_kill(thread, signal)
                })
            self.counter = counter
        }
        let counter: Signals
        final class Signals: Sendable { let count = Atomic<Int>(0) }
        var signalsSent: Int { counter.count.load(ordering: .relaxed) }

        /// Waits (up to 5 s) until `condition` holds.
        func until(_ condition: () -> Bool) async -> Bool {
            for _ in 0..<5000 {
                if condition() { return true }
                try? await Task.sleep(for: .milliseconds(1))
            }
            return condition()
        }
    }

    static let exitWrite = VMExit.io(PortAccess(isWrite: true, port: 0x501, width: 1))

    @Test("each vCPU thread is confined before its first run; a confinement that fails ends the VM before guest code runs")
    func confinement() throws {
        let vcpu = ScriptedVCPU(script: [.success(Self.exitWrite)])
        vcpu.setOutValue(0x2A)
        let confined = Atomic<Int>(0)
        let runner = VCPURunner(
            vcpus: [vcpu], dispatcher: ExitDispatcher(ports: PortBus()), control: RunControl(vcpuCount: 1),
            confine: { () throws(SeccompError) in
                confined.add(1, ordering: .relaxed)
                throw SeccompError(errno: EINVAL)
            })
        let report = try runner.run()
        #expect(confined.load(ordering: .relaxed) == 1)
        #expect(vcpu.runs == 0)
        guard case .fatal(.runFailed(let message)) = report.outcome else {
            Issue.record("expected a fatal outcome, got \(report.outcome)")
            return
        }
        #expect(message.contains("seccomp"), "\(message)")
    }

    @Test("exits run through the dispatcher in order until a device stops the VM; statistics count them")
    func runsScript() throws {
        let vcpu = ScriptedVCPU(script: [.success(portOut(0x80)), .success(Self.exitWrite)])
        vcpu.setOutValue(0x2A)
        let harness = Harness([vcpu], statistics: true)
        let report = try harness.runner.run()
        #expect(report.outcome == .stopped(.guestExit(status: 42)))
        #expect(report.statistics?.total == 2)
        #expect(harness.device.calls == [.write(port: 0x501, offset: 0, width: 1, value: 0x2A)])
        #expect(harness.signalsSent == 0, "a vCPU that ends the VM itself needs no signal")
    }

    @Test("a failing KVM_RUN ends the VM as fatal, with that vCPU's state dump")
    func runFailure() throws {
        let vcpu = ScriptedVCPU(id: 0, script: [.failure(.ioctl(name: "KVM_RUN", errno: EFAULT))])
        let report = try Harness([vcpu]).runner.run()
        guard case .fatal(.runFailed(let why)) = report.outcome else {
            Issue.record("outcome \(report.outcome)")
            return
        }
        #expect(why.contains("KVM_RUN"))
        #expect(report.diagnostic?.hasSuffix("state of vcpu0") == true)
    }

    @Test("stop() kicks every spinning vCPU out and returns .requested; every thread leaves", arguments: [1, 2, 4])
    func stop(count: Int) async throws {
        let harness = Harness((0..<count).map { ScriptedVCPU(id: UInt32($0)) })
        try harness.runner.start()
        #expect(await harness.until { harness.vcpus.allSatisfy(\.isInGuest) })
        let report = await harness.runner.stop()
        #expect(report.outcome == .stopped(.requested))
        #expect(harness.runner.control.exited.load(ordering: .relaxed) == count)
        #expect(harness.vcpus.allSatisfy { !$0.isInGuest })
        #expect(harness.runner.control.phase.load(ordering: .relaxed) == .stopped)
    }

    @Test("pause parks every vCPU outside run(); none enters the guest while paused; resume lets them go on")
    func pauseResume() async throws {
        let harness = Harness([ScriptedVCPU(id: 0), ScriptedVCPU(id: 1)])
        try harness.runner.start()
        #expect(await harness.until { harness.vcpus.allSatisfy(\.isInGuest) })
        await harness.runner.pause()
        #expect(harness.runner.isPaused)
        let entries = harness.vcpus.map(\.guestEntries)
        try await Task.sleep(for: .milliseconds(20))
        #expect(harness.vcpus.map(\.guestEntries) == entries, "a paused vCPU stays out of the guest")
        #expect(harness.vcpus.allSatisfy { !$0.isInGuest })
        harness.runner.resume()
        #expect(!harness.runner.isPaused)
        #expect(await harness.until { harness.vcpus.allSatisfy(\.isInGuest) })
        #expect(zip(harness.vcpus.map(\.guestEntries), entries).allSatisfy { $0 > $1 })
        let report = await harness.runner.stop()
        #expect(report.outcome == .stopped(.requested))
    }

    @Test("a stop while paused ends the VM; the parked vCPUs leave")
    func stopWhilePaused() async throws {
        let harness = Harness([ScriptedVCPU(id: 0), ScriptedVCPU(id: 1)])
        try harness.runner.start()
        await harness.runner.pause()
        let report = await harness.runner.stop()
        #expect(report.outcome == .stopped(.requested))
        #expect(harness.runner.control.exited.load(ordering: .relaxed) == 2)
    }

    @Test("an NMI reaches exactly the vCPU it was sent to, once")
    func nmi() async throws {
        let harness = Harness([ScriptedVCPU(id: 0), ScriptedVCPU(id: 1)])
        try harness.runner.start()
        #expect(await harness.until { harness.vcpus.allSatisfy(\.isInGuest) })
        harness.runner.injectNMI(vcpu: 1)
        harness.runner.injectNMI(vcpu: 7)  // no such vCPU: ignored
        #expect(await harness.until { harness.vcpus[1].injections == [.nmi] })
        #expect(harness.vcpus[0].injections.isEmpty)
        _ = await harness.runner.stop()
        #expect(harness.vcpus[1].injections == [.nmi])
    }

    @Test("stop() before start() reports .requested at once; the machine then refuses to start")
    func stopBeforeStart() async throws {
        let harness = Harness([ScriptedVCPU()])
        await harness.runner.pause()  // not started: returns at once
        let report = await harness.runner.stop()
        #expect(report.outcome == .stopped(.requested))
        #expect(harness.vcpus[0].runs == 0)
        #expect(throws: MachineError.self) { try harness.runner.start() }
        #expect(throws: MachineError.self) { try harness.runner.run() }
    }

    /// The CLI routes SIGTERM to requestStop() while the next machine (after a guest reset)
    /// may still be under construction: its run must then end at once with .requested, as a
    /// stop during the run would, not throw.
    @Test("requestStop() before run() makes the run end at once with .requested")
    func requestStopBeforeRun() throws {
        let harness = Harness([ScriptedVCPU(id: 0), ScriptedVCPU(id: 1)])
        harness.runner.requestStop()
        let report = try harness.runner.run()
        #expect(report.outcome == .stopped(.requested))
        #expect(harness.vcpus.allSatisfy { $0.guestEntries == 0 }, "no vCPU entered the guest")
        #expect(throws: MachineError.self) { try harness.runner.run() }
    }

    @Test("a machine runs once")
    func runsOnce() throws {
        let vcpu = ScriptedVCPU(script: [.success(Self.exitWrite)])
        vcpu.setOutValue(0x2A)
        let harness = Harness([vcpu])
        _ = try harness.runner.run()
        #expect(throws: MachineError.self) { try harness.runner.run() }
    }

    /// vCPU 0 ends the VM at its first exit while the other threads are still being
    /// created: no kick, then or later, may reach a thread that has left its loop (a
    /// signal to a joined thread is undefined behaviour).
    @Test("no kick reaches a vCPU thread after it left its loop, however early it leaves")
    func noSignalAfterExit() async throws {
        for _ in 0..<50 {
            let first = ScriptedVCPU(id: 0, script: [.success(Self.exitWrite)])
            first.setOutValue(0x2A)
            let harness = Harness([first] + (1..<4).map { ScriptedVCPU(id: UInt32($0)) })
            let report = try harness.runner.run()
            #expect(report.outcome == .stopped(.guestExit(status: 42)))
            let sent = harness.signalsSent
            for index in 0..<4 {
                harness.runner.injectNMI(vcpu: index)
                harness.runner.kick(index)
            }
            harness.runner.requestStop()
            await harness.runner.pause()
            #expect(harness.signalsSent == sent, "no thread is running, so no signal may be sent")
        }
    }

    @Test("stop, pause, resume and NMIs from many tasks at once end in one clean stop")
    func races() async throws {
        for round in 0..<10 {
            let harness = Harness((0..<3).map { ScriptedVCPU(id: UInt32($0)) })
            try harness.runner.start()
            await withTaskGroup(of: Void.self) { group in
                for task in 0..<8 {
                    group.addTask {
                        for step in 0..<20 {
                            switch (task + step + round) % 4 {
                            case 0: await harness.runner.pause()
                            case 1: harness.runner.resume()
                            case 2: harness.runner.injectNMI(vcpu: step % 3)
                            default: harness.runner.kick(step % 3)
                            }
                        }
                    }
                }
                group.addTask { _ = await harness.runner.stop() }
            }
            let report = await harness.runner.wait()
            #expect(report.outcome == .stopped(.requested))
            #expect(harness.runner.control.exited.load(ordering: .relaxed) == 3)
        }
    }

    @Test("the trace gets one line per exit, naming the vCPU and the exit")
    func trace() throws {
        let lines = LogRecorder()
        let vcpu = ScriptedVCPU(id: 0, script: [.success(Self.exitWrite)])
        vcpu.setOutValue(0x2A)
        _ = try Harness([vcpu], trace: lines.sink).runner.run()
        #expect(lines.lines.count == 1)
        #expect(lines.lines.first?.hasSuffix("vcpu0 io-out port=0x501 width=1 value=0x2a") == true)
    }
}
