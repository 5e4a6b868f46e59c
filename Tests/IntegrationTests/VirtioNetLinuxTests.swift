import CNativeOps
import Foundation
import Glibc
import SwiftVisor
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
    }
}
