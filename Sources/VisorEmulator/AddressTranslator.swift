package import VisorDecoder
package import VisorKVM
package import VisorMemory

/// Translates guest-linear addresses to guest-physical ones the way the vCPU would, from
/// its control registers: no paging, 32-bit paging, PAE, or 4- and 5-level long mode.
/// Page-table entries are read through `GuestMemory`, so a hostile table can only produce
/// a failed translation.
package struct AddressTranslator: Sendable {
    package let cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64

    package init(_ sregs: SpecialRegisters) {
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
    package func translate(_ linear: UInt64, memory: GuestMemory) -> UInt64? {
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
                pde & Self.present != 0
            else { return nil }
            if pde & Self.pageSize != 0 { return (pde & Self.addressMask & ~0x1F_FFFF) | (linear & 0x1F_FFFF) }
            guard let pte = try? memory.readUInt64(at: (pde & Self.addressMask) + ((linear >> 12) & 0x1FF) * 8),
                pte & Self.present != 0
            else { return nil }
            return (pte & Self.addressMask) | (linear & 0xFFF)
        }
        let linear = linear & 0xFFFF_FFFF  // 32-bit paging
        guard let pde = try? memory.readUInt32(at: (cr3 & 0xFFFF_F000) + (linear >> 22) * 4),
            pde & 1 != 0
        else { return nil }
        if pde & 0x80 != 0, cr4 & (1 << 4) != 0 {
            return UInt64(pde & 0xFFC0_0000) | (linear & 0x3F_FFFF)
        }
        guard let pte = try? memory.readUInt32(at: UInt64(pde & 0xFFFF_F000) + ((linear >> 12) & 0x3FF) * 4),
            pte & 1 != 0
        else { return nil }
        return UInt64(pte & 0xFFFF_F000) | (linear & 0xFFF)
    }

    /// Why an access does not translate: the #PF error code (P, W/R, U/S bits) or a
    /// non-canonical address (#GP).
    package enum AccessFault: Error, Equatable {
        case pageFault(errorCode: UInt32)
        case nonCanonical
    }

    /// Translates a data access as the processor would check it: present at every level,
    /// writable at every level for a write (for CPL0 only when CR0.WP is set), user-accessible
    /// at every level for CPL3, and a canonical address in 64-bit mode. (SMEP, SMAP and
    /// protection keys are not checked.)
    package func translate(_ linear: UInt64, write: Bool, user: Bool, memory: GuestMemory) throws(AccessFault) -> UInt64 {
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
    package func readBytes(at linear: UInt64, count: Int, memory: GuestMemory) -> [UInt8] {
        var bytes: [UInt8] = []
        for i in 0..<count {
            guard let physical = translate(linear &+ UInt64(i), memory: memory),
                let byte = try? memory.readUInt8(at: physical)
            else { break }
            bytes.append(byte)
        }
        return bytes
    }
}

extension SpecialRegisters {
    /// The decoding mode of the code CS selects, from CR0.PE, EFER.LMA and CS.L/D.
    package var codeMode: CodeMode {
        if cr0 & 1 == 0 { return .real16 }
        if efer & (1 << 10) != 0, cs.l { return .long64 }
        return cs.db ? .protected32 : .real16
    }

    /// The linear address of `rip` in CS: RIP itself in 64-bit mode, CS.base + EIP otherwise.
    package func linearAddress(ofRIP rip: UInt64) -> UInt64 {
        codeMode == .long64 ? rip : cs.base &+ (rip & 0xFFFF_FFFF)
    }
}
