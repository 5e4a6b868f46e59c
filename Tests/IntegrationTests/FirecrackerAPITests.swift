import Foundation
import SwiftVisor
import SwiftVisorGuests
import Testing

/// A `swiftvisor firecracker` process and a real HTTP client (curl) on its socket.
final class FirecrackerProcess {
    let directory: String
    let socket: String
    let process = Process()
    let output = ConsoleCapture()
    let errors = ConsoleCapture()
    /// From spawn to a socket that accepts a request.
    private(set) var readyAfter: TimeInterval = 0

    /// `executableName`: started through a link of that name to swiftvisor; `launcher`:
    /// started as swiftvisor-firecracker, which binds the socket and then runs swiftvisor.
    init(arguments: [String] = [], executableName: String? = nil, launcher: Bool = false) throws {
        directory = NSTemporaryDirectory() + "swiftvisor-fc-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/api.sock"
        var executable = KVMIntegration.CLITests.binary
        if launcher {
            executable = FirecrackerProcess.launcher
        } else if let executableName {
            let link = directory + "/" + executableName
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: executable.path)
            executable = URL(fileURLWithPath: link)
        } else {
            process.arguments = ["firecracker"]
        }
        process.executableURL = executable
        process.arguments = (process.arguments ?? []) + ["--api-sock", socket] + arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let started = Date()
        try process.run()
        for (pipe, capture) in [(out, output), (err, errors)] {
            let sink = capture.sink
            Thread {
                while case let data = pipe.fileHandleForReading.availableData, !data.isEmpty { data.forEach(sink) }
            }.start()
        }
        while !FileManager.default.fileExists(atPath: socket), Date().timeIntervalSince(started) < 10, process.isRunning {
            usleep(500)
        }
        readyAfter = Date().timeIntervalSince(started)
    }

    /// swiftvisor-firecracker, beside swiftvisor in the build folder.
    static var launcher: URL {
        KVMIntegration.CLITests.binary.deletingLastPathComponent().appendingPathComponent("swiftvisor-firecracker")
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    struct Response {
        var status: Int
        var headers: [String]
        var body: String
        var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
        }
        var fault: String? { json?["fault_message"] as? String }
    }

    /// One request through curl on the Unix socket.
    func request(_ method: String, _ path: String, _ body: String? = nil) throws -> Response {
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        var arguments = ["-s", "-i", "--max-time", "30", "--unix-socket", socket, "-X", method]
        if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
        curl.arguments = arguments + ["http://localhost" + path]
        let out = Pipe()
        curl.standardOutput = out
        try curl.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        curl.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let head = parts.first?.components(separatedBy: "\r\n") ?? []
        let status = head.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        return Response(status: status, headers: Array(head.dropFirst()), body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// Raw bytes on a new connection (python3 as the client), returning what came back
    /// before the server closed the connection or `timeout` passed.
    func raw(_ bytes: String, timeout: Double = 5, closeAfterSend: Bool = false, delay: Double = 0) throws -> String {
        let script = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX); s.settimeout(\(timeout)); s.connect(sys.argv[1])
            time.sleep(\(delay))
            s.sendall(sys.argv[2].encode('latin-1'))
            if \(closeAfterSend ? "True" : "False"):
                s.close(); sys.exit(0)
            out = b''
            try:
                while True:
                    d = s.recv(65536)
                    if not d: break
                    out += d
            except socket.timeout: pass
            sys.stdout.write(out.decode('latin-1'))
            """
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c", script, socket, bytes]
        let out = Pipe()
        python.standardOutput = out
        try python.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        python.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        return process.isRunning ? nil : process.terminationStatus
    }
}

extension KVMIntegration {
    @Suite("Firecracker-compatible API")
    struct FirecrackerAPITests {
        @Test("the socket listens quickly; GET /, /version, /machine-config and /vm/config answer as Firecracker does")
        func readOnlyEndpoints() throws {
            let fc = try FirecrackerProcess(arguments: ["--id", "api_test"])
            #expect(fc.readyAfter < 5, "socket after \(fc.readyAfter) s")
            let info = try fc.request("GET", "/")
            #expect(info.status == 200)
            #expect(info.body == #"{"id":"api_test","state":"Not started","vmm_version":"1.12.0","app_name":"Firecracker"}"#)
            #expect(info.headers.contains("Server: Firecracker API"))
            #expect(try fc.request("GET", "/version").body == #"{"firecracker_version":"1.12.0"}"#)
            let config = try fc.request("GET", "/vm/config")
            #expect(config.json?["machine-config"] != nil)
            #expect(config.json?.keys.count == 11)
            let unknown = try fc.request("GET", "/nothing")
            #expect(unknown.status == 400)
            #expect(unknown.fault == "Invalid request method and/or path: GET nothing.")
        }

        @Test("configuration requests: 204 on success, 400 with a fault_message naming the field, state unchanged")
        func configurationRules() throws {
            let fc = try FirecrackerProcess()
            let put = try fc.request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#)
            #expect(put.status == 204)
            #expect(put.body.isEmpty)
            for body in [
                #"{"vcpu_count": 2}"#, #"{"vcpu_count": -2, "mem_size_mib": 256}"#,
                #"{"vcpu_count": 2, "mem_size_mib": 256, "x": 1}"#,
                "[]", "nonsense", #"{"vcpu_count": 2, "mem_size_mib": 1e99}"#, #"{"vcpu_count": 2, "mem_size_mib": "#,
            ] {
                let response = try fc.request("PUT", "/machine-config", body)
                #expect(response.status == 400, "\(body)")
                #expect(response.fault?.isEmpty == false, "\(body): \(response.body)")
            }
            let config = try fc.request("GET", "/machine-config").json
            #expect(config?["vcpu_count"] as? Int == 2)
            #expect(config?["mem_size_mib"] as? Int == 256)
            let missingKernel = try fc.request("PUT", "/boot-source", #"{"kernel_image_path": "/nonexistent/vmlinux"}"#)
            #expect(missingKernel.fault?.hasPrefix("Boot source error: The kernel file cannot be opened") == true)
            let start = try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
            #expect(start.fault == "Start microvm error: Cannot start microvm without kernel configuration.")
            let deprecated = try fc.request(
                "PUT", "/vsock", #"{"vsock_id": "v", "guest_cid": 3, "uds_path": "\#(fc.directory)/v.sock"}"#)
            #expect(deprecated.status == 204)
            #expect(deprecated.headers.contains("Deprecation: true"))
        }

        @Test("HTTP limits: an oversized body, an eleventh connection, malformed HTTP and a client that leaves mid-request")
        func httpLimits() throws {
            let fc = try FirecrackerProcess(arguments: ["--http-api-max-payload-size", "100"])
            let big = try fc.request("PUT", "/machine-config", "{\"x\": \"" + String(repeating: "a", count: 500) + "\"}")
            #expect(big.status == 400)
            #expect(big.fault?.contains("is larger than the limit of 100 allowed by server") == true, "\(big.body)")
            let malformed = try fc.raw("NOT HTTP AT ALL\r\n\r\n")
            #expect(malformed.hasPrefix("HTTP/1.1 400"), "\(malformed)")
            // Half a request, then the client goes away: the server carries on.
            _ = try fc.raw("PUT /machine-config HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"vcpu", closeAfterSend: true)
            // Two pipelined requests on one connection are answered in order.
            let pipelined = try fc.raw(
                "GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let version = pipelined.range(of: "firecracker_version"), state = pipelined.range(of: "\"state\"")
            #expect(version != nil && state != nil && version!.lowerBound < state!.lowerBound, "\(pipelined)")
            // Ten idle connections are served; the eleventh is answered 503 and closed.
            var held: [Process] = []
            for _ in 0..<10 {
                let sleeper = Process()
                sleeper.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                sleeper.arguments = [
                    "python3", "-c",
                    "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(8)", fc.socket,
                ]
                try sleeper.run()
                held.append(sleeper)
            }
            usleep(1_500_000)
            let refused = try fc.raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout: 3)
            #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused) \(fc.errors.text)")
            // One that connects and waits before its request: the refusal waits for it (an
            // answer before any request once crashed the server inside NIO).
            let slow = try fc.raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout: 3, delay: 0.5)
            #expect(slow.hasPrefix("HTTP/1.1 503"), "\(slow) \(fc.errors.text)")
            held.forEach { $0.terminate() }
            held.forEach { $0.waitUntilExit() }
            usleep(300_000)
            #expect(try fc.request("GET", "/").status == 200, "\(fc.errors.text)")
        }

        @Test("entry point: --version, started as `firecracker`, a socket path that exists, --no-api without a file")
        func entryPoint() throws {
            let cli = CLITests()
            let version = try cli.run(["firecracker", "--version"])
            #expect(version.status == 0)
            #expect(version.stdout.hasPrefix("Firecracker v1.12.0\n"))
            let fc = try FirecrackerProcess(executableName: "firecracker")
            #expect(try fc.request("GET", "/").status == 200)
            // A second server on the same path is refused with one line, and leaves the first alone.
            let second = try cli.run(["firecracker", "--api-sock", fc.socket])
            #expect(second.status == 1)
            #expect(second.stderr.contains(fc.socket), "\(second.stderr)")
            #expect(try fc.request("GET", "/").status == 200)
            // SIGTERM before InstanceStart ends the process with 143 and removes the socket.
            kill(fc.process.processIdentifier, SIGTERM)
            #expect(fc.waitForExit(seconds: 10) == 128 + SIGTERM)
            #expect(!FileManager.default.fileExists(atPath: fc.socket))
            let noAPI = try cli.run(["firecracker", "--no-api"])
            #expect(noAPI.status != 0)
            #expect(noAPI.stderr.contains("--no-api requires --config-file"), "\(noAPI.stderr)")
            let badFile = try cli.temporaryFile(Array(#"{"drives": []}"#.utf8))
            defer { try? FileManager.default.removeItem(atPath: badFile) }
            let bad = try cli.run(["firecracker", "--no-api", "--config-file", badFile])
            cli.expectOneLineError(bad, mentioning: "boot-source")
        }

        /// API/openapi.json against the server, both ways: every operation it lists is
        /// served (not "Invalid request method and/or path") and answers only with the
        /// statuses it documents, a 200 with the members its schema requires and no others;
        /// and every method and path the server serves, among Firecracker's resources and
        /// a few that are not, is in the document.
        @Test("the OpenAPI document lists exactly what the server serves, with the statuses and bodies it answers")
        func openAPIDocument() throws {
            let url = LinuxKernels.repository.appendingPathComponent("API/openapi.json")
            let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
            let paths = try #require(document["paths"] as? [String: [String: Any]])
            let schemas = try #require((document["components"] as? [String: Any])?["schemas"] as? [String: Any])
            let fc = try FirecrackerProcess()
            let invalidPrefix = "Invalid request method and/or path"
            func concrete(_ template: String) -> String {
                template.split(separator: "/").map { $0.hasPrefix("{") ? "probe_1" : String($0) }.reduce("") { $0 + "/" + $1 }
            }
            for (template, operations) in paths {
                for (method, value) in operations {
                    let operation = try #require(value as? [String: Any])
                    let documented = Set((operation["responses"] as? [String: Any] ?? [:]).keys.compactMap { Int($0) })
                    let verb = method.uppercased()
                    let path = template == "/" ? "/" : concrete(template)
                    let response = try fc.request(verb, path, verb == "GET" ? nil : "{}")
                    #expect(documented.contains(response.status), "\(verb) \(path): \(response.status) \(response.body)")
                    #expect(response.fault?.hasPrefix(invalidPrefix) != true, "\(verb) \(path) is documented but not served")
                    guard response.status == 200,
                        let reference =
                            ((((operation["responses"] as? [String: Any])?["200"] as? [String: Any])?["content"]
                            as? [String: Any])?["application/json"] as? [String: Any])?["schema"] as? [String: Any],
                        let name = (reference["$ref"] as? String)?.split(separator: "/").last,
                        let schema = schemas[String(name)] as? [String: Any]
                    else { continue }
                    let keys = Set(response.json?.keys.map { $0 } ?? [])
                    let properties = Set((schema["properties"] as? [String: Any] ?? [:]).keys)
                    let required = Set(schema["required"] as? [String] ?? [])
                    #expect(required.isSubset(of: keys), "\(verb) \(path) lacks \(required.subtracting(keys))")
                    #expect(keys.isSubset(of: properties), "\(verb) \(path) has undocumented \(keys.subtracting(properties))")
                }
            }
            // The other way round. Like Firecracker, the server routes on the first path
            // segment (and an ID or operation after it) and ignores any further segments,
            // so a served method on a resource must be documented for that resource; the
            // refusals of resources SwiftVisor does not implement are not service.
            func isDocumented(_ method: String, _ resource: String) -> Bool {
                paths.contains { template, operations in
                    operations[method.lowercased()] != nil && template.split(separator: "/").first.map(String.init) == resource
                }
            }
            let resources = Set(paths.keys.compactMap { $0.split(separator: "/").first.map(String.init) }).union([
                "vm", "snapshot", "actions", "version", "drives", "network-interfaces", "machine-config", "boot-source",
                "vsock", "entropy", "logger", "metrics", "serial", "balloon", "mmds", "hotplug", "pmem", "cpu-config",
                "memory", "instance", "unknown",
            ])
            for resource in resources.sorted() {
                for path in ["/\(resource)", "/\(resource)/probe_1"] {
                    for method in ["GET", "PUT", "PATCH", "POST", "DELETE"] {
                        let response = try fc.request(method, path, method == "GET" ? nil : "{}")
                        let fault = response.fault ?? ""
                        let served = !fault.hasPrefix(invalidPrefix) && !fault.hasSuffix("is not implemented by SwiftVisor.")
                        #expect(
                            !served || isDocumented(method, resource),
                            "\(method) \(path) is served (\(response.status) \(response.body)) but not documented")
                    }
                }
            }
            #expect(try fc.request("GET", "/").status == 200, "the server lives on")
        }

        /// `PUT /serial`: the guest's console goes to the file, not to standard output; a
        /// file that does not exist fails `InstanceStart` with the reason, nothing started.
        @Test("PUT /snapshot/create of the paused test kernel, then PUT /snapshot/load in a new process: it finishes KUnit")
        func snapshotCreateAndLoad() throws {
            let kernel = try LinuxKernels.testKernel.get() + "/bzImage"
            let fc = try FirecrackerProcess()
            let state = fc.directory + "/vm.state", memory = fc.directory + "/vm.mem"
            let boot = #"{"kernel_image_path": "\#(kernel)", "boot_args": "console=ttyS0 kunit_shutdown=poweroff"}"#
            let create = #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(memory)", "snapshot_type": "Full"}"#
            let early = try fc.request("PUT", "/snapshot/create", create)
            #expect(early.status == 400 && early.fault == "The requested operation is not supported before starting the microVM.")
            #expect(try fc.request("PUT", "/boot-source", boot).status == 204)
            #expect(try fc.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#).status == 204)
            // A network interface on a TAP the VMM creates (root only), to be moved to
            // another TAP by the load's network_overrides.
            let (tapA, tapB) = ("swvfa\(getpid() % 10_000)", "swvfb\(getpid() % 10_000)")
            if TAPAccess.available {
                let nic = #"{"iface_id": "eth0", "host_dev_name": "\#(tapA)"}"#
                #expect(try fc.request("PUT", "/network-interfaces/eth0", nic).status == 204)
            } else {
                print("snapshot through the API: no network interface (needs root and /dev/net/tun)")
            }
            #expect(try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
            let deadline = Date().addingTimeInterval(600)
            while Date() < deadline, fc.process.isRunning, !fc.output.text.contains("KTAP version 1") { usleep(100_000) }
            let running = try fc.request("PUT", "/snapshot/create", create)
            #expect(
                running.status == 400 && running.fault?.hasPrefix("Create snapshot error: the microVM must be paused") == true)
            #expect(try fc.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
            let created = try fc.request("PUT", "/snapshot/create", create)
            #expect(created.status == 204, "\(created.body)")
            let before = fc.output.text
            fc.process.terminate()
            fc.process.waitUntilExit()

            let restored = try FirecrackerProcess()
            let notAfterConfig = try FirecrackerProcess()
            #expect(try notAfterConfig.request("PUT", "/boot-source", boot).status == 204)
            let refused = try notAfterConfig.request(
                "PUT", "/snapshot/load",
                #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memory)"}}"#)
            #expect(
                refused.fault
                    == "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
            let bad = try restored.request(
                "PUT", "/snapshot/load", #"{"snapshot_path": "\#(memory)", "mem_file_path": "\#(memory)"}"#)
            #expect(bad.status == 400 && bad.fault?.contains("is it a memory file?") == true, "\(bad.body)")
            #expect(bad.headers.contains { $0.lowercased() == "deprecation: true" })
            let memoryBackend = #""mem_backend": {"backend_type": "File", "backend_path": "\#(memory)"}"#
            let unknownInterface = try restored.request(
                "PUT", "/snapshot/load",
                #"{"snapshot_path": "\#(state)", \#(memoryBackend), "network_overrides": [{"iface_id": "eth7", "host_dev_name": "x"}]}"#
            )
            #expect(
                unknownInterface.fault?.hasPrefix("Load snapshot error: network_overrides names the interface `eth7`") == true,
                "\(unknownInterface.body)")
            let overrides =
                TAPAccess.available ? #", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "\#(tapB)"}]"# : ""
            let load = try restored.request(
                "PUT", "/snapshot/load", #"{"snapshot_path": "\#(state)", \#(memoryBackend), "resume_vm": false\#(overrides)}"#)
            #expect(load.status == 204, "\(load.body)")
            #expect(try restored.request("GET", "/").json?["state"] as? String == "Paused")
            let config = try restored.request("GET", "/machine-config").json
            #expect(config?["mem_size_mib"] as? Int == 128 && config?["vcpu_count"] as? Int == 1)
            // The restored VM's configuration is the saved one, with the override applied.
            let vmConfig = try restored.request("GET", "/vm/config").json
            #expect((vmConfig?["boot-source"] as? [String: Any])?["kernel_image_path"] as? String == kernel)
            if TAPAccess.available {
                let interfaces = vmConfig?["network-interfaces"] as? [[String: Any]]
                #expect(interfaces?.count == 1 && interfaces?.first?["iface_id"] as? String == "eth0")
                #expect(interfaces?.first?["host_dev_name"] as? String == tapB, "\(String(describing: interfaces))")
            }
            #expect(try restored.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
            #expect(restored.waitForExit(seconds: 900) == 0, "\(restored.errors.text.suffix(2000))")
            let boot2 = LinuxBoot(
                report: RunReport(outcome: .stopped(.halted)), console: before + restored.output.text, seconds: 0)
            boot2.expectAllKUnitSuitesPassed()
        }

        @Test("PUT /serial sends the test kernel's console to a file instead of standard output")
        func serialOutput() throws {
            let kernel = try LinuxKernels.testKernel.get() + "/bzImage"
            let initrd = try LinuxKernels.guestImages.get() + "/initramfs.cpio.gz"
            let fc = try FirecrackerProcess()
            let file = fc.directory + "/serial.out"
            let boot =
                #"{"kernel_image_path": "\#(kernel)", "initrd_path": "\#(initrd)", "boot_args": "console=ttyS0 kunit.enable=0"}"#
            #expect(try fc.request("PUT", "/boot-source", boot).status == 204)
            #expect(try fc.request("PUT", "/serial", #"{"serial_out_path": "\#(fc.directory)/missing"}"#).status == 204)
            let failed = try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
            #expect(
                failed.fault?.hasPrefix("Start microvm error: cannot write \(fc.directory)/missing") == true, "\(failed.body)")
            #expect(try fc.request("GET", "/").json?["state"] as? String == "Not started")
            #expect(FileManager.default.createFile(atPath: file, contents: Data()))
            #expect(try fc.request("PUT", "/serial", #"{"serial_out_path": "\#(file)"}"#).status == 204)
            #expect(try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
            let deadline = Date().addingTimeInterval(300)
            var text = ""
            while Date() < deadline, fc.process.isRunning {
                text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
                if text.contains("Linux version") { break }
                usleep(100_000)
            }
            #expect(text.contains("Linux version"), "\(text.suffix(1000)) \(fc.errors.text)")
            #expect(!fc.output.text.contains("Linux version"), "the console went to standard output too")
        }

        /// `--boot-timer`: a guest (booted as a vmlinux) writes Firecracker's signal to port
        /// 0x3F0 twice, then resets; the log has one boot-time line, the last metrics line
        /// the same figure. Without the option the port is an ordinary unclaimed one.
        @Test("--boot-timer: the guest's signal at port 0x3F0 logs its boot time once and reaches the metrics")
        func bootTimer() throws {
            for enabled in [true, false] {
                let probe = try FirecrackerProcess()
                let kernel = probe.directory + "/boot_timer.elf"
                let logFile = probe.directory + "/fc.log", metricsFile = probe.directory + "/fc.metrics"
                #expect(FileManager.default.createFile(atPath: kernel, contents: Data(GuestImages.bootTimer)))
                #expect(FileManager.default.createFile(atPath: logFile, contents: nil))
                #expect(FileManager.default.createFile(atPath: metricsFile, contents: nil))
                let fc = try FirecrackerProcess(
                    arguments: ["--log-path", logFile, "--level", "Info", "--metrics-path", metricsFile]
                        + (enabled ? ["--boot-timer"] : []))
                #expect(try fc.request("PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).status == 204)
                #expect(try fc.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).status == 204)
                let start = try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
                #expect(start.status == 204, "\(start.body)")
                #expect(fc.waitForExit(seconds: 120) == 0, "\(fc.errors.text)")
                let log = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
                let lines = log.split(separator: "\n").filter { $0.contains("Guest-boot-time = ") }
                let metrics = (try? String(contentsOfFile: metricsFile, encoding: .utf8)) ?? ""
                let last = metrics.split(separator: "\n").last.map(String.init) ?? ""
                let timer =
                    ((try? JSONSerialization.jsonObject(with: Data(last.utf8))) as? [String: Any])?["boot_timer"]
                    as? [String: Any]
                if enabled {
                    #expect(lines.count == 1, "\(log)")
                    // "Guest-boot-time =  NNNNN us N ms,  NNNNN CPU us N CPU ms"
                    let words = lines.first.map { $0.split(separator: " ") } ?? []
                    let wall = words.firstIndex(of: "=").flatMap { words.indices.contains($0 + 1) ? UInt64(words[$0 + 1]) : nil }
                    #expect(wall != nil && timer?["guest_boot_time_us"] as? UInt64 == wall, "\(log)\n\(last)")
                    #expect((timer?["guest_boot_cpu_us"] as? UInt64) != nil, "\(last)")
                } else {
                    #expect(lines.isEmpty && timer == nil, "\(log)\n\(last)")
                }
            }
        }

        /// The launcher binds before swiftvisor has loaded: a request sent the moment the
        /// socket appears waits in its backlog and is answered; the process is named
        /// `firecracker`; an argument error or a socket path that exists leaves nothing behind.
        @Test(
            "swiftvisor-firecracker: the socket is bound before swiftvisor loads, early requests are answered, errors leave no socket"
        )
        func launcher() throws {
            let fc = try FirecrackerProcess(launcher: true)
            let early = try fc.request("GET", "/")
            #expect(early.status == 200, "\(early.body) \(fc.errors.text)")
            #expect(early.json?["state"] as? String == "Not started")
            let comm = try String(contentsOfFile: "/proc/\(fc.process.processIdentifier)/comm", encoding: .utf8)
            #expect(comm == "firecracker\n")
            fc.process.terminate()
            #expect(fc.waitForExit(seconds: 10) == 143)
            #expect(!FileManager.default.fileExists(atPath: fc.socket), "the socket file is removed at exit")

            let bad = try FirecrackerProcess(arguments: ["--id", "not valid!"], launcher: true)
            #expect(bad.waitForExit(seconds: 10) == 64)
            #expect(bad.errors.text.contains("--id"), "\(bad.errors.text)")
            #expect(!FileManager.default.fileExists(atPath: bad.socket), "an argument error leaves no socket")

            // A path that exists: the launcher cannot bind, and swiftvisor says why.
            let taken = NSTemporaryDirectory() + "swiftvisor-taken-\(getpid()).sock"
            #expect(FileManager.default.createFile(atPath: taken, contents: Data()))
            defer { try? FileManager.default.removeItem(atPath: taken) }
            let process = Process()
            process.executableURL = FirecrackerProcess.launcher
            process.arguments = ["--api-sock", taken]
            let err = Pipe()
            process.standardError = err
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 1)
            let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(message.contains("cannot listen on the API socket"), "\(message)")
            #expect(FileManager.default.fileExists(atPath: taken), "a file that was there is left alone")
        }

        @Test(
            "lifecycle on the test kernel: configure, start, Running, PATCH a drive, pause, Paused, resume, FlushMetrics, Ctrl-Alt-Del, exit 0; the log (a FIFO) and the metrics (a file)"
        )
        func lifecycle() throws {
            let kernel = try LinuxKernels.testKernel.get() + "/bzImage"
            let initrd = try LinuxKernels.guestImages.get() + "/initramfs.cpio.gz"
            // The log goes to a FIFO (read by a thread here), the metrics to a file; both
            // exist before the process starts, as Firecracker requires.
            let outside = NSTemporaryDirectory() + "swiftvisor-fclog-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: outside) }
            let logFIFO = outside + "/log.fifo", metricsFile = outside + "/metrics.json", disk = outside + "/scratch.img"
            // SAFETY: mkfifo reads the path, a NUL-terminated copy valid for the call.
            #expect(unsafe mkfifo(logFIFO, 0o600) == 0)
            _ = FileManager.default.createFile(atPath: metricsFile, contents: nil)
            _ = FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
            let log = ConsoleCapture()
            let logSink = log.sink
            let logDone = DispatchSemaphore(value: 0)
            Thread {
                // Opens once the server has the FIFO open; reads until it closes it at exit.
                if let reader = FileHandle(forReadingAtPath: logFIFO) {
                    while case let data = reader.availableData, !data.isEmpty { data.forEach(logSink) }
                }
                logDone.signal()
            }.start()
            let fc = try FirecrackerProcess(arguments: [
                "--log-path", logFIFO, "--level", "Info", "--show-level", "--metrics-path", metricsFile,
            ])
            let scratch = #"{"drive_id": "scratch", "path_on_host": "\#(disk)", "is_root_device": false, "is_read_only": true}"#
            #expect(try fc.request("PUT", "/drives/scratch", scratch).status == 204)
            #expect(try fc.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#).status == 204)
            // A rate-limited data drive of 16 sectors, swapped for one of 32 after start.
            let small = NSTemporaryDirectory() + "swiftvisor-fc-\(UUID().uuidString).img"
            let large = NSTemporaryDirectory() + "swiftvisor-fc-\(UUID().uuidString).img"
            try Data(count: 16 * 512).write(to: URL(fileURLWithPath: small))
            try Data(count: 32 * 512).write(to: URL(fileURLWithPath: large))
            defer { [small, large].forEach { try? FileManager.default.removeItem(atPath: $0) } }
            let drive = try fc.request(
                "PUT", "/drives/data",
                #"{"drive_id": "data", "path_on_host": "\#(small)", "is_root_device": false, "is_read_only": true, "rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}}"#
            )
            #expect(drive.status == 204, "\(drive.body)")
            #expect(
                try fc.request("PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(large)"}"#).fault
                    == "The requested operation is not supported before starting the microVM.")
            let boot = try fc.request(
                "PUT", "/boot-source",
                #"{"kernel_image_path": "\#(kernel)", "initrd_path": "\#(initrd)", "boot_args": "console=ttyS0 reboot=k panic=1 kunit.enable=0"}"#
            )
            #expect(boot.status == 204, "\(boot.body)")
            #expect(try fc.request("PUT", "/entropy", "{}").status == 204)
            let start = try fc.request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
            #expect(start.status == 204, "\(start.body) \(fc.errors.text)")
            #expect(try fc.request("GET", "/").json?["state"] as? String == "Running")
            // The kernel runs its spinning init, and its keyboard driver has bound (it may bind
            // after init starts; a Ctrl-Alt-Del before that is lost, in Firecracker too).
            let keyboard = "input: AT Translated Set 2 keyboard"
            let deadline = Date().addingTimeInterval(900)
            while !(fc.output.text.contains("Run /init as init process") && fc.output.text.contains(keyboard)),
                Date() < deadline, fc.process.isRunning
            {
                usleep(100_000)
            }
            #expect(fc.output.text.contains(keyboard), "\(fc.output.text.suffix(2000))")
            // PATCH after start: the new file's capacity reaches the guest through a
            // configuration-change interrupt; the limiter changes; /vm/config shows both.
            let patch = try fc.request(
                "PATCH", "/drives/data",
                #"{"drive_id": "data", "path_on_host": "\#(large)", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}"#
            )
            #expect(patch.status == 204, "\(patch.body) \(fc.errors.text)")
            // The second drive added, after `scratch`: /dev/vdb.
            let resized = "[vdb] new size: 32 512-byte logical blocks"
            let resizeDeadline = Date().addingTimeInterval(60)
            while !fc.output.text.contains(resized), Date() < resizeDeadline { usleep(100_000) }
            #expect(fc.output.text.contains(resized), "\(fc.output.text.suffix(2000))")
            let config = try fc.request("GET", "/vm/config")
            #expect(config.body.contains(large), "\(config.body)")
            #expect(
                try fc.request("PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/nonexistent"}"#).fault?
                    .hasPrefix("Drive config error: Unable to patch the block device: ") == true)
            #expect(try fc.request("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
            #expect(try fc.request("GET", "/").json?["state"] as? String == "Paused")
            let pausedAt = fc.output.text.utf8.count
            #expect(try fc.request("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
            #expect(try fc.request("GET", "/").json?["state"] as? String == "Running")
            #expect(
                try fc.request("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).fault
                    == "The requested operation is not supported after starting the microVM.")
            #expect(try fc.request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)
            #expect(try fc.request("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#).status == 204)
            let status = fc.waitForExit(seconds: 300)
            #expect(status == 0, "\(fc.errors.text)\n\(fc.output.text.suffix(1500))")
            #expect(fc.output.text.utf8.count >= pausedAt)
            #expect(fc.output.text.contains("reboot: Restarting system"), "\(fc.output.text.suffix(1500))")
            #expect(!FileManager.default.fileExists(atPath: fc.socket), "the socket file is removed at exit")

            // The log: the first line, the requests, the exit line, with their levels.
            #expect(logDone.wait(timeout: .now() + 10) == .success)
            let logText = log.text
            let logLines = logText.split(separator: "\n")
            #expect(logLines.first?.hasSuffix("[anonymous-instance:main:INFO] Running Firecracker v1.12.0") == true, "\(logText)")
            #expect(
                logText.contains(
                    #"[anonymous-instance:fc_api:INFO] The API server received a Put request on "/actions" with body "{\"action_type\": \"FlushMetrics\"}"."#
                ), "\(logText)")
            #expect(logText.contains("The request was executed successfully. Status code: 204 No Content."))
            #expect(logText.contains("[anonymous-instance:fc_vmm:INFO] The microVM is paused."))
            #expect(
                logLines.last?.hasSuffix("[anonymous-instance:main:INFO] Firecracker exiting successfully. exit_code=0") == true)
            // Local time, nine digits of nanoseconds.
            #expect(logLines.first?.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[.*/) != nil)

            // The metrics: a line at start, one for FlushMetrics, one at exit, each a JSON object.
            let metrics = ((try? String(contentsOfFile: metricsFile, encoding: .utf8)) ?? "").split(separator: "\n")
            #expect(metrics.count >= 3, "\(metrics)")
            let objects = metrics.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            #expect(objects.count == metrics.count)
            // Counters are deltas, so what the guest did while booting is the sum of the lines
            // after the start line and before the exit line: the flush line, and any
            // periodic line (every 60 s) that a slow boot wrote before it.
            if objects.count >= 3 {
                let during = objects.dropFirst().dropLast()
                func total(_ group: String, _ counter: String) -> Int {
                    during.reduce(0) { $0 + (($1[group] as? [String: Int])?[counter] ?? 0) }
                }
                let shown = metrics.dropFirst().dropLast().joined(separator: "\n")
                #expect(total("vcpu", "exit_io_out") > 0, "\(shown)")
                #expect(total("vcpu", "exit_mmio_read") + total("vcpu", "exit_mmio_write") > 0, "\(shown)")
                #expect(total("block_scratch", "request_count") > 0, "\(shown)")
                #expect(total("block_scratch", "queue_event_count") > 0, "\(shown)")
                // The aggregate `block` is the sum over both drives.
                #expect(
                    total("block", "request_count")
                        == total("block_scratch", "request_count") + total("block_data", "request_count"), "\(shown)")
                #expect(total("put_api_requests", "actions_count") == 1, "InstanceStart, counted after the start line")
                #expect(during.allSatisfy { $0["entropy"] != nil })
            }
        }
    }
}
