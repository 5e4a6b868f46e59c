package import VisorMemory
import Synchronization
import VisorHost

/// The entropy device (virtio 1.2, section 5.4; device ID 4): one request queue whose
/// buffers the device fills with bytes from the host kernel's `getrandom(2)`.
///
/// A request is a chain of device-writable buffers; a chain with a readable buffer is
/// malformed and completes with length 0. Each request gets at most
/// `maximumRequestBytes`, whatever its buffers add up to, so a guest cannot make one
/// notification cost unbounded host work, and one notification serves at most one
/// queue's worth of requests.
package final class VirtioEntropyDevice: VirtioDevice {
    package static let maximumRequestBytes = 64 * 1024
    package static let queueSize: UInt16 = 256

    private struct State {
        var queue: Virtqueue?
        var memory: GuestMemory?
        var interrupt: VirtioInterrupt?
        var chain = DescriptorChain(capacity: Int(VirtioEntropyDevice.queueSize))
        /// Random bytes on their way to the guest; allocated once, at the first request.
        var scratch: [UInt8] = []
        var counters = VirtioCounters()
    }
    private let state = Mutex(State())

    package init() {}

    package var deviceType: UInt32 { 4 }
    package var deviceFeatures: UInt64 { 0 }
    package var queueMaximumSizes: [UInt16] { [Self.queueSize] }
    package var supportsEventIndex: Bool { true }

    /// Requests completed, malformed chains among them, and bytes served.
    package var counters: VirtioCounters { state.withLock { $0.counters } }

    package func readConfiguration(offset: UInt64, width: UInt8) -> UInt64 { 0 }
    package func writeConfiguration(offset: UInt64, width: UInt8, value: UInt64) {}

    package func activate(features: UInt64, queues: [Virtqueue?], memory: GuestMemory, interrupt: VirtioInterrupt)
        throws(VirtioActivationError)
    {
        guard let queue = queues.first ?? nil else { throw VirtioActivationError("the request queue is not ready") }
        state.withLock { state in
            state.queue = queue
            state.memory = memory
            state.interrupt = interrupt
            if state.scratch.isEmpty { state.scratch = [UInt8](repeating: 0, count: Self.maximumRequestBytes) }
        }
    }

    package func reset() {
        state.withLock { state in
            state.queue = nil
            state.memory = nil
            state.interrupt = nil
        }
    }

    package func notify(queue index: Int) {
        let interrupt: VirtioInterrupt? = state.withLock { state in
            guard var queue = state.queue, let memory = state.memory else { return nil }
            let served = queue.serveAvailable(
                memory: memory, chain: &state.chain, counters: &state.counters, context: &state.scratch
            ) { chain, scratch in
                chain.readable.isEmpty ? Self.fill(chain, scratch: &scratch, memory: memory) : nil
            }
            state.queue = queue
            if served.more { state.interrupt?.reschedule(queue: index) }
            return served.interrupt ? state.interrupt : nil
        }
        interrupt?.signalUsedBuffer()
    }

    /// Fills the chain's writable buffers from `getrandom(2)` through `scratch`, up to the
    /// per-request cap.
    private static func fill(
        _ chain: borrowing DescriptorChain, scratch: inout [UInt8], memory: GuestMemory
    ) -> VirtioCompletion {
        var budget = maximumRequestBytes
        var written = 0
        for element in chain.writable where budget > 0 {
            let count = min(Int(element.length), budget)
            let got = HostIO.fillRandom(&scratch, count: count)
            do { try memory.write(scratch[0..<got], at: element.address) } catch { break }
            written += got
            budget -= got
            if got < count { break }
        }
        return VirtioCompletion(written: UInt32(written), bytes: UInt64(written))
    }
}
