import CNativeOps
import Foundation
import Glibc
import SwiftVisor
import VisorHost
import Testing

/// Whether this process may make TAP interfaces and raw sockets: root with /dev/net/tun.
enum TAPAccess {
    // SAFETY: access reads a string literal.
    static let available = getuid() == 0 && (unsafe access("/dev/net/tun", R_OK | W_OK)) == 0
}

/// A persistent TAP interface made with `ip`, with the host's address on it, up; removed
/// by `remove()` (call it in a defer).
struct HostTAPInterface {
    let name: String

    static func ip(_ arguments: [String], quiet: Bool = false) throws {
        let process = Process()
        if quiet { process.standardError = FileHandle.nullDevice }
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        if !FileManager.default.fileExists(atPath: "/usr/sbin/ip") { process.executableURL = URL(fileURLWithPath: "/sbin/ip") }
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw LinuxKernels.ScriptFailed(description: "ip \(arguments.joined(separator: " ")) failed")
        }
    }

    init(name: String, hostAddress: String) throws {
        self.name = name
        try? Self.ip(["link", "del", name], quiet: true)  // a leftover of an interrupted run
        try Self.ip(["tuntap", "add", "dev", name, "mode", "tap"])
        do {
            try Self.ip(["addr", "add", hostAddress, "dev", name])
            try Self.ip(["link", "set", name, "up"])
        } catch {
            remove()
            throw error
        }
    }

    func remove() { try? Self.ip(["link", "del", name]) }
}

extension KVMIntegration {
    @Suite("Virtio net in Linux")
    struct VirtioNetLinuxTests {
        static let host = "172.30.0.1"
        static let guest = "172.30.0.2"
        /// The spinning init's images, made once (the script is retried once: it has been
        /// seen to end with SIGPIPE, status 141, on a cached run).
        static let guestImages: Result<String, any Error> = Result {
            do { return try LinuxKernels.script("make-guest-images.sh") } catch {
                return try LinuxKernels.script("make-guest-images.sh")
            }
        }

        /// The test kernel with the spinning init stays up with its network configured
        /// (`ip=`); the host pings it through the TAP and gets its kernel's replies, and a
        /// TCP connection to a closed port gets its reset. Needs root (a TAP and a raw
        /// socket); CI runs as root.
        @Test(
            "the test kernel finds the network device, takes its MAC, answers pings through the TAP and resets a TCP connection",
            .enabled(if: TAPAccess.available, "needs root and /dev/net/tun (a TAP and a raw ICMP socket): skipped"),
            arguments: [1, 2])
        func pingAndReset(cpus: Int) async throws {
            let name = "swvtap\(getpid() % 10_000)c\(cpus)"
            let tap = try HostTAPInterface(name: name, hostAddress: Self.host + "/24")
            defer { tap.remove() }
            let images = try Self.guestImages.get()
            let initramfs = try [UInt8](Data(contentsOf: URL(fileURLWithPath: images + "/initramfs.cpio.gz")))
            let quirks = try LinuxKernels.quirks.get()
            let console = ConsoleCapture()
            let request = LinuxBootRequest(
                kernel: try LinuxKernels.testKernelFile("bzImage"), initrd: initramfs,
                commandLine: LinuxDefaults.commandLine(
                    quirks: quirks,
                    appending: "kunit.enable=0 ip=\(Self.guest)::\(Self.host):255.255.255.0::eth0:off"))
            var config = MachineConfiguration(guest: .linux(request))
            config.memorySize = 128 << 20
            config.vcpuCount = cpus
            config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
            config.consoleOutput = console.sink
            config.virtioDevices = [.net(tap: name, mac: nil)]
            let machine = try Machine(config)
            try machine.start()
            defer { machine.requestStop() }

            // Up with its address, and the spinning init running: the kernel is idle.
            let deadline = Date().addingTimeInterval(900)
            while Date() < deadline, !console.text.contains("Run /init as init process") {
                try await Task.sleep(for: .milliseconds(250))
            }
            let text = console.text
            #expect(text.contains("Run /init as init process"), "\(text.suffix(3000))")
            #expect(text.contains("IP-Config: Complete"), "\(text.suffix(3000))")
            #expect(text.contains("device=eth0, hwaddr=06:00:ac:10:00:00, ipaddr=\(Self.guest)"), "\(text.suffix(3000))")

            // ARP first, then the echo replies, all from the interpreted guest kernel.
            // SAFETY: the C functions only read the NUL-terminated address during the call.
            let replies = unsafe net_probe_ping(Self.guest, 5, 500, 60_000)
            #expect(replies == 5, "\(replies) of 5 echo requests answered")
            // SAFETY: as above.
            let refused = unsafe net_probe_tcp_connect(Self.guest, 7, 30_000)
            #expect(refused == ECONNREFUSED, "connect to a closed port: errno \(refused)")

            machine.requestStop()
            _ = await machine.wait()
            let net = try #require(machine.virtioStatistics.first)
            #expect(net.name == "virtio-net0")
            // At least the ARP answer, five echo replies and the reset went out, and as many
            // frames came in; none was malformed.
            #expect(net.requests >= 14 && net.malformedRequests == 0, "\(net.summary)")
            #expect(net.interrupts >= 1, "\(net.summary)")
            print("virtio-net, \(cpus) vCPU(s): \(net.summary)")
        }

        /// Connects to the vsock device's socket and asks for the guest's port 1234, where
        /// the test kernel (no user space, so no listener) must answer with a reset: the
        /// host's connection ends without "OK". True once it has ended so; false if it
        /// is still open after `seconds` (no guest answered) or the guest accepted.
        static func vsockGuestAnswers(_ udsPath: String, within seconds: Double = 60) async throws -> Bool {
            guard let client = HostSocket.connect(path: udsPath) else { return false }
            defer { HostSocket.close(client) }
            _ = HostSocket.send(client, Array("CONNECT 1234\n".utf8)[...])
            var buffer = [UInt8](repeating: 0, count: 64)
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                switch HostSocket.receive(client, into: &buffer, count: buffer.count) {
                case .transferred(0), .failed: return true
                case .transferred: return false  // "OK ...": something listens, which cannot be
                case .wouldBlock: try await Task.sleep(for: .milliseconds(20))
                }
            }
            return false
        }

        /// `e2fsck` on the host: replays the journal (as the next mount would, since the
        /// VM was stopped, not shut down), then checks everything read-only. The status of
        /// the check: 0 when the file system is clean.
        static func e2fsckAfterReplay(_ path: String) throws -> (status: Int32, output: String) {
            func run(_ arguments: [String]) throws -> (Int32, String) {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/sbin/e2fsck")
                process.arguments = arguments + [path]
                let out = Pipe()
                process.standardOutput = out
                process.standardError = out
                try process.run()
                let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                return (process.terminationStatus, text)
            }
            let (replayed, replayText) = try run(["-E", "journal_only", "-y"])
            guard replayed == 0 || replayed == 1 else { return (replayed, replayText) }
            return try run(["-f", "-n"])
        }

        /// The test kernel with its ext4 root on a virtio disk, a network device and vsock,
        /// snapshotted while idle and restored in a new machine once the first is gone (its
        /// TAP must be free to open again): the restored kernel answers pings through the
        /// TAP, its vsock driver answers a connection, and after it is stopped its disk is
        /// clean. The guest has no user space, so nothing writes files; the disk check is
        /// of what the kernel wrote (the mount, the journal).
        @Test(
            "the test kernel with a disk, a network device and vsock, restored in a new machine, answers pings and vsock; its disk is clean",
            .enabled(if: TAPAccess.available, "needs root and /dev/net/tun (a TAP and a raw ICMP socket): skipped"))
        func snapshotRestoreWithDevices() async throws {
            let name = "swvtap\(getpid() % 10_000)s"
            let tap = try HostTAPInterface(name: name, hostAddress: Self.host + "/24")
            defer { tap.remove() }
            let disk = try VirtioLinuxTests.rootImageCopy()
            defer { removeFile(disk) }
            let directory = NSTemporaryDirectory() + "swiftvisor-netsnap-" + UUID().uuidString.prefix(8)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let uds = directory + "/v.sock", state = directory + "/vm.state", memory = directory + "/vm.mem"
            let quirks = try LinuxKernels.quirks.get()
            let console = ConsoleCapture()
            let request = LinuxBootRequest(
                kernel: try LinuxKernels.testKernelFile("bzImage"),
                commandLine: LinuxDefaults.commandLine(
                    quirks: quirks,
                    appending: "kunit.enable=0 root=/dev/vda rw ip=\(Self.guest)::\(Self.host):255.255.255.0::eth0:off"))
            var config = MachineConfiguration(guest: .linux(request))
            config.memorySize = 128 << 20
            config.cpuid = quirks.linuxPolicy(from: CPUIDPolicy())
            config.consoleOutput = console.sink
            config.virtioDevices = [.block(path: disk, readOnly: false), .net(tap: name, mac: nil), .vsock(cid: 3, udsPath: uds)]

            do {
                let original = try Machine(config)
                try original.start()
                let deadline = Date().addingTimeInterval(900)
                while Date() < deadline, !console.text.contains("Run /sbin/init as init process") {
                    try await Task.sleep(for: .milliseconds(250))
                }
                try #require(console.text.contains("Run /sbin/init as init process"), "\(console.text.suffix(3000))")
                // SAFETY: the C function only reads the NUL-terminated address during the call.
                let before = unsafe net_probe_ping(Self.guest, 3, 500, 60_000)
                #expect(before == 3, "\(before) of 3 echo requests answered before the snapshot")
                #expect(try await Self.vsockGuestAnswers(uds), "vsock before the snapshot")
                await original.pause()
                try original.snapshot(statePath: state, memoryPath: memory)
                _ = await original.stop()
            }
            // The first machine is gone: its TAP, disk and socket are closed, so the restored
            // machine can open them again.
            removeFile(uds)

            let snapshot = try MachineSnapshot(statePath: state, memoryPath: memory)
            #expect(snapshot.shape.virtioDevices == config.virtioDevices)
            let restoredConsole = ConsoleCapture()
            var restoredConfig = MachineConfiguration(restoring: snapshot)
            restoredConfig.consoleOutput = restoredConsole.sink
            let restored = try Machine(restoredConfig)
            try restored.start()
            // SAFETY: as above.
            let after = unsafe net_probe_ping(Self.guest, 5, 500, 60_000)
            #expect(after == 5, "\(after) of 5 echo requests answered after the restore")
            #expect(try await Self.vsockGuestAnswers(uds), "vsock after the restore")
            _ = await restored.stop()
            #expect(!restoredConsole.text.contains("Kernel panic"), "\(restoredConsole.text.suffix(2000))")
            let statistics = restored.virtioStatistics
            let net = try #require(statistics.first { $0.name.hasPrefix("virtio-net") })
            #expect(net.requests >= 10 && net.malformedRequests == 0, "\(net.summary)")
            let fsck = try Self.e2fsckAfterReplay(disk)
            #expect(fsck.status == 0, "\(fsck.output)")
        }
    }
}
