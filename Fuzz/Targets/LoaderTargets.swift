// File-facing loaders: the input is the file.
import VisorLoader
import VisorMemory

/// Guest RAM for the loader targets: small, so that a snapshot per run stays cheap.
let loaderRAMSize = 256 << 10

/// Guest RAM filled with 0xA5, a byte loaders rarely write, and a copy of it.
func patternedRAM(size: Int) -> (GuestMemory, [UInt8]) {
    do {
        let memory = try GuestMemory(size: UInt64(size))
        try memory.fill(0xA5, count: UInt64(size), at: 0)
        return (memory, [UInt8](repeating: 0xA5, count: size))
    } catch {
        preconditionFailure("cannot map \(size) bytes of guest RAM: \(error)")
    }
}

func snapshot(_ memory: GuestMemory, size: Int) -> [UInt8] {
    do { return try memory.read(size, at: 0) } catch { preconditionFailure("cannot read guest RAM back: \(error)") }
}

/// The whole input is an ELF file, loaded above a 4 KiB reserved area into 256 KiB of RAM.
func fuzzELF(_ data: [UInt8]) {
    guard let image = try? ELFImage(parsing: data) else { return }
    let (memory, before) = patternedRAM(size: loaderRAMSize)
    do {
        try image.load(data, into: memory, reservedEnd: 0x1000)
    } catch {
        precondition(snapshot(memory, size: loaderRAMSize) == before, "ELF: a failed load changed guest RAM (\(error))")
        return
    }
    // The model: each segment in order writes its file bytes, then zeros up to its memory size.
    var expected = before
    for s in image.segments where s.memorySize > 0 {
        precondition(
            s.physicalAddress >= 0x1000 && s.physicalAddress + s.memorySize <= UInt64(loaderRAMSize),
            "ELF: a segment at 0x\(String(s.physicalAddress, radix: 16)) was loaded outside RAM")
        let start = Int(s.physicalAddress)
        let file = Int(s.fileSize), total = Int(s.memorySize)
        expected.replaceSubrange(start..<(start + file), with: data[Int(s.fileOffset)..<(Int(s.fileOffset) + file)])
        expected.replaceSubrange((start + file)..<(start + total), with: repeatElement(0, count: total - file))
    }
    precondition(snapshot(memory, size: loaderRAMSize) == expected, "ELF: guest RAM differs from the segments' model")
}
