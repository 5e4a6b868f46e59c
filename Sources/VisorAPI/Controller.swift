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
        self.onExit = onExit
    }

    package var state: InstanceState {
        vm == nil ? .notStarted : (paused ? .paused : .running)
    }

    private var started: Bool { vm != nil || starting }

    static let notAfterStart = "The requested operation is not supported after starting the microVM."
    static let notBeforeStart = "The requested operation is not supported before starting the microVM."

    /// Replaces the configuration (from a configuration file) before the VM starts.
    package func configure(_ resources: VMResources) throws(APIError) {
        guard !started else { throw .badRequest(Self.notAfterStart) }
        self.resources = resources
    }

    /// Serves one request. `path` is the request target as sent (Firecracker ignores a
    /// query string, so a `?` stays part of the path).
    package func handle(method: String, path: String, body: [UInt8]) async -> APIResponse {
        var deprecated = false
        var response: APIResponse
        do {
            response = try await route(method: method, path: path, body: body, deprecated: &deprecated)
        } catch {
            response = .fault(error.description)
        }
        // Firecracker flags a deprecated field whatever the answer.
        if deprecated { response.headers.append(("Deprecation", "true")) }
        return response
    }

    private func route(method: String, path: String, body: [UInt8], deprecated: inout Bool) async throws(APIError)
        -> APIResponse
    {
        // Firecracker's routing: the first path segment picks the resource, the second is an
        // ID or an operation, later ones are ignored.
        var trimmed = Substring(path)
        if trimmed.hasPrefix("/") { trimmed = trimmed.dropFirst() }
        let segments = trimmed.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let resource = segments.first ?? ""
        let second = segments.count > 1 && !segments[1].isEmpty ? segments[1] : nil
        let hasBody = !body.isEmpty
        let invalid = APIError.badRequest("Invalid request method and/or path: \(method) \(resource).")

        switch method {
        case "GET":
            guard !hasBody else { throw .badRequest("GET request cannot have a body.") }
            switch (resource, second) {
            case ("", _):
                return .ok(
                    .members([
                        "id": .string(instanceID), "state": .string(state.rawValue), "vmm_version": .string(version),
                        "app_name": .string("Firecracker"),
                    ]))
            case ("version", _): return .ok(.members(["firecracker_version": .string(version)]))
            case ("machine-config", _): return .ok(resources.machine.json)
            case ("vm", "config"): return .ok(resources.json)
            case ("balloon", _), ("mmds", _), ("hotplug", _): throw unsupported(method, path)
            default: throw invalid
            }
        case "PUT":
            guard hasBody else { throw .badRequest("Empty PUT request.") }
            switch resource {
            case "machine-config":
                let json = try JSON.parse(body)
                deprecated = json["cpu_template"] != nil
                try preBoot()
                resources.machine = try MachineConfig(parsing: json, current: resources.machine, patch: false)
            case "boot-source":
                let source = try BootSource(parsing: try JSON.parse(body))
                try preBoot()
                try checkReadable(source.kernelImagePath, what: "The kernel file cannot be opened")
                if let initrd = source.initrdPath {
                    try checkReadable(
                        initrd, what: "The initrd file cannot be opened due to invalid path or invalid permissions.")
                }
                resources.bootSource = source
            case "drives":
                let id = try checkedID(second)
                let drive = try DriveConfig(parsing: try JSON.parse(body))
                guard drive.driveID == id else {
                    throw .badRequest("The id from the path does not match the id from the body!")
                }
                try preBoot()
                try resources.put(drive)
            case "network-interfaces":
                let id = try checkedID(second)
                let interface = try NetworkInterfaceConfig(parsing: try JSON.parse(body))
                guard interface.ifaceID == id else {
                    throw .badRequest(
                        "The id from the path [\(id)] does not match the id from the body [\(interface.ifaceID)]!")
                }
                try preBoot()
                try resources.put(interface)
            case "vsock":
                let json = try JSON.parse(body)
                deprecated = json["vsock_id"] != nil
                let vsock = try VsockConfig(parsing: json)
                try preBoot()
                resources.vsock = vsock
            case "entropy":
                let entropy = try EntropyConfig(parsing: try JSON.parse(body))
                try preBoot()
                resources.entropy = entropy
            case "actions":
                try await action(try JSON.parse(body))
            case "snapshot":
                guard let operation = second else { throw .badRequest("Missing snapshot operation type.") }
                guard operation == "create" || operation == "load" else {
                    throw .badRequest("Invalid request method and/or path: PUT /snapshot/\(operation).")
                }
                throw .badRequest(
                    "The requested operation is not supported: snapshots (PUT /snapshot/\(operation)) are not implemented by SwiftVisor yet."
                )
            case "logger", "metrics", "serial":
                throw .badRequest(
                    "The requested operation is not supported: PUT /\(resource) is not implemented by SwiftVisor yet.")
            case "balloon", "cpu-config", "pmem", "mmds", "hotplug":
                throw unsupported(method, path)
            default:
                throw invalid
            }
            return .noContent
        case "PATCH":
            guard hasBody else { throw .badRequest("Empty PATCH request.") }
            switch resource {
            case "machine-config":
                let json = try JSON.parse(body)
                deprecated = json["cpu_template"] != nil
                try preBoot()
                resources.machine = try MachineConfig(parsing: json, current: resources.machine, patch: true)
            case "vm":
                try await changeState(try JSON.parse(body))
            case "drives", "network-interfaces":
                _ = try checkedID(second)
                try postBoot()
                throw .badRequest(
                    "The requested operation is not supported: PATCH /\(resource) after start is not implemented by SwiftVisor yet."
                )
            case "balloon", "mmds", "pmem", "hotplug":
                throw unsupported(method, path)
            default:
                throw invalid
            }
            return .noContent
        default:
            throw invalid
        }
    }

    private func unsupported(_ method: String, _ path: String) -> APIError {
        .badRequest("The requested operation is not supported: \(method) \(path) is not implemented by SwiftVisor.")
    }

    private func checkReadable(_ path: String, what: String) throws(APIError) {
        if let problem = launcher.unreadable(path) { throw .badRequest("Boot source error: \(what): \(problem)") }
    }

    private func preBoot() throws(APIError) {
        guard !started else { throw .badRequest(Self.notAfterStart) }
    }

    private func postBoot() throws(APIError) {
        guard vm != nil else { throw .badRequest(Self.notBeforeStart) }
    }

    private func action(_ body: JSONValue) async throws(APIError) {
        let reader = try FieldReader(body, known: ["action_type"])
        guard
            let action = try reader.enumeration(
                "action_type", cases: ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"])
        else {
            throw .badRequest("An error occurred when deserializing the json body of a request: missing field `action_type`.")
        }
        switch action {
        case "InstanceStart":
            try preBoot()
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
        case "SendCtrlAltDel":
            guard let vm else { throw .badRequest(Self.notBeforeStart) }
            guard vm.sendCtrlAltDel() else {
                throw .badRequest("Internal VMM error: Failed to send CTRL+ALT+DEL: i8042 internal buffer full.")
            }
        default:
            // Firecracker answers 204 even when no metrics file was configured; with no
            // metrics support yet there is nothing to write.
            try postBoot()
        }
    }

    private func changeState(_ body: JSONValue) async throws(APIError) {
        let reader = try FieldReader(body, known: ["state"])
        guard let wanted = try reader.enumeration("state", cases: ["Paused", "Resumed"]) else {
            throw .badRequest("An error occurred when deserializing the json body of a request: missing field `state`.")
        }
        guard let vm else { throw .badRequest(Self.notBeforeStart) }
        if wanted == "Paused" {
            await vm.pause()
            paused = true
        } else {
            vm.resume()
            paused = false
        }
    }
}
