import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing

/// The `io_storm` guest's operations, replayed on the host from the same seed (see the top
/// of Guests/io_storm.S), so that a test knows exactly what the guest did.
struct IOStormModel {
    static let mmioBase: UInt64 = 0xD000_0000
    /// Ports the guest never uses as they are: it XORs them with 0x1000.
    static let excludedPorts: [ClosedRange<Int>] = [
        0x20...0x21, 0x40...0x43, 0x61...0x61, 0x64...0x64, 0xA0...0xA1, 0x4D0...0x4D1, 0x501...0x503,
        0x601...0x605, 0xB001...0xB005, 0xCF9...0xCF9,
    ]

    /// Operations by kind: in, out, rep ins, rep outs, MMIO read, MMIO write.
    var operations = [Int](repeating: 0, count: 6)
    /// Elements read and written at the ports in `portRange`.
    var portReads = 0, portWrites = 0
    /// MMIO exits (an access across a page boundary is two), and those whose address is in
    /// `mmioRange`.
    var mmioReadExits = 0, mmioWriteExits = 0
    var mmioReads = 0, mmioWrites = 0
    /// The guest's PRNG state after the last operation.
    var state: UInt64

    init(seed: UInt64, count: Int, portRange: Range<Int>, mmioRange: Range<UInt64>) {
        state = seed
        for _ in 0..<count {
            let r = next(), r2 = next()
            let kind = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 4, 4, 5, 5][Int(r & 15)]
            operations[kind] += 1
            let w = Int((r >> 4) & 3)
            var port = Int((r >> 8) & 0xFFFF)
            if Self.excludedPorts.contains(where: { $0.contains(port) }) { port ^= 0x1000 }
            let portWidth = [1, 2, 4, 1][w]
            if port + portWidth > 0x10000 { port = 0x10000 - portWidth }
            let elements = Int(((r >> 24) & 0xFFF) >> ((r >> 36) & 31)) + 1
            let atDevice = portRange.contains(port)
            switch kind {
            case 0: if atDevice { portReads += 1 }
            case 1: if atDevice { portWrites += 1 }
            case 2: if atDevice { portReads += elements }
            case 3: if atDevice { portWrites += elements }
            default:
                let address = Self.mmioBase + (r2 & 0xF_FFFF)
                let width = UInt64([1, 2, 4, 8][w])
                // KVM splits an access across a page boundary into one exit per page.
                let pageEnd = (address | 0xFFF) + 1
                let starts = address + width > pageEnd ? [address, pageEnd] : [address]
                let hits = starts.filter { mmioRange.contains($0) }.count
                if kind == 4 {
                    mmioReadExits += starts.count
                    mmioReads += hits
                } else {
                    mmioWriteExits += starts.count
                    mmioWrites += hits
                }
            }
        }
    }

    /// splitmix64, as the guest computes it.
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A port or MMIO device that counts the elements read and written at it.
final class AccessCounter: PortDevice, MMIODevice, Sendable {
    let reads = Atomic<Int>(0)
    let writes = Atomic<Int>(0)

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        reads.add(1, ordering: .relaxed)
        return 0x5A5A_5A5A
    }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        writes.add(1, ordering: .relaxed)
        return .continue
    }

    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        reads.add(1, ordering: .relaxed)
        return 0x1122_3344_5566_7788
    }

    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        writes.add(1, ordering: .relaxed)
        return .continue
    }
}

/// A port device that keeps every value written to it.
final class ValueRecorder: PortDevice, Sendable {
    private let values = Mutex<[UInt32]>([])
    var all: [UInt32] { values.withLock { $0 } }

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        values.withLock { $0.append(value) }
        return .continue
    }
}

/// The PC platform's port devices (CMOS/RTC, i8042, PM1a, reset register, POST code, PCI
/// configuration), which a machine places only for Linux guests, as registrations for
/// another guest. Their interrupt lines are not connected.
func pcPortDevices() throws -> [MachineConfiguration.PortRegistration] {
    let platform = try Platform(kind: .pc, consoleOutput: { _ in }, irqLine: nil, debugExit: false)
    return platform.devices.filter { $0.portDevice !== platform.serial }.flatMap { device in
        device.ports.map { MachineConfiguration.PortRegistration(name: $0.name, range: $0.range, device: device.portDevice!) }
    }
}

/// Wall-clock seconds since `start` (a `HostIO.monotonicNanoseconds()` reading).
func secondsSince(_ start: UInt64) -> Double { Double(HostIO.monotonicNanoseconds() - start) / 1e9 }

/// Runs the `io_storm` guest for `count` operations from `seed` with the PC platform's
/// devices, a counting port device at 0x7000-0x7FFF and a counting MMIO device at
/// 0xD0040000-0xD007FFFF, and checks everything against the replayed model. Returns the
/// number of exits.
@discardableResult
func runIOStorm(seed: UInt64, count: Int, virtio: (devices: Int, ioThread: Bool)? = nil) throws -> UInt64 {
    let ports = AccessCounter(), mmio = AccessCounter(), report = ValueRecorder()
    let portRange = 0x7000..<0x8000
    let mmioRange = UInt64(0xD004_0000)..<0xD008_0000
    var config = MachineConfiguration(guest: .elf(GuestImages.ioStorm))
    config.commandLine = "\(seed) \(count)"
    config.consoleOutput = { _ in }  // random writes to COM1 print noise
    config.collectStatistics = true
    config.unclaimedPorts = .block
    config.unclaimedMMIO = .block
    config.portDevices =
        try pcPortDevices() + [
            .init(
                name: "storm-ports", range: try PortRange(base: UInt16(portRange.lowerBound), count: portRange.count),
                device: ports),
            .init(name: "storm-report", range: try PortRange(base: 0x503, count: 1), device: report),
        ]
    config.mmioDevices = [
        .init(
            name: "storm-mmio",
            range: try MMIORange(start: mmioRange.lowerBound, size: mmioRange.upperBound - mmioRange.lowerBound),
            device: mmio)
    ]
    // Virtio transports in the storm's MMIO range (0xD0000000 up), which it hits with
    // random registers, widths and values.
    if let virtio {
        config.virtioDevices = Array(repeating: .entropy, count: virtio.devices)
        config.virtioIOThread = virtio.ioThread
    }
    let start = HostIO.monotonicNanoseconds()
    let result = try Machine(config).run()
    let elapsed = secondsSince(start)
    let model = IOStormModel(seed: seed, count: count, portRange: portRange, mmioRange: mmioRange)

    #expect(result.outcome == .stopped(.guestExit(status: 0)), "\(result.diagnostic ?? "")")
    // The guest did every operation and its PRNG went where the host's did.
    #expect(report.all == [UInt32(count), UInt32(truncatingIfNeeded: model.state), UInt32(model.state >> 32)])
    #expect(ports.reads.load(ordering: .relaxed) == model.portReads)
    #expect(ports.writes.load(ordering: .relaxed) == model.portWrites)
    #expect(mmio.reads.load(ordering: .relaxed) == model.mmioReads)
    #expect(mmio.writes.load(ordering: .relaxed) == model.mmioWrites)
    let stats = try #require(result.statistics)
    let ops = model.operations
    // One exit per in/out and per MMIO page touched; a rep ins/outs is one exit or more.
    #expect(stats.count(.mmioRead) == UInt64(model.mmioReadExits))
    if let virtio {
        let hits = (0..<UInt64(virtio.devices)).reduce(0) { $0 + stats.mmioPages.count(0xD000_0000 + $1 * 0x1000) }
        #expect(hits >= 20, "only \(hits) exits reached the virtio windows")
    }
    if virtio?.ioThread == true {
        // A 4-byte write of a queue index to a QueueNotify register is taken in the kernel.
        #expect(stats.count(.mmioWrite) <= UInt64(model.mmioWriteExits))
    } else {
        #expect(stats.count(.mmioWrite) == UInt64(model.mmioWriteExits))
    }
    #expect(stats.count(.portIn) >= UInt64(ops[0] + ops[2]))
    #expect(stats.count(.portOut) >= UInt64(ops[1] + ops[3] + 4))  // + 3 report writes + the exit
    #expect(stats.byPort[0x503] == 3)
    #expect(stats.byPort[0x501] == 1)
    #expect(stats.total >= UInt64(count))
    print(
        "io_storm seed \(seed): \(count) operations \(ops), \(stats.total) exits in \(elapsed) s"
            + " (\(Int(Double(stats.total) / elapsed)) exits/s)")
    return stats.total
}

extension KVMIntegration {
    /// Guests that attack the VMM: storms of exits, interrupts, faults and VM churn.
    /// Larger runs of the same tests are in FUZZING.md, "Hostile guests on KVM".
    @Suite("Hostile guests on KVM")
    struct HostileGuestTests {
        /// Operations per seed in `swift test`; SWIFTVISOR_STORM_OPS overrides it (FUZZING.md).
        static let stormOperations = environmentCount("SWIFTVISOR_STORM_OPS", default: 8_000)

        @Test("random port, string-I/O and MMIO storms at CPL3 against the PC devices", arguments: [UInt64(1), 2, 0xDEAD_BEEF])
        func ioStorm(seed: UInt64) throws {
            try runIOStorm(seed: seed, count: Self.stormOperations)
        }

        @Test(
            "the same storm against eight virtio-mmio transports at 0xD0000000: registers of any width and value, on the vCPU path and with ioeventfds",
            arguments: [false, true])
        func ioStormAgainstVirtio(ioThread: Bool) throws {
            try runIOStorm(seed: 7, count: Self.stormOperations * 2, virtio: (8, ioThread))
        }

        /// Triple-faulting VMs in `swift test`; SWIFTVISOR_TRIPLE_FAULT_VMS overrides it.
        static let tripleFaultVMs = environmentCount("SWIFTVISOR_TRIPLE_FAULT_VMS", default: 100)

        @Test("VMs that triple-fault one after another each end with status 121 and leave nothing behind")
        func tripleFaults() throws {
            func once() throws {
                var config = MachineConfiguration(guest: .elf(GuestImages.tripleFault))
                config.consoleOutput = { _ in }
                let report = try Machine(config).run()
                #expect(report.outcome == .fatal(.tripleFault))
                #expect(report.exitStatus == 121)
            }
            try once()
            let baseline = ProcessResources()
            let start = HostIO.monotonicNanoseconds()
            for _ in 0..<Self.tripleFaultVMs { try once() }
            print("\(Self.tripleFaultVMs) triple-faulting VMs in \(secondsSince(start)) s")
            baseline.expectUnchanged(rssSlackKiB: 8 * 1024)
        }

        /// Iterations of the emulation storm in `swift test`; SWIFTVISOR_EMULATION_OPS overrides it.
        static let emulationIterations = environmentCount("SWIFTVISOR_EMULATION_OPS", default: 1000)

        @Test("emulation failures in a loop: popcnt and int3 at CPL0, each finished by the VMM, with memory flat")
        func emulationStorm() throws {
            let interprets = try EmulationTests.hostInterprets()
            let n = Self.emulationIterations
            let expectedSum = (1...n).reduce(0) { $0 + $1.nonzeroBitCount }
            func once() throws {
                let report = ValueRecorder()
                var config = MachineConfiguration(guest: .elf(GuestImages.emulationStorm))
                config.commandLine = String(n)
                config.consoleOutput = { _ in }
                config.collectStatistics = true
                config.portDevices = [.init(name: "report", range: try PortRange(base: 0x503, count: 1), device: report)]
                let machine = try Machine(config)
                let start = HostIO.monotonicNanoseconds()
                let result = try machine.run()
                let elapsed = secondsSince(start)
                #expect(result.outcome == .stopped(.guestExit(status: 0)), "\(result.diagnostic ?? "")")
                #expect(report.all == [UInt32(expectedSum), UInt32(n)])
                guard interprets else { return }  // natively, the CPU ran them all
                #expect(machine.emulatedInstructions["popcnt"] == UInt64(n))
                #expect(machine.emulatedInstructions["int3"] == UInt64(n))
                #expect(result.statistics?.count(.internalError) == UInt64(2 * n))
                print("emulation storm: \(2 * n) emulation failures finished in \(elapsed) s")
            }
            try once()
            let baseline = ProcessResources()
            for _ in 0..<3 { try once() }
            baseline.expectUnchanged(rssSlackKiB: 4 * 1024)
        }

        /// VMs ending in an emulation failure in `swift test`; SWIFTVISOR_EMULATION_FAILURE_VMS overrides it.
        static let emulationFailureVMs = environmentCount("SWIFTVISOR_EMULATION_FAILURE_VMS", default: 100)

        @Test("VMs that each end in an emulation failure (int3 with emulation off) leave nothing behind")
        func emulationFailures() throws {
            guard try EmulationTests.hostInterprets() else {
                print("this host runs CPL0 code natively: int3 is no emulation failure here")
                return
            }
            func once() throws {
                var config = MachineConfiguration(guest: .elf(GuestImages.probe))
                config.commandLine = "int3"
                config.emulation = false
                config.consoleOutput = { _ in }
                let report = try Machine(config).run()
                guard case .fatal(.internalError(suberror: 1, _)) = report.outcome else {
                    Issue.record("expected an emulation failure, got \(report.outcome)")
                    return
                }
                #expect(report.exitStatus == 122)
            }
            try once()
            let baseline = ProcessResources()
            let start = HostIO.monotonicNanoseconds()
            for _ in 0..<Self.emulationFailureVMs { try once() }
            print("\(Self.emulationFailureVMs) VMs ending in emulation failure in \(secondsSince(start)) s")
            baseline.expectUnchanged(rssSlackKiB: 8 * 1024)
        }

        /// Increments per vCPU in the cmpxchg16b test; SWIFTVISOR_CMPXCHG16B_OPS overrides it.
        static let cmpxchg16bIterations = environmentCount("SWIFTVISOR_CMPXCHG16B_OPS", default: 5_000_000)

        @Test("lock cmpxchg16b from several vCPUs at CPL3 on one 128-bit counter loses no increment", arguments: [2, 3])
        func cmpxchg16bContention(cpus: Int) throws {
            let n = Self.cmpxchg16bIterations
            let report = ValueRecorder()
            let start = HostIO.monotonicNanoseconds()
            let (result, console) = try runGuest(GuestImages.smpStorm, commandLine: "cmpxchg16b \(n)") { config in
                config.vcpuCount = cpus
                config.portDevices = [.init(name: "report", range: try! PortRange(base: 0x503, count: 1), device: report)]
            }
            #expect(result.outcome == .stopped(.guestExit(status: 0)), "\(console) \(result.diagnostic ?? "")")
            // The counter started at 2^64 - N and took cpus * N increments: 2^64 + (cpus - 1) * N.
            let low = UInt64((cpus - 1) * n)
            let values = report.all
            try #require(values.count == 5, "\(values)")
            #expect(Array(values.prefix(4)) == [UInt32(truncatingIfNeeded: low), UInt32(low >> 32), 1, 0])
            print("cmpxchg16b: \(cpus) vCPUs x \(n) increments in \(secondsSince(start)) s, \(values[4]) failed compares")
        }

        /// NMIs per vCPU in the storm phase; SWIFTVISOR_NMI_STORM overrides it.
        static let nmiStorm = environmentCount("SWIFTVISOR_NMI_STORM", default: 20_000)
        /// NMIs per vCPU sent one at a time, each after the previous one was handled.
        static let nmiLockstep = environmentCount("SWIFTVISOR_NMI_LOCKSTEP", default: 200)

        @Test("NMIs from the host on every vCPU: exactly one handled per NMI sent in lockstep, then a storm", arguments: [2, 4])
        func nmiStorm(cpus: Int) async throws {
            let console = ConsoleCapture(), report = ValueRecorder()
            let vm = try machine(GuestImages.smpStorm, console) { config in
                config.vcpuCount = cpus
                config.commandLine = "nmi"
                config.portDevices = [.init(name: "report", range: try! PortRange(base: 0x503, count: 1), device: report)]
            }
            try vm.start()
            let ready = await eventually(20) { console.text == "ready\n" }
            try #require(ready, "\(console.text)")
            func counts() throws -> [UInt64] {
                try (0..<cpus).map { try vm.memory.readUInt64(at: 0x1F100 + 8 * UInt64($0)) }
            }
            #expect(try counts() == Array(repeating: 0, count: cpus))

            // Lockstep: each NMI is sent once the previous one was counted, so none merge and
            // each is handled exactly once.
            let lockstep = Self.nmiLockstep, storm = Self.nmiStorm
            for round in 0..<lockstep {
                for cpu in 0..<cpus {
                    let before = try counts()[cpu]
                    vm.injectNMI(vcpu: cpu)
                    let counted = await eventually(10) { ((try? counts()[cpu]) ?? 0) > before }
                    if !counted {
                        await vm.pause()
                        let dump = vm.stateDump(vcpu: cpu)
                        _ = await vm.stop()
                        Issue.record("round \(round): vCPU \(cpu) did not count an NMI; counts \(try counts())\n\(dump)")
                        return
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(50))
            #expect(try counts() == Array(repeating: UInt64(lockstep), count: cpus))

            // The storm: as fast as the host can send them. NMIs sent while one is pending
            // merge, so each vCPU handles at least one and at most all of them.
            let start = HostIO.monotonicNanoseconds()
            for _ in 0..<storm {
                for cpu in 0..<cpus { vm.injectNMI(vcpu: cpu) }
            }
            let stormTime = secondsSince(start)
            // At least one of each vCPU's storm NMIs must be handled. Wait for that before
            // stopping: a vCPU kicked out of KVM_RUN by every NMI of the storm may not have
            // re-entered the guest yet when the storm ends, and the BSP's exit would end it.
            let stormHandled = await eventually(10) {
                ((try? counts()) ?? []).allSatisfy { $0 > UInt64(lockstep) }
            }
            #expect(stormHandled, "after the storm: \((try? counts()) ?? [])")

            // Stop: the flag, then one more NMI to wake the BSP, which reports and exits.
            try vm.memory.write(UInt64(1), at: 0x1F0F0)
            vm.injectNMI(vcpu: 0)
            let result = await vm.wait()
            #expect(result.outcome == .stopped(.guestExit(status: 0)), "\(result.diagnostic ?? "")")
            let final = try counts()
            // The BSP read the counts once it saw the stop flag; NMIs sent before it may
            // still land after that read.
            let reported = report.all.map(UInt64.init)
            #expect(reported.count == cpus)
            #expect(
                zip(reported, final).allSatisfy { $0 > UInt64(lockstep) && $0 <= $1 }, "reported \(reported), at the end \(final)"
            )
            for (cpu, handled) in final.enumerated() {
                // The BSP also took the NMI that woke it to stop (possibly merged with the storm's).
                let most = UInt64(lockstep + storm + (cpu == 0 ? 1 : 0))
                #expect(handled > UInt64(lockstep) && handled <= most, "vCPU \(cpu) handled \(handled)")
            }
            print("NMIs: \(lockstep) in lockstep, then \(storm) to each of \(cpus) vCPUs in \(stormTime) s; handled \(final)")
        }

        /// Create/run/destroy cycles per vCPU count in `swift test`; SWIFTVISOR_CHURN_VMS overrides it.
        static let churnCycles = environmentCount("SWIFTVISOR_CHURN_VMS", default: 50)

        @Test(
            "create, run and destroy VMs with 1, 2 and 8 vCPUs: descriptors, threads and mappings return to baseline",
            arguments: [1, 2, 8])
        func churn(cpus: Int) throws {
            func cycle() throws {
                var config = MachineConfiguration(guest: .elf(GuestImages.smp))
                config.vcpuCount = cpus
                config.consoleOutput = { _ in }
                let report = try Machine(config).run()
                #expect(report.outcome == .stopped(.guestExit(status: 0)))
            }
            try cycle()  // warm up lazily allocated runtime state
            try cycle()
            let baseline = ProcessResources()
            let start = HostIO.monotonicNanoseconds()
            for _ in 0..<Self.churnCycles { try cycle() }
            print("\(Self.churnCycles) VMs with \(cpus) vCPUs in \(secondsSince(start)) s")
            baseline.expectUnchanged(rssSlackKiB: 8 * 1024)
        }
    }
}

/// This process's descriptors, threads, memory mappings and resident memory at one time.
struct ProcessResources {
    let fds = openFileDescriptorCount()
    let threads = threadCount()
    let mappings = mappingCount()
    let rss = residentKiB()

    /// Expects the descriptors to be back where they were, threads and mappings no more
    /// than they were (the test runtime's own worker threads, each with a stack mapping,
    /// come and go), and the resident set to have grown by less than `rssSlackKiB`.
    func expectUnchanged(rssSlackKiB: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        let now = ProcessResources()
        #expect(now.fds == fds, "descriptors: \(fds) -> \(now.fds)", sourceLocation: sourceLocation)
        #expect(now.threads <= threads, "threads: \(threads) -> \(now.threads)", sourceLocation: sourceLocation)
        #expect(now.mappings <= mappings, "mappings: \(mappings) -> \(now.mappings)", sourceLocation: sourceLocation)
        let growth = now.rss - rss
        #expect(growth < rssSlackKiB, "RSS grew by \(growth) KiB", sourceLocation: sourceLocation)
        print(
            "resources: fds \(fds) -> \(now.fds), threads \(threads) -> \(now.threads), mappings \(mappings) -> \(now.mappings), RSS +\(growth) KiB"
        )
    }
}

/// Lines of /proc/self/maps: this process's memory mappings.
func mappingCount() -> Int {
    // SAFETY: one FILE, opened and closed here; fgetc reads from it until EOF.
    guard let file = unsafe fopen("/proc/self/maps", "r") else { return -1 }
    defer { unsafe fclose(file) }
    var lines = 0
    while true {
        let c = unsafe fgetc(file)
        if c == EOF { break }
        if c == 0x0A { lines += 1 }
    }
    return lines
}

/// The environment variable `name` as a positive count, or `default`.
func environmentCount(_ name: String, default value: Int) -> Int {
    // SAFETY: getenv reads the NUL-terminated copy of `name`; its result is copied at once.
    guard let raw = unsafe getenv(name) else { return value }
    return Int(unsafe String(cString: raw)).flatMap { $0 > 0 ? $0 : nil } ?? value
}
