public import VisorCore
public import VisorSnapshot
import VisorDevices
import VisorHost
import VisorKVM
import VisorMemory

/// Which memory a snapshot writes.
public enum SnapshotKind: String, Sendable, CaseIterable {
    /// All of guest RAM (all-zero pages as holes of a sparse file).
    case full = "Full"
    /// Only the pages written since the last snapshot (or since the machine started), at
    /// their offsets in a sparse file; merged onto the full snapshot they follow, it gives
    /// memory at the diff's time. Needs `MachineConfiguration.trackDirtyPages`.
    case diff = "Diff"
}

/// The configuration a snapshot was taken with: what a restored machine must be built
/// like before the saved state can go into it. Host-side settings (consoles, logs,
/// traces, Swift closures) are not saved; the restoring configuration gives them.
public struct SavedMachineShape: Sendable, Equatable, SnapshotCodable {
    public var memorySize: UInt64
    public var vcpuCount: Int
    public var interruptController: Bool
    /// True for the PC platform (a Linux guest), false for the minimal one.
    public var pcPlatform: Bool
    public var debugExitPort: Bool
    public var qemuDebugExitPort: Bool
    public var firmwareConfig: Bool
    /// The guest's command line (fw_cfg serves it).
    public var commandLine: String
    public var hypercallPort: UInt16?
    public var emulation: Bool
    public var unclaimedPorts: UnclaimedAccessPolicy
    public var unclaimedMMIO: UnclaimedAccessPolicy
    public var trackDirtyPages: Bool
    /// The virtio devices, with the files and TAPs a restore opens again, and how they
    /// were served.
    public var virtioDevices: [VirtioDeviceConfiguration]
    public var virtioIOThread: Bool
    public var virtioEventIndex: Bool
    /// The MSR rules; an index whose rule was a Swift handler is in `msrHandlers`, and the
    /// restoring configuration must give a handler for it.
    var msrRules: [(index: UInt32, rule: MSRRule)]
    public var msrHandlers: [UInt32]

    public static func == (a: Self, b: Self) -> Bool {
        var left = SnapshotWriter(), right = SnapshotWriter()
        a.encode(to: &left)
        b.encode(to: &right)
        return left.bytes == right.bytes
    }

    init(_ configuration: MachineConfiguration) {
        memorySize = configuration.memorySize
        vcpuCount = configuration.vcpuCount
        interruptController = configuration.interruptController
        if case .linux = configuration.guest { pcPlatform = true } else { pcPlatform = false }
        if case .snapshot(let snapshot) = configuration.guest { pcPlatform = snapshot.shape.pcPlatform }
        debugExitPort = configuration.debugExitPort
        qemuDebugExitPort = configuration.qemuDebugExitPort
        firmwareConfig = configuration.firmwareConfig
        commandLine = configuration.commandLine
        hypercallPort = configuration.hypercallPort
        emulation = configuration.emulation
        unclaimedPorts = configuration.unclaimedPorts
        unclaimedMMIO = configuration.unclaimedMMIO
        trackDirtyPages = configuration.trackDirtyPages
        virtioDevices = configuration.virtioDevices
        virtioIOThread = configuration.virtioIOThread
        virtioEventIndex = configuration.virtioEventIndex
        msrRules = []
        msrHandlers = []
        for index in configuration.msrs.rules.keys.sorted() {
            guard let rule = configuration.msrs.rules[index] else { continue }
            if case .handler = rule { msrHandlers.append(index) } else { msrRules.append((index, rule)) }
        }
    }

    public func encode(to writer: inout SnapshotWriter) {
        writer.write(memorySize)
        writer.write(UInt32(vcpuCount))
        for flag in [interruptController, pcPlatform, debugExitPort, qemuDebugExitPort, firmwareConfig] {
            writer.write(flag)
        }
        writer.write(string: commandLine)
        writer.write(hypercallPort != nil)
        writer.write(hypercallPort ?? 0)
        writer.write(emulation)
        writer.write(string: unclaimedPorts.rawValue)
        writer.write(string: unclaimedMMIO.rawValue)
        writer.write(trackDirtyPages)
        writer.write(UInt32(virtioDevices.count))
        for device in virtioDevices { device.encode(to: &writer) }
        writer.write(virtioIOThread)
        writer.write(virtioEventIndex)
        writer.write(UInt32(msrRules.count))
        for (index, rule) in msrRules {
            writer.write(index)
            switch rule {
            case .deny: writer.write(UInt8(1)); writer.write(UInt64(0))
            case .readOnly(let value): writer.write(UInt8(2)); writer.write(value)
            case .writeIgnored: writer.write(UInt8(3)); writer.write(UInt64(0))
            case .constant(let value): writer.write(UInt8(4)); writer.write(value)
            case .recorded(let value): writer.write(UInt8(5)); writer.write(value)
            case .allow, .handler: writer.write(UInt8(0)); writer.write(UInt64(0))
            }
        }
        writer.write(UInt32(msrHandlers.count))
        for index in msrHandlers { writer.write(index) }
    }

    public init(from reader: inout SnapshotReader) throws(SnapshotError) {
        memorySize = try reader.readUInt64("the memory size")
        guard memorySize > 0, memorySize % GuestMemory.pageSize == 0 else {
            throw .invalid("the memory size", reason: "is \(memorySize), not a positive multiple of 4 KiB")
        }
        vcpuCount = Int(try reader.readUInt32("the vCPU count"))
        guard (1...Int(UInt8.max)).contains(vcpuCount) else {
            throw .invalid("the vCPU count", reason: "is \(vcpuCount), not 1 to 255")
        }
        interruptController = try reader.readBool("the interrupt-controller flag")
        pcPlatform = try reader.readBool("the platform kind")
        debugExitPort = try reader.readBool("the debug-exit flag")
        qemuDebugExitPort = try reader.readBool("the QEMU debug-exit flag")
        firmwareConfig = try reader.readBool("the fw_cfg flag")
        commandLine = try reader.readString("the command line", maxCount: 1 << 16)
        let hasHypercalls = try reader.readBool("the hypercall flag")
        let port = try reader.readUInt16("the hypercall port")
        guard hasHypercalls || port == 0 else { throw .invalid("the hypercall port", reason: "is set without the flag") }
        hypercallPort = hasHypercalls ? port : nil
        emulation = try reader.readBool("the emulation flag")
        func policy(_ what: String, _ reader: inout SnapshotReader) throws(SnapshotError) -> UnclaimedAccessPolicy {
            let name = try reader.readString(what, maxCount: 16)
            guard let value = UnclaimedAccessPolicy(rawValue: name) else {
                throw .invalid(what, reason: "is '\(name)', not block, log or stop")
            }
            return value
        }
        unclaimedPorts = try policy("the unclaimed-port policy", &reader)
        unclaimedMMIO = try policy("the unclaimed-MMIO policy", &reader)
        trackDirtyPages = try reader.readBool("the dirty-page flag")
        let deviceCount = Int(try reader.readUInt32("the count of virtio devices"))
        guard deviceCount <= VirtioLayout.maximumDevices else {
            throw .invalid("the virtio devices", reason: "number \(deviceCount), more than \(VirtioLayout.maximumDevices)")
        }
        virtioDevices = []
        for _ in 0..<deviceCount { virtioDevices.append(try VirtioDeviceConfiguration(from: &reader)) }
        virtioIOThread = try reader.readBool("the virtio I/O-thread flag")
        virtioEventIndex = try reader.readBool("the virtio event-index flag")
        let ruleCount = Int(try reader.readUInt32("the count of MSR rules"))
        guard ruleCount <= 1 << 16 else { throw .invalid("the MSR rules", reason: "number \(ruleCount)") }
        msrRules = []
        for _ in 0..<ruleCount {
            let index = try reader.readUInt32("an MSR rule's index")
            let kind = try reader.readUInt8("an MSR rule's kind")
            let value = try reader.readUInt64("an MSR rule's value")
            let rule: MSRRule
            if kind == 1 || kind == 3, value != 0 {
                throw .invalid("the rule of MSR 0x\(String(index, radix: 16))", reason: "has a value its kind does not take")
            }
            switch kind {
            case 1: rule = .deny
            case 2: rule = .readOnly(value)
            case 3: rule = .writeIgnored
            case 4: rule = .constant(value)
            case 5: rule = .recorded(value)
            default: throw .invalid("the rule of MSR 0x\(String(index, radix: 16))", reason: "has kind \(kind)")
            }
            msrRules.append((index, rule))
        }
        let handlerCount = Int(try reader.readUInt32("the count of MSR handlers"))
        guard handlerCount <= 1 << 16 else { throw .invalid("the MSR handlers", reason: "number \(handlerCount)") }
        msrHandlers = []
        for _ in 0..<handlerCount { msrHandlers.append(try reader.readUInt32("an MSR handler's index")) }
    }

    /// The MSR policy the snapshot's machine had, without its Swift handlers.
    var msrPolicy: MSRPolicy {
        var policy = MSRPolicy.empty
        for (index, rule) in msrRules { policy.set(index, rule) }
        return policy
    }
}

/// A snapshot on disk, its state file read and checked: the machine it came from, and
/// where its memory file is. Read one with `MachineSnapshot(statePath:memoryPath:)`,
/// then build a machine from it with `MachineConfiguration(restoring:)`.
public struct MachineSnapshot: Sendable {
    public let statePath: String
    public let memoryPath: String
    /// The configuration the snapshot was taken with.
    public let shape: SavedMachineShape
    let file: SnapshotFile

    /// The largest state file read: a few kilobytes per vCPU and device in practice.
    static let stateFileLimit = 64 << 20

    /// Reads and checks the state file (magic, format version, every checksum, the saved
    /// configuration); the memory file is opened when a machine is built from it.
    public init(statePath: String, memoryPath: String) throws(MachineError) {
        let bytes: [UInt8]
        do {
            bytes = try HostIO.readRegularFile(
                statePath, limit: Self.stateFileLimit, limitName: "any state file (is it a memory file?)")
        } catch {
            throw .cannotReadFile(path: statePath, reason: error.reason)
        }
        do {
            file = try SnapshotFile(decoding: bytes, source: statePath)
            shape = try file.decode(MachineSnapshotLayout.machine)
        } catch { throw .snapshot(error) }
        self.statePath = statePath
        self.memoryPath = memoryPath
    }

    /// What the program that took the snapshot stored with it (`Machine.snapshot`'s
    /// `notes`), by name: opaque to the machine, checksummed like the rest.
    package var notes: [String: [UInt8]] {
        let prefix = MachineSnapshotLayout.note("")
        var notes: [String: [UInt8]] = [:]
        for section in file.sections where section.tag.hasPrefix(prefix) {
            notes[String(section.tag.dropFirst(prefix.count))] = section.contents
        }
        return notes
    }
}

/// The names of a state file's sections.
enum MachineSnapshotLayout {
    static let machine = "machine"
    static let vm = "vm"
    static let msrValues = "msr-values"
    static func vcpu(_ index: Int) -> String { "vcpu.\(index)" }
    static func device(_ name: String) -> String { "device.\(name)" }
    /// What the embedding program stored (the API's drive and interface IDs).
    static func note(_ name: String) -> String { "note.\(name)" }
}

/// The values recorded by `MSRRule.recorded` rules at snapshot time.
struct RecordedMSRValues: SnapshotCodable {
    var values: [(index: UInt32, value: UInt64)]

    init(values: [(index: UInt32, value: UInt64)]) { self.values = values }

    func encode(to writer: inout SnapshotWriter) {
        writer.write(UInt32(values.count))
        for (index, value) in values {
            writer.write(index)
            writer.write(value)
        }
    }

    init(from reader: inout SnapshotReader) throws(SnapshotError) {
        let count = Int(try reader.readUInt32("the count of recorded MSR values"))
        guard count <= 1 << 16 else { throw .invalid("the recorded MSR values", reason: "number \(count)") }
        values = []
        for _ in 0..<count {
            values.append((try reader.readUInt32("a recorded MSR's index"), try reader.readUInt64("a recorded MSR's value")))
        }
    }
}

extension MachineConfiguration {
    /// A configuration that builds the machine `snapshot` was taken from, with its saved
    /// state: the memory size, vCPUs, platform, ports and MSR rules as saved, and the
    /// host-side settings at their defaults (change those freely; changing the saved ones
    /// makes the build fail with the reason).
    public init(restoring snapshot: MachineSnapshot) {
        self.init(guest: .snapshot(snapshot))
        let shape = snapshot.shape
        memorySize = shape.memorySize
        vcpuCount = shape.vcpuCount
        interruptController = shape.interruptController
        debugExitPort = shape.debugExitPort
        qemuDebugExitPort = shape.qemuDebugExitPort
        firmwareConfig = shape.firmwareConfig
        commandLine = shape.commandLine
        hypercallPort = shape.hypercallPort
        emulation = shape.emulation
        unclaimedPorts = shape.unclaimedPorts
        unclaimedMMIO = shape.unclaimedMMIO
        trackDirtyPages = shape.trackDirtyPages
        virtioDevices = shape.virtioDevices
        virtioIOThread = shape.virtioIOThread
        virtioEventIndex = shape.virtioEventIndex
        msrs = shape.msrPolicy
    }
}

extension Machine {
    /// Saves the machine to two files: its state (every vCPU, the VM's interrupt
    /// controllers, PIT and clock, every device, the configuration; checksummed) and its
    /// memory. The machine must be paused (`pause()`), and stays paused. On an error
    /// neither file is left behind.
    ///
    /// A `.diff` snapshot writes only the pages written since the previous snapshot (or
    /// the start); it needs `trackDirtyPages`. Either way the dirty-page log starts again.
    public func snapshot(statePath: String, memoryPath: String, kind: SnapshotKind = .full) throws(MachineError) {
        try snapshot(statePath: statePath, memoryPath: memoryPath, kind: kind, notes: [:])
    }

    /// `snapshot(statePath:memoryPath:kind:)`, with `notes` stored in the state file for
    /// the program that restores it (`MachineSnapshot.notes`).
    package func snapshot(
        statePath: String, memoryPath: String, kind: SnapshotKind, notes: [String: [UInt8]]
    ) throws(MachineError) {
        let state: HostOutputFile, memoryFile: HostOutputFile
        do { state = try HostIO.openOutputFile(statePath) } catch {
            throw .cannotWriteFile(path: statePath, reason: error.reason)
        }
        do { memoryFile = try HostIO.openReadWriteFile(memoryPath) } catch {
            HostIO.removeFile(statePath)
            throw .cannotWriteFile(path: memoryPath, reason: error.reason)
        }
        do {
            try snapshot(
                state: state, statePath: statePath, memory: memoryFile, memoryPath: memoryPath, kind: kind, notes: notes)
        } catch {
            HostIO.removeFile(statePath)
            HostIO.removeFile(memoryPath)
            throw error
        }
    }

    /// `snapshot(statePath:memoryPath:kind:)` into files opened before (the command line
    /// opens them before its seccomp filter forbids `open`). The paths are for messages.
    package func snapshot(
        state: HostOutputFile, statePath: String, memory memoryFile: HostOutputFile, memoryPath: String,
        kind: SnapshotKind, notes: [String: [UInt8]] = [:]
    ) throws(MachineError) {
        guard isPaused else { throw .snapshotRefused("the machine is not paused; pause it first") }
        guard !hasStopped else { throw .snapshotRefused("the machine has stopped") }
        guard !configuration.qemuTestDevices else {
            throw .snapshotRefused("QEMU's test devices (qemuTestDevices) are not saved; turn them off to snapshot")
        }
        if kind == .diff, !configuration.trackDirtyPages {
            throw .snapshotRefused("a diff snapshot needs dirty-page tracking (track_dirty_pages) from the start")
        }
        // The I/O thread waits while the state is read, so that no device moves: each
        // request a device took is complete, and no frame or timer changes memory.
        if let ioThread = parts.ioThread {
            try ioThread.whileParked { () throws(MachineError) in
                try capture(
                    state: state, statePath: statePath, memory: memoryFile, memoryPath: memoryPath, kind: kind, notes: notes)
            }
        } else {
            try capture(
                state: state, statePath: statePath, memory: memoryFile, memoryPath: memoryPath, kind: kind, notes: notes)
        }
    }

    private func capture(
        state: HostOutputFile, statePath: String, memory memoryFile: HostOutputFile, memoryPath: String,
        kind: SnapshotKind, notes: [String: [UInt8]]
    ) throws(MachineError) {
        var file = SnapshotFile()
        file.append(MachineSnapshotLayout.machine, SavedMachineShape(configuration))
        do throws(KVMError) {
            file.append(MachineSnapshotLayout.vm, try parts.vm.captureState())
            for (index, vcpu) in parts.vcpus.enumerated() {
                file.append(MachineSnapshotLayout.vcpu(index), try vcpu.captureState())
            }
        } catch { throw .kvm(error) }
        for device in platform.devices {
            guard let state = device.state else { continue }
            var writer = SnapshotWriter()
            state.saveState(to: &writer)
            file.sections.append(.init(tag: MachineSnapshotLayout.device(device.name), contents: writer.bytes))
        }
        file.append(MachineSnapshotLayout.msrValues, RecordedMSRValues(values: parts.msrEmulator.recordedValues))
        for (name, contents) in notes.sorted(by: { $0.key < $1.key }) {
            file.sections.append(.init(tag: MachineSnapshotLayout.note(name), contents: contents))
        }
        try writeMemory(to: memoryFile.descriptor, path: memoryPath, kind: kind)
        do { try state.replaceContents(file.encoded()) } catch {
            throw .cannotWriteFile(path: statePath, reason: error.reason)
        }
    }
}

extension Machine {
    /// Writes guest memory for a snapshot: all of it, or the pages dirtied since the last
    /// snapshot. With dirty-page tracking on, the log starts again either way.
    func writeMemory(to fd: Int32, path: String, kind: SnapshotKind) throws(MachineError) {
        // Taken first: pages the guest writes from now on belong to the next diff.
        let dirty = configuration.trackDirtyPages ? try dirtyPages() : []
        do throws(MemoryFileError) {
            switch kind {
            case .full: _ = try memory.writeMemoryFile(to: fd)
            case .diff: _ = try memory.writeDiffMemoryFile(to: fd, dirtyPages: dirty)
            }
        } catch {
            throw .cannotWriteFile(path: path, reason: error.description)
        }
    }
}

extension MachineSnapshot {
    /// Copies the pages a diff snapshot's memory file holds onto the memory file of the
    /// full snapshot it follows, which then holds memory at the diff's time: restore the
    /// diff's state file with the merged memory file.
    public static func mergeDiff(memoryPath diffPath: String, ontoFullMemoryPath fullPath: String) throws(MachineError) {
        let diff: Int32
        do { diff = try HostIO.openReadOnly(diffPath) } catch {
            throw .cannotReadFile(path: diffPath, reason: error.reason)
        }
        defer { HostIO.closeDescriptor(diff) }
        let full: HostOutputFile
        do { full = try HostIO.openExistingForWriting(fullPath) } catch {
            throw .cannotWriteFile(path: fullPath, reason: error.reason)
        }
        do { try MemoryFile.mergeDiff(diff, onto: full.descriptor) } catch {
            throw .cannotWriteFile(path: fullPath, reason: error.description)
        }
    }
}

extension VirtioDeviceConfiguration {
    func encode(to writer: inout SnapshotWriter) {
        switch self {
        case .entropy:
            writer.write(UInt8(1))
        case .block(let path, let readOnly, let id, let limiter):
            writer.write(UInt8(2))
            writer.write(string: path)
            writer.write(readOnly)
            writer.write(id != nil)
            writer.write(string: id ?? "")
            Self.encode(limiter, to: &writer)
        case .console:
            writer.write(UInt8(3))
        case .net(let tap, let mac, let receive, let transmit, let mtu):
            writer.write(UInt8(4))
            writer.write(string: tap)
            writer.write(bytes: mac ?? [])
            Self.encode(receive, to: &writer)
            Self.encode(transmit, to: &writer)
            writer.write(mtu != nil)
            writer.write(mtu ?? 0)
        case .vsock(let cid, let path):
            writer.write(UInt8(5))
            writer.write(cid)
            writer.write(string: path)
        }
    }

    init(from reader: inout SnapshotReader) throws(SnapshotError) {
        switch try reader.readUInt8("a virtio device's kind") {
        case 1:
            self = .entropy
        case 2:
            let path = try reader.readString("a disk's path", maxCount: 4096)
            let readOnly = try reader.readBool("a disk's read-only flag")
            let hasID = try reader.readBool("whether a disk has an ID")
            let id = try reader.readString("a disk's ID", maxCount: 20)
            guard hasID || id.isEmpty else { throw .invalid("a disk's ID", reason: "is set without the flag") }
            self = .block(path: path, readOnly: readOnly, id: hasID ? id : nil, rateLimiter: try Self.decodeLimiter(&reader))
        case 3:
            self = .console
        case 4:
            let tap = try reader.readString("a TAP's name", maxCount: 15)
            let mac = try reader.readBytes("a MAC address", maxCount: 6)
            guard mac.isEmpty || mac.count == 6 else { throw .invalid("a MAC address", reason: "is \(mac.count) bytes") }
            let receive = try Self.decodeLimiter(&reader)
            let transmit = try Self.decodeLimiter(&reader)
            let hasMTU = try reader.readBool("whether an MTU is set")
            let mtu = try reader.readUInt16("an MTU")
            guard hasMTU || mtu == 0 else { throw .invalid("an MTU", reason: "is set without the flag") }
            self = .net(
                tap: tap, mac: mac.isEmpty ? nil : mac, receiveLimiter: receive, transmitLimiter: transmit,
                mtu: hasMTU ? mtu : nil)
        case 5:
            self = .vsock(
                cid: try reader.readUInt64("a vsock CID"), udsPath: try reader.readString("a vsock path", maxCount: 108))
        case let other:
            throw .invalid("a virtio device's kind", reason: "is \(other), not 1 to 5")
        }
    }

    private static func encode(_ limiter: RateLimiterConfiguration?, to writer: inout SnapshotWriter) {
        for bucket in [limiter?.bandwidth, limiter?.ops] {
            writer.write(bucket != nil)
            writer.write(bucket?.size ?? 0)
            writer.write(bucket?.oneTimeBurst ?? 0)
            writer.write(bucket?.refillTimeMilliseconds ?? 0)
        }
    }

    private static func decodeLimiter(_ reader: inout SnapshotReader) throws(SnapshotError) -> RateLimiterConfiguration? {
        var buckets: [TokenBucketConfiguration?] = []
        for name in ["bandwidth", "ops"] {
            let present = try reader.readBool("whether a \(name) bucket is set")
            let size = try reader.readUInt64("a \(name) bucket's size")
            let burst = try reader.readUInt64("a \(name) bucket's burst")
            let refill = try reader.readUInt64("a \(name) bucket's refill time")
            guard present || (size == 0 && burst == 0 && refill == 0) else {
                throw .invalid("a \(name) bucket", reason: "is set without the flag")
            }
            buckets.append(
                present ? TokenBucketConfiguration(size: size, oneTimeBurst: burst, refillTimeMilliseconds: refill) : nil)
        }
        guard buckets[0] != nil || buckets[1] != nil else { return nil }
        return RateLimiterConfiguration(bandwidth: buckets[0], ops: buckets[1])
    }
}
