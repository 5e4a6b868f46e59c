import Foundation
import Glibc
import SwiftVisorGuests
import Testing

/// `swiftvisor boot` as a user runs it: bad input of every kind gets one line and status 1,
/// and Debian's stock kernel starts with no extra options.
extension KVMIntegration.CLITests {
    func testBzImage() throws -> [UInt8] {
        try LinuxKernels.testKernelFile("bzImage")
    }

    @Test("boot: a file that is neither a bzImage nor an x86-64 ELF")
    func bootNotAKernel() throws {
        let path = try temporaryFile(Array("#!/bin/sh\necho this is a script, not a kernel\n".utf8))
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path]), mentioning: "not a Linux kernel: neither a bzImage")
    }

    @Test("boot: a truncated bzImage")
    func bootTruncated() throws {
        let path = try temporaryFile(Array(try testBzImage().prefix(0x400)))
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path]), mentioning: "truncated")
    }

    @Test("boot: a boot protocol older than 2.12")
    func bootOldProtocol() throws {
        var image = try testBzImage()
        image[0x206] = 0x0B  // 2.11
        let path = try temporaryFile(image)
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path]), mentioning: "2.11")
    }

    @Test("boot: a bzImage without a 64-bit entry point")
    func bootNo64BitEntry() throws {
        var image = try testBzImage()
        image[0x236] &= ~1  // XLF_KERNEL_64
        let path = try temporaryFile(image)
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path]), mentioning: "64-bit")
    }

    @Test("boot: a corrupt compressed payload")
    func bootCorruptPayload() throws {
        var image = try testBzImage()
        let setup = (Int(image[0x1F1]) + 1) * 512
        let offset = setup + Int(UInt32(image[0x248]) | UInt32(image[0x249]) << 8 | UInt32(image[0x24A]) << 16)
        for i in (offset + 5000)..<(offset + 5400) { image[i] ^= 0x5A }
        let path = try temporaryFile(image)
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path]), mentioning: "gzip")
    }

    @Test("boot: an initrd that does not fit in guest memory")
    func bootInitrdTooLarge() throws {
        let kernel = try temporaryFile(try testBzImage())
        let initrd = try temporaryFile([UInt8](repeating: 0x30, count: 40 << 20))
        defer { removeFile(kernel); removeFile(initrd) }
        expectOneLineError(
            try run(["boot", "--kernel", kernel, "--initrd", initrd, "--memory", "48M"]),
            mentioning: "initrd of")
    }

    @Test("boot: a command line longer than the kernel accepts")
    func bootCommandLineTooLong() throws {
        let kernel = try temporaryFile(try testBzImage())
        defer { removeFile(kernel) }
        expectOneLineError(
            try run(["boot", "--kernel", kernel, "--cmdline-replace", String(repeating: "a", count: 4000)]),
            mentioning: "command line of 4000 bytes")
    }

    @Test("boot: PVH asked of an ELF without the PVH note")
    func bootPVHWithoutNote() throws {
        let path = try temporaryFile(GuestImages.hello)
        defer { removeFile(path) }
        expectOneLineError(try run(["boot", "--kernel", path, "--boot-protocol", "pvh"]), mentioning: "no PVH entry point")
    }

    @Test("boot: a kernel file that does not exist")
    func bootMissingFile() throws {
        expectOneLineError(try run(["boot", "--kernel", "/nonexistent/vmlinuz"]), mentioning: "/nonexistent/vmlinuz")
    }

    @Test("boot --console virtio: the kernel's console is hvc0, and its KUnit results come through the virtio console")
    func bootVirtioConsole() throws {
        let dir = try LinuxKernels.testKernel.get()
        let result = try run([
            "boot", "--kernel", dir + "/vmlinux", "--memory", "64M", "--console", "virtio", "--stats",
            "--cmdline", "kunit_shutdown=poweroff kunit.filter_glob=bits-test",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("ok 1 bits-test"), "\(result.stdout.suffix(2000))")
        let line = result.stderr.split(separator: "\n").first { $0.hasPrefix("virtio-console0: ") }
        #expect(line != nil, "\(result.stderr)")
        // Every byte on standard output came through the device: COM1 is not a console.
        #expect(line?.contains(" \(result.stdout.utf8.count) bytes") == true, "\(line ?? "")")
    }

    @Test("boot --config-file: a Firecracker configuration file boots the test kernel with its vCPUs, memory and devices")
    func bootConfigFile() throws {
        let dir = try LinuxKernels.testKernel.get()
        let file = try temporaryFile(
            Array(
                #"""
                {"boot-source": {"kernel_image_path": "\#(dir)/vmlinux",
                                 "boot_args": "console=ttyS0 reboot=k panic=1 kunit_shutdown=poweroff kunit.filter_glob=bits-test"},
                 "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "entropy": {}}
                """#.utf8))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try run(["boot", "--config-file", file, "--stats"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("ok 1 bits-test"), "\(result.stdout.suffix(2000))")
        #expect(result.stdout.contains("Memory: "), "\(result.stdout.prefix(3000))")
        // The entropy device from the file is there: its statistics line is printed.
        #expect(result.stderr.contains("virtio-rng0: "), "\(result.stderr)")
        let bad = try temporaryFile(Array(#"{"drives": []}"#.utf8))
        defer { try? FileManager.default.removeItem(atPath: bad) }
        expectOneLineError(try run(["boot", "--config-file", bad]), mentioning: "boot-source")
        let both = try run(["boot", "--config-file", file, "--kernel", dir + "/vmlinux"])
        #expect(both.status == 64)
        #expect(both.stderr.contains("either --kernel or --config-file"), "\(both.stderr)")
    }

    @Test("boot --on-reboot restart boots again after a reset; SIGTERM then stops it")
    func bootRestartsOnReset() throws {
        let dir = try LinuxKernels.testKernel.get()
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = [
            "boot", "--kernel", dir + "/vmlinux", "--memory", "64M", "--on-reboot", "restart",
            "--cmdline", "kunit_shutdown=reboot kunit.filter_glob=bits-test",
        ]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Drain the console so the guest never blocks on a full pipe.
        let console = Thread { while !out.fileHandleForReading.availableData.isEmpty {} }
        console.start()
        var seen = ""
        let deadline = Date().addingTimeInterval(600)
        while !seen.contains("booting again (boot 2)"), Date() < deadline, process.isRunning {
            seen += String(decoding: err.fileHandleForReading.availableData, as: UTF8.self)
        }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(seen.contains("swiftvisor: guest requested a reset (port 0xCF9)"), "\(seen)")
        #expect(seen.contains("swiftvisor: the guest reset; booting again (boot 2)"), "\(seen)")
        #expect(process.terminationStatus == 128 + SIGTERM)
    }

    @Test(
        "boot: the debug-exit port is off by default, so a kernel's write to 0x501 does not end the VM; --debug-exit-port turns it on"
    )
    func bootDebugExitPortDefault() throws {
        // exit_status as a vmlinux: entered with Linux's zero page instead of its boot-info
        // block, it writes status 3 (bad boot info) to port 0x501 and halts.
        let kernel = try temporaryFile(try #require(builtinImage("exit_status")))
        defer { removeFile(kernel) }
        #expect(try run(["boot", "--kernel", kernel, "--memory", "64M", "--debug-exit-port"]).status == 3)
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = ["boot", "--kernel", kernel, "--memory", "64M", "--stats"]
        let err = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // The write is blocked and the guest halts: the VM runs on until it is stopped.
        usleep(500_000)
        #expect(process.isRunning)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 128 + SIGTERM, "\(stderr)")
        #expect(!stderr.contains("debug-exit"), "\(stderr)")
    }

    @Test("cpuid lists the host-quirk findings a Linux boot acts on")
    func cpuidListsQuirks() throws {
        let result = try run(["cpuid"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("host quirks: probed in"))
    }

    @Test("boot: Debian's stock cloud kernel, with no extra options, reaches its banner and early lines; SIGTERM stops it")
    func bootStockKernel() throws {
        let kernel = try LinuxKernels.stockKernel.get()
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = ["boot", "--kernel", kernel]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        // The console registers after the early set-up and replays the log from the banner on.
        var seen = ""
        let wanted = ["Linux version 6.1", "Hypervisor detected: KVM", "BIOS-e820", "smpboot: Allowing 1 CPUs", "Memory: "]
        let deadline = Date().addingTimeInterval(900)
        while !wanted.allSatisfy(seen.contains), Date() < deadline, process.isRunning {
            seen += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        let elapsed = Date().timeIntervalSince(start)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        print("stock kernel: banner and early lines after \(Int(elapsed)) s")
        for line in wanted { #expect(seen.contains(line), "missing '\(line)' in: \(seen.suffix(3000))") }
        #expect(process.terminationStatus == 128 + SIGTERM)
    }
}
