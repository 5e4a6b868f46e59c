package import VisorLoader
package import VisorMemory

/// A Linux kernel file, told apart by content rather than by name.
package enum KernelImage: Sendable {
    /// A bzImage (a valid setup header), such as /boot/vmlinuz-*.
    case bzImage(BzImage)
    /// An x86-64 ELF kernel, such as the vmlinux of a kernel build.
    case elf(ELFKernel)

    /// Recognises `bytes` as an ELF kernel or a bzImage and validates it.
    ///
    /// A file with the ELF magic must be an x86-64 executable ELF. A file with the setup
    /// header's `HdrS` magic or 0xAA55 boot flag, or a short file starting with "MZ" (the
    /// EFI stub's PE header), must be a valid bzImage. Anything else is `notAKernel`.
    package static func detect(_ bytes: [UInt8]) throws(LinuxBootError) -> KernelImage {
        if ELFImage.isELF(bytes) { return .elf(try ELFKernel(parsing: bytes)) }
        let hasMagic = LE.read(bytes, 0x202, 4) == UInt64(SetupHeader.magic)
        let hasBootFlag = LE.read(bytes, 0x1FE, 2) == UInt64(SetupHeader.bootFlagValue)
        let shortPE = bytes.count < 0x206 && bytes.starts(with: [0x4D, 0x5A])
        if hasMagic || hasBootFlag || shortPE { return .bzImage(try BzImage(parsing: bytes)) }
        throw .notAKernel(magic: Array(bytes.prefix(8)))
    }
}

/// An x86-64 ELF kernel (vmlinux): the VisorLoader parse of its headers, the file, and
/// the PVH entry point from its notes.
///
/// A vmlinux links its PT_LOAD segments at virtual 0xffffffff81000000 and up, and at
/// physical 0x1000000 and up; its entry point (`phys_startup_64`) is physical. So it loads
/// by physical address (`load(into:)`), not through `ELFImage.load`, which insists on
/// virtual == physical.
package struct ELFKernel: Sendable {
    /// The whole file.
    package let bytes: [UInt8]
    package let elf: ELFImage
    /// The 32-bit physical PVH entry point from the Xen `PHYS32_ENTRY` note (type 18), if
    /// the kernel has one (CONFIG_PVH=y).
    package let pvhEntry: UInt32?

    /// `e_entry`: for a vmlinux, the physical address of the 64-bit entry.
    package var entry: UInt64 { elf.entry }
    package var segments: [ELFSegment] { elf.segments }

    /// The physical address of the entry point: `e_entry` if it lies in a segment's
    /// physical range, else translated from a segment's virtual range; nil if neither.
    package var physicalEntry: UInt64? {
        let loaded = segments.filter { $0.memorySize > 0 }
        if loaded.contains(where: { entry >= $0.physicalAddress && entry - $0.physicalAddress < $0.memorySize }) {
            return entry
        }
        if let s = loaded.first(where: { entry >= $0.virtualAddress && entry - $0.virtualAddress < $0.memorySize }) {
            return s.physicalAddress + (entry - s.virtualAddress)
        }
        return nil
    }

    /// The guest-physical span of all segments with memory, from the lowest start to the
    /// highest end (empty at 0 if there are none).
    package var physicalRange: Range<UInt64> {
        let loaded = segments.filter { $0.memorySize > 0 }
        guard let low = loaded.map(\.physicalAddress).min(),
            let high = loaded.map({ $0.physicalAddress + $0.memorySize }).max()
        else { return 0..<0 }
        return low..<high
    }

    /// Parses an x86-64 executable ELF and looks for its PVH note.
    package init(parsing bytes: [UInt8]) throws(LinuxBootError) {
        do throws(LoaderError) {
            elf = try ELFImage(parsing: bytes)
        } catch {
            throw .elf(error)
        }
        self.bytes = bytes
        pvhEntry = Self.findPVHEntry(in: bytes)
    }

    /// Copies every segment to its physical address and zero-fills the rest of its memory
    /// size, after checking, before writing anything, that each lies in one RAM region at
    /// or above `reservedEnd` and that the entry point is loaded. Returns `physicalRange`.
    @discardableResult
    package func load(into memory: GuestMemory, reservedEnd: UInt64 = 0x10_0000) throws(LinuxBootError) -> Range<UInt64> {
        try Self.loadSegments(elf, from: bytes, into: memory, reservedEnd: reservedEnd)
        return physicalRange
    }

    /// `load(into:reservedEnd:)` for any parsed ELF and the file it came from; the file
    /// ranges are checked again, so a mismatched pair fails rather than traps.
    package static func loadSegments(
        _ elf: ELFImage, from bytes: [UInt8], into memory: GuestMemory,
        reservedEnd: UInt64 = 0x10_0000
    ) throws(LinuxBootError) {
        let loaded = elf.segments.filter { $0.memorySize > 0 }
        for s in loaded {
            guard s.fileSize <= s.memorySize, s.fileOffset <= UInt64(bytes.count),
                s.fileSize <= UInt64(bytes.count) - s.fileOffset
            else {
                throw .elf(
                    .malformed("segment at physical 0x\(String(s.physicalAddress, radix: 16)) runs past the end of the file"))
            }
            guard s.physicalAddress >= reservedEnd else {
                throw .elf(.segmentOverlapsReserved(address: s.physicalAddress, size: s.memorySize, reservedEnd: reservedEnd))
            }
            guard memory.contains(s.physicalAddress, count: s.memorySize) else {
                throw .elf(.segmentOutsideRAM(address: s.physicalAddress, size: s.memorySize))
            }
        }
        let entryLoaded = loaded.contains { s in
            s.executable && elf.entry >= s.physicalAddress && elf.entry - s.physicalAddress < s.memorySize
        }
        guard entryLoaded else { throw .elf(.entryNotLoaded(elf.entry)) }
        do throws(GuestMemoryError) {
            for s in loaded {
                let start = Int(s.fileOffset)
                try memory.write(bytes[start..<(start + Int(s.fileSize))], at: s.physicalAddress)
                try memory.fill(0, count: s.memorySize - s.fileSize, at: s.physicalAddress + s.fileSize)
            }
        } catch {
            // Unreachable: every range was checked above.
            throw .malformed("internal: a checked write to guest memory failed (\(error))")
        }
    }

    // MARK: ELF notes

    /// XEN_ELFNOTE_PHYS32_ENTRY.
    static let pvhNoteType: UInt32 = 18

    /// Walks the PT_NOTE segments for a "Xen" note of type 18. Its descriptor is the entry
    /// as 4 bytes (newer kernels) or 8 (6.1's `_ASM_PTR`), which must fit in 32 bits.
    /// Malformed notes end the walk of their segment; they are not an error.
    static func findPVHEntry(in bytes: [UInt8]) -> UInt32? {
        let phoff = LE.read(bytes, 32, 8)
        let phentsize = LE.read(bytes, 54, 2), phnum = LE.read(bytes, 56, 2)
        let count = UInt64(bytes.count)
        guard phentsize >= 56, phoff <= count, phnum * phentsize <= count - phoff else { return nil }
        for i in 0..<phnum {
            let header = phoff + i * phentsize
            guard LE.read(bytes, header, 4) == 4 else { continue }  // PT_NOTE
            let offset = LE.read(bytes, header + 8, 8), size = LE.read(bytes, header + 32, 8)
            let align: UInt64 = LE.read(bytes, header + 48, 8) == 8 ? 8 : 4
            guard offset <= count, size <= count - offset else { continue }
            if let entry = scanNotes(offset..<(offset + size), of: bytes, align: align) { return entry }
        }
        return nil
    }

    private static func scanNotes(_ notes: Range<UInt64>, of bytes: [UInt8], align: UInt64) -> UInt32? {
        func padded(_ n: UInt64) -> UInt64 { (n + align - 1) / align * align }
        var at = notes.lowerBound
        while notes.upperBound - at >= 12 {
            let nameSize = LE.read(bytes, at, 4), descSize = LE.read(bytes, at + 4, 4)
            let type = LE.read(bytes, at + 8, 4)
            let name = at + 12
            let desc = name + padded(nameSize)  // at most 2^33: no overflow
            let next = desc + padded(descSize)
            guard next <= notes.upperBound else { return nil }
            if type == UInt64(pvhNoteType), nameSize == 4, LE.read(bytes, name, 4) == 0x006E_6558 /* "Xen\0" */ {
                if descSize == 4 { return UInt32(LE.read(bytes, desc, 4)) }
                if descSize == 8 {
                    let value = LE.read(bytes, desc, 8)
                    if value <= UInt64(UInt32.max) { return UInt32(value) }
                }
            }
            at = next
        }
        return nil
    }
}
