public import VisorKVM

// INT n, which the host's KVM cannot finish outside real mode: its emulator delivers a
// software interrupt only through the real-mode IVT. SwiftVisor makes the checks the
// processor makes before it delivers one through a protected-mode or long-mode IDT, then
// lets KVM deliver the vector as an event, which follows the gate (stack switch, frame,
// RFLAGS.IF for an interrupt gate) as for any injected interrupt.

extension EmulationState {
    /// The fault that `int vector` raises before its delivery, or nil when the gate lets it
    /// through (Intel SDM vol. 2A, INT n; vol. 3A, 6.12.1.1 and 6.14.1):
    /// - real mode: #GP(0) when the IVT entry (4 bytes) lies past the IDTR limit;
    /// - virtual-8086 mode with IOPL below 3: #GP(0);
    /// - otherwise, with error code `vector << 3 | 2` (IDT, not external): #GP when the gate
    ///   (8 bytes, 16 in IA-32e mode) lies past the IDTR limit, when it is no interrupt,
    ///   trap or task gate (in IA-32e mode no interrupt or trap gate), or when its DPL is
    ///   below the CPL; #NP when it is not present.
    ///
    /// The IDT is read as the processor reads it, with implicit supervisor-mode accesses
    /// through the guest's page tables; one that faults raises that fault.
    public func softwareInterruptFault(vector: UInt8) -> Injection? {
        let idt = special.idt
        if special.cr0 & 1 == 0 {
            return UInt64(vector) * 4 + 3 > UInt64(idt.limit) ? .generalProtection(0) : nil
        }
        if registers.rflags & (1 << 17) != 0, (registers.rflags >> 12) & 3 < 3 { return .generalProtection(0) }
        let errorCode = UInt32(vector) << 3 | 2
        let ia32e = special.efer & (1 << 10) != 0
        let size: UInt64 = ia32e ? 16 : 8
        guard UInt64(vector) * size + size - 1 <= UInt64(idt.limit) else { return .generalProtection(errorCode) }
        let base = ia32e ? idt.base : idt.base & 0xFFFF_FFFF
        let access = AddressTranslator.Access(.read, .implicitSupervisor)
        let address = base &+ UInt64(vector) * size &+ 5
        let access5: UInt8
        do throws(AddressTranslator.AccessFault) {
            let physical = try translator.translate(address, access: access, memory: memory)
            guard let byte = try? memory.readUInt8(at: physical) else { return .generalProtection(0) }
            access5 = byte
        } catch {
            switch error {
            case .pageFault(let code): return .pageFault(errorCode: code, address: address)
            case .nonCanonical: return .generalProtection(0)
            }
        }
        // Byte 5 of a gate: P, DPL (2 bits), S (0 for a gate), type (4 bits).
        let type = access5 & 0x1F
        let gates: [UInt8] = ia32e ? [0x0E, 0x0F] : [0x05, 0x06, 0x07, 0x0E, 0x0F]
        guard gates.contains(type) else { return .generalProtection(errorCode) }
        guard Int(access5 >> 5) & 3 >= cpl else { return .generalProtection(errorCode) }
        guard access5 & 0x80 != 0 else { return .exception(vector: 11, errorCode: errorCode) }
        return nil
    }
}

extension InstructionEmulator {
    /// INT n: the gate checks of `softwareInterruptFault(vector:)`, then the vector as a
    /// trap, with RIP after the instruction (the return address the handler sees).
    static func softwareInterrupt(_ state: inout EmulationState) -> EmulationResult {
        guard case .immediate(let value)? = state.instruction.operands.first?.operand else {
            return .fault(.invalidOpcode)
        }
        let vector = UInt8(truncatingIfNeeded: value)
        if let fault = state.softwareInterruptFault(vector: vector) { return .fault(fault) }
        return .trap(.softwareInterrupt(vector: vector))
    }
}
