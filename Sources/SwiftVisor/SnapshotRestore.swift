import VisorCore
import VisorDevices
import VisorHost
import VisorKVM
import VisorMemory
import VisorSnapshot

/// A snapshot's state, decoded and checked against the configuration before anything is
/// built, and put into the new machine as it is built.
struct RestoredState {
    let snapshot: MachineSnapshot
    let vm: VMState
    let vcpus: [VCPUState]
    /// Each device's saved state, by device name.
    let devices: [String: [UInt8]]
    let recordedMSRs: [(index: UInt32, value: UInt64)]

    /// nil when the configuration does not restore a snapshot. Throws when the state file
    /// lacks a section or the configuration changed what the snapshot fixes.
    init?(configuration: MachineConfiguration) throws(MachineError) {
        guard case .snapshot(let snapshot) = configuration.guest else { return nil }
        try Self.check(configuration, against: snapshot.shape)
        let file = snapshot.file
        do throws(SnapshotError) {
            vm = try file.decode(MachineSnapshotLayout.vm)
            vcpus = try (0..<snapshot.shape.vcpuCount).map { (index) throws(SnapshotError) in
                try file.decode(MachineSnapshotLayout.vcpu(index))
            }
            recordedMSRs = try file.decode(MachineSnapshotLayout.msrValues, as: RecordedMSRValues.self).values
        } catch { throw .snapshot(error) }
        var devices: [String: [UInt8]] = [:]
        let fixed = Set(
            [MachineSnapshotLayout.machine, MachineSnapshotLayout.vm, MachineSnapshotLayout.msrValues]
                + (0..<snapshot.shape.vcpuCount).map(MachineSnapshotLayout.vcpu))
        let devicePrefix = MachineSnapshotLayout.device("")
        let notePrefix = MachineSnapshotLayout.note("")
        for section in file.sections where !fixed.contains(section.tag) && !section.tag.hasPrefix(notePrefix) {
            guard section.tag.hasPrefix(devicePrefix) else {
                throw .snapshot(.invalid("the state file", reason: "has an unknown section '\(section.tag)'"))
            }
            devices[String(section.tag.dropFirst(devicePrefix.count))] = section.contents
        }
        self.snapshot = snapshot
        self.devices = devices
    }

    /// What the snapshot fixes must be as saved: the machine's shape is in the state.
    static func check(_ configuration: MachineConfiguration, against shape: SavedMachineShape) throws(MachineError) {
        func differs(_ what: String, _ saved: String, _ now: String) -> MachineError {
            .snapshotRefused("the snapshot was taken with \(what) \(saved), the configuration asks for \(now)")
        }
        if configuration.memorySize != shape.memorySize {
            throw differs("memory", "\(shape.memorySize >> 20) MiB", "\(configuration.memorySize >> 20) MiB")
        }
        if configuration.vcpuCount != shape.vcpuCount {
            throw differs("vCPUs", "\(shape.vcpuCount)", "\(configuration.vcpuCount)")
        }
        if configuration.interruptController != shape.interruptController {
            throw differs("the interrupt controller", "\(shape.interruptController)", "\(configuration.interruptController)")
        }
        if configuration.debugExitPort != shape.debugExitPort {
            throw differs("the debug-exit port", "\(shape.debugExitPort)", "\(configuration.debugExitPort)")
        }
        if configuration.hypercallPort != shape.hypercallPort {
            throw differs(
                "hypercall port", shape.hypercallPort.map { "0x\(String($0, radix: 16))" } ?? "none",
                configuration.hypercallPort.map { "0x\(String($0, radix: 16))" } ?? "none")
        }
        guard configuration.virtioDevices.count == shape.virtioDevices.count,
            zip(configuration.virtioDevices, shape.virtioDevices).allSatisfy({ $0.name == $1.name })
        else {
            throw differs(
                "virtio devices", shape.virtioDevices.map(\.name).joined(separator: ", "),
                configuration.virtioDevices.map(\.name).joined(separator: ", "))
        }
        for index in shape.msrHandlers {
            guard case .handler? = configuration.msrs.rules[index] else {
                throw .snapshotRefused(
                    "MSR 0x\(String(index, radix: 16)) had a Swift handler when the snapshot was taken; "
                        + "give one in configuration.msrs before restoring")
            }
        }
    }

    /// Maps the memory file privately over `regions`, after checking it holds them all.
    func mapMemory(regions: [GuestRegion]) throws(MachineError) -> GuestMemory {
        let fd: Int32
        do { fd = try HostIO.openReadOnly(snapshot.memoryPath) } catch {
            throw .cannotReadFile(path: snapshot.memoryPath, reason: error.reason)
        }
        defer { HostIO.closeDescriptor(fd) }
        do { return try GuestMemory(regions: regions, backingFile: fd) } catch {
            throw .memory(error)
        }
    }

    /// Restores the VM's state, then creates every vCPU and restores its state, after
    /// checking that this host's KVM offers every CPU feature the guest was given; then
    /// every device. Returns the vCPUs and vCPU 0's CPUID table.
    func restore(
        vm: VMHandle, system: KVMSystem, memory: GuestMemory, platform: Platform, builder: MachineBuilder
    ) throws(MachineError) -> ([VCPUHandle], [CPUIDEntry]) {
        var handles: [VCPUHandle] = []
        do throws(KVMError) {
            try vm.restoreState(self.vm)
            // Each restore first checks that this host's KVM offers every CPU feature the
            // guest was given (`VCPUState.checkCompatible`), and refuses by name.
            for (index, state) in vcpus.enumerated() {
                let vcpu = try vm.createVCPU(id: UInt32(index))
                try vcpu.restoreState(state)
                handles.append(vcpu)
            }
        } catch {
            switch error {
            case .incompatibleCPU, .tscFrequencyMismatch: throw .snapshot(.incompatible(error.description))
            default: throw .kvm(error)
            }
        }
        try restoreDevices(platform)
        return (handles, vcpus.first?.cpuid ?? [])
    }

    /// Puts each device's saved state into the platform's device of the same name. Every
    /// device with state must have a section, and every section a device.
    func restoreDevices(_ platform: Platform) throws(MachineError) {
        var unused = devices
        for device in platform.devices {
            guard let state = device.state else { continue }
            guard let bytes = unused.removeValue(forKey: device.name) else {
                throw .snapshot(.invalid("the state file", reason: "has no state for device '\(device.name)'"))
            }
            var reader = SnapshotReader(bytes)
            do throws(SnapshotError) {
                try state.restoreState(from: &reader)
                try reader.finish("the state of device '\(device.name)'")
            } catch { throw .snapshot(error) }
        }
        if let name = unused.keys.sorted().first {
            throw .snapshot(.invalid("the state file", reason: "has state for device '\(name)', which this machine lacks"))
        }
    }
}
