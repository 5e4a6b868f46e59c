import Foundation
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorHost

extension KVMIntegration {
    /// The `swiftvisor` executable, as a user runs it. (Foundation is used here for Process
    /// only; the VMM itself does not link it.)
    @Suite("Command line")
    struct CLITests {
        /// The swiftvisor binary next to this test bundle in the build folder.
        static let binary: URL = {
            let me = URL(
                fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                    ?? CommandLine.arguments[0])
            var dir = me.deletingLastPathComponent()
            while !dir.path.isEmpty, dir.path != "/" {
                let candidate = dir.appendingPathComponent("swiftvisor")
                if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
                dir = dir.deletingLastPathComponent()
            }
            return me.deletingLastPathComponent().appendingPathComponent("swiftvisor")
        }()

        struct Result {
            var status: Int32
            var stdout: String
            var stderr: String
        }

        func run(_ arguments: [String], executable: String? = nil, asUser: String? = nil) throws -> Result {
            let process = Process()
            if let asUser {
                process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
                process.arguments =
                    [
                        "--reuid=\(asUser)", "--regid=\(asUser)", "--clear-groups",
                        executable ?? Self.binary.path,
                    ] + arguments
            } else {
                process.executableURL = Self.binary
                process.arguments = arguments
            }
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let stdout = out.fileHandleForReading.readDataToEndOfFile()
            let stderr = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return Result(
                status: process.terminationStatus,
                stdout: String(decoding: stdout, as: UTF8.self),
                stderr: String(decoding: stderr, as: UTF8.self))
        }

        /// Reads from `handle` until what was read contains `text`, or 10 s pass.
        func read(_ handle: FileHandle, until text: String) -> Data {
            var seen = Data()
            let deadline = Date().addingTimeInterval(10)
            while !String(decoding: seen, as: UTF8.self).contains(text), Date() < deadline {
                seen += handle.availableData
            }
            return seen
        }

        func temporaryFile(_ bytes: [UInt8]) throws -> String {
            let path = NSTemporaryDirectory() + "swiftvisor-test-\(UUID().uuidString)"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }

        /// A user error: exactly one line on stderr, naming the problem, and status 1.
        func expectOneLineError(
            _ result: Result, mentioning text: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            #expect(result.status == 1, sourceLocation: sourceLocation)
            #expect(result.stdout.isEmpty, sourceLocation: sourceLocation)
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "stderr: \(result.stderr)", sourceLocation: sourceLocation)
            #expect(result.stderr.hasPrefix("swiftvisor: error: "), sourceLocation: sourceLocation)
            #expect(result.stderr.contains(text), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        }

        /// A disk of 8 sectors for the virtio_blk guest: a pattern in sector 0, zeros after.
        func virtioBlkDisk() throws -> (contents: [UInt8], path: String) {
            var contents = [UInt8](repeating: 0, count: 8 * 512)
            for i in 0..<512 { contents[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
            return (contents, try temporaryFile(contents))
        }

        /// The virtio_blk guest's write: sector 1 holds sector 0's pattern XOR 0x5A (here,
        /// byte i of it is i XOR 0x5A), the rest as it was.
        func expectVirtioBlkWrote(_ contents: [UInt8], at path: String) {
            var expected = contents
            expected.replaceSubrange(512..<1024, with: (0..<512).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) })
            #expect((try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) == expected)
        }

        @Test(
            "--disk: the guest driver reads and writes the file under the CLI's seccomp filters; ,readonly refuses the write; ,id= names it"
        )
        func diskFlag() throws {
            let (contents, path) = try virtioBlkDisk()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let readOnly = try run(["--builtin", "virtio_blk", "--disk", path + ",readonly"])
            #expect(readOnly.status == 9, "\(readOnly.stdout)\(readOnly.stderr)")
            #expect(readOnly.stdout.hasSuffix("virtio-blk: write of sector 1 failed, status 1\n"))
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == contents)
            let result = try run(["--builtin", "virtio_blk", "--disk", path + ",id=rootdisk"])
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("virtio-blk: id rootdisk\n"), "\(result.stdout)")
            #expect(result.stdout.contains("virtio-blk: read past the end: status 1\n"))
            expectVirtioBlkWrote(contents, at: path)
            expectOneLineError(try run(["--builtin", "virtio_blk", "--disk", path, "--disk", path]), mentioning: "in use")
            expectOneLineError(try run(["--disk", path + ".missing"]), mentioning: ".missing")
        }

        @Test(
            "--virtio-poll: the guest driver's disk works with the queue polled, under the CLI's seccomp filters; over 1 ms is a one-line error"
        )
        func virtioPollFlag() throws {
            let (contents, path) = try virtioBlkDisk()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let result = try run(["--builtin", "virtio_blk", "--disk", path, "--virtio-poll", "1000", "--stats"])
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("virtio-blk: read past the end: status 1\n"), "\(result.stdout)")
            expectVirtioBlkWrote(contents, at: path)
            expectOneLineError(try run(["--disk", path, "--virtio-poll", "1001"]), mentioning: "1000")
        }

        @Test(
            "--vsock: reserved CIDs, a socket path that exists or is too long, and a second --vsock are one-line errors; the socket goes with the VMM"
        )
        func vsockFlag() throws {
            let directory = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let path = directory + "/v.sock"
            expectOneLineError(try run(["--vsock", "cid=2,uds=\(path)"]), mentioning: "CID 2")
            expectOneLineError(try run(["--vsock", "cid=4294967295,uds=\(path)"]), mentioning: "reserved")
            expectOneLineError(try run(["--vsock", "cid=3"]), mentioning: "cid=N,uds=PATH")
            expectOneLineError(
                try run(["--vsock", "cid=3,uds=/" + String(repeating: "x", count: 120)]), mentioning: "longer than")
            expectOneLineError(
                try run(["--vsock", "cid=3,uds=\(path)", "--vsock", "cid=4,uds=\(path)2"]), mentioning: "at most one")
            let existing = try temporaryFile([1])
            defer { try? FileManager.default.removeItem(atPath: existing) }
            expectOneLineError(try run(["--vsock", "cid=3,uds=\(existing)"]), mentioning: "exists")
            #expect(FileManager.default.fileExists(atPath: existing))
            // Under the command's seccomp filters, the machine listens and removes its socket at the end.
            let result = try run(["--vsock", "cid=3,uds=\(path)", "--stats"])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.contains("virtio-vsock0: 0 requests"), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: path))
        }

        @Test("--net: one-line errors for a bad MAC, a missing tap=, a TAP given twice, and a TAP this user cannot open")
        func netFlagErrors() throws {
            expectOneLineError(try run(["--net", "tap=swv0,mac=zz:00:00:00:00:01"]), mentioning: "is not a MAC address")
            expectOneLineError(try run(["--net", "mac=02:00:00:00:00:01"]), mentioning: "tap=NAME is missing")
            expectOneLineError(try run(["--net", "tap=swv0", "--net", "tap=swv0"]), mentioning: "TAP swv0 is given twice")
            // An unprivileged user can neither open /dev/net/tun (where it is root's alone)
            // nor create a TAP.
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvisor-net-\(UUID())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let copy = dir + "/swiftvisor"
            try FileManager.default.copyItem(atPath: Self.binary.path, toPath: copy)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: copy)
            let name = "swvnone\(getpid() % 100_000)"
            let result = try run(["--net", "tap=\(name)"], executable: copy, asUser: "65534")
            expectOneLineError(result, mentioning: "TAP \(name)")
            #expect(
                result.stderr.contains("cannot open /dev/net/tun") || result.stderr.contains("needs CAP_NET_ADMIN"),
                "\(result.stderr)")
        }

        @Test("with no arguments it runs the built-in guest, which greets")
        func defaultGuest() throws {
            let result = try run([])
            #expect(result.status == 0)
            #expect(result.stdout == "Hello from a SwiftVisor guest!\nRAM: 64 MiB, vCPUs: 1\n")
            #expect(result.stderr.isEmpty)
        }

        @Test("--memory reaches the guest")
        func memoryFlag() throws {
            let result = try run(["run", "--memory", "1G"])
            #expect(result.stdout.contains("RAM: 1024 MiB"))
        }

        @Test("a guest's debug-exit status becomes the process status; --stats counts exits by port")
        func exitStatusAndStats() throws {
            let result = try run(["--builtin", "exit_status", "--cmdline", "42", "--stats"])
            #expect(result.status == 42)
            #expect(result.stderr.contains("io-out"))
            #expect(result.stderr.contains("0x501 (debug-exit)"))
        }

        @Test("run: the debug-exit and hypercall ports are on by default; --no-debug-exit-port and --no-hypercalls turn them off")
        func guestPortOptions() throws {
            #expect(try run(["--builtin", "exit_status", "--cmdline", "42", "--debug-exit-port"]).status == 42)
            let noExit = try run([
                "--builtin", "exit_status", "--cmdline", "42", "--no-debug-exit-port", "--unclaimed-ports", "stop",
            ])
            #expect(noExit.status == 120, "stderr: \(noExit.stderr)")
            #expect(noExit.stderr.contains("0x501"), "stderr: \(noExit.stderr)")
            let hypercalls = try run(["--builtin", "events", "--cmdline", "print"])
            #expect(hypercalls.status == 7, "stderr: \(hypercalls.stderr)")
            #expect(hypercalls.stdout.contains("printed by hypercall"))
            let noHypercalls = try run([
                "--builtin", "events", "--cmdline", "print", "--no-hypercalls", "--unclaimed-ports", "stop",
            ])
            #expect(noHypercalls.status == 120, "stderr: \(noHypercalls.stderr)")
            #expect(noHypercalls.stderr.contains("0x502"), "stderr: \(noHypercalls.stderr)")
            #expect(!noHypercalls.stdout.contains("printed by hypercall"))
        }

        @Test(
            "every thread of the VMM (main, signal, console, vCPU, virtio I/O) runs with Seccomp: 2 by default; --no-seccomp leaves every thread unfiltered"
        )
        func seccompOption() throws {
            func seccompModes(_ extra: [String]) throws -> [String] {
                let process = Process()
                process.executableURL = Self.binary
                process.arguments = ["--builtin", "spin", "--rng"] + extra
                let out = Pipe()
                process.standardOutput = out
                process.standardError = FileHandle.nullDevice
                process.standardInput = FileHandle.nullDevice
                try process.run()
                _ = read(out.fileHandleForReading, until: "spinning")
                let tasks =
                    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/task")) ?? []
                let modes = tasks.compactMap { tid -> String? in
                    let status =
                        (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/task/\(tid)/status", encoding: .utf8))
                        ?? ""
                    return status.split(separator: "\n").first { $0.hasPrefix("Seccomp:") }
                        .map { $0.dropFirst("Seccomp:".count).trimmingCharacters(in: .whitespaces) }
                }
                kill(process.processIdentifier, SIGTERM)
                process.waitUntilExit()
                return modes
            }
            let confined = try seccompModes([])
            // main, signal, console, vCPU and the virtio I/O thread
            #expect(confined.count >= 5 && confined.allSatisfy { $0 == "2" }, "\(confined)")
            let open = try seccompModes(["--no-seccomp"])
            #expect(!open.isEmpty && open.allSatisfy { $0 == "0" }, "\(open)")
        }

        @Test(
            "--stats-json writes the statistics through the file opened before the main thread's filter; a path that cannot be created fails before the guest runs"
        )
        func statsJSON() throws {
            let path = try temporaryFile(Array("stale contents, longer than nothing".utf8))
            defer { removeFile(path) }
            let result = try run(["--builtin", "hello", "--stats-json", path])
            #expect(result.status == 0, "stderr: \(result.stderr)")
            let json = String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
            #expect(json.hasPrefix("{\"total\": "), "\(json)")
            #expect(json.hasSuffix("}\n") && !json.contains("stale"), "\(json)")

            let bad = try run(["--builtin", "hello", "--stats-json", "/nonexistent-dir/stats.json"])
            #expect(bad.status == 1)
            #expect(bad.stdout.isEmpty, "the guest ran: \(bad.stdout)")
            #expect(bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
            #expect(bad.stderr.contains("/nonexistent-dir/stats.json"), "\(bad.stderr)")
        }

        @Test("boot --on-reboot restart with a disk: the next boot reuses the disk opened before the main thread's filter")
        func rebootWithDisk() throws {
            let kernel = try temporaryFile(try #require(builtinImage("reset_echo")))
            let disk = try temporaryFile([UInt8](repeating: 0, count: 4096))
            defer {
                removeFile(kernel)
                removeFile(disk)
            }
            let process = Process()
            process.executableURL = Self.binary
            process.arguments = [
                "boot", "--kernel", kernel, "--memory", "32M", "--cmdline-replace", "", "--on-reboot", "restart",
                "--debug-exit-port", "--disk", disk,
            ]
            let input = Pipe(), output = Pipe(), errors = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = errors
            try process.run()
            _ = read(output.fileHandleForReading, until: "ready\n")
            input.fileHandleForWriting.write(Data("a".utf8))  // echoed, then a reset
            let second = String(decoding: read(output.fileHandleForReading, until: "ready\n"), as: UTF8.self)
            // Boot 2 builds its machine with the disk; before the fix it ended here.
            guard second.contains("ready"), process.isRunning else {
                process.waitUntilExit()
                let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                Issue.record("the second boot did not start: \(stderr)")
                return
            }
            input.fileHandleForWriting.write(Data("q".utf8))
            process.waitUntilExit()
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(stderr)")
            #expect(stderr.contains("booting again (boot 2)"), "\(stderr)")
            #expect(!stderr.contains("not permitted"), "\(stderr)")
        }

        @Test(
            "boot --on-reboot restart with --vsock: the next boot serves the same socket under the inherited filter; the path goes at the end"
        )
        func rebootWithVsock() throws {
            let kernel = try temporaryFile(try #require(builtinImage("reset_echo")))
            defer { removeFile(kernel) }
            let directory = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let path = directory + "/v.sock"
            let process = Process()
            process.executableURL = Self.binary
            process.arguments = [
                "boot", "--kernel", kernel, "--memory", "32M", "--cmdline-replace", "", "--on-reboot", "restart",
                "--debug-exit-port", "--vsock", "cid=3,uds=\(path)",
            ]
            let input = Pipe(), output = Pipe(), errors = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = errors
            try process.run()
            _ = read(output.fileHandleForReading, until: "ready\n")
            input.fileHandleForWriting.write(Data("a".utf8))  // echoed, then a reset
            let second = String(decoding: read(output.fileHandleForReading, until: "ready\n"), as: UTF8.self)
            guard second.contains("ready"), process.isRunning else {
                process.waitUntilExit()
                let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                Issue.record("the second boot did not start: \(stderr)")
                return
            }
            // Boot 2's I/O thread accepts and reads the line; this guest has no driver, so the
            // connection is closed: the host program reads the end of input.
            let fd = try #require(HostSocket.connect(path: path))
            _ = HostSocket.send(fd, Array("CONNECT 1\n".utf8)[...])
            var buffer = [UInt8](repeating: 0, count: 16)
            var ended = false
            for _ in 0..<5000 where !ended {
                let result = HostSocket.receive(fd, into: &buffer, count: 16)
                ended = result == .transferred(0) || result == .failed
                if !ended { usleep(1000) }
            }
            HostSocket.close(fd)
            #expect(ended)
            input.fileHandleForWriting.write(Data("q".utf8))
            process.waitUntilExit()
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(stderr)")
            #expect(stderr.contains("booting again (boot 2)"), "\(stderr)")
            #expect(!FileManager.default.fileExists(atPath: path))
        }

        @Test("an ELF file given on the command line runs, and a raw binary runs with --load-address")
        func guestFiles() throws {
            let elf = try temporaryFile(try #require(builtinImage("exit_status")))
            defer { removeFile(elf) }
            #expect(try run([elf, "--cmdline", "3"]).status == 3)
            let flat = try temporaryFile(try #require(builtinImage("real_mode")))
            defer { removeFile(flat) }
            let result = try run([flat, "--load-address", "0x8000"])
            #expect(result.status == 42)
            #expect(result.stdout == "Hello from real mode\n")
        }

        @Test("a triple fault prints a state dump and exits 121")
        func tripleFault() throws {
            let result = try run(["--builtin", "triple_fault"])
            #expect(result.status == 121)
            #expect(result.stderr.contains("fatal: triple fault"))
            #expect(result.stderr.contains("RIP="))
        }

        @Test("--trace prints one line per exit")
        func traceFlag() throws {
            let result = try run(["--builtin", "exit_status", "--cmdline", "0", "--trace"])
            #expect(result.status == 0)
            #expect(result.stderr.split(separator: "\n").count == 1)
            #expect(result.stderr.contains("io-out port=0x501"))
        }

        @Test("a --cpuid override on the command line shows up in the guest")
        func cpuidOverride() throws {
            let plain = try run(["--builtin", "cpuid_probe"])
            let hidden = try run(["--builtin", "cpuid_probe", "--cpuid", "1.ecx.13=0"])
            #expect(plain.status == 0 && hidden.status == 0)
            let before = try #require(parseCPUIDProbe(plain.stdout)["00000001.00"]).ecx
            let after = try #require(parseCPUIDProbe(hidden.stdout)["00000001.00"]).ecx
            #expect(before & (1 << 13) != 0, "this host offers CMPXCHG16B")
            #expect(after & (1 << 13) == 0)
            #expect(after | (1 << 13) == before)
        }

        @Test("'swiftvisor cpuid' prints the guest table and marks what differs from the host")
        func cpuidCommand() throws {
            let result = try run(["cpuid", "--cpus", "2", "--vcpu", "1"])
            #expect(result.status == 0)
            // The mark depends on this host's table: "+" where KVM lists no such leaf (AMD hosts
            // often lack 0xB), "*" where the guest's differs, a space where it is the same.
            let guest = CPUIDPolicy().normalize(HostCPU.supported, apicID: 1, vcpuCount: 2)
            func expectedLine(_ leaf: UInt32, _ subleaf: UInt32) throws -> String {
                func hex(_ v: UInt32) -> String {
                    let s = String(v, radix: 16); return String(repeating: "0", count: 8 - s.count) + s
                }
                let g = try #require(guest.first { $0.function == leaf && $0.index == subleaf })
                let mark =
                    HostCPU.entry(leaf, subleaf).map { h in
                        (h.eax, h.ebx, h.ecx, h.edx) == (g.eax, g.ebx, g.ecx, g.edx) ? " " : "*"
                    } ?? "+"
                return
                    "\(mark) \(hex(leaf)).\(hex(subleaf).suffix(2))  eax=\(hex(g.eax)) ebx=\(hex(g.ebx)) ecx=\(hex(g.ecx)) edx=\(hex(g.edx))"
            }
            #expect(result.stdout.contains(try expectedLine(1, 0)))
            // vCPU 1 of 2 sees itself at the core level of leaf 0xB.
            #expect(try expectedLine(0xB, 1).hasSuffix("0000000b.01  eax=00000001 ebx=00000002 ecx=00000201 edx=00000001"))
            #expect(result.stdout.contains(try expectedLine(0xB, 1)))
            #expect(result.stdout.contains("40000000.00  eax=40000001 ebx=4b4d564b ecx=564b4d56 edx=0000004d"))
        }

        @Test("a malformed --cpuid override is a usage error naming the flag")
        func badCPUIDOverride() throws {
            let result = try run(["--cpuid", "1.ecx.40=1"])
            #expect(result.status == 64)
            #expect(result.stderr.contains("--cpuid"))
        }

        @Test("--cpus starts application processors")
        func cpusFlag() throws {
            let result = try run(["--builtin", "smp", "--cpus", "2"])
            #expect(result.status == 0)
            #expect(
                result.stdout == "MP table: 2 CPUs, IOAPIC id 2 at 0xFEC00000\nBSP: starting 1 APs\nAP 1 up\nBSP: all 2 CPUs up\n"
            )
        }

        @Test("--cpus beyond the host's limit, or with --no-irqchip, is refused")
        func badCPUs() throws {
            expectOneLineError(try run(["--cpus", "100000"]), mentioning: "invalid vCPU count")
            let noChip = try run(["--cpus", "2", "--no-irqchip"])
            #expect(noChip.status == 64)
            #expect(noChip.stderr.contains("--no-irqchip"))
        }

        @Test("standard input reaches the guest's COM1 with its interrupt, and the guest echoes it")
        func stdinEcho() throws {
            let process = Process()
            process.executableURL = Self.binary
            process.arguments = ["--builtin", "serial_echo"]
            let input = Pipe(), output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Wait for the guest to set up its UART (it clears the FIFO), then type.
            var seen = read(output.fileHandleForReading, until: "echo ready\n")
            input.fileHandleForWriting.write(Data("typed text q".utf8))
            seen += output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            #expect(String(decoding: seen, as: UTF8.self) == "echo ready\ntyped text q")
        }

        @Test("SIGINT stops the guest and exits 130 (after the statistics, with --stats); SIGUSR1 injects an NMI")
        func signals() throws {
            for (signal, arguments, status, text) in [
                (SIGINT, ["--builtin", "spin"], Int32(130), "spinning\n"),
                (SIGINT, ["--builtin", "spin", "--stats"], Int32(130), "spinning\n"),
                (SIGUSR1, ["--builtin", "events", "--cmdline", "wait"], Int32(0), "waiting\n"),
            ] {
                let process = Process()
                process.executableURL = Self.binary
                process.arguments = arguments
                let output = Pipe(), errors = Pipe()
                process.standardOutput = output
                process.standardError = errors
                process.standardInput = FileHandle.nullDevice
                try process.run()
                var seen = read(output.fileHandleForReading, until: text)
                Thread.sleep(forTimeInterval: 0.05)
                kill(process.processIdentifier, signal)
                seen += output.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                #expect(process.terminationStatus == status)
                if signal == SIGINT {
                    let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    if arguments.contains("--stats") {
                        #expect(stderr.hasPrefix("exits: "), "\(stderr)")
                        #expect(stderr.hasSuffix("\nswiftvisor: stopped by signal 2\n"), "\(stderr)")
                    } else {
                        #expect(stderr == "swiftvisor: stopped by signal 2\n")
                    }
                } else {
                    #expect(String(decoding: seen, as: UTF8.self) == "waiting\nvector=02 error=00000000 cr2=0000000000000000\n")
                }
            }
        }

        @Test("a closed standard output does not kill the VMM")
        func closedStdout() throws {
            let process = Process()
            process.executableURL = Self.binary
            process.arguments = ["--builtin", "hello"]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try output.fileHandleForReading.close()
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationReason == .exit)
            #expect(process.terminationStatus == 0)
        }

        @Test(
            "SIGINT stops a VM whose vCPU is blocked writing to a full pipe, on every output path",
            arguments: [
                (["--builtin", "chatty"], false), (["--builtin", "chatty_string"], false),
                (["--builtin", "chatty_hypercall"], false), (["--builtin", "chatty", "--trace"], true),
            ])
        func stopWhileOutputBlocked(arguments: [String], blockStandardError: Bool) throws {
            let process = Process()
            process.executableURL = Self.binary
            process.arguments = arguments
            let blocked = Pipe()  // never read: fills after 64 KiB
            process.standardOutput = blockStandardError ? FileHandle.nullDevice : blocked
            process.standardError = blockStandardError ? blocked : FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
            // Wait until the pipe is full (or nearly: a trace line does not split).
            let fd = blocked.fileHandleForReading.fileDescriptor
            var queued: Int32 = 0
            let filling = Date().addingTimeInterval(20)
            repeat {
                Thread.sleep(forTimeInterval: 0.05)
                // SAFETY: FIONREAD writes one int into `queued`, a local that outlives the call.
                _ = unsafe ioctl(fd, UInt(FIONREAD), &queued)
            } while queued < 60000 && Date() < filling
            #expect(queued >= 60000, "the pipe never filled")
            Thread.sleep(forTimeInterval: 0.05)
            kill(process.processIdentifier, SIGINT)
            let sent = Date()
            let deadline = sent.addingTimeInterval(5)
            while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
            let elapsed = Date().timeIntervalSince(sent)
            #expect(!process.isRunning, "the VM did not stop")
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            print("\(arguments.joined(separator: " ")): stopped \(Int(elapsed * 1000)) ms after SIGINT")
            #expect(process.terminationStatus == 130)
            #expect(elapsed < 1, "the stop took \(elapsed) s")
        }

        @Test("a missing guest file is a one-line error")
        func missingFile() throws {
            expectOneLineError(try run(["/nonexistent/guest.elf"]), mentioning: "No such file")
        }

        @Test("a file that is not ELF is a one-line error")
        func notELF() throws {
            let path = try temporaryFile(Array("#!/bin/sh\necho hi\n".utf8))
            defer { removeFile(path) }
            expectOneLineError(try run([path]), mentioning: "not an ELF file")
        }

        @Test("an ELF for another machine is a one-line error")
        func wrongMachine() throws {
            var image = try #require(builtinImage("hello"))
            image[18] = 40  // EM_ARM
            let path = try temporaryFile(image)
            defer { removeFile(path) }
            expectOneLineError(try run([path]), mentioning: "not x86-64")
        }

        @Test(
            "bad memory sizes are one-line errors",
            arguments: [
                ("0", "larger than zero"), ("1000", "multiple of 4 KiB"), ("1000G", "host"), ("lots", "memory"),
            ])
        func badMemory(size: String, message: String) throws {
            let result = try run(["--memory", size])
            if size == "lots" {
                // Rejected by the argument parser: a usage error, not a crash.
                #expect(result.status == 64)
                #expect(result.stderr.contains("memory"))
            } else {
                expectOneLineError(result, mentioning: message)
            }
        }

        @Test("a guest too large for RAM is a one-line error")
        func tooLittleMemory() throws {
            expectOneLineError(try run(["--memory", "1M"]), mentioning: "outside guest RAM")
        }

        @Test("a user without access to /dev/kvm gets a one-line error with a hint")
        func kvmNotPermitted() throws {
            try #require(getuid() == 0, "only root can run the tool as another user here")
            // Copy the binary where the unprivileged user can execute it.
            let dir = NSTemporaryDirectory() + "swiftvisor-nobody-\(UUID().uuidString)"
            try FileManager.default.createDirectory(
                atPath: dir, withIntermediateDirectories: false,
                attributes: [.posixPermissions: 0o755])
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let copy = dir + "/swiftvisor"
            try FileManager.default.copyItem(atPath: Self.binary.path, toPath: copy)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: copy)
            let result = try run([], executable: copy, asUser: "65534")
            expectOneLineError(result, mentioning: "cannot open /dev/kvm: Permission denied")
            #expect(result.stderr.contains("group"))
        }

        func builtinImage(_ name: String) -> [UInt8]? { GuestImages.named(name) }
    }
}

extension KVMIntegration.CLITests {
    @Test("every --help shows defaults as a user would type them, never a Swift value's description")
    func helpDefaults() throws {
        // A leaked description looks like `ByteSize(bytes: 536870912)`.
        let leak = try Regex(#"[A-Za-z_]\w*\(\w+: "#)
        for command in [[], ["run"], ["boot"], ["cpuid"], ["probe-emulation"], ["guests"]] {
            let result = try run(command + ["--help"])
            #expect(result.status == 0)
            let leaks = result.stdout.split(separator: "\n").filter { $0.contains(leak) }
            #expect(leaks.isEmpty, "swiftvisor \(command.joined(separator: " ")) --help: \(leaks)")
        }
        #expect(try run(["run", "--help"]).stdout.contains("(default: 64M)"))
        #expect(try run(["boot", "--help"]).stdout.contains("(default: 512M)"))
    }

    @Test("probe-emulation classifies instructions: KVM emulates cpuid, SwiftVisor finishes popcnt and int3, xsave stops")
    func probeEmulation() throws {
        let interprets = try !HostQuirks.probe().runsKernelCodeNatively
        let result = try run(["probe-emulation", "cpuid", "popcnt", "int3", "xsave"])
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n").map {
            $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
        }
        #expect(lines.contains("cpuid KVM ran"))
        guard interprets else {
            // Where CPL0 code runs natively, the CPU finishes all four and nothing reaches
            // SwiftVisor.
            #expect(lines.contains("popcnt KVM ran"))
            #expect(lines.contains("int3 KVM exception #BP"))
            #expect(lines.last == "KVM: 4 SwiftVisor: 0 stops: 0")
            return
        }
        #expect(lines.contains("popcnt SwiftVisor ran"))
        #expect(lines.contains("int3 SwiftVisor exception #BP"))
        #expect(lines.contains("xsave stops (KVM cannot emulate) -"))
        #expect(lines.last == "KVM: 1 SwiftVisor: 2 stops: 1")
    }
}
