package import VisorDevices
import VisorCore
import VisorHost
import VisorKVM
import VisorFirmware
import VisorMemory
package import VisorVirtio

/// A virtio device for the guest, carried by the virtio-mmio transport (version 2).
///
/// Device `i` in `MachineConfiguration.virtioDevices` gets the 4 KiB register window at
/// `0xD0000000 + i * 0x1000` and the `i`-th free ISA interrupt of 5, 6, 7, 10, 11, 13, 14
/// and 15, so a machine has at most eight. A Linux guest finds each device twice over:
/// `swiftvisor boot` (and `MachineConfiguration.Guest.linux`) appends
/// `virtio_mmio.device=4K@ADDRESS:IRQ` to the kernel command line, and the DSDT describes
/// it as a device with `_HID "LNRO0005"`. Devices need the in-kernel interrupt controller.
public enum VirtioDeviceConfiguration: Sendable, Equatable {
    /// The entropy device (ID 4): requests are filled from the host's `getrandom(2)`,
    /// at most 64 KiB each.
    case entropy

    /// The block device (ID 2) on the disk image at `path`: a regular file or a host block
    /// device whose size is a multiple of 512 bytes, opened once when the machine is built.
    /// A read-only disk offers VIRTIO_BLK_F_RO and refuses writes with an I/O error; the
    /// same file may back several read-only disks but only one writable one (the image is
    /// locked while the machine holds it). `id` is what the guest's GET_ID request returns
    /// (at most 20 bytes; by default `swiftvisor-disk<N>`, N the device's index).
    /// `rateLimiter` limits its requests (bandwidth: data bytes read or written; ops:
    /// requests); a rate-limited disk needs the I/O thread (`MachineConfiguration.virtioIOThread`).
    case block(path: String, readOnly: Bool, id: String? = nil, rateLimiter: RateLimiterConfiguration? = nil)

    /// The socket device (ID 19) for the guest context ID `cid` (3 to 2^32 - 2), in
    /// Firecracker's hybrid design: the machine listens on the Unix socket `udsPath`
    /// (which must not exist; it is removed when the machine, or the configuration that
    /// opened it with `openVsock()`, goes away). A host program connects there and sends
    /// `CONNECT <port>\n`; once the guest accepts, it reads `OK <hostport>\n` and the
    /// connection is a byte stream to the guest's listener on that port (no listener: the
    /// connection closes). A guest connecting to host port P reaches the Unix socket
    /// `udsPath_P`. Stream sockets only; at most one per machine; needs the I/O thread.
    case vsock(cid: UInt64, udsPath: String)

    /// The console device (ID 3), one port: the guest's output goes where COM1's does
    /// (`MachineConfiguration.consoleDescriptor` or `consoleOutput`), and
    /// `Machine.sendConsoleInput` feeds its input. A Linux guest uses it with
    /// `console=hvc0`. Its output is written on the vCPU thread that sent it, so a stop or
    /// pause ends a write blocked on a full pipe, as for COM1. At most one per machine.
    case console
    /// The network device (ID 1) on the TAP interface `tap`, opened once when the machine
    /// is built (an existing TAP is attached; a missing one is created, which needs
    /// CAP_NET_ADMIN, and lasts while the machine holds it). The guest sees the MAC address
    /// `mac` (6 bytes, unicast), by default `06:00:AC:10:00:NN` with NN the device's index
    /// (`VirtioDeviceConfiguration.defaultMAC(index:)`), and a link that is always up; no
    /// checksum or segmentation offloads. Frames longer than 65,535 bytes or than the
    /// guest's receive buffer are dropped and counted. Needs the I/O thread
    /// (`MachineConfiguration.virtioIOThread`). `receiveLimiter` and `transmitLimiter` limit
    /// each direction (bandwidth: frame bytes; ops: frames). `mtu` (68 to 65,535), when
    /// given, is offered to the guest with VIRTIO_NET_F_MTU; the TAP's own MTU is the
    /// host's to set to match (`ip link set TAP mtu N`).
    case net(
        tap: String, mac: [UInt8]?, receiveLimiter: RateLimiterConfiguration? = nil,
        transmitLimiter: RateLimiterConfiguration? = nil, mtu: UInt16? = nil)

    /// A network device given as `tap=NAME[,mac=AA:BB:CC:DD:EE:FF]` (the form of
    /// `swiftvisor --net`). Throws `MachineError.invalidDevices` with a one-line reason for
    /// a missing or bad `tap=`, a bad or multicast MAC, or an unknown key.
    public init(net text: String) throws(MachineError) {
        var tap: String?
        var mac: [UInt8]?
        for field in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw .invalidDevices("--net \(text): '\(field)' is not KEY=VALUE (tap=NAME or mac=MAC)")
            }
            switch parts[0] {
            case "tap":
                let name = String(parts[1])
                guard !name.isEmpty, name.utf8.count <= 15, !name.contains("/"), !name.contains(" ") else {
                    throw .invalidDevices("--net \(text): '\(name)' is not an interface name (1 to 15 bytes, no '/' or space)")
                }
                tap = name
            case "mac":
                guard let bytes = Self.parseMAC(parts[1]) else {
                    throw .invalidDevices("--net \(text): '\(parts[1])' is not a MAC address (six hex bytes, AA:BB:CC:DD:EE:FF)")
                }
                guard bytes[0] & 1 == 0, bytes != [0, 0, 0, 0, 0, 0] else {
                    throw .invalidDevices("--net \(text): '\(parts[1])' is not a unicast address")
                }
                mac = bytes
            default:
                throw .invalidDevices("--net \(text): unknown key '\(parts[0])' (tap=NAME[,mac=MAC])")
            }
        }
        guard let tap else { throw .invalidDevices("--net \(text): tap=NAME is missing") }
        self = .net(tap: tap, mac: mac)
    }

    /// Six two-digit hexadecimal bytes separated by colons, or nil (shared with the
    /// control API's `guest_mac`).
    package static func parseMAC(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    /// The MAC address a network device at `index` of `MachineConfiguration.virtioDevices`
    /// gets when none is given: locally administered, unicast, `06:00:AC:10:00:NN`.
    public static func defaultMAC(index: Int) -> [UInt8] { [0x06, 0x00, 0xAC, 0x10, 0x00, UInt8(truncatingIfNeeded: index)] }

    /// A MAC address as `AA:BB:CC:DD:EE:FF`.
    public static func formatMAC(_ mac: [UInt8]) -> String {
        mac.map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return byte < 16 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// A disk given as `PATH[,readonly][,id=NAME]` (the form of `swiftvisor --disk`; the
    /// two options in either order); nil for an empty path, or an ID that is empty or longer
    /// than 20 bytes. A comma is part of the path unless it starts one of the final options.
    public init?(disk text: String) {
        var path = Substring(text)
        var readOnly = false
        var id: String?
        for _ in 0..<2 {
            guard let comma = path.lastIndex(of: ",") else { break }
            let option = path[path.index(after: comma)...]
            if option == "readonly", !readOnly {
                readOnly = true
            } else if option.hasPrefix("id="), id == nil {
                let name = option.dropFirst(3)
                guard !name.isEmpty, name.utf8.count <= VirtioBlockDevice.identifierLength else { return nil }
                id = String(name)
            } else {
                break
            }
            path = path[..<comma]
        }
        guard !path.isEmpty else { return nil }
        self = .block(path: String(path), readOnly: readOnly, id: id)
    }

    /// A vsock device given as `cid=N,uds=PATH` or `uds=PATH,cid=N` (the form of
    /// `swiftvisor --vsock`); the path is the rest after `uds=` (or up to the last
    /// `,cid=`), so it may hold commas. Throws, with the reason, for a missing or repeated
    /// field, a CID that is not a number from 3 to 2^32 - 2 (0-2 and 2^32 - 1 are
    /// reserved), or an empty path or one longer than a Unix socket address holds (107
    /// bytes). Whether the path exists is checked when the socket is made.
    public init(vsock text: String) throws(MachineError) {
        let cidText: Substring
        let path: Substring
        if text.hasPrefix("cid=") {
            guard let comma = text.firstIndex(of: ","), text[text.index(after: comma)...].hasPrefix("uds=") else {
                throw .invalidDevices("--vsock \(text): give cid=N,uds=PATH")
            }
            cidText = text[text.index(text.startIndex, offsetBy: 4)..<comma]
            path = text[text.index(comma, offsetBy: 5)...]
        } else if text.hasPrefix("uds="),
            let comma = text.indices.last(where: { text[$0...].hasPrefix(",cid=") }),
            comma >= text.index(text.startIndex, offsetBy: 4)
        {
            path = text[text.index(text.startIndex, offsetBy: 4)..<comma]
            cidText = text[text.index(comma, offsetBy: 5)...]
        } else {
            throw .invalidDevices("--vsock \(text): give cid=N,uds=PATH")
        }
        guard let cid = UInt64(cidText), cid >= 3, cid <= UInt64(UInt32.max) - 1 else {
            throw .invalidDevices(
                "vsock CID \(cidText) is not a number from 3 to \(UInt32.max - 1) (0-2 and \(UInt32.max) are reserved)")
        }
        guard !path.isEmpty else { throw .invalidDevices("--vsock \(text): the socket path is empty") }
        guard path.utf8.count <= HostUnixListener.maximumPathLength else {
            throw .invalidDevices(
                "vsock socket \(path): longer than the \(HostUnixListener.maximumPathLength) bytes a socket path may have")
        }
        self = .vsock(cid: cid, udsPath: String(path))
    }

    /// The name in statistics, errors and the DSDT messages.
    public var name: String {
        switch self {
        case .entropy: "virtio-rng"
        case .block: "virtio-blk"
        case .vsock: "virtio-vsock"
        case .console: "virtio-console"
        case .net: "virtio-net"
        }
    }
}

/// A token bucket of a device's rate limiter, with Firecracker's meaning: `size` tokens
/// (bytes for a bandwidth bucket, requests or frames for an operations bucket), refilled at
/// `size` per `refillTimeMilliseconds`, plus a `oneTimeBurst` of extra tokens spent first and
/// never refilled. The bucket starts full. A `size` or refill time of 0 limits nothing. Any
/// values are accepted: the arithmetic never overflows.
public struct TokenBucketConfiguration: Sendable, Equatable {
    /// The bucket's capacity in tokens.
    public var size: UInt64
    /// Tokens spent before the bucket's own, once.
    public var oneTimeBurst: UInt64
    /// The time the bucket takes to refill from empty.
    public var refillTimeMilliseconds: UInt64

    /// A bucket of `size` tokens refilled every `refillTimeMilliseconds`, with `oneTimeBurst`.
    public init(size: UInt64, oneTimeBurst: UInt64 = 0, refillTimeMilliseconds: UInt64) {
        self.size = size
        self.oneTimeBurst = oneTimeBurst
        self.refillTimeMilliseconds = refillTimeMilliseconds
    }

    /// Whether the bucket limits anything (size and refill time both above 0).
    public var isEnabled: Bool { size > 0 && refillTimeMilliseconds > 0 }

    /// The device-side bucket, full at `now`; nil when it limits nothing.
    func bucket(now: UInt64) -> TokenBucket? {
        TokenBucket(size: size, oneTimeBurst: oneTimeBurst, refillTimeMilliseconds: refillTimeMilliseconds, now: now)
    }
}

/// A device's rate limiter, as Firecracker's `rate_limiter`: a bandwidth bucket (bytes) and
/// an operations bucket, each optional. A request that finds a bucket short waits in its
/// queue (not dropped, not failed) until the bucket has the tokens, checked again at most
/// 100 ms later. A single request larger than the bandwidth bucket goes through and blocks
/// the device for the time its excess takes to refill.
///
/// In `Machine.updateRateLimiter(device:_:)`, a nil bucket is left as it is, and a bucket
/// with size or refill time 0 turns that limit off.
public struct RateLimiterConfiguration: Sendable, Equatable {
    /// The bucket of bytes moved.
    public var bandwidth: TokenBucketConfiguration?
    /// The bucket of requests (or frames).
    public var ops: TokenBucketConfiguration?

    /// A limiter with the given buckets.
    public init(bandwidth: TokenBucketConfiguration? = nil, ops: TokenBucketConfiguration? = nil) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    /// Whether any bucket limits anything.
    public var isEnabled: Bool { bandwidth?.isEnabled == true || ops?.isEnabled == true }

    /// The device-side limiter, full at `now`.
    func limiter(now: UInt64) -> RateLimiter {
        RateLimiter(bandwidth: bandwidth?.bucket(now: now), ops: ops?.bucket(now: now))
    }
}

/// Where virtio devices sit.
public enum VirtioLayout {
    /// The first device's register window.
    public static let base: UInt64 = 0xD000_0000
    /// The size of each device's window.
    public static let windowSize: UInt64 = VirtioMMIOTransport.windowSize
    /// The interrupts devices get, in order: the ISA IRQs no other device uses.
    public static let irqs: [UInt32] = [5, 6, 7, 10, 11, 13, 14, 15]
    /// The most devices a machine can have.
    public static var maximumDevices: Int { irqs.count }

    /// The kernel command-line parameter that declares device `index`.
    package static func commandLineParameter(index: Int) -> String {
        let address = base + UInt64(index) * windowSize
        return "virtio_mmio.device=4K@0x\(String(address, radix: 16)):\(irqs[index])"
    }
}

/// What one virtio device did, for statistics.
public struct VirtioDeviceStatistics: Sendable, Equatable {
    /// The device's name on the MMIO bus ("virtio-rng0").
    public let name: String
    /// Queue notifications the driver sent while the device was active.
    public let notifications: UInt64
    /// Interrupts raised (the line going high).
    public let interrupts: UInt64
    /// Requests completed, and the malformed ones among them (completed with length 0).
    public let requests: UInt64
    public let malformedRequests: UInt64
    /// Payload bytes moved.
    public let bytes: UInt64
    /// Packets dropped (the network device's frames that found no room or no taker).
    public let dropped: UInt64

    /// Statistics with the given counts (for comparisons in tests and tools).
    public init(
        name: String, notifications: UInt64, interrupts: UInt64, requests: UInt64, malformedRequests: UInt64, bytes: UInt64,
        dropped: UInt64 = 0
    ) {
        self.name = name
        self.notifications = notifications
        self.interrupts = interrupts
        self.requests = requests
        self.malformedRequests = malformedRequests
        self.bytes = bytes
        self.dropped = dropped
    }

    /// One line for `--stats`.
    public var summary: String {
        "\(name): \(requests) requests (\(malformedRequests) malformed), \(bytes) bytes, "
            + (dropped > 0 ? "\(dropped) dropped, " : "") + "\(notifications) notifications, \(interrupts) interrupts"
    }
}

/// A virtio device as built for one machine: its transport and its model.
package struct VirtioAttachment: Sendable {
    package let configuration: VirtioDeviceConfiguration
    package let transport: VirtioMMIOTransport
    package let platformDevice: PlatformDevice

    /// What the device did so far.
    package var statistics: VirtioDeviceStatistics {
        let counters = transport.device.counters
        return VirtioDeviceStatistics(
            name: platformDevice.name, notifications: transport.notificationCount,
            interrupts: transport.interrupt.interruptsRaised, requests: counters.requests,
            malformedRequests: counters.malformed, bytes: counters.bytes, dropped: counters.dropped)
    }
}

extension MachineParts {
    /// The virtio console, if the machine has one.
    var virtioConsole: VirtioConsoleDevice? {
        virtio.lazy.compactMap { $0.transport.device as? VirtioConsoleDevice }.first
    }
}

extension MachineBuilder {
    static func eventFD() throws(MachineError) -> EventFD {
        do { return try EventFD() } catch { throw .invalidDevices("cannot create an eventfd: \(error.reason)") }
    }

    /// Checks the virtio devices against what the machine can give them.
    static func validateVirtio(_ configuration: MachineConfiguration) throws(MachineError) {
        let poll = configuration.virtioPollMicroseconds
        guard poll <= MachineConfiguration.maximumVirtioPollMicroseconds else {
            throw .invalidDevices(
                "a virtio poll window of \(poll) us; at most \(MachineConfiguration.maximumVirtioPollMicroseconds) us")
        }
        let count = configuration.virtioDevices.count
        guard count > 0 else { return }
        guard count <= VirtioLayout.maximumDevices else {
            throw .invalidDevices(
                "\(count) virtio devices, but a machine has \(VirtioLayout.maximumDevices) free interrupts for them")
        }
        let vsocks = configuration.virtioDevices.filter { if case .vsock = $0 { true } else { false } }
        guard vsocks.count <= 1 else { throw .invalidDevices("\(vsocks.count) vsock devices, but a machine has at most one") }
        guard configuration.interruptController else {
            throw .invalidDevices("virtio devices need the interrupt controller (they raise IOAPIC interrupts)")
        }
        guard configuration.virtioDevices.count(where: { $0 == .console }) <= 1 else {
            throw .invalidDevices("a machine has at most one virtio console")
        }
        var macs: Set<[UInt8]> = []
        var taps: Set<String> = []
        for (index, device) in configuration.virtioDevices.enumerated() {
            guard case .net(let tap, let mac, _, _, let mtu) = device else { continue }
            if let mtu, mtu < 68 { throw .invalidDevices("TAP \(tap): an MTU of \(mtu) is below the minimum of 68") }
            guard configuration.virtioIOThread else {
                throw .invalidDevices("the network device needs the I/O thread (virtioIOThread)")
            }
            let address = mac ?? VirtioDeviceConfiguration.defaultMAC(index: index)
            guard address.count == 6, address[0] & 1 == 0 else {
                throw .invalidDevices("TAP \(tap): the MAC address must be 6 bytes, unicast")
            }
            guard macs.insert(address).inserted else {
                throw .invalidDevices("MAC address \(VirtioDeviceConfiguration.formatMAC(address)) is given twice")
            }
            guard taps.insert(tap).inserted else { throw .invalidDevices("TAP \(tap) is given twice") }
        }
    }

    /// The virtio devices of the configuration, each on its transport, ready for the
    /// platform's buses and ACPI tables. With `fastPath` (a VM and an I/O thread), each
    /// queue's QueueNotify write signals an eventfd in the kernel (ioeventfd) that wakes
    /// the I/O thread, and interrupts go through an irqfd; otherwise notifications are
    /// served on the vCPU thread at their exit, and interrupts go through `irqLine`.
    func makeVirtioDevices(
        memory: GuestMemory, irqLine: (@Sendable (UInt32, Bool) -> Void)?, consoleOutput: @escaping ConsoleOutput,
        fastPath: (vm: VMHandle, thread: IOThread)? = nil
    ) throws(MachineError) -> [VirtioAttachment] {
        var attachments: [VirtioAttachment] = []
        var disks: [HostDiskFile.Identity: Bool] = [:]  // file -> writable
        for (index, device) in configuration.virtioDevices.enumerated() {
            let irq = VirtioLayout.irqs[index]
            let model: any VirtioDevice
            switch device {
            case .entropy:
                model = VirtioEntropyDevice()
            case .block(let path, let readOnly, let id, let limit):
                let file = try Self.openDisk(
                    path, readOnly: readOnly, disks: &disks, opened: configuration.openedDisks[index])
                let block = VirtioBlockDevice(
                    file: file, readOnly: readOnly, identifier: id ?? "swiftvisor-disk\(index)",
                    rateLimiter: limit?.limiter(now: HostIO.monotonicNanoseconds()) ?? RateLimiter())
                if let thread = fastPath?.thread {
                    block.attach(to: thread, pollWindow: UInt64(configuration.virtioPollMicroseconds) * 1000)
                } else if limit?.isEnabled == true {
                    throw .invalidDevices(
                        "disk \(path): a rate limiter needs the I/O thread (virtioIOThread, with KVM's ioeventfd and irqfd)")
                }
                model = block
            case .vsock(let cid, let path):
                guard let thread = fastPath?.thread else {
                    throw .invalidDevices(
                        "the vsock device needs the I/O thread (virtioIOThread, with KVM's ioeventfd and irqfd)")
                }
                let listener: HostUnixListener
                if let opened = configuration.openedVsockListener {
                    listener = opened
                } else {
                    listener = try Self.listenVsock(cid: cid, path: path)
                }
                model = VirtioVsockDevice(guestCID: cid, host: VsockUnixHost(listener: listener, thread: thread))
            case .console:
                model = VirtioConsoleDevice(output: consoleOutput)
            case .net(let name, let mac, let receiveLimit, let transmitLimit, let mtu):
                guard let fastPath else {
                    throw .invalidDevices(
                        "the network device needs the I/O thread (ioeventfd, irqfd and the interrupt controller)")
                }
                let tap: HostTap
                if let opened = configuration.openedTaps[index] { tap = opened } else { tap = try Self.openTap(name) }
                let now = HostIO.monotonicNanoseconds()
                let net = VirtioNetDevice(
                    tap: tap, mac: mac ?? VirtioDeviceConfiguration.defaultMAC(index: index), mtu: mtu,
                    receiveLimiter: receiveLimit?.limiter(now: now) ?? RateLimiter(),
                    transmitLimiter: transmitLimit?.limiter(now: now) ?? RateLimiter())
                do throws(HostFileError) {
                    try net.attach(
                        to: fastPath.thread, pollWindow: UInt64(configuration.virtioPollMicroseconds) * 1000)
                } catch {
                    throw .invalidDevices("cannot watch TAP \(name): \(error.reason)")
                }
                model = net
            }
            let base = VirtioLayout.base + UInt64(index) * VirtioLayout.windowSize
            let transport: VirtioMMIOTransport
            if let fastPath {
                // An edge per interrupt: the line's fall (the driver's ACK) needs nothing.
                let irqEvent = try Self.eventFD()
                do { try fastPath.vm.setIRQFD(irqEvent.descriptor, gsi: irq) } catch { throw .kvm(error) }
                // One eventfd per queue the I/O thread serves; signalling one again is also
                // how a device reschedules a queue it left unfinished.
                var notifyEvents: [Int: EventFD] = [:]
                for queue in model.queueMaximumSizes.indices where !model.servesNotificationsOnVCPU(queue: queue) {
                    notifyEvents[queue] = try Self.eventFD()
                }
                let events = notifyEvents
                transport = VirtioMMIOTransport(
                    device: model, memory: memory,
                    eventIndex: configuration.virtioEventIndex && model.supportsEventIndex,
                    reschedule: { queue in events[queue]?.signal() },
                    line: { level in if level { irqEvent.signal() } })
                for (queue, notify) in notifyEvents.sorted(by: { $0.key < $1.key }) {
                    do {
                        try fastPath.vm.setMMIOEventFD(
                            address: base + VirtioMMIOTransport.Register.queueNotify, length: 4, value: UInt64(queue),
                            fd: notify.descriptor)
                        try fastPath.thread.add(notify) { transport.queueNotified(queue) }
                    } catch let error as KVMError {
                        throw .kvm(error)
                    } catch {
                        throw .invalidDevices("cannot watch the notifications of \(device.name)\(index): \(error)")
                    }
                }
            } else {
                transport = VirtioMMIOTransport(device: model, memory: memory) { level in irqLine?(irq, level) }
            }
            let name = "\(device.name)\(index)"
            do {
                let range = try MMIORange(start: base, size: VirtioLayout.windowSize)
                let aml: [AMLTerm] = [
                    .device(
                        "VR0\(index)",
                        [
                            .name("_HID", .string("LNRO0005")),
                            .name("_UID", .integer(UInt64(index))),
                            .name(
                                "_CRS",
                                try .resourceTemplate([
                                    .memory32Fixed(base: UInt32(base), length: UInt32(VirtioLayout.windowSize)),
                                    .irq([Int(irq)]),
                                ])),
                        ])
                ]
                // A snapshot saves the transport (registers, queue positions); the device
                // models keep nothing a restore needs beyond their configuration, except the
                // vsock device's connections, which a snapshot refuses for now.
                let platformDevice = PlatformDevice(
                    name: name, mmio: [.init(name: name, range: range)], mmioDevice: transport, irqs: [irq], aml: aml,
                    state: transport)
                attachments.append(VirtioAttachment(configuration: device, transport: transport, platformDevice: platformDevice))
            } catch let error as BusError {
                throw .bus(error)
            } catch {
                throw .firmware("virtio device \(name): \(error)")
            }
        }
        return attachments
    }

    /// Opens a disk image once for the machine's lifetime; a writable one must not be any
    /// other disk's file as well (`disks` maps the files opened so far to their writability).
    /// `opened` is the file already opened for this device (`openDisks`), if any.
    private static func openDisk(
        _ path: String, readOnly: Bool, disks: inout [HostDiskFile.Identity: Bool], opened: HostDiskFile? = nil
    ) throws(MachineError) -> HostDiskFile {
        let file: HostDiskFile
        if let opened {
            file = opened
        } else {
            file = try openDisk(path, readOnly: readOnly)
        }
        if let writable = disks[file.identity], writable || !readOnly {
            throw .invalidDevices("disk \(path) is given twice, and writable")
        }
        disks[file.identity] = !readOnly
        return file
    }

    /// Checks a vsock device's CID and listens on its socket path.
    static func listenVsock(cid: UInt64, path: String) throws(MachineError) -> HostUnixListener {
        guard cid >= 3, cid <= UInt64(UInt32.max) - 1 else {
            throw .invalidDevices("vsock CID \(cid) is reserved: give one from 3 to \(UInt32.max - 1)")
        }
        do throws(HostFileError) { return try HostUnixListener.listen(path: path) } catch {
            throw .invalidDevices("vsock socket \(path): \(error.reason)")
        }
    }

    static func openTap(_ name: String) throws(MachineError) -> HostTap {
        do throws(HostFileError) { return try HostTap.open(name) } catch { throw .invalidDevices(error.reason) }
    }

    static func openDisk(_ path: String, readOnly: Bool) throws(MachineError) -> HostDiskFile {
        do throws(HostFileError) { return try HostDiskFile.open(path, readOnly: readOnly) } catch {
            throw .invalidDevices("disk \(path): \(error.reason)")
        }
    }
}

extension MachineConfiguration {
    /// Opens every disk of `virtioDevices` now and keeps it in the configuration, so that
    /// machines built from it later (after a guest reset) need no `open`, which the command
    /// line's main-thread seccomp filter refuses. A bad disk fails here, with its one-line
    /// error.
    package mutating func openDisks() throws(MachineError) {
        for (index, device) in virtioDevices.enumerated() {
            if case .block(let path, let readOnly, _, _) = device, openedDisks[index] == nil {
                openedDisks[index] = try MachineBuilder.openDisk(path, readOnly: readOnly)
            }
        }
    }

    /// Listens on the vsock device's socket path now, once, and keeps the listener in the
    /// configuration, so that every machine built from it (after a guest reset) serves
    /// the same socket, and the path is removed only when the configuration goes away. A
    /// bad CID or path fails here, with its one-line error.
    package mutating func openVsock() throws(MachineError) {
        for device in virtioDevices {
            if case .vsock(let cid, let path) = device, openedVsockListener == nil {
                openedVsockListener = try MachineBuilder.listenVsock(cid: cid, path: path)
            }
        }
    }

    /// Opens every TAP of `virtioDevices` now and keeps it in the configuration, as
    /// `openDisks()` does for disks: TUNSETIFF is an ioctl, which the main thread's seccomp
    /// filter refuses after set-up. A bad TAP fails here, with its one-line error.
    package mutating func openTaps() throws(MachineError) {
        // Duplicates are refused before a TAP is opened (or created).
        try MachineBuilder.validateVirtio(self)
        for (index, device) in virtioDevices.enumerated() {
            if case .net(let name, _, _, _, _) = device, openedTaps[index] == nil {
                openedTaps[index] = try MachineBuilder.openTap(name)
            }
        }
    }
}

extension Machine {
    /// The device model of `configuration.virtioDevices[index]`, when it is a `T`.
    private func virtioModel<T>(_ index: Int, as type: T.Type, what: String) throws(MachineError) -> T {
        guard index >= 0, index < parts.virtio.count, let model = parts.virtio[index].transport.device as? T else {
            throw .invalidDevices("virtio device \(index) is not \(what)")
        }
        return model
    }

    /// Swaps the disk image of the block device at `index` of
    /// `configuration.virtioDevices` for the file at `path`, opened now as the disk was
    /// configured (read-only or not; a file in use elsewhere is refused, as at build). The
    /// device takes it between two requests: the guest sees the new capacity in the
    /// configuration space and gets a configuration-change interrupt. The old file is
    /// closed. Throws `MachineError.invalidDevices` with the reason.
    public func replaceDisk(device index: Int, path: String) throws(MachineError) {
        let block = try virtioModel(index, as: VirtioBlockDevice.self, what: "a block device")
        guard case .block(_, let readOnly, _, _) = configuration.virtioDevices[index] else {
            throw .invalidDevices("virtio device \(index) is not a block device")
        }
        block.replaceFile(try MachineBuilder.openDisk(path, readOnly: readOnly))
    }

    /// Changes the rate limiter of the block device at `index` of
    /// `configuration.virtioDevices`: each bucket given replaces the old one and starts
    /// full (a bucket with size or refill time 0 turns that limit off); a nil bucket is left
    /// as it is. A queue waiting on the old limiter is served again at once.
    public func updateRateLimiter(device index: Int, _ limiter: RateLimiterConfiguration) throws(MachineError) {
        let block = try virtioModel(index, as: VirtioBlockDevice.self, what: "a block device")
        let now = HostIO.monotonicNanoseconds()
        block.updateRateLimiter(
            bandwidth: limiter.bandwidth.map { $0.bucket(now: now) }, ops: limiter.ops.map { $0.bucket(now: now) })
    }

    /// Changes the receive and transmit rate limiters of the network device at `index` of
    /// `configuration.virtioDevices`, as `updateRateLimiter(device:_:)` does a disk's: a nil
    /// limiter or bucket is left as it is.
    public func updateRateLimiters(
        device index: Int, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?
    ) throws(MachineError) {
        let net = try virtioModel(index, as: VirtioNetDevice.self, what: "a network device")
        let now = HostIO.monotonicNanoseconds()
        net.updateRateLimiters(
            receiveBandwidth: receive?.bandwidth.map { $0.bucket(now: now) },
            receiveOps: receive?.ops.map { $0.bucket(now: now) },
            transmitBandwidth: transmit?.bandwidth.map { $0.bucket(now: now) },
            transmitOps: transmit?.ops.map { $0.bucket(now: now) })
    }
}
