package import VisorDecoder
package import VisorKVM
package import VisorMemory

/// Everything a diagnostic shows of a vCPU: MiniVisor's DumpGuestState, as a value.
package struct GuestStateSnapshot: Sendable {
    package var vcpu: UInt32
    package var registers: Registers
    package var special: SpecialRegisters
    package var events: VCPUEvents?
    package var debugRegisters: (db: [UInt64], dr6: UInt64, dr7: UInt64)?
    /// The linear address of the next instruction (CS.base + RIP).
    package var instructionAddress: UInt64
    /// The bytes at that address (empty when it does not translate to RAM).
    package var instructionBytes: [UInt8]

    /// Reads the whole state of `vcpu`. Parts that fail to read are left out, so a dump is
    /// produced even for a vCPU in a bad state.
    package init(vcpu: VCPUHandle, memory: GuestMemory) {
        self.vcpu = vcpu.id
        registers = (try? vcpu.registers()) ?? Registers()
        special = (try? vcpu.specialRegisters()) ?? SpecialRegisters()
        events = try? vcpu.events()
        debugRegisters = try? vcpu.debugRegisters()
        instructionAddress = special.linearAddress(ofRIP: registers.rip)
        instructionBytes = AddressTranslator(special).readBytes(at: instructionAddress, count: 48, memory: memory)
    }

    package init(
        vcpu: UInt32, registers: Registers, special: SpecialRegisters,
        instructionAddress: UInt64, instructionBytes: [UInt8]
    ) {
        self.vcpu = vcpu
        self.registers = registers
        self.special = special
        self.instructionAddress = instructionAddress
        self.instructionBytes = instructionBytes
    }

    /// The decoding mode of the code at RIP.
    package var codeMode: CodeMode { special.codeMode }

    /// The processor mode, from CR0.PE, EFER.LMA and CS.L/D.
    package var mode: String {
        if special.cr0 & 1 == 0 { return "real mode" }
        if special.efer & (1 << 10) != 0 { return special.cs.l ? "64-bit long mode" : "compatibility mode" }
        return special.cs.db ? "32-bit protected mode" : "16-bit protected mode"
    }

    /// One readable block: general registers, RIP and RFLAGS, segments, descriptor tables,
    /// control and debug registers, EFER, pending events and the instruction bytes at RIP.
    package func render() -> String {
        let r = registers, s = special
        var out: [String] = []
        out.append("vCPU \(vcpu) state (\(mode), CPL \(s.cs.selector & 3)):")
        out.append("  RAX=\(h16(r.rax)) RBX=\(h16(r.rbx)) RCX=\(h16(r.rcx)) RDX=\(h16(r.rdx))")
        out.append("  RSI=\(h16(r.rsi)) RDI=\(h16(r.rdi)) RBP=\(h16(r.rbp)) RSP=\(h16(r.rsp))")
        out.append("  R8 =\(h16(r.r8)) R9 =\(h16(r.r9)) R10=\(h16(r.r10)) R11=\(h16(r.r11))")
        out.append("  R12=\(h16(r.r12)) R13=\(h16(r.r13)) R14=\(h16(r.r14)) R15=\(h16(r.r15))")
        out.append("  RIP=\(h16(r.rip)) RFLAGS=\(h16(r.rflags)) [\(flagNames(r.rflags))]")
        for (name, seg) in [
            ("CS", s.cs), ("SS", s.ss), ("DS", s.ds), ("ES", s.es), ("FS", s.fs),
            ("GS", s.gs), ("TR", s.tr), ("LDT", s.ldt),
        ] {
            out.append(
                "  \(pad(name, 3))=\(hexPad(UInt64(seg.selector), 4)) base=\(h16(seg.base)) limit=\(hexPad(UInt64(seg.limit), 8)) type=\(seg.type) dpl=\(seg.dpl) \(seg.present ? "P" : "-")\(seg.s ? "S" : "-")\(seg.l ? "L" : "-")\(seg.db ? "D" : "-")\(seg.g ? "G" : "-")\(seg.unusable ? " unusable" : "")"
            )
        }
        out.append(
            "  GDT base=\(h16(s.gdt.base)) limit=\(hexPad(UInt64(s.gdt.limit), 4))  IDT base=\(h16(s.idt.base)) limit=\(hexPad(UInt64(s.idt.limit), 4))"
        )
        out.append("  CR0=\(h16(s.cr0)) CR2=\(h16(s.cr2)) CR3=\(h16(s.cr3)) CR4=\(h16(s.cr4)) CR8=\(h16(s.cr8))")
        out.append("  EFER=\(h16(s.efer)) APIC_BASE=\(h16(s.apicBase))")
        if let d = debugRegisters {
            out.append(
                "  DR0=\(h16(d.db[0])) DR1=\(h16(d.db[1])) DR2=\(h16(d.db[2])) DR3=\(h16(d.db[3])) DR6=\(h16(d.dr6)) DR7=\(h16(d.dr7))"
            )
        }
        if let e = events {
            var parts: [String] = []
            if e.exception.injected || e.exception.pending {
                parts.append(
                    "exception \(e.exception.vector)\(e.exception.hasErrorCode ? " error 0x\(hex(e.exception.errorCode))" : "")\(e.exception.pending ? " pending" : " injected")"
                )
            }
            if e.interrupt.injected { parts.append("interrupt \(e.interrupt.vector) injected") }
            if e.nmi.pending || e.nmi.injected { parts.append("NMI \(e.nmi.pending ? "pending" : "injected")") }
            if e.nmi.masked { parts.append("NMIs masked") }
            out.append("  events: \(parts.isEmpty ? "none pending" : parts.joined(separator: ", "))")
        }
        let bytes =
            instructionBytes.isEmpty
            ? "(not in guest RAM)"
            : instructionBytes.prefix(16).map { hexPad(UInt64($0), 2) }.joined(separator: " ")
        out.append("  code at \(h16(instructionAddress)): \(bytes)")
        for (i, line) in X86Decoder.disassemble(instructionBytes, mode: codeMode, address: instructionAddress, count: 4)
            .enumerated()
        {
            out.append((i == 0 ? "  => " : "     ") + line)
        }
        return out.joined(separator: "\n")
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
    let names: [(Int, String)] = [
        (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
        (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
        (18, "AC"), (21, "ID"),
    ]
    var parts = names.filter { rflags & (1 << UInt64($0.0)) != 0 }.map(\.1)
    parts.append("IOPL=\((rflags >> 12) & 3)")
    return parts.joined(separator: " ")
}
