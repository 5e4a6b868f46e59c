import CBenchSupport
import Glibc
import SwiftVisor
import SwiftVisorGuests
import Testing

extension KVMIntegration {
    @Suite("Virtio net benchmark guest")
    struct VirtioNetBenchTests {
        /// A TAP interface without an address, up; removed by `remove()`.
        struct BareTAP {
            let name: String
            init(name: String) throws {
                self.name = name
                try? HostTAPInterface.ip(["link", "del", name], quiet: true)  // a leftover of an interrupted run
                try HostTAPInterface.ip(["tuntap", "add", "dev", name, "mode", "tap"])
                do { try HostTAPInterface.ip(["link", "set", name, "up"]) } catch {
                    remove()
                    throw error
                }
            }
            func remove() { try? HostTAPInterface.ip(["link", "del", name]) }
        }

        /// Runs the guest with `commandLine` on a network device on `tap` (none when nil).
        func runBench(commandLine: String, tap: String?) throws -> (report: RunReport, console: String, machine: Machine) {
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioNetBench))
            config.commandLine = commandLine
            config.consoleOutput = console.sink
            if let tap { config.virtioDevices = [.net(tap: tap, mac: nil)] }
            let machine = try Machine(config)
            let report = try machine.run()
            return (report, console.text, machine)
        }

        /// 2,000 frames with 8 away at a time (and 1, and 256: as many as there are receive
        /// buffers, so the device may use them all before the guest looks), each sent back
        /// by a reflector on the TAP: the guest counts every one of its frames back, from CPL3.
        @Test(
            "every frame the benchmark guest sends through the TAP comes back through a reflector",
            .enabled(if: TAPAccess.available, "needs root and /dev/net/tun (a TAP and a packet socket): skipped"),
            arguments: [8, 1, 256])
        func everyFrameComesBack(window: Int) throws {
            let tap = try BareTAP(name: "swvbt\(getpid() % 100_000)w\(window)")
            defer { tap.remove() }
            var reflector: OpaquePointer?
            // SAFETY: the C function reads the NUL-terminated name and writes one pointer
            // into the local, during the call.
            let started = unsafe bench_reflector_start(tap.name, &reflector)
            try #require(started == 0, "reflector: errno \(started)")
            var stopped = false
            defer {
                // SAFETY: the reflector is stopped (and freed) once, here or below.
                if !stopped, let reflector = unsafe reflector { _ = unsafe bench_reflector_stop(reflector, nil) }
            }
            let run = try runBench(commandLine: "2000 \(window)", tap: tap.name)
            var failed: UInt64 = 0
            // SAFETY: as above; the count goes into a local.
            let reflected = unsafe bench_reflector_stop(reflector!, &failed)
            stopped = true
            #expect(run.report.outcome == .stopped(.guestExit(status: 0)), "\(run.console)")
            #expect(run.console.contains("virtio_net_bench: 2000 frames, "), "\(run.console)")
            #expect(run.console.contains(" notifications, 2000 returned\n"), "\(run.console)")
            #expect(reflected >= 2000 && failed == 0, "reflected \(reflected), failed \(failed)")
            let net = try #require(run.machine.virtioStatistics.first)
            // Every frame went out (a transmit chain) and came in (a receive chain).
            #expect(net.requests >= 4000 && net.malformedRequests == 0, "\(net.summary)")
            #expect(net.bytes >= 2 * 2000 * 1500, "\(net.summary)")
        }

        /// With nobody sending the frames back the guest must end on its own, with its
        /// give-up status, not spin for ever.
        @Test(
            "without a reflector nothing comes back and the benchmark guest gives up with status 8",
            .enabled(if: TAPAccess.available, "needs root and /dev/net/tun (a TAP): skipped"))
        func givesUpWithoutReflector() throws {
            let tap = try BareTAP(name: "swvbn\(getpid() % 100_000)")
            defer { tap.remove() }
            let run = try runBench(commandLine: "50 8", tap: tap.name)
            #expect(run.report.outcome == .stopped(.guestExit(status: 8)), "\(run.console)")
            #expect(run.console.contains("virtio_net_bench: gave up waiting\n"), "\(run.console)")
            #expect(run.console.contains("virtio_net_bench: 50 frames, "), "\(run.console)")
            #expect(run.console.contains(" notifications, 0 returned\n"), "\(run.console)")
        }

        /// What the guest refuses before it touches a device, and a machine with no
        /// network device (needs no TAP).
        @Test(
            "the benchmark guest refuses a bad command line, and a machine without a network device",
            arguments: [("0 8", 254), ("10 0", 254), ("10 257", 254), ("10", 254), ("8388609 1", 254), ("10 8", 2)])
        func refuses(commandLine: String, status: UInt8) throws {
            let run = try runBench(commandLine: commandLine, tap: nil)
            #expect(run.report.outcome == .stopped(.guestExit(status: status)), "\(run.console)")
        }
    }
}
