import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing

/// A device on ports 0x520-0x527 for the string_io guest: records every element written,
/// per port, and how many elements each exit carried; reads count up from 1.
final class StringIODevice: PortDevice {
    let written = Mutex<[UInt16: [UInt32]]>([:])
    let widths = Mutex<[UInt16: Set<UInt8>]>([:])
    let nextRead = Atomic<UInt32>(1)

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        widths.withLock { _ = $0[port, default: []].insert(width) }
        return nextRead.add(1, ordering: .relaxed).oldValue
    }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        written.withLock { $0[port, default: []].append(value) }
        widths.withLock { _ = $0[port, default: []].insert(width) }
        return .continue
    }
}

/// A port device that records reads and answers with a fixed value.
final class FixedPortDevice: PortDevice {
    let value: UInt32
    let reads = Mutex<[(UInt16, UInt8)]>([])
    init(value: UInt32) { self.value = value }
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        reads.withLock { $0.append((port, width)) }
        return value
    }
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction { .continue }
}

/// An MMIO device for mmio_widths: logs writes; reads return 0x8877665544332211 + offset.
final class PatternMMIODevice: MMIODevice {
    let writes = Mutex<[String]>([])
    let reads = Mutex<[String]>([])
    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        reads.withLock { $0.append("\(width)@\(offset)") }
        return 0x8877_6655_4433_2211 &+ offset
    }
    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        writes.withLock { $0.append("\(width)@\(offset)=\(String(value, radix: 16))") }
        return .continue
    }
}

/// A device on port 0x530 that answers a write with an injection.
final class InjectingDevice: PortDevice {
    let injection: Injection
    init(_ injection: Injection) { self.injection = injection }
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction { .inject(injection) }
}

extension KVMIntegration {
    /// The exit-handling core, shown by guests: blocked and registered ports, string I/O,
    /// MMIO at every width, hypercalls and injected events.
    @Suite("Exit core on KVM")
    struct ExitCoreTests {
        @Test("a blocked port reads all ones at each width, and is exempt from the stop policy")
        func blockedPort() throws {
            let (report, console) = try runGuest(GuestImages.portProbe) { config in
                config.blockedPorts = [("probe-hole", try! PortRange(base: 0x600, count: 1))]
                config.unclaimedPorts = .stop
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console.hasPrefix("in8=FF in16=FFFF in32=FFFFFFFF\n"))
        }

        @Test("a registered handler's IN result lands in AL, AX or EAX; EAX zero-extends RAX")
        func registeredIn() throws {
            let device = FixedPortDevice(value: 0x89AB_CDEF)
            let (report, console) = try runGuest(GuestImages.portProbe) { config in
                config.portDevices = [.init(name: "fixed", range: try! PortRange(base: 0x600, count: 1), device: device)]
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(
                console == """
                    in8=EF in16=CDEF in32=89ABCDEF
                    rax8=11223344556677EF rax16=112233445566CDEF rax32=0000000089ABCDEF

                    """)
            let reads = device.reads.withLock { $0 }
            #expect(reads.allSatisfy { $0.0 == 0x600 })
            #expect(Set(reads.map(\.1)) == [1, 2, 4])
        }

        @Test("string I/O: every element in order, for one element, for thousands, and with DF=1")
        func stringIO() throws {
            let device = StringIODevice()
            let (report, _) = try runGuest(GuestImages.stringIo) { config in
                config.portDevices = [.init(name: "strings", range: try! PortRange(base: 0x520, count: 8), device: device)]
                config.collectStatistics = true
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            let written = device.written.withLock { $0 }
            #expect(written[0x520] == [0x5A])
            let pattern: [UInt32] = (0..<5000).map { (i: Int) -> UInt32 in UInt32((i * 7 + 3) & 0xFF) }
            let reversed: [UInt32] = (0..<16).reversed().map { (i: Int) -> UInt32 in UInt32(i) }
            #expect(written[0x521] == pattern)
            #expect(written[0x522] == reversed)
            // rep insw of 1500 words read 1, 2, ..., 1500 in order: the guest's sum proves it.
            let sum: UInt32 = 1500 * 1501 / 2
            #expect(written[0x524] == [sum])
            #expect(written[0x525] == [1, 1500])
            // rep insb of one byte read the next value, 1501 (0xDD as a byte).
            let lastByte: UInt32 = 1501 & 0xFF
            #expect(written[0x527] == [lastByte])
            #expect(device.widths.withLock { $0[0x523] } == [2])
            // A string exit carries at most one page of data (the run page's I/O area), so
            // the 5000-byte OUTS needed several exits on any host. How a host's KVM splits the
            // 1500-word INS (3000 bytes) is its own choice: only a bound is checked.
            let statistics = try #require(report.statistics)
            let outExits = statistics.byPort[0x521], inExits = statistics.byPort[0x523]
            #expect(outExits >= 2 && outExits <= 5000, "rep outsb took \(outExits) exits")
            #expect(inExits >= 1 && inExits <= 1500, "rep insw took \(inExits) exits")
        }

        @Test("MMIO reads and writes of 1, 2, 4 and 8 bytes reach the region with offset and value; unmapped reads are all ones")
        func mmioWidths() throws {
            let device = PatternMMIODevice()
            let (report, console) = try runGuest(GuestImages.mmioWidths) { config in
                config.mmioDevices = [
                    .init(
                        name: "pattern", range: try! MMIORange(start: 0xD000_0000, size: 0x1000),
                        device: device)
                ]
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(device.writes.withLock { $0 } == ["1@0=11", "2@16=2222", "4@32=33333333", "8@48=4444444444444444"])
            #expect(device.reads.withLock { $0 } == ["1@64", "2@72", "4@80", "8@88"])
            #expect(
                console == """
                    r8=51 r16=2259 r32=44332261 r64=8877665544332269
                    unmapped64=FFFFFFFFFFFFFFFF unmapped8=FF

                    """)
        }

        @Test("the identity hypercall returns the signature, ABI version and vCPU")
        func hypercallIdentity() throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "identity")
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console == "identity rax=0000000000000000 rbx=7273695674667753 rcx=0000000000000001 rsi=0000000000000000\n")
        }

        @Test("the print hypercall writes a guest buffer; past the end of RAM it returns -EFAULT; exit ends the VM")
        func hypercallPrint() throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "print")
            #expect(report.outcome == .stopped(.guestExit(status: 7)))
            #expect(
                console == """
                    printed by hypercall
                    result=0000000000000015
                    result=FFFFFFFFFFFFFFF2
                    result=FFFFFFFFFFFFFFEA

                    """)
        }

        @Test("an unknown hypercall number makes the guest's #UD handler run")
        func hypercallUnknown() throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "unknown")
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console == "vector=06 error=00000000 cr2=0000000000000000\n")
        }

        @Test("an embedding program's own hypercall sees the arguments and returns its value")
        func customHypercall() throws {
            // Replace identity (number 0) with our own handler; the guest prints what it got.
            let (report, console) = try runGuest(GuestImages.events, commandLine: "identity") { config in
                config.hypercallHandlers[0] = { request in
                    .value(0xC0FFEE, rbx: request.number, rcx: UInt64(request.arguments.count), rsi: 0x5A)
                }
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console == "identity rax=0000000000C0FFEE rbx=0000000000000000 rcx=0000000000000004 rsi=000000000000005A\n")
        }

        @Test(
            "a device-injected event reaches the guest's handler with its error code and CR2",
            arguments: [
                (Injection.generalProtection(0x18), "vector=0D error=00000018 cr2=0000000000000000"),
                (.pageFault(errorCode: 6, address: 0xDEAD_B000), "vector=0E error=00000006 cr2=00000000DEADB000"),
                (.invalidOpcode, "vector=06 error=00000000 cr2=0000000000000000"),
                (.nmi, "vector=02 error=00000000 cr2=0000000000000000"),
                (.interrupt(vector: 0x40), "vector=40 error=00000000 cr2=0000000000000000"),
            ])
        func injection(injection: Injection, expected: String) throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "inject") { config in
                config.portDevices = [
                    .init(
                        name: "injector", range: try! PortRange(base: 0x530, count: 1),
                        device: InjectingDevice(injection))
                ]
            }
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(console == expected + "\n")
        }

        @Test("with no injection the guest reports that nothing arrived")
        func noInjection() throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "inject")
            #expect(report.outcome == .stopped(.guestExit(status: 1)))
            #expect(console == "no event\n")
        }

        @Test("statistics time each exit kind and name devices in JSON")
        func statisticsJSON() throws {
            var config = MachineConfiguration(guest: .elf(GuestImages.pioLoop))
            config.commandLine = "300"
            config.collectStatistics = true
            config.portDevices = [
                .init(
                    name: "counter", range: try PortRange(base: 0x510, count: 1),
                    device: CountingPortDevice())
            ]
            let machine = try Machine(config)
            let report = try machine.run()
            let stats = try #require(report.statistics)
            let p50 = try #require(stats.latency(.portOut, percentile: 50))
            let p99 = try #require(stats.latency(.portOut, percentile: 99))
            #expect(p50 > 0 && p50 <= p99)
            let json = stats.renderJSON(portNames: { machine.deviceName(port: $0) })
            #expect(json.contains("\"kind\": \"io-out\", \"count\": 301"))
            #expect(json.contains("{\"port\": 1296, \"count\": 300, \"device\": \"counter\"}"))
            #expect(json.contains("\"p99\": "))
        }
    }
}
