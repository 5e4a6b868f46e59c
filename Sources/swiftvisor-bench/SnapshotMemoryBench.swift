// swiftvisor-bench snapshot-memory [--dir PATH] [--rounds R]: the memory half of snapshots.
// For guests of 64 MiB, 256 MiB and 1 GiB: the time to write a full memory file of a fresh
// guest and its size on disk, the time to map that file back privately (lazy restore), the
// time to write a diff of 16 dirty pages, and the first touch of mapped pages.
import Glibc
import SwiftVisor

enum SnapshotMemoryBench {
    static let mode = "snapshot-memory"

    static func main(_ arguments: [String]) -> Int32 {
        var directory = "/tmp"
        var rounds = 20
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--dir": directory = rest.popFirst() ?? directory
            case "--rounds": rounds = max(1, Int(rest.popFirst() ?? "") ?? rounds)
            default:
                print("usage: swiftvisor-bench snapshot-memory [--dir PATH] [--rounds R]")
                return 2
            }
        }
        print("memory files in \(directory), medians of \(rounds) rounds")
        print("guest     full write  file size  allocated  map (lazy)  touch 1000 pages  diff (16 pages)")
        do {
            for size: UInt64 in [64 << 20, 256 << 20, 1 << 30] {
                try measure(size: size, directory: directory, rounds: rounds)
            }
        } catch {
            print("snapshot-memory: \(error)")
            return 1
        }
        return 0
    }

    static func measure(size: UInt64, directory: String, rounds: Int) throws {
        let memory = try GuestMemory(size: size)
        // A fresh guest: a loaded kernel-sized blob would dominate; write one page of
        // boot data, as the loaders do, and leave the rest untouched.
        try memory.write([UInt8](repeating: 0x5A, count: 4096), at: 0x7000)
        let full = try TemporaryFile(directory: directory)
        var fullTimes: [UInt64] = []
        var stats: MemoryFileStatistics?
        for _ in 0..<max(1, rounds / 4) {
            let start = now()
            stats = try memory.writeMemoryFile(to: full.fd)
            fullTimes.append(now() - start)
        }
        var mapTimes: [UInt64] = [], touchTimes: [UInt64] = []
        for _ in 0..<rounds {
            let start = now()
            let restored = try GuestMemory(size: size, backingFile: full.fd)
            let mapped = now()
            // The first touch of 1000 pages spread over the guest: each one a page fault.
            let stride = size / 1000
            for i in 0..<UInt64(1000) { _ = try restored.readUInt8(at: i * stride) }
            touchTimes.append(now() - mapped)
            mapTimes.append(mapped - start)
        }
        memory.dirtyTracking = true
        _ = memory.takeDirtyPages()
        var diffTimes: [UInt64] = []
        let diff = try TemporaryFile(directory: directory)
        for round in 0..<rounds {
            for page in 0..<UInt64(16) {
                try memory.write(UInt64(round), at: (page * 997 % (size / 4096)) * 4096)
            }
            let start = now()
            try memory.writeDiffMemoryFile(to: diff.fd, dirtyPages: memory.takeDirtyPages())
            diffTimes.append(now() - start)
        }
        print(
            pad(mib(size), 10) + pad(time(median(fullTimes)), 12) + pad(mib(stats?.fileSize ?? 0), 11)
                + pad(kib(full.allocated), 11) + pad(time(median(mapTimes)), 12) + pad(time(median(touchTimes)), 18)
                + time(median(diffTimes)))
    }

    /// An unlinked temporary file in `directory`, closed when released.
    final class TemporaryFile {
        let fd: Int32
        init(directory: String) throws {
            var template = Array("\(directory)/swiftvisor-bench-memory-XXXXXX".utf8CString)
            // SAFETY: mkstemp rewrites the NUL-terminated template in place; unlink reads it.
            fd = unsafe template.withUnsafeMutableBufferPointer { name in
                let fd = unsafe mkstemp(name.baseAddress!)
                if fd >= 0 { unsafe unlink(name.baseAddress!) }
                return fd
            }
            guard fd >= 0 else { throw BenchError("cannot create a file in \(directory)") }
        }
        deinit { close(fd) }
        /// Bytes allocated on disk.
        var allocated: UInt64 {
            var info = stat()
            // SAFETY: fstat writes one struct stat into `info`, pinned for the call.
            _ = unsafe fstat(fd, &info)
            return UInt64(info.st_blocks) * 512
        }
    }

    struct BenchError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func now() -> UInt64 { HostIO.monotonicNanoseconds() }
    static func median(_ values: [UInt64]) -> UInt64 { values.sorted()[values.count / 2] }
    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
    static func mib(_ bytes: UInt64) -> String { "\(bytes >> 20) MiB" }
    static func kib(_ bytes: UInt64) -> String { "\(bytes >> 10) KiB" }
    static func time(_ ns: UInt64) -> String {
        ns < 10_000 ? "\(ns) ns" : ns < 10_000_000 ? "\(ns / 1000) us" : "\(ns / 1_000_000) ms"
    }
}
