// swiftvisor-bench virtio-net: the network device's frame path, driven from CPL3 by the
// virtio_net_bench guest (guest -> TAP -> reflector -> TAP -> guest), beside a host program
// that sends the same frames through a TAP of its own to the same reflector, and the C
// reference's exit round trip, in the same run. Needs root: it makes a TAP per round and
// the reflector's packet socket.
import CBenchSupport
import Glibc
import SwiftVisor
import SwiftVisorGuests
import VisorHost

/// The frames both sides send: the 12-byte virtio-net header (zeros), then 1,500 bytes:
/// destination 02:00:00:00:00:01, source `mac`, ethertype 0x88B5, the sequence number
/// (8 bytes, little-endian), a fixed pattern, and the sequence number XOR `trailerKey` as
/// the last 8 bytes. The layout of Guests/virtio_net_bench.c.
enum NetBenchFrame {
    static let header = 12
    static let length = 1500
    static let etherType: UInt16 = 0x88B5
    static let trailerKey: UInt64 = 0x5eed_f00d_cafe_1234
    /// The source address of both sides: the guest's device gets it as its MAC.
    static let mac: [UInt8] = VirtioDeviceConfiguration.defaultMAC(index: 0)

    static func template() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: header + length)
        bytes[header] = 0x02
        bytes[header + 5] = 0x01
        for i in 0..<6 { bytes[header + 6 + i] = mac[i] }
        bytes[header + 12] = UInt8(etherType >> 8)
        bytes[header + 13] = UInt8(truncatingIfNeeded: etherType)
        for i in 22..<(length - 8) { bytes[header + i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
        return bytes
    }

    static func store(_ value: UInt64, _ bytes: inout [UInt8], at offset: Int) {
        for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    static func load(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return value
    }

    /// Sets frame `sequence`'s number and trailer.
    static func number(_ bytes: inout [UInt8], _ sequence: UInt64) {
        store(sequence, &bytes, at: header + 14)
        store(sequence ^ trailerKey, &bytes, at: header + length - 8)
    }

    /// The sequence number of a frame read back (`count` bytes with the header) when it is
    /// one of ours, below `sent`; nil for anything else.
    static func sequence(of bytes: [UInt8], count: Int, sent: UInt64) -> UInt64? {
        guard count == header + length, bytes[header + 12] == UInt8(etherType >> 8),
            bytes[header + 13] == UInt8(truncatingIfNeeded: etherType)
        else { return nil }
        for i in 0..<6 where bytes[header + 6 + i] != mac[i] { return nil }
        let sequence = load(bytes, at: header + 14)
        guard sequence < sent, load(bytes, at: header + length - 8) == sequence ^ trailerKey else { return nil }
        return sequence
    }
}

/// Why a round of the network benchmark failed (the TAP is removed before the message).
struct NetBenchFailure: Error {
    let message: String
}

/// A persistent TAP made with `ip` for one round, up; `remove()` deletes it.
struct BenchTAP {
    let name: String

    static let ipPath: String = {
        // SAFETY: access reads a string literal's NUL-terminated storage.
        unsafe access("/usr/sbin/ip", X_OK) == 0 ? "/usr/sbin/ip" : "/sbin/ip"
    }()

    init(name: String) throws(NetBenchFailure) {
        self.name = name
        let add = spawn([Self.ipPath, "tuntap", "add", "dev", name, "mode", "tap"])
        guard add.status == 0 else {
            throw NetBenchFailure(
                message:
                    "cannot create TAP \(name) (ip tuntap add exited with \(add.status)): the virtio-net benchmark needs root (CAP_NET_ADMIN for the TAP, CAP_NET_RAW for the reflector) and /dev/net/tun"
            )
        }
        let up = spawn([Self.ipPath, "link", "set", name, "up"])
        guard up.status == 0 else {
            remove()
            throw NetBenchFailure(message: "cannot bring TAP \(name) up (ip link set up exited with \(up.status))")
        }
    }

    func remove() { _ = spawn([Self.ipPath, "link", "del", name]) }

    /// One of the interface's counters in /sys/class/net/NAME/statistics (0 if unreadable).
    func counter(_ counter: String) -> UInt64 {
        guard let fd = try? HostIO.openReadOnly("/sys/class/net/\(name)/statistics/\(counter)") else { return 0 }
        defer { HostIO.closeDescriptor(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = HostIO.read(from: fd, into: &buffer)
        guard n > 0 else { return 0 }
        return UInt64(String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n").first ?? "") ?? 0
    }

    /// The counters that say where frames went missing.
    var statistics: String {
        ["rx_packets", "rx_dropped", "tx_packets", "tx_dropped"].map { "\($0)=\(counter($0))" }.joined(separator: " ")
    }
}

/// The reflector thread (CBenchSupport) on one interface. `@safe`: its handle never leaves
/// this type, which stops and frees it once.
@safe final class BenchReflector {
    private var reflector: OpaquePointer?

    init(interface: String) throws(NetBenchFailure) {
        // SAFETY: the C function reads the NUL-terminated name and writes one pointer into
        // the property, during the call.
        let error = unsafe bench_reflector_start(interface, &reflector)
        guard error == 0 else {
            throw NetBenchFailure(
                message:
                    "cannot start the reflector on \(interface): \(HostIO.errnoText(error)) (an AF_PACKET socket needs root: CAP_NET_RAW)"
            )
        }
    }

    /// The frames its socket dropped so far (a full receive buffer).
    func dropped() -> UInt64 {
        guard let reflector = unsafe self.reflector else { return 0 }
        // SAFETY: the reflector is running (stop() clears the handle); the call reads its socket.
        return unsafe bench_reflector_dropped(reflector)
    }

    /// Stops the thread; the frames it sent back and its failed sends.
    func stop() -> (reflected: UInt64, failed: UInt64) {
        guard let reflector = unsafe self.reflector else { return (0, 0) }
        unsafe self.reflector = nil
        var failed: UInt64 = 0
        // SAFETY: the reflector was started and is stopped (and freed) only here, once;
        // the count goes into a local.
        let reflected = unsafe bench_reflector_stop(reflector, &failed)
        return (reflected, failed)
    }

    deinit { _ = stop() }
}

/// One side's run: time per frame (first send to last frame back), and for the guest its
/// notifications per frame and the vCPU thread's user time per frame.
struct NetRound {
    var nsPerFrame: Double
    var notificationsPerFrame: Double = 0
    var userNsPerFrame: Double = 0
}

/// The baseline: this process opens the TAP itself (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a
/// 12-byte header, non-blocking: `HostTap`, as the VMM does) and sends `count` frames with
/// at most `window` away, polling for those that come back, as the guest does.
func hostTapRound(tap name: String, count: Int, window: Int) throws(NetBenchFailure) -> NetRound {
    let tap: HostTap
    do { tap = try HostTap.open(name) } catch { throw NetBenchFailure(message: "baseline: \(error.reason)") }
    var frames = [[UInt8]](repeating: NetBenchFrame.template(), count: window)
    var receive = [UInt8](repeating: 0, count: NetBenchFrame.header + 65536)
    var seen = [Bool](repeating: false, count: count)
    var sent = 0, returned = 0, idle = 0
    var lastProgress = now()
    let start = now()
    while returned < count {
        var progress = false
        reading: while true {
            switch tap.receive(into: &receive) {
            case .done(let n):
                if let sequence = NetBenchFrame.sequence(of: receive, count: n, sent: UInt64(sent)), !seen[Int(sequence)] {
                    seen[Int(sequence)] = true
                    returned += 1
                    progress = true
                }
            case .wouldBlock:
                break reading
            case .failed(let code):
                throw NetBenchFailure(message: "baseline: reading TAP \(name): \(HostIO.errnoText(code))")
            }
        }
        sending: while sent < count, sent - returned < window {
            let slot = sent % window
            NetBenchFrame.number(&frames[slot], UInt64(sent))
            switch tap.send(frames[slot], count: NetBenchFrame.header + NetBenchFrame.length) {
            case .done: sent += 1
            case .wouldBlock: break sending
            case .failed(let code): throw NetBenchFailure(message: "baseline: writing TAP \(name): \(HostIO.errnoText(code))")
            }
        }
        if progress {
            idle = 0
            lastProgress = now()
        } else {
            idle += 1
            if idle % 4096 == 0, now() - lastProgress > 10_000_000_000 {
                throw NetBenchFailure(message: "baseline: nothing came back for 10 s (\(returned) of \(count) returned)")
            }
        }
    }
    return NetRound(nsPerFrame: Double(now() - start) / Double(count))
}

/// One run of the benchmark guest on TAP `name`: time per frame between its probe writes.
@MainActor func virtioNetRound(tap name: String, count: Int, window: Int, poll: Bool = false) throws(NetBenchFailure)
    -> NetRound
{
    var config = MachineConfiguration(guest: .elf(GuestImages.virtioNetBench))
    config.commandLine = "\(count) \(window)"
    config.virtioDevices = [.net(tap: name, mac: NetBenchFrame.mac)]
    config.seccomp = !noSeccomp
    if poll { config.virtioPollMicroseconds = 32 }
    let console = BenchConsole()
    config.consoleOutput = console.sink
    let device = ProbePort(expected: 2)
    config.portDevices = [.init(name: "probe", range: try! PortRange(base: 0x510, count: 1), device: device)]
    let report: RunReport
    do { report = try Machine(config).run() } catch { throw NetBenchFailure(message: "virtio-net benchmark machine: \(error)") }
    let output = console.text
    guard report.outcome == .stopped(.guestExit(status: 0)), device.probe.count == 2 else {
        throw NetBenchFailure(message: "virtio-net benchmark guest failed: \(report.outcome), output: \(output)")
    }
    // "virtio_net_bench: COUNT frames, N notifications, M returned"
    let words = output.split(whereSeparator: { $0 == " " || $0 == "\n" })
    guard let at = words.firstIndex(of: "notifications,"), at > 0, let notifications = Double(words[at - 1]),
        at + 1 < words.count, Int(words[at + 1]) == count
    else {
        throw NetBenchFailure(message: "virtio-net benchmark guest printed: \(output)")
    }
    let probe = device.probe
    let n = Double(count)
    return NetRound(
        nsPerFrame: Double(probe.lastTime - probe.firstTime) / n, notificationsPerFrame: notifications / n,
        userNsPerFrame: Double(probe.lastUser - probe.firstUser) / n)
}

/// One round for one window: a fresh TAP and reflector, the host program, then the guest.
@MainActor func virtioNetRoundPair(round: Int, window: Int) throws(NetBenchFailure) -> (
    host: NetRound, guest: NetRound, polled: NetRound
) {
    let tap = try BenchTAP(name: "swvb\(getpid() % 100_000)r\(round % 100)")
    defer { tap.remove() }
    let reflector = try BenchReflector(interface: tap.name)
    do {
        let host = try hostTapRound(tap: tap.name, count: netFrames, window: window)
        let guest = try virtioNetRound(tap: tap.name, count: netFrames, window: window)
        // The same with the transmit queue polled (--virtio-poll 32).
        let polled = try virtioNetRound(tap: tap.name, count: netFrames, window: window, poll: true)
        return (host, guest, polled)
    } catch {
        let dropped = reflector.dropped()
        let (reflected, failed) = reflector.stop()
        throw NetBenchFailure(
            message:
                "\(error.message) (window \(window); TAP \(tap.name): \(tap.statistics); reflector: \(reflected) frames sent back, \(failed) sends failed, \(dropped) dropped by its socket)"
        )
    }
}

@MainActor func virtioNetBenchmark() {
    var hostRounds: [Int: [NetRound]] = [:], guestRounds: [Int: [NetRound]] = [:], polledRounds: [Int: [NetRound]] = [:]
    var reference: [Double] = []
    for round in 0..<rounds {
        let ref = spawn([referencePath, "pio", String(exits)])
        guard let ns = field("ns_per_exit", ref.output) else { fatalError("reference printed: \(ref.output)") }
        reference.append(ns)
        for window in netWindows {
            do {
                let (host, guest, polled) = try virtioNetRoundPair(round: round, window: window)
                hostRounds[window, default: []].append(host)
                guestRounds[window, default: []].append(guest)
                polledRounds[window, default: []].append(polled)
            } catch {
                print("swiftvisor-bench virtio-net: \(error.message)")
                exit(1)
            }
        }
    }
    print(
        "virtio-net: frames=\(netFrames) (1,500 bytes each way) rounds=\(rounds) reference_exit_ns=\(format(median(reference))) (the I/O thread only: the network device needs it)"
    )
    for window in netWindows {
        let host = median(hostRounds[window]!.map(\.nsPerFrame))
        let polled = median(polledRounds[window]!.map(\.nsPerFrame))
        print(
            "virtio-net window=\(window) poll: guest_frames_per_s=\(format(1e9 / polled)) ratio=\(format(host / polled, 3)) notifications_per_frame=\(format(median(polledRounds[window]!.map(\.notificationsPerFrame)), 3))"
        )
        let guest = median(guestRounds[window]!.map(\.nsPerFrame))
        let ratio = host / guest
        print(
            "virtio-net window=\(window): guest_frames_per_s=\(format(1e9 / guest)) host_tap_frames_per_s=\(format(1e9 / host)) ratio=\(format(ratio, 3)) (target 0.8: \(ratio >= 0.8 ? "met" : "not met")) notifications_per_frame=\(format(median(guestRounds[window]!.map(\.notificationsPerFrame)), 3)) vcpu_user_ns_per_frame=\(format(median(guestRounds[window]!.map(\.userNsPerFrame))))"
        )
    }
}
