package import SwiftVisor
import Synchronization
package import VisorHost

/// `PUT /metrics`'s body (and the configuration file's `metrics`).
package struct MetricsConfig: Sendable, Equatable {
    package var metricsPath: String

    package init(metricsPath: String) { self.metricsPath = metricsPath }

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["metrics_path"])
        metricsPath = try reader.requiredString("metrics_path")
    }
}

/// One top-level object of a metrics line (`vcpu`, `block_rootfs`, ...): counters by name,
/// in the order they are written. Values are running totals; the line shows each one's
/// change since the previous line, as Firecracker's `SharedIncMetric`s do.
package struct MetricGroup: Sendable, Equatable {
    package var name: String
    package var counters: [(String, UInt64)]
    /// Values written as they are on every line (Firecracker's `SharedStoreMetric`, such as
    /// the boot timer's), not as the change since the last line.
    package var absolute: Bool

    package init(_ name: String, _ counters: [(String, UInt64)], absolute: Bool = false) {
        self.name = name
        self.counters = counters
        self.absolute = absolute
    }

    package static func == (a: MetricGroup, b: MetricGroup) -> Bool {
        a.name == b.name && a.absolute == b.absolute && a.counters.elementsEqual(b.counters, by: { $0 == $1 })
    }
}

/// Firecracker's metrics: one compact JSON object per line, to the file or FIFO named once
/// by `--metrics-path`, the configuration file or `PUT /metrics`. Nothing is written until
/// then. A line the target does not take is lost (metrics are best effort, as in Firecracker).
package final class MetricsSink: Sendable {
    struct State {
        var target: HostLogTarget?
        /// Each counter's total at the previous line, by "group.counter".
        var previous: [String: UInt64] = [:]
        var lines: UInt64 = 0
    }

    private let state = Mutex(State())
    private let missed = Atomic<UInt64>(0)

    /// Lines that could not be written so far (Firecracker's `logger.missed_metrics_count`).
    package var missedLines: UInt64 { missed.load(ordering: .relaxed) }

    package init() {}

    /// Whether a destination was set.
    package var isConfigured: Bool { state.withLock { $0.target != nil } }

    /// Sets the destination; a second one is refused, after the path was checked, as
    /// Firecracker does.
    package func configure(
        _ config: MetricsConfig, open: (String) throws(HostFileError) -> HostLogTarget = HostLogTarget.open
    ) throws(APIError) {
        let target: HostLogTarget
        do { target = try open(config.metricsPath) } catch { throw .badRequest("Metrics error: \(error.reason)") }
        try state.withLock { (state) throws(APIError) in
            guard state.target == nil else {
                throw .badRequest("Metrics error: Reinitialization of metrics not allowed.")
            }
            state.target = target
        }
    }

    /// Writes one line from `groups` (running totals) when a destination is set; returns
    /// the line written, or nil.
    @discardableResult
    package func flush(_ groups: [MetricGroup], timestampMilliseconds: UInt64) -> [UInt8]? {
        let result: ([UInt8], HostLogTarget)? = state.withLock { state in
            guard let target = state.target else { return nil }
            let line = Self.line(groups, timestampMilliseconds: timestampMilliseconds, previous: &state.previous)
            state.lines &+= 1
            return (line, target)
        }
        guard let (line, target) = result else { return nil }
        if !target.write(line) { missed.add(1, ordering: .relaxed) }
        return line
    }

    /// The JSON line for `groups`, each counter as its change since `previous`, which
    /// becomes the new totals. A total below the previous one (a device that was reset)
    /// shows its whole value. An `absolute` group's values are written as they are.
    package static func line(_ groups: [MetricGroup], timestampMilliseconds: UInt64, previous: inout [String: UInt64])
        -> [UInt8]
    {
        var members = [JSONValue.Member(key: "utc_timestamp_ms", value: .unsigned(timestampMilliseconds))]
        for group in groups {
            var leaves: [JSONValue.Member] = []
            for (name, total) in group.counters {
                let key = group.name + "." + name
                let before = previous[key] ?? 0
                previous[key] = total
                let value = group.absolute || total < before ? total : total - before
                leaves.append(JSONValue.Member(key: name, value: .unsigned(value)))
            }
            members.append(JSONValue.Member(key: group.name, value: .object(leaves)))
        }
        return JSONValue.object(members).text + [UInt8(ascii: "\n")]
    }
}

/// API requests served so far, by Firecracker's metric names (`put_api_requests.drive_count`,
/// `..._fails`), counted by the controller.
package struct APIRequestCounts: Sendable, Equatable {
    private(set) var counts: [String: UInt64] = [:]
    /// Requests that named a deprecated field (`deprecated_api.deprecated_http_api_calls`).
    var deprecatedCalls: UInt64 = 0

    package init() {}

    /// The metric a request counts under: group and counter name (without `_count`/`_fails`),
    /// or nil for a request Firecracker does not count.
    static func metric(method: String, resource: String) -> (group: String, name: String)? {
        switch (method, resource) {
        case ("GET", ""): ("get_api_requests", "instance_info")
        case ("GET", "machine-config"): ("get_api_requests", "machine_cfg")
        case ("GET", "version"): ("get_api_requests", "vmm_version")
        case ("GET", "mmds"): ("get_api_requests", "mmds")
        case ("PUT", "actions"): ("put_api_requests", "actions")
        case ("PUT", "boot-source"): ("put_api_requests", "boot_source")
        case ("PUT", "drives"): ("put_api_requests", "drive")
        case ("PUT", "logger"): ("put_api_requests", "logger")
        case ("PUT", "machine-config"): ("put_api_requests", "machine_cfg")
        case ("PUT", "metrics"): ("put_api_requests", "metrics")
        case ("PUT", "network-interfaces"): ("put_api_requests", "network")
        case ("PUT", "vsock"): ("put_api_requests", "vsock")
        case ("PUT", "entropy"): ("put_api_requests", "entropy")
        case ("PATCH", "drives"): ("patch_api_requests", "drive")
        case ("PATCH", "machine-config"): ("patch_api_requests", "machine_cfg")
        case ("PATCH", "network-interfaces"): ("patch_api_requests", "network")
        default: nil
        }
    }

    /// Counts one request; a failed PUT or PATCH also counts under `_fails`.
    mutating func record(method: String, resource: String, failed: Bool) {
        guard let (group, name) = Self.metric(method: method, resource: resource) else { return }
        counts[group + "." + name + "_count", default: 0] &+= 1
        if failed, group != "get_api_requests" { counts[group + "." + name + "_fails", default: 0] &+= 1 }
    }

    /// `get_api_requests`, `patch_api_requests` and `put_api_requests`, every counter
    /// Firecracker has for the endpoints SwiftVisor serves.
    var groups: (get: MetricGroup, patch: MetricGroup, put: MetricGroup) {
        func group(_ name: String, _ counters: [String]) -> MetricGroup {
            MetricGroup(name, counters.map { ($0, counts[name + "." + $0] ?? 0) })
        }
        let put = ["actions", "boot_source", "drive", "logger", "machine_cfg", "metrics", "network", "vsock", "entropy"]
        return (
            group("get_api_requests", ["instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count"]),
            group(
                "patch_api_requests",
                ["drive_count", "drive_fails", "network_count", "network_fails", "machine_cfg_count", "machine_cfg_fails"]),
            group("put_api_requests", put.flatMap { [$0 + "_count", $0 + "_fails"] })
        )
    }
}

/// What a running VM counted so far, for a metrics line: its exits and its devices, by the
/// IDs clients gave them.
package struct VMCounters: Sendable {
    package var exits = LiveExitCounts()
    package var drives: [(id: String, statistics: VirtioDeviceStatistics)] = []
    package var interfaces: [(id: String, statistics: VirtioDeviceStatistics)] = []
    package var vsock: VirtioDeviceStatistics?
    package var entropy: VirtioDeviceStatistics?
    /// The boot timer's figure (`--boot-timer`), once the guest signalled: microseconds of
    /// wall clock and of the process's CPU time from the VM's build.
    package var bootTime: (wall: UInt64, cpu: UInt64)?

    package init() {}
}

extension MetricsSink {
    /// The groups of one metrics line, in Firecracker's order, with only what SwiftVisor
    /// counts: `block_<id>` and `block`, `deprecated_api`, `get_api_requests`, `logger`,
    /// `net_<id>` and `net`, `patch_api_requests`, `put_api_requests`, `vcpu`, and `vsock`
    /// and `entropy` when configured, and SwiftVisor's `boot_timer` (`guest_boot_time_us`,
    /// `guest_boot_cpu_us`) once a guest signalled it. `vm` is nil before the VM starts.
    package static func groups(
        vm: VMCounters?, api: APIRequestCounts, missedLogLines: UInt64, missedMetricsLines: UInt64, resources: VMResources
    ) -> [MetricGroup] {
        let vm = vm ?? VMCounters()
        var groups: [MetricGroup] = []
        func device(_ name: String, _ statistics: [VirtioDeviceStatistics], dropped: Bool = false) -> MetricGroup {
            var counters: [(String, UInt64)] = [
                ("queue_event_count", statistics.reduce(0) { $0 &+ $1.notifications }),
                ("request_count", statistics.reduce(0) { $0 &+ $1.requests }),
                ("invalid_reqs_count", statistics.reduce(0) { $0 &+ $1.malformedRequests }),
                ("bytes_count", statistics.reduce(0) { $0 &+ $1.bytes }),
                ("interrupt_count", statistics.reduce(0) { $0 &+ $1.interrupts }),
            ]
            if dropped { counters.append(("dropped_count", statistics.reduce(0) { $0 &+ $1.dropped })) }
            return MetricGroup(name, counters)
        }
        for drive in vm.drives { groups.append(device("block_" + drive.id, [drive.statistics])) }
        groups.append(device("block", vm.drives.map(\.statistics)))
        groups.append(MetricGroup("deprecated_api", [("deprecated_http_api_calls", api.deprecatedCalls)]))
        let requests = api.groups
        groups.append(requests.get)
        groups.append(
            MetricGroup("logger", [("missed_log_count", missedLogLines), ("missed_metrics_count", missedMetricsLines)]))
        for interface in vm.interfaces {
            groups.append(device("net_" + interface.id, [interface.statistics], dropped: true))
        }
        groups.append(device("net", vm.interfaces.map(\.statistics), dropped: true))
        groups.append(requests.patch)
        groups.append(requests.put)
        groups.append(
            MetricGroup(
                "vcpu",
                [
                    ("exit_io_in", vm.exits.ioIn), ("exit_io_out", vm.exits.ioOut), ("exit_mmio_read", vm.exits.mmioRead),
                    ("exit_mmio_write", vm.exits.mmioWrite),
                ]))
        if resources.vsock != nil { groups.append(device("vsock", vm.vsock.map { [$0] } ?? [])) }
        if resources.entropy != nil { groups.append(device("entropy", vm.entropy.map { [$0] } ?? [])) }
        if let boot = vm.bootTime {
            // A store, as Firecracker's: every line after the signal carries the boot time.
            groups.append(
                MetricGroup(
                    "boot_timer", [("guest_boot_time_us", boot.wall), ("guest_boot_cpu_us", boot.cpu)], absolute: true))
        }
        return groups
    }
}
