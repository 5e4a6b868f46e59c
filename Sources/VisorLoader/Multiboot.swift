package import VisorMemory

/// The multiboot (version 1) header of an image: the 12 bytes every header has and, when
/// flag bit 16 is set, the five address fields of the "a.out kludge".
///
/// See the Multiboot Specification version 0.6.96, section 3.1.
package struct MultibootHeader: Sendable, Equatable {
    /// The header's magic, 0x1BADB002.
    package static let magic: UInt32 = 0x1BAD_B002
    /// What EAX holds at entry, 0x2BADB002.
    package static let bootMagic: UInt32 = 0x2BAD_B002
    /// The header lies, 4-byte aligned, entirely within the first 8 KiB of the image.
    package static let searchLimit = 8192
    /// Flag bit 0: page-align modules. Honoured (modules are always page-aligned).
    package static let flagPageAlign: UInt32 = 1 << 0
    /// Flag bit 1: memory information. Honoured (always given).
    package static let flagMemoryInfo: UInt32 = 1 << 1
    /// Flag bit 16: the address fields are valid; load the image by them, not as ELF.
    package static let flagAddressFields: UInt32 = 1 << 16
    /// Bits 0-15 that the loader honours; a header that requires any other of bits 0-15
    /// (video mode, bit 2, and bits the specification reserves) is refused.
    package static let honouredRequirements: UInt32 = flagPageAlign | flagMemoryInfo

    /// Byte offset of the header in the image.
    package let offset: Int
    package let flags: UInt32
    /// The address fields (zero when flag bit 16 is clear).
    package let headerAddress: UInt32
    package let loadAddress: UInt32
    package let loadEndAddress: UInt32
    package let bssEndAddress: UInt32
    package let entryAddress: UInt32

    /// Whether `bytes` hold a multiboot magic at a 4-byte aligned offset in the first 8 KiB
    /// (whatever its checksum): such an image is meant for a multiboot loader.
    package static func hasMagic(_ bytes: [UInt8]) -> Bool {
        magicOffsets(bytes).first != nil
    }

    static func magicOffsets(_ bytes: [UInt8]) -> [Int] {
        let end = min(bytes.count, searchLimit)
        guard end >= 12 else { return [] }
        return stride(from: 0, through: end - 12, by: 4).filter { le32(bytes, $0) == magic }
    }

    /// The first header in `bytes` whose checksum is right. Throws `.multibootNoHeader` when
    /// there is no magic, `.multibootChecksum` when no magic has a right checksum, and
    /// `.multibootUnsupportedFlags` for requirements the loader cannot honour.
    package init(searching bytes: [UInt8]) throws(LoaderError) {
        let offsets = Self.magicOffsets(bytes)
        guard let first = offsets.first else { throw .multibootNoHeader }
        guard
            let at = offsets.first(where: {
                Self.magic &+ le32(bytes, $0 + 4) &+ le32(bytes, $0 + 8) == 0
            })
        else {
            throw .multibootChecksum(offset: first)
        }
        let flags = le32(bytes, at + 4)
        let unsupported = flags & 0xFFFF & ~Self.honouredRequirements
        guard unsupported == 0 else { throw .multibootUnsupportedFlags(unsupported) }
        offset = at
        self.flags = flags
        if flags & Self.flagAddressFields != 0 {
            guard at <= bytes.count - 32 else {
                throw .multibootAddressFields("the header's address fields run past the end of the file")
            }
            headerAddress = le32(bytes, at + 12)
            loadAddress = le32(bytes, at + 16)
            loadEndAddress = le32(bytes, at + 20)
            bssEndAddress = le32(bytes, at + 24)
            entryAddress = le32(bytes, at + 28)
        } else {
            (headerAddress, loadAddress, loadEndAddress, bssEndAddress, entryAddress) = (0, 0, 0, 0, 0)
        }
    }
}

/// A module handed to a multiboot guest: its contents and its string (by convention its
/// command line), which the guest finds in the information structure's module list.
public struct MultibootModule: Sendable, Equatable {
    /// The module's contents, loaded page-aligned.
    public var bytes: [UInt8]
    /// The module's string, NUL-terminated in guest memory.
    public var string: String
    public init(bytes: [UInt8], string: String) {
        self.bytes = bytes
        self.string = string
    }
}

/// Where everything of a multiboot guest goes, decided without touching memory: a pure
/// function of the image, the RAM layout, the command line and the modules, so that every
/// check is unit-tested and fuzzed without a VM.
///
/// What the loader places itself (one block: a GDT, the information structure, the memory
/// map, the module list and the strings) goes in the first free 16-byte-aligned spot from
/// 0x10000 below 0x9FC00 (where GRUB puts it too), else anywhere free; each module goes,
/// page-aligned, in the first free spot after the image, else anywhere free. "Free" is RAM
/// below 4 GiB that the memory map calls available, from 0x1000 up, not used by a segment
/// or anything placed before. SwiftVisor's own 64-bit boot structures (page tables, the
/// SVBI block, the MP table) are not written for a multiboot guest, so segments may load
/// anywhere in RAM, below 1 MiB too.
package struct MultibootPlan: Sendable, Equatable {
    /// A piece of the image: `fileRange` of the file copied to `address`, then zeros up to
    /// `memorySize` bytes.
    package struct Segment: Sendable, Equatable {
        package var address: UInt64
        package var fileRange: Range<Int>
        package var memorySize: UInt64
        package var range: Range<UInt64> { address..<(address + memorySize) }
    }

    /// The boot loader's name in the information structure.
    package static let loaderName = "SwiftVisor"
    /// The information structure's size (through the VBE fields of version 0.6.96).
    package static let infoSize = 88
    /// One memory-map entry: size (20), base, length, type.
    package static let mmapEntrySize = 24
    /// Command line, module strings and name together: at most this many bytes.
    package static let stringLimit = 64 * 1024
    /// At most this many modules.
    package static let moduleLimit = 1024
    /// Lowest address the loader places anything at (page 0 stays the guest's).
    package static let lowestPlacement: UInt64 = 0x1000
    /// Where the loader's block is looked for first.
    package static let preferredInfoArea: Range<UInt64> = 0x10000..<0x9FC00
    /// Conventional memory ends here (the EBDA and the legacy hole follow).
    package static let conventionalEnd: UInt64 = 0x9FC00
    static let upperStart: UInt64 = 0x100000
    static let fourGiB: UInt64 = 1 << 32

    package var segments: [Segment]
    /// The entry point (EIP).
    package var entry: UInt32
    /// The loader's block (GDT, information, memory map, module list, strings) and its address.
    package var block: [UInt8]
    package var blockAddress: UInt64
    /// The information structure's address (EBX at entry).
    package var infoAddress: UInt64
    /// The GDT's address (inside the block): null, 0x08 flat 32-bit code, 0x10 flat data.
    package var gdtAddress: UInt64
    /// Each module's address, in order.
    package var moduleAddresses: [UInt64]
    /// The memory map the guest is given, as (base, length, type) with type 1 available.
    package var memoryMap: [(base: UInt64, length: UInt64, type: UInt32)]

    package static func == (a: Self, b: Self) -> Bool {
        a.segments == b.segments && a.entry == b.entry && a.block == b.block && a.blockAddress == b.blockAddress
            && a.moduleAddresses == b.moduleAddresses
            && a.memoryMap.elementsEqual(b.memoryMap) { $0 == $1 }
    }

    /// Every range the loader writes besides the segments: the block and the modules.
    package func placedRanges(moduleSizes: [Int]) -> [Range<UInt64>] {
        var ranges = [blockAddress..<(blockAddress + UInt64(block.count))]
        for (address, size) in zip(moduleAddresses, moduleSizes) where size > 0 {
            ranges.append(address..<(address + UInt64(size)))
        }
        return ranges
    }

    /// Plans the load of `bytes` into RAM made of `ram` (guest-physical ranges, sorted or
    /// not). Every header, ELF and module field is checked; a bad one is a `LoaderError`.
    package init(
        image bytes: [UInt8], ram: [Range<UInt64>], commandLine: String, modules: [MultibootModule]
    ) throws(LoaderError) {
        let header = try MultibootHeader(searching: bytes)
        let ram = ram.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        guard let low = ram.first, low.lowerBound == 0, low.upperBound >= Self.upperStart else {
            throw .memoryTooSmall(needed: Self.upperStart, have: ram.reduce(0) { $0 &+ UInt64($1.count) })
        }
        let loaded: (segments: [Segment], entry: UInt64)
        if header.flags & MultibootHeader.flagAddressFields != 0 {
            loaded = try Self.addressFieldSegments(bytes, header)
        } else {
            loaded = try Self.elfSegments(bytes)
        }
        let segments = loaded.segments.filter { $0.memorySize > 0 }
        for s in segments {
            guard s.range.upperBound <= Self.fourGiB,
                ram.contains(where: { $0.lowerBound <= s.address && s.range.upperBound <= $0.upperBound })
            else {
                throw .segmentOutsideRAM(address: s.address, size: s.memorySize)
            }
        }
        for (i, a) in segments.enumerated() {
            for b in segments[(i + 1)...] where a.range.overlaps(b.range) {
                throw .segmentsOverlap(first: a.address, second: b.address)
            }
        }
        guard segments.contains(where: { $0.range.contains(loaded.entry) }) else {
            throw .entryNotLoaded(loaded.entry)
        }
        self.segments = segments
        entry = UInt32(loaded.entry)

        // The memory map: conventional memory, the EBDA and the BIOS area reserved, the rest
        // of the first region and every other region available.
        let map = Self.memoryMap(ram: ram)
        memoryMap = map

        // Strings.
        let cmdline = Array(commandLine.utf8), name = Array(Self.loaderName.utf8)
        let moduleStrings = modules.map { Array($0.string.utf8) }
        let stringBytes = moduleStrings.reduce(cmdline.count + name.count + 2) { $0 + $1.count + 1 }
        guard stringBytes <= Self.stringLimit else {
            throw .commandLineTooLong(length: stringBytes, limit: Self.stringLimit)
        }
        guard modules.count <= Self.moduleLimit else { throw .tooManyModules(count: modules.count, limit: Self.moduleLimit) }

        // Free RAM, and placement.
        let free = map.filter { $0.type == 1 }.compactMap { entry -> Range<UInt64>? in
            let start = max(entry.base, Self.lowestPlacement), end = min(entry.base + entry.length, Self.fourGiB)
            return start < end ? start..<end : nil
        }
        var used = segments.map(\.range)
        func place(_ size: UInt64, align: UInt64, from: UInt64, below: UInt64 = 1 << 32) -> UInt64? {
            for area in free {
                var start = (max(area.lowerBound, from) + align - 1) / align * align
                let end = min(area.upperBound, below)
                while start < end, size <= end - start {
                    if let blocker = used.first(where: { $0.overlaps(start..<(start + max(size, 1))) }) {
                        start = (blocker.upperBound + align - 1) / align * align
                    } else {
                        return start
                    }
                }
            }
            return nil
        }
        let gdtSize = 32
        let mmapOffset = gdtSize + Self.infoSize
        let modsOffset = mmapOffset + map.count * Self.mmapEntrySize
        let stringsOffset = modsOffset + modules.count * 16
        let blockSize = stringsOffset + stringBytes
        guard
            let blockAddress = place(
                UInt64(blockSize), align: 16, from: Self.preferredInfoArea.lowerBound, below: Self.preferredInfoArea.upperBound)
                ?? place(UInt64(blockSize), align: 16, from: 0)
        else {
            throw .multibootNoRoom(size: blockSize)
        }
        used.append(blockAddress..<(blockAddress + UInt64(blockSize)))
        let imageEnd = segments.map(\.range.upperBound).max() ?? 0
        var moduleAddresses: [UInt64] = []
        for (i, module) in modules.enumerated() {
            let size = UInt64(module.bytes.count)
            guard let address = place(size, align: 0x1000, from: imageEnd) ?? place(size, align: 0x1000, from: 0) else {
                throw .moduleDoesNotFit(index: i, size: module.bytes.count)
            }
            if size > 0 { used.append(address..<(address + size)) }
            moduleAddresses.append(address)
        }
        self.moduleAddresses = moduleAddresses
        self.blockAddress = blockAddress
        gdtAddress = blockAddress
        infoAddress = blockAddress + UInt64(gdtSize)

        // The block.
        var block = [UInt8](repeating: 0, count: blockSize)
        func put32(_ value: UInt32, _ at: Int) {
            for i in 0..<4 { block[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
        }
        func put64(_ value: UInt64, _ at: Int) {
            put32(UInt32(truncatingIfNeeded: value), at)
            put32(UInt32(truncatingIfNeeded: value >> 32), at + 4)
        }
        func address(_ offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: blockAddress + UInt64(offset)) }
        put64(0x00CF_9A00_0000_FFFF, 8)  // 0x08: flat 32-bit ring-0 code
        put64(0x00CF_9200_0000_FFFF, 16)  // 0x10: flat ring-0 data
        var stringAt = stringsOffset
        func putString(_ s: [UInt8]) -> UInt32 {
            let at = stringAt
            for (i, byte) in s.enumerated() { block[at + i] = byte }
            stringAt += s.count + 1
            return address(at)
        }
        let info = gdtSize
        // flags: mem (0), cmdline (2), mods (3), mmap (6), boot_loader_name (9).
        put32(1 << 0 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9, info)
        put32(UInt32(Self.conventionalEnd / 1024), info + 4)
        put32(UInt32(clamping: (low.upperBound - Self.upperStart) / 1024), info + 8)
        put32(putString(cmdline), info + 16)
        put32(UInt32(modules.count), info + 20)
        put32(address(modsOffset), info + 24)
        put32(UInt32(map.count * Self.mmapEntrySize), info + 44)
        put32(address(mmapOffset), info + 48)
        put32(putString(name), info + 64)
        for (i, entry) in map.enumerated() {
            let at = mmapOffset + i * Self.mmapEntrySize
            put32(20, at)
            put64(entry.base, at + 4)
            put64(entry.length, at + 12)
            put32(entry.type, at + 20)
        }
        for (i, module) in modules.enumerated() {
            let at = modsOffset + i * 16
            let start = moduleAddresses[i]
            put32(UInt32(truncatingIfNeeded: start), at)
            put32(UInt32(truncatingIfNeeded: start + UInt64(module.bytes.count)), at + 4)
            put32(putString(moduleStrings[i]), at + 8)
        }
        self.block = block
    }

    /// The memory map of RAM made of `ram` (sorted, the first region from 0 through at least
    /// 1 MiB), as (base, length, type 1 available or 2 reserved): conventional memory
    /// available, the EBDA (0x9FC00-0xA0000) and the BIOS area (0xF0000-0x100000) reserved,
    /// the rest of the first region and every other region available. fw_cfg's "etc/e820"
    /// gives the same map.
    package static func memoryMap(ram: [Range<UInt64>]) -> [(base: UInt64, length: UInt64, type: UInt32)] {
        guard let low = ram.first, low.lowerBound == 0, low.upperBound >= upperStart else {
            return ram.map { ($0.lowerBound, UInt64($0.count), 1) }
        }
        var map: [(base: UInt64, length: UInt64, type: UInt32)] = [
            (0, conventionalEnd, 1),
            (conventionalEnd, 0xA0000 - conventionalEnd, 2),
            (0xF0000, 0x10000, 2),
        ]
        if low.upperBound > upperStart { map.append((upperStart, low.upperBound - upperStart, 1)) }
        for region in ram.dropFirst() { map.append((region.lowerBound, UInt64(region.count), 1)) }
        return map
    }

    /// The segments of an image loaded by the header's address fields (flag bit 16).
    static func addressFieldSegments(_ bytes: [UInt8], _ h: MultibootHeader) throws(LoaderError) -> ([Segment], UInt64) {
        guard h.loadAddress <= h.headerAddress else {
            throw .multibootAddressFields("load_addr 0x\(hex(h.loadAddress)) is above header_addr 0x\(hex(h.headerAddress))")
        }
        let before = UInt64(h.headerAddress - h.loadAddress)
        guard before <= UInt64(h.offset) else {
            throw .multibootAddressFields(
                "header_addr - load_addr (0x\(hex(before))) is more than the header's offset in the file")
        }
        let fileStart = h.offset - Int(before)
        let fileAvailable = UInt64(bytes.count - fileStart)
        let loadSize: UInt64
        if h.loadEndAddress == 0 {
            loadSize = fileAvailable
        } else {
            guard h.loadEndAddress > h.loadAddress else {
                throw .multibootAddressFields(
                    "load_end_addr 0x\(hex(h.loadEndAddress)) is not above load_addr 0x\(hex(h.loadAddress))")
            }
            loadSize = UInt64(h.loadEndAddress - h.loadAddress)
            guard loadSize <= fileAvailable else {
                throw .multibootAddressFields(
                    "load_end_addr asks for \(loadSize) bytes; the file has \(fileAvailable) from load_addr")
            }
        }
        let loadEnd = UInt64(h.loadAddress) + loadSize
        var memorySize = loadSize
        if h.bssEndAddress != 0 {
            guard UInt64(h.bssEndAddress) >= loadEnd else {
                throw .multibootAddressFields("bss_end_addr 0x\(hex(h.bssEndAddress)) is below the loaded end 0x\(hex(loadEnd))")
            }
            memorySize = UInt64(h.bssEndAddress) - UInt64(h.loadAddress)
        }
        let segment = Segment(
            address: UInt64(h.loadAddress), fileRange: fileStart..<(fileStart + Int(loadSize)), memorySize: memorySize)
        return ([segment], UInt64(h.entryAddress))
    }

    /// The PT_LOAD segments of an ELF32 (i386) or ELF64 (x86-64) executable, at their
    /// physical addresses; the entry is e_entry, translated to physical when it lies in a
    /// segment's virtual range.
    static func elfSegments(_ bytes: [UInt8]) throws(LoaderError) -> ([Segment], UInt64) {
        guard ELFImage.isELF(bytes) else { throw .multibootNotELF }
        guard bytes.count >= 52 else { throw .malformed("file is shorter than an ELF header") }
        let wide: Bool
        switch bytes[4] {
        case 1: wide = false
        case 2: wide = true
        default: throw .wrongClass(bytes[4])
        }
        guard bytes[5] == 1 else { throw .wrongEndianness }
        guard !wide || bytes.count >= 64 else { throw .malformed("file is shorter than an ELF64 header") }
        let type = le16(bytes, 16), machine = le16(bytes, 18)
        guard machine == (wide ? 62 : 3) else { throw .wrongMachine(machine) }
        guard type == 2 else { throw .wrongType(type) }
        let entry = wide ? le64(bytes, 24) : UInt64(le32(bytes, 24))
        let phoff = wide ? le64(bytes, 32) : UInt64(le32(bytes, 28))
        let phentsize = UInt64(le16(bytes, wide ? 54 : 42)), phnum = UInt64(le16(bytes, wide ? 56 : 44))
        let minimum: UInt64 = wide ? 56 : 32
        guard phnum > 0 else { throw .noLoadableSegments }
        guard phentsize >= minimum else { throw .malformed("program header size \(phentsize) is smaller than \(minimum)") }
        guard phoff < UInt64(bytes.count), phnum * phentsize <= UInt64(bytes.count) - phoff else {
            throw .malformed("program headers run past the end of the file")
        }
        var segments: [Segment] = []
        var translatedEntry = entry
        for i in 0..<phnum {
            let at = Int(phoff + i * phentsize)
            guard le32(bytes, at) == 1 else { continue }  // PT_LOAD
            let offset, virtual, physical, fileSize, memorySize: UInt64
            if wide {
                (offset, virtual, physical) = (le64(bytes, at + 8), le64(bytes, at + 16), le64(bytes, at + 24))
                (fileSize, memorySize) = (le64(bytes, at + 32), le64(bytes, at + 40))
            } else {
                (offset, virtual, physical) = (
                    UInt64(le32(bytes, at + 4)), UInt64(le32(bytes, at + 8)), UInt64(le32(bytes, at + 12))
                )
                (fileSize, memorySize) = (UInt64(le32(bytes, at + 16)), UInt64(le32(bytes, at + 20)))
            }
            guard fileSize <= memorySize else {
                throw .malformed("segment \(i) has more file bytes (\(fileSize)) than memory bytes (\(memorySize))")
            }
            guard offset <= UInt64(bytes.count), fileSize <= UInt64(bytes.count) - offset else {
                throw .malformed("segment \(i) runs past the end of the file")
            }
            guard physical <= UInt64.max - memorySize, virtual <= UInt64.max - memorySize else {
                throw .malformed("segment \(i) wraps around the address space")
            }
            if entry >= virtual, entry - virtual < memorySize { translatedEntry = physical + (entry - virtual) }
            segments.append(
                Segment(address: physical, fileRange: Int(offset)..<Int(offset + fileSize), memorySize: memorySize))
        }
        guard !segments.isEmpty else { throw .noLoadableSegments }
        return (segments, translatedEntry)
    }

    /// Writes the segments, the modules and the block into `memory`, and returns the entry
    /// state: 32-bit protected mode, paging off, flat segments from the block's GDT,
    /// EAX = 0x2BADB002, EBX = the information's address, interrupts off.
    package func load(image bytes: [UInt8], modules: [MultibootModule], into memory: GuestMemory) throws(LoaderError)
        -> EntryState
    {
        do {
            for s in segments {
                try memory.write(bytes[s.fileRange], at: s.address)
                try memory.fill(0, count: s.memorySize - UInt64(s.fileRange.count), at: s.address + UInt64(s.fileRange.count))
            }
            for (module, address) in zip(modules, moduleAddresses) where !module.bytes.isEmpty {
                try memory.write(module.bytes, at: address)
            }
            try memory.write(block, at: blockAddress)
        } catch {
            // Unreachable when the plan was made for this memory's regions.
            throw .segmentOutsideRAM(address: blockAddress, size: UInt64(block.count))
        }
        var state = EntryState(
            mode: .protected32(gdtBase: gdtAddress, gdtLimit: 23, codeSelector: 0x08, dataSelector: 0x10),
            rip: UInt64(entry), rsp: 0)
        state.rax = UInt64(MultibootHeader.bootMagic)
        state.rbx = infoAddress
        return state
    }
}
