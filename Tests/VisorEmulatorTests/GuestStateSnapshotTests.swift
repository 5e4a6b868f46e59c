import Testing
import TestSupport
import VisorKVM
@testable import VisorEmulator

@Suite("GuestStateSnapshot")
struct GuestStateSnapshotTests {
    func longModeSnapshot(bytes: [UInt8]) -> GuestStateSnapshot {
        var regs = Registers()
        regs.rip = 0x10_0123
        regs.rax = 0xDEAD_BEEF
        regs.rsp = 0xFFFF_8000_0000_1000
        regs.rflags = 0x246
        var sregs = SpecialRegisters()
        sregs.cr0 = 0x8000_0011
        sregs.cr3 = 0x8000
        sregs.cr4 = 0x20
        sregs.efer = 0x500
        sregs.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x08, type: 0xB, l: true, g: true)
        return GuestStateSnapshot(
            vcpu: 2, registers: regs, special: sregs,
            instructionAddress: 0x10_0123, instructionBytes: bytes)
    }

    @Test("render shows the vCPU, mode, RIP, registers and the instruction bytes as hex")
    func render() {
        let text = longModeSnapshot(bytes: [0xF4, 0x0F, 0x01, 0xD9]).render()
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.first == "vCPU 2 state (64-bit long mode, CPL 0):")
        #expect(text.contains("RIP=0000000000100123 RFLAGS=0000000000000246 [PF ZF IF IOPL=0]"))
        #expect(text.contains("RAX=00000000deadbeef"))
        #expect(text.contains("RSP=ffff800000001000"))
        #expect(text.contains("CR0=0000000080000011"))
        #expect(text.contains("EFER=0000000000000500"))
        #expect(lines.contains("  code at 0000000000100123: f4 0f 01 d9"))
        // Then the disassembly, the instruction at RIP marked.
        #expect(lines.contains { $0.hasPrefix("  => 0000000000100123  f4") && $0.hasSuffix("hlt") })
        #expect(lines.last?.hasSuffix("vmmcall") == true)
        #expect(!text.contains("events:"), "no events were read")
    }

    @Test("render says when the instruction bytes are not in guest RAM")
    func renderNoBytes() {
        #expect(longModeSnapshot(bytes: []).render().hasSuffix("  code at 0000000000100123: (not in guest RAM)"))
    }

    @Test("mode follows CR0.PE, EFER.LMA, CS.L and CS.D")
    func modes() {
        var snapshot = longModeSnapshot(bytes: [])
        #expect(snapshot.mode == "64-bit long mode")
        snapshot.special.cs.l = false
        #expect(snapshot.mode == "compatibility mode")
        snapshot.special.efer = 0
        snapshot.special.cs.db = true
        #expect(snapshot.mode == "32-bit protected mode")
        snapshot.special.cs.db = false
        #expect(snapshot.mode == "16-bit protected mode")
        snapshot.special.cr0 = 0
        #expect(snapshot.mode == "real mode")
        snapshot.special.cs.selector = 0x7C3
        #expect(snapshot.render().hasPrefix("vCPU 2 state (real mode, CPL 3):"))
    }
}
