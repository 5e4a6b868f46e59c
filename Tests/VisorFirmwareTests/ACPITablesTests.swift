import Testing
import VisorDevices
@testable import VisorFirmware

/// Little-endian reads from a table's bytes, and table look-ups in a blob.
struct Bytes {
    let b: [UInt8]
    init(_ bytes: some Collection<UInt8>) { b = Array(bytes) }
    func u8(_ at: Int) -> UInt8 { b[at] }
    func u16(_ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
    func u64(_ at: Int) -> UInt64 { UInt64(u32(at)) | UInt64(u32(at + 4)) << 32 }
    func ascii(_ at: Int, _ count: Int) -> String { String(decoding: b[at..<at + count], as: UTF8.self) }
    var sum: UInt8 { b.reduce(0, &+) }
}

extension ACPITables {
    /// The bytes of the table with this signature (the test fails if it is missing).
    func bytes(_ signature: String) throws -> Bytes {
        Bytes(contents(of: try #require(table(signature))))
    }

    /// The signature of whatever table starts at a guest address inside the blob.
    func signature(at address: UInt64) -> String? {
        guard address >= rsdpAddress, address + 4 <= rsdpAddress + UInt64(bytes.count) else { return nil }
        let offset = Int(address - rsdpAddress)
        return String(decoding: bytes[offset..<offset + 4], as: UTF8.self)
    }
}

@Suite("ACPI tables")
struct ACPITablesTests {
    static let signatures = ["RSD PTR ", "FACS", "XSDT", "FACP", "APIC", "DSDT"]

    @Test(
        "the blob starts with the RSDP at the base and holds every table once, in order, without overlap",
        arguments: [1, 2, 8])
    func layout(processors: Int) throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: processors))
        #expect(tables.rsdpAddress == 0xE0000)
        #expect(tables.tables.map(\.signature) == Self.signatures)
        #expect(tables.tables.first?.address == tables.rsdpAddress)
        for (table, next) in zip(tables.tables, tables.tables.dropFirst()) {
            #expect(table.address + UInt64(table.length) <= next.address, "\(table.signature) overlaps \(next.signature)")
        }
        let last = try #require(tables.tables.last)
        #expect(Int(last.address - tables.rsdpAddress) + last.length == tables.bytes.count)
        #expect(ACPITables.biosArea.contains(tables.rsdpAddress + UInt64(tables.bytes.count) - 1))
        for table in tables.tables where table.signature != "FACS" {
            #expect(table.address % 16 == 0, "\(table.signature) is 16-byte aligned")
        }
        #expect(try #require(tables.table("FACS")).address % 64 == 0, "the FACS is 64-byte aligned")
        for signature in Self.signatures {
            #expect(tables.signature(at: try #require(tables.table(signature)).address) == String(signature.prefix(4)))
        }
    }

    @Test(
        "every table with a header has the right length and sums to zero; the header fields are ours",
        arguments: [1, 2, 8])
    func headers(processors: Int) throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: processors))
        let revisions: [String: UInt8] = ["XSDT": 1, "FACP": 6, "APIC": 6, "DSDT": 2]
        for (signature, revision) in revisions {
            let t = try tables.bytes(signature)
            #expect(t.ascii(0, 4) == signature)
            #expect(Int(t.u32(4)) == t.b.count, "\(signature) length")
            #expect(t.u8(8) == revision, "\(signature) revision")
            #expect(t.sum == 0, "\(signature) checksum")
            #expect(t.ascii(10, 6) == "SWIFTV")
            #expect(t.ascii(16, 8) == "SVMACHIN")
            #expect(t.u32(24) == 1)
            #expect(t.ascii(28, 4) == "SWVS")
            #expect(t.u32(32) == 1)
        }
    }

    @Test("the RSDP: signature, both checksums, revision 2, no RSDT, length 36, XSDT address")
    func rsdp() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 2))
        let r = try tables.bytes("RSD PTR ")
        #expect(r.b.count == 36)
        #expect(r.ascii(0, 8) == "RSD PTR ")
        #expect(Bytes(r.b[0..<20]).sum == 0, "the ACPI 1.0 checksum covers the first 20 bytes")
        #expect(r.sum == 0, "the extended checksum covers all 36 bytes")
        #expect(r.ascii(9, 6) == "SWIFTV")
        #expect(r.u8(15) == 2)
        #expect(r.u32(16) == 0, "no RSDT")
        #expect(r.u32(20) == 36)
        #expect(r.u64(24) == tables.table("XSDT")?.address)
        #expect(Array(r.b[33..<36]) == [0, 0, 0])
    }

    @Test("the XSDT lists the FADT and the MADT")
    func xsdt() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 2))
        let x = try tables.bytes("XSDT")
        let entries = stride(from: 36, to: x.b.count, by: 8).map { x.u64($0) }
        #expect(entries.map { tables.signature(at: $0) } == ["FACP", "APIC"])
    }

    @Test("the FACS: 64 bytes, version 2, nothing else set")
    func facs() throws {
        let f = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 1)).bytes("FACS")
        #expect(f.ascii(0, 4) == "FACS")
        #expect(f.u32(4) == 64 && f.b.count == 64)
        #expect(f.u8(32) == 2)
        #expect(f.u32(8) == 0 && f.u32(12) == 0 && f.u32(16) == 0 && f.u32(20) == 0 && f.u64(24) == 0)
    }

    @Test("the FADT: PM1a blocks in legacy and X_ fields, SCI, no SMI command, reset register, FACS and DSDT")
    func fadt() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 2))
        let f = try tables.bytes("FACP")
        #expect(f.b.count == 276)
        #expect(f.u32(36) == 0 && f.u32(40) == 0, "32-bit FIRMWARE_CTRL and DSDT are 0; the X_ fields are used")
        #expect(tables.signature(at: f.u64(132)) == "FACS")
        #expect(f.u64(132) % 64 == 0)
        #expect(tables.signature(at: f.u64(140)) == "DSDT")
        #expect(f.u16(46) == 9, "SCI_INT")
        #expect(f.u32(48) == 0 && f.u8(52) == 0 && f.u8(53) == 0, "no SMI_CMD: always in ACPI mode")
        #expect(f.u32(56) == 0x600 && f.u32(64) == 0x604, "PM1a_EVT_BLK and PM1a_CNT_BLK")
        #expect(f.u32(60) == 0 && f.u32(68) == 0 && f.u32(72) == 0, "no PM1b or PM2 blocks")
        #expect(f.u32(76) == 0 && f.u8(91) == 0, "no PM timer")
        #expect(f.u32(80) == 0 && f.u32(84) == 0 && f.u8(92) == 0 && f.u8(93) == 0, "no GPE blocks")
        #expect(f.u8(88) == 4 && f.u8(89) == 2, "PM1_EVT_LEN and PM1_CNT_LEN")
        #expect(f.u16(96) > 100 && f.u16(98) > 1000, "no C2 or C3")
        #expect(f.u8(108) == 0x32, "CENTURY")
        #expect(f.u16(109) & 0b11 == 0b11, "IAPC_BOOT_ARCH: LEGACY_DEVICES and 8042")
        #expect(f.u16(109) & 0b100 != 0, "IAPC_BOOT_ARCH: VGA not present")
        let flags = f.u32(112)
        #expect(flags & (1 << 10) != 0, "RESET_REG_SUP")
        #expect(flags & (1 << 20) == 0, "not hardware-reduced")
        // RESET_REG: System I/O, 8 bits at offset 0, byte access, port 0xCF9; value 6.
        #expect(Array(f.b[116..<128]) == [1, 8, 0, 1, 0xF9, 0x0C, 0, 0, 0, 0, 0, 0])
        #expect(f.u8(128) == 0x06)
        #expect(f.u8(131) == 5, "FADT minor version")
        // X_PM1a_EVT_BLK: System I/O, 32 bits, word access; X_PM1a_CNT_BLK: 16 bits.
        #expect(Array(f.b[148..<152]) == [1, 32, 0, 2] && f.u64(152) == 0x600)
        #expect(Array(f.b[172..<176]) == [1, 16, 0, 2] && f.u64(176) == 0x604)
        for unused in [160, 184, 196, 208, 220, 232, 244, 256] {
            #expect(f.b[unused..<unused + 12].allSatisfy { $0 == 0 }, "GAS at \(unused) is empty")
        }
    }

    @Test("the FADT follows the platform's devices: ports, SCI, reset, 8042 flag, century")
    func fadtFollowsPlatform() throws {
        // PM1a blocks where a PM1 device was put elsewhere, a reset register at 0x92, no
        // i8042 and no RTC.
        let pm1 = try PM1Device(eventBlockBase: 0xB000, controlBlockBase: 0xB004).platformDevice().acpi
        let reset = ACPIDevice(name: "port-92", fixedHardware: [.resetRegister(port: 0x92, value: 0x01)])
        var platform = ACPIPlatform(processorCount: 1, devices: [pm1, reset])
        platform.sciInterrupt = 10
        let tables = try ACPITables.build(for: platform)
        let f = try tables.bytes("FACP")
        #expect(f.u32(56) == 0xB000 && f.u64(152) == 0xB000)
        #expect(f.u32(64) == 0xB004 && f.u64(176) == 0xB004)
        #expect(f.u16(46) == 10)
        #expect(f.u64(120) == 0x92 && f.u8(128) == 0x01)
        #expect(f.u16(109) & 0b10 == 0, "no 8042")
        #expect(f.u8(108) == 0)
        #expect(f.sum == 0)
    }

    @Test("without a device that has a reset register, the FADT names none and does not claim RESET_REG_SUP")
    func fadtWithoutReset() throws {
        let tables = try ACPITables.build(for: .pc(processorCount: 1, without: ["reset-control"]))
        let f = try tables.bytes("FACP")
        #expect(f.u32(112) & (1 << 10) == 0, "no RESET_REG_SUP")
        #expect(f.b[116..<129].allSatisfy { $0 == 0 }, "RESET_REG and RESET_VALUE empty")
        #expect(f.u32(56) == 0x600 && f.u32(64) == 0x604, "the PM1a blocks stay")
        #expect(f.sum == 0)
    }

    @Test(
        "the MADT: local APIC address, PCAT_COMPAT, N enabled local APICs, the IOAPIC, two overrides, LINT1 NMI",
        arguments: [1, 2, 8])
    func madt(processors: Int) throws {
        let m = try ACPITables.build(for: ACPIPlatform.pc(processorCount: processors)).bytes("APIC")
        #expect(m.u32(36) == 0xFEE0_0000)
        #expect(m.u32(40) == 1, "PCAT_COMPAT")
        var at = 44
        var apics: [(uid: UInt8, id: UInt8, flags: UInt32)] = []
        var ioapics: [(id: UInt8, address: UInt32, gsiBase: UInt32)] = []
        var overrides: [(source: UInt8, gsi: UInt32, flags: UInt16)] = []
        var nmis: [(uid: UInt8, flags: UInt16, lint: UInt8)] = []
        while at < m.b.count {
            let type = m.u8(at), length = Int(m.u8(at + 1))
            try #require(length >= 2 && at + length <= m.b.count, "entry at \(at) has length \(length)")
            switch (type, length) {
            case (0, 8): apics.append((m.u8(at + 2), m.u8(at + 3), m.u32(at + 4)))
            case (1, 12):
                #expect(m.u8(at + 3) == 0)
                ioapics.append((m.u8(at + 2), m.u32(at + 4), m.u32(at + 8)))
            case (2, 10):
                #expect(m.u8(at + 2) == 0, "bus 0 (ISA)")
                overrides.append((m.u8(at + 3), m.u32(at + 4), m.u16(at + 8)))
            case (4, 6): nmis.append((m.u8(at + 2), m.u16(at + 3), m.u8(at + 5)))
            default: Issue.record("unexpected MADT entry type \(type) length \(length)")
            }
            at += length
        }
        #expect(at == m.b.count)
        #expect(apics.count == processors)
        #expect(apics.map(\.id) == (0..<processors).map { UInt8($0) })
        #expect(apics.map(\.uid) == (0..<processors).map { UInt8($0) })
        #expect(apics.allSatisfy { $0.flags == 1 }, "enabled")
        #expect(ioapics.count == 1)
        #expect(ioapics.first?.id == UInt8(processors), "the first ID after the local APICs")
        #expect(ioapics.first?.address == 0xFEC0_0000 && ioapics.first?.gsiBase == 0)
        #expect(overrides.count == 2)
        #expect(overrides.first.map { $0.source == 0 && $0.gsi == 2 && $0.flags == 0 } == true, "IRQ 0 -> GSI 2")
        #expect(
            overrides.last.map { $0.source == 9 && $0.gsi == 9 && $0.flags == 0x000D } == true,
            "SCI: IRQ 9 -> GSI 9, level, active high")
        #expect(nmis.count == 1)
        #expect(nmis.first.map { $0.uid == 0xFF && $0.lint == 1 } == true, "LINT1 of all processors")
    }

    @Test("an explicit IOAPIC ID is used")
    func explicitIOAPICID() throws {
        var platform = ACPIPlatform.pc(processorCount: 2)
        platform.ioAPICID = 9
        platform.ioAPICAddress = 0xFEC1_0000
        let m = try ACPITables.build(for: platform).bytes("APIC")
        let ioapic = try #require((44..<m.b.count).first { m.u8($0) == 1 && m.u8($0 + 1) == 12 })
        #expect(m.u8(ioapic + 2) == 9)
        #expect(m.u32(ioapic + 4) == 0xFEC1_0000)
    }

    @Test("the DSDT carries \\_S5 and the three devices with their resources; no i8042 when absent")
    func dsdt() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 1))
        let d = try tables.bytes("DSDT").b
        let s5: [UInt8] = [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00]
        #expect(d[36..<36 + s5.count].elementsEqual(s5), "\\_S5 first in the definition block")
        let com1 = try AML.resourceTemplate([.ports(0x3F8, length: 8), .irq([4])])
        let rtc = try AML.resourceTemplate([.ports(0x70, length: 2), .irq([8])])
        let kbd = try AML.resourceTemplate([.ports(0x60, length: 1), .ports(0x64, length: 1), .irq([1])])
        for needle in [
            com1, rtc, kbd, [0x0C, 0x41, 0xD0, 0x05, 0x01], [0x0C, 0x41, 0xD0, 0x0B, 0x00],
            [0x0C, 0x41, 0xD0, 0x03, 0x03],
        ] as [[UInt8]] {
            #expect(contains(d, needle), "\(needle)")
        }

        let s7 = try PM1Device(s5SleepType: 7).platformDevice().acpi
        let platform = ACPIPlatform(processorCount: 1, devices: ACPIPlatform.pcDevices(without: ["i8042", "acpi-pm1a"]) + [s7])
        let without = try ACPITables.build(for: platform).bytes("DSDT").b
        #expect(!contains(without, kbd) && !contains(without, [0x0C, 0x41, 0xD0, 0x03, 0x03]))
        #expect(contains(without, [0x12, 0x08, 0x04, 0x0A, 0x07, 0x0A, 0x07, 0x00, 0x00]))
    }

    func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<$0 + needle.count].elementsEqual(needle) }
    }

    @Test("tables go anywhere 16-byte aligned inside the region; the FACS stays 64-byte aligned")
    func placement() throws {
        let platform = ACPIPlatform.pc(processorCount: 4)
        for base: UInt64 in [0xE0010, 0xE0020, 0xE0030, 0xFF000] {
            let tables = try ACPITables.build(for: platform, at: base)
            #expect(tables.rsdpAddress == base)
            #expect(try #require(tables.table("FACS")).address % 64 == 0)
            #expect(try tables.bytes("RSD PTR ").u64(24) == tables.table("XSDT")?.address)
        }
        let elsewhere = try ACPITables.build(for: platform, at: 0x9_0000, within: 0x9_0000..<0x9_1000)
        #expect(elsewhere.tables.allSatisfy { $0.address >= 0x9_0000 && $0.address + UInt64($0.length) <= 0x9_1000 })
    }

    @Test("tables that do not fit, or a misaligned base, are refused with a typed error")
    func doesNotFit() throws {
        let platform = ACPIPlatform.pc(processorCount: 254)
        #expect(throws: ACPIError.misalignedBase(0xE0008)) { try ACPITables.build(for: platform, at: 0xE0008) }
        do {
            _ = try ACPITables.build(for: platform, at: 0xFFF00)
            Issue.record("tables at 0xFFF00 cannot fit below 1 MiB")
        } catch {
            guard case .doesNotFit(let base, let size, let region) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(base == 0xFFF00 && size > 0x100 && region == ACPITables.biosArea)
            #expect(error.description.contains("do not fit"))
        }
        #expect(throws: ACPIError.self) { try ACPITables.build(for: platform, at: 0xD0000) }
        #expect(throws: ACPIError.self) { try ACPITables.build(for: platform, at: 0x100000) }
        #expect(throws: ACPIError.self) {
            try ACPITables.build(for: platform, at: UInt64.max - 15, within: UInt64.max - 15..<UInt64.max)
        }
    }

    @Test("invalid platforms are refused with one-line messages")
    func invalidPlatforms() {
        func platform(_ change: (inout ACPIPlatform) -> Void) -> ACPIPlatform {
            var p = ACPIPlatform.pc(processorCount: 2)
            change(&p)
            return p
        }
        let cases: [(ACPIPlatform, ACPIError)] = [
            (ACPIPlatform.pc(processorCount: 0), .processorCount(0)),
            (ACPIPlatform.pc(processorCount: 255), .processorCount(255)),
            (ACPIPlatform.pc(processorCount: -1), .processorCount(-1)),
            (platform { $0.oemID = "TOOLONG" }, .oemID("TOOLONG")),
            (platform { $0.oemID = "" }, .oemID("")),
            (platform { $0.oemID = "ÜBER" }, .oemID("ÜBER")),
            (platform { $0.oemTableID = "NINECHARS" }, .oemTableID("NINECHARS")),
            (platform { $0.oemTableID = "TAB\tID" }, .oemTableID("TAB\tID")),
            (platform { $0.ioAPICID = 1 }, .ioAPICID(1, processorCount: 2)),
            (platform { $0.ioAPICID = 255 }, .ioAPICID(255, processorCount: 2)),
            (platform { $0.devices = ACPIPlatform.pcDevices(without: ["acpi-pm1a"]) + [pm1(s5SleepType: 8)] }, .s5SleepType(8)),
            (platform { $0.sciInterrupt = 4 }, .sciInterrupt(4, inUse: [0, 1, 2, 4, 8, 12])),
            (platform { $0.sciInterrupt = 12 }, .sciInterrupt(12, inUse: [0, 1, 2, 4, 8, 12])),
            (platform { $0.sciInterrupt = 16 }, .sciInterrupt(16, inUse: [0, 1, 2, 4, 8, 12])),
            (platform { $0.devices = ACPIPlatform.pcDevices(without: ["acpi-pm1a"]) }, .missingFixedHardware("PM1a event block")),
            (
                platform { $0.devices = ACPIPlatform.pcDevices(without: ["acpi-pm1a"]) + [pm1(events: false)] },
                .missingFixedHardware("PM1a event block")
            ),
            (
                platform { $0.devices = ACPIPlatform.pcDevices(without: ["acpi-pm1a"]) + [pm1(controls: false)] },
                .missingFixedHardware("PM1a control block")
            ),
            (
                platform {
                    $0.devices += [ACPIDevice(name: "second-reset", fixedHardware: [.resetRegister(port: 0x92, value: 1)])]
                },
                .duplicateFixedHardware("reset register", devices: ["reset-control", "second-reset"])
            ),
        ]
        for (p, expected) in cases {
            #expect(throws: expected) { try ACPITables.build(for: p) }
            #expect(!expected.description.contains("\n"))
        }
        // Without an i8042, IRQs 1 and 12 are free for the SCI. (Port ranges are not the
        // tables' to check: the port bus refuses overlaps, see VisorDevicesTests.)
        #expect(throws: Never.self) {
            try ACPITables.build(
                for: platform {
                    $0.devices = ACPIPlatform.pcDevices(without: ["i8042"]); $0.sciInterrupt = 1
                })
        }
        #expect(throws: Never.self) {
            try ACPITables.build(
                for: platform {
                    $0.devices = ACPIPlatform.pcDevices(without: ["i8042"]); $0.sciInterrupt = 12
                })
        }
    }

    /// A hand-made PM1a device at 0x600/0x604 with either block left out, or an S5 type the
    /// device model would not take.
    func pm1(events: Bool = true, controls: Bool = true, s5SleepType: UInt8 = 5) -> ACPIDevice {
        var registers: [ACPIFixedHardware] = []
        if events { registers.append(.pm1aEventBlock(port: 0x600)) }
        if controls { registers.append(.pm1aControlBlock(port: 0x604, s5SleepType: s5SleepType)) }
        return ACPIDevice(name: "pm1", fixedHardware: registers)
    }

    @Test("every processor count from 1 to 254 gives checksummed tables that fit the BIOS area")
    func allProcessorCounts() throws {
        for n in 1...ACPIPlatform.maxProcessors {
            let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: n))
            for table in tables.tables where table.signature != "FACS" {
                let bytes = Bytes(tables.contents(of: table))
                guard bytes.sum == 0 else {
                    Issue.record("\(table.signature) checksum is wrong for \(n) processors")
                    return
                }
                if table.signature != "RSD PTR " && Int(bytes.u32(4)) != table.length {
                    Issue.record("\(table.signature) length is wrong for \(n) processors")
                    return
                }
            }
            let rsdp = try tables.bytes("RSD PTR ")
            #expect(Bytes(rsdp.b[0..<20]).sum == 0)
            let madt = try tables.bytes("APIC")
            #expect(madt.b.count == 44 + 8 * n + 12 + 2 * 10 + 6)
            #expect(tables.bytes.count <= ACPITables.biosArea.count)
        }
    }

    @Test("the PM1 constants match the FADT and the ACPI register layout")
    func pm1Constants() throws {
        let f = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 1)).bytes("FACP")
        #expect(Int(f.u8(88)) == ACPIPM1.eventBlockLength && Int(f.u8(89)) == ACPIPM1.controlBlockLength)
        // Linux powers off with SLP_TYP = 5 and SLP_EN: 0x1400, then 0x3400.
        #expect(5 << ACPIPM1.sleepTypeShift == 0x1400)
        #expect((5 << ACPIPM1.sleepTypeShift) | ACPIPM1.sleepEnable == 0x3400)
        #expect(ACPIPM1.sleepTypeMask == 0x1C00)
        #expect(ACPIPM1.sciEnable == 1)
    }
}
