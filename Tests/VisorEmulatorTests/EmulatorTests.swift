import Testing
import TestSupport
import VisorCore
@testable import VisorEmulator
import VisorKVM
import VisorMemory

/// Runs the emulator on `bytes` placed at RIP 0x10000 of a long-mode vCPU whose page tables
/// identity-map the first 2 MiB.
struct EmulatorHarness {
    let memory: GuestMemory
    let vcpu = FakeDataChannel()
    let emulator: InstructionEmulator

    init(smap: Bool = true) throws {
        memory = try GuestMemory(size: 2 << 20)
        try memory.write(UInt64(0x3000 | 0x3), at: 0x1000)  // PML4[0] -> PDPT
        try memory.write(UInt64(0x4000 | 0x3), at: 0x3000)  // PDPT[0] -> PD
        try memory.write(UInt64(0x0 | 0x83), at: 0x4000)  // PD[0]: 2 MiB page at 0
        vcpu.sregs.cr0 = 0x8001_0033
        vcpu.sregs.cr3 = 0x1000
        vcpu.sregs.cr4 = 0x20
        vcpu.sregs.efer = 0x500
        vcpu.sregs.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, l: true, g: true)
        vcpu.regs.rip = 0x10000
        emulator = InstructionEmulator(smapAvailable: smap, memory: memory)
    }

    /// Emulates `bytes`, passing them as KVM's emulation-failure data would.
    func run(_ bytes: [UInt8], viaExitData: Bool = true) throws -> ExitOutcome? {
        try memory.write(bytes, at: 0x10000)
        var data: [UInt64] = [viaExitData ? 1 : 0, 0, 0]
        let padded = [UInt8(bytes.count)] + bytes + [UInt8](repeating: 0x90, count: 15 - bytes.count)
        for i in 0..<16 { data[1 + i / 8] |= UInt64(padded[i]) << (8 * UInt64(i % 8)) }
        return emulator.emulate(data: data, vcpu: vcpu)?.outcome
    }
}

@Suite("Instruction emulator")
struct EmulatorTests {
    let flagsIn: UInt64 = 0x2 | 0x1 | 0x4 | 0x10 | 0x80 | 0x800  // CF PF AF SF OF set

    @Test("KVM's instruction bytes are taken from the exit data")
    func bytesFromExitData() {
        let data: [UInt64] = [1, 0x0B0F_03, 0]  // count 3? no: low byte is the count
        #expect(
            InstructionEmulator.instructionBytes(fromInternalErrorData: [1, 0x0000_0000_0D01_0F03, 0]) == [0x0F, 0x01, 0x0D])
        #expect(InstructionEmulator.instructionBytes(fromInternalErrorData: [0, 0x0000_0000_0D01_0F03, 0]) == nil)
        #expect(InstructionEmulator.instructionBytes(fromInternalErrorData: [1, 0x10, 0]) == nil, "16 bytes is too many")
        _ = data
    }

    @Test("POPCNT at 16, 32 and 64 bits, register and memory source: result, zero-extension, flags")
    func popcnt() throws {
        let h = try EmulatorHarness()
        for (bytes, bits) in [
            ([UInt8]([0x66, 0xF3, 0x0F, 0xB8, 0xC3]), 16), ([0xF3, 0x0F, 0xB8, 0xC3], 32),
            ([0xF3, 0x48, 0x0F, 0xB8, 0xC3], 64),
        ] {
            for source: UInt64 in [0, 1, 0xF0F0_F0F0_F0F0_F0F0, .max] {
                h.vcpu.regs.rip = 0x10000
                h.vcpu.regs.rax = 0x5555_5555_5555_5555
                h.vcpu.regs.rbx = source
                h.vcpu.regs.rflags = flagsIn
                #expect(try h.run(bytes) == .handled)
                let truncated = bits == 64 ? source : source & ((1 << UInt64(bits)) - 1)
                let count = UInt64(truncated.nonzeroBitCount)
                let expected: UInt64 = bits == 16 ? (0x5555_5555_5555_0000 | count) : count
                #expect(h.vcpu.regs.rax == expected, "popcnt\(bits) of \(source)")
                #expect(h.vcpu.regs.rflags == 0x2 | (truncated == 0 ? 0x40 : 0))
                #expect(h.vcpu.regs.rip == 0x10000 + UInt64(bytes.count))
            }
        }
        // Memory source: popcnt rax, qword ptr [rbx]
        try h.memory.write(UInt64(0xFF00_FF00_0000_0001), at: 0x20000)
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rbx = 0x20000
        #expect(try h.run([0xF3, 0x48, 0x0F, 0xB8, 0x03]) == .handled)
        #expect(h.vcpu.regs.rax == 17)
    }

    @Test("a memory operand outside the page tables raises #PF with the address in CR2")
    func pageFault() throws {
        let h = try EmulatorHarness()
        h.vcpu.regs.rbx = 0x4000_0000  // not mapped
        #expect(try h.run([0xF3, 0x48, 0x0F, 0xB8, 0x03]) == .handled)
        #expect(h.vcpu.injections == [.pageFault(errorCode: 0, address: 0x4000_0000)])
        #expect(h.vcpu.regs.rip == 0x10000, "a fault leaves RIP at the instruction")
    }

    @Test("emulated memory accesses honour page protections and canonical addresses")
    func protections() throws {
        let h = try EmulatorHarness()
        // A second 2 MiB page at 2 MiB: present, read-only, supervisor. (The harness's RAM is
        // 2 MiB, so map the read-only page over the first 2 MiB again via PD[1] -> 0.)
        try h.memory.write(UInt64(0x0 | 0x81), at: 0x4008)  // PD[1]: P, PS, not writable, not user
        let popcntStore: [UInt8] = [0xF3, 0x48, 0x0F, 0xB8, 0x03]  // popcnt rax, [rbx] (a read)
        // Reading a read-only page is fine.
        h.vcpu.regs.rbx = 0x20_0000 + 0x100
        #expect(try h.run(popcntStore) == .handled)
        #expect(h.vcpu.injections.isEmpty)
        // cmpxchg16b writes: read-only page with CR0.WP set -> #PF, P|W.
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rdi = 0x20_0000 + 0x100
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(h.vcpu.injections.last == .pageFault(errorCode: 0x3, address: 0x20_0100))
        // Without CR0.WP a supervisor write to a read-only page succeeds.
        h.vcpu.sregs.cr0 &= ~(1 << 16)
        h.vcpu.regs.rip = 0x10000
        let before = h.vcpu.injections.count
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(h.vcpu.injections.count == before)
        // At CPL3, the supervisor page faults even for a read: #PF, P|U.
        h.vcpu.sregs.cs.selector = 0x1B
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rbx = 0x20_0000 + 0x100
        #expect(try h.run(popcntStore) == .handled)
        #expect(h.vcpu.injections.last == .pageFault(errorCode: 0x5, address: 0x20_0100))
        // A non-canonical address is #GP(0).
        h.vcpu.sregs.cs.selector = 0x08
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rbx = 0x0000_8000_0000_0000
        #expect(try h.run(popcntStore) == .handled)
        #expect(h.vcpu.injections.last == .generalProtection(0))
    }

    @Test("emulated accesses pass the CPL and RFLAGS.AC: SMAP faults a supervisor read of a user page unless AC is set")
    func smapAndAccessedFlags() throws {
        let h = try EmulatorHarness()
        try h.memory.write(UInt64(0x3000 | 0x7), at: 0x1000)  // user-mode address at every level
        try h.memory.write(UInt64(0x4000 | 0x7), at: 0x3000)
        try h.memory.write(UInt64(0x0 | 0x87), at: 0x4000)
        h.vcpu.sregs.cr4 |= 1 << 21  // SMAP
        h.vcpu.regs.rbx = 0x20000
        #expect(try h.run([0xF3, 0x48, 0x0F, 0xB8, 0x03]) == .handled)
        #expect(h.vcpu.injections == [.pageFault(errorCode: 0x1, address: 0x20000)])
        #expect(try h.memory.readUInt64(at: 0x4000) == 0x87, "a fault sets no accessed flag")
        h.vcpu.regs.rflags |= 1 << 18  // AC
        #expect(try h.run([0xF3, 0x48, 0x0F, 0xB8, 0x03]) == .handled)
        #expect(h.vcpu.injections.count == 1)
        #expect(try h.memory.readUInt64(at: 0x4000) == 0x87 | 0x20, "a read sets A, not D")
        // A write (cmpxchg16b) sets D in the 2 MiB page's PDE.
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rdi = 0x20000
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(try h.memory.readUInt64(at: 0x4000) == 0x87 | 0x60)
        #expect(try h.memory.readUInt64(at: 0x1000) == 0x3000 | 0x27)
    }

    @Test(
        "LZCNT and TZCNT: result and CF/ZF",
        arguments: [
            ([UInt8]([0xF3, 0x0F, 0xBD, 0xC3]), UInt64(0), UInt64(32), UInt64(0x1)),  // lzcnt eax, ebx of 0: 32, CF
            ([0xF3, 0x0F, 0xBD, 0xC3], 0x8000_0000, 0, 0x40),  // lzcnt of top bit: 0, ZF
            ([0xF3, 0x48, 0x0F, 0xBD, 0xC3], 1, 63, 0),
            ([0xF3, 0x0F, 0xBC, 0xC3], 0xF0, 4, 0),  // tzcnt
            ([0xF3, 0x48, 0x0F, 0xBC, 0xC3], 0, 64, 0x1),
        ])
    func leadingTrailing(bytes: [UInt8], source: UInt64, result: UInt64, flags: UInt64) throws {
        let h = try EmulatorHarness()
        h.vcpu.regs.rbx = source
        h.vcpu.regs.rflags = flagsIn
        #expect(try h.run(bytes) == .handled)
        #expect(h.vcpu.regs.rax == result)
        #expect(h.vcpu.regs.rflags == 0x2 | flags)
    }

    @Test("CLAC/STAC change RFLAGS.AC with SMAP; without it they raise #UD")
    func smap() throws {
        let h = try EmulatorHarness(smap: true)
        h.vcpu.regs.rflags = 0x2
        #expect(try h.run([0x0F, 0x01, 0xCB]) == .handled)
        #expect(h.vcpu.regs.rflags == 0x2 | 1 << 18)
        h.vcpu.regs.rip = 0x10000
        #expect(try h.run([0x0F, 0x01, 0xCA]) == .handled)
        #expect(h.vcpu.regs.rflags == 0x2)
        let none = try EmulatorHarness(smap: false)
        #expect(try none.run([0x0F, 0x01, 0xCB]) == .handled)
        #expect(none.vcpu.injections == [.invalidOpcode])
        #expect(none.vcpu.regs.rip == 0x10000)
    }

    @Test("FWAIT raises #NM when CR0.MP and CR0.TS are set, otherwise does nothing")
    func fwait() throws {
        let h = try EmulatorHarness()
        h.vcpu.sregs.cr0 |= 0b1010
        #expect(try h.run([0x9B]) == .handled)
        #expect(h.vcpu.injections == [.exception(vector: 7, errorCode: nil)])
        h.vcpu.sregs.cr0 &= ~0b1000
        #expect(try h.run([0x9B]) == .handled)
        #expect(h.vcpu.injections.count == 1)
        #expect(h.vcpu.regs.rip == 0x10001)
    }

    @Test("INT3 delivers #BP as a trap: RIP after the instruction")
    func int3() throws {
        let h = try EmulatorHarness()
        #expect(try h.run([0xCC]) == .handled)
        #expect(h.vcpu.injections == [.exception(vector: 3, errorCode: nil)])
        #expect(h.vcpu.regs.rip == 0x10001)
    }

    @Test("LOCK CMPXCHG16B: equal stores RCX:RBX and sets ZF; different loads RDX:RAX; misaligned is #GP(0)")
    func cmpxchg16b() throws {
        let h = try EmulatorHarness()
        try h.memory.write(UInt64(0x1111), at: 0x30000)
        try h.memory.write(UInt64(0x2222), at: 0x30008)
        h.vcpu.regs.rdi = 0x30000
        h.vcpu.regs.rax = 0x1111; h.vcpu.regs.rdx = 0x2222
        h.vcpu.regs.rbx = 0x3333; h.vcpu.regs.rcx = 0x4444
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(h.vcpu.regs.rflags & 0x40 != 0)
        #expect(try h.memory.readUInt64(at: 0x30000) == 0x3333)
        #expect(try h.memory.readUInt64(at: 0x30008) == 0x4444)
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rax = 0; h.vcpu.regs.rdx = 0
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(h.vcpu.regs.rflags & 0x40 == 0)
        #expect((h.vcpu.regs.rax, h.vcpu.regs.rdx) == (0x3333, 0x4444))
        #expect(try h.memory.readUInt64(at: 0x30000) == 0x3333, "memory unchanged")
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rdi = 0x30008
        #expect(try h.run([0xF0, 0x48, 0x0F, 0xC7, 0x0F]) == .handled)
        #expect(h.vcpu.injections == [.generalProtection(0)])
        #expect(h.vcpu.regs.rip == 0x10000)
    }

    @Test("an instruction with no handler is left to the caller, which stops the VM")
    func unknown() throws {
        let h = try EmulatorHarness()
        #expect(try h.run([0x0F, 0x0B]) == nil)  // ud2
        #expect(try h.run([0x0F, 0xAE, 0x27]) == nil)  // xsave [rdi]
    }

    @Test("XGETBV reads XCR0 for ECX=0, #GP for other ECX, #UD without CR4.OSXSAVE")
    func xgetbv() throws {
        let h = try EmulatorHarness()
        h.vcpu.sregs.cr4 |= 1 << 18
        h.vcpu.xcr = 0x2_0000_0207
        h.vcpu.regs.rax = .max; h.vcpu.regs.rdx = .max
        #expect(try h.run([0x0F, 0x01, 0xD0]) == .handled)
        #expect((h.vcpu.regs.rax, h.vcpu.regs.rdx) == (0x207, 0x2))
        #expect(h.vcpu.regs.rip == 0x10003)
        h.vcpu.regs.rip = 0x10000
        h.vcpu.regs.rcx = 1
        #expect(try h.run([0x0F, 0x01, 0xD0]) == .handled)
        #expect(h.vcpu.injections == [.generalProtection(0)])
        h.vcpu.sregs.cr4 &= ~(1 << 18)
        #expect(try h.run([0x0F, 0x01, 0xD0]) == .handled)
        #expect(h.vcpu.injections.last == .invalidOpcode)
    }

    @Test("instruction bytes are read through the page tables when KVM did not attach them")
    func bytesFromMemory() throws {
        let h = try EmulatorHarness()
        #expect(try h.run([0xCC], viaExitData: false) == .handled)
        #expect(h.vcpu.injections == [.exception(vector: 3, errorCode: nil)])
    }

    @Test("embedding code can add a handler for another mnemonic")
    func customHandler() throws {
        let h = try EmulatorHarness()
        var handlers = InstructionEmulator.standardHandlers
        handlers["xsave"] = { state in
            state.registers.rax = 0x7
            state.registers.rdx = 0
            return .completed
        }
        let emulator = InstructionEmulator(handlers: handlers, smapAvailable: false, memory: h.memory)
        try h.memory.write([0x0F, 0xAE, 0x27], at: 0x10000)  // xsave [rdi]
        #expect(emulator.emulate(data: [0], vcpu: h.vcpu)?.outcome == .handled)
        #expect(h.vcpu.regs.rax == 7)
        #expect(h.vcpu.regs.rip == 0x10003)
        #expect(emulator.emulatedCounts == ["xsave": 1])
    }

    @Test("as the dispatcher's emulation-failure handler it finishes what it knows and leaves the rest fatal")
    func throughDispatcher() throws {
        let h = try EmulatorHarness()
        var dispatcher = ExitDispatcher()
        dispatcher.emulationFailureHandler = h.emulator
        try h.memory.write([0xF3, 0x48, 0x0F, 0xB8, 0xC3], at: 0x10000)  // popcnt rax, rbx
        h.vcpu.regs.rbx = 0xF0F0
        #expect(dispatcher.dispatch(.internalError(suberror: 1, data: [0]), vcpu: h.vcpu) == .handled)
        #expect(h.vcpu.regs.rax == 8)
        #expect(h.vcpu.regs.rip == 0x10005)
        try h.memory.write([0x0F, 0xAE, 0x27], at: 0x10005)  // xsave [rdi]: no handler
        #expect(
            dispatcher.dispatch(.internalError(suberror: 1, data: [0]), vcpu: h.vcpu)
                == .fatal(.internalError(suberror: 1, data: [0])))
        #expect(h.vcpu.regs.rip == 0x10005)
        #expect(h.emulator.emulatedCounts == ["popcnt": 1])
    }

    @Test("random instruction bytes and registers never crash or write outside guest memory")
    func fuzz() throws {
        let h = try EmulatorHarness()
        var rng = LCG(state: 0xF00D)
        func next() -> UInt64 {
            let seed = rng.step()
            return seed
        }
        let prefixes: [[UInt8]] = [
            [0xF3, 0x0F, 0xB8], [0xF3, 0x48, 0x0F, 0xB8], [0xF0, 0x48, 0x0F, 0xC7],
            [0xF3, 0x0F, 0xBD], [0x66, 0xF3, 0x0F, 0xBC], [0x0F, 0x01], [0xCC], [0x9B],
        ]
        for _ in 0..<5_000 {
            let prefix = prefixes[Int(next() % UInt64(prefixes.count))]
            let tail = (0..<Int(next() % 8)).map { _ in UInt8(truncatingIfNeeded: next()) }
            let bytes = Array((prefix + tail).prefix(15))
            h.vcpu.regs = Registers()
            h.vcpu.regs.rip = 0x10000
            h.vcpu.regs.rax = next(); h.vcpu.regs.rbx = next() % 0x40_0000; h.vcpu.regs.rcx = next()
            h.vcpu.regs.rdx = next(); h.vcpu.regs.rsi = next(); h.vcpu.regs.rdi = next() % 0x20_0010
            h.vcpu.regs.r8 = next()
            _ = try h.run(bytes)
        }
        // The page tables are intact apart from the accessed flag a walk may set.
        #expect(try h.memory.readUInt64(at: 0x1000) & ~0x20 == 0x3003)
    }
}
