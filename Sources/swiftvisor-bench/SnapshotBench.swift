// Snapshot benchmarks: snapshot time and file size, full and diff, and restore time to the
// guest's first exit, for guests of several sizes, against a cold start of the same guest
// in the same run. See BENCHMARKS.md, "Snapshots".
//
//   swiftvisor-bench snapshot [--sizes 64M,256M,1G] [--rounds N] [--directory DIR]
//
// The guest is pio_loop (CPL3, one port write per iteration, a billion iterations): it runs
// until paused at any point of its loop, and after a restore its next port write comes a
// few instructions in, so the time to that write is the restore's cost.
import CBenchSupport
import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests

enum SnapshotBench {
    static let modes: Set<String> = ["snapshot"]

    /// Port 0x510, where pio_loop writes: counts writes and stamps the first.
    final class Probe: PortDevice {
        let writes = Atomic<UInt64>(0)
        let firstWrite = Atomic<UInt64>(0)
        func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }
        func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
            if writes.add(1, ordering: .relaxed).newValue == 1 {
                firstWrite.store(HostIO.monotonicNanoseconds(), ordering: .relaxed)
            }
            return .continue
        }
    }

    static func main(_ arguments: [String]) -> Int32 {
        var sizes: [UInt64] = [64 << 20, 256 << 20, 1 << 30]
        var rounds = 11
        var directory = "/tmp"
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--sizes":
                let parsed = (rest.popFirst() ?? "").split(separator: ",").map { ByteSize(parsing: String($0))?.bytes }
                guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { return usage() }
                sizes = parsed.map { $0! }
            case "--rounds":
                guard let value = Int(rest.popFirst() ?? ""), value >= 1 else { return usage() }
                rounds = value
            case "--directory":
                guard let value = rest.popFirst() else { return usage() }
                directory = value
            default:
                return usage()
            }
        }
        do {
            for size in sizes { try measure(size: size, rounds: rounds, directory: directory) }
        } catch {
            print("swiftvisor-bench snapshot: \(error)")
            return 1
        }
        return 0
    }

    static func usage() -> Int32 {
        print("usage: swiftvisor-bench snapshot [--sizes 64M,256M,1G] [--rounds N] [--directory DIR]")
        return 2
    }

    static func configuration(size: UInt64, probe: Probe, track: Bool) throws -> MachineConfiguration {
        var config = MachineConfiguration(guest: .elf(GuestImages.pioLoop))
        config.memorySize = size
        config.commandLine = "1000000000"
        config.trackDirtyPages = track
        config.portDevices = [.init(name: "probe", range: try PortRange(base: 0x510, count: 1), device: probe)]
        return config
    }

    /// Runs `machine` until the probe has seen `writes` more writes.
    static func run(_ machine: Machine, _ probe: Probe, writes: UInt64) {
        let target = probe.writes.load(ordering: .relaxed) + writes
        while probe.writes.load(ordering: .relaxed) < target { HostIO.sleep(nanoseconds: 100_000) }
    }

    static func measure(size: UInt64, rounds: Int, directory: String) throws {
        let label = ByteSize(bytes: size).description
        let state = directory + "/swiftvisor-bench-\(getpid()).state"
        let memory = directory + "/swiftvisor-bench-\(getpid()).mem"
        let diffState = state + ".diff", diffMemory = memory + ".diff"
        defer { [state, memory, diffState, diffMemory].forEach(HostIO.removeFile) }

        // Cold start, the yardstick: build, load and run to the first exit.
        var cold: [Double] = []
        for _ in 0..<rounds {
            settle()
            let probe = Probe()
            let start = HostIO.monotonicNanoseconds()
            let machine = try Machine(configuration(size: size, probe: probe, track: false))
            try machine.start()
            run(machine, probe, writes: 1)
            cold.append(Double(probe.firstWrite.load(ordering: .relaxed) - start) / 1e6)
            stop(machine)
        }

        // The floor under both, in C: KVM's own cost for a VM with the irqchip and PIT, this
        // much RAM and one vCPU, to its first exit; with the memory slot added first (as
        // SwiftVisor does) and after the irqchip (as it did before).
        var floor: [Double] = [], floorLate: [Double] = []
        for _ in 0..<rounds {
            for memoryFirst in [true, false] {
                settle()
                let nanoseconds = bench_kvm_vm_floor_ns(size, memoryFirst ? 1 : 0)
                guard nanoseconds > 0 else { throw SnapshotMemoryBench.BenchError("the C floor's VM could not be built") }
                if memoryFirst { floor.append(Double(nanoseconds) / 1e6) } else { floorLate.append(Double(nanoseconds) / 1e6) }
            }
        }

        // The VM to save: it has run a while, with dirty-page tracking for the diff. It is
        // gone before the restores.
        let (fullMilliseconds, diffMilliseconds, steadyPerSecond) = try saveOriginal(
            size: size, state: state, memory: memory, diffState: diffState, diffMemory: diffMemory)

        // Restores, each to the first exit.
        var restores: [Double] = []
        var faults: [Int] = []
        var firstSecond: [UInt64] = []
        for round in 0..<rounds {
            settle()
            let probe = Probe()
            let faultsBefore = minorFaults()
            let start = HostIO.monotonicNanoseconds()
            var config = MachineConfiguration(restoring: try MachineSnapshot(statePath: state, memoryPath: memory))
            config.portDevices = try configuration(size: size, probe: probe, track: false).portDevices
            let machine = try Machine(config)
            try machine.start()
            run(machine, probe, writes: 1)
            restores.append(Double(probe.firstWrite.load(ordering: .relaxed) - start) / 1e6)
            if round == 0 {
                // The first second after the restore: the guest's progress and the page faults.
                HostIO.sleep(nanoseconds: 1_000_000_000)
                firstSecond.append(probe.writes.load(ordering: .relaxed))
                faults.append(minorFaults() - faultsBefore)
            }
            stop(machine)
        }
        let stateSize = fileSize(state), memorySize = fileSize(memory), diffSize = fileSize(diffMemory)
        print("snapshot, \(label) guest (pio_loop, \(rounds) rounds, medians):")
        print(
            "  C floor (KVM: VM, memory, irqchip, PIT, vCPU, first exit): \(format(median(floor))) ms (min \(format(floor.min() ?? 0))); memory after the irqchip: \(format(median(floorLate))) ms (min \(format(floorLate.min() ?? 0)))"
        )
        print("  cold start to the first exit:        \(format(median(cold))) ms")
        print(
            "  restore to the first exit:           \(format(median(restores))) ms (min \(format(restores.min() ?? 0)), max \(format(restores.max() ?? 0))); ratio to cold start \(format(median(restores) / median(cold)))x, to the C floor \(format(median(restores) / median(floor)))x"
        )
        print(
            "  full snapshot: \(format(fullMilliseconds)) ms; state file \(stateSize.apparent) bytes; memory file \(memorySize.apparent >> 20) MiB, \(memorySize.allocated >> 10) KiB allocated"
        )
        print(
            "  diff snapshot after 10,000 exits: \(format(diffMilliseconds)) ms; memory file \(diffSize.allocated >> 10) KiB allocated"
        )
        print(
            "  first second after restore: \(firstSecond.first ?? 0) exits (a VM that never stopped: \(steadyPerSecond) per second), \(faults.first ?? 0) minor page faults in this process"
        )
    }

    /// Runs the VM to save, takes a full snapshot and, after 10,000 more exits, a diff;
    /// returns both times in milliseconds and the exits per second it ran at.
    static func saveOriginal(
        size: UInt64, state: String, memory: String, diffState: String, diffMemory: String
    ) throws -> (full: Double, diff: Double, perSecond: UInt64) {
        let probe = Probe()
        let original = try Machine(configuration(size: size, probe: probe, track: true))
        try original.start()
        run(original, probe, writes: 100_000)
        let steadyStart = probe.writes.load(ordering: .relaxed)
        HostIO.sleep(nanoseconds: 1_000_000_000)
        let steadyPerSecond = probe.writes.load(ordering: .relaxed) - steadyStart
        original.pauseBlocking()
        var started = HostIO.monotonicNanoseconds()
        try original.snapshot(statePath: state, memoryPath: memory, kind: .full)
        let fullMilliseconds = Double(HostIO.monotonicNanoseconds() - started) / 1e6
        original.resume()
        run(original, probe, writes: 10_000)
        original.pauseBlocking()
        started = HostIO.monotonicNanoseconds()
        try original.snapshot(statePath: diffState, memoryPath: diffMemory, kind: .diff)
        let diffMilliseconds = Double(HostIO.monotonicNanoseconds() - started) / 1e6
        stop(original)
        return (fullMilliseconds, diffMilliseconds, steadyPerSecond)
    }

    static func stop(_ machine: Machine) {
        machine.requestStop()
        while !machine.hasStopped { HostIO.sleep(nanoseconds: 100_000) }
    }

    /// Before each timed round: lets the previous round's VM finish going away. KVM tears
    /// a VM down partly after its descriptors close, and a VM built meanwhile waits for
    /// that in its first memory-slot change (about 14 ms here), which a restore in a
    /// fresh process on a quiet host would not see.
    static func settle() { HostIO.sleep(nanoseconds: 100_000_000) }

    static func minorFaults() -> Int {
        var usage = rusage()
        // SAFETY: getrusage writes only `usage`, a local that outlives the call.
        _ = unsafe getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return usage.ru_minflt
    }

    static func fileSize(_ path: String) -> (apparent: UInt64, allocated: UInt64) {
        var info = stat()
        // SAFETY: stat writes only `info`, a local that outlives the call; the path is a
        // NUL-terminated copy valid for the call.
        guard unsafe stat(path, &info) == 0 else { return (0, 0) }
        return (UInt64(info.st_size), UInt64(info.st_blocks) * 512)
    }

    static func format(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
