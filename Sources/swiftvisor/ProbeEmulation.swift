import ArgumentParser
import SwiftVisor
import SwiftVisorGuests

extension SwiftVisorCommand {
    struct ProbeEmulation: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "probe-emulation",
            abstract: "Run each instruction of a list at CPL0 and print who finishes it on this host: KVM, SwiftVisor, or nobody."
        )

        @Argument(help: "Instructions to probe (default: the whole list).")
        var names: [String] = []

        /// The probe guest's instructions, in its table order (Guests/probe.S).
        static let all = ProbeList.names

        func validate() throws {
            for name in names where !Self.all.contains(name) {
                throw ValidationError("'\(name)' is not in the probe list: \(Self.all.joined(separator: " "))")
            }
        }

        func run() throws {
            print("instruction   handled by                 guest saw")
            var counts: [String: Int] = [:]
            for name in names.isEmpty ? Self.all : names {
                var config = MachineConfiguration(guest: .elf(GuestImages.probe))
                config.commandLine = name
                config.interruptController = false
                config.consoleOutput = { _ in }
                config.log = { _ in }
                let machine: Machine
                let report: RunReport
                do {
                    machine = try Machine(config)
                    report = try machine.run()
                } catch {
                    fail(error.description)
                }
                let handler: String
                let saw: String
                switch report.outcome {
                case .fatal(let fatal):
                    handler = fatal.exitStatus == 122 ? "stops (KVM cannot emulate)" : "stops: \(fatal)"
                    saw = "-"
                case .stopped(let reason):
                    let emulated = machine.emulatedInstructions.values.reduce(0, +)
                    handler = emulated > 0 ? "SwiftVisor" : "KVM"
                    switch reason.exitStatus {
                    case 0: saw = "ran"
                    case 0x40..<0x60: saw = "exception \(Self.vectorName(Int(reason.exitStatus) - 0x40))"
                    default: saw = "status \(reason.exitStatus)"
                    }
                }
                counts[String(handler.prefix(5)), default: 0] += 1
                print(name.padded(14) + handler.padded(27) + saw)
            }
            print(
                "KVM: \(counts["KVM", default: 0])  SwiftVisor: \(counts["Swift", default: 0])  stops: \(counts["stops", default: 0])"
            )
        }

        static func vectorName(_ vector: Int) -> String {
            let names = [
                0: "#DE", 1: "#DB", 3: "#BP", 6: "#UD", 7: "#NM", 8: "#DF", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 19: "#XM",
            ]
            return names[vector] ?? "vector \(vector)"
        }
    }
}

extension String {
    func padded(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
