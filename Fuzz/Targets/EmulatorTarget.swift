// The instruction emulator (`InstructionEmulator.emulate`) over random instructions, code
// modes, privilege levels, control and general registers, on a fake vCPU.
import FuzzDeviceTargets
import TestSupport
import VisorCore
import VisorDecoder
import VisorEmulator
import VisorKVM
import VisorMemory

/// Guest RAM of the target: page tables at 0x1000-0x6FFF, the instruction at 0x8000, data
/// addresses from 0x9000.
private let ramSize = 0x10000
private let codeAddress: UInt64 = 0x8000
private let idtAddress: UInt64 = 0x7000

/// Instruction templates, before the ModRM byte, biased toward what the emulator handles.
/// A VEX template's second and third bytes are completed from the input.
private let templates: [[UInt8]] = [
    [0xCC], [0xCD], [0x0F, 0x01, 0xCA], [0x0F, 0x01, 0xCB], [0x0F, 0x01, 0xD0], [0x9B],
    [0xF3, 0x0F, 0xB8], [0xF3, 0x0F, 0xBD], [0xF3, 0x0F, 0xBC], [0xF3, 0x48, 0x0F, 0xB8], [0x66, 0xF3, 0x0F, 0xBC],
    [0x48, 0x0F, 0xC7], [0xF0, 0x48, 0x0F, 0xC7], [0x0F, 0xC7],
    [0x66, 0x0F, 0x38, 0xF6], [0xF3, 0x0F, 0x38, 0xF6], [0x66, 0x48, 0x0F, 0x38, 0xF6],
    [0xF2, 0x0F, 0x38, 0xF0], [0xF2, 0x0F, 0x38, 0xF1], [0xF2, 0x48, 0x0F, 0x38, 0xF1],
    [0xC4, 0x02, 0x00, 0xF2], [0xC4, 0x02, 0x00, 0xF7], [0xC4, 0x02, 0x00, 0xF3], [0xC4, 0x02, 0x00, 0xF5],
    [0xC4, 0x02, 0x00, 0xF6], [0xC4, 0x03, 0x03, 0xF0],
]
private let prefixes: [UInt8] = [0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x40, 0x48, 0x41, 0x4C]

/// RFLAGS bits an emulated instruction may change: CF, PF, AF, ZF, SF, OF and AC.
private let changeableFlags: UInt64 = 0x8D5 | 1 << 18

/// The input: a setup byte (code mode: real, 16- or 32-bit protected without paging, 32-bit
/// with 4 MiB pages, PAE, 64-bit or compatibility mode; whether KVM's exit data carries the
/// bytes), CPL and control-register bits (CR0.WP/TS/MP, CR4.OSXSAVE, SMAP offered), the
/// page-table permission bits, XCR0 (which also gives the IDT's limit and gates), segment bases, the 16 general registers (mostly
/// addresses in RAM or small numbers) and RFLAGS; then the instruction: 0-2 prefixes, a
/// template (or raw bytes) with its ModRM byte and up to 8 more bytes. Identity page tables
/// map the 64 KiB of RAM in the paged modes.
///
/// Checks: the standard handlers never stop the VM (`.handled` or declined); a declined
/// instruction (nil) changes no register, injects nothing and writes no RAM. A completed
/// one advances RIP by exactly the decoded length, changes only its destination registers
/// (operand 0, and operand 1 for MULX; RAX and RDX for XGETBV and CMPXCHG16B) and the
/// arithmetic flags and AC, and writes RAM only for CMPXCHG16B: there, with ZF set, the
/// changed bytes lie in one 16-byte-aligned block that held RDX:RAX and now holds RCX:RBX;
/// with ZF clear no byte changes and RDX:RAX changed to the differing block. A fault
/// injects one event and changes no register and no byte; INT3 and INT n trap with RIP
/// advanced (INT n with its own vector, after the IDT gate checks). Bytes that decode to no
/// instruction inject #UD and change nothing.
func fuzzEmulator(_ data: [UInt8]) {
    var input = ByteReader(data)
    let setup = input.byte()
    let control = input.byte()
    let tableFlags = input.byte()
    let xcr0 = input.uint64()

    let memory: GuestMemory
    do { memory = try GuestMemory(size: UInt64(ramSize)) } catch { preconditionFailure("emulator: no RAM: \(error)") }
    let vcpu = FakeDataChannel()
    vcpu.xcr = xcr0
    let level = { (shift: UInt8) -> UInt64 in tableFlags & 0x80 == 0 ? 0x7 : 0x1 | UInt64(tableFlags >> shift) & 0x6 }
    // Accessed (0x20) and, in the leaves, dirty (0x40) are set already, so the walk's own
    // flag updates change no byte and RAM comparisons below see only the instruction's
    // writes. (A PAE PDPTE has neither bit: there they are reserved.)
    do {
        try memory.write(0x2000 | 0x20 | level(0), at: 0x1000)  // PML4[0] -> PDPT
        try memory.write(0x3000 | 0x20 | level(2), at: 0x2000)  // PDPT[0] -> PD
        try memory.write(0x0 | 0xE0 | level(4), at: 0x3000)  // PD[0]: 2 MiB at 0
        try memory.write(UInt32(0x0 | 0xE0) | UInt32(level(4)), at: 0x5000)  // 32-bit PD[0]: 4 MiB at 0
        try memory.write(0x3000 | UInt64(1), at: 0x6000)  // PAE PDPTE[0] -> PD
    } catch { preconditionFailure("emulator: page tables do not fit: \(error)") }

    var sregs = SpecialRegisters()
    // CR0.WP, CR0.MP and CR0.TS from the control byte.
    let extraCR0: UInt64 = (control & 1 != 0 ? 1 << 16 : 0) | (control & 2 != 0 ? 1 << 1 : 0) | (control & 4 != 0 ? 1 << 3 : 0)
    sregs.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: UInt16(control >> 6), type: 0xB, l: false, g: true)
    sregs.cr4 = control & 0x08 != 0 ? 1 << 18 : 0
    let modeIndex = (setup & 0x7F) % 7
    switch modeIndex {
    case 0:  // real mode
        sregs.cr0 = extraCR0 & ~(1 << 16)
    case 1, 2:  // protected mode, 16- or 32-bit code, no paging
        sregs.cr0 = 1 | extraCR0
        sregs.cs.db = modeIndex == 2
    case 3:  // 32-bit paging with 4 MiB pages
        sregs.cr0 = 0x8000_0001 | extraCR0
        sregs.cr3 = 0x5000
        sregs.cr4 |= 1 << 4
        sregs.cs.db = true
    case 4:  // PAE paging
        sregs.cr0 = 0x8000_0001 | extraCR0
        sregs.cr3 = 0x6000
        sregs.cr4 |= 1 << 5
        sregs.cs.db = true
    default:  // long mode: 64-bit code, or compatibility mode
        sregs.cr0 = 0x8000_0001 | extraCR0
        sregs.cr3 = 0x1000
        sregs.cr4 |= 1 << 5
        sregs.efer = 0x500
        sregs.cs.l = modeIndex == 5
        sregs.cs.db = modeIndex == 6
    }
    for keyPath in [\SpecialRegisters.ds, \.es, \.ss, \.fs, \.gs] {
        let base = input.byte()
        sregs[keyPath: keyPath].base = base < 0xC0 ? 0 : UInt64(base & 0x3F) << 8
    }
    // An IDT at 0x7000 for INT n: the limit is XCR0's top 16 bits, and byte 5 (P, DPL,
    // type) of the 8-byte slot k is byte k % 8 of XCR0 (a 16-byte gate v is slot 2v).
    sregs.idt = DescriptorTable(base: idtAddress, limit: UInt16(truncatingIfNeeded: xcr0 >> 48))
    do {
        for slot in 0..<512 {
            try memory.write([UInt8(truncatingIfNeeded: xcr0 >> (8 * UInt64(slot % 8)))], at: idtAddress + UInt64(slot) * 8 + 5)
        }
    } catch { preconditionFailure("emulator: the IDT does not fit: \(error)") }
    vcpu.sregs = sregs

    var regs = Registers()
    var gprs = (0..<16).map { _ -> UInt64 in
        let pick = input.byte()
        switch pick >> 6 {
        case 0, 1: return 0x9000 + UInt64(pick) * 16
        case 2: return UInt64(pick & 0x3F)
        default: return input.uint64()
        }
    }
    gprs[4] = 0xF000  // RSP
    setGPRs(&regs, gprs)
    regs.rip = codeAddress
    regs.rflags = 0x2 | UInt64(input.uint32()) & (changeableFlags | 1 << 9 | 1 << 10)
    vcpu.regs = regs

    var bytes: [UInt8] = []
    for _ in 0..<Int(input.byte() % 3) { bytes.append(prefixes[Int(input.byte()) % prefixes.count]) }
    let pick = Int(input.byte())
    if pick < templates.count * 8 {
        var template = templates[pick % templates.count]
        if template[0] == 0xC4 {
            template[1] |= input.byte() & 0xE0  // R, X, B (inverted), map 0F38 or 0F3A
            template[2] = template[2] | input.byte() & 0xFB  // W, vvvv, pp; L = 0
        }
        bytes += template
        var modrm = input.byte()
        if template.last == 0xC7 { modrm = modrm & 0xC7 | 0x08 }  // CMPXCHG8B/16B is /1
        bytes.append(modrm)
        for _ in 0..<Int(input.byte() % 9) { bytes.append(input.byte()) }
    } else {
        for _ in 0..<(1 + Int(input.byte() % 15)) { bytes.append(input.byte()) }
    }
    bytes = Array(bytes.prefix(15))
    let viaExitData = setup & 0x80 != 0
    do { try memory.write(bytes, at: codeAddress) } catch { preconditionFailure("emulator: code does not fit") }
    var exitData: [UInt64] = [viaExitData ? 1 : 0, 0, 0]
    let padded = [UInt8(bytes.count)] + bytes + [UInt8](repeating: 0x90, count: 15 - bytes.count)
    for i in 0..<16 { exitData[1 + i / 8] |= UInt64(padded[i]) << (8 * UInt64(i % 8)) }

    let emulator = InstructionEmulator(smapAvailable: control & 0x10 != 0, memory: memory)
    let ramBefore = snapshot(memory)
    let result = emulator.emulate(data: exitData, vcpu: vcpu)
    let ramAfter = snapshot(memory)
    precondition(vcpu.sregs == sregs, "emulator: special registers changed")

    guard let result else {
        precondition(vcpu.regs == regs, "emulator: declined \(bytes) but changed registers")
        precondition(vcpu.injections.isEmpty, "emulator: declined \(bytes) but injected \(vcpu.injections)")
        precondition(ramAfter == ramBefore, "emulator: declined \(bytes) but wrote RAM")
        return
    }
    precondition(result.outcome == .handled, "emulator: \(result.instruction) stopped the VM: \(result.outcome)")
    // The bytes the emulator decoded: from the exit data, or RAM (identity-mapped) at RIP.
    let mode: CodeMode =
        sregs.cr0 & 1 == 0 ? .real16 : sregs.cs.l && sregs.efer & 0x400 != 0 ? .long64 : sregs.cs.db ? .protected32 : .real16
    let seen = viaExitData ? bytes : bytes + [UInt8](repeating: 0, count: 15 - bytes.count)
    let instruction: DecodedInstruction
    do throws(DecodeError) { instruction = try X86Decoder.decode(seen, mode: mode, address: codeAddress) } catch {
        // Bytes that are no instruction: #UD as a fault, nothing else changes.
        precondition(error == .invalid, "emulator: handled \(result.instruction), which is cut short: \(bytes)")
        precondition(vcpu.injections == [.invalidOpcode], "emulator: invalid \(bytes) injected \(vcpu.injections)")
        precondition(vcpu.regs == regs, "emulator: invalid \(bytes) changed registers")
        precondition(ramAfter == ramBefore, "emulator: invalid \(bytes) wrote RAM")
        return
    }
    let after = vcpu.regs
    let softwareInterrupt: Bool
    if case .softwareInterrupt? = vcpu.injections.first { softwareInterrupt = true } else { softwareInterrupt = false }
    if vcpu.injections.isEmpty || instruction.mnemonic == "int3" || softwareInterrupt {
        precondition(
            after.rip == regs.rip &+ UInt64(instruction.length),
            "emulator: \(instruction.text) moved RIP to \(after.rip), length \(instruction.length)")
    }
    if !vcpu.injections.isEmpty {
        precondition(vcpu.injections.count == 1, "emulator: \(instruction.text) injected \(vcpu.injections)")
        if instruction.mnemonic == "int3" {
            precondition(vcpu.injections == [.exception(vector: 3, errorCode: nil)], "emulator: int3 injected \(vcpu.injections)")
            var expected = regs
            expected.rip = after.rip
            precondition(after == expected, "emulator: int3 changed registers")
        } else if softwareInterrupt {
            guard case .immediate(let vector)? = instruction.operands.first?.operand, instruction.mnemonic == "int" else {
                preconditionFailure("emulator: \(instruction.text) delivered \(vcpu.injections)")
            }
            precondition(
                vcpu.injections == [.softwareInterrupt(vector: UInt8(truncatingIfNeeded: vector))],
                "emulator: \(instruction.text) delivered \(vcpu.injections)")
            var expected = regs
            expected.rip = after.rip
            precondition(after == expected, "emulator: int n changed registers")
        } else {
            precondition(after == regs, "emulator: \(instruction.text) faulted but changed registers")
        }
        precondition(ramAfter == ramBefore, "emulator: \(instruction.text) faulted or trapped but wrote RAM")
        return
    }

    // Completed: only the destination registers and the arithmetic flags (and AC) change.
    var allowed: Set<Int> = []
    let written = instruction.mnemonic == "mulx" ? [0, 1] : [0]
    for index in written where index < instruction.operands.count {
        if case .register(let number, _) = instruction.operands[index].operand { allowed.insert(number) }
    }
    if instruction.mnemonic == "xgetbv" || instruction.mnemonic == "cmpxchg16b" { allowed.formUnion([0, 2]) }
    let newGPRs = gprsOf(after), oldGPRs = gprsOf(regs)
    for number in 0..<16 where newGPRs[number] != oldGPRs[number] {
        precondition(allowed.contains(number), "emulator: \(instruction.text) changed register \(number)")
    }
    precondition(
        (after.rflags ^ regs.rflags) & ~changeableFlags == 0,
        "emulator: \(instruction.text) changed RFLAGS \(regs.rflags) to \(after.rflags)")

    guard instruction.mnemonic == "cmpxchg16b" else {
        precondition(ramAfter == ramBefore, "emulator: \(instruction.text) wrote RAM")
        return
    }
    let changed = (0..<ramSize).filter { ramAfter[$0] != ramBefore[$0] }
    let expected = bytesOf(regs.rax) + bytesOf(regs.rdx), desired = bytesOf(regs.rbx) + bytesOf(regs.rcx)
    if after.rflags & 0x40 != 0 {
        precondition(after.rax == regs.rax && after.rdx == regs.rdx, "emulator: cmpxchg16b succeeded but loaded RDX:RAX")
        if let first = changed.first {
            let block = first & ~15
            precondition((changed.last ?? first) < block + 16, "emulator: cmpxchg16b wrote outside one 16-byte block: \(changed)")
            precondition(
                Array(ramBefore[block..<block + 16]) == expected && Array(ramAfter[block..<block + 16]) == desired,
                "emulator: cmpxchg16b exchanged a block that did not hold RDX:RAX")
        } else {
            precondition(expected == desired, "emulator: cmpxchg16b reported an exchange but wrote nothing")
        }
    } else {
        precondition(changed.isEmpty, "emulator: a failed cmpxchg16b wrote RAM")
        precondition(bytesOf(after.rax) + bytesOf(after.rdx) != expected, "emulator: a failed cmpxchg16b found RDX:RAX")
    }
}

private func snapshot(_ memory: GuestMemory) -> [UInt8] {
    do { return try memory.read(ramSize, at: 0) } catch { preconditionFailure("emulator: RAM does not read back") }
}

private func bytesOf(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }

/// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15: the encoding's register numbers.
private func gprsOf(_ r: Registers) -> [UInt64] {
    [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
}

private func setGPRs(_ r: inout Registers, _ v: [UInt64]) {
    (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])
    (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15])
}
