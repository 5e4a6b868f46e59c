import Synchronization
import VisorCore
import VisorDevices
import VisorEmulator
import VisorFirmware
import VisorHost
import VisorKVM
import VisorLinux
import VisorLoader
import VisorMemory
import VisorSnapshot

/// Everything a machine is made of, built and loaded, with nothing running yet.
struct MachineParts: Sendable {
    let system: KVMSystem
    let vm: VMHandle
    let memory: GuestMemory
    let vcpus: [VCPUHandle]
    let platform: Platform
    let linuxBootPlan: LinuxBootPlan?
    let dispatcher: ExitDispatcher
    let msrEmulator: MSREmulator
    /// The emulator the dispatcher hands emulation failures to (nil with emulation off).
    let emulator: InstructionEmulator?
    /// The virtio devices, in configuration order.
    let virtio: [VirtioAttachment]
    /// The thread that serves the virtio queues, not yet started; nil when the devices
    /// are served on the vCPU threads (or there are none).
    let ioThread: IOThread?
}

/// Builds a machine from its configuration, in order: validate the configuration, create
/// the VM and its memory, load the guest, apply the CPU policy and create the vCPUs, build
/// the platform's devices and the buses. Each step is a function of its own, and the
/// checks that need no KVM are pure, so they are unit-tested. A failure at any step
/// releases what was made so far (each handle closes itself).
struct MachineBuilder {
    /// Guest-physical RAM from 3 GiB up to 4 GiB is left for MMIO; RAM beyond 3 GiB
    /// continues at 4 GiB.
    static let lowMemoryLimit: UInt64 = 3 << 30
    /// Where KVM's real-mode helper pages go (in the MMIO hole, never RAM).
    static let tssAddress: UInt64 = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000

    /// The most `log`-policy messages a VM prints; a guest hammering unclaimed ports must not
    /// flood the host's log.
    static let logLimit = 1000

    /// MSRs set at entry (`KVM_SET_MSRS`), besides EFER, which the entry state sets.
    static let entryMSRs: [(index: UInt32, value: UInt64)] = [
        (0x10, 0),  // IA32_TIME_STAMP_COUNTER: the guest's TSC starts at 0
        (0x174, 0), (0x175, 0), (0x176, 0),  // IA32_SYSENTER_CS, _ESP, _EIP
        (0x277, 0x0007_0406_0007_0406),  // IA32_PAT: the power-on default (WB, WT, UC-, UC)
        (0x1A0, 1),  // IA32_MISC_ENABLE: fast strings
        (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR, LSTAR, CSTAR, SFMASK
        (0xC000_0102, 0),  // KERNEL_GS_BASE
    ]

    let configuration: MachineConfiguration

    // MARK: Pure checks

    /// Checks the memory size and vCPU count against each other and the host's RAM.
    static func validate(_ configuration: MachineConfiguration, hostMemory: UInt64) throws(MachineError) {
        let size = configuration.memorySize
        guard size > 0 else { throw .invalidMemorySize("it must be larger than zero") }
        guard size % GuestMemory.pageSize == 0 else {
            throw .invalidMemorySize("\(size) bytes is not a multiple of 4 KiB")
        }
        guard size <= hostMemory else {
            throw .invalidMemorySize("\(size >> 20) MiB is more than the host's \(hostMemory >> 20) MiB of RAM")
        }
        let count = configuration.vcpuCount
        guard count >= 1 else { throw .invalidVCPUCount("\(count): a VM needs at least one vCPU") }
        if count > 1, !configuration.interruptController {
            throw .invalidVCPUCount("\(count) vCPUs need the interrupt controller (INIT/SIPI go through local APICs)")
        }
        try validateVirtio(configuration)
    }

    /// Checks the vCPU count against what the host's KVM allows (`KVM_CAP_MAX_VCPUS`, or
    /// `KVM_CAP_NR_VCPUS` where that is larger) and what the MP table can describe.
    static func checkVCPULimit(_ count: Int, maxVCPUs: Int, recommendedVCPUs: Int) throws(MachineError) {
        let limit = min(max(maxVCPUs, recommendedVCPUs, 1), MPTable.maxProcessors)
        guard count <= limit else {
            throw .invalidVCPUCount("\(count): this host's KVM allows at most \(limit) vCPUs")
        }
    }

    /// Guest RAM: up to 3 GiB from 0, the rest from 4 GiB.
    static func guestRegions(memorySize size: UInt64) -> [GuestRegion] {
        var regions = [GuestRegion(start: 0, size: min(size, lowMemoryLimit))]
        if size > lowMemoryLimit {
            regions.append(GuestRegion(start: 4 << 30, size: size - lowMemoryLimit))
        }
        return regions
    }

    /// Guest RAM as address ranges.
    static func ramRanges(_ memory: GuestMemory) -> [Range<UInt64>] {
        memory.regions.map { $0.start..<$0.end }
    }

    /// fw_cfg with the standard items for this configuration and "etc/e820" (the multiboot
    /// memory map, 20-byte little-endian entries: base, length, type).
    static func firmwareConfig(_ configuration: MachineConfiguration) -> FirmwareConfigDevice {
        let ram = guestRegions(memorySize: configuration.memorySize).map { $0.start..<$0.end }
        var e820: [UInt8] = []
        for entry in MultibootPlan.memoryMap(ram: ram) {
            for (value, count) in [(entry.base, 8), (entry.length, 8), (UInt64(entry.type), 4)] {
                e820 += (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
            }
        }
        return FirmwareConfigDevice(
            memorySize: configuration.memorySize, cpuCount: UInt16(clamping: configuration.vcpuCount),
            commandLine: configuration.commandLine, files: [.init(name: "etc/e820", contents: e820)])
    }

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

    // MARK: Building

    func build() throws(MachineError) -> MachineParts {
        try Self.validate(configuration, hostMemory: HostIO.physicalMemory)
        let system: KVMSystem
        do { system = try KVMSystem.shared(path: configuration.kvmPath) } catch { throw .kvm(error) }
        try Self.checkVCPULimit(
            configuration.vcpuCount, maxVCPUs: Int(system.check(.maxVCPUs)),
            recommendedVCPUs: Int(system.check(.nrVCPUs)))
        let restoring = try RestoredState(configuration: configuration)
        let memory = try makeMemory(restoring: restoring)
        let vm = try createVM(system, memory: memory)
        let consoleOutput: ConsoleOutput
        if let perByte = configuration.consoleOutput {
            consoleOutput = { bytes in
                for i in bytes.indices { perByte(bytes[i]) }
            }
        } else {
            // One write(2) per guest access. Blocked on a full pipe, it gives up when the
            // vCPU thread's give-up condition holds (the VM is pausing or stopping; see
            // VCPURunner) and a kick interrupts it.
            let descriptor = configuration.consoleDescriptor
            consoleOutput = { bytes in HostIO.write(bytes, to: descriptor) }
        }
        let ioThread = try makeIOThread(system)
        let (platform, virtio) = try makePlatform(vm, memory: memory, consoleOutput: consoleOutput, ioThread: ioThread)
        let vcpus: [VCPUHandle], guestCPUID0: [CPUIDEntry], linuxBootPlan: LinuxBootPlan?
        if let restoring {
            (vcpus, guestCPUID0) = try restoring.restore(
                vm: vm, system: system, memory: memory, platform: platform, builder: self)
            linuxBootPlan = nil
        } else {
            let entry: EntryState
            (entry, linuxBootPlan) = try loadGuest(into: memory, platform: platform)
            if let linuxBootPlan { configuration.onLinuxBootPlan?(linuxBootPlan) }
            (vcpus, guestCPUID0) = try createVCPUs(vm, system: system, memory: memory, entry: entry)
        }
        let msrEmulator = MSREmulator(policy: configuration.msrs)
        if let restoring { msrEmulator.restoreRecordedValues(restoring.recordedMSRs) }
        let emulator = makeEmulator(memory: memory, guestCPUID0: guestCPUID0)
        let dispatcher = try makeDispatcher(
            platform: platform, memory: memory, consoleOutput: consoleOutput,
            msrEmulator: msrEmulator, emulator: emulator)
        return MachineParts(
            system: system, vm: vm, memory: memory, vcpus: vcpus, platform: platform,
            linuxBootPlan: linuxBootPlan, dispatcher: dispatcher, msrEmulator: msrEmulator,
            emulator: emulator, virtio: virtio, ioThread: ioThread)
    }

    /// The VM with KVM's real-mode helper pages placed, guest memory mapped and, if asked,
    /// the in-kernel interrupt controllers and PIT.
    ///
    /// The memory goes in first: on the project's hosts, adding memory slots to a VM that
    /// already has the interrupt controllers and PIT costs about 5.5 ms more (KVM waits for
    /// a grace period per slot then), which was most of a cold start and of a restore.
    func createVM(_ system: KVMSystem, memory: GuestMemory) throws(MachineError) -> VMHandle {
        let vm: VMHandle
        do throws(KVMError) {
            vm = try system.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setIdentityMapAddress(Self.identityMapAddress)
        } catch { throw .kvm(error) }
        try mapMemory(vm, system: system, memory: memory)
        if configuration.interruptController {
            do throws(KVMError) {
                try vm.createInterruptController()
                try vm.createPIT()
            } catch { throw .kvm(error) }
        }
        return vm
    }

    /// Loads the guest image into `memory` and returns how vCPU 0 enters it.
    func loadGuest(into memory: GuestMemory, platform: Platform) throws(MachineError) -> (EntryState, LinuxBootPlan?) {
        do {
            switch configuration.guest {
            case .elf(let bytes):
                let image = try ELFImage(parsing: bytes)
                try image.load(bytes, into: memory, reservedEnd: BootLayout.reservedEnd)
                let entry = try BootLayout.prepareLongMode(
                    memory: memory, entry: image.entry,
                    commandLine: configuration.commandLine,
                    vcpuCount: UInt32(configuration.vcpuCount))
                // Segments load at 1 MiB or above; the stack grows down from 1 MiB to the tables.
                try writeACPITables(platform, into: memory, avoiding: [])
                return (entry, nil)
            case .flat(let bytes, let address):
                let entry = try FlatBinaryLoader.load(bytes, at: address, into: memory)
                try writeACPITables(platform, into: memory, avoiding: [address..<address + UInt64(bytes.count)])
                return (entry, nil)
            case .multiboot(let bytes, let modules):
                let plan = try MultibootPlan(
                    image: bytes, ram: Self.ramRanges(memory), commandLine: configuration.commandLine, modules: modules)
                let entry = try plan.load(image: bytes, modules: modules, into: memory)
                try writeACPITables(
                    platform, into: memory,
                    avoiding: plan.segments.map(\.range) + plan.placedRanges(moduleSizes: modules.map(\.bytes.count)))
                return (entry, nil)
            case .snapshot:
                throw MachineError.snapshotRefused("a snapshot has no guest image to load")
            case .linux(var request):
                // The kernel finds the virtio devices on its command line, too.
                let parameters = configuration.virtioDevices.indices.map { VirtioLayout.commandLineParameter(index: $0) }
                if !parameters.isEmpty {
                    request.commandLine = ([request.commandLine] + parameters).filter { !$0.isEmpty }.joined(separator: " ")
                }
                let plan = try platform.loadLinux(request, processors: configuration.vcpuCount, into: memory)
                return (plan.entry, plan)
            }
        } catch let error as LoaderError {
            throw .loader(error)
        } catch let error as MachineError {
            throw error
        } catch {
            throw .firmware("\(error)")
        }
    }

    /// Writes the ACPI tables of a minimal platform (RSDP, XSDT, FADT with the PM1a blocks
    /// and the PM timer, FACS, MADT, DSDT) at the start of the BIOS area, 0xE0000, as for a
    /// Linux guest, unless what the guest's loader wrote (`avoiding`) lies there or RAM
    /// does not reach it: then the guest gets no tables, and the log says why.
    func writeACPITables(_ platform: Platform, into memory: GuestMemory, avoiding occupied: [Range<UInt64>])
        throws(MachineError)
    {
        let tables: ACPITables
        do { tables = try ACPITables.build(for: platform.acpiPlatform(processors: configuration.vcpuCount)) } catch {
            throw .firmware(error.description)
        }
        let range = tables.rsdpAddress..<tables.rsdpAddress + UInt64(tables.bytes.count)
        if let clash = occupied.first(where: { $0.overlaps(range) }) {
            configuration.log(
                "no ACPI tables: the guest's image at 0x\(String(clash.lowerBound, radix: 16))-0x\(String(clash.upperBound, radix: 16)) covers their place, 0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound, radix: 16))"
            )
            return
        }
        guard memory.contains(range.lowerBound, count: UInt64(range.count)) else {
            configuration.log("no ACPI tables: RAM does not reach 0x\(String(range.upperBound, radix: 16))")
            return
        }
        do { try memory.write(tables.bytes, at: tables.rsdpAddress) } catch { throw .memory(error) }
    }

    /// Applies the CPUID policy and creates the vCPUs: vCPU 0 at the entry state, the
    /// others waiting for INIT and SIPI. Returns them with vCPU 0's CPUID table.
    func createVCPUs(
        _ vm: VMHandle, system: KVMSystem, memory: GuestMemory,
        entry: EntryState
    ) throws(MachineError) -> ([VCPUHandle], [CPUIDEntry]) {
        let count = configuration.vcpuCount
        do throws(KVMError) {
            let supported = try system.supportedCPUID()
            let guestCPUID0 = configuration.cpuid.normalize(supported, apicID: 0, vcpuCount: UInt32(count))
            var vcpus: [VCPUHandle] = []
            for id in 0..<count {
                let vcpu = try vm.createVCPU(id: UInt32(id))
                try vcpu.setCPUID(configuration.cpuid.normalize(supported, apicID: UInt32(id), vcpuCount: UInt32(count)))
                try vcpu.setMSRs(Self.entryMSRs)
                if id == 0 {
                    try EntryRegisters.apply(entry, to: vcpu)
                } else {
                    // Application processors wait for INIT and SIPI, as on hardware.
                    try vcpu.setMPState(VCPUHandle.mpStateWaitForSIPI)
                }
                vcpus.append(vcpu)
            }
            return (vcpus, guestCPUID0)
        } catch { throw .kvm(error) }
    }

    /// Maps guest memory into the VM (logging dirty pages if asked) and routes the MSRs
    /// the policy handles to user space.
    func mapMemory(_ vm: VMHandle, system: KVMSystem, memory: GuestMemory) throws(MachineError) {
        do throws(KVMError) {
            for (slot, mapping) in memory.hostMappings.enumerated() {
                try vm.setMemoryRegion(
                    slot: UInt32(slot), guestPhysical: mapping.region.start,
                    size: mapping.region.size, hostAddress: mapping.hostAddress,
                    logDirtyPages: configuration.trackDirtyPages)
            }
            if !configuration.msrs.rules.isEmpty {
                guard system.check(.userSpaceMSR) > 0 else { throw KVMError.missingCapability("KVM_CAP_X86_USER_SPACE_MSR") }
                guard system.check(.msrFilter) > 0 else { throw KVMError.missingCapability("KVM_CAP_X86_MSR_FILTER") }
                try vm.routeMSRsToUserSpace(configuration.msrs.routedRanges)
            }
        } catch { throw .kvm(error) }
    }

    /// Guest RAM: anonymous memory, or a snapshot's memory file mapped privately so that
    /// pages load when first touched and guest writes never reach the file.
    func makeMemory(restoring: RestoredState?) throws(MachineError) -> GuestMemory {
        let regions = Self.guestRegions(memorySize: configuration.memorySize)
        let memory: GuestMemory
        if let restoring {
            memory = try restoring.mapMemory(regions: regions)
        } else {
            do { memory = try GuestMemory(regions: regions) } catch { throw .memory(error) }
        }
        // The VMM's own writes (loaders, devices, the emulator) are logged beside KVM's.
        memory.dirtyTracking = configuration.trackDirtyPages
        return memory
    }

    /// The devices: the PC platform for a Linux guest, the minimal one (COM1, debug exit, ACPI)
    /// for test guests. Their IRQs reach the in-kernel interrupt controller, if there is one.
    func makePlatform(
        _ vm: VMHandle, memory: GuestMemory, consoleOutput: @escaping ConsoleOutput, ioThread: IOThread?
    ) throws(MachineError) -> (Platform, [VirtioAttachment]) {
        var irqLine: (@Sendable (UInt32, Bool) -> Void)?
        if configuration.interruptController {
            irqLine = { irq, level in
                do { try vm.setIRQLine(irq, high: level) } catch {}
            }
        }
        let size = configuration.memorySize
        let low = min(size, Self.lowMemoryLimit)
        let kind: Platform.Kind
        switch configuration.guest {
        case .linux: kind = .pc
        case .snapshot(let snapshot): kind = snapshot.shape.pcPlatform ? .pc : .minimal
        case .elf, .flat, .multiboot: kind = .minimal
        }
        let virtio = try makeVirtioDevices(
            memory: memory, irqLine: irqLine, consoleOutput: consoleOutput, fastPath: ioThread.map { (vm: vm, thread: $0) })
        do throws(PlatformError) {
            let platform = try Platform(
                kind: kind, memoryBelow4GiB: low, memoryAbove4GiB: size - low,
                consoleOutput: consoleOutput, irqLine: irqLine, cmos: configuration.batteryBackedCMOS,
                debugExit: configuration.debugExitPort, qemuDebugExit: configuration.qemuDebugExitPort,
                firmwareConfig: configuration.firmwareConfig ? Self.firmwareConfig(configuration) : nil,
                qemuTestDevices: configuration.qemuTestDevices, extraDevices: virtio.map(\.platformDevice))
            return (platform, virtio)
        } catch { throw MachineError(error) }
    }

    /// The I/O thread for the virtio devices, when there are some, the configuration asks
    /// for it, and KVM has ioeventfd and irqfd (with the in-kernel interrupt controller).
    func makeIOThread(_ system: KVMSystem) throws(MachineError) -> IOThread? {
        guard !configuration.virtioDevices.isEmpty, configuration.virtioIOThread, configuration.interruptController,
            system.check(.ioEventFD) > 0, system.check(.irqFD) > 0
        else { return nil }
        do { return try IOThread() } catch { throw .invalidDevices("cannot create the I/O thread's epoll: \(error.reason)") }
    }

    /// The instruction emulator that finishes what the host's KVM cannot emulate, or nil
    /// with emulation off.
    func makeEmulator(memory: GuestMemory, guestCPUID0: [CPUIDEntry]) -> InstructionEmulator? {
        guard configuration.emulation else { return nil }
        // SMAP as the guest sees it: from the table SwiftVisor set, or from the host CPU
        // where the host's KVM passes leaf 7 through regardless (nested hosts).
        let smapBit: UInt32 = 1 << 20
        let tableSMAP = guestCPUID0.first { $0.function == 7 && $0.index == 0 }.map { $0.ebx & smapBit != 0 } ?? false
        let hostSMAP = hostCPUID(leaf: 7).ebx & smapBit != 0
        // MAXPHYADDR as the guest sees it, for the reserved bits of its page-table entries.
        let addressBits = guestCPUID0.first { $0.function == 0x8000_0008 }.map { Int($0.eax & 0xFF) } ?? 0
        var handlers = InstructionEmulator.allHandlers
        for (mnemonic, handler) in configuration.instructionHandlers { handlers[mnemonic] = handler }
        return InstructionEmulator(
            handlers: handlers, smapAvailable: tableSMAP || hostSMAP, memory: memory,
            physicalAddressBits: addressBits >= 32 ? addressBits : 52, trace: configuration.trace)
    }

    /// The port and MMIO buses with every device, the hypercall table, the MSR policy and
    /// the instruction emulator, in one dispatcher.
    func makeDispatcher(
        platform: Platform, memory: GuestMemory, consoleOutput: @escaping ConsoleOutput,
        msrEmulator: MSREmulator, emulator: InstructionEmulator?
    ) throws(MachineError) -> ExitDispatcher {
        var ports = PortBus()
        var mmio = MMIOBus()
        do throws(BusError) {
            try platform.register(ports: &ports, mmio: &mmio)
            for extra in configuration.portDevices {
                try ports.register(extra.device, name: extra.name, range: extra.range)
            }
            for blocked in configuration.blockedPorts {
                try ports.block(blocked.range, name: blocked.name)
            }
            for extra in configuration.mmioDevices {
                try mmio.register(extra.device, name: extra.name, range: extra.range)
            }
            var hypercalls: HypercallTable?
            if let port = configuration.hypercallPort {
                if let owner = ports.entry(for: port) {
                    throw BusError.overlap(
                        new: "'hypercalls' (port 0x\(String(port, radix: 16)))",
                        existing: "'\(owner.name)' (\(owner.range))",
                        at: "port 0x\(String(port, radix: 16))")
                }
                var table = HypercallTable.standard(memory: memory, console: consoleOutput, port: port)
                for (number, handler) in configuration.hypercallHandlers { table.register(number, handler) }
                hypercalls = table
            }
            var dispatcher = ExitDispatcher(
                ports: ports, mmio: mmio, unclaimedPorts: configuration.unclaimedPorts,
                unclaimedMMIO: configuration.unclaimedMMIO, hypercalls: hypercalls,
                log: Self.rateLimited(configuration.log))
            dispatcher.msrs = msrEmulator
            dispatcher.traceDenied = configuration.trace
            dispatcher.emulationFailureHandler = emulator
            return dispatcher
        } catch { throw .bus(error) }
    }
}
