import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing

/// A pipe nobody reads, shrunk to one page so that a guest fills it at once.
final class FullPipe: Sendable {
    let readEnd: Int32
    let writeEnd: Int32

    /// Linux's fcntl commands for a pipe's size (not in Glibc's Swift overlay).
    static let setSize: Int32 = 1031, getSize: Int32 = 1032

    struct CannotCreate: Error {}

    init() throws {
        var ends: [Int32] = [0, 0]
        // SAFETY: pipe writes two descriptors into the two-element array's buffer.
        let rc = unsafe ends.withUnsafeMutableBufferPointer { unsafe pipe($0.baseAddress) }
        guard rc == 0 else { throw CannotCreate() }
        readEnd = ends[0]
        writeEnd = ends[1]
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, Self.setSize, 4096)
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Bytes waiting in the pipe.
    var queued: Int {
        var count: Int32 = 0
        // SAFETY: FIONREAD writes one int into `count`, a local that outlives the call.
        _ = unsafe ioctl(readEnd, UInt(FIONREAD), &count)
        return Int(count)
    }

    /// The pipe's capacity.
    var capacity: Int { Int(fcntl(writeEnd, Self.getSize)) }

    /// Reads and drops whatever is queued.
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let flags = fcntl(readEnd, F_GETFL)
        _ = fcntl(readEnd, F_SETFL, flags | O_NONBLOCK)
        // SAFETY: read(2) writes at most count bytes into the array's buffer.
        while unsafe buffer.withUnsafeMutableBytes({ unsafe read(readEnd, $0.baseAddress, $0.count) }) > 0 {}
        _ = fcntl(readEnd, F_SETFL, flags)
    }

    /// A log or trace sink that writes each line to the pipe as the command-line tool
    /// writes them to standard error: through `HostIO`, which gives up when the vCPU's
    /// machine is stopping.
    var lineSink: @Sendable (String) -> Void {
        let fd = writeEnd
        return { line in HostIO.write(Array((line + "\n").utf8), to: fd) }
    }
}

extension KVMIntegration {
    /// Defect 3 of the hardening issue: a stop or pause must not hang behind a vCPU blocked
    /// writing to a full pipe, on any output path.
    @Suite("Stop and pause with blocked output")
    struct BlockedOutputTests {
        enum Path: String, CaseIterable, CustomTestStringConvertible {
            case outb, repOutsb, hypercall, trace, logPolicy
            var testDescription: String { rawValue }
        }

        /// A running machine whose only output path is `path`, writing to `pipe`.
        func blockedMachine(_ path: Path, _ pipe: FullPipe, cpus: Int = 1) throws -> Machine {
            let image: [UInt8]
            switch path {
            case .outb, .trace: image = GuestImages.chatty
            case .repOutsb: image = GuestImages.chattyString
            case .hypercall: image = GuestImages.chattyHypercall
            case .logPolicy: image = GuestImages.pioLoop
            }
            var config = MachineConfiguration(guest: .elf(image))
            config.vcpuCount = cpus
            config.log = { _ in }
            switch path {
            case .outb, .repOutsb, .hypercall:
                config.consoleDescriptor = pipe.writeEnd
            case .trace:
                config.consoleOutput = { _ in }
                config.trace = pipe.lineSink
            case .logPolicy:
                // pio_loop writes port 0x510, which nothing claims here: one log line each.
                config.commandLine = "100000000"
                config.unclaimedPorts = .log
                config.log = pipe.lineSink
            }
            return try Machine(config)
        }

        /// Calls `operation`, and returns its duration in milliseconds, or nil if it had not
        /// returned after 2 s; then the pipe is drained until the operation returns, so that
        /// a failing test does not hang the suite.
        func timed(_ pipe: FullPipe, _ operation: @escaping @Sendable () async -> Void) async -> Double? {
            final class Finish: Sendable { let at = Atomic<UInt64>(0) }
            let finish = Finish()
            let start = HostIO.monotonicNanoseconds()
            let task = Task {
                await operation()
                finish.at.store(HostIO.monotonicNanoseconds(), ordering: .sequentiallyConsistent)
            }
            let finished = await eventually(2) { finish.at.load(ordering: .sequentiallyConsistent) != 0 }
            if !finished {
                while finish.at.load(ordering: .sequentiallyConsistent) == 0 {
                    pipe.drain()
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            await task.value
            return finished ? Double(finish.at.load(ordering: .sequentiallyConsistent) - start) / 1e6 : nil
        }

        @Test("stop() returns within 100 ms while output is blocked", arguments: Path.allCases)
        func stopWhileBlocked(_ path: Path) async throws {
            let pipe = try FullPipe()
            let vm = try blockedMachine(path, pipe)
            try vm.start()
            #expect(await eventually(10) { pipe.queued > pipe.capacity - 512 }, "the pipe never filled")
            try await Task.sleep(for: .milliseconds(20))  // the vCPU is blocked in write(2) now
            let elapsed = await timed(pipe) { _ = await vm.stop() }
            let report = await vm.wait()
            #expect(report.outcome == .stopped(.requested))
            let shown = elapsed.map { "\($0)" } ?? "more than 2000"
            print("stop() with blocked \(path.rawValue) output took \(shown) ms")
            #expect(elapsed != nil && elapsed! < 100, "stop took \(shown) ms")
        }

        @Test("pause() returns within 100 ms while output is blocked, with 2 vCPUs", arguments: [Path.repOutsb, .trace])
        func pauseWhileBlocked(_ path: Path) async throws {
            let pipe = try FullPipe()
            let vm = try blockedMachine(path, pipe, cpus: 2)
            try vm.start()
            #expect(await eventually(10) { pipe.queued > pipe.capacity - 512 }, "the pipe never filled")
            try await Task.sleep(for: .milliseconds(20))
            let elapsed = await timed(pipe) { await vm.pause() }
            let shown = elapsed.map { "\($0)" } ?? "more than 2000"
            print("pause() with blocked \(path.rawValue) output took \(shown) ms")
            #expect(elapsed != nil && elapsed! < 100, "pause took \(shown) ms")
            #expect(vm.isPaused)
            #expect(await vm.stop().outcome == .stopped(.requested))
        }
    }
}
