import Foundation
import Testing

/// The Python tools of Tools/api (schemathesis, pyrecracker) in their cached virtual
/// environment: from `SWIFTVISOR_PYTHON_TOOLS` (set by CI), else installed by the script.
enum PythonTools {
    static let folder: Result<String, any Error> = Result {
        if let dir = ProcessInfo.processInfo.environment["SWIFTVISOR_PYTHON_TOOLS"] { return dir }
        let process = Process()
        process.executableURL = LinuxKernels.repository.appendingPathComponent("Tools/api/python-tools.sh")
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw LinuxKernels.ScriptFailed(
                description: "Tools/api/python-tools.sh failed with status \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a program and returns its status and output (standard output and error together).
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval
    ) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let capture = ConsoleCapture()
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let sink = capture.sink
        let reader = Thread {
            while case let data = pipe.fileHandleForReading.availableData, !data.isEmpty { data.forEach(sink) }
        }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return (-1, capture.text + "\n(killed after \(Int(timeout)) s)")
        }
        usleep(100_000)
        return (process.terminationStatus, capture.text)
    }
}

extension KVMIntegration {
    @Suite("Firecracker clients nobody here wrote")
    struct FirecrackerClientTests {
        /// schemathesis generates requests from API/openapi.json (valid ones and ones that
        /// break the schema) and checks every answer: no 5xx, only documented statuses and
        /// content types, bodies that match the schemas, and every schema-breaking request
        /// refused. `/actions` is left out: it would start a VM. Two checks are off, each
        /// for a reason: `positive_data_acceptance` (a valid body can still be refused: the
        /// files it names must exist) and `unsupported_method` (an unknown method is 400,
        /// not 405, because Firecracker answers that and its clients expect it).
        @Test("schemathesis finds no 5xx, no undocumented answer and no accepted invalid request; the server lives on")
        func schemathesis() throws {
            let tools = try PythonTools.folder.get()
            let fc = try FirecrackerProcess()
            let bridge = Process()
            bridge.executableURL = LinuxKernels.repository.appendingPathComponent("Tools/api/bridge.py")
            bridge.arguments = [fc.socket]
            let portPipe = Pipe()
            bridge.standardOutput = portPipe
            try bridge.run()
            defer {
                kill(bridge.processIdentifier, SIGKILL)
                bridge.waitUntilExit()
            }
            let firstLine = String(decoding: portPipe.fileHandleForReading.availableData, as: UTF8.self)
            let port = try #require(Int(firstLine.trimmingCharacters(in: .whitespacesAndNewlines)), "bridge said \(firstLine)")
            let document = LinuxKernels.repository.appendingPathComponent("API/openapi.json").path
            let (status, output) = try PythonTools.run(
                tools + "/bin/schemathesis",
                [
                    "run", document, "--url", "http://127.0.0.1:\(port)", "--exclude-path", "/actions",
                    "--exclude-checks", "positive_data_acceptance,unsupported_method", "--max-examples", "40",
                    "--seed", "20261205", "--phases", "coverage,fuzzing,stateful", "--no-color",
                    "--generation-database", "none",
                ],
                timeout: 900)
            #expect(status == 0, "\(output.suffix(6000))")
            #expect(output.contains("passed"), "\(output.suffix(2000))")
            #expect(fc.process.isRunning, "the server ended: \(fc.errors.text)")
            #expect(try fc.request("GET", "/").json?["state"] as? String == "Not started")
        }

        /// pyrecracker 0.6.4 from PyPI, unchanged, starts `sudo firecracker` (a `sudo`
        /// that only runs its arguments, and a link named `firecracker`), creates a TAP,
        /// and drives the test kernel through its whole lifecycle.
        @Test(
            "pyrecracker: configure (machine, boot source, root drive, TAP interface), start, pause, resume, Ctrl-Alt-Del; exit 0"
        )
        func pyrecracker() throws {
            let tools = try PythonTools.folder.get()
            let kernel = try LinuxKernels.testKernel.get() + "/bzImage"
            let images = try LinuxKernels.guestImages.get()
            let directory = NSTemporaryDirectory() + "swiftvisor-pyre-" + UUID().uuidString.prefix(8)
            let bin = directory + "/bin"
            try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try Data("#!/bin/sh\nexec \"$@\"\n".utf8).write(to: URL(fileURLWithPath: bin + "/sudo"))
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: bin + "/sudo")
            // The link the README recommends: to swiftvisor-firecracker, which binds the socket
            // before swiftvisor has loaded (pyrecracker sends its first request at once).
            try FileManager.default.createSymbolicLink(
                atPath: bin + "/firecracker", withDestinationPath: FirecrackerProcess.launcher.path)
            let tap = "svpyre\(getpid() % 100_000)"
            defer { _ = try? PythonTools.run("/usr/sbin/ip", ["tuntap", "del", "dev", tap, "mode", "tap"], timeout: 10) }
            let path = bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
            let (status, output) = try PythonTools.run(
                tools + "/bin/python",
                [
                    LinuxKernels.repository.appendingPathComponent("Tools/api/pyrecracker_lifecycle.py").path,
                    directory + "/api.sock", kernel, images + "/initramfs.cpio.gz", images + "/rootfs.ext4", tap,
                    directory + "/firecracker.log",
                ],
                environment: ["PATH": path], timeout: 1200)
            let log = (try? String(contentsOfFile: directory + "/firecracker.log", encoding: .utf8)) ?? ""
            #expect(status == 0, "\(output)\n\(log.suffix(3000))")
            let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }) ?? ""
            let result = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
            #expect(result["after_start"] as? String == "Running", "\(output)")
            #expect(result["keyboard_bound"] as? Bool == true, "\(log.suffix(3000))")
            #expect(result["after_pause"] as? String == "Paused", "\(output)")
            #expect(result["after_resume"] as? String == "Running", "\(output)")
            #expect(result["exit_status"] as? Int == 0, "\(output)\n\(log.suffix(3000))")
            #expect(result["restarted"] as? Bool == true, "\(log.suffix(3000))")
            // Its first request follows the spawn at once; the TAP set-up before it gives
            // the socket a little time, but not much.
            #expect((result["configured_after_s"] as? Double ?? 99) < 10, "\(output)")
            #expect(!log.contains("ERROR:"), "\(log.suffix(3000))")
        }
    }
}
