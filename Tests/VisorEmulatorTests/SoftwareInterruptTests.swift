import Testing
import TestSupport
import VisorCore
@testable import VisorEmulator
import VisorKVM
import VisorMemory

/// A gate's byte 5: P, DPL, type (S = 0).
private func gateAccess(present: Bool = true, dpl: UInt8 = 0, type: UInt8 = 0xE) -> UInt8 {
    (present ? 0x80 : 0) | dpl << 5 | type
}

@Suite("Instruction emulator: INT n and invalid bytes")
struct SoftwareInterruptTests {
    /// The long-mode harness with a 16-byte-gate IDT at 0x50000 of `limit`.
    func longMode(limit: UInt16 = 0xFFF) throws -> EmulatorHarness {
        let h = try EmulatorHarness()
        h.vcpu.sregs.idt = DescriptorTable(base: 0x50000, limit: limit)
        return h
    }

    func writeGate(_ h: EmulatorHarness, vector: UInt8, size: UInt64, access: UInt8) throws {
        try h.memory.write([access], at: 0x50000 + UInt64(vector) * size + 5)
    }

    @Test("INT n through a present DPL-0 interrupt gate at CPL0 is delivered as a trap: RIP after it")
    func deliveredInLongMode() throws {
        let h = try longMode()
        try writeGate(h, vector: 0x40, size: 16, access: gateAccess())
        h.vcpu.regs.rflags = 0x2  // IF clear: a software interrupt ignores it
        #expect(try h.run([0xCD, 0x40]) == .handled)
        #expect(h.vcpu.injections == [.softwareInterrupt(vector: 0x40)])
        #expect(h.vcpu.regs.rip == 0x10002)
        #expect(h.emulator.emulatedCounts["int"] == 1)
    }

    @Test("vectors below 32 and trap gates are delivered too, with no error code")
    func lowVectorTrapGate() throws {
        let h = try longMode()
        try writeGate(h, vector: 14, size: 16, access: gateAccess(type: 0xF))
        #expect(try h.run([0xCD, 0x0E]) == .handled)
        #expect(h.vcpu.injections == [.softwareInterrupt(vector: 14)])
    }

    @Test("a gate whose DPL is below the CPL raises #GP(n*8+2), RIP unchanged")
    func dplBelowCPL() throws {
        let h = try longMode()
        try writeGate(h, vector: 0x41, size: 16, access: gateAccess(dpl: 0))
        h.vcpu.sregs.cs.selector = 0x2B  // CPL3
        #expect(try h.run([0xCD, 0x41]) == .handled)
        #expect(h.vcpu.injections == [.generalProtection(0x41 << 3 | 2)])
        #expect(h.vcpu.regs.rip == 0x10000)
        // DPL 3 lets CPL3 through.
        try writeGate(h, vector: 0x41, size: 16, access: gateAccess(dpl: 3))
        #expect(try h.run([0xCD, 0x41]) == .handled)
        #expect(h.vcpu.injections.last == .softwareInterrupt(vector: 0x41))
    }

    @Test("a gate that is not present raises #NP(n*8+2)")
    func notPresent() throws {
        let h = try longMode()
        try writeGate(h, vector: 0x42, size: 16, access: gateAccess(present: false))
        #expect(try h.run([0xCD, 0x42]) == .handled)
        #expect(h.vcpu.injections == [.exception(vector: 11, errorCode: 0x42 << 3 | 2)])
        #expect(h.vcpu.regs.rip == 0x10000)
    }

    @Test("a descriptor that is no gate of the mode raises #GP(n*8+2); type checks come before DPL and P")
    func badType() throws {
        let h = try longMode()
        // A task gate (5) and a 16-bit interrupt gate (6) are not gates in IA-32e mode; 0 is
        // nothing; a code segment (S set) is no gate.
        for access in [gateAccess(type: 0x5), gateAccess(type: 0x6), gateAccess(present: false, dpl: 0, type: 0), 0x9A] {
            h.vcpu.injections = []
            try writeGate(h, vector: 0x43, size: 16, access: access)
            #expect(try h.run([0xCD, 0x43]) == .handled)
            #expect(h.vcpu.injections == [.generalProtection(0x43 << 3 | 2)], "access byte \(access)")
        }
    }

    @Test("a gate past the IDT limit raises #GP(n*8+2): 16 bytes per gate in IA-32e mode")
    func pastLimit() throws {
        let h = try longMode(limit: 0x40 * 16 + 14)  // gate 0x40 one byte short
        try writeGate(h, vector: 0x40, size: 16, access: gateAccess())
        try writeGate(h, vector: 0x3F, size: 16, access: gateAccess())
        #expect(try h.run([0xCD, 0x40]) == .handled)
        #expect(h.vcpu.injections == [.generalProtection(0x40 << 3 | 2)])
        #expect(try h.run([0xCD, 0x3F]) == .handled)
        #expect(h.vcpu.injections.last == .softwareInterrupt(vector: 0x3F))
    }

    @Test("an IDT that does not translate raises #PF at the gate's address")
    func idtNotMapped() throws {
        let h = try EmulatorHarness()
        h.vcpu.sregs.idt = DescriptorTable(base: 0x4000_0000, limit: 0xFFF)  // beyond the 2 MiB mapping
        #expect(try h.run([0xCD, 0x20]) == .handled)
        let gateAddress: UInt64 = 0x4000_0000 + 0x20 * 16 + 5
        #expect(h.vcpu.injections == [.pageFault(errorCode: 0, address: gateAddress)])
    }

    /// A 32-bit protected-mode vCPU, paging off, with an 8-byte-gate IDT at 0x50000.
    func protectedMode(limit: UInt16 = 0x7FF) throws -> EmulatorHarness {
        let h = try EmulatorHarness()
        h.vcpu.sregs.cr0 = 0x11
        h.vcpu.sregs.cr4 = 0
        h.vcpu.sregs.efer = 0
        h.vcpu.sregs.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, db: true, g: true)
        h.vcpu.sregs.idt = DescriptorTable(base: 0x50000, limit: limit)
        return h
    }

    @Test("32-bit protected mode: 8-byte gates; 32- and 16-bit interrupt and trap gates and task gates pass")
    func protectedModeGates() throws {
        let h = try protectedMode()
        for type: UInt8 in [0x5, 0x6, 0x7, 0xE, 0xF] {
            h.vcpu.regs.rip = 0x10000
            try writeGate(h, vector: 0x30, size: 8, access: gateAccess(type: type))
            #expect(try h.run([0xCD, 0x30]) == .handled)
            #expect(h.vcpu.injections.last == .softwareInterrupt(vector: 0x30), "type \(type)")
            #expect(h.vcpu.regs.rip == 0x10002)
        }
        h.vcpu.regs.rip = 0x10000
        try writeGate(h, vector: 0x30, size: 8, access: gateAccess(type: 0xC))  // a call gate
        #expect(try h.run([0xCD, 0x30]) == .handled)
        #expect(h.vcpu.injections.last == .generalProtection(0x30 << 3 | 2))
        // Past the limit at 8 bytes per gate: 0xFF's gate ends at 0x7FF, inside; limit 0x7FE is not.
        let short = try protectedMode(limit: 0x7FE)
        try writeGate(short, vector: 0xFF, size: 8, access: gateAccess())
        #expect(try short.run([0xCD, 0xFF]) == .handled)
        #expect(short.vcpu.injections == [.generalProtection(0xFF << 3 | 2)])
    }

    @Test("virtual-8086 mode runs at CPL3 whatever CS holds: a DPL-0 gate raises #GP(n*8+2)")
    func virtual8086() throws {
        let h = try protectedMode()
        // VM and IOPL 3 (an INT with a lower IOPL faults before the IDT); CS holds a
        // real-mode segment value whose low bits are 0.
        h.vcpu.regs.rflags = 0x2 | 1 << 17 | 3 << 12
        h.vcpu.sregs.cs = Segment(base: 0x10000, limit: 0xFFFF, selector: 0x1000, type: 0xB)
        h.vcpu.regs.rip = 0
        try writeGate(h, vector: 0x31, size: 8, access: gateAccess(dpl: 0))
        #expect(try h.run([0xCD, 0x31]) == .handled)
        #expect(h.vcpu.injections == [.generalProtection(0x31 << 3 | 2)])
    }

    @Test("real mode: the vector is delivered when the IVT covers it, else #GP(0)")
    func realMode() throws {
        let h = try EmulatorHarness()
        h.vcpu.sregs.cr0 = 0x10
        h.vcpu.sregs.cr4 = 0
        h.vcpu.sregs.efer = 0
        h.vcpu.sregs.cs = Segment(base: 0x10000, limit: 0xFFFF, selector: 0x1000, type: 0xB)
        h.vcpu.regs.rip = 0
        h.vcpu.sregs.idt = DescriptorTable(base: 0, limit: 0x3FF)
        #expect(try h.run([0xCD, 0x10]) == .handled)
        #expect(h.vcpu.injections == [.softwareInterrupt(vector: 0x10)])
        #expect(h.vcpu.regs.rip == 2)
        h.vcpu.regs.rip = 0
        h.vcpu.sregs.idt = DescriptorTable(base: 0, limit: 0x10 * 4 + 2)
        #expect(try h.run([0xCD, 0x10]) == .handled)
        #expect(h.vcpu.injections.last == .generalProtection(0))
    }

    @Test("bytes that decode to no instruction raise #UD, RIP unchanged, counted apart")
    func invalidBytes() throws {
        let h = try EmulatorHarness()
        // PUSH ES (0x06) does not exist in 64-bit mode; nor does a LOCK prefix on a NOP.
        for bytes: [UInt8] in [[0x06], [0xF0, 0x90]] {
            h.vcpu.injections = []
            #expect(try h.run(bytes) == .handled)
            #expect(h.vcpu.injections == [.invalidOpcode], "bytes \(bytes)")
            #expect(h.vcpu.regs.rip == 0x10000)
        }
        #expect(h.emulator.emulatedCounts == [InstructionEmulator.invalidInstructionName: 2])
        // In 32-bit mode 0x06 is PUSH ES, valid, with no handler: the caller stops the VM.
        let p = try protectedMode()
        #expect(try p.run([0x06]) == nil)
        #expect(p.vcpu.injections.isEmpty)
    }

    @Test("truncated bytes (nothing readable after a prefix) stay fatal")
    func truncatedBytes() throws {
        let h = try EmulatorHarness()
        h.vcpu.regs.rip = 0x1F_FFFF  // the last mapped byte: a prefix and then nothing
        try h.memory.write([0x66], at: 0x1F_FFFF)
        #expect(h.emulator.emulate(data: [0], vcpu: h.vcpu)?.outcome == nil)
        #expect(h.vcpu.injections.isEmpty)
    }
}
