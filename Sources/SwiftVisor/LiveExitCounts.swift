import Synchronization
import VisorKVM

/// Exits of all vCPUs so far, by the kinds Firecracker's `vcpu` metrics count, read while
/// the machine runs. Each count is read racily: it may lag its vCPU by an exit or two.
package struct LiveExitCounts: Sendable, Equatable {
    package var ioIn: UInt64 = 0
    package var ioOut: UInt64 = 0
    package var mmioRead: UInt64 = 0
    package var mmioWrite: UInt64 = 0

    package init(ioIn: UInt64 = 0, ioOut: UInt64 = 0, mmioRead: UInt64 = 0, mmioWrite: UInt64 = 0) {
        self.ioIn = ioIn
        self.ioOut = ioOut
        self.mmioRead = mmioRead
        self.mmioWrite = mmioWrite
    }
}

/// One vCPU's running exit counts. Only its vCPU thread writes them, each with a relaxed
/// load and a relaxed store (plain moves on x86: no locked read-modify-write, no lock, no
/// allocation on the exit path); any thread may read them.
final class LiveExitCounter: Sendable {
    private let ioIn = Atomic<UInt64>(0)
    private let ioOut = Atomic<UInt64>(0)
    private let mmioRead = Atomic<UInt64>(0)
    private let mmioWrite = Atomic<UInt64>(0)
    /// Keeps two vCPUs' counters, allocated one after the other, off one cache line.
    private let padding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    init() {}

    /// Counts `exit`; called only on this counter's vCPU thread.
    @inline(__always)
    func record(_ exit: VMExit) {
        switch exit {
        case .io(let access):
            if access.isWrite { bump(ioOut) } else { bump(ioIn) }
        case .mmio(let access):
            if access.isWrite { bump(mmioWrite) } else { bump(mmioRead) }
        default: break
        }
    }

    @inline(__always)
    private func bump(_ counter: borrowing Atomic<UInt64>) {
        counter.store(counter.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    /// Adds this vCPU's counts to `total`.
    func add(to total: inout LiveExitCounts) {
        total.ioIn &+= ioIn.load(ordering: .relaxed)
        total.ioOut &+= ioOut.load(ordering: .relaxed)
        total.mmioRead &+= mmioRead.load(ordering: .relaxed)
        total.mmioWrite &+= mmioWrite.load(ordering: .relaxed)
    }
}
