package import VisorMemory

/// The processor state a guest starts in, decided by a loader and applied by the machine.
public struct EntryState: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// 16-bit real mode with CS = DS = ES = FS = GS = SS = `segment`.
        case real(segment: UInt16)
        /// 64-bit long mode at CPL0 with the VMM's GDT and page tables; CS and the data
        /// segments use the given selectors (flat 64-bit code, flat data).
        case long64(
            pageTableRoot: UInt64, gdtBase: UInt64, gdtLimit: UInt16,
            codeSelector: UInt16 = 0x08, dataSelector: UInt16 = 0x10)
        /// 32-bit protected mode, paging off, flat 4 GiB segments from the VMM's GDT, and a
        /// 32-bit TSS at base 0 with limit 0x67 in TR (the PVH entry state).
        case protected32(gdtBase: UInt64, gdtLimit: UInt16, codeSelector: UInt16, dataSelector: UInt16)
    }
    public var mode: Mode
    public var rip: UInt64
    public var rsp: UInt64
    /// RDI: the boot-info block for ELF guests, 0 otherwise.
    public var rdi: UInt64
    /// RSI: the zero page for the Linux 64-bit boot protocol.
    public var rsi: UInt64 = 0
    /// RBX: the start-info block for PVH, the multiboot information for multiboot.
    public var rbx: UInt64 = 0
    /// RAX: the multiboot boot magic (0x2BADB002) for multiboot, 0 otherwise.
    public var rax: UInt64 = 0
    public var rflags: UInt64 = 0x2

    public init(mode: Mode, rip: UInt64, rsp: UInt64, rdi: UInt64 = 0, rsi: UInt64 = 0, rbx: UInt64 = 0) {
        self.mode = mode
        self.rip = rip
        self.rsp = rsp
        self.rdi = rdi
        self.rsi = rsi
        self.rbx = rbx
    }
}

/// Where the VMM puts things in guest memory for 64-bit ELF guests. This is the guest
/// entry contract; the README documents it and test guests rely on it.
package enum BootLayout {
    /// GDT: null, 0x08 64-bit code, 0x10 data.
    package static let gdtAddress: UInt64 = 0x1000
    /// The boot-info block handed over in RDI.
    package static let bootInfoAddress: UInt64 = 0x2000
    /// The NUL-terminated command line.
    package static let commandLineAddress: UInt64 = 0x2100
    /// At most this many bytes of command line, excluding the NUL.
    package static let commandLineLimit = Int(0x3000 - 0x2100 - 1)
    /// PML4, then one PDPT, then page directories, identity-mapping with 2 MiB pages.
    package static let pml4Address: UInt64 = 0x8000
    package static let pdptAddress: UInt64 = 0x9000
    package static let firstPageDirectory: UInt64 = 0x20000
    /// Page directories may run up to here; each maps 1 GiB.
    package static let pageDirectoryLimit: UInt64 = 0x80000
    /// Initial RSP; the stack grows down from here.
    package static let stackTop: UInt64 = 0x100000
    /// Free for the guest inside the reserved area, e.g. for an AP start-up trampoline
    /// (SIPI vectors 0x10-0x1F).
    package static let guestScratch: Range<UInt64> = 0x10000..<0x20000
    /// Everything below belongs to the VMM; ELF segments load at or above it.
    package static let reservedEnd: UInt64 = 0x100000
    /// Always mapped, even with less RAM, so MMIO below 4 GiB is reachable.
    package static let minimumMapped: UInt64 = 4 << 30
    /// The most guest-physical address space the page tables can map.
    package static var mappableLimit: UInt64 { ((pageDirectoryLimit - firstPageDirectory) / 0x1000) << 30 }

    /// "SVBI", little-endian.
    package static let bootInfoMagic: UInt32 = 0x4942_5653
    package static let bootInfoVersion: UInt32 = 1

    /// Writes the GDT, page tables, boot info and command line, and returns the 64-bit entry
    /// state for `entry`. Fails without writing if RAM is too small or too large.
    package static func prepareLongMode(
        memory: GuestMemory, entry: UInt64, commandLine: String, vcpuCount: UInt32 = 1
    ) throws(LoaderError) -> EntryState {
        guard vcpuCount >= 1, vcpuCount <= UInt32(MPTable.maxProcessors) else {
            throw .malformed("\(vcpuCount) vCPUs do not fit the MP table (at most \(MPTable.maxProcessors))")
        }
        let ramEnd = memory.regions.map(\.end).max() ?? 0
        guard memory.contains(0, count: reservedEnd) else {
            throw .memoryTooSmall(needed: reservedEnd, have: memory.totalSize)
        }
        let mappedEnd = max(minimumMapped, ramEnd)
        guard mappedEnd <= mappableLimit else { throw .memoryTooLarge(end: ramEnd, limit: mappableLimit) }
        let cmdline = Array(commandLine.utf8)
        guard cmdline.count <= commandLineLimit else {
            throw .commandLineTooLong(length: cmdline.count, limit: commandLineLimit)
        }
        do {
            // Fresh guest RAM is already zero; clear only the pages whose unused entries must
            // read as zero even if the memory was used before (GDT, boot info, PML4, PDPT).
            for page in [gdtAddress, bootInfoAddress, pml4Address, pdptAddress] {
                try memory.fill(0, count: 0x1000, at: page)
            }
            // GDT: null, 64-bit ring-0 code (0x08), ring-0 data (0x10).
            try memory.write(UInt64(0), at: gdtAddress)
            try memory.write(UInt64(0x00AF_9A00_0000_FFFF), at: gdtAddress + 8)
            try memory.write(UInt64(0x00CF_9200_0000_FFFF), at: gdtAddress + 16)
            // Page tables: present | writable | user on every level, 2 MiB leaves.
            let flags: UInt64 = 0x7
            try memory.write(pdptAddress | flags, at: pml4Address)
            let directories = (mappedEnd + (1 << 30) - 1) >> 30
            for gib in 0..<directories {
                let pd = firstPageDirectory + gib * 0x1000
                try memory.write(pd | flags, at: pdptAddress + gib * 8)
                for entry in 0..<UInt64(512) {
                    let physical = gib << 30 | entry << 21
                    try memory.write(physical | flags | 0x80, at: pd + entry * 8)
                }
            }
            // Boot info.
            try memory.write(bootInfoMagic, at: bootInfoAddress)
            try memory.write(bootInfoVersion, at: bootInfoAddress + 4)
            try memory.write(memory.totalSize, at: bootInfoAddress + 8)
            try memory.write(cmdline.isEmpty ? UInt64(0) : commandLineAddress, at: bootInfoAddress + 16)
            try memory.write(UInt64(cmdline.count), at: bootInfoAddress + 24)
            try memory.write(vcpuCount, at: bootInfoAddress + 32)
            try memory.write(cmdline + [0], at: commandLineAddress)
        } catch {
            // Unreachable: the first MiB was checked to be RAM above.
            throw .memoryTooSmall(needed: reservedEnd, have: memory.totalSize)
        }
        try MPTable.write(processors: Int(vcpuCount), into: memory)
        return EntryState(
            mode: .long64(pageTableRoot: pml4Address, gdtBase: gdtAddress, gdtLimit: 23),
            rip: entry, rsp: stackTop, rdi: bootInfoAddress)
    }
}

/// Raw flat binaries: copied to a load address and entered in 16-bit real mode there.
package enum FlatBinaryLoader {
    /// The highest 16-byte-aligned address real mode can start at with IP = 0.
    package static let highestLoadAddress: UInt64 = 0xFFFF0

    /// Copies `image` to `address` and returns the real-mode entry state:
    /// CS = DS = ES = FS = GS = SS = address >> 4, IP = 0, SP = 0xFFF0, interrupts off.
    package static func load(_ image: [UInt8], at address: UInt64, into memory: GuestMemory) throws(LoaderError) -> EntryState {
        guard address % 16 == 0 else { throw .loadAddressInvalid(address, "it must be a multiple of 16") }
        guard address <= highestLoadAddress else {
            throw .loadAddressInvalid(address, "real mode reaches only 0x0-0x\(hex(highestLoadAddress)) as a segment start")
        }
        guard !image.isEmpty else { throw .malformed("the image is empty") }
        guard memory.contains(address, count: UInt64(image.count)) else {
            let available = memory.regions.first { $0.start <= address && address < $0.end }.map { $0.end - address } ?? 0
            throw .imageTooLarge(size: image.count, limit: available)
        }
        do { try memory.write(image, at: address) } catch {
            throw .imageTooLarge(size: image.count, limit: 0)
        }
        return EntryState(mode: .real(segment: UInt16(address >> 4)), rip: 0, rsp: 0xFFF0, rdi: 0)
    }
}
