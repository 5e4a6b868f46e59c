package import VisorMemory

/// A PT_LOAD segment, validated against the file it came from.
package struct ELFSegment: Sendable, Equatable {
    package let physicalAddress: UInt64
    package let virtualAddress: UInt64
    package let fileOffset: UInt64
    package let fileSize: UInt64
    package let memorySize: UInt64
    package let executable: Bool
    /// PF_W: the segment asks to be writable.
    package let writable: Bool
}

/// A parsed 64-bit x86 ELF executable: its entry point and loadable segments.
///
/// Parsing reads only what the headers describe, with every offset and size checked
/// against the file and for overflow, so any byte sequence yields a value or a
/// `LoaderError`, never a trap.
package struct ELFImage: Sendable, Equatable {
    package let entry: UInt64
    package let segments: [ELFSegment]

    static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]

    /// Whether `bytes` start with the ELF magic.
    package static func isELF(_ bytes: [UInt8]) -> Bool { bytes.starts(with: magic) }

    package init(parsing bytes: [UInt8]) throws(LoaderError) {
        guard Self.isELF(bytes) else { throw .notELF }
        guard bytes.count >= 64 else { throw .malformed("file is shorter than an ELF64 header") }
        guard bytes[4] == 2 else { throw .wrongClass(bytes[4]) }
        guard bytes[5] == 1 else { throw .wrongEndianness }
        let type = le16(bytes, 16), machine = le16(bytes, 18)
        guard machine == 62 else { throw .wrongMachine(machine) }
        guard type == 2 else { throw .wrongType(type) }
        let entry = le64(bytes, 24)
        let phoff = le64(bytes, 32)
        let phentsize = UInt64(le16(bytes, 54)), phnum = UInt64(le16(bytes, 56))
        guard phnum > 0 else { throw .noLoadableSegments }
        guard phentsize >= 56 else { throw .malformed("program header size \(phentsize) is smaller than 56") }
        guard phoff < UInt64(bytes.count), phnum * phentsize <= UInt64(bytes.count) - phoff else {
            throw .malformed("program headers run past the end of the file")
        }
        var segments: [ELFSegment] = []
        for i in 0..<phnum {
            let at = Int(phoff + i * phentsize)
            guard le32(bytes, at) == 1 else { continue }  // PT_LOAD
            let flags = le32(bytes, at + 4)
            let segment = ELFSegment(
                physicalAddress: le64(bytes, at + 24), virtualAddress: le64(bytes, at + 16),
                fileOffset: le64(bytes, at + 8), fileSize: le64(bytes, at + 32),
                memorySize: le64(bytes, at + 40), executable: flags & 1 != 0, writable: flags & 2 != 0)
            guard segment.fileSize <= segment.memorySize else {
                throw .malformed(
                    "segment \(i) has more file bytes (\(segment.fileSize)) than memory bytes (\(segment.memorySize))")
            }
            guard segment.fileOffset <= UInt64(bytes.count),
                segment.fileSize <= UInt64(bytes.count) - segment.fileOffset
            else {
                throw .malformed("segment \(i) runs past the end of the file")
            }
            guard segment.physicalAddress <= UInt64.max - segment.memorySize,
                segment.virtualAddress <= UInt64.max - segment.memorySize
            else {
                throw .malformed("segment \(i) wraps around the address space")
            }
            segments.append(segment)
        }
        guard !segments.isEmpty else { throw .noLoadableSegments }
        self.entry = entry
        self.segments = segments
    }

    /// Copies each segment's file bytes to its physical address and zero-fills the rest up
    /// to its memory size. Every segment is checked against RAM, the reserved area below
    /// `reservedEnd`, and the identity mapping before anything is written.
    package func load(_ bytes: [UInt8], into memory: GuestMemory, reservedEnd: UInt64) throws(LoaderError) {
        for s in segments where s.memorySize > 0 {
            guard s.virtualAddress == s.physicalAddress else {
                throw .virtualDiffersFromPhysical(virtual: s.virtualAddress, physical: s.physicalAddress)
            }
            guard s.physicalAddress >= reservedEnd else {
                throw .segmentOverlapsReserved(address: s.physicalAddress, size: s.memorySize, reservedEnd: reservedEnd)
            }
            guard memory.contains(s.physicalAddress, count: s.memorySize) else {
                throw .segmentOutsideRAM(address: s.physicalAddress, size: s.memorySize)
            }
        }
        guard
            segments.contains(where: { $0.executable && entry >= $0.virtualAddress && entry - $0.virtualAddress < $0.memorySize })
        else {
            throw .entryNotLoaded(entry)
        }
        for s in segments where s.memorySize > 0 {
            let start = Int(s.fileOffset), end = start + Int(s.fileSize)
            do {
                try memory.write(bytes[start..<end], at: s.physicalAddress)
                try memory.fill(0, count: s.memorySize - s.fileSize, at: s.physicalAddress + s.fileSize)
            } catch {
                // Unreachable: the range was checked above.
                throw .segmentOutsideRAM(address: s.physicalAddress, size: s.memorySize)
            }
        }
    }
}

@inline(__always) func le16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
@inline(__always) func le32(_ b: [UInt8], _ at: Int) -> UInt32 {
    UInt32(le16(b, at)) | UInt32(le16(b, at + 2)) << 16
}
@inline(__always) func le64(_ b: [UInt8], _ at: Int) -> UInt64 {
    UInt64(le32(b, at)) | UInt64(le32(b, at + 4)) << 32
}
