// Linux boot benchmarks: host-side set-up of a kernel, in-process boots with a console that
// timestamps every line, and a timed run of any other program (QEMU, the swiftvisor CLI)
// with the same line clock. See BENCHMARKS.md, "Linux boot".
//
//   swiftvisor-bench linux-setup --kernel K [--rounds N] [--memory 512M] [--cpus N]
//   swiftvisor-bench linux-boot  --kernel K [--protocol linux64|pvh] [--cpus N] [--memory 128M]
//                                [--append TEXT] [--no-host-decompress] [--rounds N] [--timeout S]
//                                [--mark TEXT]... [--no-kunit] [--stop-when-marked] [--stop-at TEXT]... [--no-stats]
//                                [--log FILE]
//   swiftvisor-bench linux-cmdline [--append TEXT]
//   swiftvisor-bench timed-run [--timeout S] [--mark TEXT]... [--no-kunit] [--stop-when-marked]
//                              [--rounds N] [--log FILE] [--tail N] -- PROGRAM ARGS...
import Glibc
import Synchronization
import SwiftVisor
import VisorFirmware

enum LinuxBench {
    static let modes: Set<String> = ["linux-setup", "linux-boot", "linux-cmdline", "timed-run"]

    /// Runs one of `modes`; returns the process exit status.
    static func main(_ arguments: [String]) -> Int32 {
        guard let mode = arguments.first else { return usage() }
        var options: Options
        do { options = try Options.parse(Array(arguments.dropFirst())) } catch {
            print("swiftvisor-bench \(mode): \(error.message)")
            return 2
        }
        switch mode {
        case "linux-setup": return setup(options)
        case "linux-boot": return boot(&options)
        case "linux-cmdline": return commandLine(options)
        case "timed-run": return timedRun(options)
        default: return usage()
        }
    }

    static func usage() -> Int32 {
        print(
            """
            usage: swiftvisor-bench linux-setup --kernel K [--rounds N] [--memory 512M] [--cpus N]
                   swiftvisor-bench linux-boot --kernel K [--protocol linux64|pvh] [--cpus N] [--memory 128M] [--append TEXT] [--no-host-decompress] [--rounds N] [--timeout S] [--mark TEXT]... [--no-kunit] [--stop-when-marked] [--stop-at TEXT]... [--no-stats] [--log FILE]
                   swiftvisor-bench linux-cmdline [--append TEXT]
                   swiftvisor-bench timed-run [--timeout S] [--mark TEXT]... [--no-kunit] [--stop-when-marked] [--stop-at TEXT]... [--rounds N] [--log FILE] [--tail N] -- PROGRAM ARGS...
            """)
        return 2
    }

    // MARK: Options

    struct OptionError: Error { var message: String }

    struct Options {
        var kernel: String?
        var rounds = 0
        var memory: UInt64?
        var cpus = 1
        var bootProtocol = LinuxBootProtocol.linux64
        var append: String?
        var hostDecompression = true
        var timeout: Double = 900
        var marks: [String] = []
        var kunit = true
        var stopWhenMarked = false
        var stopAt: [String] = []
        var statistics = true
        var log: String?
        var tail = 12
        var command: [String] = []

        static func parse(_ arguments: [String]) throws(OptionError) -> Options {
            var o = Options()
            var rest = arguments[...]
            func value(_ name: String) throws(OptionError) -> String {
                guard let v = rest.popFirst() else { throw OptionError(message: "\(name) needs a value") }
                return v
            }
            func number(_ name: String) throws(OptionError) -> Double {
                let text = try value(name)
                guard let n = Double(text), n > 0 else {
                    throw OptionError(message: "\(name) needs a positive number, not '\(text)'")
                }
                return n
            }
            while let argument = rest.popFirst() {
                switch argument {
                case "--kernel": o.kernel = try value(argument)
                case "--rounds": o.rounds = Int(try number(argument))
                case "--memory":
                    let text = try value(argument)
                    guard let bytes = parseSize(text) else {
                        throw OptionError(message: "--memory needs a size like 128M or 1G, not '\(text)'")
                    }
                    o.memory = bytes
                case "--cpus": o.cpus = Int(try number(argument))
                case "--protocol":
                    let text = try value(argument)
                    guard let p = LinuxBootProtocol(rawValue: text) else {
                        throw OptionError(message: "--protocol is linux64 or pvh, not '\(text)'")
                    }
                    o.bootProtocol = p
                case "--append": o.append = try value(argument)
                case "--no-host-decompress": o.hostDecompression = false
                case "--timeout": o.timeout = try number(argument)
                case "--mark": o.marks.append(try value(argument))
                case "--no-kunit": o.kunit = false
                case "--stop-when-marked": o.stopWhenMarked = true
                case "--stop-at": o.stopAt.append(try value(argument))
                case "--no-stats": o.statistics = false
                case "--log": o.log = try value(argument)
                case "--tail": o.tail = Int(try number(argument))
                case "--":
                    o.command = Array(rest)
                    rest = []
                default: throw OptionError(message: "unknown option '\(argument)'")
                }
            }
            return o
        }
    }

    static func parseSize(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        guard let last = text.last else { return nil }
        if let unit = units[Character(last.uppercased())] {
            return UInt64(text.dropLast()).map { $0 * unit }
        }
        return UInt64(text)
    }

    // MARK: Helpers

    static func now() -> UInt64 { HostIO.monotonicNanoseconds() }

    static func milliseconds(since start: UInt64) -> Double { Double(now() - start) / 1e6 }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func fixed(_ value: Double, _ decimals: Int) -> String {
        guard value.isFinite else { return "-" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = Int((abs(value) * scale).rounded())
        let sign = value < 0 && scaled != 0 ? "-" : ""
        guard decimals > 0 else { return sign + String(scaled) }
        let whole = scaled / Int(scale)
        var fraction = String(scaled % Int(scale))
        while fraction.count < decimals { fraction = "0" + fraction }
        return "\(sign)\(whole).\(fraction)"
    }

    /// The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them.
    static func loadAverage() -> String {
        // /proc files report size 0, so read until the end rather than by size.
        // SAFETY: open reads a string literal; read writes at most count bytes into the
        // array, pinned for the call.
        let fd = unsafe open("/proc/loadavg", O_RDONLY)
        guard fd >= 0 else { return "?" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = unsafe read(fd, &buffer, buffer.count)
        guard n > 0 else { return "?" }
        return String(decoding: buffer[0..<n], as: UTF8.self).split(separator: " ").prefix(3).joined(separator: "/")
    }

    /// User and system CPU seconds of this process so far.
    static func cpuSeconds() -> (user: Double, system: Double) {
        var usage = rusage()
        // SAFETY: getrusage writes only `usage`, a local.
        unsafe getrusage(RUSAGE_SELF.rawValue, &usage)
        return (seconds(usage.ru_utime), seconds(usage.ru_stime))
    }

    static func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }

    static func readKernel(_ options: Options) -> [UInt8]? {
        guard let path = options.kernel else {
            print("swiftvisor-bench: --kernel PATH is required")
            return nil
        }
        do { return try HostIO.readFile(path, limit: LinuxDefaults.kernelFileLimit) } catch {
            print("swiftvisor-bench: \(error)")
            return nil
        }
    }

    static func probeQuirks() -> HostQuirks? {
        do { return try HostQuirks.probe() } catch {
            print("swiftvisor-bench: the host-quirk probe failed: \(error)")
            return nil
        }
    }

    // MARK: linux-cmdline

    /// Prints the command line `swiftvisor boot --cmdline TEXT` gives a kernel on this host.
    static func commandLine(_ options: Options) -> Int32 {
        guard let quirks = probeQuirks() else { return 1 }
        print(LinuxDefaults.commandLine(quirks: quirks, appending: options.append))
        return 0
    }

    // MARK: linux-setup

    /// Host-side set-up of a kernel, step by step, as medians over rounds; each round starts
    /// from the file's bytes and fresh guest memory.
    static func setup(_ options: Options) -> Int32 {
        guard let path = options.kernel else {
            print("swiftvisor-bench: --kernel PATH is required")
            return 2
        }
        let rounds = options.rounds > 0 ? options.rounds : 9
        let memorySize = options.memory ?? LinuxDefaults.memorySize
        guard let quirks = probeQuirks() else { return 1 }
        let commandLine = LinuxDefaults.commandLine(quirks: quirks, appending: options.append)

        var steps: [(name: String, values: [Double])] = []
        func record(_ name: String, _ value: Double) {
            if let i = steps.firstIndex(where: { $0.name == name }) {
                steps[i].values.append(value)
            } else {
                steps.append((name, [value]))
            }
        }
        var description = ""
        var elfBytes = 0
        print(
            "linux-setup: kernel=\(path) rounds=\(rounds) memory=\(memorySize >> 20)MiB cpus=\(options.cpus) load_before=\(loadAverage())"
        )
        for _ in 0..<rounds {
            do {
                var start = now()
                let bytes = try HostIO.readFile(path, limit: LinuxDefaults.kernelFileLimit)
                record("read the file", milliseconds(since: start))

                start = now()
                let image = try KernelImage.detect(bytes)
                record("parse and detect (KernelImage.detect)", milliseconds(since: start))

                let elf: ELFKernel
                switch image {
                case .bzImage(let bz):
                    description = "bzImage, \(bz.codec.map { "\($0)" } ?? "unknown") payload of \(bz.payload.count) bytes"
                    guard bz.canDecompressOnHost else {
                        print("linux-setup: the payload's codec is not one the host decodes")
                        return 1
                    }
                    // The same limit the loader uses.
                    let initSize = Int(bz.header.initSize)
                    let limit = initSize > 0 ? min(initSize, Decompressor.defaultLimit) : Decompressor.defaultLimit
                    start = now()
                    elf = try bz.decompressedELF(limit: limit)
                    record("decompress to ELF (BzImage.decompressedELF)", milliseconds(since: start))
                case .elf(let kernel):
                    description = "ELF vmlinux"
                    elf = kernel
                }
                elfBytes = elf.bytes.count

                var memory = try GuestMemory(size: memorySize)
                start = now()
                try elf.load(into: memory)
                record("copy the ELF's segments into guest memory (ELFKernel.load)", milliseconds(since: start))

                // The same copy as plain memcpy and memset, into fresh memory: what the copy
                // costs without GuestMemory's generic write (page faults included).
                memory = try GuestMemory(size: memorySize)
                start = now()
                try copySegmentsWithMemcpy(elf, into: memory)
                record("the same segments with memcpy/memset (baseline)", milliseconds(since: start))

                memory = try GuestMemory(size: memorySize)
                let request = LinuxBootRequest(kernel: bytes, commandLine: commandLine)
                start = now()
                _ = try LinuxLoader.load(request, into: memory, rsdpAddress: ACPITables.biosArea.lowerBound)
                record("LinuxLoader.load in all (detect, decompress, copy, zero page, page tables)", milliseconds(since: start))

                let platform = try Platform(kind: .pc, memoryBelow4GiB: memorySize, consoleOutput: { _ in }, irqLine: nil)
                start = now()
                let tables = try ACPITables.build(for: platform.acpiPlatform(processors: options.cpus))
                record("ACPI tables (ACPITables.build)", milliseconds(since: start))
                _ = tables

                var config = MachineConfiguration(guest: .linux(request))
                config.memorySize = memorySize
                config.vcpuCount = options.cpus
                config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
                start = now()
                let machine = try Machine(config)
                record("Machine init in all (KVM VM, irqchip, memory, load, tables, vCPUs)", milliseconds(since: start))
                start = now()
                _ = consume machine
                record("Machine teardown, never run", milliseconds(since: start))

                start = now()
                let probe = try HostQuirks.probe()
                record("host-quirk probe, wall (HostQuirks.probe)", milliseconds(since: start))
                record("host-quirk probe, as it reports itself", probe.probeMilliseconds)
            } catch {
                print("linux-setup: \(error)")
                return 1
            }
        }
        print(
            "linux-setup: \(description); ELF \(elfBytes) bytes; medians of \(rounds) rounds (min-max), load_after=\(loadAverage())"
        )
        for step in steps {
            let label = step.name + String(repeating: " ", count: max(1, 76 - step.name.count))
            print(
                "  \(label) \(fixed(median(step.values), 2)) ms  (\(fixed(step.values.min() ?? .nan, 2))-\(fixed(step.values.max() ?? .nan, 2)))"
            )
        }
        return 0
    }

    /// Copies each loaded segment of `elf` to its physical address with memcpy and zero-fills
    /// the rest with memset, through `GuestMemory.load(_:at:zeroFillingTo:)`: one bounds
    /// check per segment, no generic per-byte path.
    static func copySegmentsWithMemcpy(_ elf: ELFKernel, into memory: GuestMemory) throws(OptionError) {
        for s in elf.segments where s.memorySize > 0 {
            guard s.fileSize <= s.memorySize, s.fileOffset <= UInt64(elf.bytes.count),
                s.fileSize <= UInt64(elf.bytes.count) - s.fileOffset
            else { throw OptionError(message: "a segment lies outside the file") }
            let start = Int(s.fileOffset)
            do {
                try memory.load(elf.bytes[start..<start + Int(s.fileSize)], at: s.physicalAddress, zeroFillingTo: s.memorySize)
            } catch {
                throw OptionError(message: "a segment lies outside RAM: \(error)")
            }
        }
    }

    // MARK: Console lines with a clock

    /// A line of console output and when it was complete, in seconds from the clock's origin.
    struct TimedLine: Sendable {
        var seconds: Double
        var text: String

        /// The printk timestamp "[   12.345678] " at the start, if any.
        var guestSeconds: Double? {
            guard text.hasPrefix("["), let close = text.firstIndex(of: "]") else { return nil }
            return Double(text[text.index(after: text.startIndex)..<close].drop { $0 == " " })
        }

        /// The text without its printk timestamp.
        var message: Substring {
            guard text.hasPrefix("["), let close = text.firstIndex(of: "]") else { return text[...] }
            let rest = text[text.index(after: close)...]
            return rest.hasPrefix(" ") ? rest.dropFirst() : rest
        }
    }

    /// What a boot's milestone is: a line containing some text, or KUnit's first suite and
    /// first top-level result.
    struct Mark: Sendable {
        var label: String
        var matches: @Sendable (TimedLine) -> Bool

        static let banner = Mark(label: "banner") { $0.message.hasPrefix("Linux version") }
        static let firstSuite = Mark(label: "KUnit first suite") { $0.message.contains("# Subtest:") }
        static let firstResult = Mark(label: "KUnit first result") { isTopLevelResult($0.message) }
        static func text(_ text: String) -> Mark { Mark(label: text) { $0.message.contains(text) } }

        /// "ok 1 - name" or "not ok 1 - name" at the top level of the KTAP output.
        static func isTopLevelResult(_ message: Substring) -> Bool {
            guard message.hasPrefix("ok ") || message.hasPrefix("not ok ") else { return false }
            return message.drop { $0 != " " }.dropFirst().first?.isNumber == true || message.hasPrefix("not ok ")
        }
    }

    static func marks(_ options: Options) -> [Mark] {
        var marks = [Mark.banner]
        if options.kunit { marks += [.firstSuite, .firstResult] }
        return marks + options.marks.map(Mark.text)
    }

    /// Collects bytes into timed lines (from any thread), and calls `onStop` once when a line
    /// contains one of `stopTexts`, or, with `stopWhenMarked`, when every mark has been seen.
    final class LineClock: Sendable {
        private struct State {
            var origin: UInt64 = 0
            var pending: [UInt8] = []
            var lines: [TimedLine] = []
            var seen: [Bool]
            var fired = false
            var stopSeen = false
            var onStop: (@Sendable () -> Void)?
        }
        private let state: Mutex<State>
        let marks: [Mark]
        /// A line containing any of these calls `onStop`.
        let stopTexts: [String]
        /// Whether seeing every mark calls `onStop` too.
        let stopWhenMarked: Bool

        init(marks: [Mark], stopWhenMarked: Bool, stopAt stopTexts: [String] = []) {
            self.marks = marks
            self.stopWhenMarked = stopWhenMarked
            self.stopTexts = stopTexts
            state = Mutex(State(seen: Array(repeating: false, count: marks.count)))
        }

        /// Starts the clock; `onStop` is called once, from the thread that completes the line
        /// that asks for the stop.
        func begin(onStop: (@Sendable () -> Void)?) {
            state.withLock {
                $0.origin = LinuxBench.now()
                $0.onStop = onStop
            }
        }

        var lines: [TimedLine] {
            state.withLock { state in
                var lines = state.lines
                if !state.pending.isEmpty {
                    lines.append(
                        TimedLine(
                            seconds: Double(LinuxBench.now() - state.origin) / 1e9,
                            text: String(decoding: state.pending, as: UTF8.self)))
                }
                return lines
            }
        }

        var sink: @Sendable (UInt8) -> Void { { [self] byte in take(CollectionOfOne(byte)) } }

        func take(_ bytes: some Collection<UInt8>) {
            let fire: (@Sendable () -> Void)? = state.withLock { state in
                for byte in bytes {
                    if byte == UInt8(ascii: "\n") {
                        if state.pending.last == UInt8(ascii: "\r") { state.pending.removeLast() }
                        let line = TimedLine(
                            seconds: Double(LinuxBench.now() - state.origin) / 1e9,
                            text: String(decoding: withoutEscapes(state.pending), as: UTF8.self))
                        state.pending.removeAll(keepingCapacity: true)
                        state.lines.append(line)
                        for (i, mark) in marks.enumerated() where !state.seen[i] && mark.matches(line) {
                            state.seen[i] = true
                        }
                        if stopTexts.contains(where: { line.text.contains($0) }) { state.stopSeen = true }
                    } else {
                        state.pending.append(byte)
                    }
                }
                guard !state.fired, state.stopSeen || (stopWhenMarked && state.seen.allSatisfy({ $0 })),
                    let fire = state.onStop
                else { return nil }
                state.fired = true
                return fire
            }
            fire?()
        }
    }

    /// `bytes` without terminal escape sequences (ESC c, and CSI sequences such as ESC [ 2 J,
    /// which QEMU's firmware writes before the kernel's first line).
    static func withoutEscapes(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.contains(0x1B) else { return bytes }
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            guard bytes[i] == 0x1B else {
                out.append(bytes[i])
                i += 1
                continue
            }
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "[") {
                // CSI: parameter and intermediate bytes, then one final byte in 0x40...0x7E.
                i += 1
                while i < bytes.count, !(0x40...0x7E).contains(bytes[i]) { i += 1 }
            }
            i += 1  // the final byte, or the one character after ESC
        }
        return out
    }

    /// The milestones of one boot, from its console lines.
    /// Each mark's median time over the rounds that saw it, and the median end.
    static func printMedians(of timelines: [Timeline], marks: [Mark], rounds: Int, origin: String) {
        print("medians of \(rounds) rounds (s from \(origin)):")
        for (i, mark) in marks.enumerated() {
            let values = timelines.compactMap { $0.marks[i].line?.seconds }
            let name = mark.label + ":" + String(repeating: " ", count: max(1, 28 - mark.label.count))
            print(
                "  \(name)\(fixed(median(values), 2)) s  (of \(values.count); \(values.map { fixed($0, 2) }.joined(separator: ", ")))"
            )
        }
        let ends = timelines.map(\.end)
        print(
            "  end:" + String(repeating: " ", count: 25)
                + "\(fixed(median(ends), 2)) s  (\(ends.map { fixed($0, 2) }.joined(separator: ", ")))")
    }

    struct Timeline {
        var marks: [(label: String, line: TimedLine?)]
        var end: Double
        /// KUnit: the plan's suite count, top-level results, failures and the last result's time.
        var kunitPlan: Int?
        var kunitResults = 0
        var kunitFailures = 0
        var lastResult: TimedLine?

        init(lines: [TimedLine], marks: [Mark], end: Double) {
            self.marks = marks.map { mark in (mark.label, lines.first(where: mark.matches)) }
            self.end = end
            for line in lines {
                let message = line.message
                if kunitPlan == nil, message.hasPrefix("1.."), let n = Int(message.dropFirst(3)) { kunitPlan = n }
                if Mark.isTopLevelResult(message) {
                    kunitResults += 1
                    if message.hasPrefix("not ok ") { kunitFailures += 1 }
                    lastResult = line
                }
            }
        }

        func seconds(_ label: String) -> Double? {
            marks.first { $0.label == label }?.line?.seconds
        }

        func print(indent: String = "  ") {
            for (label, line) in marks {
                let name = label + ":" + String(repeating: " ", count: max(1, 28 - label.count))
                if let line {
                    let guest = line.guestSeconds.map { " (printk \(fixed($0, 3)) s)" } ?? ""
                    Swift.print("\(indent)\(name)\(fixed(line.seconds, 2)) s\(guest)")
                } else {
                    Swift.print("\(indent)\(name)not seen")
                }
            }
            if let plan = kunitPlan {
                let last = lastResult.map { " last result at \(fixed($0.seconds, 2)) s" } ?? ""
                Swift.print(
                    "\(indent)KUnit: \(kunitResults - kunitFailures) of \(plan) suites ok, \(kunitFailures) not ok;\(last)")
            }
            Swift.print("\(indent)end:" + String(repeating: " ", count: 25) + "\(fixed(end, 2)) s")
        }
    }

    static func writeLog(_ path: String?, _ lines: [TimedLine], append: Bool, header: String) {
        guard let path else { return }
        var text = header + "\n"
        for line in lines { text += "[+\(fixed(line.seconds, 3))] \(line.text)\n" }
        // SAFETY: open reads the NUL-terminated copy of `path` Swift passes for the call.
        let fd = unsafe open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0o644)
        guard fd >= 0 else {
            print("swiftvisor-bench: cannot write \(path)")
            return
        }
        HostIO.write(Array(text.utf8), to: fd)
        close(fd)
    }

    // MARK: linux-boot

    /// Boots a kernel in-process, rounds times, timing console lines from `Machine.run()`.
    static func boot(_ options: inout Options) -> Int32 {
        guard let kernel = readKernel(options) else { return 2 }
        let rounds = options.rounds > 0 ? options.rounds : 1
        let memorySize = options.memory ?? 128 << 20
        guard let quirks = probeQuirks() else { return 1 }
        let commandLine = LinuxDefaults.commandLine(quirks: quirks, appending: options.append)
        let marks = marks(options)
        print(
            "linux-boot: kernel=\(options.kernel ?? "") protocol=\(options.bootProtocol) cpus=\(options.cpus) memory=\(memorySize >> 20)MiB host_decompression=\(options.hostDecompression ? "on" : "off") statistics=\(options.statistics ? "on" : "off") rounds=\(rounds) timeout=\(fixed(options.timeout, 0))s"
        )
        print("  command line: \(commandLine)")
        print("  host-quirk probe: \(fixed(quirks.probeMilliseconds, 1)) ms")

        var timelines: [Timeline] = []
        var inits: [Double] = []
        for round in 1...rounds {
            let load = loadAverage()
            let clock = LineClock(marks: marks, stopWhenMarked: options.stopWhenMarked, stopAt: options.stopAt)
            var config = MachineConfiguration(
                guest: .linux(
                    LinuxBootRequest(
                        kernel: kernel, commandLine: commandLine, bootProtocol: options.bootProtocol,
                        hostDecompression: options.hostDecompression)))
            config.memorySize = memorySize
            config.vcpuCount = options.cpus
            config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
            config.collectStatistics = options.statistics
            config.consoleOutput = clock.sink
            let machine: Machine
            let initStart = now()
            do { machine = try Machine(config) } catch {
                print("linux-boot: \(error)")
                return 1
            }
            inits.append(milliseconds(since: initStart))

            // A watchdog stops the VM at the timeout; it ends when the VM has stopped.
            let timedOut = Flag(), watchdogDone = Flag()
            let deadline = now() + UInt64(options.timeout * 1e9)
            clock.begin(onStop: { machine.requestStop() })
            let start = now()
            let rc = HostThread.detach {
                while !machine.hasStopped {
                    if LinuxBench.now() >= deadline {
                        timedOut.set()
                        machine.requestStop()
                        break
                    }
                    usleep(50_000)
                }
                watchdogDone.set()
            }
            guard rc == 0 else {
                print("linux-boot: cannot start the watchdog thread (error \(rc))")
                return 1
            }
            let cpuBefore = cpuSeconds()
            let report: RunReport
            do { report = try machine.run() } catch {
                print("linux-boot: \(error)")
                return 1
            }
            let end = Double(now() - start) / 1e9
            let cpuAfter = cpuSeconds()
            while !watchdogDone.isSet { usleep(10_000) }

            let lines = clock.lines
            let timeline = Timeline(lines: lines, marks: marks, end: end)
            timelines.append(timeline)
            let why = timedOut.isSet ? " (timed out)" : ""
            print(
                "round \(round) of \(rounds): load_before=\(load) load_after=\(loadAverage()) machine_init_ms=\(fixed(inits.last!, 1)) outcome=\(report.outcome)\(why)"
            )
            timeline.print()
            print(
                "  cpu during the run: user=\(fixed(cpuAfter.user - cpuBefore.user, 2)) s system=\(fixed(cpuAfter.system - cpuBefore.system, 2)) s (this process, all threads)"
            )
            if let statistics = report.statistics { printStatistics(statistics, machine: machine) }
            let emulated = machine.emulatedInstructions.sorted { $0.key < $1.key }
            print(
                "  instructions emulated: "
                    + (emulated.isEmpty ? "none" : emulated.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))
            if report.diagnostic != nil || timedOut.isSet || report.exitStatus != 0 {
                print("  last console lines:")
                for line in lines.suffix(options.tail) { print("    [+\(fixed(line.seconds, 2))] \(line.text)") }
                if let diagnostic = report.diagnostic { print("  diagnostic: \(diagnostic)") }
            }
            writeLog(
                options.log, lines, append: round > 1,
                header:
                    "# round \(round): \(options.kernel ?? "") \(options.bootProtocol) cpus=\(options.cpus) outcome=\(report.outcome)\(why)"
            )
        }
        if rounds > 1 {
            printMedians(of: timelines, marks: marks, rounds: rounds, origin: "Machine.run()")
            print("  machine init:" + String(repeating: " ", count: 16) + "\(fixed(median(inits), 1)) ms")
        }
        return 0
    }

    /// Exits by kind, and the busiest ports by name, in a few lines.
    static func printStatistics(_ statistics: ExitStatistics, machine: Machine) {
        let kinds = ExitKind.allCases.filter { statistics.count($0) > 0 }
            .map { "\($0)=\(statistics.count($0))" }
        print("  exits: total=\(statistics.total) " + kinds.joined(separator: " "))
        // The VMM's handling time per exit (KVM_RUN returning to the handler finishing), from
        // the latency histograms: mean times count, per kind.
        var handling: [(kind: ExitKind, ms: Double)] = []
        for kind in ExitKind.allCases where statistics.count(kind) > 0 {
            handling.append((kind, statistics.latency[kind.rawValue].mean * Double(statistics.count(kind)) / 1e6))
        }
        let totalHandling = handling.reduce(0) { $0 + $1.ms }
        print(
            "  vmm handling time: total=\(fixed(totalHandling, 1)) ms "
                + handling.map { "\($0.kind)=\(fixed($0.ms, 1))" }.joined(separator: " ")
                + " (mean x count; the host kernel's share of each round trip is not in it)")
        let ports = statistics.byPort.indices.filter { statistics.byPort[$0] > 0 }
            .sorted { statistics.byPort[$0] > statistics.byPort[$1] }
        if !ports.isEmpty {
            let shown = ports.prefix(8).map { port in
                "0x" + String(port, radix: 16) + (machine.deviceName(port: UInt16(port)).map { "(\($0))" } ?? "")
                    + "=\(statistics.byPort[port])"
            }
            print(
                "  busiest ports: " + shown.joined(separator: " ") + (ports.count > 8 ? " (+\(ports.count - 8) more ports)" : ""))
        }
        let pages = statistics.mmioPages.counts.sorted { $0.count > $1.count }
        if !pages.isEmpty {
            print("  mmio pages: " + pages.prefix(6).map { "0x\(String($0.page, radix: 16))=\($0.count)" }.joined(separator: " "))
        }
    }

    // MARK: timed-run

    /// Runs a program with its standard output and error on one pipe, timestamping each line
    /// from the spawn; stops it (SIGTERM, then SIGKILL) at the timeout or once marked.
    static func timedRun(_ options: Options) -> Int32 {
        guard !options.command.isEmpty else {
            print("swiftvisor-bench timed-run: give the program after --")
            return 2
        }
        let rounds = options.rounds > 0 ? options.rounds : 1
        let marks = marks(options)
        print("timed-run: \(options.command.joined(separator: " "))")
        print("  timeout=\(fixed(options.timeout, 0))s rounds=\(rounds)")
        var timelines: [Timeline] = []
        for round in 1...rounds {
            let load = loadAverage()
            guard
                let run = spawnTimed(
                    options.command, marks: marks, stopAt: options.stopAt, timeout: options.timeout,
                    stopWhenMarked: options.stopWhenMarked)
            else { return 1 }
            let timeline = Timeline(lines: run.lines, marks: marks, end: run.seconds)
            timelines.append(timeline)
            let how =
                run.timedOut
                ? "timed out, stopped" : run.stoppedOnMarks ? "stopped on its marks (--stop-when-marked, --stop-at)" : "exited"
            print("round \(round) of \(rounds): load_before=\(load) load_after=\(loadAverage()) \(how), status=\(run.status)")
            timeline.print()
            print("  cpu: user=\(fixed(run.userSeconds, 2)) s system=\(fixed(run.systemSeconds, 2)) s (the child)")
            print("  last lines:")
            for line in run.lines.suffix(options.tail) { print("    [+\(fixed(line.seconds, 2))] \(line.text)") }
            writeLog(
                options.log, run.lines, append: round > 1,
                header: "# round \(round): \(options.command.joined(separator: " ")): \(how), status=\(run.status)")
        }
        if rounds > 1 {
            printMedians(of: timelines, marks: marks, rounds: rounds, origin: "spawn")
        }
        return 0
    }

    /// A flag set on one thread and read on another.
    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        func set() { value.store(true, ordering: .releasing) }
        var isSet: Bool { value.load(ordering: .acquiring) }
    }

    struct TimedRun {
        var lines: [TimedLine]
        var seconds: Double
        var status: Int32
        var timedOut: Bool
        var stoppedOnMarks: Bool
        var userSeconds: Double
        var systemSeconds: Double
    }

    static func spawnTimed(_ argv: [String], marks: [Mark], stopAt: [String], timeout: Double, stopWhenMarked: Bool) -> TimedRun?
    {
        var fds: [Int32] = [0, 0]
        // SAFETY (the system calls below): each pointer is to a local, or an array pinned for
        // the call, of the size the call expects (pipe: two fds; poll: one pollfd; read:
        // count bytes); the spawn actions and attributes are initialised before use and
        // destroyed once; cArgs is a NULL-terminated array of strdup'd strings freed only
        // after posix_spawnp has copied them; strerror's text is copied at once.
        guard unsafe pipe(&fds) == 0 else {
            print("timed-run: pipe failed")
            return nil
        }
        var actions = unsafe posix_spawn_file_actions_t()
        unsafe posix_spawn_file_actions_init(&actions)
        unsafe posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        unsafe posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        unsafe posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        unsafe posix_spawn_file_actions_addclose(&actions, fds[0])
        unsafe posix_spawn_file_actions_addclose(&actions, fds[1])
        let cArgs = unsafe argv.map { unsafe strdup($0) } + [nil]
        defer { unsafe cArgs.forEach { unsafe free($0) } }
        var pid: pid_t = 0
        let clock = LineClock(marks: marks, stopWhenMarked: stopWhenMarked, stopAt: stopAt)
        let stopNow = Flag()
        clock.begin(onStop: { stopNow.set() })
        let start = now()
        // In its own process group, so that a stop reaches its children too.
        var attributes = posix_spawnattr_t()
        unsafe posix_spawnattr_init(&attributes)
        unsafe posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        unsafe posix_spawnattr_setpgroup(&attributes, 0)
        let rc = unsafe posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, environ)
        unsafe posix_spawnattr_destroy(&attributes)
        unsafe posix_spawn_file_actions_destroy(&actions)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            print(unsafe "timed-run: cannot run \(argv[0]): \(String(cString: strerror(rc)))")
            return nil
        }
        let deadline = start + UInt64(timeout * 1e9)
        var timedOut = false, stoppedOnMarks = false
        var killAt: UInt64?
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let ready = unsafe poll(&poller, 1, 100)
            if ready > 0 {
                let n = unsafe read(fds[0], &buffer, buffer.count)
                if n == 0 { break }
                if n > 0 { clock.take(buffer[0..<n]) }
            }
            let t = now()
            if killAt == nil, t >= deadline || stopNow.isSet {
                if t >= deadline { timedOut = true } else { stoppedOnMarks = true }
                kill(-pid, SIGTERM)
                killAt = t + 3_000_000_000
            } else if let k = killAt, t >= k {
                kill(-pid, SIGKILL)
                killAt = .max
            }
        }
        close(fds[0])
        var status: Int32 = 0
        var usage = rusage()
        _ = unsafe wait4(pid, &status, 0, &usage)
        let seconds = Double(now() - start) / 1e9
        let exitStatus = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return TimedRun(
            lines: clock.lines, seconds: seconds, status: exitStatus, timedOut: timedOut, stoppedOnMarks: stoppedOnMarks,
            userSeconds: Self.seconds(usage.ru_utime), systemSeconds: Self.seconds(usage.ru_stime))
    }
}
