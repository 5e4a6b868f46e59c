import Foundation
import Logging
import Synchronization
import Testing
import VisorHost

@testable import VisorAPI

/// A file in a fresh temporary directory: created empty (log and metrics targets must exist).
func temporaryFile(_ name: String, create: Bool = true) -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvisor-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let path = directory.appendingPathComponent(name).path
    if create { _ = FileManager.default.createFile(atPath: path, contents: nil) }
    return path
}

func lines(_ path: String) -> [String] {
    ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
}

let fixedTime = HostLocalTime(year: 2024, month: 1, day: 2, hour: 3, minute: 4, second: 5, nanosecond: 6789)

@Suite("Firecracker API: logs and metrics (no KVM)")
struct LogMetricsTests {
    @Test func lineFormatWithAndWithoutLevelAndOrigin() {
        #expect(
            LogSink.format(
                time: fixedTime, instanceID: "anonymous-instance", thread: "main", level: nil, origin: nil,
                message: "Running Firecracker v1.12.0")
                == "2024-01-02T03:04:05.000006789 [anonymous-instance:main] Running Firecracker v1.12.0\n")
        #expect(
            LogSink.format(
                time: fixedTime, instanceID: "vm", thread: "fc_vcpu 0", level: .warn, origin: ("VisorAPI/Controller.swift", 42),
                message: "m") == "2024-01-02T03:04:05.000006789 [vm:fc_vcpu 0:WARN:VisorAPI/Controller.swift:42] m\n")
        #expect(
            LogSink.format(time: fixedTime, instanceID: "vm", thread: "main", level: nil, origin: nil, message: "a\nb\r\nc")
                == "2024-01-02T03:04:05.000006789 [vm:main] a\\nb\\nc\n")
    }

    @Test func levelsFilterAndTheConfigurationChangesEveryLogger() throws {
        let path = temporaryFile("log")
        let sink = LogSink(instanceID: "vm", clock: { fixedTime })
        try sink.configure(LoggerConfig(logPath: path, level: .warn, showLevel: true))
        let log = sink.logger(thread: "fc_api")
        log.info("hidden")
        log.warning("shown")
        log.error("also shown")
        log.critical("critical is an error")
        try sink.configure(LoggerConfig(level: .off))
        log.error("off hides everything")
        try sink.configure(LoggerConfig(level: .trace, showLevel: false))
        log.debug("debug now")
        #expect(
            lines(path) == [
                "2024-01-02T03:04:05.000006789 [vm:fc_api:WARN] shown",
                "2024-01-02T03:04:05.000006789 [vm:fc_api:ERROR] also shown",
                "2024-01-02T03:04:05.000006789 [vm:fc_api:ERROR] critical is an error",
                "2024-01-02T03:04:05.000006789 [vm:fc_api] debug now",
            ])
        #expect(sink.missedLines == 0)
    }

    @Test func moduleFiltersBySourceModule() throws {
        let path = temporaryFile("log")
        let sink = LogSink(instanceID: "vm", clock: { fixedTime })
        try sink.configure(LoggerConfig(logPath: path, module: "SwiftVisor"))
        sink.logger(thread: "main").info("from the tests module")
        try sink.configure(LoggerConfig(module: "VisorAPITests"))
        sink.logger(thread: "main").info("kept")
        #expect(lines(path) == ["2024-01-02T03:04:05.000006789 [vm:main] kept"])
    }

    @Test func aMissingTargetIsRefusedAndChangesNothing() throws {
        let sink = LogSink(instanceID: "vm")
        #expect(throws: APIError.self) {
            try sink.configure(LoggerConfig(logPath: temporaryFile("absent", create: false), level: .off))
        }
        #expect(sink.level == .info)
    }

    @Test func aFIFOWithNoReaderOpensAndItsWritesAreCounted() throws {
        let path = temporaryFile("fifo", create: false)
        // SAFETY: mkfifo reads the path, a NUL-terminated copy valid for the call.
        #expect(unsafe mkfifo(path, 0o600) == 0)
        let sink = LogSink(instanceID: "vm", clock: { fixedTime })
        try sink.configure(LoggerConfig(logPath: path))
        // No reader: the FIFO fills (64 KiB) and later lines are lost and counted, never waited for.
        let log = sink.logger(thread: "main")
        for _ in 0..<2000 { log.info("\(String(repeating: "x", count: 100))") }
        #expect(sink.missedLines > 0)
    }

    @Test func loggerRequestRules() async throws {
        let path = temporaryFile("log")
        let controller = makeController()
        #expect(await controller.send("PUT", "/logger", #"{"log_path": "\#(path)", "level": "warning"}"#).status == 204)
        #expect(controller.logs.level == .warn)
        // May be sent again before start.
        #expect(await controller.send("PUT", "/logger", #"{"level": "DEBUG", "show_level": true}"#).status == 204)
        #expect(controller.logs.level == .debug)
        #expect(
            await controller.send("PUT", "/logger", #"{"level": "loud"}"#).faultMessage
                == "An error occurred when deserializing the json body of a request: Invalid LevelFilter.")
        #expect(
            await controller.send("PUT", "/logger", #"{"log_path": "/nonexistent/x"}"#).faultMessage?.hasPrefix(
                "Logger error: Failed to open target file: No such file or directory") == true)
        #expect(
            await controller.send("PUT", "/logger", #"{"colour": true}"#).faultMessage?.contains("unknown field `colour`")
                == true)
        #expect(controller.logs.level == .debug)
        // The requests after the change are in the log, with their level shown.
        let logged = lines(path).joined(separator: "\n")
        #expect(
            logged.contains(
                #"[test-vm:fc_api:INFO] The API server received a Put request on "/logger" with body "{\"level\": \"loud\"}"."#
            ))
        #expect(logged.contains("[test-vm:fc_api:ERROR] Received Error. Status code: 400 Bad Request. Message: Logger error"))
        // GET /vm/config shows logger and metrics as null, as Firecracker does.
        #expect(json(await controller.send("GET", "/vm/config"))?["logger"] == .null)
        _ = await controller.send("PUT", "/boot-source", bootSource)
        _ = await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(
            await controller.send("PUT", "/logger", #"{"level": "Info"}"#).faultMessage
                == "The requested operation is not supported after starting the microVM.")
    }

    @Test func metricsOnceAndLinesAtStartAndFlush() async throws {
        let path = temporaryFile("metrics")
        let controller = makeController()
        #expect(
            await controller.send("PUT", "/metrics", #"{"metrics_path": "/nonexistent/m"}"#).faultMessage?.hasPrefix(
                "Metrics error: No such file or directory") == true)
        #expect(
            await controller.send("PUT", "/metrics", #"{}"#).faultMessage
                == "An error occurred when deserializing the json body of a request: missing field `metrics_path`.")
        #expect(await controller.send("PUT", "/metrics", #"{"metrics_path": "\#(path)"}"#).status == 204)
        #expect(
            await controller.send("PUT", "/metrics", #"{"metrics_path": "\#(path)"}"#).faultMessage
                == "Metrics error: Reinitialization of metrics not allowed.")
        #expect(lines(path).isEmpty)
        _ = await controller.send(
            "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#)
        _ = await controller.send("PUT", "/boot-source", bootSource)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)
        let written = lines(path)
        #expect(written.count == 2)
        let first = try #require(written.first.flatMap { try? JSON.parse(Array($0.utf8)) })
        // Firecracker's key order, and only what SwiftVisor counts.
        let keys = [
            "utc_timestamp_ms", "block_rootfs", "block", "deprecated_api", "get_api_requests", "logger", "net",
            "patch_api_requests", "put_api_requests", "vcpu",
        ]
        let positions = keys.compactMap { written[0].range(of: "\"\($0)\":")?.lowerBound }
        #expect(positions.count == keys.count && positions == positions.sorted(), "\(written[0])")
        guard case .object(let members) = first else { Issue.record("not an object"); return }
        #expect(Set(members.map(\.key)) == Set(keys))
        // Counters are deltas: the first line (at start) has the metrics PUTs (three of
        // four refused) and what the VM counted so far; the second only what came after
        // it (InstanceStart, counted once answered) and nothing new from the VM.
        #expect(first["put_api_requests"]?["metrics_count"] == .integer(4))
        #expect(first["put_api_requests"]?["metrics_fails"] == .integer(3))
        #expect(first["put_api_requests"]?["actions_count"] == .integer(0))
        #expect(first["block_rootfs"]?["request_count"] == .integer(5))
        #expect(first["block"]?["request_count"] == .integer(5))
        #expect(first["vcpu"]?["exit_io_in"] == .integer(7))
        let second = try #require(written.last.flatMap { try? JSON.parse(Array($0.utf8)) })
        #expect(second["put_api_requests"]?["metrics_count"] == .integer(0))
        #expect(second["put_api_requests"]?["actions_count"] == .integer(1))
        #expect(second["block_rootfs"]?["request_count"] == .integer(0))
        #expect(second["vcpu"]?["exit_io_in"] == .integer(0))
    }

    @Test func metricsArePeriodicWhileTheVMRunsAndWrittenAtItsEnd() async throws {
        let path = temporaryFile("metrics")
        let launcher = FakeLauncher()
        let exits = Exits()
        let logs = LogSink(instanceID: "vm")
        try logs.configure(LoggerConfig(level: .off))
        let controller = VMMController(
            instanceID: "vm", version: "1.12.0", launcher: launcher, logs: logs, metricsPeriod: .milliseconds(20),
            onExit: { status in exits.statuses.withLock { $0.append(status) } })
        #expect(await controller.send("PUT", "/metrics", #"{"metrics_path": "\#(path)"}"#).status == 204)
        _ = await controller.send("PUT", "/boot-source", bootSource)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        var waited = 0
        while lines(path).count < 3, waited < 500 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        #expect(lines(path).count >= 3)
        launcher.vm.end(0)
        while exits.statuses.withLock({ $0.isEmpty }), waited < 1000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        #expect(exits.statuses.withLock { $0 } == [0])
        // The line at the end comes before onExit, and the periodic lines stop with the VM.
        let atEnd = lines(path).count
        try await Task.sleep(for: .milliseconds(100))
        #expect(lines(path).count == atEnd)
    }

    @Test func metricsLineDeltasAndShape() {
        var previous: [String: UInt64] = [:]
        let groups = [MetricGroup("vcpu", [("exit_io_in", 10), ("exit_io_out", 3)])]
        let first = MetricsSink.line(groups, timestampMilliseconds: 1000, previous: &previous)
        #expect(
            String(decoding: first, as: UTF8.self) == #"{"utc_timestamp_ms":1000,"vcpu":{"exit_io_in":10,"exit_io_out":3}}"#
                + "\n")
        let later = [MetricGroup("vcpu", [("exit_io_in", 25), ("exit_io_out", 3)])]
        let second = MetricsSink.line(later, timestampMilliseconds: 2000, previous: &previous)
        #expect(
            String(decoding: second, as: UTF8.self) == #"{"utc_timestamp_ms":2000,"vcpu":{"exit_io_in":15,"exit_io_out":0}}"#
                + "\n")
    }

    @Test("a store metric (the boot timer) is written as it is on every line, not as a change")
    func absoluteMetricsRepeat() {
        var previous: [String: UInt64] = [:]
        let groups = [
            MetricGroup("vcpu", [("exit_io_in", 10)]),
            MetricGroup("boot_timer", [("guest_boot_time_us", 4506), ("guest_boot_cpu_us", 2322)], absolute: true),
        ]
        for timestamp: UInt64 in [1000, 2000] {
            let line = String(
                decoding: MetricsSink.line(groups, timestampMilliseconds: timestamp, previous: &previous), as: UTF8.self)
            let io = timestamp == 1000 ? 10 : 0
            #expect(
                line
                    == #"{"utc_timestamp_ms":\#(timestamp),"vcpu":{"exit_io_in":\#(io)},"boot_timer":{"guest_boot_time_us":4506,"guest_boot_cpu_us":2322}}"#
                    + "\n")
        }
    }

    @Test func configFileLoggerAndMetricsAreApplied() async throws {
        let log = temporaryFile("log")
        let metrics = temporaryFile("metrics")
        let file = #"""
            {"boot-source": {"kernel_image_path": "/k"}, "drives": [],
             "logger": {"log_path": "\#(log)", "level": "Error"}, "metrics": {"metrics_path": "\#(metrics)"}}
            """#
        let resources = try VMResources(configFile: JSON.parse(Array(file.utf8)))
        #expect(resources.logger?.level == .error)
        let controller = makeController()
        try await controller.configure(resources)
        #expect(controller.logs.level == .error)
        #expect(controller.metrics.isConfigured)
        #expect(
            await controller.send("PUT", "/metrics", #"{"metrics_path": "\#(metrics)"}"#).faultMessage
                == "Metrics error: Reinitialization of metrics not allowed.")
    }

    @Test func requestDescriptionsQuoteLikeRust() {
        #expect(VMMController.describe(method: "GET", path: "/", body: []) == #"Get request on "/""#)
        #expect(
            VMMController.describe(method: "PUT", path: "/actions", body: Array("{\"a\":\n1}".utf8))
                == #"Put request on "/actions" with body "{\"a\":\n1}""#)
    }
}
