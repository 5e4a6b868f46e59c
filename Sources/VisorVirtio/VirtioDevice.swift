package import VisorMemory
import Synchronization

/// Feature bits the transport knows (virtio 1.2, section 6).
package enum VirtioFeature {
    /// VIRTIO_F_INDIRECT_DESC (28).
    package static let indirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_F_EVENT_IDX (29).
    package static let eventIndex: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1 (32): a modern device. Required: SwiftVisor has no legacy interface.
    package static let version1: UInt64 = 1 << 32
}

/// A virtio device's model, apart from the transport that carries its registers, so that a
/// PCI transport can carry the same devices later. The transport negotiates features and
/// validates the queues; the device serves them.
///
/// Thread safety: `notify(queue:)` may run on any vCPU thread while another resets the
/// device; a device keeps its state under its own lock.
package protocol VirtioDevice: AnyObject, Sendable {
    /// The device ID (1 net, 2 block, 3 console, 4 entropy, 19 vsock).
    var deviceType: UInt32 { get }
    /// The device-specific feature bits offered. The transport adds VERSION_1 and the ring
    /// features it implements.
    var deviceFeatures: UInt64 { get }
    /// The maximum size of each queue; its count is the number of queues.
    var queueMaximumSizes: [UInt16] { get }
    /// `width` bytes of the configuration space at `offset` (little-endian); 0 past its end.
    func readConfiguration(offset: UInt64, width: UInt8) -> UInt64
    /// A driver's write to the configuration space; ignored where nothing is writable.
    func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64)
    /// Starts serving, with the features the driver accepted and its queues (nil where the
    /// driver left a queue unused). Throws to refuse; the transport then sets
    /// DEVICE_NEEDS_RESET.
    func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    /// The driver notified queue `queue` (always a valid index, and only while active).
    func notify(queue: Int)
    /// Stops serving and forgets the queues, as at power-on.
    func reset()
    /// What the device has served so far.
    var counters: VirtioCounters { get }
    /// Whether queue `queue`'s notifications are served on the vCPU thread that wrote
    /// QueueNotify, at its exit, even where an I/O thread serves the device's other queues
    /// (a console's output: see `VirtioConsoleDevice`). False by default.
    func servesNotificationsOnVCPU(queue: Int) -> Bool
    /// Whether the device honours VIRTIO_F_EVENT_IDX: it publishes `avail_event` after
    /// serving a queue, checks the ring again, and asks its transport to reschedule a queue
    /// it left unfinished (`VirtioInterrupt.reschedule(queue:)`), since under EVENT_IDX the
    /// driver does not notify for entries the device could already see. False by default.
    var supportsEventIndex: Bool { get }
    /// The device was activated from a snapshot, in a new process: what it held outside
    /// guest memory (host connections) is gone, and it tells the driver so if it must.
    /// Nothing by default.
    func resumedFromSnapshot()
}

extension VirtioDevice {
    package func servesNotificationsOnVCPU(queue: Int) -> Bool { false }
    package var supportsEventIndex: Bool { false }
    package func resumedFromSnapshot() {}
}

/// A device's work, for statistics: requests completed (the malformed ones among them,
/// completed with length 0), the payload bytes moved, and the packets a device dropped
/// (the network device's frames that found no room).
package struct VirtioCounters: Sendable, Equatable {
    package var requests: UInt64 = 0
    package var malformed: UInt64 = 0
    package var bytes: UInt64 = 0
    package var dropped: UInt64 = 0
    package init(requests: UInt64 = 0, malformed: UInt64 = 0, bytes: UInt64 = 0, dropped: UInt64 = 0) {
        self.requests = requests
        self.malformed = malformed
        self.bytes = bytes
        self.dropped = dropped
    }
}

/// Why a device refused to start.
package struct VirtioActivationError: Error, Equatable, CustomStringConvertible {
    package let reason: String
    package init(_ reason: String) { self.reason = reason }
    package var description: String { reason }
}

/// A transport's interrupt, shared with its device: the interrupt status register and the
/// line it drives. The line is level-triggered: high while any status bit is set, lowered
/// when the driver acknowledges the last one.
package final class VirtioInterrupt: Sendable {
    /// InterruptStatus bit 0: a used buffer was returned.
    package static let usedBuffer: UInt32 = 1
    /// InterruptStatus bit 1: the configuration changed.
    package static let configurationChange: UInt32 = 2

    private struct State {
        var status: UInt32 = 0
        var raised = false
    }
    private let state = Mutex(State())
    private let line: @Sendable (Bool) -> Void
    private let rescheduleQueue: @Sendable (Int) -> Void
    private let generation = Atomic<UInt32>(0)
    /// Interrupts raised (line transitions low to high), for statistics.
    private let raisedCount = Atomic<UInt64>(0)

    /// `line` raises (true) or lowers (false) the device's interrupt line; `reschedule`
    /// serves a queue again later, as if the driver had notified it.
    package init(line: @escaping @Sendable (Bool) -> Void, reschedule: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.line = line
        self.rescheduleQueue = reschedule
    }

    /// Asks the transport to serve `queue` again soon, as if notified: for a device that
    /// stopped at its per-notification bound with entries left, which under EVENT_IDX no
    /// notification would bring back. On the I/O thread it signals the queue's eventfd, so
    /// other devices are served first.
    package func reschedule(queue: Int) { rescheduleQueue(queue) }

    /// The InterruptStatus register.
    package var status: UInt32 { state.withLock { $0.status } }
    /// The ConfigGeneration register.
    package var configurationGeneration: UInt32 { generation.load(ordering: .acquiring) }
    /// How many times the line went high.
    package var interruptsRaised: UInt64 { raisedCount.load(ordering: .relaxed) }

    /// Sets `bits` in the status and raises the line if it was low.
    package func signal(_ bits: UInt32) {
        state.withLock { state in
            state.status |= bits & 3
            if state.status != 0, !state.raised {
                state.raised = true
                raisedCount.add(1, ordering: .relaxed)
                line(true)
            }
        }
    }

    /// A used buffer was returned.
    package func signalUsedBuffer() { signal(Self.usedBuffer) }

    /// The device's configuration changed: a new generation, and the interrupt.
    package func signalConfigurationChange() {
        generation.add(1, ordering: .releasing)
        signal(Self.configurationChange)
    }

    /// InterruptACK: clears `bits`, and lowers the line when nothing is left.
    package func acknowledge(_ bits: UInt32) {
        state.withLock { state in
            state.status &= ~bits
            if state.status == 0, state.raised {
                state.raised = false
                line(false)
            }
        }
    }

    /// A restored interrupt: the saved status (the line raised if any bit is set) and the
    /// configuration generation.
    package func restore(status: UInt32, generation: UInt32) {
        self.generation.store(generation, ordering: .releasing)
        if status != 0 { signal(status) }
    }

    /// Device reset: no status, line low.
    package func reset() { acknowledge(UInt32.max) }
}
