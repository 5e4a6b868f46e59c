public import VisorCore
public import VisorDevices
import VisorKVM
import VisorLoader
public import VisorMemory
import Synchronization

/// Everything needed to build a machine. Build one, adjust it, hand it to `Machine`.
public struct MachineConfiguration: Sendable {
    /// A guest image and how to enter it.
    public enum Guest: Sendable {
        /// A freestanding 64-bit ELF executable, entered in long mode (see the README's
        /// guest entry contract).
        case elf([UInt8])
        /// A raw binary copied to `loadAddress` and entered in 16-bit real mode there.
        case flat([UInt8], loadAddress: UInt64)
    }

    /// A port device to put on the bus besides the built-in ones.
    public struct PortRegistration: Sendable {
        public var name: String
        public var range: PortRange
        public var device: any PortDevice
        public init(name: String, range: PortRange, device: any PortDevice) {
            self.name = name
            self.range = range
            self.device = device
        }
    }

    /// An MMIO device to put on the bus.
    public struct MMIORegistration: Sendable {
        public var name: String
        public var range: MMIORange
        public var device: any MMIODevice
        public init(name: String, range: MMIORange, device: any MMIODevice) {
            self.name = name
            self.range = range
            self.device = device
        }
    }

    public var guest: Guest
    /// Guest RAM in bytes: a positive multiple of 4 KiB, at most the host's RAM.
    public var memorySize: UInt64 = 64 << 20
    /// Passed to ELF guests through the boot-info block.
    public var commandLine = ""
    public var unclaimedPorts: UnclaimedAccessPolicy = .block
    public var unclaimedMMIO: UnclaimedAccessPolicy = .block
    /// Count exits by kind and port.
    public var collectStatistics = false
    /// Receives one line per exit when set.
    public var trace: (@Sendable (String) -> Void)?
    /// Receives every byte the guest sends to COM1. Default: standard output, unbuffered.
    public var consoleOutput: @Sendable (UInt8) -> Void = { HostIO.write(CollectionOfOne($0), to: 1) }
    /// Receives warnings and `log`-policy messages. Default: standard error.
    public var log: @Sendable (String) -> Void = { HostIO.printError($0) }
    public var portDevices: [PortRegistration] = []
    /// Port ranges intercepted with no handler (reads all ones, writes dropped), exempt
    /// from the unclaimed-port policy. Named for statistics and error messages.
    public var blockedPorts: [(name: String, range: PortRange)] = []
    /// The hypercall port (see `HypercallTable`); nil turns hypercalls off, so the port is
    /// an ordinary unclaimed port.
    public var hypercallPort: UInt16? = HypercallTable.defaultPort
    /// Hypercall handlers added to (or replacing) the built-in ones, by call number.
    public var hypercallHandlers: [UInt64: HypercallHandler] = [:]
    public var mmioDevices: [MMIORegistration] = []
    /// What CPUID tells the guest (see `CPUIDPolicy`).
    public var cpuid = CPUIDPolicy()
    /// How the guest's RDMSR and WRMSR behave (see `MSRPolicy`).
    public var msrs = MSRPolicy.standard
    /// The KVM device node.
    public var kvmPath = "/dev/kvm"

    public init(guest: Guest) {
        self.guest = guest
    }
}

/// How a run ended.
public struct RunReport: Sendable {
    public enum Outcome: Sendable, Equatable {
        case stopped(StopReason)
        case fatal(FatalExit)
    }
    public var outcome: Outcome
    /// For a fatal exit: the exit and the full vCPU state, as one readable block.
    public var diagnostic: String?
    /// Exit counts, when statistics were on.
    public var statistics: ExitStatistics?

    /// The process exit status for this outcome (see the README's table).
    public var exitStatus: Int32 {
        switch outcome {
        case .stopped(let reason): reason.exitStatus
        case .fatal(let fatal): fatal.exitStatus
        }
    }
}

/// A virtual machine: KVM VM, guest memory, one vCPU, COM1 and the debug-exit port.
///
/// `init` builds everything and loads the guest; any failure releases what was made so far
/// (each handle closes itself). `run` then runs the guest to its end on a vCPU thread.
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
    let vcpu: VCPUHandle
    let dispatcher: ExitDispatcher
    let msrEmulator: MSREmulator
    private let started = Atomic<Bool>(false)

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

        do {
            system = try KVMSystem(path: configuration.kvmPath)
            vm = try system.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setIdentityMapAddress(Self.identityMapAddress)
        } catch { throw .kvm(error) }

        var regions = [GuestRegion(start: 0, size: min(size, Self.lowMemoryLimit))]
        if size > Self.lowMemoryLimit {
            regions.append(GuestRegion(start: 4 << 30, size: size - Self.lowMemoryLimit))
        }
        do { memory = try GuestMemory(regions: regions) } catch { throw .memory(error) }

        let entry: EntryState
        do {
            switch configuration.guest {
            case .elf(let bytes):
                let image = try ELFImage(parsing: bytes)
                try image.load(bytes, into: memory, reservedEnd: BootLayout.reservedEnd)
                entry = try BootLayout.prepareLongMode(memory: memory, entry: image.entry,
                                                       commandLine: configuration.commandLine)
            case .flat(let bytes, let address):
                entry = try FlatBinaryLoader.load(bytes, at: address, into: memory)
            }
        } catch { throw .loader(error) }

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
            vcpu = try vm.createVCPU(id: 0)
            try vcpu.setCPUID(configuration.cpuid.normalize(try system.supportedCPUID(), apicID: 0, vcpuCount: 1))
            try vcpu.setMSRs(Self.entryMSRs)
            try Self.apply(entry, to: vcpu)
        } catch { throw .kvm(error) }

        serial = SerialPort(output: configuration.consoleOutput)
        msrEmulator = MSREmulator(policy: configuration.msrs)
        var ports = PortBus()
        do throws(BusError) {
            try ports.register(serial, name: "com1", range: PortRange(base: SerialPort.com1Base, count: SerialPort.portCount))
            try ports.register(DebugExitPort(), name: "debug-exit", range: PortRange(base: DebugExitPort.defaultPort, count: 1))
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
                var table = HypercallTable.standard(memory: memory, console: configuration.consoleOutput, port: port)
                for (number, handler) in configuration.hypercallHandlers { table.register(number, handler) }
                hypercalls = table
            }
            var dispatcher = ExitDispatcher(ports: ports, mmio: mmio, unclaimedPorts: configuration.unclaimedPorts,
                                            unclaimedMMIO: configuration.unclaimedMMIO, hypercalls: hypercalls,
                                            log: configuration.log)
            dispatcher.msrs = msrEmulator
            dispatcher.traceDenied = configuration.trace
            self.dispatcher = dispatcher
        } catch { throw .bus(error) }
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
        case .long64(let root, let gdtBase, let gdtLimit):
            let code = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x08, type: 0xB, l: true, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, db: true, g: true)
            sregs.cs = code
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            sregs.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            sregs.idt = DescriptorTable(base: 0, limit: 0)
            sregs.cr0 = 0x8001_0033  // PG | WP | NE | ET | MP | PE
            sregs.cr3 = root
            sregs.cr4 = 0x620  // OSXMMEXCPT | OSFXSR | PAE
            sregs.efer = 0x500  // LMA | LME
        }
        try vcpu.setSpecialRegisters(sregs)
        var regs = Registers()
        regs.rip = entry.rip
        regs.rsp = entry.rsp
        regs.rdi = entry.rdi
        regs.rflags = entry.rflags
        try vcpu.setRegisters(regs)
    }

    /// Runs the guest to its end on a dedicated vCPU thread and returns how it ended.
    /// A machine runs once; a second call throws.
    public func run() throws(MachineError) -> RunReport {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { throw .alreadyRan }
        let box = ReportBox()
        let rc = VCPUThread.runAndJoin { [self] in box.report = runLoop() }
        guard rc == 0, let report = box.report else { throw .cannotStartThread(errno: rc) }
        return report
    }

    /// `run()` for async callers: the vCPU thread runs while the caller's task is suspended.
    public func run() async throws(MachineError) -> RunReport {
        let result: Result<RunReport, MachineError> = await withCheckedContinuation { continuation in
            let rc = VCPUThread.start { [self] in
                do throws(MachineError) {
                    continuation.resume(returning: .success(try run()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            if rc != 0 { continuation.resume(returning: .failure(.cannotStartThread(errno: rc))) }
        }
        return try result.get()
    }

    /// The exit loop. Steady state: KVM_RUN, decode, dispatch; no allocation.
    func runLoop() -> RunReport {
        var statistics: ExitStatistics? = configuration.collectStatistics ? ExitStatistics() : nil
        let trace = configuration.trace
        let startTime = trace == nil ? 0 : HostIO.monotonicNanoseconds()
        while true {
            let result: VCPUHandle.RunResult
            do { result = try vcpu.run() } catch {
                return report(.fatal(.runFailed(error.description)), statistics)
            }
            if case .interrupted = result { continue }
            let exitTime = statistics == nil ? 0 : HostIO.monotonicNanoseconds()
            let exit = vcpu.decodeExit()
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
            case .stop(let reason): return report(.stopped(reason), statistics)
            case .fatal(let fatal): return report(.fatal(fatal), statistics)
            }
        }
    }

    /// The whole vCPU state as one readable block (registers, segments, control and debug
    /// registers, pending events, the bytes at RIP): the dump fatal exits print. Handlers may
    /// call it from the vCPU thread while they run; after `run` returns it shows the final state.
    public func stateDump() -> String {
        GuestStateSnapshot(vcpu: vcpu, memory: memory).render()
    }

    /// Guest RDMSR/WRMSR accesses that raised #GP so far.
    public var deniedMSRAccesses: UInt64 { msrEmulator.deniedAccesses }

    /// The name of the device that owns `port`, for statistics and traces.
    public func deviceName(port: UInt16) -> String? {
        if port == dispatcher.hypercalls?.port { return "hypercalls" }
        return dispatcher.ports.entry(for: port)?.name
    }

    /// The name of the MMIO device whose region holds `address`.
    public func deviceName(mmioAddress address: UInt64) -> String? {
        dispatcher.mmio.index(for: address).map { dispatcher.mmio.entries[$0].name }
    }

    private func report(_ outcome: RunReport.Outcome, _ statistics: ExitStatistics?) -> RunReport {
        var diagnostic: String?
        if case .fatal(let fatal) = outcome {
            let state = GuestStateSnapshot(vcpu: vcpu, memory: memory)
            diagnostic = "fatal: \(fatal)\n" + state.render()
        }
        return RunReport(outcome: outcome, diagnostic: diagnostic, statistics: statistics)
    }
}

/// Carries the report from the vCPU thread to the thread that joins it. pthread_join
/// orders the write before the read, so no lock is needed.
private final class ReportBox: @unchecked Sendable {
    var report: RunReport?
}

func pad6(_ value: UInt64) -> String {
    let s = String(value)
    return String(repeating: "0", count: max(0, 6 - s.count)) + s
}
