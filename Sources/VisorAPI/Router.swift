/// Where the VM is in its life, as Firecracker's request rules see it.
package enum Phase: Sendable, Equatable {
    case notStarted
    /// `InstanceStart` is being served: configuration is closed, the VM is not up yet.
    case starting
    case started(paused: Bool)

    static let notAfterStart = "The requested operation is not supported after starting the microVM."
    static let notBeforeStart = "The requested operation is not supported before starting the microVM."

    var state: InstanceState {
        switch self {
        case .notStarted, .starting: .notStarted
        case .started(let paused): paused ? .paused : .running
        }
    }

    func preBoot() throws(APIError) {
        guard self == .notStarted else { throw .badRequest(Self.notAfterStart) }
    }

    func postBoot() throws(APIError) {
        guard case .started = self else { throw .badRequest(Self.notBeforeStart) }
    }
}

/// A request that needs the VM, which only the controller can do.
package enum RuntimeRequest: Sendable, Equatable {
    case instanceStart, sendCtrlAltDel, flushMetrics, pause, resume
    /// `PATCH /drives/{id}` of the drive at `index` of `VMResources.drives` (its virtio
    /// device index too: drives come first).
    case updateDrive(index: Int, DriveUpdate)
    /// `PATCH /network-interfaces/{id}` of the interface at `index` of
    /// `VMResources.networkInterfaces`.
    case updateInterface(index: Int, NetworkInterfaceUpdate)
    /// `PUT /logger` and `PUT /metrics`: they open files, so the controller does them.
    case configureLogger(LoggerConfig)
    case configureMetrics(MetricsConfig)
    /// `PUT /snapshot/create` of the paused VM.
    case createSnapshot(SnapshotCreateConfig)
    /// `PUT /snapshot/load` into this fresh process.
    case loadSnapshot(SnapshotLoadConfig)
}

/// What `RequestRules.apply` decided.
package enum RequestOutcome: Sendable, Equatable {
    case response(APIResponse)
    case runtime(RuntimeRequest)
}

/// Firecracker's routing and request rules, as a pure function over the configuration: the
/// controller adds the VM, the fuzz target calls it directly.
package struct RequestRules: Sendable {
    package var instanceID: String
    package var version: String
    /// Why a file a client names cannot be read, or nil when it can.
    package var unreadable: @Sendable (String) -> String?

    package init(instanceID: String, version: String, unreadable: @escaping @Sendable (String) -> String?) {
        self.instanceID = instanceID
        self.version = version
        self.unreadable = unreadable
    }

    /// Serves a request against `resources`: a configuration request changes them (or,
    /// refused, leaves them exactly as they were), a GET answers from them, and a request
    /// that needs the VM comes back as a `RuntimeRequest` for the controller. No side
    /// effects beyond `resources` and `deprecated` (set when a deprecated field was named).
    package func apply(
        method: String, path: String, body: [UInt8], to resources: inout VMResources, phase: Phase,
        deprecated: inout Bool
    ) throws(APIError) -> RequestOutcome {
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
                return .response(
                    .ok(
                        .members([
                            "id": .string(instanceID), "state": .string(phase.state.rawValue), "vmm_version": .string(version),
                            "app_name": .string("Firecracker"),
                        ])))
            case ("version", _): return .response(.ok(.members(["firecracker_version": .string(version)])))
            case ("machine-config", _): return .response(.ok(resources.machine.json))
            case ("vm", "config"): return .response(.ok(resources.json))
            case ("balloon", _), ("mmds", _), ("hotplug", _): throw unsupported(method, path)
            default: throw invalid
            }
        case "PUT":
            guard hasBody else { throw .badRequest("Empty PUT request.") }
            switch resource {
            case "machine-config":
                let json = try JSON.parse(body)
                deprecated = json["cpu_template"] != nil
                try phase.preBoot()
                resources.machine = try MachineConfig(parsing: json, current: resources.machine, patch: false)
            case "boot-source":
                let source = try BootSource(parsing: try JSON.parse(body))
                try phase.preBoot()
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
                try phase.preBoot()
                try resources.put(drive)
            case "network-interfaces":
                let id = try checkedID(second)
                let interface = try NetworkInterfaceConfig(parsing: try JSON.parse(body))
                guard interface.ifaceID == id else {
                    throw .badRequest(
                        "The id from the path [\(id)] does not match the id from the body [\(interface.ifaceID)]!")
                }
                try phase.preBoot()
                try resources.put(interface)
            case "vsock":
                let json = try JSON.parse(body)
                deprecated = json["vsock_id"] != nil
                let vsock = try VsockConfig(parsing: json)
                try phase.preBoot()
                resources.vsock = vsock
            case "entropy":
                let entropy = try EntropyConfig(parsing: try JSON.parse(body))
                try phase.preBoot()
                resources.entropy = entropy
            case "actions":
                return .runtime(try action(try JSON.parse(body), phase: phase))
            case "snapshot":
                guard let operation = second else { throw .badRequest("Missing snapshot operation type.") }
                switch operation {
                case "create":
                    let config = try SnapshotCreateConfig(parsing: try JSON.parse(body))
                    try phase.postBoot()
                    guard phase == .started(paused: true) else {
                        throw .badRequest("Create snapshot error: the microVM must be paused (PATCH /vm) before a snapshot.")
                    }
                    return .runtime(.createSnapshot(config))
                case "load":
                    let config = try SnapshotLoadConfig(parsing: try JSON.parse(body))
                    deprecated = config.usedDeprecatedField
                    try phase.preBoot()
                    guard resources.hasNoBootResources else {
                        throw .badRequest(
                            "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
                        )
                    }
                    return .runtime(.loadSnapshot(config))
                default:
                    throw .badRequest("Invalid request method and/or path: PUT /snapshot/\(operation).")
                }
            case "logger":
                let config = try LoggerConfig(parsing: try JSON.parse(body))
                try phase.preBoot()
                return .runtime(.configureLogger(config))
            case "metrics":
                let config = try MetricsConfig(parsing: try JSON.parse(body))
                try phase.preBoot()
                return .runtime(.configureMetrics(config))
            case "serial":
                let serial = try SerialConfig(parsing: try JSON.parse(body))
                try phase.preBoot()
                resources.serial = serial
            case "balloon", "cpu-config", "pmem", "mmds", "hotplug":
                throw unsupported(method, path)
            default:
                throw invalid
            }
            return .response(.noContent)
        case "PATCH":
            guard hasBody else { throw .badRequest("Empty PATCH request.") }
            switch resource {
            case "machine-config":
                let json = try JSON.parse(body)
                deprecated = json["cpu_template"] != nil
                try phase.preBoot()
                resources.machine = try MachineConfig(parsing: json, current: resources.machine, patch: true)
            case "vm":
                return .runtime(try changeState(try JSON.parse(body), phase: phase))
            case "drives":
                let id = try checkedID(second)
                let update = try DriveUpdate(parsing: try JSON.parse(body))
                guard update.driveID == id else {
                    throw .badRequest("The id from the path does not match the id from the body!")
                }
                try phase.postBoot()
                let prefix = "Drive config error: Unable to patch the block device: "
                guard let index = resources.drives.firstIndex(where: { $0.driveID == id }) else {
                    throw .badRequest(prefix + "No drive `\(id)` was configured. Please verify the request arguments.")
                }
                guard update.pathOnHost != nil || update.rateLimiter != nil else {
                    throw .badRequest(
                        prefix
                            + "Drive `\(id)` is a virtio block device, with no vhost-user configuration to refresh. Please verify the request arguments."
                    )
                }
                return .runtime(.updateDrive(index: index, update))
            case "network-interfaces":
                let id = try checkedID(second)
                let update = try NetworkInterfaceUpdate(parsing: try JSON.parse(body))
                guard update.ifaceID == id else {
                    throw .badRequest("The id from the path [\(id)] does not match the id from the body [\(update.ifaceID)]!")
                }
                try phase.postBoot()
                guard let index = resources.networkInterfaces.firstIndex(where: { $0.ifaceID == id }) else {
                    throw .badRequest(
                        "Network config error: Unable to update the net device: No interface `\(id)` was configured.")
                }
                return .runtime(.updateInterface(index: index, update))
            case "balloon", "mmds", "pmem", "hotplug":
                throw unsupported(method, path)
            default:
                throw invalid
            }
            return .response(.noContent)
        default:
            throw invalid
        }
    }

    private func unsupported(_ method: String, _ path: String) -> APIError {
        .badRequest("The requested operation is not supported: \(method) \(path) is not implemented by SwiftVisor.")
    }

    private func checkReadable(_ path: String, what: String) throws(APIError) {
        if let problem = unreadable(path) { throw .badRequest("Boot source error: \(what): \(problem)") }
    }

    private func action(_ body: JSONValue, phase: Phase) throws(APIError) -> RuntimeRequest {
        let reader = try FieldReader(body, known: ["action_type"])
        guard
            let action = try reader.enumeration(
                "action_type", cases: ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"])
        else {
            throw .badRequest("An error occurred when deserializing the json body of a request: missing field `action_type`.")
        }
        switch action {
        case "InstanceStart":
            try phase.preBoot()
            return .instanceStart
        case "SendCtrlAltDel":
            try phase.postBoot()
            return .sendCtrlAltDel
        default:
            try phase.postBoot()
            return .flushMetrics
        }
    }

    private func changeState(_ body: JSONValue, phase: Phase) throws(APIError) -> RuntimeRequest {
        let reader = try FieldReader(body, known: ["state"])
        guard let wanted = try reader.enumeration("state", cases: ["Paused", "Resumed"]) else {
            throw .badRequest("An error occurred when deserializing the json body of a request: missing field `state`.")
        }
        try phase.postBoot()
        return wanted == "Paused" ? .pause : .resume
    }
}
