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
}

/// Builds and starts a VM from what clients configured.
package protocol VMLauncher: Sendable {
    /// Throws with a message a client can act on when the VM cannot start; nothing is left
    /// running or open then.
    func launch(_ resources: VMResources) async throws(APIError) -> any RunningVM
    /// Why `path` cannot be read, or nil when it can (checked when a client names a file).
    func unreadable(_ path: String) -> String?
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

    package init(
        instanceID: String, version: String, launcher: any VMLauncher, onExit: @escaping @Sendable (Int32) -> Void
    ) {
        self.instanceID = instanceID
        self.version = version
        self.launcher = launcher
        self.rules = RequestRules(instanceID: instanceID, version: version, unreadable: { launcher.unreadable($0) })
        self.onExit = onExit
    }

    package var state: InstanceState { phase.state }

    /// Replaces the configuration (from a configuration file) before the VM starts.
    package func configure(_ resources: VMResources) throws(APIError) {
        try phase.preBoot()
        self.resources = resources
    }

    /// Serves one request. `path` is the request target as sent (Firecracker ignores a
    /// query string, so a `?` stays part of the path).
    package func handle(method: String, path: String, body: [UInt8]) async -> APIResponse {
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
        if deprecated { response.headers.append(("Deprecation", "true")) }
        return response
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
            let vm = try await launcher.launch(resources)
            self.vm = vm
            let onExit = self.onExit
            Task.detached {
                let status = await vm.wait()
                onExit(status)
            }
        case .sendCtrlAltDel:
            guard let vm, vm.sendCtrlAltDel() else {
                throw .badRequest("Internal VMM error: Failed to send CTRL+ALT+DEL: i8042 internal buffer full.")
            }
        case .flushMetrics:
            // Firecracker answers 204 even when no metrics file was configured; with no
            // metrics support yet there is nothing to write.
            break
        case .pause:
            await vm?.pause()
            paused = true
        case .resume:
            vm?.resume()
            paused = false
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
}
