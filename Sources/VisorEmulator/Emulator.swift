public import VisorCore
public import VisorDecoder
public import VisorKVM
public import VisorMemory
import Synchronization

/// What an instruction handler decided.
public enum EmulationResult: Sendable, Equatable {
    /// The instruction completed: registers as left in the state, RIP advanced past it.
    case completed
    /// A fault: nothing changes, RIP stays at the instruction, the event is delivered.
    case fault(Injection)
    /// A trap: RIP advances past the instruction, then the event is delivered (#BP).
    case trap(Injection)
    /// The instruction cannot be finished here: stop the VM with this reason.
    case unsupported(String)
}

/// A guest memory access the emulator could not make, turned into the fault the
/// processor would raise.
public struct EmulationFault: Error, Equatable {
    public let injection: Injection
}

/// The vCPU as an instruction handler sees it: its registers (to read and change), its
/// control registers, the decoded instruction, and guest memory through the guest's own
/// page tables.
public struct EmulationState {
    public var registers: Registers
    public let special: SpecialRegisters
    public let instruction: DecodedInstruction
    public let memory: GuestMemory
    /// Whether the guest's CPUID offers SMAP (CLAC/STAC raise #UD without it).
    public let smapAvailable: Bool
    /// XCR0 as KVM holds it, for XGETBV (nil when it could not be read).
    public let xcr0: UInt64?
    let translator: AddressTranslator

    /// CPL: 0 in real mode, 3 in virtual-8086 mode (where CS holds a real-mode segment
    /// value, not a selector), else CS's RPL, which the processor keeps equal to the CPL.
    public var cpl: Int {
        if special.cr0 & 1 == 0 { return 0 }
        if registers.rflags & (1 << 17) != 0 { return 3 }
        return Int(special.cs.selector & 3)
    }

    // MARK: Registers

    /// General-purpose register `number` (0 = RAX ... 15 = R15).
    public func gpr(_ number: Int) -> UInt64 {
        switch number {
        case 0: registers.rax
        case 1: registers.rcx
        case 2: registers.rdx
        case 3: registers.rbx
        case 4: registers.rsp
        case 5: registers.rbp
        case 6: registers.rsi
        case 7: registers.rdi
        case 8: registers.r8
        case 9: registers.r9
        case 10: registers.r10
        case 11: registers.r11
        case 12: registers.r12
        case 13: registers.r13
        case 14: registers.r14
        default: registers.r15
        }
    }

    public mutating func setGPR(_ number: Int, _ value: UInt64) {
        switch number {
        case 0: registers.rax = value
        case 1: registers.rcx = value
        case 2: registers.rdx = value
        case 3: registers.rbx = value
        case 4: registers.rsp = value
        case 5: registers.rbp = value
        case 6: registers.rsi = value
        case 7: registers.rdi = value
        case 8: registers.r8 = value
        case 9: registers.r9 = value
        case 10: registers.r10 = value
        case 11: registers.r11 = value
        case 12: registers.r12 = value
        case 13: registers.r13 = value
        case 14: registers.r14 = value
        default: registers.r15 = value
        }
    }

    // MARK: Operands

    /// The value of operand `index`, zero-extended from its size.
    public func read(_ index: Int) throws(EmulationFault) -> UInt64 {
        let (operand, bits) = instruction.operands[index]
        switch operand {
        case .register(let number, let high8):
            return high8 ? (gpr(number) >> 8) & 0xFF : gpr(number) & mask(bits)
        case .memory(let m):
            let bytes = try readMemory(linear: effectiveAddress(m), count: bits / 8)
            return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        case .immediate(let value):
            return value & mask(bits)
        case .otherRegister, .other:
            throw EmulationFault(injection: .invalidOpcode)
        }
    }

    /// Writes operand `index` as the processor would: 32-bit register writes zero the upper
    /// half, 8- and 16-bit writes keep the rest of the register.
    public mutating func write(_ index: Int, _ value: UInt64) throws(EmulationFault) {
        let (operand, bits) = instruction.operands[index]
        switch operand {
        case .register(let number, let high8):
            let old = gpr(number)
            switch (bits, high8) {
            case (8, true): setGPR(number, (old & ~0xFF00) | (value & 0xFF) << 8)
            case (8, false), (16, _): setGPR(number, (old & ~mask(bits)) | (value & mask(bits)))
            case (32, _): setGPR(number, value & 0xFFFF_FFFF)
            default: setGPR(number, value)
            }
        case .memory(let m):
            let bytes = (0..<bits / 8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
            try writeMemory(linear: effectiveAddress(m), bytes)
        case .immediate, .otherRegister, .other:
            throw EmulationFault(injection: .invalidOpcode)
        }
    }

    /// The linear address of a memory operand (segment bases apply outside 64-bit mode, and
    /// FS/GS bases always).
    public func effectiveAddress(_ m: MemoryOperand) -> UInt64 {
        var address: UInt64 = 0
        if let base = m.base {
            address = base == MemoryOperand.rip ? registers.rip &+ UInt64(instruction.length) : gpr(base)
        }
        if let index = m.index { address &+= gpr(index) &* UInt64(max(m.scale, 1)) }
        address &+= UInt64(bitPattern: m.displacement)
        if instruction.addressWidth < 64 { address &= mask(instruction.addressWidth) }
        let longMode = special.codeMode == .long64
        switch m.segment {
        case 4: address &+= special.fs.base
        case 5: address &+= special.gs.base
        case 0 where !longMode: address &+= special.es.base
        case 1 where !longMode: address &+= special.cs.base
        case 2 where !longMode: address &+= special.ss.base
        case 3 where !longMode: address &+= special.ds.base
        default: break
        }
        return longMode ? address : address & 0xFFFF_FFFF
    }

    /// The guest-physical address of `linear` for an explicit data access at the current
    /// CPL (SMAP lifted by RFLAGS.AC), or the fault the processor would raise: #PF (with
    /// CR2) for a missing, protected or reserved-bit page, #GP(0) for a non-canonical
    /// address. A successful translation sets the accessed flags, and the dirty flag for
    /// a write, in the guest's page tables.
    public func physical(_ linear: UInt64, write: Bool) throws(EmulationFault) -> UInt64 {
        let access = AddressTranslator.Access(
            write ? .write : .read, cpl == 3 ? .user : .supervisor,
            alignmentCheck: registers.rflags & InstructionEmulator.ac != 0)
        do throws(AddressTranslator.AccessFault) {
            return try translator.translate(linear, access: access, memory: memory)
        } catch {
            switch error {
            case .pageFault(let code): throw EmulationFault(injection: .pageFault(errorCode: code, address: linear))
            case .nonCanonical: throw EmulationFault(injection: .generalProtection(0))
            }
        }
    }

    /// Reads `count` bytes at a linear address, a page at a time. Anything outside RAM is
    /// a #GP(0) (there is no device behind emulated memory operands).
    public func readMemory(linear: UInt64, count: Int) throws(EmulationFault) -> [UInt8] {
        var bytes: [UInt8] = []
        var offset = 0
        while offset < count {
            let address = linear &+ UInt64(offset)
            let chunk = min(count - offset, Int(0x1000 - address & 0xFFF))
            let physical = try physical(address, write: false)
            do { bytes += try memory.read(chunk, at: physical) } catch {
                throw EmulationFault(injection: .generalProtection(0))
            }
            offset += chunk
        }
        return bytes
    }

    public func writeMemory(linear: UInt64, _ bytes: [UInt8]) throws(EmulationFault) {
        // Translate every page first, so that a fault leaves the bytes unchanged (a write
        // across two pages that faults on the second may still have set the first page's
        // accessed and dirty flags, as a processor may).
        var pieces: [(UInt64, ArraySlice<UInt8>)] = []
        var offset = 0
        while offset < bytes.count {
            let address = linear &+ UInt64(offset)
            let chunk = min(bytes.count - offset, Int(0x1000 - address & 0xFFF))
            let physical = try physical(address, write: true)
            guard memory.contains(physical, count: UInt64(chunk)) else {
                throw EmulationFault(injection: .generalProtection(0))
            }
            pieces.append((physical, bytes[offset..<offset + chunk]))
            offset += chunk
        }
        for (physical, piece) in pieces {
            do { try memory.write(piece, at: physical) } catch { throw EmulationFault(injection: .generalProtection(0)) }
        }
    }
}

@inline(__always) func mask(_ bits: Int) -> UInt64 { bits >= 64 ? .max : (UInt64(1) << UInt64(bits)) - 1 }

/// An instruction handler: finishes one instruction in `state`.
public typealias InstructionHandler = @Sendable (inout EmulationState) -> EmulationResult

/// Finishes in user space the instructions the host's KVM could not emulate
/// (`KVM_EXIT_INTERNAL_ERROR`, suberror 1). The table is keyed by mnemonic and embedding
/// programs may add their own handlers.
public final class InstructionEmulator: EmulationFailureHandler {
    private let handlers: [String: InstructionHandler]
    private let counts = Mutex<[String: UInt64]>([:])
    /// Whether the guest sees SMAP (see `EmulationState.smapAvailable`).
    public let smapAvailable: Bool
    /// The guest's RAM, where memory operands and page tables are read.
    public let memory: GuestMemory
    /// The guest's MAXPHYADDR (CPUID 0x80000008 EAX[7:0]): page-table entry bits at and
    /// above it are reserved, and a walk that finds one raises #PF with RSVD.
    public let physicalAddressBits: Int
    /// Receives a line for each emulated instruction (the machine's trace).
    public let trace: (@Sendable (String) -> Void)?

    /// Every handler SwiftVisor ships: the standard set and the bit-manipulation set.
    public static var allHandlers: [String: InstructionHandler] {
        standardHandlers.merging(bitManipulationHandlers) { first, _ in first }
    }

    public init(
        handlers: [String: InstructionHandler] = InstructionEmulator.allHandlers, smapAvailable: Bool,
        memory: GuestMemory, physicalAddressBits: Int = 52, trace: (@Sendable (String) -> Void)? = nil
    ) {
        self.handlers = handlers
        self.smapAvailable = smapAvailable
        self.memory = memory
        self.physicalAddressBits = physicalAddressBits
        self.trace = trace
    }

    /// Instructions finished so far, by mnemonic.
    public var emulatedCounts: [String: UInt64] { counts.withLock { $0 } }

    public var mnemonics: [String] { handlers.keys.sorted() }

    /// The instruction bytes KVM attached to an emulation failure, if any: `data[0]` bit 0
    /// flags them, the low byte of `data[1]` is their count, and they follow it.
    public static func instructionBytes(fromInternalErrorData data: [UInt64]) -> [UInt8]? {
        guard data.count >= 3, data[0] & 1 != 0 else { return nil }
        var bytes: [UInt8] = []
        for word in data[1...2] {
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: word >> (8 * UInt64(i)))) }
        }
        let count = Int(bytes[0])
        guard count >= 1, count <= 15 else { return nil }
        return Array(bytes[1...count])
    }

    public func finish(data: [UInt64], vcpu: some VCPUContext) -> ExitOutcome? {
        emulate(data: data, vcpu: vcpu)?.outcome
    }

    /// Tries to finish the instruction at the vCPU's RIP. Returns nil when it is not one
    /// the emulator knows (the caller then stops the VM), or the outcome and the
    /// instruction's text.
    public func emulate(data: [UInt64], vcpu: some VCPUContext) -> (outcome: ExitOutcome, instruction: String)? {
        let registers: Registers, special: SpecialRegisters
        do throws(KVMError) {
            registers = try vcpu.registers()
            special = try vcpu.specialRegisters()
        } catch { return (.fatal(.runFailed("emulation: \(error)")), "") }
        let translator = AddressTranslator(special, physicalAddressBits: physicalAddressBits)
        let rip = special.linearAddress(ofRIP: registers.rip)
        let bytes =
            Self.instructionBytes(fromInternalErrorData: data)
            ?? translator.readBytes(at: rip, count: X86Decoder.maximumLength, memory: memory)
        let instruction: DecodedInstruction
        do throws(DecodeError) { instruction = try X86Decoder.decode(bytes, mode: special.codeMode, address: rip) } catch {
            // Bytes that are no instruction in this mode raise #UD on a processor; KVM gave
            // up on them only because it interprets the guest's code. Truncated bytes (RIP
            // near the end of mapped memory) stay fatal: what follows them is unknown.
            guard error == .invalid else { return nil }
            return undefinedOpcode(bytes, at: rip, vcpu: vcpu)
        }
        guard let handler = handlers[instruction.mnemonic] else { return nil }
        let xcr0 = instruction.mnemonic == "xgetbv" ? try? vcpu.xcr0() : nil
        var state = EmulationState(
            registers: registers, special: special, instruction: instruction, memory: memory,
            smapAvailable: smapAvailable, xcr0: xcr0, translator: translator)
        let result = handler(&state)
        counts.withLock { $0[instruction.mnemonic, default: 0] += 1 }
        trace?("vcpu\(vcpu.id) emulated \(instruction.text) at rip=0x\(hex(registers.rip)) -> \(result)")
        do throws(KVMError) {
            switch result {
            case .completed:
                state.registers.rip &+= UInt64(instruction.length)
                try vcpu.setRegisters(state.registers)
            case .trap(let injection):
                state.registers.rip &+= UInt64(instruction.length)
                try vcpu.setRegisters(state.registers)
                try vcpu.inject(injection)
            case .fault(let injection):
                try vcpu.inject(injection)
            case .unsupported(let why):
                return (.fatal(.cannotEmulate("\(instruction.text): \(why)")), instruction.text)
            }
        } catch { return (.fatal(.runFailed("emulation: \(error)")), instruction.text) }
        return (.handled, instruction.text)
    }

    /// The name under which `emulatedCounts` counts bytes that decode to no instruction.
    public static let invalidInstructionName = "(invalid)"

    /// Injects #UD for bytes that decode to no instruction, RIP unchanged (a fault).
    private func undefinedOpcode(
        _ bytes: [UInt8], at rip: UInt64, vcpu: some VCPUContext
    ) -> (outcome: ExitOutcome, instruction: String) {
        let text =
            "(invalid: " + bytes.prefix(X86Decoder.maximumLength).map { hexPad(UInt64($0), 2) }.joined(separator: " ") + ")"
        counts.withLock { $0[Self.invalidInstructionName, default: 0] += 1 }
        trace?("vcpu\(vcpu.id) emulated \(text) at rip=0x\(hex(rip)) -> fault(\(Injection.invalidOpcode))")
        do throws(KVMError) { try vcpu.inject(.invalidOpcode) } catch {
            return (.fatal(.runFailed("emulation: \(error)")), text)
        }
        return (.handled, text)
    }

    // MARK: The standard handlers

    /// RFLAGS bits.
    static let cf: UInt64 = 1 << 0, pf: UInt64 = 1 << 2, af: UInt64 = 1 << 4, zf: UInt64 = 1 << 6
    static let sf: UInt64 = 1 << 7, of: UInt64 = 1 << 11, ac: UInt64 = 1 << 18
    static let arithmeticFlags = cf | pf | af | zf | sf | of

    public static let standardHandlers: [String: InstructionHandler] = [
        // INT3: #BP as a trap, RIP after the instruction.
        "int3": { _ in .trap(.exception(vector: 3, errorCode: nil)) },
        // INT n: the IDT gate checks (#GP, #NP), then vector n as a trap, RIP after the
        // instruction.
        "int": { state in softwareInterrupt(&state) },
        // CLAC/STAC: clear or set RFLAGS.AC; #UD without SMAP or outside CPL0.
        "clac": { state in
            guard state.smapAvailable, state.cpl == 0 else { return .fault(.invalidOpcode) }
            state.registers.rflags &= ~ac
            return .completed
        },
        "stac": { state in
            guard state.smapAvailable, state.cpl == 0 else { return .fault(.invalidOpcode) }
            state.registers.rflags |= ac
            return .completed
        },
        // FWAIT: #NM when CR0.MP and CR0.TS are both set; otherwise nothing is pending.
        "fwait": { state in
            state.special.cr0 & 0b1010 == 0b1010 ? .fault(.exception(vector: 7, errorCode: nil)) : .completed
        },
        // POPCNT: ZF = (source == 0); CF, OF, SF, AF, PF cleared.
        "popcnt": { state in
            bitCount(&state) { value, _ in
                UInt64(value.nonzeroBitCount)
            } flags: { source, _ in
                source == 0 ? zf : 0
            }
        },
        // LZCNT: CF = (source == 0), ZF = (result == 0); OF, SF, PF, AF cleared as AMD and Intel do.
        "lzcnt": { state in
            bitCount(&state) { value, bits in
                value == 0 ? UInt64(bits) : UInt64(value.leadingZeroBitCount - (64 - bits))
            } flags: { source, result in
                (source == 0 ? cf : 0) | (result == 0 ? zf : 0)
            }
        },
        "tzcnt": { state in
            bitCount(&state) { value, bits in
                value == 0 ? UInt64(bits) : UInt64(value.trailingZeroBitCount)
            } flags: { source, result in
                (source == 0 ? cf : 0) | (result == 0 ? zf : 0)
            }
        },
        // XGETBV: ECX = 0 reads XCR0 into EDX:EAX (upper halves of RAX and RDX cleared);
        // #UD without CR4.OSXSAVE; #GP for any other ECX (XINUSE is not offered).
        "xgetbv": { state in
            guard state.special.cr4 & (1 << 18) != 0 else { return .fault(.invalidOpcode) }
            guard state.registers.rcx & 0xFFFF_FFFF == 0, let xcr0 = state.xcr0 else {
                return .fault(.generalProtection(0))
            }
            state.registers.rax = xcr0 & 0xFFFF_FFFF
            state.registers.rdx = xcr0 >> 32
            return .completed
        },
        // CMPXCHG16B m128: atomic compare of RDX:RAX with memory; equal -> store RCX:RBX and
        // ZF=1; else load memory into RDX:RAX and ZF=0. #GP(0) unless 16-byte aligned.
        "cmpxchg16b": { state in
            guard case .memory(let m) = state.instruction.operands.first?.operand else { return .fault(.invalidOpcode) }
            let linear = state.effectiveAddress(m)
            guard linear % 16 == 0 else { return .fault(.generalProtection(0)) }
            let physical: UInt64
            do throws(EmulationFault) { physical = try state.physical(linear, write: true) } catch {
                return .fault(error.injection)
            }
            let r = state.registers
            guard
                let (exchanged, found) = try? state.memory.compareExchange16(
                    at: physical, expected: (r.rax, r.rdx), desired: (r.rbx, r.rcx))
            else { return .fault(.generalProtection(0)) }
            if exchanged {
                state.registers.rflags |= zf
            } else {
                state.registers.rflags &= ~zf
                state.registers.rax = found.low
                state.registers.rdx = found.high
            }
            return .completed
        },
    ]

    /// BMI1, BMI2, ADX and CRC32: register-to-register arithmetic whose operands come from
    /// the decoder. `operation` gets the operand values (sources by index, zero-extended)
    /// and the operand size, and returns the destination value and the new arithmetic flags
    /// with the mask of flags it defines (others stay as they were).
    public static let bitManipulationHandlers: [String: InstructionHandler] = [
        "andn": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                let r = ~v[0] & v[1] & mask(bits)
                return (r, szFlags(r, bits), sf | zf | of | cf)
            }
        },
        "bextr": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                let start = Int(v[1] & 0xFF), length = Int((v[1] >> 8) & 0xFF)
                var r: UInt64 = start >= bits ? 0 : v[0] >> UInt64(start)
                if length < bits { r &= mask(length) }
                r &= mask(bits)
                return (r, r == 0 ? zf : 0, zf | of | cf)
            }
        },
        "blsr": { state in
            alu(&state, sources: [1]) { v, bits, _ in
                let r = v[0] & (v[0] &- 1) & mask(bits)
                return (r, szFlags(r, bits) | (v[0] == 0 ? cf : 0), sf | zf | of | cf)
            }
        },
        "blsi": { state in
            alu(&state, sources: [1]) { v, bits, _ in
                let r = v[0] & (0 &- v[0]) & mask(bits)
                return (r, szFlags(r, bits) | (v[0] != 0 ? cf : 0), sf | zf | of | cf)
            }
        },
        "blsmsk": { state in
            alu(&state, sources: [1]) { v, bits, _ in
                let r = (v[0] ^ (v[0] &- 1)) & mask(bits)
                return (r, (r >> UInt64(bits - 1) & 1 != 0 ? sf : 0) | (v[0] == 0 ? cf : 0), sf | zf | of | cf)
            }
        },
        "pdep": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                var r: UInt64 = 0, k: UInt64 = 0
                for i in 0..<UInt64(bits) where v[1] >> i & 1 != 0 {
                    if v[0] >> k & 1 != 0 { r |= 1 << i }
                    k += 1
                }
                return (r, 0, 0)
            }
        },
        "pext": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                var r: UInt64 = 0, k: UInt64 = 0
                for i in 0..<UInt64(bits) where v[1] >> i & 1 != 0 {
                    if v[0] >> i & 1 != 0 { r |= 1 << k }
                    k += 1
                }
                return (r, 0, 0)
            }
        },
        "shlx": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in ((v[0] << (v[1] & UInt64(bits - 1))) & mask(bits), 0, 0) }
        },
        "shrx": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in (v[0] >> (v[1] & UInt64(bits - 1)), 0, 0) }
        },
        "sarx": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                let count = v[1] & UInt64(bits - 1)
                let signed = Int64(bitPattern: v[0] << UInt64(64 - bits)) >> Int64(64 - bits)
                return (UInt64(bitPattern: signed >> Int64(count)) & mask(bits), 0, 0)
            }
        },
        "rorx": { state in
            alu(&state, sources: [1, 2]) { v, bits, _ in
                let n = v[1] & UInt64(bits - 1)
                let r = n == 0 ? v[0] : ((v[0] >> n) | (v[0] << (UInt64(bits) - n))) & mask(bits)
                return (r, 0, 0)
            }
        },
        "adcx": { state in
            alu(&state, sources: [0, 1]) { v, bits, flags in
                let (sum, carry) = addWithCarry(v[0], v[1], flags & cf != 0, bits)
                return (sum, carry ? cf : 0, cf)
            }
        },
        "adox": { state in
            alu(&state, sources: [0, 1]) { v, bits, flags in
                let (sum, carry) = addWithCarry(v[0], v[1], flags & of != 0, bits)
                return (sum, carry ? of : 0, of)
            }
        },
        "crc32": { state in
            let sourceBits = state.instruction.operands.count > 1 ? state.instruction.operands[1].bits : 8
            return alu(&state, sources: [0, 1]) { v, _, _ in
                var crc = UInt32(truncatingIfNeeded: v[0])
                for byte in 0..<sourceBits / 8 {
                    crc ^= UInt32(truncatingIfNeeded: v[1] >> UInt64(8 * byte)) & 0xFF
                    for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
                }
                return (UInt64(crc), 0, 0)
            }
        },
        // MULX hi, lo, src: RDX (EDX) * src, unsigned; no flags. If both destinations are the
        // same register it gets the high half.
        "mulx": { state in
            guard state.instruction.operands.count == 3 else { return .fault(.invalidOpcode) }
            let bits = state.instruction.operands[0].bits
            do throws(EmulationFault) {
                let a = state.gpr(2) & mask(bits), b = try state.read(2) & mask(bits)
                let (high, low): (UInt64, UInt64)
                if bits == 64 {
                    (high, low) = a.multipliedFullWidth(by: b)
                } else {
                    let product = a * b
                    (high, low) = (product >> 32, product & 0xFFFF_FFFF)
                }
                try state.write(1, low)
                try state.write(0, high)
                return .completed
            } catch {
                return .fault(error.injection)
            }
        },
    ]

    static func szFlags(_ result: UInt64, _ bits: Int) -> UInt64 {
        (result == 0 ? zf : 0) | (result >> UInt64(bits - 1) & 1 != 0 ? sf : 0)
    }

    static func addWithCarry(_ a: UInt64, _ b: UInt64, _ carryIn: Bool, _ bits: Int) -> (UInt64, Bool) {
        if bits == 64 {
            let (s1, c1) = a.addingReportingOverflow(b)
            let (s2, c2) = s1.addingReportingOverflow(carryIn ? 1 : 0)
            return (s2, c1 || c2)
        }
        let sum = (a & mask(bits)) + (b & mask(bits)) + (carryIn ? 1 : 0)
        return (sum & mask(bits), sum >> UInt64(bits) != 0)
    }

    /// Reads the source operands, computes, writes operand 0 and the flags it defines.
    static func alu(
        _ state: inout EmulationState, sources: [Int],
        _ operation: ([UInt64], Int, UInt64) -> (UInt64, UInt64, UInt64)
    ) -> EmulationResult {
        guard let last = sources.max(), state.instruction.operands.count > last else { return .fault(.invalidOpcode) }
        let bits = state.instruction.operands[0].bits
        guard bits == 32 || bits == 64 else { return .fault(.invalidOpcode) }
        do throws(EmulationFault) {
            let values = try sources.map { (i) throws(EmulationFault) -> UInt64 in try state.read(i) }
            let (result, flags, defined) = operation(values, bits, state.registers.rflags)
            try state.write(0, result)
            state.registers.rflags = (state.registers.rflags & ~defined) | (flags & defined)
            return .completed
        } catch {
            return .fault(error.injection)
        }
    }

    /// The shared shape of POPCNT, LZCNT and TZCNT: destination register, register or
    /// memory source of 16, 32 or 64 bits.
    static func bitCount(
        _ state: inout EmulationState, _ compute: (UInt64, Int) -> UInt64,
        flags: (UInt64, UInt64) -> UInt64
    ) -> EmulationResult {
        guard state.instruction.operands.count == 2 else { return .fault(.invalidOpcode) }
        let bits = state.instruction.operands[1].bits
        do throws(EmulationFault) {
            let source = try state.read(1) & mask(bits)
            let result = compute(source, bits)
            try state.write(0, result)
            state.registers.rflags = (state.registers.rflags & ~arithmeticFlags) | flags(source, result)
            return .completed
        } catch {
            return .fault(error.injection)
        }
    }
}
