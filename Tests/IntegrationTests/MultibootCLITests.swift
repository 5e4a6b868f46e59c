import Foundation
import Testing

extension KVMIntegration.CLITests {
    @Test("run: a multiboot guest with --module files and strings; its QEMU exit status is the process status")
    func multibootModules() throws {
        let one = try temporaryFile(Array("module one contents".utf8))
        let two = try temporaryFile(Array("two".utf8))
        defer {
            try? FileManager.default.removeItem(atPath: one)
            try? FileManager.default.removeItem(atPath: two)
        }
        let result = try run(["--builtin", "multiboot_info", "--cmdline", "cli", "--module", one + ",first a=1", "--module", two])
        #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("cmdline=[cli]\n"))
        #expect(result.stdout.contains("string=[first a=1] data=[module one contents]\n"), "\(result.stdout)")
        #expect(result.stdout.contains("string=[\(two)] data=[two]\n"), "\(result.stdout)")
        #expect(result.stdout.hasSuffix("multiboot ok\n"))
    }

    @Test("run: a bad multiboot file and --module without a multiboot guest are one-line errors")
    func multibootErrors() throws {
        // A multiboot magic with a wrong checksum.
        let bad = try temporaryFile([0x02, 0xB0, 0xAD, 0x1B, 0x03, 0, 0, 0, 0, 0, 0, 0])
        defer { try? FileManager.default.removeItem(atPath: bad) }
        expectOneLineError(try run([bad]), mentioning: "bad checksum")
        expectOneLineError(try run(["--builtin", "hello", "--module", bad]), mentioning: "multiboot")
    }

    @Test("run: --qemu-test-devices puts QEMU's test devices on the buses")
    func qemuTestDevices() throws {
        let result = try run(["--builtin", "test_dev", "--qemu-test-devices"])
        #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.hasSuffix("test_dev ok\n"))
        #expect(try run(["--builtin", "test_dev"]).status == 3)
    }
}
