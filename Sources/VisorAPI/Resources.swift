import SwiftVisor

/// What a Firecracker client configures before `InstanceStart`: the shape of `GET /vm/config`
/// and of the `--config-file` JSON. Each part parses itself from a request body with
/// Firecracker's field names, and checks its own rules; rules across parts (one root
/// drive, unique MACs) are the controller's.

/// `huge_pages`: "None" or "2M".
package enum HugePages: String, Sendable, Equatable { case none = "None", twoMiB = "2M" }

/// `/machine-config`.
package struct MachineConfig: Sendable, Equatable {
    package var vcpuCount: Int = 1
    package var memSizeMiB: UInt64 = 128
    package var smt = false
    package var trackDirtyPages = false
    package var hugePages = HugePages.none
    /// Deprecated by Firecracker; kept only to be shown back. SwiftVisor's CPUID policy
    /// is its own (`--cpuid`), so a static template changes nothing.
    package var cpuTemplate: String?

    package static let maximumVCPUs = 32
    /// 1 TiB: far beyond these hosts, small enough that every size computation fits.
    package static let maximumMemoryMiB: UInt64 = 1 << 20
    static let fields = ["vcpu_count", "mem_size_mib", "smt", "cpu_template", "track_dirty_pages", "huge_pages"]
    static let prefix = "Machine config error: "
    static let templates = ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]

    package init() {}

    /// PUT: `vcpu_count` and `mem_size_mib` are required; the rest return to defaults.
    /// PATCH: every field is optional and only the given ones change.
    package init(parsing body: JSONValue, current: MachineConfig, patch: Bool) throws(APIError) {
        let reader = try FieldReader(body, known: Self.fields)
        let base: MachineConfig? = patch ? current : nil
        var config = base ?? MachineConfig()
        config.cpuTemplate = current.cpuTemplate
        if base != nil {
            guard Self.fields.contains(where: reader.has) else { throw .badRequest("Empty PATCH request.") }
            if let count = try reader.unsigned("vcpu_count", maximum: UInt64(UInt8.max)) { config.vcpuCount = Int(count) }
            if let size = try reader.unsigned("mem_size_mib", maximum: UInt64(Int.max)) { config.memSizeMiB = size }
        } else {
            config.vcpuCount = Int(try reader.requiredUnsigned("vcpu_count", maximum: UInt64(UInt8.max)))
            config.memSizeMiB = try reader.requiredUnsigned("mem_size_mib", maximum: UInt64(Int.max))
        }
        if let smt = try reader.bool("smt") { config.smt = smt }
        if let track = try reader.bool("track_dirty_pages") { config.trackDirtyPages = track }
        if let pages = try reader.enumeration("huge_pages", cases: ["None", "2M"]) {
            config.hugePages = HugePages(rawValue: pages) ?? .none
        }
        // An omitted template keeps the previous one, even on PUT; "None" clears it.
        if let template = try reader.enumeration("cpu_template", cases: Self.templates) {
            config.cpuTemplate = template == "None" ? nil : template
        }
        try config.validate()
        self = config
    }

    /// Firecracker's rules, with its wording, and what SwiftVisor cannot do.
    func validate() throws(APIError) {
        if vcpuCount < 1 || vcpuCount > Self.maximumVCPUs || (smt && vcpuCount > 1 && vcpuCount % 2 == 1) {
            throw .badRequest(
                Self.prefix
                    + "The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."
            )
        }
        if memSizeMiB == 0 || (hugePages == .twoMiB && memSizeMiB % 2 == 1) {
            throw .badRequest(
                Self.prefix + "The memory size (MiB) is either 0, or not a multiple of the configured page size.")
        }
        if memSizeMiB > Self.maximumMemoryMiB {
            throw .badRequest(Self.prefix + "The memory size \(memSizeMiB) MiB is above SwiftVisor's limit of 1 TiB.")
        }
        if smt {
            throw .badRequest(
                Self.prefix
                    + "Simultaneous multithreading (`smt`) is not supported by SwiftVisor: each vCPU is a core of its own.")
        }
        if hugePages != .none {
            throw .badRequest(Self.prefix + "Huge pages are not supported by SwiftVisor: guest memory uses 4 KiB pages.")
        }
    }

    var json: JSONValue {
        var members: [JSONValue.Member] = [
            .init(key: "vcpu_count", value: .integer(Int64(vcpuCount))),
            .init(key: "mem_size_mib", value: .unsigned(memSizeMiB)), .init(key: "smt", value: .bool(smt)),
        ]
        if let cpuTemplate { members.append(.init(key: "cpu_template", value: .string(cpuTemplate))) }
        members.append(.init(key: "track_dirty_pages", value: .bool(trackDirtyPages)))
        members.append(.init(key: "huge_pages", value: .string(hugePages.rawValue)))
        return .object(members)
    }
}

/// `/boot-source`.
package struct BootSource: Sendable, Equatable {
    package var kernelImagePath: String
    package var bootArgs: String?
    package var initrdPath: String?

    package init(kernelImagePath: String, bootArgs: String? = nil, initrdPath: String? = nil) {
        self.kernelImagePath = kernelImagePath
        self.bootArgs = bootArgs
        self.initrdPath = initrdPath
    }

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["kernel_image_path", "initrd_path", "boot_args"])
        kernelImagePath = try reader.requiredString("kernel_image_path")
        initrdPath = try reader.string("initrd_path")
        bootArgs = try reader.string("boot_args")
    }

    var json: JSONValue {
        var members: [JSONValue.Member] = [
            .init(key: "kernel_image_path", value: .string(kernelImagePath)),
            .init(key: "initrd_path", value: initrdPath.map(JSONValue.string) ?? .null),
        ]
        if let bootArgs { members.append(.init(key: "boot_args", value: .string(bootArgs))) }
        return .object(members)
    }

    /// What `GET /vm/config` shows before a boot source is set.
    static let unsetJSON = JSONValue.members(["kernel_image_path": .string(""), "initrd_path": .null])
}

/// A token bucket: `size` tokens, refilled completely every `refill_time` milliseconds,
/// plus a `one_time_burst` spent first.
package struct TokenBucketConfig: Sendable, Equatable {
    package var size: UInt64
    package var oneTimeBurst: UInt64?
    package var refillTime: UInt64

    init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["size", "one_time_burst", "refill_time"])
        size = try reader.requiredUnsigned("size", maximum: UInt64(Int64.max))
        oneTimeBurst = try reader.unsigned("one_time_burst", maximum: UInt64(Int64.max))
        refillTime = try reader.requiredUnsigned("refill_time", maximum: UInt64(Int64.max))
    }

    /// The machine's form of the bucket.
    var configuration: TokenBucketConfiguration {
        TokenBucketConfiguration(size: size, oneTimeBurst: oneTimeBurst ?? 0, refillTimeMilliseconds: refillTime)
    }

    var json: JSONValue {
        .members([
            "size": .unsigned(size), "one_time_burst": oneTimeBurst.flatMap { $0 == 0 ? nil : .unsigned($0) } ?? .null,
            "refill_time": .unsigned(refillTime),
        ])
    }
}

/// `rate_limiter`: a bandwidth bucket (bytes) and an operations bucket, each optional.
package struct RateLimiterConfig: Sendable, Equatable {
    package var bandwidth: TokenBucketConfig?
    package var ops: TokenBucketConfig?

    init?(parsing body: JSONValue?, field: String = "rate_limiter") throws(APIError) {
        guard let body else { return nil }
        let reader = try FieldReader(body, known: ["bandwidth", "ops"])
        bandwidth = try reader.object("bandwidth").map { (value) throws(APIError) in try TokenBucketConfig(parsing: value) }
        ops = try reader.object("ops").map { (value) throws(APIError) in try TokenBucketConfig(parsing: value) }
        // A bucket with size or refill time 0 limits nothing (Firecracker's rule); the
        // devices enforce the others.
    }

    /// The machine's form of the limiter.
    var configuration: RateLimiterConfiguration {
        RateLimiterConfiguration(bandwidth: bandwidth?.configuration, ops: ops?.configuration)
    }

    /// This limiter after a PATCH with `update`: each bucket given replaces its own (a
    /// disabling one included, kept to be shown back); an absent one is left as it is.
    func patched(with update: RateLimiterConfig) -> RateLimiterConfig {
        var result = self
        if let bandwidth = update.bandwidth { result.bandwidth = bandwidth }
        if let ops = update.ops { result.ops = ops }
        return result
    }

    /// An empty limiter shows as null, as Firecracker shows it.
    var json: JSONValue {
        if bandwidth == nil, ops == nil { return .null }
        return .members(["bandwidth": bandwidth?.json ?? .null, "ops": ops?.json ?? .null])
    }
}

/// `/drives/{drive_id}`.
package struct DriveConfig: Sendable, Equatable {
    package var driveID: String
    package var pathOnHost: String
    package var isRootDevice: Bool
    package var isReadOnly: Bool
    package var partUUID: String?
    package var cacheType: String
    package var ioEngine: String
    package var rateLimiter: RateLimiterConfig?

    static let fields = [
        "drive_id", "partuuid", "is_root_device", "cache_type", "is_read_only", "path_on_host", "rate_limiter",
        "io_engine", "socket",
    ]

    package init(driveID: String, pathOnHost: String, isRootDevice: Bool, isReadOnly: Bool = false) {
        self.driveID = driveID
        self.pathOnHost = pathOnHost
        self.isRootDevice = isRootDevice
        self.isReadOnly = isReadOnly
        self.cacheType = "Unsafe"
        self.ioEngine = "Sync"
    }

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: Self.fields)
        driveID = try reader.requiredString("drive_id")
        if reader.has("socket") {
            throw .badRequest("vhost-user block devices (`socket`) are not supported by SwiftVisor.")
        }
        pathOnHost = try reader.requiredString("path_on_host")
        isRootDevice = try reader.requiredBool("is_root_device")
        isReadOnly = try reader.bool("is_read_only") ?? false
        partUUID = try reader.string("partuuid")
        cacheType = try reader.enumeration("cache_type", cases: ["Unsafe", "Writeback"]) ?? "Unsafe"
        ioEngine = try reader.enumeration("io_engine", cases: ["Sync", "Async"]) ?? "Sync"
        rateLimiter = try RateLimiterConfig(parsing: reader.object("rate_limiter"))
    }

    var json: JSONValue {
        .members([
            "drive_id": .string(driveID), "partuuid": partUUID.map(JSONValue.string) ?? .null,
            "is_root_device": .bool(isRootDevice), "cache_type": .string(cacheType), "is_read_only": .bool(isReadOnly),
            "path_on_host": .string(pathOnHost), "rate_limiter": rateLimiter?.json ?? .null,
            "io_engine": .string(ioEngine), "socket": .null,
        ])
    }
}

/// `PATCH /drives/{drive_id}` after start: a new backing file, a new rate limiter, or both.
package struct DriveUpdate: Sendable, Equatable {
    package var driveID: String
    package var pathOnHost: String?
    package var rateLimiter: RateLimiterConfig?

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["drive_id", "path_on_host", "rate_limiter"])
        driveID = try reader.requiredString("drive_id")
        pathOnHost = try reader.string("path_on_host")
        rateLimiter = try RateLimiterConfig(parsing: reader.object("rate_limiter"))
    }
}

/// `PATCH /network-interfaces/{iface_id}` after start: new rate limiters.
package struct NetworkInterfaceUpdate: Sendable, Equatable {
    package var ifaceID: String
    package var rxRateLimiter: RateLimiterConfig?
    package var txRateLimiter: RateLimiterConfig?

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["iface_id", "rx_rate_limiter", "tx_rate_limiter"])
        ifaceID = try reader.requiredString("iface_id")
        rxRateLimiter = try RateLimiterConfig(parsing: reader.object("rx_rate_limiter"), field: "rx_rate_limiter")
        txRateLimiter = try RateLimiterConfig(parsing: reader.object("tx_rate_limiter"), field: "tx_rate_limiter")
    }
}

/// `/network-interfaces/{iface_id}`.
package struct NetworkInterfaceConfig: Sendable, Equatable {
    package var ifaceID: String
    package var hostDevName: String
    package var guestMAC: [UInt8]?
    package var mtu: UInt64?
    package var rxRateLimiter: RateLimiterConfig?
    package var txRateLimiter: RateLimiterConfig?

    static let fields = ["iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"]

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: Self.fields)
        ifaceID = try reader.requiredString("iface_id")
        hostDevName = try reader.requiredString("host_dev_name")
        if let text = try reader.string("guest_mac") {
            guard let mac = VirtioDeviceConfiguration.parseMAC(Substring(text)) else {
                throw .badRequest(
                    "An error occurred when deserializing the json body of a request: The provided MAC address is invalid.")
            }
            guestMAC = mac
        }
        mtu = try reader.unsigned("mtu", maximum: 65_535)
        if let mtu, mtu < 68 {
            throw .badRequest("Network config error: The MTU \(mtu) is invalid: it must be between 68 and 65535.")
        }
        rxRateLimiter = try RateLimiterConfig(parsing: reader.object("rx_rate_limiter"), field: "rx_rate_limiter")
        txRateLimiter = try RateLimiterConfig(parsing: reader.object("tx_rate_limiter"), field: "tx_rate_limiter")
        guard !hostDevName.isEmpty, hostDevName.utf8.count < 16 else {
            throw .badRequest(
                "Network config error: The host device name `\(hostDevName)` is invalid: a TAP name is 1 to 15 bytes.")
        }
    }

    /// Lower case, as Firecracker shows a MAC.
    static func formatMAC(_ mac: [UInt8]) -> String {
        VirtioDeviceConfiguration.formatMAC(mac).lowercased()
    }

    var json: JSONValue {
        var members: [JSONValue.Member] = [
            .init(key: "iface_id", value: .string(ifaceID)), .init(key: "host_dev_name", value: .string(hostDevName)),
            .init(key: "guest_mac", value: guestMAC.map { .string(Self.formatMAC($0)) } ?? .null),
        ]
        if let mtu { members.append(.init(key: "mtu", value: .unsigned(mtu))) }
        members.append(.init(key: "rx_rate_limiter", value: rxRateLimiter?.json ?? .null))
        members.append(.init(key: "tx_rate_limiter", value: txRateLimiter?.json ?? .null))
        return .object(members)
    }
}

/// `/vsock`.
package struct VsockConfig: Sendable, Equatable {
    package var guestCID: UInt32
    package var udsPath: String
    package var vsockID: String?

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["vsock_id", "guest_cid", "uds_path"])
        let cid = try reader.requiredUnsigned("guest_cid", maximum: UInt64(UInt32.max))
        guard cid >= 3 else {
            throw .badRequest("Vsock config error: The guest CID \(cid) is reserved (0 to 2); use 3 or more.")
        }
        guestCID = UInt32(cid)
        udsPath = try reader.requiredString("uds_path")
        vsockID = try reader.string("vsock_id")
        guard !udsPath.isEmpty else { throw .badRequest("Vsock config error: `uds_path` is empty.") }
    }

    /// `vsock_id` is deprecated and not shown back, as Firecracker does.
    var json: JSONValue { .members(["guest_cid": .unsigned(UInt64(guestCID)), "uds_path": .string(udsPath)]) }
}

/// `/serial` (Firecracker 1.13): where the guest's serial output goes instead of
/// standard output, an existing file or FIFO opened at start.
package struct SerialConfig: Sendable, Equatable {
    package var serialOutPath: String?

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["serial_out_path"])
        serialOutPath = try reader.string("serial_out_path")
    }
}

/// `/entropy`.
package struct EntropyConfig: Sendable, Equatable {
    package var rateLimiter: RateLimiterConfig?

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["rate_limiter"])
        rateLimiter = try RateLimiterConfig(parsing: reader.object("rate_limiter"))
    }

    var json: JSONValue { .members(["rate_limiter": rateLimiter?.json ?? .null]) }
}

/// A resource ID from a path (`/drives/{drive_id}`): Firecracker allows letters, digits and
/// `_` only, checked before the body. SwiftVisor also caps it at 64 bytes.
func checkedID(_ id: String?) throws(APIError) -> String {
    guard let id, !id.isEmpty else { throw .badRequest("The ID cannot be empty.") }
    guard id.utf8.count <= 64, id.allSatisfy({ $0 == "_" || $0.isLetter || $0.isNumber }) else {
        throw .badRequest("API Resource IDs can only contain alphanumeric characters and underscores.")
    }
    return id
}

/// Everything configured so far, in the order Firecracker lists it.
package struct VMResources: Sendable, Equatable {
    package var machine = MachineConfig()
    package var bootSource: BootSource?
    /// In the order they were added; the root drive, if any, is put first at start.
    package var drives: [DriveConfig] = []
    package var networkInterfaces: [NetworkInterfaceConfig] = []
    package var vsock: VsockConfig?
    package var entropy: EntropyConfig?
    /// `PUT /serial`; not part of `GET /vm/config`, as in Firecracker 1.12's shape.
    package var serial: SerialConfig?
    /// The configuration file's `logger` and `metrics`: applied by the controller, and
    /// (as in Firecracker) never shown in `GET /vm/config`.
    package var logger: LoggerConfig?
    package var metrics: MetricsConfig?

    package init() {}

    /// Whether nothing that builds a machine was configured (a snapshot load is allowed
    /// only then; the logger, metrics and serial output do not count).
    package var hasNoBootResources: Bool {
        machine == MachineConfig() && bootSource == nil && drives.isEmpty && networkInterfaces.isEmpty && vsock == nil
            && entropy == nil
    }

    /// Takes what built a machine from `saved` (the configuration a snapshot kept), and
    /// keeps this one's logger, metrics and serial output.
    package mutating func adoptMachine(of saved: VMResources) {
        machine = saved.machine
        bootSource = saved.bootSource
        drives = saved.drives
        networkInterfaces = saved.networkInterfaces
        vsock = saved.vsock
        entropy = saved.entropy
    }

    /// Adds or replaces (same ID) a drive, keeping at most one root device.
    package mutating func put(_ drive: DriveConfig) throws(APIError) {
        if drive.isRootDevice, drives.contains(where: { $0.isRootDevice && $0.driveID != drive.driveID }) {
            throw .badRequest("Drive config error: A root block device already exists!")
        }
        drives.removeAll { $0.driveID == drive.driveID }
        // The root drive comes first, so that it is /dev/vda.
        if drive.isRootDevice { drives.insert(drive, at: 0) } else { drives.append(drive) }
    }

    /// Adds or replaces (same ID) an interface; a MAC or TAP another interface uses is refused.
    package mutating func put(_ interface: NetworkInterfaceConfig) throws(APIError) {
        for other in networkInterfaces where other.ifaceID != interface.ifaceID {
            if let mac = interface.guestMAC, other.guestMAC == mac {
                throw .badRequest(
                    "Network config error: The MAC address is already in use: \(NetworkInterfaceConfig.formatMAC(mac))")
            }
            if other.hostDevName == interface.hostDevName {
                throw .badRequest(
                    "Network config error: The host device \(interface.hostDevName) is already used by interface \(other.ifaceID)."
                )
            }
        }
        if let index = networkInterfaces.firstIndex(where: { $0.ifaceID == interface.ifaceID }) {
            networkInterfaces[index] = interface
        } else {
            networkInterfaces.append(interface)
        }
    }

    /// The JSON of `GET /vm/config` (and of a configuration file).
    package var json: JSONValue {
        .members([
            "balloon": .null,
            "drives": .array(drives.map(\.json)),
            "boot-source": bootSource?.json ?? BootSource.unsetJSON,
            "cpu-config": .null,
            "logger": .null,
            "machine-config": machine.json,
            "metrics": .null,
            "mmds-config": .null,
            "network-interfaces": .array(networkInterfaces.map(\.json)),
            "vsock": vsock?.json ?? .null,
            "entropy": entropy?.json ?? .null,
        ])
    }
}

extension VMResources {
    /// A Firecracker configuration file (`--config-file`): the keys of `GET /vm/config`,
    /// `boot-source` and `drives` required. Each part follows the same rules as its
    /// endpoint; a part SwiftVisor does not support, given non-null, is refused by name.
    package init(configFile json: JSONValue) throws(APIError) {
        guard case .object(let members) = json else {
            throw .badRequest("The configuration file is not a JSON object.")
        }
        self.init()
        let value = { (key: String) -> JSONValue? in
            guard let found = members.last(where: { $0.key == key })?.value, found != .null else { return nil }
            return found
        }
        for key in ["balloon", "mmds-config", "cpu-config"] where value(key) != nil {
            throw .badRequest("The configuration file's `\(key)` is not supported by SwiftVisor yet.")
        }
        if let logger = value("logger") { self.logger = try LoggerConfig(parsing: logger) }
        if let serial = value("serial") { self.serial = try SerialConfig(parsing: serial) }
        if let metrics = value("metrics") { self.metrics = try MetricsConfig(parsing: metrics) }
        if let machine = value("machine-config") {
            self.machine = try MachineConfig(parsing: machine, current: MachineConfig(), patch: false)
        }
        guard let boot = value("boot-source") else {
            throw .badRequest("The configuration file has no `boot-source`.")
        }
        bootSource = try BootSource(parsing: boot)
        guard case .array(let drives)? = value("drives") else {
            throw .badRequest("The configuration file has no `drives` list (it may be empty: `[]`).")
        }
        for drive in drives {
            let config = try DriveConfig(parsing: drive)
            _ = try checkedID(config.driveID)
            try put(config)
        }
        if let interfaces = value("network-interfaces") {
            guard case .array(let list) = interfaces else {
                throw .badRequest("The configuration file's `network-interfaces` is not a list.")
            }
            for interface in list {
                let config = try NetworkInterfaceConfig(parsing: interface)
                _ = try checkedID(config.ifaceID)
                try put(config)
            }
        }
        if let vsock = value("vsock") { self.vsock = try VsockConfig(parsing: vsock) }
        if let entropy = value("entropy") { self.entropy = try EntropyConfig(parsing: entropy) }
    }
}

/// `PUT /snapshot/create`: where the state and the memory go, and which memory.
package struct SnapshotCreateConfig: Sendable, Equatable {
    package var snapshotPath: String
    package var memFilePath: String
    /// "Full" or "Diff".
    package var snapshotType: String

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["snapshot_type", "snapshot_path", "mem_file_path"])
        snapshotType = try reader.enumeration("snapshot_type", cases: ["Full", "Diff"]) ?? "Full"
        snapshotPath = try reader.requiredString("snapshot_path")
        memFilePath = try reader.requiredString("mem_file_path")
    }
}

/// `PUT /snapshot/load`: the state file, the memory (`mem_backend` with a `File`, or the
/// deprecated `mem_file_path`), whether to log dirty pages and whether to resume at once.
package struct SnapshotLoadConfig: Sendable, Equatable {
    package var snapshotPath: String
    package var memFilePath: String
    package var trackDirtyPages: Bool
    package var resumeVM: Bool
    /// `vsock_override.uds_path`: where the restored vsock device listens instead.
    package var vsockUDSPath: String?
    /// Whether the deprecated `mem_file_path` was used (answered with `Deprecation: true`).
    package var usedDeprecatedField: Bool
    /// `network_overrides`: the TAP each named interface opens instead of its saved one.
    package var networkOverrides: [NetworkOverride] = []

    /// One of `network_overrides`.
    package struct NetworkOverride: Sendable, Equatable {
        package var ifaceID: String
        package var hostDevName: String

        package init(ifaceID: String, hostDevName: String) {
            self.ifaceID = ifaceID
            self.hostDevName = hostDevName
        }
    }

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(
            body,
            known: [
                "snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots", "track_dirty_pages",
                "resume_vm", "network_overrides", "vsock_override",
            ])
        snapshotPath = try reader.requiredString("snapshot_path")
        let prefix = "An error occurred when deserializing the json body of a request: "
        switch (reader.object("mem_backend"), try reader.string("mem_file_path")) {
        case (nil, nil):
            throw .badRequest(prefix + "missing field: either `mem_backend` or `mem_file_path` is required.")
        case (.some, .some):
            throw .badRequest(prefix + "too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
        case (nil, let path?):
            memFilePath = path
            usedDeprecatedField = true
        case (let backend?, nil):
            let backendReader = try FieldReader(backend, known: ["backend_type", "backend_path"])
            let type = try backendReader.enumeration("backend_type", cases: ["File", "Uffd"])
            guard let type else { throw .badRequest(prefix + "missing field `backend_type`.") }
            guard type == "File" else {
                throw .badRequest(
                    "The requested operation is not supported: the Uffd memory backend (SwiftVisor maps the memory file privately, so pages load lazily without a page-fault handler process)."
                )
            }
            memFilePath = try backendReader.requiredString("backend_path")
            usedDeprecatedField = false
        }
        let deprecatedDiff = try reader.bool("enable_diff_snapshots")
        trackDirtyPages = try reader.bool("track_dirty_pages") ?? deprecatedDiff ?? false
        resumeVM = try reader.bool("resume_vm") ?? false
        switch reader.object("network_overrides") {
        case nil: break
        case .array(let overrides)?:
            for override in overrides {
                let overrideReader = try FieldReader(override, known: ["iface_id", "host_dev_name"])
                let entry = NetworkOverride(
                    ifaceID: try overrideReader.requiredString("iface_id"),
                    hostDevName: try overrideReader.requiredString("host_dev_name"))
                guard !networkOverrides.contains(where: { $0.ifaceID == entry.ifaceID }) else {
                    throw .badRequest(prefix + "network_overrides names the interface `\(entry.ifaceID)` twice.")
                }
                networkOverrides.append(entry)
            }
        case let other?:
            throw .badRequest(prefix + "invalid type: `network_overrides` is \(other.kind), expected a sequence.")
        }
        if let override = reader.object("vsock_override") {
            let overrideReader = try FieldReader(override, known: ["uds_path"])
            vsockUDSPath = try overrideReader.requiredString("uds_path")
        } else {
            vsockUDSPath = nil
        }
    }
}
