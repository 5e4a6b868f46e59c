import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorHost

/// Records each 4-byte write with the host's monotonic clock at its exit.
final class TimedRecorder: PortDevice, Sendable {
    private let values = Mutex<[(value: UInt32, nanoseconds: UInt64)]>([])
    var all: [(value: UInt32, nanoseconds: UInt64)] { values.withLock { $0 } }

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let now = HostIO.monotonicNanoseconds()
        values.withLock { $0.append((value, now)) }
        return .continue
    }
}

extension KVMIntegration {
    /// ACPI for guests other than Linux: the tables in the BIOS area, the PM timer, S3 and S5.
    @Suite("ACPI for every guest")
    struct ACPITests {
        @Test("a multiboot guest finds the RSDP, walks to the FADT, MADT, FACS and DSDT; the PM timer runs at 3.579545 MHz")
        func multibootGuest() throws {
            let recorder = TimedRecorder()
            let (report, console) = try runGuest(GuestImages.acpi) { config in
                config.vcpuCount = 2
                config.portDevices = [.init(name: "report", range: try! PortRange(base: 0x503, count: 1), device: recorder)]
            }
            #expect(report.exitStatus == 1, "\(console)")
            #expect(
                console == """
                    rsdp=0xe0000
                    xsdt: FACP APIC
                    pm1a_cnt=0xb004 pm_tmr=0xb008 len=4 bits=32
                    facs ok
                    madt: 2 cpus
                    dsdt: _S5 type 5, no _S3
                    s3 ignored
                    acpi ok

                    """)
            let writes = recorder.all
            try #require(writes.count == 4)
            let ticks = Double(writes[1].value &- writes[0].value)
            let seconds = Double(writes[1].nanoseconds - writes[0].nanoseconds) / 1e9
            #expect(ticks >= 357_954, "the guest waited for 0.1 s of ticks")
            let rate = ticks / seconds
            // The exits' own latency skews the host's timestamps by tens of microseconds in 0.1 s.
            #expect(abs(rate / 3_579_545 - 1) < 0.02, "PM timer at \(rate) Hz over \(seconds) s")
            let tsc = UInt64(writes[3].value) << 32 | UInt64(writes[2].value)
            #expect(tsc > 0, "the TSC ran while the PM timer did")
        }

        @Test("S5 from the DSDT's \\_S5 powers the machine off; S3, not announced, was ignored before it")
        func s5() throws {
            let (report, console) = try runGuest(GuestImages.acpi, commandLine: "s5")
            #expect(report.outcome == .stopped(.powerOff(source: "ACPI PM1a control, S5")), "\(console)")
            #expect(console.hasSuffix("s3 ignored\n"))
        }

        @Test("ELF guests get the same tables at 0xE0000; a flat image over their place gets none, and the log says so")
        func elfAndFlat() throws {
            let machine = try Machine(MachineConfiguration(guest: .elf(GuestImages.hello)))
            #expect(try machine.memory.read(8, at: 0xE0000) == Array("RSD PTR ".utf8))
            let log = LogCapture()
            var config = MachineConfiguration(guest: .flat(GuestImages.realMode, loadAddress: 0xE0000))
            config.log = log.sink
            let flat = try Machine(config)
            #expect(try flat.memory.read(8, at: 0xE0000) != Array("RSD PTR ".utf8))
            #expect(log.all.contains { $0.hasPrefix("no ACPI tables: the guest's image at 0xe0000-") }, "\(log.all)")
            var low = MachineConfiguration(guest: .flat(GuestImages.realMode, loadAddress: 0x7C00))
            low.log = log.sink
            let lowFlat = try Machine(low)
            #expect(try lowFlat.memory.read(8, at: 0xE0000) == Array("RSD PTR ".utf8))
        }
    }
}
