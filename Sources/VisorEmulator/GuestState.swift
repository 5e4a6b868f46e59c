public import VisorDecoder
public import VisorKVM
public import VisorMemory

/// Translates guest-linear addresses to guest-physical ones the way the vCPU would, from
/// its control registers: no paging, 32-bit paging, PAE, or 4- and 5-level long mode.
/// Page-table entries are read through `GuestMemory`, so a hostile table can only produce
/// a failed translation.
public struct AddressTranslator: Sendable {
    public let cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64

    public init(_ sregs: SpecialRegisters) {
        cr0 = sregs.cr0
        cr3 = sregs.cr3
        cr4 = sregs.cr4
        efer = sregs.efer
    }

    static let present: UInt64 = 1
    static let pageSize: UInt64 = 1 << 7
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    /// The guest-physical address for `linear`, or nil when a table entry is missing,
    /// not present, or outside guest RAM.
    public func translate(_ linear: UInt64, memory: GuestMemory) -> UInt64? {
        guard cr0 & (1 << 31) != 0 else { return linear & (efer & (1 << 10) != 0 ? .max : 0xFFFF_FFFF) }
        if efer & (1 << 10) != 0 {  // EFER.LMA: 4- or 5-level paging
            let levels = cr4 & (1 << 12) != 0 ? 5 : 4
            var table = cr3 & Self.addressMask
            for level in stride(from: levels, through: 1, by: -1) {
                let shift = UInt64(12 + 9 * (level - 1))
                let index = (linear >> shift) & 0x1FF
                guard let entry = try? memory.readUInt64(at: table + index * 8), entry & Self.present != 0 else {
                    return nil
                }
                if level == 1 || ((level == 2 || level == 3) && entry & Self.pageSize != 0) {
                    let pageMask = (UInt64(1) << shift) - 1
                    return (entry & Self.addressMask & ~pageMask) | (linear & pageMask)
                }
                table = entry & Self.addressMask
            }
            return nil
        }
        if cr4 & (1 << 5) != 0 {  // PAE, 3 levels
            let linear = linear & 0xFFFF_FFFF
            guard let pdpte = try? memory.readUInt64(at: (cr3 & 0xFFFF_FFE0) + (linear >> 30) * 8),
                  pdpte & Self.present != 0,
                  let pde = try? memory.readUInt64(at: (pdpte & Self.addressMask) + ((linear >> 21) & 0x1FF) * 8),
                  pde & Self.present != 0 else { return nil }
            if pde & Self.pageSize != 0 { return (pde & Self.addressMask & ~0x1F_FFFF) | (linear & 0x1F_FFFF) }
            guard let pte = try? memory.readUInt64(at: (pde & Self.addressMask) + ((linear >> 12) & 0x1FF) * 8),
                  pte & Self.present != 0 else { return nil }
            return (pte & Self.addressMask) | (linear & 0xFFF)
        }
        let linear = linear & 0xFFFF_FFFF  // 32-bit paging
        guard let pde = try? memory.readUInt32(at: (cr3 & 0xFFFF_F000) + (linear >> 22) * 4),
              pde & 1 != 0 else { return nil }
        if pde & 0x80 != 0, cr4 & (1 << 4) != 0 {
            return UInt64(pde & 0xFFC0_0000) | (linear & 0x3F_FFFF)
        }
        guard let pte = try? memory.readUInt32(at: UInt64(pde & 0xFFFF_F000) + ((linear >> 12) & 0x3FF) * 4),
              pte & 1 != 0 else { return nil }
        return UInt64(pte & 0xFFFF_F000) | (linear & 0xFFF)
    }

    /// Why an access does not translate: the #PF error code (P, W/R, U/S bits) or a
    /// non-canonical address (#GP).
    public enum AccessFault: Error, Equatable {
        case pageFault(errorCode: UInt32)
        case nonCanonical
    }

    /// Translates a data access as the processor would check it: present at every level,
    /// writable at every level for a write (for CPL0 only when CR0.WP is set), user-accessible
    /// at every level for CPL3, and a canonical address in 64-bit mode. (SMEP, SMAP and
    /// protection keys are not checked.)
    public func translate(_ linear: UInt64, write: Bool, user: Bool, memory: GuestMemory) throws(AccessFault) -> UInt64 {
        let longMode = efer & (1 << 10) != 0
        if longMode {
            let bits: UInt64 = cr4 & (1 << 12) != 0 ? 57 : 48
            let top = linear >> (bits - 1)
            guard top == 0 || top == (UInt64.max >> (bits - 1)) else { throw .nonCanonical }
        }
        let code = (write ? UInt32(2) : 0) | (user ? 4 : 0)
        guard cr0 & (1 << 31) != 0 else { return linear & (longMode ? .max : 0xFFFF_FFFF) }
        guard longMode else {
            // 32-bit and PAE paging: presence only (guests using them cannot run on our hosts).
            guard let physical = translate(linear, memory: memory) else { throw .pageFault(errorCode: code) }
            return physical
        }
        let levels = cr4 & (1 << 12) != 0 ? 5 : 4
        var table = cr3 & Self.addressMask
        var writable = true, userOK = true
        for level in stride(from: levels, through: 1, by: -1) {
            let shift = UInt64(12 + 9 * (level - 1))
            let index = (linear >> shift) & 0x1FF
            guard let entry = try? memory.readUInt64(at: table + index * 8), entry & Self.present != 0 else {
                throw .pageFault(errorCode: code)
            }
            writable = writable && entry & 0x2 != 0
            userOK = userOK && entry & 0x4 != 0
            if level == 1 || ((level == 2 || level == 3) && entry & Self.pageSize != 0) {
                if user, !userOK { throw .pageFault(errorCode: code | 1) }
                if write, !writable, user || cr0 & (1 << 16) != 0 { throw .pageFault(errorCode: code | 1) }
                let pageMask = (UInt64(1) << shift) - 1
                return (entry & Self.addressMask & ~pageMask) | (linear & pageMask)
            }
            table = entry & Self.addressMask
        }
        throw .pageFault(errorCode: code)
    }

    /// Up to `count` bytes at `linear`, stopping at the first byte that does not translate.
    public func readBytes(at linear: UInt64, count: Int, memory: GuestMemory) -> [UInt8] {
        var bytes: [UInt8] = []
        for i in 0..<count {
            guard let physical = translate(linear &+ UInt64(i), memory: memory),
                  let byte = try? memory.readUInt8(at: physical) else { break }
            bytes.append(byte)
        }
        return bytes
    }
}

/// Everything a diagnostic shows of a vCPU: MiniVisor's DumpGuestState, as a value.
public struct GuestStateSnapshot: Sendable {
    public var vcpu: UInt32
    public var registers: Registers
    public var special: SpecialRegisters
    public var events: VCPUEvents?
    public var debugRegisters: (db: [UInt64], dr6: UInt64, dr7: UInt64)?
    /// The linear address of the next instruction (CS.base + RIP).
    public var instructionAddress: UInt64
    /// The bytes at that address (empty when it does not translate to RAM).
    public var instructionBytes: [UInt8]

    /// Reads the whole state of `vcpu`. Parts that fail to read are left out, so a dump is
    /// produced even for a vCPU in a bad state.
    public init(vcpu: VCPUHandle, memory: GuestMemory) {
        self.vcpu = vcpu.id
        registers = (try? vcpu.registers()) ?? Registers()
        special = (try? vcpu.specialRegisters()) ?? SpecialRegisters()
        events = try? vcpu.events()
        debugRegisters = try? vcpu.debugRegisters()
        instructionAddress = special.linearAddress(ofRIP: registers.rip)
        instructionBytes = AddressTranslator(special).readBytes(at: instructionAddress, count: 48, memory: memory)
    }

    public init(vcpu: UInt32, registers: Registers, special: SpecialRegisters,
                instructionAddress: UInt64, instructionBytes: [UInt8]) {
        self.vcpu = vcpu
        self.registers = registers
        self.special = special
        self.instructionAddress = instructionAddress
        self.instructionBytes = instructionBytes
    }

    /// The decoding mode of the code at RIP.
    public var codeMode: CodeMode { special.codeMode }

    /// The processor mode, from CR0.PE, EFER.LMA and CS.L/D.
    public var mode: String {
        if special.cr0 & 1 == 0 { return "real mode" }
        if special.efer & (1 << 10) != 0 { return special.cs.l ? "64-bit long mode" : "compatibility mode" }
        return special.cs.db ? "32-bit protected mode" : "16-bit protected mode"
    }

    /// One readable block: general registers, RIP and RFLAGS, segments, descriptor tables,
    /// control and debug registers, EFER, pending events and the instruction bytes at RIP.
    public func render() -> String {
        let r = registers, s = special
        var out: [String] = []
        out.append("vCPU \(vcpu) state (\(mode), CPL \(s.cs.selector & 3)):")
        out.append("  RAX=\(h16(r.rax)) RBX=\(h16(r.rbx)) RCX=\(h16(r.rcx)) RDX=\(h16(r.rdx))")
        out.append("  RSI=\(h16(r.rsi)) RDI=\(h16(r.rdi)) RBP=\(h16(r.rbp)) RSP=\(h16(r.rsp))")
        out.append("  R8 =\(h16(r.r8)) R9 =\(h16(r.r9)) R10=\(h16(r.r10)) R11=\(h16(r.r11))")
        out.append("  R12=\(h16(r.r12)) R13=\(h16(r.r13)) R14=\(h16(r.r14)) R15=\(h16(r.r15))")
        out.append("  RIP=\(h16(r.rip)) RFLAGS=\(h16(r.rflags)) [\(flagNames(r.rflags))]")
        for (name, seg) in [("CS", s.cs), ("SS", s.ss), ("DS", s.ds), ("ES", s.es), ("FS", s.fs),
                            ("GS", s.gs), ("TR", s.tr), ("LDT", s.ldt)] {
            out.append("  \(pad(name, 3))=\(hexPad(UInt64(seg.selector), 4)) base=\(h16(seg.base)) limit=\(hexPad(UInt64(seg.limit), 8)) type=\(seg.type) dpl=\(seg.dpl) \(seg.present ? "P" : "-")\(seg.s ? "S" : "-")\(seg.l ? "L" : "-")\(seg.db ? "D" : "-")\(seg.g ? "G" : "-")\(seg.unusable ? " unusable" : "")")
        }
        out.append("  GDT base=\(h16(s.gdt.base)) limit=\(hexPad(UInt64(s.gdt.limit), 4))  IDT base=\(h16(s.idt.base)) limit=\(hexPad(UInt64(s.idt.limit), 4))")
        out.append("  CR0=\(h16(s.cr0)) CR2=\(h16(s.cr2)) CR3=\(h16(s.cr3)) CR4=\(h16(s.cr4)) CR8=\(h16(s.cr8))")
        out.append("  EFER=\(h16(s.efer)) APIC_BASE=\(h16(s.apicBase))")
        if let d = debugRegisters {
            out.append("  DR0=\(h16(d.db[0])) DR1=\(h16(d.db[1])) DR2=\(h16(d.db[2])) DR3=\(h16(d.db[3])) DR6=\(h16(d.dr6)) DR7=\(h16(d.dr7))")
        }
        if let e = events {
            var parts: [String] = []
            if e.exception.injected || e.exception.pending {
                parts.append("exception \(e.exception.vector)\(e.exception.hasErrorCode ? " error 0x\(hex(e.exception.errorCode))" : "")\(e.exception.pending ? " pending" : " injected")")
            }
            if e.interrupt.injected { parts.append("interrupt \(e.interrupt.vector) injected") }
            if e.nmi.pending || e.nmi.injected { parts.append("NMI \(e.nmi.pending ? "pending" : "injected")") }
            if e.nmi.masked { parts.append("NMIs masked") }
            out.append("  events: \(parts.isEmpty ? "none pending" : parts.joined(separator: ", "))")
        }
        let bytes = instructionBytes.isEmpty
            ? "(not in guest RAM)"
            : instructionBytes.prefix(16).map { hexPad(UInt64($0), 2) }.joined(separator: " ")
        out.append("  code at \(h16(instructionAddress)): \(bytes)")
        for (i, line) in X86Decoder.disassemble(instructionBytes, mode: codeMode, address: instructionAddress, count: 4).enumerated() {
            out.append((i == 0 ? "  => " : "     ") + line)
        }
        return out.joined(separator: "\n")
    }
}

extension SpecialRegisters {
    /// The decoding mode of the code CS selects, from CR0.PE, EFER.LMA and CS.L/D.
    public var codeMode: CodeMode {
        if cr0 & 1 == 0 { return .real16 }
        if efer & (1 << 10) != 0, cs.l { return .long64 }
        return cs.db ? .protected32 : .real16
    }

    /// The linear address of `rip` in CS: RIP itself in 64-bit mode, CS.base + EIP otherwise.
    public func linearAddress(ofRIP rip: UInt64) -> UInt64 {
        codeMode == .long64 ? rip : cs.base &+ (rip & 0xFFFF_FFFF)
    }
}

func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }

func h16(_ v: UInt64) -> String { hexPad(v, 16) }

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

func hexPad(_ v: UInt64, _ digits: Int) -> String {
    let s = String(v, radix: 16)
    return s.count >= digits ? s : String(repeating: "0", count: digits - s.count) + s
}

func flagNames(_ rflags: UInt64) -> String {
    let names: [(Int, String)] = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
                                  (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
                                  (18, "AC"), (21, "ID")]
    var parts = names.filter { rflags & (1 << UInt64($0.0)) != 0 }.map(\.1)
    parts.append("IOPL=\((rflags >> 12) & 3)")
    return parts.joined(separator: " ")
}
