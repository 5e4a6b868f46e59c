import ArgumentParser
import Glibc
import Logging
import SwiftVisor
import VisorAPI
import VisorHost
import VisorKVM

/// The Firecracker version whose API and command line this entry point follows; `--version`
/// and `GET /version` report it, since clients compare it with the versions they support.
let firecrackerAPIVersion = "1.12.0"

/// `swiftvisor firecracker`, and `swiftvisor` started under the name `firecracker`: Firecracker's
/// command line, its REST API on a Unix socket and its configuration file, over one VM.
struct Firecracker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firecracker",
        abstract: "Serve Firecracker's REST API on a Unix socket for one VM (Firecracker-compatible entry point).",
        discussion: """
            Started under the name `firecracker` (a symbolic link to swiftvisor), swiftvisor behaves \
            as this subcommand, so that engines which spawn Firecracker (Kata Containers, \
            firecracker-containerd, the Go SDK) can run it unchanged. The process ends when the VM \
            does, with the VM's exit status.
            """)

    @Option(name: .customLong("api-sock"), help: "The API's Unix socket; it must not exist.")
    var apiSock = "/run/firecracker.socket"

    @Option(name: .customLong("id"), help: "The instance ID that GET / reports.")
    var id = "anonymous-instance"

    @Option(name: .customLong("config-file"), help: "Start a VM at once from this JSON file (the shape of GET /vm/config).")
    var configFile: String?

    @Flag(name: .customLong("no-api"), help: "Serve no API (needs --config-file).")
    var noAPI = false

    @Option(name: .customLong("log-path"), help: "An existing file or FIFO for the log (default: standard error).")
    var logPath: String?

    @Option(name: .customLong("level"), help: "The log level: Off, Error, Warning, Info (default), Debug or Trace.")
    var level: String?

    @Option(name: .customLong("module"), help: "Log only lines from Swift modules whose name starts with this.")
    var module: String?

    @Flag(name: .customLong("show-level"), help: "Show each log line's level.")
    var showLevel = false

    @Flag(name: .customLong("show-log-origin"), help: "Show each log line's source file and line.")
    var showLogOrigin = false

    @Option(name: .customLong("metrics-path"), help: "An existing file or FIFO for the metrics, one JSON object per line.")
    var metricsPath: String?

    @Flag(
        name: .customLong("boot-timer"),
        help: "Log the guest's boot time when it writes 123 to port 0x3F0 (Firecracker's boot timer).")
    var bootTimer = false

    @Option(name: .customLong("seccomp-filter"), help: "Accepted and ignored: SwiftVisor installs its own per-thread filters.")
    var seccompFilter: String?

    @Flag(name: .customLong("no-seccomp"), help: "Do not confine the VM's threads with seccomp filters.")
    var noSeccomp = false

    @Option(name: .customLong("http-api-max-payload-size"), help: "The largest request body, in bytes.")
    var httpAPIMaxPayloadSize = 51_200

    @Option(name: .customLong("mmds-size-limit"), help: "Accepted; MMDS is not supported.")
    var mmdsSizeLimit: Int?

    @Option(name: .customLong("metadata"), help: "Accepted; MMDS is not supported.")
    var metadata: String?

    @Option(name: .customLong("start-time-us"), help: "Accepted; not used.")
    var startTimeUs: UInt64?

    @Option(name: .customLong("start-time-cpu-us"), help: "Accepted; not used.")
    var startTimeCPUUs: UInt64?

    @Option(name: .customLong("parent-cpu-time-us"), help: "Accepted; not used.")
    var parentCPUTimeUs: UInt64?

    @Flag(name: .customLong("version"), help: "Print the Firecracker version this API follows, then exit.")
    var version = false

    func validate() throws {
        if noAPI, configFile == nil, !version {
            throw ValidationError("--no-api requires --config-file: without the API nothing could start a VM")
        }
        if seccompFilter != nil, noSeccomp {
            throw ValidationError("give either --seccomp-filter or --no-seccomp, not both")
        }
        if let level, LogLevelFilter(name: level) == nil {
            throw ValidationError("--level must be one of Off, Error, Warning, Info, Debug, Trace")
        }
        if httpAPIMaxPayloadSize < 1 { throw ValidationError("--http-api-max-payload-size must be at least 1") }
        if id.isEmpty || id.utf8.count > 64 || !id.allSatisfy({ $0 == "_" || $0 == "-" || $0.isLetter || $0.isNumber }) {
            throw ValidationError("--id must be 1 to 64 letters, digits, '-' or '_'")
        }
    }

    /// Serves on Swift's task pool while the calling (main) thread parks with the control
    /// signals still blocked (see main.swift); the process exits when the VM or the server
    /// is done.
    func run() throws {
        if version {
            print("Firecracker v\(firecrackerAPIVersion)\n")
            return
        }
        let command = self
        Task.detached {
            let status = await command.serve()
            Glibc.exit(status)
        }
        while true { _ = sleep(3600) }
    }

    /// Returns the process's exit status.
    private func serve() async -> Int32 {
        // Read and checked before anything else: a bad file ends the process at once, with
        // one line on standard error and nothing left behind.
        let fileResources = configFile.map(readConfigurationFile)

        // Then the log, as Firecracker sets it up before anything else it logs.
        let logs = LogSink(instanceID: id)
        let cliLogger = LoggerConfig(
            logPath: logPath, level: level.flatMap(LogLevelFilter.init(name:)), showLevel: showLevel,
            showLogOrigin: showLogOrigin, module: module)
        do throws(APIError) { try logs.configure(cliLogger) } catch { fail(error.description) }
        let mainLog = logs.logger(thread: "main")
        mainLog.info("Running Firecracker v\(firecrackerAPIVersion)")
        let metrics = MetricsSink()
        if let metricsPath {
            do throws(APIError) { try metrics.configure(MetricsConfig(metricsPath: metricsPath)) } catch {
                fail(error.description)
            }
        }
        let vmmLog = logs.logger(thread: "fc_vmm")
        let log: @Sendable (String) -> Void = { vmmLog.warning("\($0)") }
        reportIgnoredOptions { mainLog.warning("\($0)") }

        let exit = ExitSignal()
        // SIGINT and SIGTERM stop a running VM (the process then ends with 128 + the
        // signal); before InstanceStart they end the process at once, removing the socket.
        let socketPath = noAPI ? nil : apiSock
        let signals = SignalRouter(
            confine: false,
            unattached: { signal in
                if let socketPath { HostIO.removeFile(socketPath) }
                _exit(128 + signal)
            })
        var launcher = MachineLauncher(
            seccomp: !noSeccomp, log: log, onStart: { machine in signals.attach(machine) })
        launcher.bootTimer = bootTimer
        launcher.bootTimerLog = { vmmLog.info("\($0)") }
        let controller = VMMController(
            instanceID: id, version: firecrackerAPIVersion, launcher: launcher, logs: logs, metrics: metrics,
            onExit: { status in exit.fire(status) })

        var server: APIServer?
        if !noAPI {
            var limits = APIServer.Limits()
            limits.maxPayload = httpAPIMaxPayloadSize
            do {
                if let descriptor = HostIO.takeInheritedListeningSocket(path: apiSock) {
                    server = try await APIServer.adopt(
                        descriptor: descriptor, path: apiSock, limits: limits, controller: controller)
                } else {
                    server = try await APIServer.bind(path: apiSock, limits: limits, controller: controller)
                }
            } catch {
                fail(error.description)
            }
        }
        let serving = server.map { server in Task { await server.run() } }

        if let fileResources {
            do throws(APIError) {
                try await controller.configure(fileResources)
            } catch {
                await shutDown(server)
                fail(error.description)
            }
            let response = await controller.handle(
                method: "PUT", path: "/actions", body: Array(#"{"action_type":"InstanceStart"}"#.utf8))
            if let message = response.faultMessage {
                await shutDown(server)
                fail(message)
            }
        }

        var status = await exit.wait()
        signals.detach()
        await shutDown(server)
        serving?.cancel()
        if let signal = signals.interruptedBy {
            mainLog.warning("Stopped by signal \(signal).")
            status = 128 + signal
        }
        if status == 0 {
            mainLog.info("Firecracker exiting successfully. exit_code=0")
        } else {
            mainLog.error("Firecracker exiting with error. exit_code=\(status)")
        }
        return status
    }

    private func shutDown(_ server: APIServer?) async {
        guard let server else { return }
        await server.close()
    }

    private func reportIgnoredOptions(_ log: (String) -> Void) {
        var ignored: [String] = []
        if seccompFilter != nil { ignored.append("--seccomp-filter (SwiftVisor's own filters apply)") }
        if mmdsSizeLimit != nil || metadata != nil { ignored.append("--mmds-size-limit/--metadata (no MMDS)") }
        if !ignored.isEmpty { log("accepted but not honoured: " + ignored.joined(separator: ", ")) }
    }
}

/// Carries the VM's exit status from the controller to the main task.
final class ExitSignal: Sendable {
    private let stream: AsyncStream<Int32>
    private let continuation: AsyncStream<Int32>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream(of: Int32.self) }

    func fire(_ status: Int32) { continuation.yield(status) }

    func wait() async -> Int32 {
        for await status in stream { return status }
        return 0
    }
}

/// Reads and checks a Firecracker configuration file (for `firecracker --config-file` and
/// `boot --config-file`); a file that cannot be read or breaks a rule is a one-line error.
func readConfigurationFile(_ path: String) -> VMResources {
    do {
        let bytes = try HostIO.readFile(path, limit: 1 << 20)
        return try VMResources(configFile: try JSON.parse(bytes))
    } catch let error as MachineError {
        fail(error.description)
    } catch {
        fail("the configuration file \(path): \(error)")
    }
}
