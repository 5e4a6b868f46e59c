// swiftvisor-bench virtio-blk: the block device's request path, driven from CPL3 by the
// virtio_blk_bench guest, beside the host's own pread on the same file and the C reference's
// exit round trip, in the same run.
import Glibc
import SwiftVisor
import SwiftVisorGuests

/// One run of the benchmark guest: time per request between its two probe writes, the vCPU
/// thread's user time per request, the guest's notifications, and exits per request (when
/// statistics were on).
struct VirtioRound {
    var nsPerRequest: Double
    var userNsPerRequest: Double
    var notificationsPerRequest: Double
    var exitsPerRequest: Double?
    /// Heap allocations on the vCPU thread per request (the vCPU path serves requests there).
    var allocationsPerRequest: Double = 0
}

@MainActor func virtioBlockRound(
    _ guestMode: String, count: Int, disk: String, ioThread: Bool, eventIndex: Bool = true, poll: Bool = false,
    statistics: Bool
) -> VirtioRound {
    var config = MachineConfiguration(guest: .elf(GuestImages.virtioBlkBench))
    config.commandLine = "\(guestMode) \(count)"
    // Buckets of 2^62 tokens never run out: the limiter is checked on every request and
    // never throttles (with --rate-limit; the I/O thread only, which a limiter needs).
    let unlimited = TokenBucketConfiguration(size: 1 << 62, refillTimeMilliseconds: 1000)
    let limiter = rateLimit && ioThread ? RateLimiterConfiguration(bandwidth: unlimited, ops: unlimited) : nil
    config.virtioDevices = [.block(path: disk, readOnly: true, rateLimiter: limiter)]
    config.virtioIOThread = ioThread
    config.virtioEventIndex = eventIndex
    if poll { config.virtioPollMicroseconds = 32 }
    config.collectStatistics = statistics
    config.seccomp = !noSeccomp
    let console = BenchConsole()
    config.consoleOutput = console.sink
    let device = ProbePort(expected: 2)
    config.portDevices = [.init(name: "probe", range: try! PortRange(base: 0x510, count: 1), device: device)]
    let report: RunReport
    do { report = try Machine(config).run() } catch { fatalError("virtio benchmark machine: \(error)") }
    let output = console.text
    guard report.outcome == .stopped(.guestExit(status: 0)), device.probe.count == 2 else {
        fatalError("virtio benchmark guest failed: \(report.outcome), output: \(output)")
    }
    // "virtio_blk_bench: MODE COUNT requests, N notifications, B bytes"
    let words = output.split(separator: " ")
    guard let at = words.firstIndex(of: "notifications,"), at > 0, let notifications = Double(words[at - 1]) else {
        fatalError("virtio benchmark guest printed: \(output)")
    }
    let probe = device.probe
    let n = Double(count)
    return VirtioRound(
        nsPerRequest: Double(probe.lastTime - probe.firstTime) / n,
        userNsPerRequest: Double(probe.lastUser - probe.firstUser) / n,
        notificationsPerRequest: notifications / n,
        exitsPerRequest: report.statistics.map { Double($0.total) / n },
        allocationsPerRequest: Double(probe.lastAllocations - probe.firstAllocations) / n)
}

/// Collects the guest's console output.
final class BenchConsole: @unchecked Sendable {
    // Written only by the vCPU thread; read after Machine.run() joined it.
    private var bytes: [UInt8] = []
    var text: String { String(decoding: bytes, as: UTF8.self) }
    var sink: @Sendable (UInt8) -> Void { { [self] byte in bytes.append(byte) } }
}

/// The guest's random sectors (splitmix64 from the same seed), for the host's own reads.
struct GuestSectors {
    var state: UInt64 = 0x5eed
    let capacity: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (z % ((capacity - 8) / 8)) * 8
    }
}

/// The host's own pread on the disk: ns per read of `size` bytes at the guest's offsets
/// (random 4 KiB ones, or sequential 1 MiB ones).
func hostPread(disk: String, size: Int, sequential: Bool, count: Int, capacity: UInt64) -> Double {
    let fd = unsafe open(disk, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { fatalError("cannot open \(disk)") }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: size)
    var sectors = GuestSectors(capacity: capacity)
    var sector: UInt64 = 0
    let start = now()
    for _ in 0..<count {
        let offset: UInt64
        if sequential {
            if sector + UInt64(size / 512) > capacity { sector = 0 }
            offset = sector * 512
            sector += UInt64(size / 512)
        } else {
            offset = sectors.next() * 512
        }
        // SAFETY: pread writes at most size bytes into the array, pinned for the call.
        let n = unsafe pread(fd, &buffer, size, off_t(offset))
        guard n == size else { fatalError("pread returned \(n)") }
    }
    return Double(now() - start) / Double(count)
}

@MainActor func virtioBlockBenchmark() {
    // A 64 MiB disk in the page cache (written, then read once).
    let disk = "/tmp/swiftvisor-bench-disk-\(getpid()).img"
    let capacity: UInt64 = 64 << 20 / 512
    do {
        var block = [UInt8](repeating: 0, count: 1 << 20)
        for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
        let fd = unsafe open(disk, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { fatalError("cannot create \(disk)") }
        for _ in 0..<64 {
            // SAFETY: write reads the whole array, pinned for the call.
            guard unsafe write(fd, &block, block.count) == block.count else { fatalError("cannot write \(disk)") }
        }
        close(fd)
    }
    defer { unsafe unlink(disk) }
    _ = hostPread(disk: disk, size: 1 << 20, sequential: true, count: 64, capacity: capacity)

    let small = max(exits / 5, 1000)
    let large = max(exits / 200, 100)
    var rows: [String: [VirtioRound]] = [:]
    var preadSmall: [Double] = [], preadLarge: [Double] = [], reference: [Double] = []
    for _ in 0..<rounds {
        let ref = spawn([referencePath, "pio", String(exits)])
        guard let ns = field("ns_per_exit", ref.output) else { fatalError("reference printed: \(ref.output)") }
        reference.append(ns)
        preadSmall.append(hostPread(disk: disk, size: 4096, sequential: false, count: small, capacity: capacity))
        preadLarge.append(hostPread(disk: disk, size: 1 << 20, sequential: true, count: large, capacity: capacity))
        for (name, guestMode, count) in [("qd1", "qd1", small), ("qd32", "qd32", small), ("seq", "seq", large)] {
            for ioThread in [true, false] {
                let key = name + (ioThread ? "" : "-vcpu")
                rows[key, default: []].append(
                    virtioBlockRound(guestMode, count: count, disk: disk, ioThread: ioThread, statistics: false))
            }
        }
        rows["qd32-no-event-idx", default: []].append(
            virtioBlockRound("qd32", count: small, disk: disk, ioThread: true, eventIndex: false, statistics: false))
        // The I/O thread polling the queue (--virtio-poll 32).
        for (name, guestMode, count) in [("qd1", "qd1", small), ("qd32", "qd32", small), ("seq", "seq", large)] {
            rows[name + "-poll", default: []].append(
                virtioBlockRound(guestMode, count: count, disk: disk, ioThread: true, poll: true, statistics: false))
        }
        rows["qd1-stats", default: []].append(
            virtioBlockRound("qd1", count: small, disk: disk, ioThread: true, statistics: true))
    }
    let exitNs = median(reference)
    let pread4K = median(preadSmall)
    let pread1M = median(preadLarge)
    func value(_ key: String, _ pick: (VirtioRound) -> Double) -> Double { median(rows[key]!.map(pick)) }
    print(
        "virtio-blk: requests=\(small) (4 KiB) / \(large) (1 MiB) rounds=\(rounds) reference_exit_ns=\(format(exitNs)) host_pread_4k_ns=\(format(pread4K)) host_pread_1m_ns=\(format(pread1M))"
    )
    for key in ["qd1", "qd1-poll", "qd1-vcpu"] {
        let ns = value(key, \.nsPerRequest)
        print(
            "virtio-blk \(key): 4k_random_read_ns=\(format(ns)) exit_plus_pread_ns=\(format(exitNs + pread4K)) ratio=\(format(ns / (exitNs + pread4K), 2)) vcpu_user_ns_per_request=\(format(value(key, \.userNsPerRequest))) notifications_per_request=\(format(value(key, \.notificationsPerRequest), 3)) vcpu_allocations_per_request=\(format(value(key, \.allocationsPerRequest), 3))"
        )
    }
    let exitsPerRequest = median(rows["qd1-stats"]!.compactMap(\.exitsPerRequest))
    print("virtio-blk qd1 (statistics on): exits_to_user_space_per_request=\(format(exitsPerRequest, 3))")
    for key in ["qd32", "qd32-poll", "qd32-no-event-idx", "qd32-vcpu"] {
        let ns = value(key, \.nsPerRequest)
        print(
            "virtio-blk \(key): 4k_random_read_iops=\(format(1e9 / ns)) host_pread_iops_qd1=\(format(1e9 / pread4K)) notifications_per_request=\(format(value(key, \.notificationsPerRequest), 3)) vcpu_user_ns_per_request=\(format(value(key, \.userNsPerRequest)))"
        )
    }
    for key in ["seq", "seq-poll", "seq-vcpu"] {
        let ns = value(key, \.nsPerRequest)
        let guestMBs = Double(1 << 20) / ns * 1e3
        let hostMBs = Double(1 << 20) / pread1M * 1e3
        print(
            "virtio-blk \(key): 1m_sequential_read_mb_s=\(format(guestMBs)) host_pread_mb_s=\(format(hostMBs)) ratio=\(format(guestMBs / hostMBs, 2))"
        )
    }
}
