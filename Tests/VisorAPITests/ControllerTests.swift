import Synchronization
import Testing

import SwiftVisor

@testable import VisorAPI

/// A VM that records what the controller asked of it.
final class FakeVM: RunningVM {
    let calls = Mutex<[String]>([])
    let ended = AsyncStream<Int32>.makeStream()
    let keyboardRoom: Bool

    init(keyboardRoom: Bool = true) { self.keyboardRoom = keyboardRoom }

    func pause() async { calls.withLock { $0.append("pause") } }
    func resume() { calls.withLock { $0.append("resume") } }
    func sendCtrlAltDel() -> Bool {
        calls.withLock { $0.append("ctrl-alt-del") }
        return keyboardRoom
    }
    func wait() async -> Int32 {
        for await status in ended.stream { return status }
        return -1
    }
    func end(_ status: Int32) { ended.continuation.yield(status) }
    /// Set to make the next update fail with this message.
    let updateFailure = Mutex<String?>(nil)
    func updateDrive(device: Int, path: String?, rateLimiter: RateLimiterConfig?) throws(APIError) {
        if let failure = updateFailure.withLock({ $0 }) { throw .badRequest(failure) }
        let limiter = rateLimiter.map { "\($0.bandwidth?.size ?? 0)/\($0.ops?.size ?? 0)" } ?? "-"
        calls.withLock { $0.append("drive \(device) \(path ?? "-") \(limiter)") }
    }
    func updateInterface(device: Int, rx: RateLimiterConfig?, tx: RateLimiterConfig?) throws(APIError) {
        calls.withLock { $0.append("net \(device) \(rx?.ops?.size ?? 0) \(tx?.bandwidth?.size ?? 0)") }
    }
    /// Its drives (by the IDs configured) each served 5 requests, and its vCPU made 7 port reads.
    func counters() -> VMCounters {
        var counters = VMCounters()
        counters.exits.ioIn = 7
        let drives = launched.withLock { $0 }
        counters.drives = drives.map {
            (
                $0.driveID,
                VirtioDeviceStatistics(
                    name: "virtio-blk", notifications: 5, interrupts: 5, requests: 5, malformedRequests: 0, bytes: 512)
            )
        }
        return counters
    }
    /// The drives of the resources it was launched with.
    let launched = Mutex<[DriveConfig]>([])
}

/// Starts `FakeVM`s (or fails) and remembers the resources it was given.
final class FakeLauncher: VMLauncher {
    let vm: FakeVM
    let failure: String?
    let launched = Mutex<[VMResources]>([])
    let missingFiles: Set<String>

    init(vm: FakeVM = FakeVM(), failure: String? = nil, missingFiles: Set<String> = []) {
        self.vm = vm
        self.failure = failure
        self.missingFiles = missingFiles
    }

    func launch(_ resources: VMResources) async throws(APIError) -> any RunningVM {
        if let failure { throw .badRequest("Start microvm error: " + failure) }
        launched.withLock { $0.append(resources) }
        vm.launched.withLock { $0 = resources.drives }
        return vm
    }

    func unreadable(_ path: String) -> String? {
        missingFiles.contains(path) ? "No such file or directory" : nil
    }
}

/// The statuses `onExit` was called with.
final class Exits: Sendable {
    let statuses = Mutex<[Int32]>([])
}

func makeController(_ launcher: FakeLauncher = FakeLauncher(), exits: Exits? = nil) -> VMMController {
    // Quiet unless a test asks for a log.
    let logs = LogSink(instanceID: "test-vm")
    try? logs.configure(LoggerConfig(level: .off))
    return VMMController(
        instanceID: "test-vm", version: "1.12.0", launcher: launcher, logs: logs,
        onExit: { status in exits?.statuses.withLock { $0.append(status) } })
}

extension VMMController {
    func send(_ method: String, _ path: String, _ body: String = "") async -> APIResponse {
        await handle(method: method, path: path, body: Array(body.utf8))
    }
}

func json(_ response: APIResponse) -> JSONValue? { try? JSON.parse(response.body) }

let bootSource = #"{"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0"}"#

@Suite("Firecracker API: request rules (no KVM)")
struct ControllerTests {
    @Test func instanceInfoBeforeStart() async {
        let controller = makeController()
        let response = await controller.send("GET", "/")
        #expect(response.status == 200)
        #expect(
            String(decoding: response.body, as: UTF8.self)
                == #"{"id":"test-vm","state":"Not started","vmm_version":"1.12.0","app_name":"Firecracker"}"#)
        let version = await controller.send("GET", "/version")
        #expect(String(decoding: version.body, as: UTF8.self) == #"{"firecracker_version":"1.12.0"}"#)
    }

    @Test func machineConfigDefaultsPutAndPatch() async {
        let controller = makeController()
        let initial = await controller.send("GET", "/machine-config")
        #expect(
            String(decoding: initial.body, as: UTF8.self)
                == #"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#)
        #expect(await controller.send("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#).status == 204)
        #expect(await controller.send("PATCH", "/machine-config", #"{"mem_size_mib": 512}"#).status == 204)
        let after = json(await controller.send("GET", "/machine-config"))
        #expect(after?["vcpu_count"] == JSONValue.integer(2))
        #expect(after?["mem_size_mib"] == JSONValue.integer(512))
        // PUT needs both required fields; PATCH needs at least one field.
        let missing = await controller.send("PUT", "/machine-config", #"{"vcpu_count": 2}"#)
        #expect(missing.faultMessage?.contains("missing field `mem_size_mib`") == true)
        #expect(await controller.send("PATCH", "/machine-config", "{}").faultMessage == "Empty PATCH request.")
        // Nothing changed by the refused requests.
        #expect(json(await controller.send("GET", "/machine-config"))?["vcpu_count"] == JSONValue.integer(2))
    }

    @Test(arguments: [
        (#"{"vcpu_count": 0, "mem_size_mib": 128}"#, "The number of vCPUs must be greater than 0"),
        (#"{"vcpu_count": 33, "mem_size_mib": 128}"#, "The number of vCPUs must be greater than 0"),
        (#"{"vcpu_count": 256, "mem_size_mib": 128}"#, "`vcpu_count`"),
        (#"{"vcpu_count": -1, "mem_size_mib": 128}"#, "`vcpu_count`"),
        (#"{"vcpu_count": 1.5, "mem_size_mib": 128}"#, "`vcpu_count`"),
        (#"{"vcpu_count": "2", "mem_size_mib": 128}"#, "`vcpu_count`"),
        (#"{"vcpu_count": 1, "mem_size_mib": 0}"#, "The memory size (MiB) is either 0"),
        (#"{"vcpu_count": 1, "mem_size_mib": 1e30}"#, "`mem_size_mib`"),
        (#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551615}"#, "`mem_size_mib`"),
        (#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#, "unknown variant `1G`"),
        (#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": "yes"}"#, "`smt`"),
        (#"{"vcpu_count": 1, "mem_size_mib": 128, "colour": 1}"#, "unknown field `colour`"),
        (#"[1, 2]"#, "invalid type: sequence"),
        (#"{"vcpu_count": 1, "mem_size_mib": "#, "An error occurred when deserializing the json body"),
        ("not json", "An error occurred when deserializing the json body"),
    ])
    func badMachineConfig(body: String, expected: String) async {
        let controller = makeController()
        let response = await controller.send("PUT", "/machine-config", body)
        #expect(response.status == 400)
        #expect(response.faultMessage?.contains(expected) == true, "\(response.faultMessage ?? "no fault message")")
        #expect(json(await controller.send("GET", "/machine-config"))?["mem_size_mib"] == JSONValue.integer(128))
    }

    @Test func deprecatedFieldsGetTheHeader() async {
        let controller = makeController()
        let template = await controller.send(
            "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#)
        #expect(template.status == 204)
        #expect(template.headers.contains { $0 == ("Deprecation", "true") })
        let vsock = await controller.send("PUT", "/vsock", #"{"vsock_id": "root", "guest_cid": 3, "uds_path": "/tmp/v.sock"}"#)
        #expect(vsock.status == 204)
        #expect(vsock.headers.contains { $0 == ("Deprecation", "true") })
        // Even a refused request that names a deprecated field is flagged.
        let refused = await controller.send("PUT", "/vsock", #"{"vsock_id": "root", "guest_cid": 2, "uds_path": "/v"}"#)
        #expect(refused.status == 400)
        #expect(refused.headers.contains { $0 == ("Deprecation", "true") })
        let plain = await controller.send("PUT", "/vsock", #"{"guest_cid": 4, "uds_path": "/tmp/v.sock"}"#)
        #expect(plain.headers.isEmpty)
    }

    @Test func routingErrorsUseFirecrackersWording() async {
        let controller = makeController()
        #expect(
            await controller.send("GET", "/foo/bar").faultMessage == "Invalid request method and/or path: GET foo.")
        #expect(await controller.send("DELETE", "/drives/a").faultMessage == "Invalid request method and/or path: DELETE drives.")
        #expect(await controller.send("PUT", "/version", "{}").faultMessage == "Invalid request method and/or path: PUT version.")
        #expect(await controller.send("PUT", "/boot-source").faultMessage == "Empty PUT request.")
        #expect(await controller.send("PUT", "/nowhere").faultMessage == "Empty PUT request.")
        #expect(await controller.send("PATCH", "/vm").faultMessage == "Empty PATCH request.")
        #expect(await controller.send("GET", "/", "{}").faultMessage == "GET request cannot have a body.")
        #expect(await controller.send("PUT", "/drives", "{}").faultMessage == "The ID cannot be empty.")
        #expect(
            await controller.send("PUT", "/drives/a-b", "{}").faultMessage
                == "API Resource IDs can only contain alphanumeric characters and underscores.")
        #expect(await controller.send("PUT", "/snapshot", "{}").faultMessage == "Missing snapshot operation type.")
        for path in ["/balloon", "/mmds", "/cpu-config", "/pmem/p", "/hotplug/memory"] {
            let response = await controller.send("PUT", path, "{}")
            #expect(response.status == 400)
            #expect(response.faultMessage?.hasPrefix("The requested operation is not supported") == true, "\(path)")
        }
        let snapshot = await controller.send("PUT", "/snapshot/create", #"{"snapshot_path": "s", "mem_file_path": "m"}"#)
        #expect(snapshot.status == 400)
        #expect(snapshot.faultMessage == "The requested operation is not supported before starting the microVM.")
        #expect(
            await controller.send("PUT", "/snapshot/delete", "{}").faultMessage
                == "Invalid request method and/or path: PUT /snapshot/delete.")
    }

    @Test func snapshotRequestsFollowFirecrackersRules() async throws {
        let prefix = "An error occurred when deserializing the json body of a request: "
        let controller = makeController()
        let neither = await controller.send("PUT", "/snapshot/load", #"{"snapshot_path": "s"}"#)
        #expect(neither.faultMessage == prefix + "missing field: either `mem_backend` or `mem_file_path` is required.")
        let both = await controller.send(
            "PUT", "/snapshot/load",
            #"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#)
        #expect(both.faultMessage == prefix + "too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
        let uffd = await controller.send(
            "PUT", "/snapshot/load", #"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"}}"#)
        #expect(uffd.faultMessage?.hasPrefix("The requested operation is not supported: the Uffd memory backend") == true)
        // network_overrides: a list of {iface_id, host_dev_name}, each interface once.
        let twice = await controller.send(
            "PUT", "/snapshot/load",
            #"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "a", "host_dev_name": "u"}]}"#
        )
        #expect(twice.faultMessage == prefix + "network_overrides names the interface `a` twice.")
        let notList = await controller.send(
            "PUT", "/snapshot/load", #"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": {"iface_id": "a"}}"#)
        #expect(notList.faultMessage == prefix + "invalid type: `network_overrides` is map, expected a sequence.")
        let noTap = await controller.send(
            "PUT", "/snapshot/load", #"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a"}]}"#)
        #expect(noTap.status == 400 && noTap.faultMessage?.contains("host_dev_name") == true, "\(noTap.body)")
        let parsed = try SnapshotLoadConfig(
            parsing: JSON.parse(
                Array(
                    #"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "b", "host_dev_name": "u"}]}"#
                        .utf8)))
        #expect(parsed.networkOverrides == [.init(ifaceID: "a", hostDevName: "t"), .init(ifaceID: "b", hostDevName: "u")])
        let type = await controller.send(
            "PUT", "/snapshot/create", #"{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Partial"}"#)
        #expect(type.faultMessage == prefix + "unknown variant `Partial` for `snapshot_type`, expected `Full` or `Diff`.")
        // The deprecated field is flagged whatever the answer; this launcher cannot restore.
        let deprecated = await controller.send("PUT", "/snapshot/load", #"{"snapshot_path": "s", "mem_file_path": "m"}"#)
        #expect(deprecated.headers.contains { $0.0 == "Deprecation" && $0.1 == "true" })
        #expect(deprecated.faultMessage == "Load snapshot error: this launcher cannot restore snapshots.")
        #expect(await controller.state == .notStarted)
        // Once a boot resource is configured, a load is refused.
        _ = await controller.send("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#)
        let late = await controller.send(
            "PUT", "/snapshot/load", #"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#)
        #expect(
            late.faultMessage
                == "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
    }

    @Test func drivesKeepOneRootFirstAndReplaceByID() async {
        let controller = makeController()
        let data = #"{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false}"#
        let root = #"{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": true}"#
        #expect(await controller.send("PUT", "/drives/data", data).status == 204)
        #expect(await controller.send("PUT", "/drives/rootfs", root).status == 204)
        let second = #"{"drive_id": "other", "path_on_host": "/o.img", "is_root_device": true}"#
        #expect(
            await controller.send("PUT", "/drives/other", second).faultMessage
                == "Drive config error: A root block device already exists!")
        #expect(
            await controller.send("PUT", "/drives/x", data).faultMessage
                == "The id from the path does not match the id from the body!")
        // Same ID: replaced in place.
        let replaced = #"{"drive_id": "data", "path_on_host": "/e.img", "is_root_device": false, "cache_type": "Writeback"}"#
        #expect(await controller.send("PUT", "/drives/data", replaced).status == 204)
        let drives = await controller.resources.drives
        #expect(drives.map { $0.driveID } == ["rootfs", "data"])
        #expect(drives[1].pathOnHost == "/e.img")
        #expect(drives[1].cacheType == "Writeback")
        #expect(
            await controller.send(
                "PUT", "/drives/v", #"{"drive_id": "v", "socket": "/s", "is_root_device": false}"#
            ).faultMessage?.contains("vhost-user") == true)
        #expect(
            await controller.send("PUT", "/drives/z", #"{"drive_id": "z", "is_root_device": false}"#).faultMessage?
                .contains("missing field `path_on_host`") == true)
    }

    @Test func networkInterfacesRefuseDuplicateMACs() async {
        let controller = makeController()
        let eth0 = #"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01"}"#
        #expect(await controller.send("PUT", "/network-interfaces/eth0", eth0).status == 204)
        let eth1 = #"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "aa:fc:00:00:00:01"}"#
        #expect(
            await controller.send("PUT", "/network-interfaces/eth1", eth1).faultMessage
                == "Network config error: The MAC address is already in use: aa:fc:00:00:00:01")
        #expect(
            await controller.send("PUT", "/network-interfaces/eth9", eth0).faultMessage
                == "The id from the path [eth9] does not match the id from the body [eth0]!")
        let badMAC = #"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "aa:fc:00:00:00"}"#
        #expect(
            await controller.send("PUT", "/network-interfaces/eth1", badMAC).faultMessage?.contains(
                "The provided MAC address is invalid.") == true)
        let config = json(await controller.send("GET", "/vm/config"))
        guard case .array(let interfaces)? = config?["network-interfaces"] else {
            Issue.record("no interfaces")
            return
        }
        #expect(interfaces.count == 1)
        #expect(interfaces.first?["guest_mac"] == JSONValue.string("aa:fc:00:00:00:01"))
    }

    @Test func vmConfigShowsEveryKeyInFirecrackersOrder() async {
        let controller = makeController()
        let text = String(decoding: (await controller.send("GET", "/vm/config")).body, as: UTF8.self)
        #expect(
            text
                == #"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null}"#
        )
    }

    @Test func bootSourceFilesAreCheckedWhenNamed() async {
        let controller = makeController(FakeLauncher(missingFiles: ["/nope"]))
        let response = await controller.send("PUT", "/boot-source", #"{"kernel_image_path": "/nope"}"#)
        #expect(
            response.faultMessage
                == "Boot source error: The kernel file cannot be opened: No such file or directory")
        #expect(await controller.resources.bootSource == nil)
    }

    @Test func lifecycleRulesBeforeAndAfterStart() async throws {
        let exits = Exits()
        let launcher = FakeLauncher()
        let controller = makeController(launcher, exits: exits)
        // Before start: runtime-only requests are refused.
        for (method, path, body) in [
            ("PATCH", "/vm", #"{"state": "Paused"}"#),
            ("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#),
            ("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#),
            ("PATCH", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "/x"}"#),
        ] {
            #expect(
                await controller.send(method, path, body).faultMessage
                    == "The requested operation is not supported before starting the microVM.", "\(method) \(path)")
        }
        #expect(
            await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).faultMessage
                == "Start microvm error: Cannot start microvm without kernel configuration.")
        #expect(await controller.send("PUT", "/boot-source", bootSource).status == 204)
        #expect(await controller.send("PUT", "/entropy", "{}").status == 204)
        // PUT /serial: Firecracker 1.13's one field, unknown ones refused, the launch sees it.
        #expect(
            await controller.send("PUT", "/serial", #"{"serial_out_path": "/s", "rate_limiter": null}"#).faultMessage?
                .contains("unknown field `rate_limiter`") == true)
        #expect(await controller.send("PUT", "/serial", #"{"serial_out_path": "/s"}"#).status == 204)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(launcher.launched.withLock { $0.count } == 1)
        #expect(launcher.launched.withLock { $0.first?.entropy } != nil)
        #expect(launcher.launched.withLock { $0.first?.serial?.serialOutPath } == "/s")
        #expect(json(await controller.send("GET", "/"))?["state"] == JSONValue.string("Running"))

        // After start: configuration is refused, runtime requests work.
        for (method, path, body) in [
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#),
            ("PUT", "/boot-source", bootSource),
            ("PUT", "/drives/d", #"{"drive_id": "d", "path_on_host": "/d", "is_root_device": false}"#),
            ("PUT", "/actions", #"{"action_type": "InstanceStart"}"#),
            ("PUT", "/serial", "{}"),
        ] {
            #expect(
                await controller.send(method, path, body).faultMessage
                    == "The requested operation is not supported after starting the microVM.", "\(method) \(path)")
        }
        #expect(await controller.send("PATCH", "/vm", #"{"state": "Paused"}"#).status == 204)
        #expect(json(await controller.send("GET", "/"))?["state"] == JSONValue.string("Paused"))
        #expect(await controller.send("PATCH", "/vm", #"{"state": "Resumed"}"#).status == 204)
        #expect(json(await controller.send("GET", "/"))?["state"] == JSONValue.string("Running"))
        #expect(
            await controller.send("PATCH", "/vm", #"{"state": "Stopped"}"#).faultMessage?.contains(
                "unknown variant `Stopped`") == true)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#).status == 204)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).status == 204)
        #expect(launcher.vm.calls.withLock { $0 } == ["pause", "resume", "ctrl-alt-del"])

        // The VM's end reaches onExit with its status.
        launcher.vm.end(0)
        for _ in 0..<200 where exits.statuses.withLock({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(5)) }
        #expect(exits.statuses.withLock { $0 } == [0])
    }

    @Test func aFailedStartLeavesTheVMUnstarted() async {
        let controller = makeController(FakeLauncher(failure: "cannot open /dev/kvm"))
        #expect(await controller.send("PUT", "/boot-source", bootSource).status == 204)
        let response = await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(response.faultMessage == "Start microvm error: cannot open /dev/kvm")
        #expect(json(await controller.send("GET", "/"))?["state"] == JSONValue.string("Not started"))
        // Configuration may continue.
        #expect(await controller.send("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64}"#).status == 204)
    }

    @Test func ctrlAltDelWithAFullKeyboardBufferIsAnError() async {
        let controller = makeController(FakeLauncher(vm: FakeVM(keyboardRoom: false)))
        _ = await controller.send("PUT", "/boot-source", bootSource)
        _ = await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        let response = await controller.send("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#)
        #expect(response.faultMessage?.contains("i8042 internal buffer full") == true)
    }

    @Test func configFileBuildsTheSameResources() throws {
        let file = #"""
            {
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0 reboot=k"},
              "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}],
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
              "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
              "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
              "entropy": {},
              "balloon": null
            }
            """#
        let resources = try VMResources(configFile: JSON.parse(Array(file.utf8)))
        #expect(resources.machine.vcpuCount == 2)
        #expect(resources.drives.map(\.driveID) == ["rootfs"])
        #expect(resources.networkInterfaces.first?.hostDevName == "tap0")
        #expect(resources.vsock?.guestCID == 3)
        #expect(resources.entropy != nil)
        #expect(throws: APIError.self) { try VMResources(configFile: JSON.parse(Array(#"{"drives": []}"#.utf8))) }
        #expect(throws: APIError.self) {
            try VMResources(configFile: JSON.parse(Array(#"{"boot-source": {"kernel_image_path": "/k"}}"#.utf8)))
        }
        #expect(throws: APIError.self) {
            try VMResources(
                configFile: JSON.parse(
                    Array(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [], "balloon": {"amount_mib": 1}}"#.utf8)))
        }
    }

    @Test func commandLineAddsQuirksAndTheRootDevice() throws {
        var resources = VMResources()
        resources.bootSource = BootSource(kernelImagePath: "/k")
        #expect(
            MachineLauncher.commandLine(resources, quirks: ["nokaslr"])
                == MachineLauncher.defaultBootArgs + " nokaslr")
        resources.bootSource?.bootArgs = "console=ttyS0"
        try resources.put(DriveConfig(driveID: "rootfs", pathOnHost: "/r", isRootDevice: true, isReadOnly: true))
        #expect(MachineLauncher.commandLine(resources, quirks: []) == "console=ttyS0 root=/dev/vda ro")
    }
}

@Suite("Firecracker API: JSON text (no KVM)")
struct JSONTextTests {
    @Test func stringsAreEscapedAndRoundTrip() throws {
        let value = JSONValue.members([
            "path": .string("/a/b \"c\" \\ \n\t\u{1}é"), "n": .integer(-5), "u": .unsigned(UInt64.max),
            "list": .array([.bool(true), .null, .number(1.5)]),
        ])
        let text = String(decoding: value.text, as: UTF8.self)
        #expect(text == #"{"path":"/a/b \"c\" \\ \n\t\u0001é","n":-5,"u":18446744073709551615,"list":[true,null,1.5]}"#)
        // Parsed back, members come sorted by key; the values are equal.
        let parsed = try JSON.parse(value.text)
        #expect(parsed["path"] == .string("/a/b \"c\" \\ \n\t\u{1}é"))
        #expect(parsed["u"] == .unsigned(UInt64.max))
        #expect(parsed["n"] == .integer(-5))
    }
}

@Suite("Firecracker API: what is refused until it works (no KVM)")
struct NotYetTests {
    @Test func rateLimitersAndMTUAreAccepted() async {
        let controller = makeController()
        let limited =
            #"{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#
        #expect(await controller.send("PUT", "/drives/d", limited).status == 204)
        #expect(await controller.resources.drives.first?.rateLimiter?.bandwidth?.size == 1000)
        let disabled =
            #"{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "rate_limiter": {"ops": {"size": 0, "refill_time": 100}}}"#
        #expect(await controller.send("PUT", "/drives/d", disabled).status == 204)
        let huge =
            #"{"ops": {"size": 9223372036854775807, "one_time_burst": 9223372036854775807, "refill_time": 9223372036854775807}}"#
        let net = #"{"iface_id": "e", "host_dev_name": "tap0", "tx_rate_limiter": "# + huge + "}"
        #expect(await controller.send("PUT", "/network-interfaces/e", net).status == 204)
        let unknown =
            #"{"iface_id": "e", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}, "x": 1}}"#
        #expect(
            await controller.send("PUT", "/network-interfaces/e", unknown).faultMessage?.contains("unknown field `x`") == true)
        let lowMTU = #"{"iface_id": "f", "host_dev_name": "tap1", "mtu": 67}"#
        #expect(
            await controller.send("PUT", "/network-interfaces/f", lowMTU).faultMessage
                == "Network config error: The MTU 67 is invalid: it must be between 68 and 65535.")
        let missingRefill = #"{"iface_id": "f", "host_dev_name": "tap1", "rx_rate_limiter": {"ops": {"size": 5}}}"#
        #expect(
            await controller.send("PUT", "/network-interfaces/f", missingRefill).faultMessage?.contains(
                "missing field `refill_time`") == true)
        #expect(await controller.resources.networkInterfaces.count == 1)
        let mtu = #"{"iface_id": "f", "host_dev_name": "tap1", "mtu": 9000}"#
        #expect(await controller.send("PUT", "/network-interfaces/f", mtu).status == 204)
        #expect(await controller.resources.networkInterfaces.last?.mtu == 9000)
        let interfaces = json(await controller.send("GET", "/vm/config"))?["network-interfaces"]
        guard case .array(let list)? = interfaces, list.count == 2 else {
            Issue.record("network-interfaces: \(String(describing: interfaces))")
            return
        }
        #expect(list[1]["mtu"] == .integer(9000))
    }
}

@Suite("Firecracker API: PATCH of drives and interfaces after start (no KVM)")
struct PatchTests {
    func started() async -> (VMMController, FakeLauncher) {
        let launcher = FakeLauncher()
        let controller = makeController(launcher)
        _ = await controller.send("PUT", "/boot-source", bootSource)
        _ = await controller.send(
            "PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "/d", "is_root_device": false}"#)
        _ = await controller.send(
            "PUT", "/drives/root",
            #"{"drive_id": "root", "path_on_host": "/r", "is_root_device": true, "rate_limiter": {"ops": {"size": 7, "refill_time": 100}, "bandwidth": {"size": 9, "refill_time": 100}}}"#
        )
        _ = await controller.send("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap0"}"#)
        #expect(await controller.send("PUT", "/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        return (controller, launcher)
    }

    @Test func patchDriveSwapsThePathAndMergesTheLimiter() async throws {
        let (controller, launcher) = await started()
        // The root drive is first: device 0; "data" is device 1.
        #expect(
            await controller.send("PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/new"}"#).status == 204)
        #expect(
            await controller.send(
                "PATCH", "/drives/root", #"{"drive_id": "root", "rate_limiter": {"ops": {"size": 3, "refill_time": 10}}}"#
            ).status == 204)
        #expect(
            await controller.send(
                "PATCH", "/network-interfaces/eth0",
                #"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 4, "refill_time": 10}}}"#
            ).status == 204)
        #expect(launcher.vm.calls.withLock { $0 } == ["drive 1 /new -", "drive 0 - 0/3", "net 2 4 0"])
        let drives = await controller.resources.drives
        #expect(drives[1].pathOnHost == "/new")
        // The ops bucket is replaced, the bandwidth bucket kept.
        #expect(drives[0].rateLimiter?.ops?.size == 3)
        #expect(drives[0].rateLimiter?.bandwidth?.size == 9)
        #expect(await controller.resources.networkInterfaces[0].rxRateLimiter?.ops?.size == 4)
    }

    @Test func patchErrorsUseFirecrackersWording() async {
        let (controller, launcher) = await started()
        #expect(
            await controller.send("PATCH", "/drives/data", #"{"drive_id": "other", "path_on_host": "/x"}"#).faultMessage
                == "The id from the path does not match the id from the body!")
        #expect(
            await controller.send("PATCH", "/drives/data", #"{"drive_id": "data", "is_read_only": true}"#).faultMessage?
                .contains("unknown field `is_read_only`") == true)
        #expect(
            await controller.send("PATCH", "/drives/none", #"{"drive_id": "none", "path_on_host": "/x"}"#).faultMessage?
                .hasPrefix("Drive config error: Unable to patch the block device: ") == true)
        #expect(
            await controller.send("PATCH", "/drives/data", #"{"drive_id": "data"}"#).faultMessage?.hasPrefix(
                "Drive config error: Unable to patch the block device: ") == true)
        #expect(
            await controller.send("PATCH", "/network-interfaces/eth0", #"{"iface_id": "eth1"}"#).faultMessage
                == "The id from the path [eth0] does not match the id from the body [eth1]!")
        #expect(
            await controller.send("PATCH", "/network-interfaces/eth1", #"{"iface_id": "eth1"}"#).faultMessage?.hasPrefix(
                "Network config error: Unable to update the net device: ") == true)
        #expect(
            await controller.send("PATCH", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "t"}"#)
                .faultMessage?.contains("unknown field `host_dev_name`") == true)
        // A failure in the VM leaves the configuration as it was.
        launcher.vm.updateFailure.withLock { $0 = "Drive config error: Unable to patch the block device: nope" }
        #expect(
            await controller.send("PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/x"}"#).faultMessage
                == "Drive config error: Unable to patch the block device: nope")
        #expect(await controller.resources.drives[1].pathOnHost == "/d")
        #expect(launcher.vm.calls.withLock { $0 }.isEmpty)
    }
}

@Suite("Firecracker API: network_overrides on a snapshot load (no KVM)")
struct NetworkOverrideTests {
    /// What a snapshot taken through the API keeps: one drive, two interfaces.
    static let saved = try! VMResources(
        configFile: JSON.parse(
            Array(
                #"""
                {"boot-source": {"kernel_image_path": "k"},
                 "drives": [{"drive_id": "root", "path_on_host": "d", "is_root_device": true, "is_read_only": false}],
                 "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "eth1", "host_dev_name": "tap1"}]}
                """#.utf8)))

    static func machine() -> MachineConfiguration {
        var config = MachineConfiguration(guest: .elf([]))
        config.virtioDevices = [
            .block(path: "d", readOnly: false, id: "root"), .net(tap: "tap0", mac: nil),
            .net(tap: "tap1", mac: [6, 0, 0, 0, 0, 9]),
        ]
        return config
    }

    @Test("an override names an interface by its ID: its device opens the new TAP, and the saved configuration says so")
    func overridesByID() throws {
        var config = Self.machine()
        var saved: VMResources? = Self.saved
        try MachineLauncher.apply([.init(ifaceID: "eth1", hostDevName: "tapB")], to: &config, saved: &saved)
        #expect(config.virtioDevices[1] == .net(tap: "tap0", mac: nil))
        #expect(config.virtioDevices[2] == .net(tap: "tapB", mac: [6, 0, 0, 0, 0, 9]))
        #expect(saved?.networkInterfaces.map(\.hostDevName) == ["tap0", "tapB"])
        #expect(saved?.networkInterfaces.map(\.ifaceID) == ["eth0", "eth1"])
    }

    @Test("an unknown interface, or a snapshot without interface IDs, is refused and nothing changes")
    func refusals() {
        var config = Self.machine()
        var saved: VMResources? = Self.saved
        do {
            try MachineLauncher.apply([.init(ifaceID: "eth9", hostDevName: "tapB")], to: &config, saved: &saved)
            Issue.record("an override of an unknown interface was accepted")
        } catch {
            #expect(error.description.contains("`eth9`, which the snapshot does not have"), "\(error)")
        }
        var none: VMResources? = nil
        do {
            try MachineLauncher.apply([.init(ifaceID: "eth0", hostDevName: "tapB")], to: &config, saved: &none)
            Issue.record("an override without saved IDs was accepted")
        } catch {
            #expect(error.description.contains("it was not taken through the API"), "\(error)")
        }
        #expect(config.virtioDevices == Self.machine().virtioDevices)
        #expect(saved == Self.saved)
        // No overrides: nothing is needed, not even saved IDs.
        #expect(throws: Never.self) { try MachineLauncher.apply([], to: &config, saved: &none) }
    }
}
