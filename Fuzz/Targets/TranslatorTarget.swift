// The guest address translator, checked differentially against a reference walker written
// here from the Intel SDM's tables (vol. 3, 4.3-4.6, 4.8 and 4.13): one plain function per
// paging mode, on its own copy of RAM as a byte array, clarity over speed.
import FuzzDeviceTargets
import VisorEmulator
import VisorKVM
import VisorMemory

/// Guest RAM for the translator target: 16 pages, where every table and page lives.
let translatorRAMPages = 16
let translatorRAMSize = translatorRAMPages << 12

/// What one access ended in: a physical address, a #PF error code, or #GP for a
/// non-canonical address.
enum TranslationOutcome: Equatable {
    case physical(UInt64)
    case pageFault(UInt32)
    case nonCanonical
}

/// The reference walker. Its RAM is a byte array at physical address 0; an entry that does
/// not lie wholly inside it counts as not present (as the translator documents).
struct ReferenceWalker {
    var cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64
    var maxPhysicalAddress: Int
    var ram: [UInt8]

    // The control bits the SDM names.
    var pg: Bool { bit(cr0, 31) }
    var wp: Bool { bit(cr0, 16) }
    var pse: Bool { bit(cr4, 4) }
    var pae: Bool { bit(cr4, 5) }
    var la57: Bool { bit(cr4, 12) }
    var smep: Bool { bit(cr4, 20) }
    var smap: Bool { bit(cr4, 21) }
    var lma: Bool { bit(efer, 10) }
    var nxe: Bool { bit(efer, 11) }

    /// One paging-structure entry a walk used: where it is, its size, its value, and
    /// whether it has A/D flags and controls access rights (PAE PDPTEs do neither).
    struct Used {
        var address: Int, size: Int, value: UInt64, controlsRights: Bool
    }

    /// Translates one access, updating `ram`'s A/D flags on success.
    mutating func access(
        _ linear: UInt64, kind: AddressTranslator.AccessKind, privilege: AddressTranslator.Privilege, ac: Bool
    ) -> TranslationOutcome {
        // Long mode: a non-canonical address is #GP before any walk.
        if lma {
            let width = la57 ? 57 : 48
            var signBits: [Bool] = []
            for b in (width - 1)...63 { signBits.append(bit(linear, b)) }
            if signBits.contains(true) && signBits.contains(false) { return .nonCanonical }
        }
        if !pg { return .physical(lma ? linear : linear & 0xFFFF_FFFF) }

        // The error code's fixed bits (SDM 4.7).
        var code: UInt32 = 0
        if kind == .write { code += 2 }
        if privilege == .user { code += 4 }
        if kind == .fetch && (smep || (pae && nxe)) { code += 16 }

        let result: WalkResult
        if lma {
            result = walkLongMode(linear, levels: la57 ? 5 : 4)
        } else if pae {
            result = walkPAE(linear & 0xFFFF_FFFF)
        } else {
            result = walk32Bit(linear & 0xFFFF_FFFF)
        }
        switch result {
        case .notPresent:
            return .pageFault(code)
        case .reservedBit:
            return .pageFault(code + 1 + 8)
        case .page(let physical, let used):
            let rights = used.filter(\.controlsRights)
            let userAddress = rights.allSatisfy { bit($0.value, 2) }
            let writable = rights.allSatisfy { bit($0.value, 1) }
            let executeDisabled = nxe && rights.contains { bit($0.value, 63) }
            if !permitted(kind, privilege, ac, userAddress: userAddress, writable: writable, xd: executeDisabled) {
                return .pageFault(code + 1)
            }
            // 4.8: A in every entry used, D in the one that maps the page on a write.
            for (i, entry) in used.enumerated() where entry.controlsRights {
                setFlag(5, of: entry)
                if i == used.count - 1 && kind == .write { setFlag(6, of: entry) }
            }
            return .physical(physical)
        }
    }

    /// The SDM's access-rights rules (4.6.1), case by case.
    func permitted(
        _ kind: AddressTranslator.AccessKind, _ privilege: AddressTranslator.Privilege, _ ac: Bool,
        userAddress: Bool, writable: Bool, xd: Bool
    ) -> Bool {
        if privilege == .user {
            switch kind {
            case .read: return userAddress
            case .write: return userAddress && writable
            case .fetch: return userAddress && !xd
            }
        }
        let explicit = privilege == .supervisor
        switch kind {
        case .read:
            // Any supervisor-mode address; a user-mode one unless SMAP forbids it.
            if !userAddress { return true }
            if !smap { return true }
            return explicit && ac
        case .write:
            if !userAddress { return wp ? writable : true }
            if smap && !(explicit && ac) { return false }
            return wp ? writable : true
        case .fetch:
            if userAddress && smep { return false }
            return !xd
        }
    }

    enum WalkResult {
        case notPresent
        case reservedBit
        case page(UInt64, [Used])
    }

    /// 4-level and 5-level paging (4.5), 8-byte entries: PML5E, PML4E, PDPTE (PS: 1 GiB),
    /// PDE (PS: 2 MiB), PTE.
    func walkLongMode(_ linear: UInt64, levels: Int) -> WalkResult {
        var used: [Used] = []
        var tableAddress = field(cr3, high: 51, low: 12)
        var level = levels
        while true {
            let shift = 12 + 9 * (level - 1)
            let index = Int(field(linear, high: shift + 8, low: shift) >> UInt64(shift))
            let address = tableAddress &+ UInt64(index * 8)
            guard let entry = read(address, size: 8), bit(entry, 0) else { return .notPresent }
            // Reserved in every entry: 51:MAXPHYADDR, and bit 63 when NXE is clear.
            var reserved = maxPhysicalAddress <= 51 && anyBit(entry, high: 51, low: maxPhysicalAddress)
            if !nxe && bit(entry, 63) { reserved = true }
            let isPage: Bool
            switch level {
            case 5, 4:
                if bit(entry, 7) { reserved = true }  // PS is reserved in PML5Es and PML4Es
                isPage = false
            case 3:
                isPage = bit(entry, 7)
                if isPage && anyBit(entry, high: 29, low: 13) { reserved = true }
            case 2:
                isPage = bit(entry, 7)
                if isPage && anyBit(entry, high: 20, low: 13) { reserved = true }
            default:
                isPage = true
            }
            if reserved { return .reservedBit }
            used.append(Used(address: Int(address), size: 8, value: entry, controlsRights: true))
            if isPage {
                let frame = field(entry, high: 51, low: shift)
                return .page(frame | field(linear, high: shift - 1, low: 0), used)
            }
            tableAddress = field(entry, high: 51, low: 12)
            level -= 1
        }
    }

    /// PAE paging (4.4): a PDPTE (no rights, no flags), a PDE (PS: 2 MiB), a PTE.
    func walkPAE(_ linear: UInt64) -> WalkResult {
        let pdpteAddress = field(cr3, high: 31, low: 5) + (field(linear, high: 31, low: 30) >> 30) * 8
        guard let pdpte = read(pdpteAddress, size: 8), bit(pdpte, 0) else { return .notPresent }
        // Table 4-8: 2:1, 8:5 and 63:MAXPHYADDR are reserved.
        if anyBit(pdpte, high: 2, low: 1) || anyBit(pdpte, high: 8, low: 5)
            || anyBit(pdpte, high: 63, low: maxPhysicalAddress)
        {
            return .reservedBit
        }
        var used = [Used(address: Int(pdpteAddress), size: 8, value: pdpte, controlsRights: false)]

        let pdeAddress = field(pdpte, high: 51, low: 12) + (field(linear, high: 29, low: 21) >> 21) * 8
        guard let pde = read(pdeAddress, size: 8), bit(pde, 0) else { return .notPresent }
        // Tables 4-9 to 4-11: 62:MAXPHYADDR, 63 without NXE, and 20:13 in a 2 MiB PDE.
        if anyBit(pde, high: 62, low: maxPhysicalAddress) || (!nxe && bit(pde, 63)) { return .reservedBit }
        if bit(pde, 7) && anyBit(pde, high: 20, low: 13) { return .reservedBit }
        used.append(Used(address: Int(pdeAddress), size: 8, value: pde, controlsRights: true))
        if bit(pde, 7) {
            return .page(field(pde, high: 51, low: 21) | field(linear, high: 20, low: 0), used)
        }

        let pteAddress = field(pde, high: 51, low: 12) + (field(linear, high: 20, low: 12) >> 12) * 8
        guard let pte = read(pteAddress, size: 8), bit(pte, 0) else { return .notPresent }
        if anyBit(pte, high: 62, low: maxPhysicalAddress) || (!nxe && bit(pte, 63)) { return .reservedBit }
        used.append(Used(address: Int(pteAddress), size: 8, value: pte, controlsRights: true))
        return .page(field(pte, high: 51, low: 12) | field(linear, high: 11, low: 0), used)
    }

    /// 32-bit paging (4.3), 4-byte entries: a PDE (PS with CR4.PSE: 4 MiB), a PTE. No XD.
    func walk32Bit(_ linear: UInt64) -> WalkResult {
        let pdeAddress = field(cr3, high: 31, low: 12) + (field(linear, high: 31, low: 22) >> 22) * 4
        guard let pde = read(pdeAddress, size: 4), bit(pde, 0) else { return .notPresent }
        var used = [Used(address: Int(pdeAddress), size: 4, value: pde, controlsRights: true)]
        if pse && bit(pde, 7) {
            // Table 4-4: bits (M-20):13 are physical bits (M-1):32 (M at most 40); bit 21 and
            // the bits above them are reserved.
            let m = min(maxPhysicalAddress, 40)
            if anyBit(pde, high: 21, low: m - 19) { return .reservedBit }
            let high = (field(pde, high: 20, low: 13) >> 13) << 32
            return .page(high | field(pde, high: 31, low: 22) | field(linear, high: 21, low: 0), used)
        }
        let pteAddress = field(pde, high: 31, low: 12) + (field(linear, high: 21, low: 12) >> 12) * 4
        guard let pte = read(pteAddress, size: 4), bit(pte, 0) else { return .notPresent }
        used.append(Used(address: Int(pteAddress), size: 4, value: pte, controlsRights: true))
        return .page(field(pte, high: 31, low: 12) | field(linear, high: 11, low: 0), used)
    }

    /// The little-endian entry of `size` bytes at `address`, or nil outside RAM.
    func read(_ address: UInt64, size: Int) -> UInt64? {
        guard address < UInt64(ram.count), Int(address) + size <= ram.count else { return nil }
        var value: UInt64 = 0
        for i in 0..<size { value |= UInt64(ram[Int(address) + i]) << UInt64(8 * i) }
        return value
    }

    /// Sets bit `n` (5 or 6, in the entry's first byte) of a used entry.
    mutating func setFlag(_ n: Int, of entry: Used) {
        ram[entry.address] |= UInt8(1 << n)
    }
}

// Bit helpers, written out rather than shared with the translator.
func bit(_ value: UInt64, _ n: Int) -> Bool { (value >> UInt64(n)) & 1 == 1 }

/// The bits `high` through `low` of `value`, left in place.
func field(_ value: UInt64, high: Int, low: Int) -> UInt64 {
    var result: UInt64 = 0
    if low <= high {
        for n in low...high where bit(value, n) { result |= 1 << UInt64(n) }
    }
    return result
}

func anyBit(_ value: UInt64, high: Int, low: Int) -> Bool { field(value, high: high, low: low) != 0 }

/// Input: control registers (a paging mode, CR0.WP, CR4.PSE/SMEP/SMAP/LA57, EFER.NXE,
/// sometimes raw), MAXPHYADDR, CR3, RFLAGS.AC; then table entries written into 64 KiB of
/// zeroed RAM, each pointing at a page inside it; then accesses (read, write or fetch;
/// user, supervisor or implicit supervisor) at linear addresses mostly built from the
/// indices of the entries written, so that the walks reach the tables.
/// Checks: every access ends the same in the translator and the reference (the physical
/// address, or the exact #PF error code, or #GP); the presence-only walk gives the same
/// physical address wherever the checked one succeeds; RAM afterwards is byte for byte the
/// reference's (the same accessed and dirty flags set).
func fuzzTranslator(_ data: [UInt8]) {
    var input = ByteReader(data)
    let modeByte = input.byte(), flagByte = input.byte()
    var cr0: UInt64 = 1, cr4: UInt64 = 0, efer: UInt64 = 0
    // The mode, as a guest would set it up; bit 7 of the mode byte takes raw bits instead.
    let mode = Int(modeByte & 3)
    switch mode {
    case 0: break
    case 1: cr0 |= 1 << 31
    case 2: (cr0, cr4) = (cr0 | 1 << 31, 1 << 5)
    default: (cr0, cr4, efer) = (cr0 | 1 << 31, 1 << 5, 1 << 8 | 1 << 10)
    }
    if modeByte & 0x80 != 0 {
        if modeByte & 0x04 != 0 { cr0 ^= 1 << 31 }
        if modeByte & 0x08 != 0 { cr4 ^= 1 << 5 }
        if modeByte & 0x10 != 0 { efer ^= 1 << 10 }
    }
    if flagByte & 0x01 != 0 { cr0 |= 1 << 16 }  // WP
    if flagByte & 0x02 != 0 { cr4 |= 1 << 4 }  // PSE
    if flagByte & 0x04 != 0 { cr4 |= 1 << 12 }  // LA57
    if flagByte & 0x08 != 0 { cr4 |= 1 << 20 }  // SMEP
    if flagByte & 0x10 != 0 { cr4 |= 1 << 21 }  // SMAP
    if flagByte & 0x20 != 0 { efer |= 1 << 11 }  // NXE
    let ac = flagByte & 0x40 != 0
    let maxPhysicalAddress = 36 + Int(input.byte() % 17)
    let cr3Byte = input.byte()
    var cr3 = UInt64(cr3Byte & 0xF) << 12
    if mode == 2 { cr3 |= UInt64(input.byte() & 0xE0) }  // a PAE PDPT is 32-byte aligned
    if cr3Byte & 0x80 != 0 { cr3 = input.uint64() }

    // Table entries: page, index, flags, target page, and sometimes odd high bits.
    let wide = efer & (1 << 10) != 0 || cr4 & (1 << 5) != 0
    var ram = [UInt8](repeating: 0, count: translatorRAMSize)
    var indices: [UInt64] = [0]
    for _ in 0..<Int(input.byte() % 32) {
        let page = Int(input.byte()) % translatorRAMPages
        let index = Int(input.uint16() % (wide ? 512 : 1024))
        var value = UInt64(input.byte()) | 1
        let extra = input.byte()
        if extra & 0x01 != 0 { value &= ~1 }
        value |= UInt64((extra >> 1) % UInt8(translatorRAMPages)) << 12
        if extra & 0x20 != 0 { value |= 1 << 63 }
        if extra & 0x40 != 0 { value |= 1 << UInt64(input.byte() % 64) }
        if extra & 0x80 != 0 { value |= UInt64(input.byte() & 0x3F) << 13 }  // large-page low bits
        indices.append(UInt64(index))
        let size = wide ? 8 : 4
        for i in 0..<size { ram[page * 4096 + index * size + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * i)) }
    }

    let memory: GuestMemory
    do {
        memory = try GuestMemory(size: UInt64(translatorRAMSize))
        try memory.write(ram, at: 0)
    } catch { preconditionFailure("translator: cannot set up guest RAM: \(error)") }
    var sregs = SpecialRegisters()
    (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (cr0, cr3, cr4, efer)
    let translator = AddressTranslator(sregs, physicalAddressBits: maxPhysicalAddress)
    var reference = ReferenceWalker(
        cr0: cr0, cr3: cr3, cr4: cr4, efer: efer, maxPhysicalAddress: maxPhysicalAddress, ram: ram)

    var count = 0
    while !input.isAtEnd, count < 64 {
        count += 1
        let how = input.byte()
        let kind: AddressTranslator.AccessKind = [.read, .write, .fetch][Int(how % 3)]
        let privilege: AddressTranslator.Privilege = [.user, .supervisor, .implicitSupervisor][Int((how / 3) % 3)]
        var linear: UInt64
        if how & 0x80 != 0 {
            linear = input.uint64()
        } else {
            // Indices of written entries at every level, then a page offset.
            func pick(_ choice: UInt8) -> UInt64 { indices[Int(choice) % indices.count] }
            if wide {
                linear = UInt64(input.uint16() & 0xFFF)
                for shift in [12, 21, 30, 39, 48] as [UInt64] { linear |= pick(input.byte()) << shift }
            } else {
                linear = UInt64(input.uint16() & 0xFFF) | pick(input.byte()) << 12 | pick(input.byte()) << 22
                linear &= 0xFFFF_FFFF
            }
            if how & 0x40 != 0 {  // sign-extend from bit 47 or 56, to be canonical
                let width: UInt64 = cr4 & (1 << 12) != 0 ? 57 : 48
                linear &= (1 << width) - 1
                if linear >> (width - 1) & 1 != 0 { linear |= ~((1 << width) - 1) }
            }
        }
        let got: TranslationOutcome
        do throws(AddressTranslator.AccessFault) {
            got = .physical(
                try translator.translate(
                    linear, access: AddressTranslator.Access(kind, privilege, alignmentCheck: ac), memory: memory))
        } catch {
            switch error {
            case .pageFault(let code): got = .pageFault(code)
            case .nonCanonical: got = .nonCanonical
            }
        }
        let expected = reference.access(linear, kind: kind, privilege: privilege, ac: ac)
        precondition(
            got == expected,
            "translator: \(kind) \(privilege) at 0x\(String(linear, radix: 16)) gave \(got), the reference \(expected)")
        if case .physical(let physical) = got {
            let plain = translator.translate(linear, memory: memory)
            precondition(plain == physical, "translator: the presence-only walk gave \(String(describing: plain))")
        }
    }
    let after: [UInt8]
    do { after = try memory.read(translatorRAMSize, at: 0) } catch {
        preconditionFailure("translator: cannot read guest RAM back: \(error)")
    }
    precondition(after == reference.ram, "translator: RAM (accessed and dirty flags) differs from the reference")
}
