import Foundation
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorHost

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
                statistics.map(\.withoutInterrupts) == [
                    VirtioDeviceStatistics(
                        name: "virtio-rng0", notifications: 21, interrupts: 0, requests: 21, malformedRequests: 1,
                        bytes: 1280)
                ])
            Self.expectInterrupts(statistics, requests: 21, ioThread: ioThread)
        }

        /// The drivers poll the used ring and then acknowledge whatever InterruptStatus
        /// holds. On the vCPU path the device completes and signals within the notifying
        /// exit, so every request raises the line once. On the I/O thread the driver can
        /// see the used entry before the device signals, acknowledge nothing, and submit
        /// the next request: two completions then share one rising edge. So there the
        /// count is at least one and at most one per request.
        static func expectInterrupts(
            _ statistics: [VirtioDeviceStatistics], requests: UInt64, ioThread: Bool,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            let interrupts = statistics.first?.interrupts ?? 0
            if ioThread {
                #expect((1...requests).contains(interrupts), "interrupts \(interrupts)", sourceLocation: sourceLocation)
            } else {
                #expect(interrupts == requests, sourceLocation: sourceLocation)
            }
        }

        /// The benchmark guest at a size a test can afford: each mode completes every
        /// request with status OK, from CPL3, on both paths; with the I/O thread a
        /// notification never exits to user space.
        @Test(
            "the virtio-blk benchmark guest completes its qd1, qd32 and seq requests from CPL3 on both paths",
            arguments: [("qd1", 200), ("qd32", 300), ("seq", 4)], [true, false])
        func blockBenchmarkGuest(mode: (String, Int), ioThread: Bool) throws {
            let path = NSTemporaryDirectory() + "swiftvisor-bench-\(UUID().uuidString).img"
            try Data(count: 4 << 20).write(to: URL(fileURLWithPath: path))
            defer { try? FileManager.default.removeItem(atPath: path) }
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioBlkBench))
            config.commandLine = "\(mode.0) \(mode.1)"
            config.consoleOutput = console.sink
            config.virtioDevices = [.block(path: path, readOnly: true)]
            config.virtioIOThread = ioThread
            config.collectStatistics = true
            let machine = try Machine(config)
            let report = try machine.run()
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console.text)")
            let size = mode.0 == "seq" ? 1 << 20 : 4096
            #expect(console.text.contains("virtio_blk_bench: \(mode.0) \(mode.1) requests, "), "\(console.text)")
            #expect(console.text.contains(" notifications, \(mode.1 * size) bytes"), "\(console.text)")
            let disk = try #require(machine.virtioStatistics.first)
            #expect(disk.requests == UInt64(mode.1) && disk.malformedRequests == 0 && disk.bytes == UInt64(mode.1 * size))
            // Set-up writes 18 registers; with the I/O thread no notification exits.
            let mmioWrites = report.statistics?.count(.mmioWrite) ?? 0
            if ioThread { #expect(mmioWrites == 18, "mmio writes \(mmioWrites)") } else { #expect(mmioWrites > 18) }
        }

        /// An ops limit of 20 requests per 100 ms: the first 20 of the guest's 100 reads
        /// come from the full bucket, the other 80 at 200 a second, so the run takes at
        /// least 400 ms (less a refill period of slack), and every request still completes.
        @Test("a rate-limited disk holds the benchmark guest to its ops limit; every request completes")
        func rateLimitedDisk() throws {
            let path = NSTemporaryDirectory() + "swiftvisor-bench-\(UUID().uuidString).img"
            try Data(count: 4 << 20).write(to: URL(fileURLWithPath: path))
            defer { try? FileManager.default.removeItem(atPath: path) }
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioBlkBench))
            config.commandLine = "qd1 100"
            config.consoleOutput = console.sink
            let ops = TokenBucketConfiguration(size: 20, refillTimeMilliseconds: 100)
            config.virtioDevices = [.block(path: path, readOnly: true, rateLimiter: RateLimiterConfiguration(ops: ops))]
            let machine = try Machine(config)
            let start = HostIO.monotonicNanoseconds()
            let report = try machine.run()
            let milliseconds = (HostIO.monotonicNanoseconds() - start) / 1_000_000
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console.text)")
            #expect(machine.virtioStatistics.first?.requests == 100)
            #expect(milliseconds >= 350, "took \(milliseconds) ms")
            #expect(milliseconds < 5000, "took \(milliseconds) ms")

            // Without the I/O thread nothing would resume a throttled queue: refused.
            config.virtioIOThread = false
            #expect(throws: MachineError.self) { _ = try Machine(config) }
        }

        /// A disk of 8 sectors, sector 0 holding byte i = i * 7 + 3, the rest zero.
        static func makeDisk() throws -> (path: String, contents: [UInt8]) {
            let path = NSTemporaryDirectory() + "swiftvisor-blk-\(UUID().uuidString).img"
            var contents = [UInt8](repeating: 0, count: 8 * 512)
            for i in 0..<512 { contents[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
            try Data(contents).write(to: URL(fileURLWithPath: path))
            return (path, contents)
        }

        static func fnv1a(_ bytes: some Sequence<UInt8>) -> String {
            var hash: UInt32 = 2_166_136_261
            for byte in bytes { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
            let hex = String(hash, radix: 16, uppercase: true)
            return String(repeating: "0", count: 8 - hex.count) + hex
        }

        func runBlock(_ devices: [VirtioDeviceConfiguration], ioThread: Bool = true) throws
            -> (RunReport, String, [VirtioDeviceStatistics])
        {
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.virtioBlk))
            config.consoleOutput = console.sink
            config.virtioDevices = devices
            config.virtioIOThread = ioThread
            let machine = try Machine(config)
            let report = try machine.run()
            return (report, console.text, machine.virtioStatistics)
        }

        @Test(
            "a guest driver reads sector 0 of a disk, writes sector 1, flushes and reads it back; the file has the sector",
            arguments: [true, false])
        func blockFromGuest(ioThread: Bool) throws {
            let (path, contents) = try Self.makeDisk()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let (report, console, statistics) = try runBlock([.block(path: path, readOnly: false)], ioThread: ioThread)
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console)")
            let written = (0..<512).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }
            #expect(
                console == """
                    virtio: device 2 at 0xd0000000, version 2
                    virtio-blk: capacity 8 sectors, blk_size 512
                    virtio-blk: sector 0 checksum \(Self.fnv1a(contents[0..<512]))
                    virtio-blk: wrote sector 1, flushed, read back checksum \(Self.fnv1a(written))
                    virtio-blk: id swiftvisor-disk0
                    virtio-blk: read past the end: status 1

                    """)
            var expected = contents
            expected.replaceSubrange(512..<1024, with: written)
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == expected)
            #expect(
                statistics.map(\.withoutInterrupts) == [
                    VirtioDeviceStatistics(
                        name: "virtio-blk0", notifications: 6, interrupts: 0, requests: 6, malformedRequests: 0,
                        bytes: 1536)
                ])
            Self.expectInterrupts(statistics, requests: 6, ioThread: ioThread)
        }

        @Test("a read-only disk refuses the guest's write with IOERR, and the file is unchanged")
        func readOnlyDiskFromGuest() throws {
            let (path, contents) = try Self.makeDisk()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let (report, console, _) = try runBlock([.block(path: path, readOnly: true)])
            #expect(report.outcome == .stopped(.guestExit(status: 9)), "\(console)")
            #expect(console.hasSuffix("virtio-blk: write of sector 1 failed, status 1\n"), "\(console)")
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == contents)
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

        @Test(
            "a guest driver echoes a host program's connection (CONNECT, OK, bytes back), then connects to PATH_1235 and gets the reply",
            arguments: [1, 2])
        func vsockEcho(vcpus: Int) async throws {
            let directory = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let path = directory + "/v.sock"
            let hostListener = try HostUnixListener.listen(path: path + "_1235")
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.vsockEcho))
            config.consoleOutput = console.sink
            config.vcpuCount = vcpus
            config.virtioDevices = [.vsock(cid: 3, udsPath: path)]
            let machine = try Machine(config)
            try machine.start()
            func within(_ seconds: Double, _ condition: () -> Bool) async throws -> Bool {
                let start = Date()
                while !condition() {
                    if Date().timeIntervalSince(start) > seconds { return false }
                    try await Task.sleep(for: .milliseconds(2))
                }
                return true
            }
            #expect(try await within(30) { console.text.contains("listening on port 1234") }, "\(console.text)")
            let client = try #require(HostSocket.connect(path: path))
            _ = HostSocket.send(client, Array("CONNECT 1234\nping".utf8)[...])
            var buffer = [UInt8](repeating: 0, count: 64)
            var got: [UInt8] = []
            let expected = Array("OK 1073741824\nping".utf8)
            #expect(
                try await within(30) {
                    if case .transferred(let n) = HostSocket.receive(client, into: &buffer, count: 64) { got += buffer[0..<n] }
                    return got.count >= expected.count
                })
            #expect(got == expected, "\(String(decoding: got, as: UTF8.self))")
            HostSocket.close(client)
            // The guest's own connection, to PATH_1235.
            var accepted: Int32?
            #expect(
                try await within(30) {
                    if case .accepted(let fd) = HostSocket.accept(hostListener.descriptor) { accepted = fd }
                    return accepted != nil
                }, "\(console.text)")
            if let accepted {
                got = []
                let hello = Array("hello from the guest\n".utf8)
                #expect(
                    try await within(30) {
                        if case .transferred(let n) = HostSocket.receive(accepted, into: &buffer, count: 64) {
                            got += buffer[0..<n]
                        }
                        return got.count >= hello.count
                    })
                #expect(got == hello)
                _ = HostSocket.send(accepted, Array("bye".utf8)[...])
            }
            let watchdog = Task {
                try await Task.sleep(for: .seconds(60))
                machine.requestStop()
            }
            let report = await machine.wait()
            watchdog.cancel()
            if let accepted { HostSocket.close(accepted) }
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console.text)")
            #expect(
                console.text == """
                    vsock: device 19, cid 3
                    vsock: listening on port 1234
                    vsock: connection from host port 1073741824
                    vsock: echoed 4 bytes
                    vsock: the host closed
                    vsock: connected to host port 1235
                    vsock: host said bye

                    """)
            let statistics = try #require(machine.virtioStatistics.first)
            #expect(statistics.malformedRequests == 0 && statistics.bytes == 4 + 4 + 21 + 3, "\(statistics)")
        }

        @Test(
            "a guest resets the vsock device with a connection open, its vCPU thread under the seccomp filter: the host program reads its end, and the device serves the next connection"
        )
        func vsockResetWithConnectionOpen() async throws {
            let directory = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let path = directory + "/v.sock"
            let hostListener = try HostUnixListener.listen(path: path + "_1235")
            let console = ConsoleCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.vsockEcho))
            config.commandLine = "reset 1234"
            config.consoleOutput = console.sink
            config.virtioDevices = [.vsock(cid: 3, udsPath: path)]
            // The reset's socket close is what the vCPU filter refuses: it must be on.
            #expect(config.seccomp)
            let machine = try Machine(config)
            try machine.start()
            let watchdog = Task {
                try await Task.sleep(for: .seconds(120))
                machine.requestStop()
            }
            defer { watchdog.cancel() }
            func within(_ seconds: Double, _ condition: () -> Bool) async throws -> Bool {
                let start = Date()
                while !condition() {
                    if Date().timeIntervalSince(start) > seconds { return false }
                    try await Task.sleep(for: .milliseconds(2))
                }
                return true
            }
            var buffer = [UInt8](repeating: 0, count: 64)
            func read(_ fd: Int32, until count: Int) async throws -> [UInt8] {
                var got: [UInt8] = []
                _ = try await within(30) {
                    if case .transferred(let n) = HostSocket.receive(fd, into: &buffer, count: 64) { got += buffer[0..<n] }
                    return got.count >= count
                }
                return got
            }
            #expect(try await within(30) { console.text.contains("listening on port 1234") }, "\(console.text)")
            let first = try #require(HostSocket.connect(path: path))
            defer { HostSocket.close(first) }
            _ = HostSocket.send(first, Array("CONNECT 1234\n".utf8)[...])
            let ok = Array("OK 1073741824\n".utf8)
            #expect(try await read(first, until: ok.count) == ok)
            #expect(try await within(30) { console.text.contains("reset with a connection open") }, "\(console.text)")
            // The device's end of the first connection was closed (on the I/O thread: the
            // vCPU thread that reset the device may not close it), not leaked.
            #expect(
                try await within(30) { HostSocket.receive(first, into: &buffer, count: 64) == .transferred(0) },
                "the host side of a reset connection stayed open")
            // The device set up again serves a new connection.
            #expect(
                try await within(30) { console.text.components(separatedBy: "listening on port 1234").count == 3 },
                "\(console.text)")
            let client = try #require(HostSocket.connect(path: path))
            _ = HostSocket.send(client, Array("CONNECT 1234\nping".utf8)[...])
            let echoed = Array("OK 1073741825\nping".utf8)
            #expect(try await read(client, until: echoed.count) == echoed)
            HostSocket.close(client)
            var accepted: Int32?
            #expect(
                try await within(30) {
                    if case .accepted(let fd) = HostSocket.accept(hostListener.descriptor) { accepted = fd }
                    return accepted != nil
                }, "\(console.text)")
            if let accepted {
                let hello = Array("hello from the guest\n".utf8)
                #expect(try await read(accepted, until: hello.count) == hello)
                _ = HostSocket.send(accepted, Array("bye".utf8)[...])
            }
            let report = await machine.wait()
            if let accepted { HostSocket.close(accepted) }
            #expect(report.outcome == .stopped(.guestExit(status: 0)), "\(console.text)")
            #expect(
                console.text == """
                    vsock: device 19, cid 3
                    vsock: listening on port 1234
                    vsock: connection from host port 1073741824
                    vsock: reset with a connection open
                    vsock: device 19, cid 3
                    vsock: listening on port 1234
                    vsock: connection from host port 1073741825
                    vsock: echoed 4 bytes
                    vsock: the host closed
                    vsock: connected to host port 1235
                    vsock: host said bye

                    """)
        }
    }
}

extension KVMIntegration {
    @Suite("Virtio devices in Linux")
    struct VirtioLinuxTests {
        /// With no root and panic=-1 the kernel resets right after its drivers probed: the
        /// VM ends by itself, with the devices' counters to read.
        @Test(
            "a host CONNECT to a guest port nobody listens on: the test kernel answers RST and the host side sees the connection closed, every time",
            arguments: [1, 2])
        func vsockNoListener(cpus: Int) async throws {
            let initrd = try [UInt8](
                Data(contentsOf: URL(fileURLWithPath: try LinuxKernels.guestImages.get() + "/initramfs.cpio.gz")))
            let directory = NSTemporaryDirectory() + "swiftvisor-vsock-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let path = directory + "/v.sock"
            let quirks = try LinuxKernels.quirks.get()
            let console = ConsoleCapture()
            let request = LinuxBootRequest(
                kernel: try LinuxKernels.testKernelFile("bzImage"), initrd: initrd,
                commandLine: LinuxDefaults.commandLine(quirks: quirks, appending: "kunit.enable=0 panic=-1"),
                bootProtocol: .linux64, hostDecompression: true)
            var config = MachineConfiguration(guest: .linux(request))
            config.memorySize = 128 << 20
            config.vcpuCount = cpus
            config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
            config.consoleOutput = console.sink
            config.virtioDevices = [.vsock(cid: 3, udsPath: path)]
            var machine: Machine? = try Machine(config)
            try machine?.start()
            // The driver is up long before init runs; the spinning init then keeps the
            // kernel alive until the test stops it. The bound is for a hang only: on a host
            // whose two cores are shared with other boots, two vCPUs took over 10 minutes.
            let start = Date()
            while !console.text.contains("Run /init as init process"), Date().timeIntervalSince(start) < 1800 {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(console.text.contains("Run /init as init process"), "\(console.text.suffix(3000))")
            var outcomes: [String] = []
            for _ in 0..<3 {
                guard let fd = HostSocket.connect(path: path) else {
                    outcomes.append("cannot connect")
                    continue
                }
                defer { HostSocket.close(fd) }
                _ = HostSocket.send(fd, Array("CONNECT 1234\n".utf8)[...])
                var buffer = [UInt8](repeating: 0, count: 64)
                var got: [UInt8] = []
                var outcome = "no end after 60 s"
                let begin = Date()
                while Date().timeIntervalSince(begin) < 60 {
                    let result = HostSocket.receive(fd, into: &buffer, count: buffer.count)
                    if case .transferred(let n) = result, n > 0 {
                        got += buffer[0..<n]
                        continue
                    }
                    if result == .transferred(0) || result == .failed {
                        outcome = "closed after \(got.count) bytes"
                        break
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
                outcomes.append(outcome)
            }
            #expect(outcomes == Array(repeating: "closed after 0 bytes", count: 3), "\(console.text.suffix(2000))")
            let report = await machine?.stop()
            #expect(report?.outcome == .stopped(.requested), "\(String(describing: report?.outcome))")
            let vsock = try #require(machine?.virtioStatistics.first)
            // Three REQUESTs out, three RSTs in, and the rx buffers the driver posted.
            #expect(vsock.requests >= 6 && vsock.malformedRequests == 0, "\(vsock)")
            #expect(console.text.contains("virtio_mmio.device=4K@0xd0000000:5"))
            machine = nil
            #expect(!FileManager.default.fileExists(atPath: path))
        }

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

        /// The kernel's console is hvc0 alone, so every byte of the log that reaches the
        /// console sink came through the virtio console (the device's byte count says so).
        /// What the kernel printed before its virtio console driver bound is lost by the
        /// kernel itself (see the README), but KUnit runs after the drivers and reports
        /// through it.
        @Test("with console=hvc0 the kernel's log and its KUnit results arrive through the virtio console", arguments: [1, 2])
        func console(cpus: Int) async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"), cpus: cpus,
                extraCommandLine: "kunit_shutdown=poweroff kunit.filter_glob=bits-test", timeout: 600, virtioConsole: true
            ) { config in config.virtioDevices = [.console] }
            #expect(boot.report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(boot.console.suffix(2000))")
            let console = try #require(boot.virtio.first)
            #expect(console.name == "virtio-console0")
            #expect(console.bytes == UInt64(boot.console.utf8.count), "\(console)")
            #expect(console.requests >= 1 && console.malformedRequests == 0, "\(console)")
            boot.expectAllKUnitSuitesPassed()
            #expect(boot.lines.contains { $0.hasPrefix("ok 1 bits-test") }, "\(boot.console.suffix(2000))")
        }

        /// A copy of the guest images' ext4 root (the spinning init as /sbin/init), removed
        /// by the caller.
        static func rootImageCopy() throws -> String {
            let source = try LinuxKernels.guestImages.get() + "/rootfs.ext4"
            let path = NSTemporaryDirectory() + "swiftvisor-root-\(UUID().uuidString).ext4"
            try FileManager.default.copyItem(atPath: source, toPath: path)
            return path
        }

        /// `dumpe2fs -h` on the host: the superblock's fields by name.
        static func superblock(_ path: String) throws -> [String: String] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/sbin/dumpe2fs")
            process.arguments = ["-h", path]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            var fields: [String: String] = [:]
            for line in text.split(separator: "\n") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return fields
        }

        /// The kernel mounts the ext4 image as its root, read-write, and starts /sbin/init
        /// from it: the superblock it wrote at mount is on the host's file afterwards.
        @Test(
            "the test kernel mounts an ext4 disk as its root read-write and runs /sbin/init from it; dumpe2fs sees the mount",
            arguments: [1, 2])
        func ext4Root(cpus: Int) async throws {
            let path = try Self.rootImageCopy()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let before = try Self.superblock(path)
            let start = Int(Date().timeIntervalSince1970)
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"), cpus: cpus,
                extraCommandLine: "root=/dev/vda rw kunit.enable=0", timeout: 600, until: "Run /sbin/init as init process"
            ) { config in config.virtioDevices = [.block(path: path, readOnly: false)] }
            let end = Int(Date().timeIntervalSince1970)
            #expect(boot.report.outcome == .stopped(.requested), "\(boot.console.suffix(2000))")
            #expect(
                boot.console.contains("virtio_blk virtio0: [vda] 32768 512-byte logical blocks"), "\(boot.console.suffix(3000))")
            #expect(boot.console.contains("VFS: Mounted root (ext4 filesystem) on device"), "\(boot.console.suffix(3000))")
            #expect(boot.console.contains("Run /sbin/init as init process"))
            #expect(!boot.console.contains("Kernel panic"))
            let after = try Self.superblock(path)
            let mounts = (Int(before["Mount count"] ?? "") ?? -1, Int(after["Mount count"] ?? "") ?? -1)
            #expect(mounts.0 >= 0 && mounts.1 == mounts.0 + 1, "mount count \(mounts)")
            // "Last mount time" in dumpe2fs's C-locale form; parsed back to seconds.
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "UTC")
            formatter.dateFormat = "EEE MMM d HH:mm:ss yyyy"
            let text = (after["Last mount time"] ?? "").replacingOccurrences(of: "  ", with: " ")
            let mounted = try #require(formatter.date(from: text), "last mount time '\(text)'")
            let seconds = Int(mounted.timeIntervalSince1970)
            #expect(seconds >= start - 1 && seconds <= end + 1, "mounted at \(seconds), test ran \(start)-\(end)")
            let disk = try #require(boot.virtio.first)
            #expect(disk.requests > 0 && disk.malformedRequests == 0 && disk.bytes > 0, "\(disk)")
        }

        /// A read-only disk offers VIRTIO_BLK_F_RO: the kernel's read-write open of its root
        /// fails, it falls back to a read-only mount, and the file does not change by a byte.
        @Test("a read-only disk is refused the kernel's read-write mount; it mounts read-only and the file is unchanged")
        func readOnlyRoot() async throws {
            let path = try Self.rootImageCopy()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let original = try Data(contentsOf: URL(fileURLWithPath: path))
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"),
                extraCommandLine: "root=/dev/vda rw kunit.enable=0", timeout: 600, until: "Run /sbin/init as init process"
            ) { config in config.virtioDevices = [.block(path: path, readOnly: true)] }
            #expect(boot.report.outcome == .stopped(.requested), "\(boot.console.suffix(2000))")
            #expect(boot.console.contains("/dev/root: Can't open blockdev"), "\(boot.console.suffix(3000))")
            #expect(
                boot.console.contains("VFS: Mounted root (ext4 filesystem) readonly on device"), "\(boot.console.suffix(3000))")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == original)
        }
    }
}

extension VirtioDeviceStatistics {
    /// The same figures with the interrupt count zeroed, for comparing the rest exactly.
    var withoutInterrupts: VirtioDeviceStatistics {
        VirtioDeviceStatistics(
            name: name, notifications: notifications, interrupts: 0, requests: requests,
            malformedRequests: malformedRequests, bytes: bytes, dropped: dropped)
    }
}
