import Testing
import VisorDevices
@testable import VisorFirmware

/// The tables every non-Linux guest gets: the minimal platform's devices (COM1, debug-exit,
/// the PM1a blocks at 0xB000 and the PM timer at 0xB008).
@Suite("ACPI tables of the minimal platform through ACPICA")
struct MinimalPlatformACPITests {
    func tables(processors: Int = 1) throws -> ACPITables {
        let platform = try Platform(kind: .minimal, consoleOutput: { _ in }, irqLine: nil)
        return try ACPITables.build(for: platform.acpiPlatform(processors: processors))
    }

    @Test("iasl -d shows the PM1a blocks at 0xB000, a 32-bit PM timer at 0xB008, the FACS, MADT and \\_S5 only")
    func disassemble() throws {
        let tables = try tables(processors: 2)
        #expect(tables.rsdpAddress == 0xE0000)
        let dir = try ACPICARoundTripTests().write(tables)
        let names = ACPICARoundTripTests.files.values.sorted()
        let run = try ACPICA.run("iasl", ["-d"] + names.map { dir.path + "/" + $0 + ".dat" }, in: dir)
        #expect(run.status == 0, "iasl -d failed:\n\(run.output)")
        #expect(complaintLines(run.output).isEmpty, "iasl complained:\n\(run.output)")
        let fadt = squeezed(try #require(dir.read("facp.dsl")))
        #expect(complaintLines(fadt).isEmpty, "\(fadt)")
        for fact in [
            "PM1A Event Block Address : 0000B000", "PM1A Control Block Address : 0000B004",
            "PM Timer Block Address : 0000B008", "PM Timer Block Length : 04",
            "32-bit PM Timer (V1) : 1", "Reset Register Supported (V2) : 0",
            "Address : 000000000000B008", "Bit Width : 20",
        ] {
            #expect(fadt.contains(fact), "FADT lacks \(fact):\n\(fadt)")
        }
        let dsdt = squeezed(try #require(dir.read("dsdt.dsl")))
        #expect(dsdt.contains("Name (_S5, Package (0x04)") && !dsdt.contains("_S3"), "only S5 is announced:\n\(dsdt)")
        #expect(dsdt.contains("Device (COM1)"))
        let madt = squeezed(try #require(dir.read("apic.dsl")))
        #expect(occurrences(of: "[Processor Local APIC]", in: madt) == 2)
        let facs = squeezed(try #require(dir.read("facs.dsl")))
        #expect(facs.contains("Length : 00000040"))
    }

    @Test("acpiexec loads them without warnings and reads the PM timer block from the FADT")
    func acpiexec() throws {
        let tables = try tables()
        let dir = try ACPICARoundTripTests().write(tables)
        let run = try ACPICA.run(
            "acpiexec",
            ["-b", "evaluate \\_S5"] + ["facp", "apic", "dsdt", "facs", "xsdt"].map { dir.path + "/" + $0 + ".dat" },
            in: dir)
        #expect(run.status == 0, "acpiexec failed:\n\(run.output)")
        let problems = run.output.split(separator: "\n").filter {
            $0.contains("Warning") || $0.contains("Error") || $0.contains("Exception")
        }
        #expect(problems.isEmpty, "acpiexec reported:\n\(problems.joined(separator: "\n"))")
    }

    @Test("the PC platform (Linux) keeps its FADT without a PM timer")
    func pcUnchanged() throws {
        let tables = try ACPITables.build(for: ACPIPlatform.pc(processorCount: 1))
        let fadt = Array(tables.contents(of: try #require(tables.table("FACP"))))
        #expect(fadt[76..<80].allSatisfy { $0 == 0 } && fadt[91] == 0 && fadt[113] & 0x01 == 0)
        #expect(fadt[208..<220].allSatisfy { $0 == 0 })
    }
}
