import CBenchSupport
import SwiftVisor
import SwiftVisorGuests
import Testing

extension KVMIntegration {
    /// Real guests on /dev/kvm. Serialized: the host has two cores and each guest is a thread.
    @Suite("Guests on KVM")
    struct GuestTests {
        @Test("the default guest greets and reports the RAM size it read from the boot info")
        func helloReportsRAM() throws {
            let (report, console) = try runGuest(GuestImages.hello)
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(report.exitStatus == 0)
            #expect(console == "Hello from a SwiftVisor guest!\nRAM: 64 MiB, vCPUs: 1\n")
        }

        @Test("the boot info carries a different RAM size and the command line")
        func helloSeesConfiguration() throws {
            let (report, console) = try runGuest(
                GuestImages.hello, commandLine: "console=ttyS0 answer=42",
                memory: 200 << 20)
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console.contains("RAM: 200 MiB, vCPUs: 1\n"))
            #expect(console.contains("Command line: console=ttyS0 answer=42\n"))
        }

        @Test("a guest exits through the debug port with the status it chose", arguments: [0, 1, 42, 255])
        func exitStatus(status: Int) throws {
            let (report, _) = try runGuest(GuestImages.exitStatus, commandLine: String(status))
            #expect(report.outcome == .stopped(.guestExit(status: UInt8(status))))
            #expect(report.exitStatus == Int32(status))
        }

        @Test("a triple fault stops the VM with a full state dump")
        func tripleFault() throws {
            let (report, console) = try runGuest(GuestImages.tripleFault)
            #expect(console == "about to triple-fault\n")
            #expect(report.outcome == .fatal(.tripleFault))
            #expect(report.exitStatus == 121)
            let dump = try #require(report.diagnostic)
            for field in [
                "triple fault", "64-bit long mode", "RAX=", "R15=", "RIP=", "RFLAGS=", "CS =0008", "SS =0010",
                "GDT base=0000000000001000", "IDT base=", "CR0=0000000080010033", "CR3=0000000000008000",
                "CR4=", "EFER=0000000000000500", "DR7=", "events:",
            ] {
                #expect(dump.contains(field), "state dump lacks \(field)")
            }
            // The instruction at RIP is the guest's ud2 (0f 0b).
            #expect(dump.contains("code at 000000000010000c: 0f 0b"))
        }

        @Test("a real-mode flat binary runs at its load address", arguments: [UInt64(0x7C00), 0x12340, 0x1000])
        func realMode(loadAddress: UInt64) throws {
            let (report, console) = try runGuest(GuestImages.realMode) { config in
                config.guest = .flat(GuestImages.realMode, loadAddress: loadAddress)
            }
            #expect(console == "Hello from real mode\n")
            #expect(report.outcome == .stopped(.guestExit(status: 42)))
        }

        @Test("IN from an unclaimed port reads all ones at each width and keeps RAX's upper bits for AL and AX")
        func unclaimedPortReadsOnes() throws {
            let (report, console) = try runGuest(GuestImages.portProbe)
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(
                console == """
                    in8=FF in16=FFFF in32=FFFFFFFF
                    rax8=11223344556677FF rax16=112233445566FFFF rax32=00000000FFFFFFFF

                    """)
        }

        @Test("the log policy reports unclaimed ports and the guest runs on")
        func unclaimedPortLogPolicy() throws {
            let log = LogCapture()
            let (report, _) = try runGuest(GuestImages.portProbe) { config in
                config.unclaimedPorts = .log
                config.log = log.sink
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(log.all.count == 3)
            #expect(log.all.allSatisfy { $0.contains("0x600") })
        }

        @Test("the log policy is rate-limited: a flood of unclaimed accesses prints at most 1,001 lines")
        func unclaimedLogLimit() throws {
            let log = LogCapture()
            let (report, _) = try runGuest(GuestImages.pioLoop, commandLine: "3000") { config in
                config.unclaimedPorts = .log
                config.log = log.sink
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(log.all.count == Machine.logLimit + 1)
            #expect(log.all.last?.contains("suppressed") == true)
        }

        @Test("the stop policy ends the VM at the first unclaimed port")
        func unclaimedPortStopPolicy() throws {
            let (report, _) = try runGuest(GuestImages.portProbe) { $0.unclaimedPorts = .stop }
            #expect(report.outcome == .stopped(.unclaimedPort(port: 0x600, isWrite: false, width: 1)))
            #expect(report.exitStatus == 120)
        }

        @Test("port writes from CPL3 reach a registered device, one exit each")
        func portDeviceFromRing3() throws {
            let device = CountingPortDevice()
            let (report, _) = try runGuest(GuestImages.pioLoop, commandLine: "3000") { config in
                config.portDevices = [.init(name: "counter", range: try! PortRange(base: 0x510, count: 1), device: device)]
                config.collectStatistics = true
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(device.writes.load(ordering: .relaxed) == 3000)
            #expect(device.lastWidth.load(ordering: .relaxed) == 1)
            let stats = try #require(report.statistics)
            #expect(stats.byPort[0x510] == 3000)
            #expect(stats.count(.portOut) == 3001)  // and the debug-exit write
        }

        @Test("MMIO writes reach a registered region with its offset")
        func mmioDevice() throws {
            let device = CountingMMIODevice()
            let (report, _) = try runGuest(GuestImages.mmioLoop, commandLine: "2000") { config in
                config.mmioDevices = [
                    .init(
                        name: "counter", range: try! MMIORange(start: 0xCFFF_F000, size: 0x2000),
                        device: device)
                ]
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(device.writes.load(ordering: .relaxed) == 2000)
            #expect(device.lastOffset.load(ordering: .relaxed) == 0x1000)
            #expect(device.lastWidth.load(ordering: .relaxed) == 1)
        }

        @Test("unclaimed MMIO writes are dropped and the guest continues")
        func unclaimedMMIO() throws {
            let (report, _) = try runGuest(GuestImages.mmioLoop, commandLine: "500") { $0.collectStatistics = true }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(report.statistics?.count(.mmioWrite) == 500)
        }

        @Test("the allocation counter counts this thread's allocations")
        func allocationCounterWorks() {
            let before = calloc_counter_thread_allocations()
            // SAFETY: allocated and freed here, never read or written.
            let storage = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
            unsafe storage.deallocate()
            #expect(calloc_counter_thread_allocations() - before == 1)
        }

        @Test("the exit path allocates nothing in steady state", arguments: [false, true])
        func noAllocationsPerExit(statistics: Bool) throws {
            let port = CountingPortDevice(sampleStart: 100)
            _ = try runGuest(GuestImages.pioLoop, commandLine: "5000") { config in
                config.portDevices = [.init(name: "counter", range: try! PortRange(base: 0x510, count: 1), device: port)]
                config.collectStatistics = statistics
            }
            #expect(port.writes.load(ordering: .relaxed) == 5000)
            let start = port.allocationsAtStart.load(ordering: .relaxed)
            let end = port.allocationsAtEnd.load(ordering: .relaxed)
            #expect(end - start == 0, "\(end - start) allocations in 4,900 port exits")

            let mmio = CountingMMIODevice()
            _ = try runGuest(GuestImages.mmioLoop, commandLine: "5000") { config in
                config.mmioDevices = [
                    .init(
                        name: "counter", range: try! MMIORange(start: 0xD000_0000, size: 0x1000),
                        device: mmio)
                ]
                config.collectStatistics = statistics
            }
            #expect(mmio.writes.load(ordering: .relaxed) == 5000)
            #expect(mmio.allocationsAtEnd.load(ordering: .relaxed) - mmio.allocationsAtStart.load(ordering: .relaxed) == 0)
        }

        @Test("tracing prints one line per exit with kind, port and value")
        func trace() throws {
            let lines = LogCapture()
            let (report, _) = try runGuest(GuestImages.exitStatus, commandLine: "7") { config in
                config.trace = lines.sink
            }
            #expect(report.outcome == .stopped(.guestExit(status: 7)))
            #expect(lines.all.count == 1)
            #expect(lines.all.first?.contains("vcpu0 io-out port=0x501 width=1 value=0x7") == true)
        }

        @Test("the async run API returns the same report")
        func asyncRun() async throws {
            var config = MachineConfiguration(guest: .elf(GuestImages.exitStatus))
            config.commandLine = "9"
            let machine = try Machine(config)
            let report = try await machine.run()
            #expect(report.outcome == .stopped(.guestExit(status: 9)))
            #expect(throws: MachineError.self) { try machine.run() }
        }
    }
}
