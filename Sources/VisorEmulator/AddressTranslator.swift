package import VisorDecoder
package import VisorKVM
package import VisorMemory

/// Translates guest-linear addresses to guest-physical ones the way the vCPU would, from
/// its control registers: no paging, 32-bit paging (with PSE 4 MiB pages), PAE (with 2 MiB
/// pages), or 4- and 5-level long mode (with 2 MiB and 1 GiB pages). Page-table entries
/// are read through `GuestMemory`, so a hostile table can only produce a failed translation.
///
/// Two walks share one implementation. `translate(_:memory:)` looks at presence only and
/// writes nothing (instruction bytes, traces). `translate(_:access:memory:)` checks an
/// access as the processor does (Intel SDM vol. 3, 4.6 and 4.13) and sets the accessed and
/// dirty flags it would set (4.8).
package struct AddressTranslator: Sendable {
    package let cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64
    /// MAXPHYADDR, 32 to 52: physical-address bits at and above it are reserved in every
    /// paging-structure entry.
    package let physicalAddressBits: Int

    package init(_ sregs: SpecialRegisters, physicalAddressBits: Int = 52) {
        cr0 = sregs.cr0
        cr3 = sregs.cr3
        cr4 = sregs.cr4
        efer = sregs.efer
        self.physicalAddressBits = min(max(physicalAddressBits, 32), 52)
    }

    static let present: UInt64 = 1
    static let writable: UInt64 = 1 << 1
    static let userBit: UInt64 = 1 << 2
    static let accessed: UInt64 = 1 << 5
    static let dirty: UInt64 = 1 << 6
    static let pageSize: UInt64 = 1 << 7
    static let executeDisable: UInt64 = 1 << 63
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    var paging: Bool { cr0 & (1 << 31) != 0 }
    var longMode: Bool { efer & (1 << 10) != 0 }
    var pae: Bool { cr4 & (1 << 5) != 0 }
    var noExecuteEnabled: Bool { efer & (1 << 11) != 0 }

    /// The guest-physical address for `linear`, or nil when a table entry is missing,
    /// not present, or outside guest RAM. Presence only: access rights and reserved bits
    /// are not checked (an entry with a reserved bit set is followed as if it were valid)
    /// and no accessed or dirty flag is written.
    package func translate(_ linear: UInt64, memory: GuestMemory) -> UInt64? {
        guard paging else { return linear & (longMode ? .max : 0xFFFF_FFFF) }
        guard case .success(let walk) = self.walk(linear, checkReserved: false, memory: memory) else { return nil }
        return walk.physical
    }

    /// What an access does with the bytes it reaches; the processor checks each differently.
    package enum AccessKind: Sendable, Equatable {
        case read, write
        /// An instruction fetch (NX and SMEP apply, SMAP does not).
        case fetch
    }

    /// Who makes an access (SDM 4.6): CPL 3 makes user-mode accesses; CPL 0-2 explicit
    /// supervisor-mode ones; accesses to system structures (GDT, IDT, TSS) are implicit
    /// supervisor-mode accesses at any CPL, which SMAP checks whatever RFLAGS.AC says.
    package enum Privilege: Sendable, Equatable {
        case user, supervisor, implicitSupervisor
    }

    /// One access to check.
    package struct Access: Sendable, Equatable {
        package var kind: AccessKind
        package var privilege: Privilege
        /// RFLAGS.AC, which lifts SMAP for explicit supervisor-mode data accesses.
        package var alignmentCheck: Bool

        package init(_ kind: AccessKind, _ privilege: Privilege, alignmentCheck: Bool = false) {
            self.kind = kind
            self.privilege = privilege
            self.alignmentCheck = alignmentCheck
        }
    }

    /// Why an access does not translate: the #PF error code or a non-canonical address (#GP).
    package enum AccessFault: Error, Equatable {
        case pageFault(errorCode: UInt32)
        case nonCanonical

        /// #PF error-code bits: P (a protection or reserved-bit fault rather than a
        /// not-present one), W/R, U/S, RSVD and I/D.
        package static let protection: UInt32 = 1 << 0
        package static let write: UInt32 = 1 << 1
        package static let user: UInt32 = 1 << 2
        package static let reservedBit: UInt32 = 1 << 3
        package static let fetch: UInt32 = 1 << 4
    }

    /// Translates `access` as the processor would check it (SDM 4.6, 4.13):
    /// - a canonical address in long mode (else `.nonCanonical`);
    /// - present at every level (else #PF with P clear); an entry that cannot be read (a
    ///   table outside RAM) counts as not present;
    /// - no reserved bit set in a present entry (else #PF with P and RSVD): bits at and
    ///   above MAXPHYADDR, XD while EFER.NXE is clear, PS in a PML5E or PML4E, the
    ///   reserved low bits of 1 GiB, 2 MiB and 4 MiB pages, and of PAE PDPTEs (which are
    ///   read from memory on every walk: the processor would have cached them when CR3
    ///   was loaded, and refused a reserved bit with #GP there);
    /// - user-mode accesses only to user-mode addresses (U/S set at every level; PAE
    ///   PDPTEs carry no rights), writes only where R/W is set at every level; a
    ///   supervisor-mode write needs that only with CR0.WP;
    /// - with EFER.NXE (PAE and long mode), no fetch where XD is set at any level;
    /// - CR4.SMEP: no supervisor-mode fetch from a user-mode address; CR4.SMAP: no
    ///   supervisor-mode data access to a user-mode address, unless it is explicit and
    ///   RFLAGS.AC is set.
    /// The #PF error code has W/R for a write, U/S for a user-mode access, and I/D for a
    /// fetch when SMEP is on or when both CR4.PAE and EFER.NXE are. Protection keys are not
    /// checked (PKE and PKS are left to the guest never combining them with emulation), and
    /// 1 GiB pages are taken to exist.
    ///
    /// A successful access sets the accessed flag in every entry it used (not in PAE PDPTEs,
    /// which have none) and, for a write, the dirty flag in the entry that maps the page,
    /// each with an atomic compare-exchange so that another vCPU's update to the same
    /// entries is not lost. A faulting access writes nothing: the SDM (4.8) sets the flags
    /// for entries used in a translation, and although a processor may set accessed flags
    /// in the levels a faulting walk went through, software cannot rely on it either way.
    package func translate(_ linear: UInt64, access: Access, memory: GuestMemory) throws(AccessFault) -> UInt64 {
        if longMode {
            let bits: UInt64 = cr4 & (1 << 12) != 0 ? 57 : 48
            let top = linear >> (bits - 1)
            guard top == 0 || top == (UInt64.max >> (bits - 1)) else { throw .nonCanonical }
        }
        guard paging else { return linear & (longMode ? .max : 0xFFFF_FFFF) }
        let userAccess = access.privilege == .user
        let smep = cr4 & (1 << 20) != 0, smap = cr4 & (1 << 21) != 0
        var code: UInt32 = (access.kind == .write ? AccessFault.write : 0) | (userAccess ? AccessFault.user : 0)
        if access.kind == .fetch, smep || (pae && noExecuteEnabled) { code |= AccessFault.fetch }
        let walk: Walk
        switch self.walk(linear, checkReserved: true, memory: memory) {
        case .success(let w): walk = w
        case .failure(.notPresent): throw .pageFault(errorCode: code)
        case .failure(.reservedBit): throw .pageFault(errorCode: code | AccessFault.protection | AccessFault.reservedBit)
        }
        let allowed: Bool
        switch (access.kind, userAccess) {
        case (.fetch, true): allowed = walk.user && !walk.executeDisabled
        case (.fetch, false): allowed = !walk.executeDisabled && !(smep && walk.user)
        case (.read, true): allowed = walk.user
        case (.write, true): allowed = walk.user && walk.writable
        case (.read, false), (.write, false):
            let smapBlocks = smap && walk.user && (access.privilege == .implicitSupervisor || !access.alignmentCheck)
            let writeBlocked = access.kind == .write && cr0 & (1 << 16) != 0 && !walk.writable
            allowed = !smapBlocks && !writeBlocked
        }
        guard allowed else { throw .pageFault(errorCode: code | AccessFault.protection) }
        for i in 0..<walk.count {
            let entry = walk[i]
            var bits = Self.accessed
            if i == walk.count - 1, access.kind == .write { bits |= Self.dirty }
            guard entry.hasFlags, entry.value & bits != bits else { continue }
            Self.setBits(bits, inEntryAt: entry.address, wide: entry.wide, memory: memory)
        }
        return walk.physical
    }

    // MARK: The walk

    /// A paging-structure entry a walk used.
    struct UsedEntry {
        var address: UInt64 = 0, value: UInt64 = 0
        /// 8 bytes (PAE and long mode) or 4 (32-bit paging).
        var wide = true
        /// Whether it has accessed and dirty flags (all but PAE PDPTEs).
        var hasFlags = true
    }

    /// A finished walk: the physical address and the rights every level granted together.
    struct Walk {
        var physical: UInt64 = 0
        var entries = (UsedEntry(), UsedEntry(), UsedEntry(), UsedEntry(), UsedEntry())
        var count = 0
        /// R/W and U/S set at every level that has them; XD set at some level (with NXE).
        var writable = true, user = true, executeDisabled = false

        subscript(_ i: Int) -> UsedEntry {
            switch i {
            case 0: entries.0
            case 1: entries.1
            case 2: entries.2
            case 3: entries.3
            default: entries.4
            }
        }

        mutating func use(_ entry: UsedEntry, rights: Bool, noExecute: Bool) {
            switch count {
            case 0: entries.0 = entry
            case 1: entries.1 = entry
            case 2: entries.2 = entry
            case 3: entries.3 = entry
            default: entries.4 = entry
            }
            count += 1
            if rights {
                writable = writable && entry.value & AddressTranslator.writable != 0
                user = user && entry.value & AddressTranslator.userBit != 0
            }
            if noExecute, entry.value & AddressTranslator.executeDisable != 0 { executeDisabled = true }
        }
    }

    enum WalkFailure: Error { case notPresent, reservedBit }

    /// Bits `low` through `high` (inclusive; none when high < low).
    static func bits(_ low: Int, _ high: Int) -> UInt64 {
        guard high >= low, low >= 0, high < 64 else { return 0 }
        let upper: UInt64 = high == 63 ? .max : (UInt64(1) << UInt64(high + 1)) &- 1
        return upper & ~((UInt64(1) << UInt64(low)) &- 1)
    }

    /// Walks the tables for `linear` with paging on. With `checkReserved` a present entry
    /// with a reserved bit set fails the walk; without it such bits are ignored.
    func walk(_ linear: UInt64, checkReserved: Bool, memory: GuestMemory) -> Result<Walk, WalkFailure> {
        var walk = Walk()
        let m = physicalAddressBits
        let noExecute = noExecuteEnabled
        if longMode {
            // Reserved in every entry: bits 51:MAXPHYADDR, and XD without NXE.
            let aboveMax = Self.bits(m, 51) | (noExecute ? 0 : Self.executeDisable)
            let levels = cr4 & (1 << 12) != 0 ? 5 : 4
            var table = cr3 & Self.addressMask
            for level in stride(from: levels, through: 1, by: -1) {
                let shift = UInt64(12 + 9 * (level - 1))
                let address = table &+ ((linear >> shift) & 0x1FF) &* 8
                guard let entry = try? memory.readUInt64(at: address), entry & Self.present != 0 else {
                    return .failure(.notPresent)
                }
                let large = (level == 2 || level == 3) && entry & Self.pageSize != 0
                var reserved = aboveMax
                if level >= 4 { reserved |= Self.pageSize }
                if large { reserved |= Self.bits(13, Int(shift) - 1) }
                if checkReserved, entry & reserved != 0 { return .failure(.reservedBit) }
                walk.use(UsedEntry(address: address, value: entry), rights: true, noExecute: noExecute)
                if level == 1 || large {
                    let pageMask = (UInt64(1) << shift) &- 1
                    walk.physical = (entry & Self.addressMask & ~pageMask) | (linear & pageMask)
                    return .success(walk)
                }
                table = entry & Self.addressMask
            }
            return .failure(.notPresent)
        }
        let linear = linear & 0xFFFF_FFFF
        if pae {
            // PDPTE: reserved bits 2:1, 8:5 and 63:MAXPHYADDR; no rights, no flags.
            let pdpteAddress = (cr3 & 0xFFFF_FFE0) &+ (linear >> 30) &* 8
            guard let pdpte = try? memory.readUInt64(at: pdpteAddress), pdpte & Self.present != 0 else {
                return .failure(.notPresent)
            }
            if checkReserved, pdpte & (Self.bits(1, 2) | Self.bits(5, 8) | Self.bits(m, 63)) != 0 {
                return .failure(.reservedBit)
            }
            walk.use(UsedEntry(address: pdpteAddress, value: pdpte, hasFlags: false), rights: false, noExecute: false)
            // PDE and PTE: reserved bits 62:MAXPHYADDR, and XD without NXE.
            let aboveMax = Self.bits(m, 62) | (noExecute ? 0 : Self.executeDisable)
            let pdeAddress = (pdpte & Self.addressMask) &+ ((linear >> 21) & 0x1FF) &* 8
            guard let pde = try? memory.readUInt64(at: pdeAddress), pde & Self.present != 0 else {
                return .failure(.notPresent)
            }
            let large = pde & Self.pageSize != 0
            if checkReserved, pde & (aboveMax | (large ? Self.bits(13, 20) : 0)) != 0 { return .failure(.reservedBit) }
            walk.use(UsedEntry(address: pdeAddress, value: pde), rights: true, noExecute: noExecute)
            if large {
                walk.physical = (pde & Self.addressMask & ~0x1F_FFFF) | (linear & 0x1F_FFFF)
                return .success(walk)
            }
            let pteAddress = (pde & Self.addressMask) &+ ((linear >> 12) & 0x1FF) &* 8
            guard let pte = try? memory.readUInt64(at: pteAddress), pte & Self.present != 0 else {
                return .failure(.notPresent)
            }
            if checkReserved, pte & aboveMax != 0 { return .failure(.reservedBit) }
            walk.use(UsedEntry(address: pteAddress, value: pte), rights: true, noExecute: noExecute)
            walk.physical = (pte & Self.addressMask) | (linear & 0xFFF)
            return .success(walk)
        }
        // 32-bit paging: no reserved bits except in a 4 MiB PDE (bit 21, and the PSE-36
        // address bits 20:13 that would name bits at or above MAXPHYADDR); no XD.
        let pdeAddress = (cr3 & 0xFFFF_F000) &+ (linear >> 22) &* 4
        guard let pde = (try? memory.readUInt32(at: pdeAddress)).map(UInt64.init), pde & Self.present != 0 else {
            return .failure(.notPresent)
        }
        if pde & Self.pageSize != 0, cr4 & (1 << 4) != 0 {
            let m32 = min(m, 40)
            if checkReserved, pde & Self.bits(m32 - 19, 21) != 0 { return .failure(.reservedBit) }
            walk.use(UsedEntry(address: pdeAddress, value: pde, wide: false), rights: true, noExecute: false)
            let high = ((pde >> 13) & 0xFF) << 32
            walk.physical = high | (pde & 0xFFC0_0000) | (linear & 0x3F_FFFF)
            return .success(walk)
        }
        walk.use(UsedEntry(address: pdeAddress, value: pde, wide: false), rights: true, noExecute: false)
        let pteAddress = (pde & 0xFFFF_F000) &+ ((linear >> 12) & 0x3FF) &* 4
        guard let pte = (try? memory.readUInt32(at: pteAddress)).map(UInt64.init), pte & Self.present != 0 else {
            return .failure(.notPresent)
        }
        walk.use(UsedEntry(address: pteAddress, value: pte, wide: false), rights: true, noExecute: false)
        walk.physical = (pte & 0xFFFF_F000) | (linear & 0xFFF)
        return .success(walk)
    }

    /// Sets `bits` in the 4- or 8-byte entry at `address` (aligned to its size) without
    /// losing a concurrent change to the rest of it: a 16-byte compare-exchange on the
    /// aligned block that holds it, retried a bounded number of times (a guest that keeps
    /// rewriting the entry from another vCPU only loses the flag update).
    static func setBits(_ bits: UInt64, inEntryAt address: UInt64, wide: Bool, memory: GuestMemory) {
        let block = address & ~15
        let inHigh = address & 8 != 0
        // A 4-byte entry sits in the low or high half of its 8-byte word.
        let mask = wide ? bits : bits << ((address & 4) &* 8)
        guard var low = try? memory.readUInt64(at: block), var high = try? memory.readUInt64(at: block &+ 8) else {
            return
        }
        for _ in 0..<64 {
            var newLow = low, newHigh = high
            if inHigh { newHigh |= mask } else { newLow |= mask }
            if newLow == low, newHigh == high { return }
            guard
                let (exchanged, found) = try? memory.compareExchange16(
                    at: block, expected: (low, high), desired: (newLow, newHigh))
            else { return }
            if exchanged { return }
            (low, high) = found
        }
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
