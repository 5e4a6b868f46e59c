public import ArgumentParser
import Glibc
import SwiftVisor
import SwiftVisorGuests
import Synchronization
import VisorHost
import VisorKVM

struct SwiftVisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftvisor",
        abstract: "A KVM virtual machine monitor with a programmable VM-exit layer.",
        subcommands: [
            Run.self, Boot.self, Restore.self, MergeSnapshot.self, Firecracker.self, CPUID.self, ProbeEmulation.self, Guests.self,
        ],
        defaultSubcommand: Run.self)

    /// Whether this process serves the Firecracker API: started as `firecracker` (a
    /// symbolic link, as clients that spawn Firecracker by name expect) or as
    /// `swiftvisor firecracker`.
    static var startedAsFirecracker: Bool {
        CommandLine.arguments.first?.split(separator: "/").last == "firecracker"
    }

    static var servesFirecracker: Bool {
        startedAsFirecracker || CommandLine.arguments.dropFirst().first == "firecracker"
    }

    /// The arguments of the Firecracker entry point: after the program name, and after
    /// `firecracker` when that is the subcommand.
    static var firecrackerArguments: [String] {
        Array(CommandLine.arguments.dropFirst(startedAsFirecracker ? 1 : 2))
    }
}

/// Sizes like 64M, 1G, 512K, 4096 or 0x4000000, parsed by `ByteSize(parsing:)`.
extension ByteSize: ExpressibleByArgument {
    init?(argument: String) { self.init(parsing: argument) }

    /// How `--help` shows a default: in the largest unit that divides it (`512M`, not the
    /// type's name and a byte count).
    var defaultValueDescription: String { description }
}

/// A decimal or 0x-prefixed hexadecimal integer.
struct Address: ExpressibleByArgument {
    let value: UInt64
    init?(argument: String) {
        guard let v = parseInteger(argument) else { return nil }
        value = v
    }

    /// Hexadecimal, as addresses and masks are written on the command line.
    var defaultValueDescription: String { "0x" + String(value, radix: 16) }
}

func parseInteger(_ text: String) -> UInt64? {
    let lower = text.lowercased()
    if lower.hasPrefix("0x") { return UInt64(lower.dropFirst(2), radix: 16) }
    return UInt64(lower)
}

extension UnclaimedAccessPolicy: ExpressibleByArgument {}

extension CPUIDOverride: ExpressibleByArgument {
    init?(argument: String) {
        do { try self.init(parsing: argument) } catch { return nil }
    }
}

extension CPUIDPolicy.Preset: ExpressibleByArgument {}

/// `INDEX=RULE` for --msr: allow, deny, readonly:VALUE, write-ignored, const:VALUE,
/// record[:VALUE]; parsed by `MSROverride(parsing:)`, which embedders share.
extension MSROverride: ExpressibleByArgument {
    init?(argument: String) {
        do { try self.init(parsing: argument) } catch { return nil }
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// Statistics and trace options shared by `run` and `boot`.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print exit counts by kind and by port to standard error when the VM ends.")
    var stats = false

    @Option(help: ArgumentHelp("Write the statistics as JSON to this file when the VM ends.", valueName: "file"))
    var statsJSON: String?

    @Flag(help: "Print one line per exit to standard error (for boot: also the boot plan and host quirks).")
    var trace = false

    var collectsStatistics: Bool { stats || statsJSON != nil }
}

/// What the guest may reach and how the VMM confines itself, shared by `run` and `boot`.
/// The ports, unset, follow the guest: on for `run` (test guests exit and write through
/// them), off for `boot` (any Linux process with I/O privilege could use them).
struct ConfinementOptions: ParsableArguments {
    @Flag(
        inversion: .prefixedNo,
        help:
            "The debug-exit port (0x501), through which the guest ends the VM with a status it picks (default: on for run, off for boot)."
    )
    var debugExitPort: Bool?

    @Flag(inversion: .prefixedNo, help: "The hypercall port (0x502) (default: on for run, off for boot).")
    var hypercalls: Bool?

    @Flag(
        inversion: .prefixedNo,
        help:
            "QEMU's isa-debug-exit at ports 0xF4-0xF7: a write of V ends the VM with status (V << 1) | 1 (default: on for multiboot guests)."
    )
    var qemuDebugExit: Bool?

    @Flag(
        name: .customLong("fw-cfg"), inversion: .prefixedNo,
        help: "QEMU's fw_cfg interface at ports 0x510-0x511, without DMA (default: on for multiboot guests).")
    var firmwareConfig: Bool?

    @Flag(
        help:
            "QEMU's test devices: a latch at ports 0xE0-0xE3, interrupt lines at ports 0x2000-0x2017 (write 1 or 0 to raise or lower GSI n), a 64 KiB RAM-like MMIO window at 0xFF000000 (default: off)."
    )
    var qemuTestDevices = false

    @Flag(help: "Do not confine the VMM's threads (main, signal, console, vCPU) with their seccomp filters (for strace or gdb).")
    var noSeccomp = false

    /// Sets what was given on the command line and leaves the guest's defaults otherwise.
    func apply(to config: inout MachineConfiguration) {
        if let debugExitPort { config.debugExitPort = debugExitPort }
        if let hypercalls { config.hypercallPort = hypercalls ? HypercallTable.defaultPort : nil }
        if let qemuDebugExit { config.qemuDebugExitPort = qemuDebugExit }
        if let firmwareConfig { config.firmwareConfig = firmwareConfig }
        if qemuTestDevices { config.qemuTestDevices = true }
        if noSeccomp { config.seccomp = false }
    }
}

/// The virtio devices, shared by `run` and `boot`.
struct DeviceOptions: ParsableArguments {
    @Flag(help: "A virtio entropy device (virtio-rng), fed from the host's getrandom(2).")
    var rng = false

    @Option(
        name: .customLong("disk"),
        help: ArgumentHelp(
            "A virtio block device on a disk image (a file or block device, a multiple of 512 bytes); "
                + "',readonly' refuses the guest's writes, ',id=NAME' is the ID the guest reads (at most 20 bytes; "
                + "repeatable).",
            valueName: "path[,readonly][,id=NAME]"))
    var disks: [DiskArgument] = []

    @Option(
        help: ArgumentHelp(
            "The guest's console: COM1 alone, or a virtio console too, which gets standard input "
                + "(boot: the kernel's console becomes hvc0).",
            valueName: "serial|virtio"))
    var console: ConsoleKind = .serial

    @Option(
        name: .customLong("net"),
        help: ArgumentHelp(
            "A virtio network device on the TAP interface NAME (an existing one, or created with CAP_NET_ADMIN); "
                + "the guest's MAC defaults to 06:00:AC:10:00:NN, NN the device's index (repeatable).",
            valueName: "tap=NAME[,mac=MAC]"))
    var nets: [String] = []

    @Option(
        help: ArgumentHelp(
            "A virtio socket device for the guest context ID N (3 or more), listening on the Unix socket PATH, "
                + "which must not exist: a host program connects there and sends 'CONNECT <port>\\n'; a guest "
                + "connecting to host port P reaches PATH_P (Firecracker's hybrid design).",
            valueName: "cid=N,uds=PATH"))
    var vsock: [String] = []

    @Option(
        name: .customLong("virtio-poll"),
        help: ArgumentHelp(
            "Let the I/O thread poll a busy disk's queue and a network device's transmit queue for up to US "
                + "microseconds after its last request, the driver told not to notify meanwhile; the window adapts "
                + "to the traffic (default: 0, never; spends host CPU to save exits).",
            valueName: "US"))
    var virtioPoll: UInt32?

    /// Adds the devices asked for, in a fixed order: their windows and interrupts follow it
    /// (the console, the entropy device, the disks, the network devices, in the order
    /// given, then the socket device).
    func apply(to config: inout MachineConfiguration) {
        if let virtioPoll {
            guard virtioPoll <= MachineConfiguration.maximumVirtioPollMicroseconds else {
                fail(
                    "--virtio-poll \(virtioPoll) is more than \(MachineConfiguration.maximumVirtioPollMicroseconds) microseconds")
            }
            config.virtioPollMicroseconds = virtioPoll
        }
        if console == .virtio { config.virtioDevices.append(.console) }
        if rng { config.virtioDevices.append(.entropy) }
        config.virtioDevices += disks.map(\.device)
        for net in nets {
            // A bad --net is a one-line error, as a bad disk or TAP is.
            do { config.virtioDevices.append(try VirtioDeviceConfiguration(net: net)) } catch { fail(error.description) }
        }
        // A bad --vsock is a one-line error (`fail`), as a bad disk is when it is opened.
        if vsock.count > 1 { fail("--vsock is given \(vsock.count) times; a machine has at most one") }
        for text in vsock {
            do throws(MachineError) { config.virtioDevices.append(try VirtioDeviceConfiguration(vsock: text)) } catch {
                fail(error.description)
            }
        }
    }
}

/// Where the guest's console is.
enum ConsoleKind: String, ExpressibleByArgument, CaseIterable {
    case serial, virtio
}

/// `PATH[,readonly]` for --disk, parsed by `VirtioDeviceConfiguration(disk:)`.
struct DiskArgument: ExpressibleByArgument {
    let device: VirtioDeviceConfiguration
    init?(argument: String) {
        guard let device = VirtioDeviceConfiguration(disk: argument) else { return nil }
        self.device = device
    }
}

/// CPUID options shared by `run` and `cpuid`.
struct CPUIDOptions: ParsableArguments {
    @Option(
        name: .customLong("cpuid"),
        help: ArgumentHelp(
            "Override CPUID bits: LEAF[.SUBLEAF].REG.BIT[:LASTBIT]=VALUE, e.g. 1.ecx.13=0 (repeatable).",
            valueName: "override"))
    var overrides: [CPUIDOverride] = []

    @Option(
        name: .customLong("cpuid-preset"),
        help: ArgumentHelp("Apply a named CPUID preset: hide-cx16, hide-pv-ipi (repeatable).", valueName: "name"))
    var presets: [CPUIDPolicy.Preset] = []

    @Option(help: ArgumentHelp("Vendor signature of CPUID leaf 0x40000000 (1-12 ASCII characters).", valueName: "text"))
    var hypervisorSignature: String?

    @Option(
        help: ArgumentHelp(
            "XCR0 bits the guest may enable, intersected with the host's (default 0x7: x87, SSE, AVX).",
            valueName: "mask"))
    var xcr0: Address?

    func policy() throws -> CPUIDPolicy {
        var policy = CPUIDPolicy()
        policy.overrides = overrides
        policy.presets = presets
        if let xcr0 { policy.allowedXCR0 = xcr0.value }
        if let hypervisorSignature {
            do { try policy.setSignature(hypervisorSignature) } catch { throw ValidationError(error.description) }
        }
        return policy
    }
}

extension SwiftVisorCommand {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a guest: a 64-bit ELF, a multiboot image, a raw real-mode binary, or the built-in greeting guest.",
            discussion: """
                With no GUEST, runs the built-in 'hello' guest. Exit status: the guest's \
                debug-exit status (port 0x501; through QEMU's port 0xF4, (V << 1) | 1), 0 when it halts, 120 when an unclaimed access \
                stopped it, 121 triple fault, 122 KVM internal error, 123 failed VM entry, \
                124 unhandled exit, 125 KVM_RUN failure, 1 for a bad file, flag or host.
                """)

        @Argument(
            help:
                "Guest image: a 64-bit ELF file, a multiboot image (a multiboot header in its first 8 KiB), or a raw binary with --load-address."
        )
        var guest: String?

        @Option(
            name: .customLong("module"),
            help: ArgumentHelp(
                "A module for a multiboot guest: FILE, then optionally ',TEXT', its string (default: FILE) (repeatable).",
                valueName: "file[,text]"))
        var modules: [String] = []

        @Option(help: "Run a built-in guest by name instead of a file (see 'swiftvisor guests').")
        var builtin: String?

        @Option(help: "Guest RAM, e.g. 64M or 1G (a multiple of 4 KiB).")
        var memory: ByteSize = ByteSize(argument: "64M")!

        @Option(help: "Number of vCPUs; vCPU 0 starts the guest, the others wait for INIT and SIPI.")
        var cpus: Int = 1

        @Flag(help: "Run without the in-kernel interrupt controller and PIT (one vCPU; hlt then ends the VM).")
        var noIrqchip = false

        @Option(
            help:
                "Treat GUEST as a raw binary, load it at this 16-byte-aligned address below 1 MiB, and start it in 16-bit real mode."
        )
        var loadAddress: Address?

        @Option(help: "Command line passed to ELF guests in the boot-info block (multiboot guests: the multiboot information).")
        var cmdline: String = ""

        @Option(help: "Unclaimed port accesses: block (reads all ones, writes dropped), log, or stop.")
        var unclaimedPorts: UnclaimedAccessPolicy = .block

        @Option(help: "Unclaimed MMIO accesses: block, log, or stop.")
        var unclaimedMMIO: UnclaimedAccessPolicy = .block

        @OptionGroup var output: OutputOptions

        @Flag(help: "Do not finish instructions the host's KVM cannot emulate; such a failure then stops the VM.")
        var noEmulation = false

        @OptionGroup var confinement: ConfinementOptions

        @OptionGroup(title: "Virtio devices") var devices: DeviceOptions

        @OptionGroup(title: "Snapshots") var snapshots: SnapshotOptions

        @OptionGroup var cpuid: CPUIDOptions

        @Option(
            help: ArgumentHelp(
                "MSR rule: INDEX=allow|deny|readonly:V|write-ignored|const:V|record[:V] (repeatable).",
                valueName: "rule"))
        var msr: [MSROverride] = []

        func validate() throws {
            if guest != nil, builtin != nil {
                throw ValidationError("give either a GUEST file or --builtin, not both")
            }
            if let builtin, GuestImages.named(builtin) == nil {
                throw ValidationError("no built-in guest named '\(builtin)'; see 'swiftvisor guests'")
            }
            if loadAddress != nil, guest == nil {
                throw ValidationError("--load-address needs a GUEST file")
            }
            if !modules.isEmpty, loadAddress != nil {
                throw ValidationError("--module is for multiboot guests, not with --load-address")
            }
            if modules.contains(where: { $0.isEmpty || $0.hasPrefix(",") }) {
                throw ValidationError("--module needs a FILE before any ',TEXT'")
            }
            if cpus < 1 { throw ValidationError("--cpus must be at least 1") }
            if cpus > 1, noIrqchip { throw ValidationError("--cpus above 1 needs the interrupt controller; drop --no-irqchip") }
        }

        /// The `--module` files with their strings, read whole (each at most the guest's RAM).
        func readModules() throws(MachineError) -> [MultibootModule] {
            var result: [MultibootModule] = []
            for argument in modules {
                let parts = argument.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
                let path = String(parts[0])
                let text = parts.count > 1 ? String(parts[1]) : path
                result.append(MultibootModule(bytes: try HostIO.readFile(path, limit: Int(clamping: memory.bytes)), string: text))
            }
            return result
        }

        func run() throws {
            let image: MachineConfiguration.Guest
            do {
                if let guest {
                    let bytes = try HostIO.readFile(guest, limit: Int(clamping: memory.bytes))
                    if let loadAddress {
                        image = .flat(bytes, loadAddress: loadAddress.value)
                    } else if MachineConfiguration.Guest.isMultiboot(bytes) {
                        image = .multiboot(bytes, modules: try readModules())
                    } else {
                        image = .elf(bytes)
                    }
                } else {
                    let name = builtin ?? GuestImages.defaultName
                    let bytes = GuestImages.named(name)!
                    switch GuestImages.format(of: bytes) {
                    case .elf64: image = .elf(bytes)
                    case .multiboot: image = .multiboot(bytes, modules: try readModules())
                    case .realModeFlat: image = .flat(bytes, loadAddress: 0x7C00)
                    }
                }
            } catch {
                fail(error.description)
            }
            if !modules.isEmpty {
                guard case .multiboot = image else {
                    fail("--module is for multiboot guests; this guest has no multiboot header")
                }
            }
            var config = MachineConfiguration(guest: image)
            config.memorySize = memory.bytes
            config.vcpuCount = cpus
            config.interruptController = !noIrqchip
            config.commandLine = cmdline
            config.unclaimedPorts = unclaimedPorts
            config.unclaimedMMIO = unclaimedMMIO
            config.collectStatistics = output.collectsStatistics
            confinement.apply(to: &config)
            devices.apply(to: &config)
            config.emulation = !noEmulation
            do { config.cpuid = try cpuid.policy() } catch { fail("\(error)") }
            for rule in msr { config.msrs.apply(rule) }
            if output.trace { config.trace = { HostIO.printError($0) } }
            snapshots.apply(to: &config)
            // A bad TAP is reported before anything else is built.
            do { try config.openTaps() } catch { fail(error.description) }

            let report = try runMachine(config, output: output, snapshot: snapshots.handler())
            if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
        }
    }

    struct CPUID: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the CPUID table a guest would see, and how it differs from the host's (KVM_GET_SUPPORTED_CPUID).")

        @Option(help: "Number of vCPUs the table is for.")
        var cpus: UInt32 = 1

        @Option(help: "Which vCPU (APIC ID) to show.")
        var vcpu: UInt32 = 0

        @OptionGroup var cpuid: CPUIDOptions

        @Flag(help: "Print KVM's supported table itself, one entry per line (function index flags eax ebx ecx edx, hex).")
        var rawHost = false

        func validate() throws {
            guard cpus >= 1, cpus <= 255 else { throw ValidationError("--cpus must be 1 to 255") }
            guard vcpu < cpus else { throw ValidationError("--vcpu must be below --cpus") }
        }

        func run() throws {
            let policy = try cpuid.policy()
            let host: [CPUIDEntry]
            do { host = try KVMSystem().supportedCPUID() } catch { fail(error.description) }
            if rawHost {
                for e in host {
                    print(
                        [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]
                            .map { String($0, radix: 16) }.joined(separator: " "))
                }
                return
            }
            let guest = policy.normalize(host, apicID: vcpu, vcpuCount: cpus)
            print(CPUIDTable.render(host: host, guest: guest))
            // What `swiftvisor boot` adds for a Linux guest on this host, found by a probe guest.
            print("")
            do {
                let quirks = try HostQuirks.probe(policy: policy)
                quirks.report.forEach { print($0) }
                let options = quirks.commandLineOptions
                print("linux command line adds: " + (options.isEmpty ? "nothing" : options.joined(separator: " ")))
            } catch {
                fail(error.description)
            }
        }
    }

    struct Guests: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the built-in guests.")
        func run() {
            for name in GuestImages.names {
                print("\(name)\t\(GuestImages.summary(of: name) ?? "")")
            }
        }
    }
}

/// What a command keeps across the machines it runs in turn (a guest that resets and boots
/// again): the signal router, the statistics file, and the main thread's confinement.
final class CommandSession {
    let signals: SignalRouter
    private let statisticsFile: (path: String, file: HostOutputFile)?
    private let confines: Bool
    /// The main thread's filter: with a vsock device, the one that also holds its sockets.
    private let mainRole: Seccomp.Role
    private var mainThreadConfined = false

    /// Opens `output`'s statistics file now, so that a bad path fails before any guest runs
    /// and the file can be rewritten once `open` is off the main thread's allowlist.
    init(_ config: MachineConfiguration, output: OutputOptions) {
        confines = config.seccomp
        let hasVsock = config.virtioDevices.contains { if case .vsock = $0 { true } else { false } }
        mainRole = hasVsock ? .mainWithVsock : .main
        do {
            statisticsFile = try output.statsJSON.map { path throws(MachineError) in (path, try HostIO.outputFile(path)) }
        } catch {
            fail(error.description)
        }
        signals = SignalRouter(confine: config.seccomp)
    }

    /// Installs the main thread's seccomp filter, once, after the first machine is built
    /// (its file reads and the KVM probe are done): later machines are built through the
    /// open /dev/kvm, and every thread started from now on inherits the filter.
    func confineMainThread() {
        guard confines, !mainThreadConfined else { return }
        do throws(SeccompError) { try Seccomp.install(mainRole) } catch { fail(error.description) }
        mainThreadConfined = true
    }

    /// Replaces the statistics file's contents with `json`.
    func writeStatistics(_ json: String) {
        guard let statisticsFile else { return }
        do { try statisticsFile.file.replaceContents(Array(json.utf8)) } catch {
            fail(MachineError.cannotWriteFile(path: statisticsFile.path, reason: error.reason).description)
        }
    }
}

/// Runs `config` with the terminal as COM1, Ctrl-C/SIGTERM as a clean stop and SIGUSR1 as an
/// NMI, prints a diagnostic and the statistics, and returns the report. Exits the process
/// with 128+n when a signal stopped the VM, or 1 when the machine cannot be built.
///
/// `session` carries what outlives one machine; a command that runs several machines in
/// turn (a guest that reboots) passes the same session each time.
@discardableResult
func runMachine(
    _ config: MachineConfiguration, output: OutputOptions,
    session: CommandSession? = nil, snapshot: (@Sendable (Machine) -> Void)? = nil, ran: ((Machine) -> Void)? = nil
) throws -> RunReport {
    let session = session ?? CommandSession(config, output: output)
    let signals = session.signals
    if let snapshot { signals.snapshotHandler.withLock { $0 = snapshot } }
    let report: RunReport
    let machine: Machine
    do throws(MachineError) {
        machine = try Machine(config)
        recordListeningPaths(config)
        session.confineMainThread()
        signals.attach(machine)
        report = try machine.run()
        signals.detach()
        ran?(machine)
    } catch {
        signals.detach()
        // A signal that came while the machine was being built stops it before it runs
        // (run() then finds it already stopped): report the signal, not that error.
        if let signal = signals.interruptedBy {
            HostIO.printError("swiftvisor: stopped by signal \(signal)")
            throw ExitCode(128 + signal)
        }
        fail(error.description)
    }
    // A signal stopped it: the statistics still come (below), then the signal's status.
    let interruptedBy = signals.interruptedBy
    if let diagnostic = report.diagnostic { HostIO.printError(diagnostic) }
    if interruptedBy == nil, case .stopped(let reason) = report.outcome, reason != .halted,
        reason != .guestExit(status: 0)
    {
        HostIO.printError("swiftvisor: \(reason)")
    }
    if let statistics = report.statistics {
        let portName: (UInt16) -> String? = { machine.deviceName(port: $0) }
        let mmioName: (UInt64) -> String? = { machine.deviceName(mmioAddress: $0) }
        if output.stats {
            HostIO.printError(statistics.render(portNames: portName, mmioNames: mmioName))
            HostIO.printError("msr accesses denied (#GP): \(machine.deniedMSRAccesses)")
            for device in machine.virtioStatistics { HostIO.printError(device.summary) }
            let emulated = machine.emulatedInstructions
            if !emulated.isEmpty {
                HostIO.printError("instructions emulated:")
                for (mnemonic, count) in emulated.sorted(by: { $0.key < $1.key }) {
                    HostIO.printError(
                        "  " + mnemonic + String(repeating: " ", count: max(1, 17 - mnemonic.count)) + String(count))
                }
            }
        }
        if output.statsJSON != nil {
            session.writeStatistics(statistics.renderJSON(portNames: portName, mmioNames: mmioName) + "\n")
        }
    }
    if let signal = interruptedBy {
        HostIO.printError("swiftvisor: stopped by signal \(signal)")
        throw ExitCode(128 + signal)
    }
    return report
}

/// Routes SIGINT and SIGTERM to a clean stop of the running machine, SIGUSR1 to an NMI
/// for its vCPU 0 and SIGHUP to a snapshot (with the snapshot options), from one thread
/// that waits for them; and feeds the terminal to its COM1.
/// A second SIGINT or SIGTERM, for a VM that does not stop (say, a vCPU blocked writing to a
/// full pipe), restores the terminal and exits at once.
final class SignalRouter: Sendable {
    static let controlSignals = [SIGINT, SIGTERM, SIGUSR1, SIGHUP]
    /// What SIGHUP does to the attached machine (nil: nothing).
    let snapshotHandler = Mutex<(@Sendable (Machine) -> Void)?>(nil)
    private struct State {
        var machine: Machine?
        var interruptedBy: Int32?
    }
    private let state = Mutex(State())
    let console = ConsoleInput()

    /// With `confine`, the signal thread runs under the main thread's seccomp filter.
    /// `unattached`, if given, is called for a SIGINT or SIGTERM that comes while no machine
    /// is attached (the control API before `InstanceStart`): it ends the process.
    init(confine: Bool, unattached: (@Sendable (Int32) -> Void)? = nil) {
        // Block the signals everywhere first, so every thread created later inherits the
        // mask and only the waiting thread receives them.
        VCPUSignals.block(Self.controlSignals)
        // A closed standard output must not kill the VMM: writes then fail with EPIPE,
        // which the console writer ignores.
        signal(SIGPIPE, SIG_IGN)
        _ = HostThread.detach { [self] in
            if confine {
                do throws(SeccompError) { try Seccomp.install(.main) } catch { fail(error.description) }
            }
            while true {
                // While a stop is under way, kick the vCPUs again every few milliseconds: a
                // kick that came just before a vCPU blocked writing to a full pipe is lost.
                let stopping = state.withLock { $0.interruptedBy != nil ? $0.machine : nil }
                let signal: Int32
                if let stopping {
                    guard let received = VCPUSignals.wait(for: Self.controlSignals, milliseconds: 2) else {
                        if !stopping.hasStopped { stopping.requestStop() }
                        continue
                    }
                    signal = received
                } else {
                    signal = VCPUSignals.wait(for: Self.controlSignals)
                }
                // SIGHUP takes a snapshot when the snapshot options are given, and is a
                // stop like SIGTERM otherwise (a closed terminal still ends the VMM).
                let snapshot = signal == SIGHUP ? snapshotHandler.withLock { $0 } : nil
                let (machine, again) = state.withLock { state in
                    let again = state.interruptedBy != nil
                    if signal != SIGUSR1, snapshot == nil, !again { state.interruptedBy = signal }
                    return (state.machine, again)
                }
                if signal == SIGUSR1 {
                    machine?.injectNMI(vcpu: 0)
                    continue
                }
                if let snapshot {
                    if let machine { snapshot(machine) }
                    continue
                }
                if again {
                    console.restoreTerminal()
                    HostIO.printError("swiftvisor: stopped by signal \(signal) (forced)")
                    _exit(128 + signal)
                }
                if machine == nil, let unattached {
                    console.restoreTerminal()
                    unattached(signal)
                }
                machine?.requestStop()
            }
        }
    }

    /// Makes `machine` the one signals and terminal input go to.
    func attach(_ machine: Machine) {
        let stopped = state.withLock { state in
            state.machine = machine
            return state.interruptedBy != nil
        }
        if stopped { machine.requestStop() }
        console.start(machine: machine)
    }

    /// Stops sending input to the machine and restores the terminal.
    func detach() {
        console.detach()
        console.restoreTerminal()
        state.withLock { $0.machine = nil }
    }

    /// The signal that stopped a machine, if one did.
    var interruptedBy: Int32? { state.withLock { $0.interruptedBy } }
}

/// Prints a one-line error and exits with status 1.
/// Socket paths this command listens on (a vsock device's), which `fail` removes: its exit
/// runs no deinitializer, which would otherwise remove them.
let listeningPaths = Mutex<[String]>([])

/// Records the vsock socket path of `config` once its listener exists (not before: a path
/// that existed already is not ours to remove).
func recordListeningPaths(_ config: MachineConfiguration) {
    for device in config.virtioDevices {
        if case .vsock(_, let path) = device { listeningPaths.withLock { $0.append(path) } }
    }
}

func fail(_ message: String) -> Never {
    for path in listeningPaths.withLock({ $0 }) {
        // SAFETY: the path is passed as a NUL-terminated copy that lives for the call.
        _ = unsafe unlink(path)
    }
    HostIO.printError("swiftvisor: error: \(message)")
    SwiftVisorCommand.exit(withError: ExitCode(1))
}
