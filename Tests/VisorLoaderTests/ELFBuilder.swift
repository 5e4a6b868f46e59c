@testable import VisorLoader
import VisorMemory

/// One ELF64 program header, as written to the file.
struct ProgramHeader {
    var type: UInt32 = 1  // PT_LOAD
    var flags: UInt32 = 5  // R + X
    var offset: UInt64
    var vaddr: UInt64
    var paddr: UInt64
    var filesz: UInt64
    var memsz: UInt64
    var align: UInt64 = 0x1000

    /// A PT_LOAD with vaddr == paddr.
    static func load(at address: UInt64, offset: UInt64, filesz: UInt64, memsz: UInt64, flags: UInt32 = 5) -> Self {
        ProgramHeader(flags: flags, offset: offset, vaddr: address, paddr: address, filesz: filesz, memsz: memsz)
    }
}

/// Emits a little ELF64 file: the 64-byte header, the program headers right after it (or
/// at `phoff`), and `payload` at `payloadOffset`. Every header field can be overridden.
struct ELFBuilder {
    var elfClass: UInt8 = 2  // ELFCLASS64
    var data: UInt8 = 1  // ELFDATA2LSB
    var type: UInt16 = 2  // ET_EXEC
    var machine: UInt16 = 62  // EM_X86_64
    var entry: UInt64 = 0x20_0000
    var phoff: UInt64 = 64
    var phentsize: UInt16 = 56
    /// Defaults to the number of `headers`.
    var phnum: UInt16?
    var headers: [ProgramHeader] = []
    var payloadOffset = 0x200
    var payload: [UInt8] = []

    /// Code the valid image carries: 16 bytes, entry at its offset 4.
    static let code: [UInt8] = [0x90, 0x90, 0x90, 0x90, 0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD, 0x0F, 0x0B, 0xCC, 0xCC, 0xCC]
    /// Data the valid image carries: 8 bytes, then 0xF8 bytes of BSS.
    static let initialized: [UInt8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]

    /// A valid image: text at 0x200000 (16 bytes, R+X), data at 0x201000 (8 file bytes,
    /// 0x100 memory bytes, R+W), and a PT_NOTE with nonsense offsets that must be ignored.
    static func valid() -> ELFBuilder {
        var b = ELFBuilder()
        b.entry = 0x20_0004
        b.payload = code + initialized
        b.headers = [
            .load(at: 0x20_0000, offset: 0x200, filesz: 16, memsz: 16, flags: 5),
            .load(at: 0x20_1000, offset: 0x210, filesz: 8, memsz: 0x100, flags: 6),
            ProgramHeader(type: 4, flags: 4, offset: .max, vaddr: .max, paddr: 0, filesz: .max, memsz: 1),
        ]
        return b
    }

    /// An image with one R+X segment `at` address holding 16 code bytes.
    static func oneSegment(
        at address: UInt64, filesz: UInt64 = 16, memsz: UInt64 = 16,
        flags: UInt32 = 5, entry: UInt64? = nil
    ) -> ELFBuilder {
        var b = ELFBuilder()
        b.entry = entry ?? address
        b.payload = code
        b.headers = [.load(at: address, offset: 0x200, filesz: filesz, memsz: memsz, flags: flags)]
        return b
    }

    func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 64)
        out.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        out[4] = elfClass
        out[5] = data
        out[6] = 1  // EV_CURRENT
        put(&out, 16, type)
        put(&out, 18, machine)
        put(&out, 20, UInt32(1))
        put(&out, 24, entry)
        put(&out, 32, phoff)
        put(&out, 40, UInt64(0))  // no section headers
        put(&out, 52, UInt16(64))
        put(&out, 54, phentsize)
        put(&out, 56, phnum ?? UInt16(headers.count))
        put(&out, 58, UInt16(64))
        var table: [UInt8] = []
        for h in headers {
            var entry = [UInt8](repeating: 0, count: max(56, Int(phentsize)))
            put(&entry, 0, h.type)
            put(&entry, 4, h.flags)
            put(&entry, 8, h.offset)
            put(&entry, 16, h.vaddr)
            put(&entry, 24, h.paddr)
            put(&entry, 32, h.filesz)
            put(&entry, 40, h.memsz)
            put(&entry, 48, h.align)
            table += entry
        }
        if !table.isEmpty {
            let at = Int(phoff)
            if out.count < at + table.count { out += [UInt8](repeating: 0, count: at + table.count - out.count) }
            out.replaceSubrange(at..<(at + table.count), with: table)
        }
        if !payload.isEmpty {
            if out.count < payloadOffset { out += [UInt8](repeating: 0, count: payloadOffset - out.count) }
            precondition(out.count == payloadOffset, "headers overrun the payload")
            out += payload
        }
        return out
    }
}

/// Writes `value` little-endian at `offset`.
func put<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ offset: Int, _ value: T) {
    for i in 0..<(T.bitWidth / 8) {
        bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
    }
}

/// Reads a little-endian value at `offset`.
func get<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, as: T.Type = T.self) -> T {
    var value: T = 0
    for i in 0..<(T.bitWidth / 8) { value |= T(bytes[offset + i]) << (8 * i) }
    return value
}
