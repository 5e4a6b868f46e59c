import Foundation
import Glibc
import SwiftVisor
import Testing

/// Kernels for the Linux boot tests, built or fetched by the scripts in Tools/linux (cached
/// outside the repository, so only the first run on a machine pays for them). The
/// environment variables SWIFTVISOR_TEST_KERNEL (a directory with bzImage and vmlinux) and
/// SWIFTVISOR_STOCK_KERNEL (a bzImage) override them.
enum LinuxKernels {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// Runs a script in Tools/linux and returns the path it prints.
    static func script(_ name: String) throws -> String {
        let process = Process()
        process.executableURL = repository.appendingPathComponent("Tools/linux/\(name)")
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ScriptFailed(description: "Tools/linux/\(name) failed with status \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    struct ScriptFailed: Error, CustomStringConvertible { var description: String }

    static let testKernel: Result<String, any Error> = Result {
        if let dir = ProcessInfo.processInfo.environment["SWIFTVISOR_TEST_KERNEL"] { return dir }
        return try script("build-test-kernel.sh")
    }

    /// The folder of Tools/linux/make-guest-images.sh: `init` (a static program that
    /// spins without a system call), `initramfs.cpio.gz` holding it as /init, and
    /// `rootfs.ext4` holding it as /sbin/init.
    static let guestImages: Result<String, any Error> = Result {
        if let dir = ProcessInfo.processInfo.environment["SWIFTVISOR_GUEST_IMAGES"] { return dir }
        return try script("make-guest-images.sh")
    }

    static let stockKernel: Result<String, any Error> = Result {
        if let path = ProcessInfo.processInfo.environment["SWIFTVISOR_STOCK_KERNEL"] { return path }
        return try script("fetch-stock-kernel.sh")
    }

    static func testKernelFile(_ name: String) throws -> [UInt8] {
        let dir = try testKernel.get()
        return try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir).appendingPathComponent(name)))
    }

    /// The host's quirks, probed once for all boots.
    static let quirks: Result<HostQuirks, any Error> = Result { () throws(any Error) -> HostQuirks in try HostQuirks.probe() }
}

/// What a test-kernel boot printed and how it ended.
struct LinuxBoot {
    var report: RunReport
    var console: String
    var seconds: Double
    /// What each virtio device did.
    var virtio: [VirtioDeviceStatistics] = []

    /// Console lines without their "[ time ]" prefix.
    var lines: [Substring] {
        // The serial console ends lines with CR LF, which Swift sees as one newline Character.
        console.split(whereSeparator: \.isNewline).map { line in
            guard line.hasPrefix("["), let close = line.firstIndex(of: "]") else { return line }
            return line[line.index(after: close)...].dropFirst()
        }
    }

    /// Every KUnit suite passed: one top-level "ok N" per suite of the plan "1..N", no
    /// "not ok" at any level, and a "# Totals: ... fail:0" line for every suite of more than
    /// one case (6.1 prints no totals for a suite with a single case).
    func expectAllKUnitSuitesPassed(sourceLocation: SourceLocation = #_sourceLocation) {
        let plan = lines.first { $0.hasPrefix("1..") }.flatMap { Int($0.dropFirst(3)) } ?? 0
        let totals = lines.filter { $0.hasPrefix("# Totals: ") }
        let topLevelOK = lines.filter { $0.hasPrefix("ok ") }
        let multiCaseSuites = lines.filter { $0.hasPrefix("    1..") }.filter { (Int($0.dropFirst(7)) ?? 0) > 1 }
        #expect(plan > 0, "no KUnit plan line in the console", sourceLocation: sourceLocation)
        #expect(topLevelOK.count == plan, "\(topLevelOK.count) suites ok of \(plan)", sourceLocation: sourceLocation)
        #expect(
            totals.count == multiCaseSuites.count,
            "\(totals.count) '# Totals' lines for \(multiCaseSuites.count) suites of several cases",
            sourceLocation: sourceLocation)
        for line in totals {
            #expect(line.contains(" fail:0 "), "\(line)", sourceLocation: sourceLocation)
        }
        #expect(!lines.contains { $0.drop { $0 == " " }.hasPrefix("not ok ") }, sourceLocation: sourceLocation)
    }
}

/// Boots the test kernel (or `kernel`) with SwiftVisor's Linux defaults and the probed
/// quirks, plus `extraCommandLine`, and waits for it to end; a boot that runs past
/// `timeout` seconds is stopped and reported as such.
func bootLinux(
    kernel: [UInt8], protocol bootProtocol: LinuxBootProtocol = .linux64, cpus: Int = 1,
    memory: UInt64 = 128 << 20, initrd: [UInt8]? = nil, hostDecompression: Bool = true,
    extraCommandLine: String, timeout: Double = 900, virtioConsole: Bool = false, until marker: String? = nil,
    configure: (inout MachineConfiguration) -> Void = { _ in }
) async throws -> LinuxBoot {
    let quirks = try LinuxKernels.quirks.get()
    let console = ConsoleCapture()
    let request = LinuxBootRequest(
        kernel: kernel, initrd: initrd,
        commandLine: LinuxDefaults.commandLine(quirks: quirks, appending: extraCommandLine, virtioConsole: virtioConsole),
        bootProtocol: bootProtocol, hostDecompression: hostDecompression)
    var config = MachineConfiguration(guest: .linux(request))
    config.memorySize = memory
    config.vcpuCount = cpus
    config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
    config.consoleOutput = console.sink
    configure(&config)
    let machine = try Machine(config)
    let start = Date()
    try machine.start()
    let watchdog = Task {
        let deadline = Date().addingTimeInterval(timeout)
        // With a marker, the boot is stopped once the console shows it (a kernel kept alive
        // by a spinning init never ends by itself).
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(250))
            if let marker, console.text.contains(marker) { break }
        }
        machine.requestStop()
    }
    let report = await machine.wait()
    watchdog.cancel()
    return LinuxBoot(
        report: report, console: console.text, seconds: Date().timeIntervalSince(start), virtio: machine.virtioStatistics)
}

/// A newc cpio archive (what an initramfs is) holding one file.
func cpioArchive(fileName: String, contents: [UInt8]) -> [UInt8] {
    func entry(_ name: String, mode: UInt32, data: [UInt8], inode: UInt32) -> [UInt8] {
        let fields: [UInt32] = [inode, mode, 0, 0, 1, 0, UInt32(data.count), 0, 0, 0, 0, UInt32(name.utf8.count + 1), 0]
        var out = Array("070701".utf8)
        for field in fields {
            let hex = String(field, radix: 16, uppercase: true)
            out += Array((String(repeating: "0", count: 8 - hex.count) + hex).utf8)
        }
        out += Array(name.utf8) + [0]
        while out.count % 4 != 0 { out.append(0) }
        out += data
        while out.count % 4 != 0 { out.append(0) }
        return out
    }
    var archive = entry(fileName, mode: 0o100644, data: contents, inode: 1)
    archive += entry("TRAILER!!!", mode: 0, data: [], inode: 0)
    while archive.count % 512 != 0 { archive.append(0) }
    return archive
}

extension KVMIntegration {
    /// Our own minimal 6.1 kernel (Tools/linux) runs its built-in KUnit suites and powers
    /// off through ACPI, in every combination of entry protocol, vCPU count and file.
    @Suite("Linux boot")
    struct LinuxBootTests {
        @Test("bzImage, host-decompressed, 64-bit protocol, 1 vCPU, with an initrd: KUnit passes, ACPI power-off")
        func bzImageLinux64OneCPU() async throws {
            let initrd = cpioArchive(fileName: "hello.txt", contents: Array("hello from the initrd\n".utf8))
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"), initrd: initrd,
                extraCommandLine: "initramfs_async=0 kunit_shutdown=poweroff")
            print("linux64, 1 vCPU, bzImage: powered off after \(Int(boot.seconds)) s")
            #expect(boot.report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(boot.console.suffix(2000))")
            #expect(boot.report.exitStatus == 0)
            boot.expectAllKUnitSuitesPassed()
            #expect(boot.console.contains("Unpacking initramfs..."))
            #expect(boot.console.contains("Freeing initrd memory"))
            #expect(!boot.console.contains("Initramfs unpacking failed"))
            #expect(boot.console.contains("Hypervisor detected: KVM"))
            // The kernel read the host's time from the CMOS RTC: "setting system clock to
            // 2026-11-27T14:09:41 UTC (1795788581)", an epoch time within the boot.
            let clockLine = boot.lines.first { $0.contains("rtc_cmos") && $0.contains("setting system clock to") }
            let epoch = clockLine.flatMap { line in
                line.split(separator: "(").last.flatMap { Int($0.prefix { $0.isNumber }) }
            }
            let end = Int(time(nil))
            #expect(
                epoch != nil && epoch! >= end - Int(boot.seconds) - 2 && epoch! <= end + 2,
                "RTC line: \(clockLine ?? "none"), host time at the end: \(end)")
            #expect(boot.console.contains("serio: i8042 KBD port at 0x60,0x64 irq 1"))
        }

        @Test("vmlinux, PVH, 2 vCPUs: both CPUs up, KUnit passes, ACPI power-off")
        func vmlinuxPVHTwoCPUs() async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("vmlinux"), protocol: .pvh, cpus: 2,
                extraCommandLine: "kunit_shutdown=poweroff")
            print("pvh, 2 vCPUs, vmlinux: powered off after \(Int(boot.seconds)) s")
            #expect(boot.report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(boot.console.suffix(2000))")
            #expect(boot.console.contains("smp: Brought up 1 node, 2 CPUs"))
            boot.expectAllKUnitSuitesPassed()
        }

        @Test("vmlinux, 64-bit protocol, 2 vCPUs: both CPUs up, KUnit passes, ACPI power-off")
        func vmlinuxLinux64TwoCPUs() async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("vmlinux"), cpus: 2,
                extraCommandLine: "kunit_shutdown=poweroff")
            print("linux64, 2 vCPUs, vmlinux: powered off after \(Int(boot.seconds)) s")
            #expect(boot.report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(boot.console.suffix(2000))")
            #expect(boot.console.contains("smp: Brought up 1 node, 2 CPUs"))
            boot.expectAllKUnitSuitesPassed()
        }

        @Test("bzImage, host-decompressed, PVH, 1 vCPU: KUnit passes, ACPI power-off")
        func bzImagePVHOneCPU() async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("bzImage"), protocol: .pvh,
                extraCommandLine: "kunit_shutdown=poweroff")
            print("pvh, 1 vCPU, bzImage: powered off after \(Int(boot.seconds)) s")
            #expect(boot.report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(boot.console.suffix(2000))")
            boot.expectAllKUnitSuitesPassed()
        }

        @Test("a machine built with the previous one's CMOS sees what the guest wrote there, as after a reboot")
        func batteryBackedCMOS() throws {
            var config = MachineConfiguration(guest: .linux(LinuxBootRequest(kernel: try LinuxKernels.testKernelFile("vmlinux"))))
            config.memorySize = 64 << 20
            let first = try Machine(config)
            let cmos = try #require(first.platform.cmos)
            _ = cmos.portWrite(port: 0x70, offset: 0, width: 1, value: 0x40)
            _ = cmos.portWrite(port: 0x71, offset: 1, width: 1, value: 0x5A)
            config.batteryBackedCMOS = cmos
            let second = try Machine(config)
            let kept = try #require(second.platform.cmos)
            #expect(kept === cmos)
            _ = kept.portWrite(port: 0x70, offset: 0, width: 1, value: 0x40)
            #expect(kept.portRead(port: 0x71, offset: 1, width: 1) & 0xFF == 0x5A)
            // Without it, a new machine gets fresh CMOS RAM.
            config.batteryBackedCMOS = nil
            let fresh = try #require(try Machine(config).platform.cmos)
            _ = fresh.portWrite(port: 0x70, offset: 0, width: 1, value: 0x40)
            #expect(fresh.portRead(port: 0x71, offset: 1, width: 1) & 0xFF != 0x5A)
        }

        @Test("a reboot request through the i8042 (reboot=k) ends the VM with a reset")
        func rebootThroughI8042() async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("vmlinux"), memory: 64 << 20,
                extraCommandLine: "reboot=k kunit_shutdown=reboot kunit.filter_glob=bits-test")
            #expect(boot.report.outcome == .stopped(.reset(source: "i8042")), "\(boot.console.suffix(2000))")
            #expect(boot.report.exitStatus == 0)
        }

        @Test("a reboot request through the FADT reset register (the default) ends the VM with a reset")
        func rebootThroughACPI() async throws {
            let boot = try await bootLinux(
                kernel: try LinuxKernels.testKernelFile("vmlinux"), memory: 64 << 20,
                extraCommandLine: "kunit_shutdown=reboot kunit.filter_glob=bits-test")
            #expect(boot.report.outcome == .stopped(.reset(source: "port 0xCF9")), "\(boot.console.suffix(2000))")
        }
    }
}
