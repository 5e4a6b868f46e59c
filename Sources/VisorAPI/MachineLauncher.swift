package import SwiftVisor
import VisorHost

/// Starts a Linux VM on KVM from what a Firecracker client configured, the way
/// `swiftvisor boot` does: the kernel is read, the host's quirks probed, the payload
/// decompressed on the host, and the devices opened before the machine is built.
package struct MachineLauncher: VMLauncher {
    /// Firecracker's command line when `boot_args` is not given.
    package static let defaultBootArgs =
        "reboot=k panic=1 pci=off nomodules 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

    /// Per-thread seccomp filters on the machine's threads (`--no-seccomp` turns them off).
    package var seccomp: Bool
    /// Where the VMM's diagnostics go.
    package var log: @Sendable (String) -> Void
    /// Called with the machine once it is built, before it starts (console input wiring).
    package var onStart: (@Sendable (Machine) -> Void)?
    /// `--boot-timer`: a booted (not a restored) VM gets Firecracker's boot timer at port
    /// 0x3F0 (`BootTimer`).
    package var bootTimer = false
    /// Where the boot timer's line goes (Firecracker logs it at the info level); `log`
    /// when nil.
    package var bootTimerLog: (@Sendable (String) -> Void)?

    package init(seccomp: Bool = true, log: @escaping @Sendable (String) -> Void, onStart: (@Sendable (Machine) -> Void)? = nil) {
        self.seccomp = seccomp
        self.log = log
        self.onStart = onStart
    }

    package func unreadable(_ path: String) -> String? {
        do { try HostIO.checkReadableFile(path) } catch { return error.reason }
        return nil
    }

    /// The kernel command line: the client's (or Firecracker's default), what this host
    /// needs to run a kernel, and the root device, as Firecracker adds it.
    package static func commandLine(_ resources: VMResources, quirks: [String]) -> String {
        var parts = [resources.bootSource?.bootArgs ?? defaultBootArgs]
        parts += quirks
        if let root = resources.drives.first(where: \.isRootDevice) {
            if let uuid = root.partUUID {
                parts.append("root=PARTUUID=\(uuid)")
            } else {
                parts.append("root=/dev/vda")
            }
            parts.append(root.isReadOnly ? "ro" : "rw")
        }
        return parts.filter { !$0.isEmpty }.joined(separator: " ")
    }

    /// The machine's configuration, devices in Firecracker's order: drives (root first),
    /// network interfaces, vsock, entropy.
    package static func configuration(
        _ resources: VMResources, request: LinuxBootRequest, cpuid: CPUIDPolicy, seccomp: Bool
    ) -> MachineConfiguration {
        var config = MachineConfiguration(guest: .linux(request))
        config.memorySize = resources.machine.memSizeMiB << 20
        config.vcpuCount = resources.machine.vcpuCount
        config.cpuid = cpuid
        config.seccomp = seccomp
        config.trackDirtyPages = resources.machine.trackDirtyPages
        for drive in resources.drives {
            // The guest reads the drive ID as the disk's serial (virtio-blk GET_ID: 20 bytes).
            config.virtioDevices.append(
                .block(
                    path: drive.pathOnHost, readOnly: drive.isReadOnly, id: String(drive.driveID.utf8.prefix(20))!,
                    rateLimiter: drive.rateLimiter?.configuration))
        }
        for interface in resources.networkInterfaces {
            config.virtioDevices.append(
                .net(
                    tap: interface.hostDevName, mac: interface.guestMAC,
                    receiveLimiter: interface.rxRateLimiter?.configuration,
                    transmitLimiter: interface.txRateLimiter?.configuration, mtu: interface.mtu.flatMap { UInt16(exactly: $0) }))
        }
        if let vsock = resources.vsock {
            config.virtioDevices.append(.vsock(cid: UInt64(vsock.guestCID), udsPath: vsock.udsPath))
        }
        if resources.entropy != nil { config.virtioDevices.append(.entropy) }
        return config
    }

    package func launch(_ resources: VMResources) async throws(APIError) -> any RunningVM {
        guard let boot = resources.bootSource else {
            throw .badRequest("Start microvm error: Cannot start microvm without kernel configuration.")
        }
        let memory = resources.machine.memSizeMiB << 20
        do throws(MachineError) {
            let kernel = try HostIO.readFile(boot.kernelImagePath, limit: LinuxDefaults.kernelFileLimit)
            let initrd = try boot.initrdPath.map { (path) throws(MachineError) in
                try HostIO.readFile(path, limit: Int(clamping: memory))
            }
            let quirks = try HostQuirks.probe(policy: CPUIDPolicy())
            var request = LinuxBootRequest(
                kernel: kernel, initrd: initrd, commandLine: Self.commandLine(resources, quirks: quirks.commandLineOptions),
                bootProtocol: .linux64, hostDecompression: true)
            do { try request.prepareKernel() } catch { throw MachineError.linux(error) }
            var config = Self.configuration(
                resources, request: request, cpuid: quirks.linuxPolicy(from: CPUIDPolicy()), seccomp: seccomp)
            config.log = log
            let timer = bootTimer ? BootTimer(log: bootTimerLog ?? log) : nil
            if let timer {
                config.portDevices.append(
                    .init(name: "boot-timer", range: try! PortRange(base: BootTimer.port, count: 1), device: timer))
            }
            let serialOutput = try SerialOutput.open(resources, into: &config)
            try config.openDisks()
            try config.openTaps()
            try config.openVsock()
            let machine = try Machine(config)
            onStart?(machine)
            try machine.start()
            return RunningMachine(machine: machine, resources: resources, serialOutput: serialOutput, bootTimer: timer)
        } catch {
            throw .badRequest("Start microvm error: \(error.description)")
        }
    }
}

extension MachineLauncher {
    /// Builds the machine a snapshot describes, its memory mapped from the memory file, and
    /// starts it paused or running. Nothing is left running or open on an error.
    package func restore(_ load: SnapshotLoadConfig, resources: VMResources) async throws(APIError) -> RestoredVM {
        let snapshot: MachineSnapshot
        do throws(MachineError) {
            snapshot = try MachineSnapshot(statePath: load.snapshotPath, memoryPath: load.memFilePath)
        } catch {
            throw .badRequest("Load snapshot error: \(error.description)")
        }
        var saved = try Self.savedResources(snapshot)
        var config = MachineConfiguration(restoring: snapshot)
        try Self.apply(load.networkOverrides, to: &config, saved: &saved)
        do throws(MachineError) {
            config.seccomp = seccomp
            config.log = log
            config.trackDirtyPages = load.trackDirtyPages || snapshot.shape.trackDirtyPages
            if let path = load.vsockUDSPath {
                config.virtioDevices = config.virtioDevices.map { device in
                    if case .vsock(let cid, _) = device { return .vsock(cid: cid, udsPath: path) }
                    return device
                }
            }
            if let path = load.vsockUDSPath { saved?.vsock?.udsPath = path }
            var resources = resources
            if let saved { resources.adoptMachine(of: saved) }
            try config.openDisks()
            try config.openTaps()
            try config.openVsock()
            let serialOutput = try SerialOutput.open(resources, into: &config)
            let machine = try Machine(config)
            onStart?(machine)
            try machine.start(paused: !load.resumeVM)
            return RestoredVM(
                vm: RunningMachine(machine: machine, resources: resources, serialOutput: serialOutput),
                vcpuCount: snapshot.shape.vcpuCount, memoryMiB: snapshot.shape.memorySize >> 20,
                trackDirtyPages: config.trackDirtyPages, savedResources: saved)
        } catch {
            throw .badRequest("Load snapshot error: \(error.description)")
        }
    }

    /// The name of the note in which a snapshot taken through the API keeps the VM's
    /// configuration (`GET /vm/config`'s JSON): its drive and interface IDs, for
    /// `network_overrides`, the metrics and the PATCH endpoints of the restored VM.
    package static let configurationNote = "api.vm-config"

    /// The configuration a snapshot taken through the API kept; nil for one taken by the
    /// command line or from Swift.
    package static func savedResources(_ snapshot: MachineSnapshot) throws(APIError) -> VMResources? {
        guard let bytes = snapshot.notes[configurationNote] else { return nil }
        do throws(APIError) {
            return try VMResources(configFile: try JSON.parse(bytes))
        } catch {
            throw .badRequest("Load snapshot error: the snapshot's saved configuration is invalid: \(error.description)")
        }
    }

    /// Points each overridden interface at its new TAP: in the machine's configuration
    /// (interfaces follow the drives, in order) and in the saved resources.
    package static func apply(
        _ overrides: [SnapshotLoadConfig.NetworkOverride], to config: inout MachineConfiguration,
        saved: inout VMResources?
    ) throws(APIError) {
        guard !overrides.isEmpty else { return }
        guard var resources = saved else {
            throw .badRequest(
                "Load snapshot error: network_overrides needs interface IDs, and this snapshot has none (it was not taken through the API)."
            )
        }
        for override in overrides {
            guard let index = resources.networkInterfaces.firstIndex(where: { $0.ifaceID == override.ifaceID }) else {
                throw .badRequest(
                    "Load snapshot error: network_overrides names the interface `\(override.ifaceID)`, which the snapshot does not have."
                )
            }
            let device = resources.drives.count + index
            guard config.virtioDevices.indices.contains(device),
                case .net(_, let mac, let receive, let transmit, let mtu) = config.virtioDevices[device]
            else {
                throw .badRequest("Load snapshot error: the snapshot's devices do not match its saved configuration.")
            }
            config.virtioDevices[device] = .net(
                tap: override.hostDevName, mac: mac, receiveLimiter: receive, transmitLimiter: transmit, mtu: mtu)
            resources.networkInterfaces[index].hostDevName = override.hostDevName
        }
        saved = resources
    }
}

/// A started `Machine` behind the controller's protocol.
/// The file or FIFO the guest's serial output goes to (`PUT /serial`), closed when the
/// last holder lets go: a launch that fails, or the VM's end.
final class SerialOutput: Sendable {
    let descriptor: Int32
    init(descriptor: Int32) { self.descriptor = descriptor }
    deinit { HostIO.closeDescriptor(descriptor) }

    /// Opens `PUT /serial`'s file, if one was given, and points the machine's console at
    /// it; nil (the console stays on standard output) without one.
    static func open(_ resources: VMResources, into config: inout MachineConfiguration) throws(MachineError)
        -> SerialOutput?
    {
        guard let path = resources.serial?.serialOutPath else { return nil }
        let output: SerialOutput
        do { output = SerialOutput(descriptor: try HostIO.openOutputFile(path)) } catch {
            throw .cannotWriteFile(path: path, reason: "the serial output: \(error.reason)")
        }
        config.consoleDescriptor = output.descriptor
        return output
    }
}

struct RunningMachine: RunningVM {
    let machine: Machine
    let resources: VMResources
    let serialOutput: SerialOutput?
    var bootTimer: BootTimer? = nil

    func pause() async { await machine.pause() }
    func resume() { machine.resume() }
    func sendCtrlAltDel() -> Bool { machine.pressCtrlAltDelete() }
    func wait() async -> Int32 { await waitForEnd().status }

    func waitForEnd() async -> (status: Int32, reason: String?) {
        let report = await machine.wait()
        let reason: String
        switch report.outcome {
        case .stopped(let why): reason = "stopped: \(why)"
        case .fatal(let fatal): reason = "fatal: \(fatal)"
        }
        return (report.exitStatus, reason)
    }

    /// The devices are in `MachineLauncher.configuration`'s order: drives, interfaces,
    /// vsock, entropy.
    func counters() -> VMCounters {
        var counters = VMCounters()
        counters.exits = machine.liveExitCounts
        var devices = machine.virtioStatistics[...]
        for drive in resources.drives {
            guard let next = devices.popFirst() else { break }
            counters.drives.append((drive.driveID, next))
        }
        for interface in resources.networkInterfaces {
            guard let next = devices.popFirst() else { break }
            counters.interfaces.append((interface.ifaceID, next))
        }
        if resources.vsock != nil { counters.vsock = devices.popFirst() }
        if resources.entropy != nil { counters.entropy = devices.popFirst() }
        counters.bootTime = bootTimer?.bootTime
        return counters
    }

    func snapshot(statePath: String, memoryPath: String, diff: Bool) throws(APIError) {
        do throws(MachineError) {
            try machine.snapshot(
                statePath: statePath, memoryPath: memoryPath, kind: diff ? .diff : .full,
                notes: [MachineLauncher.configurationNote: resources.json.text])
        } catch {
            throw .badRequest("Create snapshot error: \(error.description)")
        }
    }

    func updateDrive(device: Int, path: String?, rateLimiter: RateLimiterConfig?) throws(APIError) {
        do throws(MachineError) {
            if let path { try machine.replaceDisk(device: device, path: path) }
            if let rateLimiter { try machine.updateRateLimiter(device: device, rateLimiter.configuration) }
        } catch {
            throw .badRequest(
                "Drive config error: Unable to patch the block device: \(error.description) Please verify the request arguments.")
        }
    }

    func updateInterface(device: Int, rx: RateLimiterConfig?, tx: RateLimiterConfig?) throws(APIError) {
        do throws(MachineError) {
            try machine.updateRateLimiters(device: device, receive: rx?.configuration, transmit: tx?.configuration)
        } catch {
            throw .badRequest("Network config error: Unable to update the net device: \(error.description)")
        }
    }
}
