import SwiftVisor
import SwiftVisorGuests
import Testing

extension KVMIntegration {
    @Suite("Virtio devices on KVM")
    struct VirtioTests {
        func run(_ arguments: String, devices: [VirtioDeviceConfiguration], vcpus: Int = 1, ioThread: Bool = true) throws
            -> (RunReport, String, [VirtioDeviceStatistics], mmioWrites: UInt64)
        {
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioRng))
            config.commandLine = arguments
            config.consoleOutput = console.sink
            config.virtioDevices = devices
            config.vcpuCount = vcpus
            config.virtioIOThread = ioThread
            config.collectStatistics = true
            let machine = try Machine(config)
            let report = try machine.run()
            return (report, console.text, machine.virtioStatistics, report.statistics?.count(.mmioWrite) ?? 0)
        }

        @Test(
            "a guest driver negotiates with the virtio-mmio entropy device, gets random bytes, and a malformed request completes with length 0; on the I/O thread, notifications do not exit",
            arguments: [(1, true), (2, true), (1, false)])
        func entropyFromGuest(vcpus: Int, ioThread: Bool) throws {
            let (report, console, statistics, mmioWrites) = try run("20", devices: [.entropy], vcpus: vcpus, ioThread: ioThread)
            // The driver writes 8 registers to set up, then per request a notification and
            // an ACK: 21 notifications exit only without the I/O thread.
            let setupWrites = 19
            #expect(mmioWrites == UInt64(setupWrites + 21 + (ioThread ? 0 : 21)), "mmio writes \(mmioWrites)")
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console)")
            #expect(console.contains("virtio: device 4 at 0xd0000000, version 2"), "\(console)")
            #expect(console.contains("virtio-rng: 20 requests, 1280 bytes, first "), "\(console)")
            #expect(console.contains("virtio-rng: malformed request completed with length 0"), "\(console)")
            #expect(
                statistics == [
                    VirtioDeviceStatistics(
                        name: "virtio-rng0", notifications: 21, interrupts: 21, requests: 21, malformedRequests: 1,
                        bytes: 1280)
                ])
        }

        @Test("without the device the driver finds no magic value (unclaimed MMIO reads all ones) and says so")
        func noDevice() throws {
            let (report, console, statistics, _) = try run("", devices: [])
            #expect(report.outcome == .stopped(.guestExit(status: 2)))
            #expect(console == "virtio: no device\n")
            #expect(statistics.isEmpty)
        }

        func refusal(_ config: MachineConfiguration) -> String? {
            do {
                _ = try Machine(config)
                return nil
            } catch {
                return error.description
            }
        }

        @Test("virtio devices without the interrupt controller, or more than eight, are refused before anything is built")
        func badConfigurations() throws {
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioRng))
            config.virtioDevices = [.entropy]
            config.interruptController = false
            #expect(
                refusal(config) == "invalid devices: virtio devices need the interrupt controller (they raise IOAPIC interrupts)")
            config.interruptController = true
            config.virtioDevices = Array(repeating: .entropy, count: 9)
            #expect(refusal(config) == "invalid devices: 9 virtio devices, but a machine has 8 free interrupts for them")
            config.virtioDevices = Array(repeating: .entropy, count: 8)
            let machine = try Machine(config)
            #expect(machine.deviceName(mmioAddress: 0xD000_7FFF) == "virtio-rng7")
            #expect(machine.deviceName(mmioAddress: 0xD000_8000) == nil)
        }
    }
}

extension KVMIntegration {
    @Suite("Virtio devices in Linux")
    struct VirtioLinuxTests {
        /// With no root and panic=-1 the kernel resets right after its drivers probed: the
        /// VM ends by itself, with the devices' counters to read.
        @Test("the test kernel binds the entropy device (from its DSDT entry) and takes random bytes from it", arguments: [1, 2])
        func entropy(cpus: Int) async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"), cpus: cpus,
                extraCommandLine: "kunit.enable=0 panic=-1", timeout: 600
            ) { config in config.virtioDevices = [.entropy] }
            #expect(boot.report.outcome == .stopped(.reset(source: "port 0xCF9")), "\(boot.report.outcome)")
            #expect(boot.console.contains("virtio_mmio.device=4K@0xd0000000:5"))
            // The ACPI device binds first; the command line's duplicate then finds its
            // region taken (-16, EBUSY), which is harmless.
            #expect(boot.console.contains("probe of virtio-mmio.0 failed with error -16"), "\(boot.console.suffix(3000))")
            #expect(boot.console.contains("VFS: Unable to mount root fs"))
            let rng = try #require(boot.virtio.first)
            #expect(rng.requests >= 1 && rng.malformedRequests == 0 && rng.bytes >= 1, "\(rng)")
            #expect(rng.interrupts >= 1)
        }
    }
}
