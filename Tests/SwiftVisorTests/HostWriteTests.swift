import Glibc
import Synchronization
import Testing
import VisorHost
import VisorKVM

/// `HostIO.write` and the per-thread give-up condition that keeps a stopping vCPU from
/// staying blocked on a full pipe.
@Suite("Host writes that give up")
struct HostWriteTests {
    /// A pipe whose buffer is full, read end non-blocking so the test can drain it.
    static func fullPipe() -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        // SAFETY: pipe writes two descriptors into the two-element array's buffer.
        let rc = unsafe ends.withUnsafeMutableBufferPointer { unsafe pipe($0.baseAddress) }
        precondition(rc == 0)
        let flags = fcntl(ends[1], F_GETFL)
        _ = fcntl(ends[1], F_SETFL, flags | O_NONBLOCK)
        let chunk = [UInt8](repeating: 0x2E, count: 4096)
        // SAFETY: write(2) reads at most count bytes of the array's buffer.
        while unsafe chunk.withUnsafeBytes({ unsafe Glibc.write(ends[1], $0.baseAddress, $0.count) }) > 0 {}
        _ = fcntl(ends[1], F_SETFL, flags)
        return (ends[0], ends[1])
    }

    @Test("a write blocked on a full pipe gives up once a signal interrupts it and the condition holds")
    func givesUpWhenConditionHolds() {
        let (readEnd, writeEnd) = Self.fullPipe()
        defer {
            close(readEnd)
            close(writeEnd)
        }
        VCPUSignals.installKickHandler()
        let writer = Mutex<pthread_t?>(nil)
        let written = Mutex<Bool?>(nil)
        var thread = pthread_t()
        let rc = VCPUThread.create(&thread) {
            writer.withLock { $0 = pthread_self() }
            VCPUSignals.unblock([VCPUSignals.kick])
            let result = WriteGiveUp.during({ true }, run: { HostIO.write([1, 2, 3], to: writeEnd) })
            written.withLock { $0 = result }
        }
        #expect(rc == 0)
        // Kick until the writer is out: the first kick may come before it blocked.
        for _ in 0..<2000 where written.withLock({ $0 }) == nil {
            if let target = writer.withLock({ $0 }) { pthread_kill(target, VCPUSignals.kick) }
            usleep(5000)
        }
        VCPUThread.join(thread)
        #expect(written.withLock { $0 } == false)
    }

    @Test("bytes that can go out at once are written even while the condition holds (a pause loses no output)")
    func writesAtOnceEvenWhenConditionHolds() {
        var ends: [Int32] = [0, 0]
        // SAFETY: as in fullPipe().
        #expect(unsafe ends.withUnsafeMutableBufferPointer { unsafe pipe($0.baseAddress) } == 0)
        defer { ends.forEach { close($0) } }
        #expect(WriteGiveUp.during({ true }, run: { HostIO.write([7, 8, 9], to: ends[1]) }))
        var buffer = [UInt8](repeating: 0, count: 8)
        // SAFETY: read(2) writes at most count bytes into the array's buffer.
        let n = unsafe buffer.withUnsafeMutableBytes { unsafe read(ends[0], $0.baseAddress, $0.count) }
        #expect(Array(buffer.prefix(max(n, 0))) == [7, 8, 9])
    }

    @Test("without a condition, and with one that does not hold, every byte is written")
    func writesWhenConditionDoesNotHold() {
        var ends: [Int32] = [0, 0]
        // SAFETY: as in fullPipe().
        #expect(unsafe ends.withUnsafeMutableBufferPointer { unsafe pipe($0.baseAddress) } == 0)
        defer { ends.forEach { close($0) } }
        #expect(!WriteGiveUp.holds)
        #expect(HostIO.write([1, 2, 3], to: ends[1]))
        #expect(WriteGiveUp.during({ false }, run: { HostIO.write([4, 5], to: ends[1]) }))
        var buffer = [UInt8](repeating: 0, count: 8)
        // SAFETY: read(2) writes at most count bytes into the array's buffer.
        let n = unsafe buffer.withUnsafeMutableBytes { unsafe read(ends[0], $0.baseAddress, $0.count) }
        #expect(Array(buffer.prefix(max(n, 0))) == [1, 2, 3, 4, 5])
        #expect(!WriteGiveUp.holds, "the condition ends with its scope")
    }
}
