package import VisorCore
package import VisorMemory
package import VisorSnapshot
import Synchronization

/// The virtio-mmio transport, version 2 (modern only; virtio 1.2, section 4.2.2): a 4 KiB
/// register window per device, carrying a `VirtioDevice`.
///
/// Every register accepts any value from any vCPU. Registers are 32 bits wide; another
/// width reads 0 and writes nothing, as does an offset with no register. The status
/// handshake is enforced: a status write may only add bits (0 resets); FEATURES_OK sticks
/// only if the driver's features are a subset of the offered ones and include VERSION_1;
/// feature pages are writable from DRIVER until FEATURES_OK; the queue registers from
/// FEATURES_OK until DRIVER_OK; at DRIVER_OK every ready queue is validated
/// (`Virtqueue.init`) and the device activated, and a failure sets DEVICE_NEEDS_RESET
/// with a configuration-change interrupt. QueueSel and QueueNotify take any 32-bit value:
/// an index with no queue reads a maximum size of 0 and notifies nothing.
package final class VirtioMMIOTransport: MMIODevice {
    /// Register offsets (4.2.2).
    package enum Register {
        package static let magic: UInt64 = 0x000
        package static let version: UInt64 = 0x004
        package static let deviceID: UInt64 = 0x008
        package static let vendorID: UInt64 = 0x00C
        package static let deviceFeatures: UInt64 = 0x010
        package static let deviceFeaturesSelect: UInt64 = 0x014
        package static let driverFeatures: UInt64 = 0x020
        package static let driverFeaturesSelect: UInt64 = 0x024
        package static let queueSelect: UInt64 = 0x030
        package static let queueSizeMaximum: UInt64 = 0x034
        package static let queueSize: UInt64 = 0x038
        package static let queueReady: UInt64 = 0x044
        package static let queueNotify: UInt64 = 0x050
        package static let interruptStatus: UInt64 = 0x060
        package static let interruptAcknowledge: UInt64 = 0x064
        package static let status: UInt64 = 0x070
        package static let queueDescriptorLow: UInt64 = 0x080
        package static let queueDescriptorHigh: UInt64 = 0x084
        package static let queueDriverLow: UInt64 = 0x090
        package static let queueDriverHigh: UInt64 = 0x094
        package static let queueDeviceLow: UInt64 = 0x0A0
        package static let queueDeviceHigh: UInt64 = 0x0A4
        package static let sharedMemorySelect: UInt64 = 0x0AC
        package static let sharedMemoryLengthLow: UInt64 = 0x0B0
        package static let sharedMemoryLengthHigh: UInt64 = 0x0B4
        package static let sharedMemoryBaseLow: UInt64 = 0x0B8
        package static let sharedMemoryBaseHigh: UInt64 = 0x0BC
        package static let configurationGeneration: UInt64 = 0x0FC
        package static let configuration: UInt64 = 0x100
    }

    /// Device status bits (2.1).
    package enum Status {
        package static let acknowledge: UInt32 = 1
        package static let driver: UInt32 = 2
        package static let driverOK: UInt32 = 4
        package static let featuresOK: UInt32 = 8
        package static let deviceNeedsReset: UInt32 = 64
        package static let failed: UInt32 = 128
    }

    /// "virt", little-endian.
    package static let magicValue: UInt32 = 0x7472_6976
    package static let version: UInt32 = 2
    /// "SVVS": SwiftVisor's vendor ID in the register.
    package static let vendor: UInt32 = 0x5356_5653
    /// The size of each device's register window.
    package static let windowSize: UInt64 = 0x1000

    private struct QueueRegisters {
        var size: UInt16
        var ready = false
        var descriptors: UInt64 = 0
        var driver: UInt64 = 0
        var device: UInt64 = 0
    }

    private struct State {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [QueueRegisters]
        var active = false
    }

    package let device: any VirtioDevice
    package let interrupt: VirtioInterrupt
    private let memory: GuestMemory
    private let state: Mutex<State>
    /// The features offered: the device's, VERSION_1 and the ring features implemented.
    package let offeredFeatures: UInt64
    private let queueMaximumSizes: [UInt16]
    /// Notifications received, for statistics.
    private let notifications = Atomic<UInt64>(0)
    /// How a restored queue is served once: on the I/O thread (its eventfd), or, nil, on
    /// the restoring thread.
    private let rescheduleOnRestore: (@Sendable (Int) -> Void)?

    /// - Parameters:
    ///   - eventIndex: whether to offer VIRTIO_F_EVENT_IDX; only for a device that
    ///     `supportsEventIndex` and with a `reschedule` that works.
    ///   - reschedule: serves a queue again later, as if notified (see
    ///     `VirtioInterrupt.reschedule(queue:)`).
    ///   - line: raises or lowers the device's interrupt line.
    package init(
        device: any VirtioDevice, memory: GuestMemory, eventIndex: Bool = false,
        reschedule: (@Sendable (Int) -> Void)? = nil,
        line: @escaping @Sendable (Bool) -> Void
    ) {
        self.device = device
        self.memory = memory
        self.interrupt = VirtioInterrupt(line: line, reschedule: reschedule ?? { _ in })
        rescheduleOnRestore = reschedule
        queueMaximumSizes = device.queueMaximumSizes
        offeredFeatures =
            device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.indirectDescriptors
            | (eventIndex ? VirtioFeature.eventIndex : 0)
        state = Mutex(State(queues: queueMaximumSizes.map { QueueRegisters(size: $0) }))
    }

    /// The status register (for tests and statistics).
    package var status: UInt32 { state.withLock { $0.status } }
    /// Whether the device is serving its queues.
    package var isActive: Bool { state.withLock { $0.active } }
    /// Queue notifications received while active.
    package var notificationCount: UInt64 { notifications.load(ordering: .relaxed) }

    package func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        if offset >= Register.configuration {
            return device.readConfiguration(offset: offset - Register.configuration, width: width)
        }
        guard width == 4 else { return 0 }
        let value: UInt32 =
            switch offset {
            case Register.magic: Self.magicValue
            case Register.version: Self.version
            case Register.deviceID: device.deviceType
            case Register.vendorID: Self.vendor
            case Register.interruptStatus: interrupt.status
            case Register.configurationGeneration: interrupt.configurationGeneration
            // No shared memory regions: a length of all ones says "none" (4.2.2).
            case Register.sharedMemoryLengthLow, Register.sharedMemoryLengthHigh,
                Register.sharedMemoryBaseLow, Register.sharedMemoryBaseHigh:
                UInt32.max
            default: state.withLock { readLocked(offset, $0) }
            }
        return UInt64(value)
    }

    private func readLocked(_ offset: UInt64, _ state: State) -> UInt32 {
        let queue = Int(exactly: state.queueSelect).flatMap { $0 < state.queues.count ? $0 : nil }
        switch offset {
        case Register.deviceFeatures:
            switch state.deviceFeaturesSelect {
            case 0: return UInt32(truncatingIfNeeded: offeredFeatures)
            case 1: return UInt32(truncatingIfNeeded: offeredFeatures >> 32)
            default: return 0
            }
        case Register.queueSizeMaximum:
            return queue.map { UInt32(queueMaximumSizes[$0]) } ?? 0
        case Register.queueReady:
            return queue.map { state.queues[$0].ready ? 1 : 0 } ?? 0
        case Register.status:
            return state.status
        default:
            return 0
        }
    }

    package func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        if offset >= Register.configuration {
            device.writeConfiguration(offset: offset - Register.configuration, width: width, value: value)
            return .continue
        }
        guard width == 4 else { return .continue }
        let value = UInt32(truncatingIfNeeded: value)
        switch offset {
        case Register.queueNotify:
            if let queue = Int(exactly: value) { queueNotified(queue) }
        case Register.interruptAcknowledge:
            interrupt.acknowledge(value)
        case Register.status:
            writeStatus(value)
        default:
            state.withLock { writeLocked(offset, value, &$0) }
        }
        return .continue
    }

    /// A notification for `queue`, from a QueueNotify exit or, through an ioeventfd, from
    /// an I/O thread: served only while the device is active and for a queue it has.
    package func queueNotified(_ queue: Int) {
        guard queue >= 0, queue < queueMaximumSizes.count, state.withLock({ $0.active }) else { return }
        notifications.add(1, ordering: .relaxed)
        device.notify(queue: queue)
    }

    /// The number of queues (the values QueueNotify can name).
    package var queueCount: Int { queueMaximumSizes.count }

    private func writeLocked(_ offset: UInt64, _ value: UInt32, _ state: inout State) {
        let configuringFeatures = state.status & Status.driver != 0 && state.status & Status.featuresOK == 0
        let configuringQueues = state.status & Status.featuresOK != 0 && state.status & Status.driverOK == 0
        let queue = Int(exactly: state.queueSelect).flatMap { $0 < state.queues.count ? $0 : nil }
        switch offset {
        case Register.deviceFeaturesSelect:
            state.deviceFeaturesSelect = value
        case Register.driverFeaturesSelect:
            state.driverFeaturesSelect = value
        case Register.driverFeatures where configuringFeatures:
            switch state.driverFeaturesSelect {
            case 0: state.driverFeatures = state.driverFeatures & ~0xFFFF_FFFF | UInt64(value)
            case 1: state.driverFeatures = state.driverFeatures & 0xFFFF_FFFF | UInt64(value) << 32
            default: break
            }
        case Register.queueSelect:
            state.queueSelect = value
        case Register.queueSize where configuringQueues:
            // Any 16-bit value is kept; DRIVER_OK refuses a bad one. Larger values cannot
            // be a size at all, and are kept as 0 so that they are refused too.
            if let queue { state.queues[queue].size = UInt16(exactly: value) ?? 0 }
        case Register.queueReady where configuringQueues:
            if let queue { state.queues[queue].ready = value & 1 != 0 }
        case Register.queueDescriptorLow where configuringQueues:
            if let queue { setLow(&state.queues[queue].descriptors, value) }
        case Register.queueDescriptorHigh where configuringQueues:
            if let queue { setHigh(&state.queues[queue].descriptors, value) }
        case Register.queueDriverLow where configuringQueues:
            if let queue { setLow(&state.queues[queue].driver, value) }
        case Register.queueDriverHigh where configuringQueues:
            if let queue { setHigh(&state.queues[queue].driver, value) }
        case Register.queueDeviceLow where configuringQueues:
            if let queue { setLow(&state.queues[queue].device, value) }
        case Register.queueDeviceHigh where configuringQueues:
            if let queue { setHigh(&state.queues[queue].device, value) }
        default:
            break
        }
    }

    private func setLow(_ address: inout UInt64, _ value: UInt32) {
        address = address & ~0xFFFF_FFFF | UInt64(value)
    }

    private func setHigh(_ address: inout UInt64, _ value: UInt32) {
        address = address & 0xFFFF_FFFF | UInt64(value) << 32
    }

    /// A status write: 0 resets; otherwise only added bits count, in the handshake's order.
    private func writeStatus(_ value: UInt32) {
        enum Step {
            case none
            case reset
            case activate(features: UInt64, queues: [QueueRegisters])
        }
        let step: Step = state.withLock { state in
            if value == 0 {
                state = State(queues: queueMaximumSizes.map { QueueRegisters(size: $0) })
                return .reset
            }
            let old = state.status
            // DEVICE_NEEDS_RESET is the device's to set: ignored in a write, kept once set.
            let driverBits = old & ~Status.deviceNeedsReset
            // Clearing a bit other than by reset is not a transition the driver may make.
            guard value & driverBits == driverBits else { return .none }
            var new = value & ~Status.deviceNeedsReset | old & Status.deviceNeedsReset
            if new & Status.featuresOK != 0, old & Status.featuresOK == 0 {
                let subset = state.driverFeatures & ~offeredFeatures == 0
                let modern = state.driverFeatures & VirtioFeature.version1 != 0
                if !subset || !modern || old & Status.driver == 0 { new &= ~Status.featuresOK }
            }
            var step = Step.none
            if new & Status.driverOK != 0, old & Status.driverOK == 0 {
                if new & Status.featuresOK == 0 || state.active {
                    new &= ~Status.driverOK
                } else {
                    step = .activate(features: state.driverFeatures, queues: state.queues)
                }
            }
            state.status = new
            return step
        }
        switch step {
        case .none:
            break
        case .reset:
            device.reset()
            interrupt.reset()
        case .activate(let features, let queues):
            activate(features: features, queues: queues)
        }
    }

    private func activate(features: UInt64, queues: [QueueRegisters], resumingAt positions: [UInt16] = []) {
        var virtqueues: [Virtqueue?] = []
        var failure: String?
        for (index, queue) in queues.enumerated() {
            guard queue.ready else {
                virtqueues.append(nil)
                continue
            }
            do {
                var virtqueue = try Virtqueue(
                    size: queue.size, maximum: queueMaximumSizes[index], descriptors: queue.descriptors,
                    available: queue.driver, used: queue.device,
                    indirect: features & VirtioFeature.indirectDescriptors != 0,
                    eventIndex: features & VirtioFeature.eventIndex != 0, memory: memory,
                    resumingAt: index < positions.count ? positions[index] : 0)
                // A device polling when the snapshot was taken left the driver told not
                // to notify; the restored device polls nothing yet.
                if !positions.isEmpty { virtqueue.resumeNotifications(memory: memory) }
                virtqueues.append(virtqueue)
            } catch {
                failure = "queue \(index): \(error)"
                break
            }
        }
        if failure == nil {
            do { try device.activate(features: features, queues: virtqueues, memory: memory, interrupt: interrupt) } catch {
                failure = error.reason
            }
        }
        let activated = state.withLock { state in
            // A reset that raced with this activation wins.
            guard state.status & Status.driverOK != 0 else { return false }
            if failure != nil {
                state.status |= Status.deviceNeedsReset
                return false
            }
            state.active = true
            return true
        }
        if failure != nil {
            lastFailure.withLock { $0 = failure }
            interrupt.signalConfigurationChange()
        } else if !activated {
            device.reset()
        }
    }

    // MARK: Snapshot

    /// Saves the registers, the interrupt status and, for an active device, where each
    /// queue's device side stands. Call it with the device quiet (vCPUs paused, its I/O
    /// thread parked): every entry the device took from a queue is then back in the used
    /// ring, so the used ring's index in guest memory is how far the device got.
    package func saveState(to writer: inout SnapshotWriter) {
        let state = self.state.withLock { $0 }
        writer.write(state.status)
        writer.write(state.deviceFeaturesSelect)
        writer.write(state.driverFeaturesSelect)
        writer.write(state.driverFeatures)
        writer.write(state.queueSelect)
        writer.write(state.active)
        writer.write(UInt32(state.queues.count))
        for queue in state.queues {
            writer.write(queue.size)
            writer.write(queue.ready)
            writer.write(queue.descriptors)
            writer.write(queue.driver)
            writer.write(queue.device)
            let taken = state.active && queue.ready ? (try? memory.readUInt16(at: queue.device &+ 2)) ?? 0 : 0
            writer.write(taken)
        }
        writer.write(interrupt.status)
        writer.write(interrupt.configurationGeneration)
    }

    /// Puts back saved registers into a transport for the same device, and, for a device
    /// that was active, activates it on queues resuming where they stood, then serves each
    /// queue once (a notification the old process took is not sent again). Refuses states
    /// the handshake could not have reached.
    package func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        var restored = State(queues: [])
        restored.status = try reader.readUInt32("the virtio status")
        restored.deviceFeaturesSelect = try reader.readUInt32("the virtio device-features page")
        restored.driverFeaturesSelect = try reader.readUInt32("the virtio driver-features page")
        restored.driverFeatures = try reader.readUInt64("the virtio driver features")
        restored.queueSelect = try reader.readUInt32("the virtio queue selector")
        restored.active = try reader.readBool("the virtio activation flag")
        let count = Int(try reader.readUInt32("the virtio queue count"))
        guard count == queueMaximumSizes.count else {
            throw .invalid("the virtio queue count", reason: "is \(count); the device has \(queueMaximumSizes.count)")
        }
        var resumeAt: [UInt16] = []
        for index in 0..<count {
            var queue = QueueRegisters(size: try reader.readUInt16("the size of virtio queue \(index)"))
            queue.ready = try reader.readBool("the ready flag of virtio queue \(index)")
            queue.descriptors = try reader.readUInt64("the descriptor table of virtio queue \(index)")
            queue.driver = try reader.readUInt64("the available ring of virtio queue \(index)")
            queue.device = try reader.readUInt64("the used ring of virtio queue \(index)")
            resumeAt.append(try reader.readUInt16("the position of virtio queue \(index)"))
            restored.queues.append(queue)
        }
        let interruptStatus = try reader.readUInt32("the virtio interrupt status", )
        let generation = try reader.readUInt32("the virtio configuration generation")
        guard interruptStatus & ~3 == 0 else { throw .invalid("the virtio interrupt status", reason: "sets reserved bits") }
        let negotiated = restored.status & Status.featuresOK != 0
        guard !negotiated || restored.driverFeatures & ~offeredFeatures == 0 else {
            throw .invalid("the virtio driver features", reason: "include features the device does not offer")
        }
        if restored.active {
            guard negotiated, restored.status & Status.driverOK != 0, restored.status & Status.deviceNeedsReset == 0 else {
                throw .invalid("the virtio status", reason: "is 0x\(String(restored.status, radix: 16)) for an active device")
            }
        }
        let active = restored.active
        restored.active = false
        state.withLock { $0 = restored }
        interrupt.restore(status: interruptStatus, generation: generation)
        guard active else { return }
        activate(features: restored.driverFeatures, queues: restored.queues, resumingAt: resumeAt)
        guard isActive else {
            throw .invalid("the virtio device", reason: "did not start again: \(activationFailure ?? "unknown reason")")
        }
        device.resumedFromSnapshot()
        for queue in restored.queues.indices where restored.queues[queue].ready {
            if let reschedule = rescheduleOnRestore { reschedule(queue) } else { device.notify(queue: queue) }
        }
    }

    private let lastFailure = Mutex<String?>(nil)
    /// Why the last activation failed, if one did (for diagnostics).
    package var activationFailure: String? { lastFailure.withLock { $0 } }
}
extension VirtioMMIOTransport: SnapshotStateful {}
