import Logging
import VisorHost

/// A refused request: Firecracker answers every one with 400 and `{"fault_message": ...}`.
package enum APIError: Error, Equatable, CustomStringConvertible {
    case badRequest(String)

    package var description: String {
        switch self {
        case .badRequest(let message): message
        }
    }
}

/// One answer: the status, JSON body bytes (empty for 204) and extra headers.
package struct APIResponse: Sendable, Equatable {
    package var status: Int
    package var body: [UInt8]
    package var headers: [(String, String)]

    package static func == (a: APIResponse, b: APIResponse) -> Bool {
        a.status == b.status && a.body == b.body && a.headers.elementsEqual(b.headers, by: { $0 == $1 })
    }

    package static let noContent = APIResponse(status: 204, body: [], headers: [])

    package static func ok(_ value: JSONValue) -> APIResponse {
        APIResponse(status: 200, body: value.text, headers: [])
    }

    package static func fault(_ message: String) -> APIResponse {
        APIResponse(status: 400, body: JSONValue.members(["fault_message": .string(message)]).text, headers: [])
    }

    /// The `fault_message` of a 400, for tests and logs.
    package var faultMessage: String? {
        guard status == 400, case .string(let message)? = (try? JSON.parse(body))?["fault_message"] else { return nil }
        return message
    }
}

/// `GET /`'s `state`.
package enum InstanceState: String, Sendable {
    case notStarted = "Not started"
    case running = "Running"
    case paused = "Paused"
}

/// A VM the controller started.
package protocol RunningVM: Sendable {
    func pause() async
    func resume()
    /// Presses Ctrl-Alt-Del on the i8042 keyboard; false when its buffer has no room.
    func sendCtrlAltDel() -> Bool
    /// Returns when the VM has ended, with the process's exit status.
    func wait() async -> Int32
    /// Swaps the backing file of virtio device `device` (a block device) for `path` and/or
    /// changes its rate limiter (given buckets replace the old ones; absent ones stay).
    /// Throws with the reason, Firecracker's `Drive config error: ...` message.
    func updateDrive(device: Int, path: String?, rateLimiter: RateLimiterConfig?) throws(APIError)
    /// Changes the receive and transmit rate limiters of virtio device `device` (a network
    /// device), as `updateDrive` does a disk's.
    func updateInterface(device: Int, rx: RateLimiterConfig?, tx: RateLimiterConfig?) throws(APIError)
    /// `wait()`, with why the VM ended when known.
    func waitForEnd() async -> (status: Int32, reason: String?)
    /// What the VM counted so far (read while it runs).
    func counters() -> VMCounters
    /// Saves the paused VM to a state file and a memory file (all of it, or with `diff`
    /// only the pages written since the last snapshot). Throws Firecracker's
    /// `Create snapshot error: ...`.
    func snapshot(statePath: String, memoryPath: String, diff: Bool) throws(APIError)
}

extension RunningVM {
    package func waitForEnd() async -> (status: Int32, reason: String?) { (await wait(), nil) }
    package func counters() -> VMCounters { VMCounters() }
    package func snapshot(statePath: String, memoryPath: String, diff: Bool) throws(APIError) {
        throw .badRequest("Create snapshot error: this VM cannot be snapshotted.")
    }
}

/// A VM built from a snapshot, with what the snapshot says of its machine.
package struct RestoredVM: Sendable {
    package var vm: any RunningVM
    package var vcpuCount: Int
    package var memoryMiB: UInt64
    package var trackDirtyPages: Bool
    /// The configuration the snapshot kept (drives, interfaces with their IDs, vsock,
    /// entropy, boot source), after the load's overrides; nil when it kept none.
    package var savedResources: VMResources?

    package init(
        vm: any RunningVM, vcpuCount: Int, memoryMiB: UInt64, trackDirtyPages: Bool, savedResources: VMResources? = nil
    ) {
        self.vm = vm
        self.vcpuCount = vcpuCount
        self.memoryMiB = memoryMiB
        self.trackDirtyPages = trackDirtyPages
        self.savedResources = savedResources
    }
}

/// Builds and starts a VM from what clients configured.
package protocol VMLauncher: Sendable {
    /// Throws with a message a client can act on when the VM cannot start; nothing is left
    /// running or open then.
    func launch(_ resources: VMResources) async throws(APIError) -> any RunningVM
    /// Why `path` cannot be read, or nil when it can (checked when a client names a file).
    func unreadable(_ path: String) -> String?
    /// Builds and starts (paused unless `resume_vm`) the VM a snapshot describes. Throws
    /// Firecracker's `Load snapshot error: ...`; nothing is left running or open then.
    func restore(_ load: SnapshotLoadConfig, resources: VMResources) async throws(APIError) -> RestoredVM
}

extension VMLauncher {
    package func restore(_ load: SnapshotLoadConfig, resources: VMResources) async throws(APIError) -> RestoredVM {
        throw .badRequest("Load snapshot error: this launcher cannot restore snapshots.")
    }
}

/// Firecracker's request rules over one VM: what may be configured before `InstanceStart`,
/// what may be done after it, and the state `GET /` reports. Requests are served one at a
/// time per connection and may interleave across connections; the actor keeps the state
/// consistent.
package actor VMMController {
    package let instanceID: String
    package let version: String
    private let launcher: any VMLauncher
    private let rules: RequestRules
    private let onExit: @Sendable (Int32) -> Void
    package private(set) var resources = VMResources()
    private var vm: (any RunningVM)?
    private var starting = false
    private var paused = false
    /// The log and the metrics, shared with the entry point (which logs start and exit).
    package nonisolated let logs: LogSink
    package nonisolated let metrics: MetricsSink
    private let apiLog: Logger
    private let vmmLog: Logger
    private var requestCounts = APIRequestCounts()
    private var periodicMetrics: Task<Void, Never>?
    /// Whether the configuration came from a file (for the start line).
    private var startedFromFile = false
    /// How often metrics are written while the VM runs (Firecracker: 60 s).
    private let metricsPeriod: Duration
    /// Wall-clock milliseconds for a metrics line.
    private let clock: @Sendable () -> UInt64

    package init(
        instanceID: String, version: String, launcher: any VMLauncher, logs: LogSink? = nil,
        metrics: MetricsSink = MetricsSink(), metricsPeriod: Duration = .seconds(60),
        clock: @escaping @Sendable () -> UInt64 = {
            let (seconds, nanoseconds) = HostIO.realtime()
            return UInt64(max(seconds, 0)) &* 1000 &+ UInt64(nanoseconds / 1_000_000)
        },
        onExit: @escaping @Sendable (Int32) -> Void
    ) {
        self.instanceID = instanceID
        self.version = version
        self.launcher = launcher
        self.rules = RequestRules(instanceID: instanceID, version: version, unreadable: { launcher.unreadable($0) })
        self.onExit = onExit
        let logs = logs ?? LogSink(instanceID: instanceID)
        self.logs = logs
        self.metrics = metrics
        self.metricsPeriod = metricsPeriod
        self.clock = clock
        apiLog = logs.logger(thread: "fc_api")
        vmmLog = logs.logger(thread: "fc_vmm")
    }

    deinit { periodicMetrics?.cancel() }

    package var state: InstanceState { phase.state }

    /// Replaces the configuration (from a configuration file) before the VM starts; its
    /// `logger` and `metrics` are applied first, as Firecracker does.
    package func configure(_ resources: VMResources) throws(APIError) {
        try phase.preBoot()
        if let logger = resources.logger { try logs.configure(logger) }
        if let metrics = resources.metrics { try self.metrics.configure(metrics) }
        self.resources = resources
        startedFromFile = true
    }

    /// Writes a metrics line now (when a destination is set); returns it.
    @discardableResult
    package func flushMetrics() -> [UInt8]? {
        let groups = MetricsSink.groups(
            vm: vm?.counters(), api: requestCounts, missedLogLines: logs.missedLines,
            missedMetricsLines: metrics.missedLines, resources: resources)
        return metrics.flush(groups, timestampMilliseconds: clock())
    }

    /// Serves one request. `path` is the request target as sent (Firecracker ignores a
    /// query string, so a `?` stays part of the path).
    package func handle(method: String, path: String, body: [UInt8]) async -> APIResponse {
        apiLog.info("The API server received a \(Self.describe(method: method, path: path, body: body)).")
        var deprecated = false
        var response: APIResponse
        do {
            switch try rules.apply(
                method: method, path: path, body: body, to: &resources, phase: phase, deprecated: &deprecated)
            {
            case .response(let answer): response = answer
            case .runtime(let request):
                try await perform(request)
                response = .noContent
            }
        } catch {
            response = .fault(error.description)
        }
        // Firecracker flags a deprecated field whatever the answer.
        if deprecated {
            response.headers.append(("Deprecation", "true"))
            requestCounts.deprecatedCalls &+= 1
        }
        requestCounts.record(method: method, resource: Self.resource(path), failed: response.status >= 400)
        if let message = response.faultMessage {
            apiLog.error("Received Error. Status code: 400 Bad Request. Message: \(message)")
        } else {
            apiLog.info(
                "The request was executed successfully. Status code: \(response.status == 200 ? "200 OK" : "204 No Content").")
        }
        return response
    }

    /// The first path segment, which picks the resource.
    static func resource(_ path: String) -> String {
        var trimmed = Substring(path)
        if trimmed.hasPrefix("/") { trimmed = trimmed.dropFirst() }
        return String(trimmed.prefix(while: { $0 != "/" }))
    }

    /// Firecracker's description of a request for its log: `Put request on "/drives/rootfs"
    /// with body "{...}"`, strings quoted and escaped as Rust's `Debug` does.
    package static func describe(method: String, path: String, body: [UInt8]) -> String {
        let name = method.prefix(1).uppercased() + method.dropFirst().lowercased()
        var text = "\(name) request on \(debugQuoted(path))"
        if !body.isEmpty {
            // MMDS contents may be secrets: Firecracker leaves them out too.
            if resource(path) == "mmds" { return text }
            text += " with body " + debugQuoted(String(validating: body, as: UTF8.self) ?? "inconsistent body")
        }
        return text
    }

    static func debugQuoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private var phase: Phase {
        if vm != nil { return .started(paused: paused) }
        return starting ? .starting : .notStarted
    }

    private func perform(_ request: RuntimeRequest) async throws(APIError) {
        switch request {
        case .instanceStart:
            guard resources.bootSource != nil else {
                throw .badRequest("Start microvm error: Cannot start microvm without kernel configuration.")
            }
            starting = true
            defer { starting = false }
            let vm: any RunningVM
            do throws(APIError) { vm = try await launcher.launch(resources) } catch {
                vmmLog.error("\(error.description)")
                throw error
            }
            self.vm = vm
            vmmLog.info(
                "Successfully started microvm that was configured from \(startedFromFile ? "one single json" : "API requests").")
            startWatching(vm)
        case .createSnapshot(let config):
            guard let vm else { throw .badRequest(Phase.notBeforeStart) }
            try vm.snapshot(statePath: config.snapshotPath, memoryPath: config.memFilePath, diff: config.snapshotType == "Diff")
            vmmLog.info("The microVM's \(config.snapshotType.lowercased()) snapshot was written to \(config.snapshotPath).")
        case .loadSnapshot(let config):
            starting = true
            defer { starting = false }
            let restored: RestoredVM
            do throws(APIError) { restored = try await launcher.restore(config, resources: resources) } catch {
                vmmLog.error("\(error.description)")
                throw error
            }
            if let saved = restored.savedResources { resources.adoptMachine(of: saved) }
            resources.machine.vcpuCount = restored.vcpuCount
            resources.machine.memSizeMiB = restored.memoryMiB
            resources.machine.trackDirtyPages = restored.trackDirtyPages
            vm = restored.vm
            paused = !config.resumeVM
            vmmLog.info("Successfully loaded a microVM from the snapshot \(config.snapshotPath).")
            startWatching(restored.vm)
        case .configureLogger(let config):
            try logs.configure(config)
        case .configureMetrics(let config):
            try metrics.configure(config)
        case .sendCtrlAltDel:
            guard let vm, vm.sendCtrlAltDel() else {
                throw .badRequest("Internal VMM error: Failed to send CTRL+ALT+DEL: i8042 internal buffer full.")
            }
        case .flushMetrics:
            // Firecracker answers 204 even when no metrics file was configured.
            flushMetrics()
        case .pause:
            await vm?.pause()
            paused = true
            vmmLog.info("The microVM is paused.")
        case .resume:
            vm?.resume()
            paused = false
            vmmLog.info("The microVM is resumed.")
        case .updateDrive(let index, let update):
            try vm?.updateDrive(device: index, path: update.pathOnHost, rateLimiter: update.rateLimiter)
            if let path = update.pathOnHost { resources.drives[index].pathOnHost = path }
            if let limiter = update.rateLimiter {
                resources.drives[index].rateLimiter = resources.drives[index].rateLimiter?.patched(with: limiter) ?? limiter
            }
        case .updateInterface(let index, let update):
            // Network devices follow the drives (`MachineLauncher.configuration`).
            try vm?.updateInterface(
                device: resources.drives.count + index, rx: update.rxRateLimiter, tx: update.txRateLimiter)
            if let limiter = update.rxRateLimiter {
                let old = resources.networkInterfaces[index].rxRateLimiter
                resources.networkInterfaces[index].rxRateLimiter = old?.patched(with: limiter) ?? limiter
            }
            if let limiter = update.txRateLimiter {
                let old = resources.networkInterfaces[index].txRateLimiter
                resources.networkInterfaces[index].txRateLimiter = old?.patched(with: limiter) ?? limiter
            }
        }
    }

    /// Writes metrics now and then periodically, and ends the process when `vm` ends.
    private func startWatching(_ vm: any RunningVM) {
        flushMetrics()
        let period = metricsPeriod
        periodicMetrics = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: period)
                guard !Task.isCancelled, let self else { return }
                await self.flushMetrics()
            }
        }
        Task.detached { [self] in
            let (status, reason) = await vm.waitForEnd()
            await self.vmEnded(status: status, reason: reason)
        }
    }

    /// The VM ended: its reason is logged, a last metrics line written, then `onExit`.
    private func vmEnded(status: Int32, reason: String?) {
        periodicMetrics?.cancel()
        periodicMetrics = nil
        let text = "Vmm is stopping" + (reason.map { " (\($0))" } ?? "") + ", exit status \(status)."
        if status == 0 { vmmLog.info("\(text)") } else { vmmLog.error("\(text)") }
        flushMetrics()
        onExit(status)
    }
}
