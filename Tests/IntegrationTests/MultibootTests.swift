import Foundation
import SwiftVisor
import SwiftVisorGuests
import Testing

extension KVMIntegration {
    /// Multiboot guests, fw_cfg and QEMU's debug-exit, on real KVM. The guests run in
    /// 32-bit protected mode at CPL0, which the host kernel interprets here: they are tiny.
    @Suite("Multiboot guests")
    struct MultibootGuestTests {
        @Test("the multiboot guest sees EAX, EBX, its memory, map, command line, loader name and two modules")
        func information() throws {
            let modules = [
                MultibootModule(bytes: Array("module one contents".utf8), string: "first a=1"),
                MultibootModule(bytes: Array("the second module".utf8) + [UInt8](repeating: 0x2E, count: 5000), string: "second"),
            ]
            let (report, console) = try runGuest(GuestImages.multibootInfo, commandLine: "hello multiboot") { config in
                config.guest = .multiboot(GuestImages.multibootInfo, modules: modules)
            }
            #expect(report.exitStatus == 1, "QEMU debug-exit 0 is pass: \(console)")
            #expect(console.contains("magic=0x2badb002 info=0x10020\n"), "\(console)")
            #expect(console.contains("flags=0x24d\n"))
            #expect(console.contains("mem_lower=639 mem_upper=64512\n"))
            #expect(
                console.contains("mmap 0x0 0x9fc00 1\nmmap 0x9fc00 0x400 2\nmmap 0xf0000 0x10000 2\nmmap 0x100000 0x3f00000 1\n"))
            #expect(console.contains("cmdline=[hello multiboot]\nloader=[SwiftVisor]\nmods=2\n"))
            #expect(
                console.contains("mod 0 start=0x102000 size=19 string=[first a=1] data=[module one contents]\n"), "\(console)")
            #expect(console.contains("mod 1 start=0x103000 size=5017 string=[second] data=[the second module...............]\n"))
            #expect(console.hasSuffix("multiboot ok\n"))
        }

        @Test("a flat multiboot image at 0x8000 reads fw_cfg: signature, interface, CPUs, RAM, command line, files")
        func firmwareConfig() throws {
            let (report, console) = try runGuest(GuestImages.fwCfg, commandLine: "fw test", memory: 32 << 20) { config in
                config.vcpuCount = 2
            }
            #expect(report.exitStatus == 1, "\(console)")
            #expect(console.contains("loaded at 0x8000\n"), "\(console)")
            #expect(console.contains("signature=QEMU id=1 cpus=2 max_cpus=2 ram=0x2000000\n"))
            #expect(console.contains("cmdline=[fw test]\n"))
            #expect(console.contains("file 0x20 80 etc/e820\n"))
            #expect(console.hasSuffix("fw_cfg ok\n"))
        }

        @Test("QEMU's debug-exit: a write of V at width 1, 2 or 4 ends the VM with (V << 1) | 1")
        func qemuDebugExit() throws {
            for (commandLine, status) in [("0", Int32(1)), ("1", 3), ("38", 77), ("1:1", 3), ("2:38", 77), ("4:127", 255)] {
                let (report, console) = try runGuest(GuestImages.qemuExit, commandLine: commandLine)
                #expect(report.exitStatus == status, "\(commandLine): \(console)")
            }
        }

        @Test("without QEMU's debug-exit, port 0xF4 is an ordinary unclaimed port")
        func qemuDebugExitOff() throws {
            let (report, _) = try runGuest(GuestImages.qemuExit, commandLine: "0") { config in
                config.qemuDebugExitPort = false
                config.unclaimedPorts = .stop
            }
            #expect(report.exitStatus == 120)
        }

        @Test("QEMU's test devices: the latch and the MMIO window at every width, an interrupt from line 10 via the IOAPIC")
        func testDevices() throws {
            let (report, console) = try runGuest(GuestImages.testDev) { $0.qemuTestDevices = true }
            #expect(report.exitStatus == 1, "\(console)")
            #expect(console == "latch ok\niomem ok\nirq line ok\ntest_dev ok\n")
            // Without them the same guest finds nothing there.
            let (without, withoutConsole) = try runGuest(GuestImages.testDev)
            #expect(without.exitStatus == 3)
            #expect(withoutConsole.contains("FAIL latch 8"))
        }

        @Test("an embedding program raises a line with setInterruptLine; bad lines and no irqchip are typed errors")
        func hostInterruptLine() async throws {
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .multiboot(GuestImages.testDev))
            config.qemuTestDevices = true
            config.commandLine = "host"
            config.consoleOutput = console.sink
            let vm = try Machine(config)
            #expect(throws: InterruptLineError.noSuchLine(24)) { try vm.setInterruptLine(24, high: true) }
            try vm.start()
            #expect(await eventually { console.text.hasSuffix("waiting for line 11\n") })
            try await Task.sleep(for: .milliseconds(20))  // let it reach hlt
            try vm.setInterruptLine(11, high: true)
            let report = await vm.wait()
            try vm.setInterruptLine(11, high: false)
            #expect(report.exitStatus == 1, "\(console.text)")
            #expect(console.text.hasSuffix("waiting for line 11\nhost line ok\n"))

            var noChip = MachineConfiguration(guest: .multiboot(GuestImages.qemuExit))
            noChip.interruptController = false
            let plain = try Machine(noChip)
            #expect(throws: InterruptLineError.noInterruptController) { try plain.setInterruptLine(4, high: true) }
        }

        @Test("a machine with QEMU's test devices refuses to snapshot")
        func testDevicesSnapshot() async throws {
            var config = MachineConfiguration(guest: .multiboot(GuestImages.testDev))
            config.qemuTestDevices = true
            config.commandLine = "host"
            config.consoleOutput = { _ in }
            let vm = try Machine(config)
            try vm.start()
            await vm.pause()
            let directory = FileManager.default.temporaryDirectory.path
            let name = "swiftvisor-testdev-\(UInt64.random(in: 0...UInt64.max))"
            #expect {
                try vm.snapshot(statePath: "\(directory)/\(name).state", memoryPath: "\(directory)/\(name).mem")
            } throws: { error in
                "\(error)".contains("QEMU's test devices")
            }
            _ = await vm.stop()
        }
    }
}
