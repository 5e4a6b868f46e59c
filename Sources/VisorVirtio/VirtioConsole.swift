package import VisorCore
package import VisorMemory
import Synchronization

/// The console device (virtio 1.2, section 5.3; device ID 3) with one port and no
/// multiport, size or emergency-write features: receiveq0 (queue 0) carries input to the
/// guest, transmitq0 (queue 1) its output. With `console=hvc0` a Linux guest's log arrives
/// through it.
///
/// Output is served on the vCPU thread that notified transmitq0, at its exit, even when an
/// I/O thread serves other queues (`servesNotificationsOnVCPU`): a console whose reader is
/// slow then holds back only the vCPU writing to it, as a serial port does, and the kick
/// that stops or pauses the machine also ends a write blocked on a full pipe (the vCPU
/// thread's `WriteGiveUp` condition). It also suits the Linux driver, which spins until
/// each transmit buffer comes back: by the time the vCPU resumes, it has. Each transmit
/// chain's readable bytes go to `output` in pieces of at most `stagingBytes`, through one
/// buffer allocated at activation; a chain with a device-writable buffer is malformed.
///
/// Input comes from `receive(_:)` (the command line's reader thread, or a program), which
/// fills the driver's receive buffers as far as they go and returns how many bytes it took:
/// the caller keeps the rest, so nothing is dropped. A receive chain with a readable
/// buffer is malformed and completes with length 0.
package final class VirtioConsoleDevice: VirtioDevice {
    package static let queueSize: UInt16 = 256
    package static let receiveQueue = 0
    package static let transmitQueue = 1
    /// The piece of output handed to `output` at a time.
    package static let stagingBytes = 4096

    private struct State {
        var receive: Virtqueue?
        var transmit: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioConsoleDevice.queueSize))
        /// Output on its way to `output`; allocated once, at the first activation.
        var staging: [UInt8] = []
        /// Requests are transmit chains; bytes count both ways.
        var counters = VirtioCounters()
        var received: UInt64 = 0
    }
    private let state = Mutex(State())
    private let output: ConsoleOutput

    /// A console whose guest output goes to `output`.
    package init(output: @escaping ConsoleOutput) { self.output = output }

    package var deviceType: UInt32 { 3 }
    package var deviceFeatures: UInt64 { 0 }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize, Self.queueSize] }

    /// Transmit chains completed (malformed ones among them), and bytes sent and received.
    package var counters: VirtioCounters { state.withLock { $0.counters } }
    /// Input bytes delivered to the guest.
    package var receivedBytes: UInt64 { state.withLock { $0.received } }

    /// No configuration fields without the size, multiport or emergency-write features.
    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 { 0 }
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func servesNotificationsOnVCPU(queue: Int) -> Bool { queue == Self.transmitQueue }

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        // The driver may leave the receive queue unused (an output-only console).
        guard queues.count == 2, let transmit = queues[Self.transmitQueue] else {
            throw VirtioActivationError("the transmit queue is not ready")
        }
        state.withLock { state in
            state.receive = queues[Self.receiveQueue]
            state.transmit = transmit
            state.memory = memory
            state.interrupt = interrupt
            if state.staging.isEmpty { state.staging = [UInt8](repeating: 0, count: Self.stagingBytes) }
        }
    }

    package func reset() {
        state.withLock { state in
            state.receive = nil
            state.transmit = nil
            state.memory = nil
            state.interrupt = nil
        }
    }

    package func notify(queue index: Int) {
        // receiveq0's buffers are taken when input comes; only output needs serving now.
        guard index == Self.transmitQueue else { return }
        let interrupt: VirtioInterrupt? = state.withLock { state in
            guard var queue = state.transmit, let memory = state.memory else { return nil }
            let output = self.output
            let served = queue.serveAvailable(
                memory: memory, chain: &state.chain, counters: &state.counters, context: &state.staging
            ) { chain, staging in
                chain.writable.isEmpty ? Self.send(chain, staging: &staging, memory: memory, output: output) : nil
            }
            state.transmit = queue
            return served.interrupt ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    /// Hands the chain's readable bytes to `output`, a staging buffer at a time. The device
    /// writes nothing into a transmit chain.
    private static func send(
        _ chain: borrowing DescriptorChain, staging: inout [UInt8], memory: GuestMemory, output: ConsoleOutput
    ) -> VirtioCompletion? {
        var sent: UInt64 = 0
        for element in chain.readable {
            var offset: UInt64 = 0
            let length = UInt64(element.length)
            while offset < length {
                let count = Int(min(length - offset, UInt64(staging.count)))
                // In RAM: the chain's buffers were checked when it was popped.
                guard (try? memory.read(into: &staging, count: count, at: element.address + offset)) != nil else {
                    return nil
                }
                output(staging.span.extracting(0..<count))
                offset += UInt64(count)
                sent += UInt64(count)
            }
        }
        return VirtioCompletion(written: 0, bytes: sent)
    }

    /// Delivers input to the guest: fills receive buffers with `bytes` as far as the driver
    /// has made them available (at most one queue's worth of chains), and returns how many
    /// bytes were taken; 0 while the driver is not ready or has no buffer.
    package func receive(_ bytes: [UInt8]) -> Int {
        guard !bytes.isEmpty else { return 0 }
        let (taken, interrupt): (Int, VirtioInterrupt?) = state.withLock { state in
            guard var queue = state.receive, let memory = state.memory else { return (0, nil) }
            var taken = 0
            var completed = false
            for _ in 0..<Int(queue.size) where taken < bytes.count {
                let result = queue.pop(into: &state.chain, memory: memory)
                if result == .empty { break }
                var written = 0
                if result == .chain, state.chain.readable.isEmpty {
                    for element in state.chain.writable where taken < bytes.count {
                        let count = min(Int(element.length), bytes.count - taken)
                        guard (try? memory.write(bytes[taken..<(taken + count)], at: element.address)) != nil else { break }
                        taken += count
                        written += count
                    }
                } else {
                    state.counters.malformed &+= 1
                }
                queue.push(head: state.chain.head, length: UInt32(written), memory: memory)
                completed = true
            }
            state.received &+= UInt64(taken)
            state.counters.bytes &+= UInt64(taken)
            let wants = completed && queue.needsInterrupt(memory: memory)
            state.receive = queue
            return (taken, wants ? state.interrupt : nil)
        }
        interrupt?.signalUsedBuffer()
        return taken
    }
}
