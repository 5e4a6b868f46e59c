// File-facing loaders: the input is the file.
import FuzzDeviceTargets
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

/// Input: a RAM size byte (1 MiB + n * 128 KiB for its low 7 bits) whose top bit adds 1 MiB at 4 GiB, a module
/// count (0-3), per module a size byte (n * 512) and a string length byte with its bytes,
/// a command-line length byte with its bytes, then the image. Only the plan is checked:
/// it is a pure function of these, and every placement property is stated on it.
func fuzzMultiboot(_ data: [UInt8]) {
    var input = ByteReader(data)
    let ramByte = input.byte()
    var ram: [Range<UInt64>] = [0..<((1 << 20) + UInt64(ramByte & 0x7F) * 0x10000 * 2)]
    if ramByte & 0x80 != 0 { ram.append((4 << 30)..<((4 << 30) + (1 << 20))) }
    var modules: [MultibootModule] = []
    for _ in 0..<(input.byte() % 4) {
        let size = Int(input.byte()) * 512
        let string = String(decoding: (0..<(input.byte() % 32)).map { _ in input.byte() }, as: UTF8.self)
        modules.append(MultibootModule(bytes: [UInt8](repeating: 0x4D, count: size), string: string))
    }
    let commandLine = String(decoding: (0..<input.byte()).map { _ in input.byte() }, as: UTF8.self)
    let image = input.rest()
    guard let plan = try? MultibootPlan(image: image, ram: ram, commandLine: commandLine, modules: modules) else { return }

    let below4GiB: UInt64 = 1 << 32
    func inRAM(_ r: Range<UInt64>) -> Bool {
        r.upperBound <= below4GiB && ram.contains { $0.lowerBound <= r.lowerBound && r.upperBound <= $0.upperBound }
    }
    let segments = plan.segments.map(\.range)
    let placed = plan.placedRanges(moduleSizes: modules.map(\.bytes.count))
    for s in segments {
        precondition(!s.isEmpty && inRAM(s), "multiboot: segment \(s) outside RAM below 4 GiB")
        precondition(!placed.contains { $0.overlaps(s) }, "multiboot: segment \(s) overlaps what the loader placed")
    }
    for (i, s) in segments.enumerated() {
        precondition(!segments[(i + 1)...].contains { $0.overlaps(s) }, "multiboot: segments overlap")
    }
    for (i, p) in placed.enumerated() {
        precondition(inRAM(p) && p.lowerBound >= MultibootPlan.lowestPlacement, "multiboot: \(p) placed outside free RAM")
        precondition(!placed[(i + 1)...].contains { $0.overlaps(p) }, "multiboot: placed ranges overlap")
        precondition(
            !(MultibootPlan.conventionalEnd..<0x10_0000).overlaps(p), "multiboot: \(p) placed in the reserved legacy area")
    }
    precondition(segments.contains { $0.contains(UInt64(plan.entry)) }, "multiboot: the entry lies in no segment")
    let block = plan.blockAddress..<(plan.blockAddress + UInt64(plan.block.count))
    let info = Int(plan.infoAddress - plan.blockAddress)
    func field(_ offset: Int) -> UInt64 {
        (0..<4).reduce(UInt64(0)) { $0 | UInt64(plan.block[info + offset + $1]) << (8 * UInt64($1)) }
    }
    for offset in [16, 24, 48, 64] {
        precondition(block.contains(field(offset)), "multiboot: information field at \(offset) points outside the block")
    }
    precondition(field(20) == UInt64(modules.count), "multiboot: mods_count differs from the modules given")
}
