import Foundation
import Glibc
import SwiftVisor
import SwiftVisorGuests
import Testing

/// What the `counter` guest prints when nothing interrupts it.
let counterOutput = "counting\n" + (1...256).map { "n=" + hex8($0) + "\n" }.joined()

private func hex8(_ value: Int) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: 8 - digits.count) + digits
}

private func temporaryPath(_ name: String) -> String {
    NSTemporaryDirectory() + "swiftvisor-snapshot-\(UUID().uuidString)-\(name)"
}

extension KVMIntegration {
    @Suite("Snapshots")
    struct SnapshotTests {
        /// Runs the counter guest until it has printed `line`, pauses it and snapshots it.
        /// Returns what it printed and the two files.
        func snapshotCounter(at line: Int, kind: SnapshotKind = .full, track: Bool = false) async throws
            -> (printed: String, state: String, memory: String)
        {
            let console = ConsoleCapture()
            let original = try machine(GuestImages.counter, console) { $0.trackDirtyPages = track }
            try original.start()
            let marker = "n=" + hex8(line) + "\n"
            #expect(await eventually(30) { console.text.contains(marker) })
            await original.pause()
            let state = temporaryPath("state"), memory = temporaryPath("memory")
            try original.snapshot(statePath: state, memoryPath: memory, kind: kind)
            let printed = console.text
            await original.stop()
            return (printed, state, memory)
        }

        @Test("a guest counting in memory and on COM1, restored in a new machine, continues exactly where it stopped")
        func counterContinues() async throws {
            let (printed, state, memory) = try await snapshotCounter(at: 0x10)
            defer { removeFile(state); removeFile(memory) }
            #expect(counterOutput.hasPrefix(printed))
            #expect(!printed.hasSuffix("n=00000100\n"))
            let snapshot = try MachineSnapshot(statePath: state, memoryPath: memory)
            #expect(snapshot.shape.memorySize == 64 << 20 && snapshot.shape.vcpuCount == 1)
            let console = ConsoleCapture()
            var config = MachineConfiguration(restoring: snapshot)
            config.consoleOutput = console.sink
            let report = try await Machine(config).run()
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(printed + console.text == counterOutput)
        }

        @Test("the same snapshot restored twice at once gives two independent VMs")
        func restoredTwiceInParallel() async throws {
            let (printed, state, memory) = try await snapshotCounter(at: 0x20)
            defer { removeFile(state); removeFile(memory) }
            let snapshot = try MachineSnapshot(statePath: state, memoryPath: memory)
            let consoles = [ConsoleCapture(), ConsoleCapture()]
            let machines = try consoles.map { console in
                var config = MachineConfiguration(restoring: snapshot)
                config.consoleOutput = console.sink
                return try Machine(config)
            }
            for machine in machines { try machine.start() }
            for machine in machines {
                #expect(await machine.wait().outcome == .stopped(.guestExit(status: 0)))
            }
            for console in consoles { #expect(printed + console.text == counterOutput) }
        }

        @Test("a diff snapshot merged onto the full one before it restores the later state")
        func diffMergedOntoFull() async throws {
            let console = ConsoleCapture()
            let original = try machine(GuestImages.counter, console) { $0.trackDirtyPages = true }
            try original.start()
            #expect(await eventually(30) { console.text.contains("n=00000008\n") })
            await original.pause()
            let fullState = temporaryPath("full-state"), fullMemory = temporaryPath("full-memory")
            let diffState = temporaryPath("diff-state"), diffMemory = temporaryPath("diff-memory")
            defer { [fullState, fullMemory, diffState, diffMemory].forEach(removeFile) }
            try original.snapshot(statePath: fullState, memoryPath: fullMemory, kind: .full)
            original.resume()
            #expect(await eventually(30) { console.text.contains("n=00000018\n") })
            await original.pause()
            try original.snapshot(statePath: diffState, memoryPath: diffMemory, kind: .diff)
            let printed = console.text
            await original.stop()
            // A diff holds only what changed: far less than the full image's data.
            try MachineSnapshot.mergeDiff(memoryPath: diffMemory, ontoFullMemoryPath: fullMemory)
            let restoredConsole = ConsoleCapture()
            var config = MachineConfiguration(restoring: try MachineSnapshot(statePath: diffState, memoryPath: fullMemory))
            config.consoleOutput = restoredConsole.sink
            #expect(try await Machine(config).run().outcome == .stopped(.guestExit(status: 0)))
            #expect(printed + restoredConsole.text == counterOutput)
        }

        @Test("a running machine, or one without dirty-page tracking asked for a diff, is refused")
        func refusals() async throws {
            let console = ConsoleCapture()
            let running = try machine(GuestImages.counter, console)
            try running.start()
            let state = temporaryPath("state"), memory = temporaryPath("memory")
            #expect(throws: MachineError.self) { try running.snapshot(statePath: state, memoryPath: memory) }
            await running.pause()
            #expect(throws: MachineError.self) { try running.snapshot(statePath: state, memoryPath: memory, kind: .diff) }
            await running.stop()
            let leftOver = FileManager.default.fileExists(atPath: state) || FileManager.default.fileExists(atPath: memory)
            #expect(!leftOver, "a refused snapshot left files behind")
        }

        @Test("a restored configuration that changes what the snapshot fixes is refused by name")
        func changedShapeRefused() async throws {
            let (_, state, memory) = try await snapshotCounter(at: 2)
            defer { removeFile(state); removeFile(memory) }
            var config = MachineConfiguration(restoring: try MachineSnapshot(statePath: state, memoryPath: memory))
            config.memorySize = 128 << 20
            #expect {
                _ = try Machine(config)
            } throws: { error in
                "\(error)".contains("the snapshot was taken with memory 64 MiB, the configuration asks for 128 MiB")
            }
        }

        // MARK: The command line, in new processes

        func swiftvisor(_ arguments: [String]) throws -> (process: Process, stdout: Pipe, stderr: Pipe) {
            let process = Process()
            process.executableURL = CLITests.binary
            process.arguments = arguments
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = FileHandle.nullDevice
            try process.run()
            return (process, out, err)
        }

        func finish(_ run: (process: Process, stdout: Pipe, stderr: Pipe), after prefix: Data = Data()) -> (
            status: Int32, stdout: String, stderr: String
        ) {
            let stdout = prefix + run.stdout.fileHandleForReading.readDataToEndOfFile()
            let stderr = run.stderr.fileHandleForReading.readDataToEndOfFile()
            run.process.waitUntilExit()
            return (
                run.process.terminationStatus, String(decoding: stdout, as: UTF8.self),
                String(decoding: stderr, as: UTF8.self)
            )
        }

        @Test("swiftvisor run takes a snapshot on SIGHUP; swiftvisor restore resumes it in a new process")
        func commandLine() throws {
            let state = temporaryPath("state"), memory = temporaryPath("memory")
            defer { removeFile(state); removeFile(memory) }
            let original = try swiftvisor([
                "run", "--builtin", "counter", "--snapshot-state", state, "--snapshot-memory", memory,
                "--stop-after-snapshot",
            ])
            var seen = Data()
            let deadline = Date().addingTimeInterval(30)
            while !String(decoding: seen, as: UTF8.self).contains("n=00000010\n"), Date() < deadline {
                seen += original.stdout.fileHandleForReading.availableData
            }
            kill(original.process.processIdentifier, SIGHUP)
            let first = finish(original, after: seen)
            #expect(first.stderr.contains("full snapshot written to \(state) and \(memory)"), "\(first.stderr)")
            #expect(counterOutput.hasPrefix(first.stdout) && first.stdout.count < counterOutput.count)
            let restored = finish(try swiftvisor(["restore", "--state", state, "--memory", memory]))
            #expect(restored.status == 0, "\(restored.stderr)")
            #expect(first.stdout + restored.stdout == counterOutput)
        }

        @Test("swiftvisor restore refuses a truncated, corrupted or foreign state file and a short memory file with one line")
        func badSnapshotsRefused() async throws {
            let (_, state, memory) = try await snapshotCounter(at: 1)
            defer { removeFile(state); removeFile(memory) }
            let good = try Data(contentsOf: URL(fileURLWithPath: state))
            let damaged = temporaryPath("damaged"), shortMemory = temporaryPath("short")
            defer { removeFile(damaged); removeFile(shortMemory) }
            var corrupted = good
            corrupted[corrupted.count - 3] ^= 0x40
            var otherVersion = good
            otherVersion[8] = 99
            let cases: [(Data, String)] = [
                (good.prefix(good.count / 2), "truncated"),
                (corrupted, "checksum"),
                (otherVersion, "format version 99"),
                (Data("not a snapshot at all".utf8), "is not a SwiftVisor snapshot"),
            ]
            for (bytes, message) in cases {
                try bytes.write(to: URL(fileURLWithPath: damaged))
                let result = finish(try swiftvisor(["restore", "--state", damaged, "--memory", memory]))
                #expect(result.status == 1)
                #expect(result.stdout.isEmpty, "a guest ran from a bad snapshot")
                #expect(result.stderr.contains(message), "\(result.stderr)")
                #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            }
            try Data(count: 4096).write(to: URL(fileURLWithPath: shortMemory))
            let short = finish(try swiftvisor(["restore", "--state", state, "--memory", shortMemory]))
            #expect(short.status == 1 && short.stdout.isEmpty)
            #expect(short.stderr.split(separator: "\n").count == 1, "\(short.stderr)")
        }

        @Test(
            "the test kernel snapshotted in the middle of its KUnit run and restored in a new process finishes every suite and powers off",
            arguments: [1, 2])
        func linuxMidKUnit(cpus: Int) throws {
            let dir = try LinuxKernels.testKernel.get()
            let state = temporaryPath("linux-state"), memory = temporaryPath("linux-memory")
            defer { removeFile(state); removeFile(memory) }
            let original = try swiftvisor([
                "boot", "--kernel", dir + "/bzImage", "--memory", "128M", "--cpus", "\(cpus)",
                "--cmdline", "kunit_shutdown=poweroff", "--snapshot-state", state, "--snapshot-memory", memory,
                "--stop-after-snapshot",
            ])
            // Mid-run: once KUnit has begun, with every suite still to come.
            var seen = Data()
            let deadline = Date().addingTimeInterval(600)
            while !String(decoding: seen, as: UTF8.self).contains("KTAP version 1"), Date() < deadline {
                seen += original.stdout.fileHandleForReading.availableData
            }
            let started = Date()
            kill(original.process.processIdentifier, SIGHUP)
            let first = finish(original, after: seen)
            #expect(first.stderr.contains("snapshot written"), "\(first.stderr)")
            let restored = finish(try swiftvisor(["restore", "--state", state, "--memory", memory]))
            print("linux, \(cpus) vCPU(s): snapshot and restore to power-off in \(Int(Date().timeIntervalSince(started))) s")
            #expect(restored.status == 0, "\(restored.stderr)\n\(restored.stdout.suffix(2000))")
            let boot = LinuxBoot(
                report: RunReport(outcome: .stopped(.halted)), console: first.stdout + restored.stdout, seconds: 0)
            boot.expectAllKUnitSuitesPassed()
            #expect(restored.stdout.contains("reboot: Power down"), "\(restored.stdout.suffix(2000))")
        }
    }
}
