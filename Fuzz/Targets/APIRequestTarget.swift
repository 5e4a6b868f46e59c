import FuzzDeviceTargets
import VisorAPI

/// The paths a request picks from (byte 1 of each request); 0xFF reads a raw path instead.
private let paths = [
    "/", "/version", "/vm/config", "/machine-config", "/boot-source", "/drives/rootfs", "/drives/data",
    "/network-interfaces/eth0", "/network-interfaces/eth1", "/vsock", "/entropy", "/actions", "/vm",
    "/snapshot/create", "/snapshot/load", "/logger", "/metrics", "/balloon", "/mmds", "/drives", "/drives/a-b",
    "/vm/config/extra", "/nowhere", "//", "/drives/%00",
]
private let methods = ["GET", "PUT", "PATCH", "DELETE", "get", ""]

/// Firecracker's request rules (`RequestRules.apply`) over a sequence of requests, each
/// `method byte, path byte [raw path, 0x00], body up to 0xFF` (0xFF never occurs in UTF-8,
/// so JSON seeds split cleanly). The phase follows the requests: `InstanceStart` starts a
/// pretend VM, `PATCH /vm` pauses and resumes it.
///
/// Checks: every answer is 200 with a JSON body, 204 with none, or 400 with a JSON
/// `fault_message` that is not empty; a refused request leaves the configuration exactly
/// as it was; the configuration always has at most one root drive, first in the list, no
/// two drives or interfaces with one ID, no two interfaces with one MAC or TAP, and a
/// machine configuration within Firecracker's limits; `GET /vm/config` shows as many
/// drives and interfaces as the configuration holds.
func fuzzAPIRequest(_ data: [UInt8]) {
    let rules = RequestRules(
        instanceID: "fuzz", version: "1.12.0", unreadable: { $0.hasPrefix("/missing") ? "No such file" : nil })
    var resources = VMResources()
    var phase = Phase.notStarted
    var requests = data.split(separator: 0xFF, omittingEmptySubsequences: false)[...]
    while let request = requests.popFirst() {
        var reader = ByteReader(Array(request))
        let method = methods[Int(reader.byte()) % methods.count]
        let pick = reader.byte()
        var path: String
        var body: [UInt8]
        if pick == 0xFE {
            let raw = reader.rest()
            let end = raw.firstIndex(of: 0) ?? raw.endIndex
            path = String(decoding: raw[..<end], as: UTF8.self)
            body = end < raw.endIndex ? Array(raw[(end + 1)...]) : []
        } else {
            path = paths[Int(pick) % paths.count]
            body = reader.rest()
        }
        if method == "GET", pick & 1 == 0 { body = [] }
        if path.isEmpty { path = "/" }
        let before = resources
        var deprecated = false
        let outcome: RequestOutcome
        do {
            outcome = try rules.apply(
                method: method, path: path, body: body, to: &resources, phase: phase, deprecated: &deprecated)
        } catch {
            precondition(resources == before, "a refused request changed the configuration")
            precondition(!error.description.isEmpty, "an empty fault message")
            let fault = APIResponse.fault(error.description)
            precondition(fault.faultMessage == error.description, "the fault message does not round-trip")
            continue
        }
        switch outcome {
        case .response(let response):
            switch response.status {
            case 200: precondition((try? JSON.parse(response.body)) != nil, "a 200 body that is not JSON")
            case 204: precondition(response.body.isEmpty, "a 204 with a body")
            default: preconditionFailure("status \(response.status) from the rules")
            }
            if method == "GET", path == "/vm/config", case .array(let drives)? = (try? JSON.parse(response.body))?["drives"] {
                precondition(drives.count == resources.drives.count, "GET /vm/config lost a drive")
            }
        case .runtime(let runtime):
            precondition(resources == before, "a runtime request changed the configuration")
            switch (runtime, phase) {
            case (.instanceStart, .notStarted): phase = .started(paused: false)
            case (.pause, .started): phase = .started(paused: true)
            case (.resume, .started): phase = .started(paused: false)
            case (.sendCtrlAltDel, .started), (.flushMetrics, .started): break
            case (.updateDrive(let index, let update), .started):
                precondition(resources.drives.indices.contains(index), "PATCH of a drive that is not there")
                precondition(resources.drives[index].driveID == update.driveID, "PATCH of another drive")
            case (.updateInterface(let index, let update), .started):
                precondition(resources.networkInterfaces.indices.contains(index), "PATCH of an interface that is not there")
                precondition(resources.networkInterfaces[index].ifaceID == update.ifaceID, "PATCH of another interface")
            case (.configureLogger, .notStarted), (.configureMetrics, .notStarted): break
            default: preconditionFailure("\(runtime) allowed in phase \(phase)")
            }
        }
        checkInvariants(resources)
    }
}

private func checkInvariants(_ resources: VMResources) {
    let roots = resources.drives.indices.filter { resources.drives[$0].isRootDevice }
    precondition(roots.count <= 1, "two root drives")
    precondition(roots.allSatisfy { $0 == 0 }, "the root drive is not first")
    precondition(Set(resources.drives.map(\.driveID)).count == resources.drives.count, "two drives with one ID")
    let interfaces = resources.networkInterfaces
    precondition(Set(interfaces.map(\.ifaceID)).count == interfaces.count, "two interfaces with one ID")
    precondition(Set(interfaces.map(\.hostDevName)).count == interfaces.count, "two interfaces on one TAP")
    let macs = interfaces.compactMap(\.guestMAC)
    precondition(Set(macs).count == macs.count, "two interfaces with one MAC")
    let machine = resources.machine
    precondition(machine.vcpuCount >= 1 && machine.vcpuCount <= MachineConfig.maximumVCPUs, "vCPU count out of range")
    precondition(machine.memSizeMiB >= 1 && machine.memSizeMiB <= MachineConfig.maximumMemoryMiB, "memory out of range")
    if let vsock = resources.vsock { precondition(vsock.guestCID >= 3, "a reserved CID") }
}
