public import ArgumentParser
import SwiftVisor
import VisorAPI

extension LinuxBootProtocol: ExpressibleByArgument {}

/// What a guest's reset request (i8042 0xFE, the ACPI reset register, port 0xCF9) does.
enum RebootAction: String, ExpressibleByArgument, CaseIterable {
    /// The VM ends with status 0.
    case exit
    /// A new VM boots the same kernel, initrd and command line.
    case restart
}

extension SwiftVisorCommand {
    struct Boot: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Boot a Linux kernel: a bzImage or an x86-64 vmlinux, through the 64-bit boot protocol or PVH.",
            discussion: """
                The console is COM1 on the terminal, with input. The VM ends with status 0 when \
                the kernel powers off through ACPI (or resets, with --on-reboot exit). Before \
                booting, a tiny probe guest finds which CPU features this host's KVM cannot \
                hide or run for a kernel; --trace lists what it found and what it added to the \
                command line.
                """)

        @Option(help: "The kernel: a bzImage or an uncompressed x86-64 ELF vmlinux (detected by content).")
        var kernel: String?

        @Option(
            help: ArgumentHelp(
                "Boot what a Firecracker configuration file describes (the JSON of GET /vm/config): kernel, "
                    + "command line, vCPUs, memory, drives, network interfaces, vsock, entropy. Instead of --kernel.",
                valueName: "file"))
        var configFile: String?

        @Option(help: "An initial RAM disk (initramfs) to load.")
        var initrd: String?

        @Option(help: "Appended to the default command line (\(LinuxDefaults.commandLine)).")
        var cmdline: String?

        @Option(help: "Replaces the whole command line; nothing is added, not even the host-quirk options.")
        var cmdlineReplace: String?

        @Option(help: "Guest RAM, e.g. 512M or 4G; above 3 GiB, RAM continues at 4 GiB.")
        var memory: ByteSize = ByteSize(argument: "512M")!

        @Option(help: "Number of vCPUs.")
        var cpus: Int = 1

        @Option(help: "How the kernel is entered: linux64 (the 64-bit boot protocol) or pvh (needs the kernel's Xen PVH note).")
        var bootProtocol: LinuxBootProtocol = .linux64

        @Flag(help: "Boot a bzImage's own decompressor instead of decompressing its payload on the host.")
        var noHostDecompress = false

        @Option(help: "What a reset request does: exit (the VM ends with status 0) or restart (boot again).")
        var onReboot: RebootAction = .exit

        @OptionGroup var output: OutputOptions

        @OptionGroup var confinement: ConfinementOptions

        @OptionGroup(title: "Virtio devices") var devices: DeviceOptions

        @OptionGroup(title: "Snapshots") var snapshots: SnapshotOptions

        @OptionGroup var cpuid: CPUIDOptions

        func validate() throws {
            if (kernel == nil) == (configFile == nil) {
                throw ValidationError("give either --kernel or --config-file")
            }
            if configFile != nil, initrd != nil || cmdline != nil || cmdlineReplace != nil {
                throw ValidationError("--config-file names the kernel, initrd and command line; drop --initrd and --cmdline")
            }
            if cpus < 1 { throw ValidationError("--cpus must be at least 1") }
            if cmdline != nil, cmdlineReplace != nil {
                throw ValidationError("give either --cmdline (appended) or --cmdline-replace, not both")
            }
        }

        func run() throws {
            // A configuration file replaces --kernel, --initrd, --cmdline, --memory, --cpus and
            // the devices; the other options still apply.
            let resources = configFile.map(readConfigurationFile)
            let kernelPath = resources?.bootSource?.kernelImagePath ?? kernel ?? ""
            let initrdPath = resources.map { $0.bootSource?.initrdPath } ?? initrd
            let memoryBytes = resources.map { $0.machine.memSizeMiB << 20 } ?? memory.bytes
            let kernelBytes: [UInt8]
            var initrdBytes: [UInt8]?
            do {
                kernelBytes = try HostIO.readFile(kernelPath, limit: LinuxDefaults.kernelFileLimit)
                if let initrdPath { initrdBytes = try HostIO.readFile(initrdPath, limit: Int(clamping: memoryBytes)) }
            } catch {
                fail(error.description)
            }
            let basePolicy: CPUIDPolicy
            do { basePolicy = try cpuid.policy() } catch { fail("\(error)") }
            let quirks: HostQuirks
            do { quirks = try HostQuirks.probe(policy: basePolicy) } catch { fail(error.description) }
            let log: @Sendable (String) -> Void = { HostIO.printError($0) }
            if output.trace { quirks.report.forEach(log) }

            let commandLine =
                resources.map { MachineLauncher.commandLine($0, quirks: quirks.commandLineOptions) }
                ?? cmdlineReplace
                ?? LinuxDefaults.commandLine(
                    quirks: quirks, appending: cmdline, virtioConsole: devices.console == .virtio)
            var request = LinuxBootRequest(
                kernel: kernelBytes, initrd: initrdBytes, commandLine: commandLine,
                bootProtocol: bootProtocol, hostDecompression: !noHostDecompress)
            // Decoded once, not again for each boot after a guest reset.
            let preparing = HostIO.monotonicNanoseconds()
            do { try request.prepareKernel() } catch { fail(error.description) }
            if output.trace {
                let milliseconds = Double(HostIO.monotonicNanoseconds() - preparing) / 1e6
                log("linux: kernel prepared (payload decompressed, if on the host) in \(formatMilliseconds(milliseconds)) ms")
            }
            var config = MachineConfiguration(guest: .linux(request))
            config.memorySize = memoryBytes
            config.vcpuCount = resources?.machine.vcpuCount ?? cpus
            if let resources {
                config.virtioDevices =
                    MachineLauncher.configuration(
                        resources, request: request, cpuid: CPUIDPolicy(), seccomp: true
                    ).virtioDevices
            }
            config.cpuid = quirks.linuxPolicy(from: basePolicy)
            config.collectStatistics = output.collectsStatistics
            confinement.apply(to: &config)
            devices.apply(to: &config)
            snapshots.apply(to: &config)
            if output.trace {
                config.trace = log
                config.onLinuxBootPlan = { plan in plan.summary.forEach(log) }
            }

            // Each boot after a guest reset is built under the main thread's seccomp filter,
            // which refuses open and the TAP ioctls: the disks and TAPs are opened once, now.
            do {
                try config.openDisks()
                try config.openTaps()
            } catch { fail(error.description) }
            // And the vsock device listens once, on one socket for every boot.
            do { try config.openVsock() } catch { fail(error.description) }
            recordListeningPaths(config)
            let session = CommandSession(config, output: output)
            let snapshot = snapshots.handler()
            var boots = 0
            while true {
                boots += 1
                let report = try runMachine(config, output: output, session: session, snapshot: snapshot) { machine in
                    // The next boot keeps the CMOS clock and RAM, as a battery would.
                    config.batteryBackedCMOS = machine.platform.cmos
                }
                if case .stopped(.reset) = report.outcome, onReboot == .restart {
                    HostIO.printError("swiftvisor: the guest reset; booting again (boot \(boots + 1))")
                    continue
                }
                if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
                return
            }
        }
    }
}
