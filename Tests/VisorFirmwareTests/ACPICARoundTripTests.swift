import Testing
@testable import VisorFirmware

/// Collapses runs of spaces, so that iasl's column alignment does not matter.
func squeezed(_ text: String) -> String {
    var out = ""
    var lastWasSpace = false
    for c in text {
        if c == " " {
            if !lastWasSpace { out.append(c) }
            lastWasSpace = true
        } else {
            out.append(c)
            lastWasSpace = false
        }
    }
    return out
}

func occurrences(of needle: String, in text: String) -> Int {
    text.split(separator: "\n").filter { $0.contains(needle) }.count
}

func hex(_ value: UInt64, digits: Int) -> String {
    let s = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, digits - s.count)) + s
}

/// Words iasl and acpiexec print when a table is malformed (checksum, lengths, subtables,
/// AML opcodes).
let complaints = ["warning", "error", "incorrect", "invalid", "****", "unknown", "unexpected opcode"]

func complaintLines(_ text: String) -> [Substring] {
    text.split(separator: "\n").filter { line in complaints.contains { line.lowercased().contains($0) } }
}

@Suite("ACPI tables through ACPICA (iasl -d, iasl, acpiexec)")
struct ACPICARoundTripTests {
    /// File names for the tables iasl can read on its own (iasl 20200925 cannot disassemble
    /// a stand-alone RSDP, so the RSDP is checked byte by byte in ACPITablesTests).
    static let files = ["FACS": "facs", "XSDT": "xsdt", "FACP": "facp", "APIC": "apic", "DSDT": "dsdt"]

    /// Writes each table (but the RSDP) to `<name>.dat` in a fresh directory.
    func write(_ tables: ACPITables) throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        for (signature, name) in Self.files {
            try dir.write(tables.contents(of: try #require(tables.table(signature))), to: name + ".dat")
        }
        return dir
    }

    @Test(
        "iasl -d decodes every table without complaint and shows the platform's facts",
        arguments: [(1, true), (2, true), (8, true), (3, false)])
    func disassemble(processors: Int, i8042: Bool) throws {
        let platform = ACPIPlatform.pc(processorCount: processors, without: i8042 ? [] : ["i8042"])
        let tables = try ACPITables.build(for: platform)
        let dir = try write(tables)
        let names = Self.files.values.sorted()
        let run = try ACPICA.run("iasl", ["-d"] + names.map { dir.path + "/" + $0 + ".dat" }, in: dir)
        #expect(run.status == 0, "iasl -d failed:\n\(run.output)")
        #expect(complaintLines(run.output).isEmpty, "iasl complained:\n\(run.output)")
        var dsl: [String: String] = [:]
        for name in names {
            let text = try #require(dir.read(name + ".dsl"), "iasl wrote no \(name).dsl:\n\(run.output)")
            #expect(complaintLines(text).isEmpty, "\(name).dsl has complaints:\n\(text)")
            dsl[name] = squeezed(text)
        }
        func address(_ signature: String) throws -> UInt64 { try #require(tables.table(signature)).address }

        let dsdt = try #require(dsl["dsdt"])
        for fact in [
            "DefinitionBlock (\"\", \"DSDT\", 2, \"SWIFTV\", \"SVMACHIN\", 0x00000001)",
            "Name (_S5, Package (0x04)", "Scope (\\_SB)",
            "Device (COM1)", "EisaId (\"PNP0501\")", "0x03F8, // Range Minimum", "0x08, // Length", "{4}",
            "Device (RTC)", "EisaId (\"PNP0B00\")", "0x0070, // Range Minimum", "{8}",
        ] {
            #expect(dsdt.contains(fact), "DSDT lacks \(fact):\n\(dsdt)")
        }
        #expect(occurrences(of: "0x05, ", in: dsdt) == 2, "\\_S5 holds SLP_TYP 5 twice")
        #expect(occurrences(of: "ResourceTemplate ()", in: dsdt) == (i8042 ? 3 : 2), "the _CRS buffers decode as templates")
        #expect(dsdt.contains("Device (PS2K)") == i8042)
        #expect(dsdt.contains("EisaId (\"PNP0303\")") == i8042)

        let fadt = try #require(dsl["facp"])
        for fact in [
            "Revision : 06", "FADT Minor Revision : 05", "Table Length : 00000114",
            "SCI Interrupt : 0009", "SMI Command Port : 00000000",
            "PM1A Event Block Address : 00000600", "PM1A Control Block Address : 00000604",
            "PM1 Event Block Length : 04", "PM1 Control Block Length : 02", "PM Timer Block Length : 00",
            "Reset Register : [Generic Address Structure]", "Address : 0000000000000CF9", "Value to cause reset : 06",
            "Reset Register Supported (V2) : 1", "Hardware Reduced (V5) : 0",
            "8042 Present on ports 60/64 (V2) : \(i8042 ? 1 : 0)",
            "FACS Address : \(hex(try address("FACS"), digits: 16))",
            "DSDT Address : \(hex(try address("DSDT"), digits: 16))",
            "Address : 0000000000000600", "Address : 0000000000000604",
        ] {
            #expect(fadt.contains(fact), "FADT lacks \(fact):\n\(fadt)")
        }

        let madt = try #require(dsl["apic"])
        #expect(occurrences(of: "[Processor Local APIC]", in: madt) == processors)
        #expect(occurrences(of: "Processor Enabled : 1", in: madt) == processors)
        #expect(occurrences(of: "[Interrupt Source Override]", in: madt) == 2)
        #expect(occurrences(of: "[Local APIC NMI]", in: madt) == 1)
        for fact in [
            "Local Apic Address : FEE00000", "PC-AT Compatibility : 1",
            "I/O Apic ID : \(hex(UInt64(processors), digits: 2))", "Address : FEC00000",
            "Source : 09", "Interrupt : 00000009", "Flags (decoded below) : 000D",
            "Interrupt Input LINT : 01",
        ] {
            #expect(madt.contains(fact), "MADT lacks \(fact):\n\(madt)")
        }

        let xsdt = try #require(dsl["xsdt"])
        #expect(xsdt.contains("ACPI Table Address 0 : \(hex(try address("FACP"), digits: 16))"))
        #expect(xsdt.contains("ACPI Table Address 1 : \(hex(try address("APIC"), digits: 16))"))

        let facs = try #require(dsl["facs"])
        #expect(facs.contains("Length : 00000040") && facs.contains("Version : 02"))
    }

    @Test("ACPICA's loader (acpiexec) takes the tables without warnings and evaluates \\_S5 and _CRS")
    func acpiexec() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 2))
        let dir = try write(tables)
        let commands = "evaluate \\_S5; evaluate \\_SB.COM1._CRS; evaluate \\_SB.RTC._HID; evaluate \\_SB.PS2K._CRS"
        let run = try ACPICA.run(
            "acpiexec", ["-b", commands] + ["facp", "apic", "dsdt", "facs", "xsdt"].map { dir.path + "/" + $0 + ".dat" },
            in: dir)
        #expect(run.status == 0, "acpiexec failed:\n\(run.output)")
        // acpiexec's own API self-tests print "Unexpected AE_..." for what the platform
        // lacks on purpose (PM2, GPE blocks, PM timer); table problems print as
        // "ACPI Warning/Error" or "Firmware Warning/Error".
        let problems = run.output.split(separator: "\n").filter {
            $0.contains("Warning") || $0.contains("Error") || $0.contains("Exception")
        }
        #expect(problems.isEmpty, "acpiexec reported:\n\(problems.joined(separator: "\n"))")
        let output = squeezed(run.output)
        #expect(output.contains("FACP 0x") && output.contains("(v06 SWIFTV SVMACHIN 00000001 SWVS 00000001)"))
        #expect(output.contains("Evaluation of \\_S5 returned object"), "\(run.output)")
        #expect(occurrences(of: "[Integer] = 0000000000000005", in: output) == 2, "\(run.output)")
        #expect(output.contains("47 01 F8 03 F8 03 01 08 22 10 00 79 0E"), "COM1 _CRS:\n\(run.output)")
        #expect(output.contains("[Integer] = 00000000000BD041"), "RTC _HID:\n\(run.output)")
        // 16 bytes a line: the template, then 22 02 00 (IRQ 1), the end tag and its checksum.
        #expect(output.contains("0000: 47 01 60 00 60 00 01 01 47 01 64 00 64 00 01 01"), "PS2K _CRS:\n\(run.output)")
        #expect(output.contains("0010: 22 02 00 79 47"), "PS2K _CRS:\n\(run.output)")
    }

    @Test("the AML builder emits byte for byte what iasl compiles from the same ASL")
    func compileOracle() throws {
        let b100 = (0..<100).map { UInt8($0) }
        let b5000 = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        func list(_ bytes: [UInt8]) -> String { bytes.map { "0x" + hex(UInt64($0), digits: 2) }.joined(separator: ", ") }
        let asl = """
            DefinitionBlock ("", "SSDT", 2, "SWIFTV", "SVTEST", 0x00000001)
            {
                Name (INT0, Zero)
                Name (INT1, One)
                Name (INTF, Ones)
                Name (BYT1, 0x12)
                Name (WRD1, 0x1234)
                Name (DWD1, 0x12345678)
                Name (QWD1, 0x123456789ABCDEF0)
                Name (STR1, "Hello, AML")
                Name (STR0, "")
                Name (BUF0, Buffer (Zero) {})
                Name (BUF1, Buffer (0x03) { 0x01, 0x02, 0x03 })
                Name (BUF2, Buffer (0x64) { \(list(b100)) })
                Name (BUF3, Buffer (0x1388) { \(list(b5000)) })
                Name (PKG1, Package (0x03) { One, "two", Package (0x01) { 0x03 } })
                Name (PKG2, Package (0x0100) { \(Array(repeating: "Zero", count: 256).joined(separator: ", ")) })
                Name (_S5, Package (0x04) { 0x05, 0x05, Zero, Zero })
                Scope (\\_SB)
                {
                    Device (DEV1)
                    {
                        Name (_HID, EisaId ("PNP0501"))
                        Name (_CRS, ResourceTemplate ()
                        {
                            IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, )
                            IRQNoFlags () {4}
                            IRQ (Level, ActiveLow, Shared, ) {9, 10}
                            IO (Decode10, 0x0060, 0x0064, 0x04, 0x01, )
                            Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000, )
                        })
                        Method (_STA, 0, NotSerialized) { Return (0x0F) }
                        Method (ECHO, 2, Serialized) { Return (Arg1) }
                        Method (GHID, 0, NotSerialized) { Return (\\_SB.DEV1._HID) }
                        Device (SUBD) { Name (_ADR, Zero) }
                    }
                }
                Scope (\\_SB.DEV1.SUBD) { Name (VAL1, One) }
                Scope (\\_SB.DEV1) { Name (VAL2, 0x02) }
                Name (REF1, Package (0x01) { \\_SB.DEV1 })
            }
            """
        // iasl writes 0 as a resource template's checksum; ours is the real sum.
        var template = try AML.resourceTemplate([
            .ports(0x3F8, length: 8), .irq([4]), .irq([9, 10], flags: [.activeLow, .shared]),
            .io(minimum: 0x60, maximum: 0x64, alignment: 4, length: 1, decode16: false),
            .memory32Fixed(base: 0xD000_0000, length: 0x1000),
        ])
        let checksummed = template
        template[template.count - 1] = 0
        func terms(_ crs: [UInt8]) -> [AMLTerm] {
            [
                .name("INT0", .integer(0)), .name("INT1", .integer(1)), .name("INTF", .integer(.max)),
                .name("BYT1", .integer(0x12)), .name("WRD1", .integer(0x1234)), .name("DWD1", .integer(0x1234_5678)),
                .name("QWD1", .integer(0x1234_5678_9ABC_DEF0)),
                .name("STR1", .string("Hello, AML")), .name("STR0", .string("")),
                .name("BUF0", .buffer([])), .name("BUF1", .buffer([1, 2, 3])),
                .name("BUF2", .buffer(b100)), .name("BUF3", .buffer(b5000)),
                .name("PKG1", .package([.integer(1), .string("two"), .package([.integer(3)])])),
                .name("PKG2", .package(Array(repeating: .integer(0), count: 256))),
                .name("_S5", .package([.integer(5), .integer(5), .integer(0), .integer(0)])),
                .scope(
                    "\\_SB",
                    [
                        .device(
                            "DEV1",
                            [
                                .name("_HID", .integer(UInt64(0x0105_D041))),
                                .name("_CRS", .buffer(crs)),
                                .method("_STA", [.return(.integer(0x0F))]),
                                .method("ECHO", arguments: 2, serialized: true, [.return(.argument(1))]),
                                .method("GHID", [.return(.reference("\\_SB.DEV1._HID"))]),
                                .device("SUBD", [.name("_ADR", .integer(0))]),
                            ])
                    ]),
                .scope("\\_SB.DEV1.SUBD", [.name("VAL1", .integer(1))]),
                .scope("\\_SB.DEV1", [.name("VAL2", .integer(2))]),
                .name("REF1", .package([.reference("\\_SB.DEV1")])),
            ]
        }
        let ours = try AMLTerm.encode(termList: terms(template))

        let dir = try TemporaryDirectory()
        try dir.write(Array(asl.utf8), to: "sink.asl")
        // -on keeps name paths as written (no optimization of \_SB to _SB at the root).
        let compile = try ACPICA.run("iasl", ["-on", "-p", dir.path + "/iasl", dir.path + "/sink.asl"], in: dir)
        #expect(compile.status == 0, "iasl failed:\n\(compile.output)")
        let aml = try #require(dir.readBytes("iasl.aml"), "iasl wrote no AML:\n\(compile.output)")
        #expect(Array(aml.dropFirst(36)) == ours)
        if Array(aml.dropFirst(36)) != ours,
            let at = zip(aml.dropFirst(36), ours).enumerated().first(where: { $0.element.0 != $0.element.1 })
        {
            Issue.record("first difference at AML offset \(at.offset): iasl \(at.element.0), ours \(at.element.1)")
        }

        // Our own table, with real checksums, disassembles back to the same ASL constructs.
        var platform = ACPIPlatform.pc(processorCount: 1)
        platform.oemTableID = "SVTEST"
        let ssdt = ACPITables.sealed(
            ACPITables.header("SSDT", revision: 2, platform)
                + (try AMLTerm.encode(termList: terms(checksummed))))
        try dir.write(ssdt, to: "ours.dat")
        let run = try ACPICA.run("iasl", ["-d", dir.path + "/ours.dat"], in: dir)
        #expect(run.status == 0 && complaintLines(run.output).isEmpty, "iasl -d:\n\(run.output)")
        let dsl = squeezed(try #require(dir.read("ours.dsl")))
        for fact in [
            "Name (INTF, Ones)", "Name (QWD1, 0x123456789ABCDEF0)", "Name (STR1, \"Hello, AML\")",
            "Name (BUF3, Buffer (0x1388)", "Name (PKG2, Package (0x0100)",
            "IRQ (Level, ActiveLow, Shared, )", "IO (Decode10,", "Memory32Fixed (ReadWrite,", "0xD0000000, // Address Base",
            "Method (ECHO, 2, Serialized)", "Return (Arg1)",
            "Return (\\_SB.DEV1._HID)", "Scope (\\_SB.DEV1.SUBD)", "Name (VAL2, 0x02)",
        ] {
            #expect(dsl.contains(fact), "disassembly lacks \(fact):\n\(dsl)")
        }
    }

    @Test("a missing ACPICA tool fails with an install hint instead of skipping")
    func missingTool() throws {
        let dir = try TemporaryDirectory()
        do {
            _ = try ACPICA.run("iasl-not-installed-here", ["-v"], in: dir)
            Issue.record("a missing tool was started")
        } catch {
            #expect("\(error)".contains("install acpica-tools (iasl)"))
        }
    }
}
