public import VisorCore
public import VisorDevices
public import VisorMemory
public import VisorLinux
import VisorEmulator
import VisorKVM

/// How a run ended.
public struct RunReport: Sendable {
    public enum Outcome: Sendable, Equatable {
        case stopped(StopReason)
        case fatal(FatalExit)
    }
    public var outcome: Outcome
    /// For a fatal exit: the exit and the full state of the vCPU that hit it.
    public var diagnostic: String?
    /// Exit counts of all vCPUs together, when statistics were on.
    public var statistics: ExitStatistics?
    /// Exit counts of each vCPU, by index, when statistics were on.
    public var vcpuStatistics: [ExitStatistics] = []

    /// A report as a run gives it (for tools and tests that build one themselves).
    public init(
        outcome: Outcome, diagnostic: String? = nil, statistics: ExitStatistics? = nil,
        vcpuStatistics: [ExitStatistics] = []
    ) {
        self.outcome = outcome
        self.diagnostic = diagnostic
        self.statistics = statistics
        self.vcpuStatistics = vcpuStatistics
    }

    /// The process exit status for this outcome (see the README's table).
    public var exitStatus: Int32 {
        switch outcome {
        case .stopped(let reason): reason.exitStatus
        case .fatal(let fatal): fatal.exitStatus
        }
    }
}

/// A virtual machine: KVM VM, guest memory, vCPUs on their own threads, the in-kernel
/// interrupt controllers, COM1, the debug-exit and hypercall ports.
///
/// `init` builds everything and loads the guest (`MachineBuilder`); any failure releases
/// what was made so far (each handle closes itself). Then either `run()` (blocking or
/// async) runs the guest to its end, or `start()` starts it and `pause()`, `resume()`,
/// `stop()` and `wait()` control it (`VCPURunner`). A machine runs once.
public final class Machine: Sendable {
    /// Guest-physical RAM from 3 GiB up to 4 GiB is left for MMIO; RAM beyond 3 GiB
    /// continues at 4 GiB.
    public static let lowMemoryLimit: UInt64 = MachineBuilder.lowMemoryLimit
    /// The most `log`-policy messages a VM prints; a guest hammering unclaimed ports must not
    /// flood the host's log.
    public static let logLimit = MachineBuilder.logLimit
    /// MSRs set at entry (`KVM_SET_MSRS`), besides EFER, which the entry state sets.
    public static var entryMSRs: [(index: UInt32, value: UInt64)] { MachineBuilder.entryMSRs }

    public let configuration: MachineConfiguration
    public let memory: GuestMemory
    /// COM1.
    public let serial: Serial16550Device
    /// Where the Linux loader put the kernel, initrd and boot data (Linux guests only).
    public let linuxBootPlan: LinuxBootPlan?
    /// The devices: a PC platform for a Linux guest, a minimal one (COM1, debug exit, ACPI)
    /// otherwise.
    public let platform: Platform
    let parts: MachineParts
    let runner: VCPURunner<VCPUHandle>

    public init(_ configuration: MachineConfiguration) throws(MachineError) {
        let control = RunControl(vcpuCount: max(configuration.vcpuCount, 0))
        let parts = try MachineBuilder(configuration: configuration).build()
        self.configuration = configuration
        self.parts = parts
        memory = parts.memory
        serial = parts.platform.serial
        linuxBootPlan = parts.linuxBootPlan
        platform = parts.platform
        let memory = parts.memory
        var confine: (@Sendable () throws(SeccompError) -> Void)?
        if configuration.seccomp {
            confine = { () throws(SeccompError) in try Seccomp.install(.vcpu) }
        }
        runner = VCPURunner(
            vcpus: parts.vcpus, dispatcher: parts.dispatcher, control: control,
            collectStatistics: configuration.collectStatistics, trace: configuration.trace,
            diagnose: { vcpu in GuestStateSnapshot(vcpu: vcpu, memory: memory).render() },
            confine: confine)
        if let ioThread = parts.ioThread {
            let seccomp = configuration.seccomp
            let log = configuration.log
            let rc = ioThread.start {
                // Fails closed: without its filter the thread serves nothing.
                guard seccomp else { return true }
                do throws(SeccompError) { try Seccomp.install(.io) } catch {
                    log("virtio I/O thread: \(error); its devices will not be served")
                    return false
                }
                return true
            }
            guard rc == 0 else { throw .cannotStartThread(errno: rc) }
        }
    }

    deinit { parts.ioThread?.stop() }

    // MARK: Lifecycle

    /// Runs the guest to its end and returns how it ended. The calling thread waits while
    /// one thread per vCPU runs.
    public func run() throws(MachineError) -> RunReport { try runner.run() }

    /// `run()` for async callers: the vCPU threads run while the caller's task is suspended.
    public func run() async throws(MachineError) -> RunReport {
        try start()
        return await wait()
    }

    /// Starts the vCPU threads and returns at once; `wait()` or `stop()` collect the report.
    /// With `paused`, the threads park before running guest code, as after `pause()`,
    /// until `resume()` (a restored machine that should not run yet).
    public func start(paused: Bool = false) throws(MachineError) { try runner.start(paused: paused) }

    /// Waits until the VM has stopped, and returns its report.
    public func wait() async -> RunReport { await runner.wait() }

    /// Stops every vCPU (each is kicked out of KVM_RUN) and returns the report. A VM that
    /// already stopped keeps its own outcome.
    @discardableResult
    public func stop() async -> RunReport { await runner.stop() }

    /// Asks the VM to stop without waiting.
    public func requestStop() { runner.requestStop() }

    /// Parks every vCPU outside KVM_RUN, and returns once all are parked (or the VM ended).
    public func pause() async { await runner.pause() }

    /// `pause()` for a thread that cannot await: blocks until every vCPU is parked.
    package func pauseBlocking() { runner.pauseBlocking() }

    /// Lets paused vCPUs run again.
    public func resume() { runner.resume() }

    /// Whether every vCPU is parked by `pause()`.
    public var isPaused: Bool { runner.isPaused }

    /// Queues a non-maskable interrupt for vCPU `index` and kicks it, so that it is
    /// delivered promptly even if the vCPU is halted.
    public func injectNMI(vcpu index: Int = 0) { runner.injectNMI(vcpu: index) }

    /// The lines of the in-kernel interrupt controller: GSIs 0-23, the IOAPIC's pins (0-15
    /// are also the 8259 PICs' IRQs).
    public static let interruptLineCount: UInt32 = UInt32(QEMUTestDevice.interruptLineCount)

    /// Raises (`high`) or lowers interrupt line `line` (a GSI, 0-23) of the in-kernel
    /// interrupt controller, as a device would (`KVM_IRQ_LINE`): an edge-triggered IOAPIC
    /// pin delivers on the rising edge, a level-triggered one while the line is high. The
    /// lines the machine's own devices use (COM1's 4, the virtio devices') are shared with
    /// them. Callable from any thread, also while the machine runs.
    public func setInterruptLine(_ line: UInt32, high: Bool) throws(InterruptLineError) {
        guard configuration.interruptController else { throw .noInterruptController }
        guard line < Self.interruptLineCount else { throw .noSuchLine(line) }
        do { try parts.vm.setIRQLine(line, high: high) } catch { throw .kvm(error) }
    }

    /// Feeds bytes to the guest's console: the virtio console's receive buffers when the
    /// machine has one (as far as the driver has made buffers available), else COM1's
    /// receive FIFO (at most 64 wait there), raising the device's interrupt if the guest
    /// enabled it. Returns how many bytes were taken; the caller keeps the rest.
    @discardableResult
    public func sendConsoleInput(_ bytes: [UInt8]) -> Int {
        if let console = parts.virtioConsole { return console.receive(bytes) }
        return serial.receive(bytes)
    }

    /// Presses Ctrl-Alt-Delete on the PC platform's i8042 keyboard. A Linux guest with the
    /// AT keyboard driver and the VT layer restarts (and with `reboot=k` resets through the
    /// i8042, which stops this machine with a reset). False when the platform has no i8042
    /// or its output queue has no room (the guest is not reading it).
    @discardableResult
    public func pressCtrlAltDelete() -> Bool {
        platform.i8042?.pressCtrlAltDelete() ?? false
    }

    /// Whether the VM has stopped.
    public var hasStopped: Bool { runner.control.isFinished }

    // MARK: Inspection

    /// Instructions finished by the emulator so far, by mnemonic.
    public var emulatedInstructions: [String: UInt64] { parts.emulator?.emulatedCounts ?? [:] }

    /// What each virtio device did so far, in configuration order.
    public var virtioStatistics: [VirtioDeviceStatistics] { parts.virtio.map(\.statistics) }

    /// Every vCPU's port and MMIO exits so far, by direction (read racily while they run).
    package var liveExitCounts: LiveExitCounts { runner.liveExitCounts }

    /// Guest RDMSR/WRMSR accesses that raised #GP so far.
    public var deniedMSRAccesses: UInt64 { parts.msrEmulator.deniedAccesses }

    /// The whole state of vCPU `index` as one readable block (registers, segments, control
    /// and debug registers, pending events, the bytes at RIP): the dump fatal exits print.
    /// Call it from that vCPU's own thread (a handler) or when the VM is paused or stopped.
    public func stateDump(vcpu index: Int = 0) -> String {
        GuestStateSnapshot(vcpu: parts.vcpus[index], memory: memory).render()
    }

    /// The name of the device that owns `port`, for statistics and traces.
    public func deviceName(port: UInt16) -> String? {
        if port == parts.dispatcher.hypercalls?.port { return "hypercalls" }
        return parts.dispatcher.ports.entry(for: port)?.name
    }

    /// The name of the MMIO device whose region holds `address`.
    public func deviceName(mmioAddress address: UInt64) -> String? {
        parts.dispatcher.mmio.index(for: address).map { parts.dispatcher.mmio.entries[$0].name }
    }
}
