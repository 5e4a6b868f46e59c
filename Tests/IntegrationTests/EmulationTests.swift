import CNativeOps
import SwiftVisor
import SwiftVisorGuests
import Testing

extension KVMIntegration {
    /// Instructions the host's KVM cannot emulate at CPL0, finished by SwiftVisor and compared
    /// by the guest with the same instructions run natively at CPL3.
    ///
    /// Which side finishes them depends on the host, found at run time by the host-quirk
    /// probe: where KVM interprets CPL0 code (the project's nested machines), SwiftVisor must;
    /// where CPL0 code runs natively, the CPU does and nothing reaches the emulator. The
    /// guest's results must match either way.
    @Suite("Instruction emulation on KVM")
    struct EmulationTests {
        /// Whether this host interprets CPL0 guest code.
        static func hostInterprets() throws -> Bool { try !HostQuirks.probe().runsKernelCodeNatively }

        @Test("int3, popcnt, clac/stac, fwait and lock cmpxchg16b give the architectural results")
        func emulate() throws {
            let interprets = try Self.hostInterprets()
            let trace = LogCapture()
            var config = MachineConfiguration(guest: .elf(GuestImages.emulate))
            let console = ConsoleCapture()
            config.consoleOutput = console.sink
            config.trace = trace.sink
            let machine = try Machine(config)
            let report = try machine.run()
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            let lines = console.text.split(separator: "\n").map(String.init)
            for expected in [
                "int3 vector=03 rip_after=ok rax=0000000000001234",
                "popcnt16 reg match", "popcnt16 mem match", "popcnt32 reg match", "popcnt32 mem match",
                "popcnt64 reg match", "popcnt64 mem match",
                "fwait ts=1 -> #NM", "fwait ts=0 -> none",
                "cmpxchg16b equal zf=1 mem=44444444444444443333333333333333 rdx:rax=22222222222222221111111111111111",
                "cmpxchg16b differ zf=0 mem=44444444444444443333333333333333 rdx:rax=44444444444444443333333333333333",
                "cmpxchg16b misaligned -> #GP error=0000",
                "cmpxchg16b cpl3 match",  // every CPU with VMX or SVM has CMPXCHG16B
                HostCPU.guestHasXSAVE ? "xgetbv match" : "xgetbv unsupported",
                "done",
            ] {
                #expect(lines.contains(expected), "missing: \(expected)")
            }
            // With SMAP, STAC sets AC and CLAC clears it; without it, both are #UD.
            #expect(lines.contains(HostCPU.guestHasSMAP ? "smap=1 stac=1 clac=0" : "smap=0 stac=#UD clac=#UD"))
            guard interprets else { return }  // natively, the CPU ran them all
            let emulated = machine.emulatedInstructions
            #expect(emulated["int3"] == 1)
            #expect(emulated["popcnt"] ?? 0 >= 6)
            #expect(emulated["cmpxchg16b"] ?? 0 >= 2)
            #expect(emulated["fwait"] == 2)
            #expect(emulated["xgetbv"] == (HostCPU.guestHasXSAVE ? 1 : nil))
            #expect(trace.all.contains { $0.contains("emulated int3 at rip=0x") })
        }

        @Test("BMI1, BMI2, ADX and CRC32 at CPL0 match the same instructions run natively at CPL3")
        func bitManipulation() throws {
            // The guest runs each case natively at CPL3 too, which needs the instructions.
            guard native_supported() != 0 else {
                print("this host lacks BMI1, BMI2, ADX or SSE4.2: the CPL3 side cannot run, so the guest does not")
                return
            }
            let interprets = try Self.hostInterprets()
            var config = MachineConfiguration(guest: .elf(GuestImages.emulateBmi))
            let console = ConsoleCapture()
            config.consoleOutput = console.sink
            let machine = try Machine(config)
            let report = try machine.run()
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            let lines = console.text.split(separator: "\n").map(String.init)
            #expect(lines.count == 49)
            #expect(lines.last == "done")
            let mismatches = lines.filter { !$0.hasSuffix(" match") && $0 != "done" }
            #expect(mismatches.isEmpty, "\(mismatches)")
            guard interprets else { return }  // natively, the CPU ran them all
            for mnemonic in [
                "andn", "bextr", "blsr", "blsi", "blsmsk", "pdep", "pext", "shlx", "sarx", "shrx", "rorx",
                "mulx", "adcx", "adox", "crc32",
            ] {
                #expect((machine.emulatedInstructions[mnemonic] ?? 0) > 0, "\(mnemonic) was not emulated")
            }
        }

        @Test("INT n through a 32-bit IDT (delivered, #NP, #GP) and invalid bytes (#UD) at CPL0, as the processor would")
        func softwareInterrupts32() throws {
            let interprets = try Self.hostInterprets()
            let trace = LogCapture()
            let (report, console) = try runGuest(GuestImages.softInt) { $0.trace = trace.sink }
            #expect(report.exitStatus == 1, "QEMU debug-exit 0 is pass: \(console)")
            #expect(
                console == "int 0x40 ok\nint 0x41 ok\nint 0x42 #NP ok\nint 0x80 #GP ok\ninvalid #UD ok\nsoft_int ok\n")
            if interprets {
                // Each probe reached SwiftVisor: four INT n and the invalid bytes.
                #expect(trace.all.filter { $0.contains("emulated int 0x") }.count == 4, "\(trace.all)")
                #expect(trace.all.contains { $0.contains("emulated (invalid: 0f 04") })
            }
        }

        @Test("INT n and invalid bytes at CPL0 in 64-bit mode reach the guest's IDT")
        func softwareInterrupts64() throws {
            let (report, console) = try runGuest(GuestImages.events, commandLine: "softint")
            #expect(report.exitStatus == 0)
            #expect(console == "vector=40 error=00000000 cr2=0000000000000000\n")
            let (invalid, invalidConsole) = try runGuest(GuestImages.events, commandLine: "invalid")
            #expect(invalid.exitStatus == 0)
            #expect(invalidConsole == "vector=06 error=00000000 cr2=0000000000000000\n")
        }

        @Test("with emulation off, the first such instruction stops the VM with its disassembly")
        func emulationOff() throws {
            let interprets = try Self.hostInterprets()
            let (report, console) = try runGuest(GuestImages.emulate) { $0.emulation = false }
            guard interprets else {
                // Natively nothing needs the emulator, so the guest runs to its end.
                #expect(report.exitStatus == 0)
                #expect(console.hasSuffix("done\n"))
                return
            }
            #expect(report.exitStatus == 122)
            let dump = try #require(report.diagnostic)
            #expect(dump.contains("instruction emulation failed"))
            #expect(dump.contains("=> "))
            #expect(dump.contains("int3"))
        }
    }
}
