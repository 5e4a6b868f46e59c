// swiftvisor-bench: SwiftVisor's exit path, start-up and memory, measured side by side with
// the C reference exit loop (../shared/bench/reference) in the same run.
//
// Usage: swiftvisor-bench [pio|mmio|startup|memory|dispatch|virtio-blk|all] [--exits N] [--rounds R]
//                         [--no-irqchip] [--no-seccomp] [--reference PATH] [--cli PATH]
//        swiftvisor-bench virtio-net [--frames N] [--window W[,W...]] [--rounds R]  (VirtioNetBench.swift; root)
//        swiftvisor-bench linux-setup|linux-boot|linux-cmdline|timed-run ...  (LinuxBench.swift)
//        swiftvisor-bench snapshot-memory [--dir PATH] [--rounds R]  (SnapshotMemoryBench.swift)
//        swiftvisor-bench snapshot [--sizes 64M,256M,1G] [--rounds N]      (SnapshotBench.swift)
//        swiftvisor-bench sandbox [--calls N] [--rounds R] [--reference PATH]  (SandboxBench.swift)
//
// Exit round trip: the pio_loop/mmio_loop guests drop to CPL3 (IOPL=3) and make N exits to a
// registered device. Our figure is the time between the device's first and last access
// divided by N-1: the steady-state round trip through KVM_RUN, decode, dispatch and the
// device. The reference prints its own ns per exit. Rounds alternate between the two, and
// the medians are compared. Heap allocations on the vCPU thread between those two points
// are counted with an interposed malloc.
import CBenchSupport
import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests
import VisorKVM

// MARK: Start-up child

// `swiftvisor-bench startup-child` is what the start-up benchmark spawns: the smallest
// embedding program, which builds a machine with the first_exit guest and runs it. Handled
// before anything else so that it measures process start, the library and KVM set-up only.
if CommandLine.arguments.count >= 2, CommandLine.arguments[1] == "startup-child" {
    do {
        var config = MachineConfiguration(guest: .elf(GuestImages.firstExit))
        config.interruptController = !CommandLine.arguments.contains("--no-irqchip")
        let report = try Machine(config).run()
        exit(report.exitStatus)
    } catch {
        print("startup-child: \(error)")
        exit(1)
    }
}

// Memory files for snapshots (SnapshotMemoryBench.swift): no VM, no reference.
if CommandLine.arguments.count >= 2, CommandLine.arguments[1] == SnapshotMemoryBench.mode {
    exit(SnapshotMemoryBench.main(Array(CommandLine.arguments.dropFirst())))
}

// Snapshot benchmarks (SnapshotBench.swift) take their own options.
if CommandLine.arguments.count >= 2, SnapshotBench.modes.contains(CommandLine.arguments[1]) {
    exit(SnapshotBench.main(Array(CommandLine.arguments.dropFirst())))
}

// Sandbox benchmarks (SandboxBench.swift) take their own options and run the reference themselves.
if CommandLine.arguments.count >= 2, SandboxBench.modes.contains(CommandLine.arguments[1]) {
    exit(SandboxBench.main(Array(CommandLine.arguments.dropFirst())))
}

// Linux boot benchmarks (LinuxBench.swift) take their own options and need no reference.
if CommandLine.arguments.count >= 2, LinuxBench.modes.contains(CommandLine.arguments[1]) {
    exit(LinuxBench.main(Array(CommandLine.arguments.dropFirst())))
}

// MARK: Options

var mode = "all"
var exits = 50_000
var rounds = 5
var referencePath = "../shared/bench/reference"
var cliPath: String?
var noIrqchip = false
var noSeccomp = false
/// virtio-blk with a rate limiter that never runs out, so every request pays for the check.
var rateLimit = false
/// virtio-net: frames per round, and the windows (frames away at a time) to measure.
var netFrames = 20_000
var netWindows = [1, 16, 64]
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--exits": exits = Int(arguments.popFirst() ?? "") ?? exits
    case "--rounds": rounds = Int(arguments.popFirst() ?? "") ?? rounds
    case "--reference": referencePath = arguments.popFirst() ?? referencePath
    case "--cli": cliPath = arguments.popFirst()
    case "--no-irqchip": noIrqchip = true
    case "--no-seccomp": noSeccomp = true
    case "--rate-limit": rateLimit = true
    case "--frames": netFrames = Int(arguments.popFirst() ?? "") ?? netFrames
    case "--window":
        let windows = (arguments.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }
        if !windows.isEmpty { netWindows = windows }
    case "pio", "mmio", "startup", "memory", "dispatch", "virtio-blk", "virtio-net", "all": mode = argument
    default:
        print(
            "usage: swiftvisor-bench [pio|mmio|startup|memory|dispatch|virtio-blk|all] [--exits N] [--rounds R] [--no-irqchip] [--no-seccomp] [--rate-limit] [--reference PATH] [--cli PATH]"
        )
        print("       swiftvisor-bench virtio-net [--frames N] [--window W[,W...]] [--rounds R] (as root)")
        print("       swiftvisor-bench linux-setup|linux-boot|linux-cmdline|timed-run ... (Linux boot; see BENCHMARKS.md)")
        exit(2)
    }
}
guard exits >= 2, rounds >= 1 else {
    print("swiftvisor-bench: --exits must be at least 2 and --rounds at least 1")
    exit(2)
}
guard (1...8_388_608).contains(netFrames), netWindows.allSatisfy({ (1...256).contains($0) }) else {
    print("swiftvisor-bench: --frames must be 1 to 8388608 and each --window 1 to 256")
    exit(2)
}
// SAFETY: access reads the NUL-terminated copy of the path Swift passes for the call.
guard unsafe access(referencePath, X_OK) == 0 else {
    print("swiftvisor-bench: the C reference is not at \(referencePath); pass --reference PATH")
    exit(2)
}
let cli = cliPath ?? siblingExecutable("swiftvisor")

// Pin this process, its vCPU threads and the reference it spawns to one CPU, so that both
// sides see the same core and neither pays for migrations the other does not.
// Not for virtio-blk and virtio-net, whose I/O thread (and reflector) must run beside the vCPU.
if mode != "virtio-blk", mode != "virtio-net", bench_pin_to_cpu(1) != 0 {
    print("note: could not pin to CPU 1; figures will be noisier")
}

// MARK: Helpers

func now() -> UInt64 { HostIO.monotonicNanoseconds() }

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func format(_ value: Double, _ decimals: Int = 0) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    if decimals == 0 { return String(Int(rounded)) }
    let whole = Int(rounded)
    var fraction = String(Int(((rounded - Double(whole)) * scale).rounded()))
    while fraction.count < decimals { fraction = "0" + fraction }
    return "\(whole).\(fraction)"
}

/// The path of an executable next to this one.
func siblingExecutable(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    // SAFETY: readlink writes at most count - 1 bytes into the array, pinned for the call.
    let n = unsafe readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return name }
    let me = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

/// Runs a program, returning its standard output, exit status, wall time and peak RSS.
func spawn(_ argv: [String]) -> (
    output: String, status: Int32, seconds: Double, maxRSSKiB: Int,
    userSeconds: Double, systemSeconds: Double
) {
    var pipeFDs: [Int32] = [0, 0]
    // SAFETY (the system calls below): each pointer is to a local, or an array pinned for
    // the call, of the size the call expects (pipe: two fds; read: count bytes); the spawn
    // actions are initialised before use and destroyed once; cArgs is a NULL-terminated
    // array of strdup'd strings freed only after posix_spawn has copied them.
    guard unsafe pipe(&pipeFDs) == 0 else { fatalError("pipe failed") }
    var actions = unsafe posix_spawn_file_actions_t()
    unsafe posix_spawn_file_actions_init(&actions)
    unsafe posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    unsafe posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
    let cArgs = unsafe argv.map { unsafe strdup($0) } + [nil]
    defer { unsafe cArgs.forEach { unsafe free($0) } }
    var pid: pid_t = 0
    let start = now()
    let rc = unsafe posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
    unsafe posix_spawn_file_actions_destroy(&actions)
    close(pipeFDs[1])
    guard rc == 0 else { fatalError("cannot run \(argv[0]): error \(rc)") }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = unsafe read(pipeFDs[0], &chunk, chunk.count)
        if n <= 0 { break }
        output += chunk[0..<n]
    }
    close(pipeFDs[0])
    var status: Int32 = 0
    var usage = rusage()
    _ = unsafe wait4(pid, &status, 0, &usage)
    let seconds = Double(now() - start) / 1e9
    let exitStatus = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (
        String(decoding: output, as: UTF8.self), exitStatus, seconds, Int(usage.ru_maxrss),
        Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
        Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    )
}

/// The value of `key=` in a line of key=value pairs.
func field(_ key: String, _ line: String) -> Double? {
    for pair in line.split(separator: " ") where pair.hasPrefix(key + "=") {
        return Double(pair.dropFirst(key.count + 1))
    }
    return nil
}

// MARK: Devices that time the steady state

/// Records the time and the vCPU thread's allocation count at the first and last access.
final class TimingProbe: @unchecked Sendable {
    // Written only by the vCPU thread; read after Machine.run() joined it.
    var count = 0
    var firstTime: UInt64 = 0, lastTime: UInt64 = 0
    var firstAllocations: UInt64 = 0, lastAllocations: UInt64 = 0
    var firstUser: UInt64 = 0, firstSystem: UInt64 = 0, lastUser: UInt64 = 0, lastSystem: UInt64 = 0
    let expected: Int
    init(expected: Int) { self.expected = expected }

    /// Counts an exit; samples clocks and counters only at the first and the expected last
    /// exit, so that the steady state between them carries no instrumentation.
    @inline(__always) func hit() {
        count += 1
        // SAFETY: bench_thread_cpu_time writes two UInt64 fields of self, the thread's only writer.
        if count == 1 {
            unsafe bench_thread_cpu_time(&firstUser, &firstSystem)
            firstAllocations = calloc_counter_thread_allocations()
            firstTime = now()
        } else if count == expected {
            lastTime = now()
            lastAllocations = calloc_counter_thread_allocations()
            unsafe bench_thread_cpu_time(&lastUser, &lastSystem)
        }
    }
}

final class ProbePort: PortDevice {
    let probe: TimingProbe
    init(expected: Int) { probe = TimingProbe(expected: expected) }
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        probe.hit()
        return .continue
    }
}

final class ProbeMMIO: MMIODevice {
    let probe: TimingProbe
    init(expected: Int) { probe = TimingProbe(expected: expected) }
    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 { 0 }
    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        probe.hit()
        return .continue
    }
}

struct Round {
    var nsPerExit: Double
    var allocationsPerExit: Double
    /// User-space and kernel CPU time of the vCPU thread per exit.
    var userNsPerExit: Double
    var systemNsPerExit: Double
}

/// One in-process SwiftVisor run of the loop guest.
@MainActor func swiftVisorRound(mmio: Bool, statistics: Bool) -> Round {
    var config = MachineConfiguration(guest: .elf(mmio ? GuestImages.mmioLoop : GuestImages.pioLoop))
    config.commandLine = String(exits)
    config.collectStatistics = statistics
    // The reference has no in-kernel interrupt controller; measure like with like.
    config.interruptController = !noIrqchip
    // The vCPU's seccomp filter runs on every system call, KVM_RUN included: on by default,
    // as for every machine; --no-seccomp measures what it costs.
    config.seccomp = !noSeccomp
    let probe: TimingProbe
    if mmio {
        let device = ProbeMMIO(expected: exits)
        probe = device.probe
        config.mmioDevices = [.init(name: "probe", range: try! MMIORange(start: 0xD000_0000, size: 0x1000), device: device)]
    } else {
        let device = ProbePort(expected: exits)
        probe = device.probe
        config.portDevices = [.init(name: "probe", range: try! PortRange(base: 0x510, count: 1), device: device)]
    }
    do {
        let report = try Machine(config).run()
        guard report.outcome == .stopped(.guestExit(status: 0)), probe.count == exits else {
            fatalError("benchmark guest failed: \(report.outcome), \(probe.count) exits")
        }
    } catch {
        fatalError("benchmark machine failed: \(error)")
    }
    let intervals = Double(exits - 1)
    return Round(
        nsPerExit: Double(probe.lastTime - probe.firstTime) / intervals,
        allocationsPerExit: Double(probe.lastAllocations - probe.firstAllocations) / intervals,
        userNsPerExit: Double(probe.lastUser - probe.firstUser) / intervals,
        systemNsPerExit: Double(probe.lastSystem - probe.firstSystem) / intervals)
}

@MainActor func exitBenchmark(mmio: Bool) {
    let name = mmio ? "mmio" : "pio"
    var ours: [Round] = [], oursStats: [Round] = []
    var reference: [Double] = [], referenceUser: [Double] = [], referenceSystem: [Double] = []
    for _ in 0..<rounds {
        ours.append(swiftVisorRound(mmio: mmio, statistics: false))
        let ref = spawn([referencePath, name, String(exits)])
        guard let ns = field("ns_per_exit", ref.output) else { fatalError("reference printed: \(ref.output)") }
        reference.append(ns)
        referenceUser.append(ref.userSeconds * 1e9 / Double(exits))
        referenceSystem.append(ref.systemSeconds * 1e9 / Double(exits))
        oursStats.append(swiftVisorRound(mmio: mmio, statistics: true))
    }
    let r = median(reference)
    func line(_ label: String, _ rounds: [Round]) {
        let o = median(rounds.map(\.nsPerExit))
        let user = median(rounds.map(\.userNsPerExit))
        let allocations = rounds.map(\.allocationsPerExit).max() ?? 0
        print(
            "\(label): exits=\(exits) rounds=\(rounds.count) reference_ns_per_exit=\(format(r)) swiftvisor_ns_per_exit=\(format(o)) ratio=\(format(o / r, 3)) reference_user_ns_per_exit=\(format(median(referenceUser))) swiftvisor_user_ns_per_exit=\(format(user)) reference_sys_ns_per_exit=\(format(median(referenceSystem))) swiftvisor_sys_ns_per_exit=\(format(median(rounds.map(\.systemNsPerExit)))) allocations_per_exit=\(format(allocations, 3))"
        )
    }
    line(name, ours)
    line(name + "+stats", oursStats)
}

@MainActor func startupBenchmark() {
    var reference: [Double] = [], referenceFirstExit: [Double] = []
    var bare: [Double] = [], withChip: [Double] = [], tool: [Double] = [], toolBare: [Double] = []
    var multiboot: [Double] = []
    let me = siblingExecutable("swiftvisor-bench")
    func time(_ argv: [String], into list: inout [Double]) {
        let run = spawn(argv)
        guard run.status == 0 else { fatalError("\(argv) exited with \(run.status): \(run.output)") }
        list.append(run.seconds * 1e6)
    }
    for _ in 0..<max(rounds, 5) * 4 {
        let ref = spawn([referencePath, "startup"])
        reference.append(ref.seconds * 1e6)
        if let first = field("first_exit_us", ref.output) { referenceFirstExit.append(first) }
        time([me, "startup-child", "--no-irqchip"], into: &bare)
        time([me, "startup-child"], into: &withChip)
        time([cli, "--builtin", "first_exit", "--no-irqchip"], into: &toolBare)
        time([cli, "--builtin", "first_exit"], into: &tool)
        time([cli, "--builtin", "multiboot_first_exit", "--no-irqchip"], into: &multiboot)
    }
    let r = median(reference)
    func ratio(_ list: [Double]) -> String { "\(format(median(list)))us ratio=\(format(median(list) / r, 2))" }
    print(
        "startup: spawn to exit after the first guest exit, median of \(bare.count): reference_us=\(format(r)) (main-to-first-exit_us=\(format(median(referenceFirstExit))))"
    )
    print("  embedding, no irqchip (as the reference): \(ratio(bare))")
    print("  embedding, in-kernel irqchip + PIT:       \(ratio(withChip))")
    print("  cli, no irqchip:                          \(ratio(toolBare))")
    print("  cli, default (irqchip):                   \(ratio(tool))")
    print("  cli, multiboot guest, no irqchip:         \(ratio(multiboot))")
}

/// Peak RSS of a program in KiB, as /usr/bin/time reports it. (wait4's ru_maxrss of a
/// posix_spawn child would include this process's own peak, since the child starts as a
/// vfork that shares our address space until it execs.)
func peakRSS(_ argv: [String]) -> Int? {
    // SAFETY: access reads a string literal's NUL-terminated storage.
    guard unsafe access("/usr/bin/time", X_OK) == 0 else { return nil }
    let run = spawn(["/bin/sh", "-c", "/usr/bin/time -f %M \"$@\" 2>&1 >/dev/null | tail -n 1", "sh"] + argv)
    return Int(run.output.split(separator: "\n").last.map(String.init) ?? "")
}

@MainActor func memoryBenchmark() {
    guard let reference = peakRSS([referencePath, "startup"]),
        let ours = peakRSS([cli, "--memory", "64M"]),
        let oursNoChip = peakRSS([cli, "--memory", "64M", "--no-irqchip"])
    else {
        print("memory: skipped (needs /usr/bin/time, Debian's 'time' package)")
        return
    }
    print(
        "memory: peak RSS with a 64 MiB guest (touched pages only): reference_kib=\(reference) swiftvisor_kib=\(ours) swiftvisor_no_irqchip_kib=\(oursNoChip)"
    )
}

/// The exit core alone, without KVM: decode-free dispatch of a port write to a device
/// through the bus, with a fake run page. This is the user-space work per exit that is ours.
///
/// The fakes live here, not in TestSupport: measured in one run, the same dispatch with
/// TestSupport's (otherwise identical) NullVCPU and NullPort took 38-40 ns per exit against
/// 26 ns with these, so a fake in another module would add its own cost to the figure.
final class FakeChannel: VCPUContext {
    let id: UInt32 = 0
    var element: UInt32 = 0
    func registers() throws(KVMError) -> Registers { Registers() }
    func setRegisters(_ registers: Registers) throws(KVMError) {}
    func specialRegisters() throws(KVMError) -> SpecialRegisters { SpecialRegisters() }
    func xcr0() throws(KVMError) -> UInt64 { 1 }
    func inject(_ injection: Injection) throws(KVMError) {}
    func ioElement(_ index: Int) -> UInt32 { element }
    func setIOElement(_ index: Int, _ value: UInt32) { element = value }
    func setMMIOData(_ value: UInt64) {}
    func completeMSR(value: UInt64, fault: Bool) {}
}

final class NullPort: PortDevice, @unchecked Sendable {  // used from one thread only
    var writes = 0
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        writes &+= 1
        return .continue
    }
}

@MainActor func dispatchBenchmark() {
    var bus = PortBus()
    let device = NullPort()
    try! bus.register(device, name: "null", range: PortRange(base: 0x510, count: 1))
    let dispatcher = ExitDispatcher(ports: bus)
    let channel = FakeChannel()
    var statistics = ExitStatistics()
    let n = 20_000_000
    let exit = VMExit.io(PortAccess(isWrite: true, port: 0x510, width: 1))
    let before = calloc_counter_thread_allocations()
    let start = now()
    for _ in 0..<n {
        if case .handled = dispatcher.dispatch(exit, vcpu: channel) {} else { fatalError("not handled") }
    }
    let plain = Double(now() - start) / Double(n)
    let start2 = now()
    for _ in 0..<n {
        _ = dispatcher.dispatch(exit, vcpu: channel)
        statistics.record(exit)
    }
    let withStats = Double(now() - start2) / Double(n)
    let allocations = calloc_counter_thread_allocations() - before
    precondition(device.writes == 2 * n)
    print(
        "dispatch: port write through bus to a device, no KVM: ns_per_exit=\(format(plain, 1)) with_stats_ns_per_exit=\(format(withStats, 1)) allocations=\(allocations) (n=\(n))"
    )
}

switch mode {
case "dispatch": dispatchBenchmark()
case "pio": exitBenchmark(mmio: false)
case "mmio": exitBenchmark(mmio: true)
case "startup": startupBenchmark()
case "memory": memoryBenchmark()
case "virtio-blk": virtioBlockBenchmark()
case "virtio-net": virtioNetBenchmark()
default:
    dispatchBenchmark()
    exitBenchmark(mmio: false)
    exitBenchmark(mmio: true)
    startupBenchmark()
    memoryBenchmark()
}
