public import VisorCore
public import VisorDevices
public import VisorMemory
public import VisorLinux
import Glibc
import Synchronization
import VisorEmulator
import VisorKVM
import VisorLoader

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
/// `init` builds everything and loads the guest; any failure releases what was made so far
/// (each handle closes itself). Then either `run()` (blocking or async) runs the guest to its
/// end, or `start()` starts it and `pause()`, `resume()`, `stop()` and `wait()` control it.
/// A machine runs once.
public final class Machine: Sendable {
    /// Guest-physical RAM from 3 GiB up to 4 GiB is left for MMIO; RAM beyond 3 GiB
    /// continues at 4 GiB.
    public static let lowMemoryLimit: UInt64 = 3 << 30
    /// Where KVM's real-mode helper pages go (in the MMIO hole, never RAM).
    static let tssAddress: UInt64 = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000

    public let configuration: MachineConfiguration
    public let memory: GuestMemory
    /// COM1.
    public let serial: SerialPort
    let system: KVMSystem
    let vm: VMHandle
    let vcpus: [VCPUHandle]
    let dispatcher: ExitDispatcher
    let msrEmulator: MSREmulator
    let control: VMControl
    /// vCPU 0's CPUID table.
    let guestCPUID0: [CPUIDEntry]
    /// Where the Linux loader put the kernel, initrd and boot data (Linux guests only).
    public let linuxBootPlan: LinuxBootPlan?
    /// The PC platform devices of a Linux guest.
    public let platform: PCPlatform?

    public init(_ configuration: MachineConfiguration) throws(MachineError) {
        self.configuration = configuration
        let size = configuration.memorySize
        guard size > 0 else { throw .invalidMemorySize("it must be larger than zero") }
        guard size % GuestMemory.pageSize == 0 else {
            throw .invalidMemorySize("\(size) bytes is not a multiple of 4 KiB")
        }
        let hostMemory = HostIO.physicalMemory
        guard size <= hostMemory else {
            throw .invalidMemorySize("\(size >> 20) MiB is more than the host's \(hostMemory >> 20) MiB of RAM")
        }
        let count = configuration.vcpuCount
        guard count >= 1 else { throw .invalidVCPUCount("\(count): a VM needs at least one vCPU") }
        if count > 1, !configuration.interruptController {
            throw .invalidVCPUCount("\(count) vCPUs need the interrupt controller (INIT/SIPI go through local APICs)")
        }

        do { system = try KVMSystem(path: configuration.kvmPath) } catch { throw .kvm(error) }
        let limit = min(Int(max(system.check(.maxVCPUs), system.check(.nrVCPUs), 1)), MPTable.maxProcessors)
        guard count <= limit else {
            throw .invalidVCPUCount("\(count): this host's KVM allows at most \(limit) vCPUs")
        }
        do throws(KVMError) {
            vm = try system.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setIdentityMapAddress(Self.identityMapAddress)
            if configuration.interruptController {
                try vm.createInterruptController()
                try vm.createPIT()
            }
        } catch { throw .kvm(error) }

        var regions = [GuestRegion(start: 0, size: min(size, Self.lowMemoryLimit))]
        if size > Self.lowMemoryLimit {
            regions.append(GuestRegion(start: 4 << 30, size: size - Self.lowMemoryLimit))
        }
        do { memory = try GuestMemory(regions: regions) } catch { throw .memory(error) }

        let entry: EntryState
        var linuxPlan: LinuxBootPlan?
        do {
            switch configuration.guest {
            case .elf(let bytes):
                let image = try ELFImage(parsing: bytes)
                try image.load(bytes, into: memory, reservedEnd: BootLayout.reservedEnd)
                entry = try BootLayout.prepareLongMode(memory: memory, entry: image.entry,
                                                       commandLine: configuration.commandLine,
                                                       vcpuCount: UInt32(count))
            case .flat(let bytes, let address):
                entry = try FlatBinaryLoader.load(bytes, at: address, into: memory)
            case .linux(let request):
                let plan = try PCPlatform.load(request, processors: count, into: memory)
                entry = plan.entry
                linuxPlan = plan
            }
        } catch let error as LoaderError {
            throw .loader(error)
        } catch let error as MachineError {
            throw error
        } catch {
            throw .firmware("\(error)")
        }
        self.linuxBootPlan = linuxPlan
        if let linuxPlan { configuration.onLinuxBootPlan?(linuxPlan) }

        do throws(KVMError) {
            for (slot, mapping) in memory.hostMappings.enumerated() {
                try vm.setMemoryRegion(slot: UInt32(slot), guestPhysical: mapping.region.start,
                                       size: mapping.region.size, hostAddress: mapping.hostAddress)
            }
            if !configuration.msrs.rules.isEmpty {
                guard system.check(.userSpaceMSR) > 0 else { throw KVMError.missingCapability("KVM_CAP_X86_USER_SPACE_MSR") }
                guard system.check(.msrFilter) > 0 else { throw KVMError.missingCapability("KVM_CAP_X86_MSR_FILTER") }
                try vm.routeMSRsToUserSpace(configuration.msrs.routedRanges)
            }
            let supported = try system.supportedCPUID()
            guestCPUID0 = configuration.cpuid.normalize(supported, apicID: 0, vcpuCount: UInt32(count))
            var made: [VCPUHandle] = []
            for id in 0..<count {
                let vcpu = try vm.createVCPU(id: UInt32(id))
                try vcpu.setCPUID(configuration.cpuid.normalize(supported, apicID: UInt32(id), vcpuCount: UInt32(count)))
                try vcpu.setMSRs(Self.entryMSRs)
                if id == 0 {
                    try Self.apply(entry, to: vcpu)
                } else {
                    // Application processors wait for INIT and SIPI, as on hardware.
                    try vcpu.setMPState(VCPUHandle.mpStateWaitForSIPI)
                }
                made.append(vcpu)
            }
            vcpus = made
        } catch { throw .kvm(error) }

        let vm = self.vm
        var interruptLine: (@Sendable (Bool) -> Void)?
        if configuration.interruptController {
            interruptLine = { level in
                do { try vm.setIRQLine(SerialPort.com1IRQ, high: level) } catch {}
            }
        }
        let control = VMControl(vcpuCount: count)
        self.control = control
        let consoleOutput: @Sendable (UInt8) -> Void = configuration.consoleOutput ?? { byte in
            // The kick signal interrupts a blocked write; give up then if the VM is stopping.
            HostIO.write(CollectionOfOne(byte), to: 1) { control.stopRequested.load(ordering: .relaxed) }
        }
        serial = SerialPort(output: consoleOutput, interruptLine: interruptLine)
        if case .linux = configuration.guest {
            var irqLine: (@Sendable (UInt32, Bool) -> Void)?
            if configuration.interruptController {
                irqLine = { irq, level in
                    do { try vm.setIRQLine(irq, high: level) } catch {}
                }
            }
            let low = min(size, Self.lowMemoryLimit)
            platform = PCPlatform(memoryBelow4GiB: low, memoryAbove4GiB: size - low, irqLine: irqLine,
                                  cmos: configuration.batteryBackedCMOS)
        } else {
            platform = nil
        }
        msrEmulator = MSREmulator(policy: configuration.msrs)
        var ports = PortBus()
        do throws(BusError) {
            try ports.register(serial, name: "com1", range: PortRange(base: SerialPort.com1Base, count: SerialPort.portCount))
            try ports.register(DebugExitPort(), name: "debug-exit", range: PortRange(base: DebugExitPort.defaultPort, count: 1))
            for device in try platform?.portDevices ?? [] {
                try ports.register(device.device, name: device.name, range: device.range)
            }
            for extra in configuration.portDevices {
                try ports.register(extra.device, name: extra.name, range: extra.range)
            }
            for blocked in configuration.blockedPorts {
                try ports.block(blocked.range, name: blocked.name)
            }
            var mmio = MMIOBus()
            for extra in configuration.mmioDevices {
                try mmio.register(extra.device, name: extra.name, range: extra.range)
            }
            var hypercalls: HypercallTable?
            if let port = configuration.hypercallPort {
                if let owner = ports.entry(for: port) {
                    throw BusError.overlap(new: "'hypercalls' (port 0x\(String(port, radix: 16)))",
                                           existing: "'\(owner.name)' (\(owner.range))",
                                           at: "port 0x\(String(port, radix: 16))")
                }
                var table = HypercallTable.standard(memory: memory, console: consoleOutput, port: port)
                for (number, handler) in configuration.hypercallHandlers { table.register(number, handler) }
                hypercalls = table
            }
            var dispatcher = ExitDispatcher(ports: ports, mmio: mmio, unclaimedPorts: configuration.unclaimedPorts,
                                            unclaimedMMIO: configuration.unclaimedMMIO, hypercalls: hypercalls,
                                            log: Self.rateLimited(configuration.log))
            dispatcher.msrs = msrEmulator
            dispatcher.traceDenied = configuration.trace
            if configuration.emulation {
                // SMAP as the guest sees it: from the table SwiftVisor set, or from the host
                // CPU where the host's KVM passes leaf 7 through regardless (nested hosts).
                let smapBit: UInt32 = 1 << 20
                let tableSMAP = guestCPUID0.first { $0.function == 7 && $0.index == 0 }.map { $0.ebx & smapBit != 0 } ?? false
                let hostSMAP = hostCPUID(leaf: 7).ebx & smapBit != 0
                var handlers = InstructionEmulator.allHandlers
                for (mnemonic, handler) in configuration.instructionHandlers { handlers[mnemonic] = handler }
                dispatcher.emulationFailureHandler = InstructionEmulator(
                    handlers: handlers, smapAvailable: tableSMAP || hostSMAP, memory: memory, trace: configuration.trace)
            }
            self.dispatcher = dispatcher
        } catch { throw .bus(error) }
        VCPUSignals.installKickHandler()
    }

    /// The most `log`-policy messages a VM prints; a guest hammering unclaimed ports must not
    /// flood the host's log.
    public static let logLimit = 1000

    /// Passes the first `logLimit` messages to `log`, then one notice, then nothing.
    static func rateLimited(_ log: @escaping @Sendable (String) -> Void) -> @Sendable (String) -> Void {
        final class Counter: Sendable { let value = Atomic<Int>(0) }
        let count = Counter()
        return { message in
            let n = count.value.add(1, ordering: .relaxed).newValue
            if n <= logLimit {
                log(message)
            } else if n == logLimit + 1 {
                log("further unclaimed-access messages suppressed after \(logLimit)")
            }
        }
    }

    /// MSRs set at entry (`KVM_SET_MSRS`), besides EFER, which the entry state sets.
    public static let entryMSRs: [(index: UInt32, value: UInt64)] = [
        (0x10, 0),  // IA32_TIME_STAMP_COUNTER: the guest's TSC starts at 0
        (0x174, 0), (0x175, 0), (0x176, 0),  // IA32_SYSENTER_CS, _ESP, _EIP
        (0x277, 0x0007_0406_0007_0406),  // IA32_PAT: the power-on default (WB, WT, UC-, UC)
        (0x1A0, 1),  // IA32_MISC_ENABLE: fast strings
        (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR, LSTAR, CSTAR, SFMASK
        (0xC000_0102, 0),  // KERNEL_GS_BASE
    ]

    /// Sets registers for `entry`.
    static func apply(_ entry: EntryState, to vcpu: VCPUHandle) throws(KVMError) {
        var sregs = try vcpu.specialRegisters()
        switch entry.mode {
        case .real(let segment):
            let code = Segment(base: UInt64(segment) << 4, limit: 0xFFFF, selector: segment, type: 0xB)
            let data = Segment(base: UInt64(segment) << 4, limit: 0xFFFF, selector: segment, type: 0x3)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        case .long64(let root, let gdtBase, let gdtLimit, let codeSelector, let dataSelector):
            let code = Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, l: true, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, db: true, g: true)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            sregs.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            sregs.idt = DescriptorTable(base: 0, limit: 0)
            sregs.cr0 = 0x8001_0033  // PG | WP | NE | ET | MP | PE
            sregs.cr3 = root
            sregs.cr4 = 0x620  // OSXMMEXCPT | OSFXSR | PAE
            sregs.efer = 0x500  // LMA | LME
        case .protected32(let gdtBase, let gdtLimit, let codeSelector, let dataSelector):
            let code = Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, db: true, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, db: true, g: true)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            // A busy 32-bit TSS at 0 with limit 0x67, as the PVH ABI asks.
            sregs.tr = Segment(base: 0, limit: 0x67, selector: 0, type: 0xB, s: false)
            sregs.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            sregs.idt = DescriptorTable(base: 0, limit: 0)
            sregs.cr0 = 0x11  // ET | PE: paging off
            sregs.cr3 = 0
            sregs.cr4 = 0
            sregs.efer = 0
        }
        try vcpu.setSpecialRegisters(sregs)
        var regs = Registers()
        regs.rip = entry.rip
        regs.rsp = entry.rsp
        regs.rdi = entry.rdi
        regs.rsi = entry.rsi
        regs.rbx = entry.rbx
        regs.rflags = entry.rflags
        try vcpu.setRegisters(regs)
    }

    // MARK: Lifecycle

    /// Runs the guest to its end and returns how it ended. The calling thread waits while
    /// one thread per vCPU runs.
    public func run() throws(MachineError) -> RunReport {
        try control.claimStart()
        let report = runVCPUThreads()
        control.finish(report)
        return report
    }

    /// `run()` for async callers: the vCPU threads run while the caller's task is suspended.
    public func run() async throws(MachineError) -> RunReport {
        try start()
        return await wait()
    }

    /// Starts the vCPU threads and returns at once; `wait()` or `stop()` collect the report.
    public func start() throws(MachineError) {
        try control.claimStart()
        let rc = VCPUThread.start { [self] in
            control.finish(runVCPUThreads())
        }
        if rc != 0 {
            control.finish(RunReport(outcome: .fatal(.runFailed("cannot start the vCPU threads: \(errnoText(rc))"))))
            throw .cannotStartThread(errno: rc)
        }
    }

    /// Waits until the VM has stopped, and returns its report.
    public func wait() async -> RunReport {
        await control.report()
    }

    /// Stops every vCPU (each is kicked out of KVM_RUN) and returns the report. A VM that
    /// already stopped keeps its own outcome.
    @discardableResult
    public func stop() async -> RunReport {
        if control.claimStartIfIdle() {
            // Never started: there is nothing to stop, only a report to publish.
            control.record(.stopped(.requested))
            control.finish(RunReport(outcome: .stopped(.requested)))
        }
        requestStop()
        return await wait()
    }

    /// Asks the VM to stop without waiting.
    public func requestStop() {
        control.record(.stopped(.requested))
        kickAll()
    }

    /// Parks every vCPU outside KVM_RUN, and returns once all are parked (or the VM ended).
    public func pause() async {
        guard control.hasStarted else { return }
        control.pauseRequested.store(true, ordering: .sequentiallyConsistent)
        kickAll()
        while !control.allParkedOrDone {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Lets paused vCPUs run again.
    public func resume() {
        control.pauseRequested.store(false, ordering: .sequentiallyConsistent)
    }

    /// Whether every vCPU is parked by `pause()`.
    public var isPaused: Bool { control.pauseRequested.load(ordering: .relaxed) && control.allParkedOrDone }

    /// Queues a non-maskable interrupt for vCPU `index` and kicks it, so that it is
    /// delivered promptly even if the vCPU is halted.
    public func injectNMI(vcpu index: Int = 0) {
        guard vcpus.indices.contains(index) else { return }
        control.requestNMI(index)
        kick(index)
    }

    /// Feeds bytes to COM1's receive FIFO (at most 64 wait there), raising IRQ 4 if the
    /// guest enabled it. Returns how many bytes were taken.
    @discardableResult
    public func sendConsoleInput(_ bytes: [UInt8]) -> Int {
        serial.receive(bytes)
    }

    /// Whether the VM has stopped.
    public var hasStopped: Bool { control.isFinished }

    func kickAll() {
        for index in vcpus.indices { kick(index) }
    }

    /// Makes vCPU `index` leave KVM_RUN: the immediate-exit flag covers a vCPU about to
    /// enter, the signal one already inside.
    func kick(_ index: Int) {
        vcpus[index].requestImmediateExit(true)
        control.signalThread(index, VCPUSignals.kick)
    }

    /// Starts one thread per vCPU, joins them, and builds the report.
    func runVCPUThreads() -> RunReport {
        var threads: [pthread_t] = []
        for index in vcpus.indices {
            var thread = pthread_t()
            let rc = VCPUThread.create(&thread) { [self] in vcpuLoop(index) }
            guard rc == 0 else {
                control.record(.fatal(.runFailed("cannot start vCPU thread \(index): \(errnoText(rc))")))
                kickAll()
                break
            }
            control.setThread(index, thread)
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
        let perVCPU = control.statistics()
        var merged: ExitStatistics?
        if configuration.collectStatistics, var total = perVCPU.first {
            for other in perVCPU.dropFirst() { total.merge(other) }
            merged = total
        }
        return RunReport(outcome: control.outcome ?? .stopped(.requested), diagnostic: control.diagnostic,
                         statistics: merged, vcpuStatistics: configuration.collectStatistics ? perVCPU : [])
    }

    /// One vCPU's exit loop. Steady state: KVM_RUN, decode, dispatch; no allocation.
    func vcpuLoop(_ index: Int) {
        VCPUSignals.unblock([VCPUSignals.kick])
        let vcpu = vcpus[index]
        var statistics: ExitStatistics? = configuration.collectStatistics ? ExitStatistics() : nil
        defer { control.vcpuExited(index, statistics) }
        let trace = configuration.trace
        let startTime = trace == nil ? 0 : HostIO.monotonicNanoseconds()
        while true {
            // After a kick, clear its flag first and then look at the requests: a kick sent
            // after the look sets the flag again, so KVM_RUN returns at once (see kick(_:)).
            // Without a kick the flag is already clear and the exit path pays one load.
            if vcpu.immediateExitRequested {
                vcpu.requestImmediateExit(false)
                atomicMemoryFence(ordering: .sequentiallyConsistent)
            }
            if control.stopRequested.load(ordering: .sequentiallyConsistent) { return }
            if control.pauseRequested.load(ordering: .sequentiallyConsistent) {
                // Let KVM finish the access the last exit started (an IN's result into
                // RAX, RIP past the instruction) without running guest code, so that the
                // state seen while paused is an instruction boundary.
                vcpu.requestImmediateExit(true)
                _ = try? vcpu.run()
                control.park()
                continue
            }
            if control.takeNMI(index) {
                do { try vcpu.inject(.nmi) } catch {
                    return finish(.fatal(.runFailed("NMI: \(error)")), vcpu)
                }
            }
            let exit: VMExit
            do { exit = try vcpu.run() } catch {
                return finish(.fatal(.runFailed(error.description)), vcpu)
            }
            if case .interrupted = exit { continue }
            let exitTime = statistics == nil ? 0 : HostIO.monotonicNanoseconds()
            let outcome = dispatcher.dispatch(exit, vcpu: vcpu)
            if statistics != nil {
                statistics?.record(exit, nanoseconds: HostIO.monotonicNanoseconds() &- exitTime)
            }
            if let trace {
                let micros = (HostIO.monotonicNanoseconds() - startTime) / 1000
                trace("[\(micros / 1_000_000).\(pad6(micros % 1_000_000))] vcpu\(vcpu.id) \(traceDescription(exit, data: vcpu))")
            }
            switch outcome {
            case .handled: continue
            case .stop(let reason): return finish(.stopped(reason), vcpu)
            case .fatal(let fatal): return finish(.fatal(fatal), vcpu)
            }
        }
    }

    /// Records how this vCPU ended the VM (the first vCPU to end it wins) and stops the others.
    private func finish(_ outcome: RunReport.Outcome, _ vcpu: VCPUHandle) {
        if control.record(outcome), case .fatal(let fatal) = outcome {
            let state = GuestStateSnapshot(vcpu: vcpu, memory: memory)
            control.setDiagnostic("fatal: \(fatal)\n" + state.render())
        }
        kickAll()
    }

    // MARK: Inspection

    /// Instructions finished by the emulator so far, by mnemonic.
    public var emulatedInstructions: [String: UInt64] {
        (dispatcher.emulationFailureHandler as? InstructionEmulator)?.emulatedCounts ?? [:]
    }

    /// Guest RDMSR/WRMSR accesses that raised #GP so far.
    public var deniedMSRAccesses: UInt64 { msrEmulator.deniedAccesses }

    /// The whole state of vCPU `index` as one readable block (registers, segments, control
    /// and debug registers, pending events, the bytes at RIP): the dump fatal exits print.
    /// Call it from that vCPU's own thread (a handler) or when the VM is paused or stopped.
    public func stateDump(vcpu index: Int = 0) -> String {
        GuestStateSnapshot(vcpu: vcpus[index], memory: memory).render()
    }

    /// The name of the device that owns `port`, for statistics and traces.
    public func deviceName(port: UInt16) -> String? {
        if port == dispatcher.hypercalls?.port { return "hypercalls" }
        return dispatcher.ports.entry(for: port)?.name
    }

    /// The name of the MMIO device whose region holds `address`.
    public func deviceName(mmioAddress address: UInt64) -> String? {
        dispatcher.mmio.index(for: address).map { dispatcher.mmio.entries[$0].name }
    }
}

/// The state shared by a machine's vCPU threads and its controller.
final class VMControl: Sendable {
    let stopRequested = Atomic<Bool>(false)
    let pauseRequested = Atomic<Bool>(false)
    let parked = Atomic<Int>(0)
    let exited = Atomic<Int>(0)
    private let started = Atomic<Bool>(false)
    private let vcpuCount: Int
    private let state: Mutex<State>

    struct State {
        var outcome: RunReport.Outcome?
        var diagnostic: String?
        var threads: [pthread_t?]
        var nmis: Set<Int> = []
        var statistics: [ExitStatistics?]
        var report: RunReport?
        var waiters: [CheckedContinuation<RunReport, Never>] = []
    }

    init(vcpuCount: Int) {
        self.vcpuCount = vcpuCount
        state = Mutex(State(threads: Array(repeating: nil, count: vcpuCount),
                            statistics: Array(repeating: nil, count: vcpuCount)))
    }

    func claimStart() throws(MachineError) {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { throw .alreadyRan }
    }

    /// Marks the machine started if it was not; returns whether this call did.
    func claimStartIfIdle() -> Bool { !started.exchange(true, ordering: .acquiringAndReleasing) }

    var hasStarted: Bool { started.load(ordering: .acquiring) }

    /// Records the VM's outcome if none is recorded yet, and asks every vCPU to stop.
    /// Returns whether this call set it.
    @discardableResult
    func record(_ outcome: RunReport.Outcome) -> Bool {
        let first = state.withLock { state in
            guard state.outcome == nil else { return false }
            state.outcome = outcome
            return true
        }
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        return first
    }

    var outcome: RunReport.Outcome? { state.withLock { $0.outcome } }
    var diagnostic: String? { state.withLock { $0.diagnostic } }
    func setDiagnostic(_ text: String) { state.withLock { $0.diagnostic = text } }

    func setThread(_ index: Int, _ thread: pthread_t) { state.withLock { $0.threads[index] = thread } }

    /// Sends `signal` to vCPU thread `index` if it is still in its loop. The thread clears
    /// its slot (under the same lock) before it returns, so a signal is never sent to a
    /// thread that has been joined, whose handle may be stale.
    func signalThread(_ index: Int, _ signal: Int32) {
        state.withLock { state in
            if let thread = state.threads[index] { pthread_kill(thread, signal) }
        }
    }

    /// Pending NMIs of all vCPUs, so that the exit loop checks one atomic, not a lock.
    private let nmisPending = Atomic<Int>(0)

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

    /// Called by each vCPU thread as it leaves its loop.
    func vcpuExited(_ index: Int, _ statistics: ExitStatistics?) {
        state.withLock { state in
            state.statistics[index] = statistics
            state.threads[index] = nil
        }
        exited.add(1, ordering: .sequentiallyConsistent)
    }

    func statistics() -> [ExitStatistics] { state.withLock { $0.statistics.compactMap { $0 } } }

    /// Waits outside KVM_RUN while a pause is requested.
    func park() {
        parked.add(1, ordering: .sequentiallyConsistent)
        var pause = timespec(tv_sec: 0, tv_nsec: 500_000)
        while pauseRequested.load(ordering: .sequentiallyConsistent), !stopRequested.load(ordering: .sequentiallyConsistent) {
            nanosleep(&pause, nil)
        }
        parked.subtract(1, ordering: .sequentiallyConsistent)
    }

    var allParkedOrDone: Bool {
        isFinished || parked.load(ordering: .sequentiallyConsistent) >= vcpuCount - exited.load(ordering: .sequentiallyConsistent)
    }

    var isFinished: Bool { state.withLock { $0.report != nil } }

    /// Publishes the final report and wakes everyone waiting for it.
    func finish(_ report: RunReport) {
        let waiters = state.withLock { state -> [CheckedContinuation<RunReport, Never>] in
            state.report = report
            defer { state.waiters = [] }
            return state.waiters
        }
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

func pad6(_ value: UInt64) -> String {
    let s = String(value)
    return String(repeating: "0", count: max(0, 6 - s.count)) + s
}
