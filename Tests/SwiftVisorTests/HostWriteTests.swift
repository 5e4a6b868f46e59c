import Glibc
import Testing
import VisorHost

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

    @Test("a write on a thread whose give-up condition holds returns at once, unwritten")
    func givesUpWhenConditionHolds() {
        let (readEnd, writeEnd) = Self.fullPipe()
        defer {
            close(readEnd)
            close(writeEnd)
        }
        let written = WriteGiveUp.during({ true }, run: { HostIO.write([1, 2, 3], to: writeEnd) })
        #expect(!written)
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
