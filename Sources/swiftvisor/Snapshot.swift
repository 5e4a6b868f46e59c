public import ArgumentParser
public import SwiftVisor
import VisorHost

extension SnapshotKind: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument.lowercased() {
        case "full": self = .full
        case "diff": self = .diff
        default: return nil
        }
    }
}

/// Taking a snapshot of a running VM from the command line: SIGHUP pauses it, writes the
/// two files, and resumes or stops it. Shared by `run` and `boot`.
struct SnapshotOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "On SIGHUP, write a snapshot's state to this file (with --snapshot-memory). The file is created now.",
            valueName: "file"))
    var snapshotState: String?

    @Option(help: ArgumentHelp("On SIGHUP, write the snapshot's guest memory to this file.", valueName: "file"))
    var snapshotMemory: String?

    @Option(help: "full (all memory) or diff (only pages written since the last snapshot; logs dirty pages from the start).")
    var snapshotKind: SnapshotKind = .full

    @Flag(help: "Stop the VM after the snapshot instead of letting it run on.")
    var stopAfterSnapshot = false

    func validate() throws {
        if (snapshotState == nil) != (snapshotMemory == nil) {
            throw ValidationError("--snapshot-state and --snapshot-memory go together")
        }
    }

    func apply(to config: inout MachineConfiguration) {
        if snapshotState != nil, snapshotKind == .diff { config.trackDirtyPages = true }
    }

    /// Opens both files now, before the seccomp filter forbids `open`, and returns what
    /// SIGHUP does; nil without the options.
    func handler() -> (@Sendable (Machine) -> Void)? {
        guard let statePath = snapshotState, let memoryPath = snapshotMemory else { return nil }
        let state: HostOutputFile, memory: HostOutputFile
        do {
            state = try HostIO.openOutputFile(statePath)
            memory = try HostIO.openReadWriteFile(memoryPath)
        } catch {
            fail("cannot create the snapshot files: \(error.reason)")
        }
        let kind = snapshotKind, stop = stopAfterSnapshot
        return { machine in
            let started = HostIO.monotonicNanoseconds()
            machine.pauseBlocking()
            do {
                try machine.snapshot(state: state, statePath: statePath, memory: memory, memoryPath: memoryPath, kind: kind)
                let micros = (HostIO.monotonicNanoseconds() - started) / 1000
                HostIO.printError(
                    "swiftvisor: \(kind.rawValue.lowercased()) snapshot written to \(statePath) and \(memoryPath) in \(micros) us"
                )
            } catch {
                HostIO.printError("swiftvisor: snapshot failed: \(error)")
            }
            if stop { machine.requestStop() } else { machine.resume() }
        }
    }
}

extension SwiftVisorCommand {
    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Resume a VM from a snapshot (its state file and memory file).",
            discussion: """
                The machine is built as the snapshot says (memory, vCPUs, platform, ports), its \
                memory file mapped privately so that pages load when the guest touches them, and \
                it runs on from where it was paused, with COM1 on the terminal. The snapshot \
                options take a further snapshot of the restored VM.
                """)

        @Option(help: ArgumentHelp("The snapshot's state file.", valueName: "file"))
        var state: String

        @Option(help: ArgumentHelp("The snapshot's memory file (a full snapshot, or a diff merged onto one).", valueName: "file"))
        var memory: String

        @Flag(help: "Do not confine the VMM's threads with their seccomp filters (for strace or gdb).")
        var noSeccomp = false

        @OptionGroup var output: OutputOptions
        @OptionGroup(title: "Snapshots") var snapshots: SnapshotOptions

        func run() throws {
            let snapshot: MachineSnapshot
            do { snapshot = try MachineSnapshot(statePath: state, memoryPath: memory) } catch { fail(error.description) }
            var config = MachineConfiguration(restoring: snapshot)
            config.seccomp = !noSeccomp
            config.collectStatistics = output.collectsStatistics
            if output.trace { config.trace = { HostIO.printError($0) } }
            snapshots.apply(to: &config)
            let report = try runMachine(config, output: output, snapshot: snapshots.handler())
            if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
        }
    }
}

extension SwiftVisorCommand {
    struct MergeSnapshot: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "merge-snapshot",
            abstract: "Merge a diff snapshot's memory file onto the full snapshot's memory file it follows.",
            discussion: """
                The full memory file then holds memory at the diff's time: restore the diff's \
                state file with it.
                """)

        @Option(help: ArgumentHelp("The diff snapshot's memory file.", valueName: "file"))
        var diff: String

        @Option(help: ArgumentHelp("The full snapshot's memory file, changed in place.", valueName: "file"))
        var onto: String

        func run() throws {
            do { try MachineSnapshot.mergeDiff(memoryPath: diff, ontoFullMemoryPath: onto) } catch { fail(error.description) }
        }
    }
}
