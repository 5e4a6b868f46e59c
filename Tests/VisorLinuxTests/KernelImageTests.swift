import Glibc
import Testing
import TestSupport
@testable import VisorLinux
import VisorLoader
import VisorMemory

@Suite("Kernel images: detection, vmlinux loading, PVH note, host decompression")
struct KernelImageTests {
    static let supported: [CompressionCodec] = [.gzip, .xz, .lzma, .lz4, .zstd]

    // MARK: Detection

    @Test("an x86-64 ELF is detected as an ELF kernel, a bzImage as a bzImage")
    func detection() throws {
        let vmlinux = VmlinuxBuilder().bytes()
        guard case .elf(let kernel) = try KernelImage.detect(vmlinux) else { Issue.record("not an ELF"); return }
        #expect(kernel.bytes == vmlinux)
        #expect(kernel.entry == VmlinuxBuilder.physicalBase)
        #expect(kernel.segments.count == 3)

        let bz = BzImageBuilder.wrapping(vmlinux, codec: .lz4).bytes()
        guard case .bzImage(let image) = try KernelImage.detect(bz) else { Issue.record("not a bzImage"); return }
        #expect(image.codec == .lz4)
        #expect(image.canDecompressOnHost)
        #expect(image.bytes == bz)
    }

    @Test("files that are neither are rejected with their first bytes; damaged bzImages with a specific error")
    func neither() throws {
        #expect(throws: LinuxBootError.notAKernel(magic: [])) { try KernelImage.detect([]) }
        let script = Array("#!/bin/sh\necho hello\n".utf8)
        #expect(throws: LinuxBootError.notAKernel(magic: Array(script.prefix(8)))) { try KernelImage.detect(script) }
        let zeros = [UInt8](repeating: 0, count: 4096)
        #expect(throws: LinuxBootError.notAKernel(magic: [0, 0, 0, 0, 0, 0, 0, 0])) { try KernelImage.detect(zeros) }
        // A bzImage cut inside its header still says "truncated", thanks to its "MZ".
        let cut = Array(BzImageBuilder().bytes().prefix(0x180))
        #expect(throws: LinuxBootError.truncated(what: "the bzImage setup header", need: 0x206, have: 0x180)) {
            try KernelImage.detect(cut)
        }
        // Old protocol and missing 64-bit entry surface through detection.
        var old = BzImageBuilder()
        old.version = 0x0206
        #expect(throws: LinuxBootError.protocolTooOld(version: 0x0206, minimum: 0x020C)) { try KernelImage.detect(old.bytes()) }
        var i386 = BzImageBuilder()
        i386.xloadflags = 0
        #expect(throws: LinuxBootError.no64BitEntry) { try KernelImage.detect(i386.bytes()) }
    }

    @Test("ELF files that are not x86-64 executables are rejected through the ELF parser")
    func wrongELF() {
        var arm = VmlinuxBuilder()
        arm.machine = 183
        #expect(throws: LinuxBootError.elf(.wrongMachine(183))) { try KernelImage.detect(arm.bytes()) }
        var elf32 = VmlinuxBuilder()
        elf32.elfClass = 1
        #expect(throws: LinuxBootError.elf(.wrongClass(1))) { try KernelImage.detect(elf32.bytes()) }
        #expect(throws: LinuxBootError.elf(.malformed("file is shorter than an ELF64 header"))) {
            try KernelImage.detect([0x7F, 0x45, 0x4C, 0x46, 2, 1, 1])
        }
    }

    // MARK: vmlinux

    @Test("a vmlinux parses although its virtual and physical addresses differ")
    func vmlinuxAddresses() throws {
        let kernel = try ELFKernel(parsing: VmlinuxBuilder().bytes())
        let text = try #require(kernel.segments.first)
        #expect(text.virtualAddress == VmlinuxBuilder.virtualBase)
        #expect(text.physicalAddress == VmlinuxBuilder.physicalBase)
        #expect(kernel.physicalEntry == VmlinuxBuilder.physicalBase)
        #expect(kernel.physicalRange == 0x100_0000..<0x130_0020)
        // VisorLoader's own loader refuses it; ours is what boots Linux.
        let ram = try guestRAM(32 << 20)
        #expect(
            throws: LoaderError.virtualDiffersFromPhysical(
                virtual: VmlinuxBuilder.virtualBase, physical: VmlinuxBuilder.physicalBase)
        ) {
            try kernel.elf.load(kernel.bytes, into: ram, reservedEnd: 0x10_0000)
        }
    }

    @Test("a virtual entry point is translated to its physical address")
    func virtualEntry() throws {
        var b = VmlinuxBuilder()
        b.entry = VmlinuxBuilder.virtualBase + 0x40
        let kernel = try ELFKernel(parsing: b.bytes())
        #expect(kernel.physicalEntry == VmlinuxBuilder.physicalBase + 0x40)
        b.entry = 0x4000_0000
        #expect(try ELFKernel(parsing: b.bytes()).physicalEntry == nil)
    }

    @Test("loading puts each segment at its physical address and zero-fills its BSS")
    func load() throws {
        let b = VmlinuxBuilder()
        let kernel = try ELFKernel(parsing: b.bytes())
        let ram = try guestRAM(32 << 20)
        let range = try kernel.load(into: ram)
        #expect(range == kernel.physicalRange)
        #expect(try ram.read(b.text.count, at: 0x100_0000) == b.text)
        #expect(try ram.read(b.data.count, at: 0x120_0000) == b.data)
        #expect(try ram.read(Int(b.bssSize), at: 0x120_0000 + UInt64(b.data.count)).allSatisfy { $0 == 0 })
        #expect(try ram.readUInt8(at: 0x120_0000 + UInt64(b.data.count) + b.bssSize) == 0xAA, "nothing past the BSS")
        #expect(try ram.read(b.percpu.count, at: 0x130_0000) == b.percpu)
        #expect(try ram.readUInt8(at: 0x100_0000 - 1) == 0xAA, "nothing below the kernel")
    }

    @Test("segments outside RAM or in the reserved first MiB fail before anything is written")
    func loadErrors() throws {
        let kernel = try ELFKernel(parsing: VmlinuxBuilder().bytes())
        // 0x130_0000 + 0x20 does not fit in 19 MiB + 16 bytes.
        let small = try guestRAM(0x130_0000)
        #expect(throws: LinuxBootError.elf(.segmentOutsideRAM(address: 0x130_0000, size: 0x20))) {
            try kernel.load(into: small)
        }
        #expect(try small.read(16, at: 0x100_0000).allSatisfy { $0 == 0xAA }, "text was not written")

        let ram = try guestRAM(64 << 20)
        #expect(throws: LinuxBootError.elf(.segmentOverlapsReserved(address: 0x100_0000, size: 0x200, reservedEnd: 0x200_0000))) {
            try kernel.load(into: ram, reservedEnd: 0x200_0000)
        }
        var b = VmlinuxBuilder()
        b.entry = 0x120_0000  // in the data segment, which is not executable
        #expect(throws: LinuxBootError.elf(.entryNotLoaded(0x120_0000))) { try ELFKernel(parsing: b.bytes()).load(into: ram) }
        #expect(try ram.read(16, at: 0x100_0000).allSatisfy { $0 == 0xAA })
        // A parse of one file with the bytes of another: ranges are checked again.
        #expect(throws: LinuxBootError.self) {
            try ELFKernel.loadSegments(kernel.elf, from: Array(kernel.bytes.prefix(0x200)), into: ram)
        }
    }

    // MARK: PVH note

    @Test("the PVH entry comes from the Xen note of type 18, 4- or 8-byte form, among other notes")
    func pvhNote() throws {
        #expect(try ELFKernel(parsing: VmlinuxBuilder().bytes()).pvhEntry == 0x100_0100)
        var b = VmlinuxBuilder()
        b.notes = [ELFNote(name: "GNU", type: 3, desc: [1, 2, 3, 4, 5]), .pvh64(0x100_1234)]
        #expect(try ELFKernel(parsing: b.bytes()).pvhEntry == 0x100_1234)
        b.notes = [.pvh64(0x1_0000_0000)]  // does not fit in 32 bits: not a PVH entry
        #expect(try ELFKernel(parsing: b.bytes()).pvhEntry == nil)
        b.notes = []
        #expect(try ELFKernel(parsing: b.bytes()).pvhEntry == nil)
        b.notes = [ELFNote(name: "Xen", type: 17, desc: [0, 1, 0, 0]), ELFNote(name: "Xenx", type: 18, desc: [0, 1, 0, 0])]
        #expect(try ELFKernel(parsing: b.bytes()).pvhEntry == nil, "wrong type, wrong name")
    }

    @Test("a note whose sizes run past its segment ends the walk without a trap")
    func malformedNotes() throws {
        var b = VmlinuxBuilder()
        b.notes = [ELFNote(name: "Xen", type: 6, desc: [1, 2, 3, 4]), .pvh(0x100_0000)]
        var bytes = b.bytes()
        let noteHeader = 64 + 56 * 3
        let notesAt = Int(Fixture.get(bytes, noteHeader + 8, as: UInt64.self))
        #expect(try ELFKernel(parsing: bytes).pvhEntry == 0x100_0000)
        Fixture.put(&bytes, notesAt + 4, UInt32.max)  // first note's descsz
        #expect(try ELFKernel(parsing: bytes).pvhEntry == nil)
        Fixture.put(&bytes, notesAt + 4, UInt32(4))
        Fixture.put(&bytes, noteHeader + 32, UInt64.max)  // PT_NOTE filesz
        #expect(try ELFKernel(parsing: bytes).pvhEntry == nil)
    }

    // MARK: bzImage payloads

    @Test("a bzImage's payload decompresses to the vmlinux inside it", arguments: supported)
    func decompressedELF(codec: CompressionCodec) throws {
        let vmlinux = VmlinuxBuilder().bytes()
        let image = try BzImage(parsing: BzImageBuilder.wrapping(vmlinux, codec: codec).bytes())
        #expect(image.codec == codec)
        let kernel = try image.decompressedELF()
        #expect(kernel.bytes == vmlinux)
        #expect(kernel.pvhEntry == 0x100_0100)
        #expect(kernel.entry == VmlinuxBuilder.physicalBase)
        #expect(throws: LinuxBootError.decompressedTooLarge(codec: codec, limit: vmlinux.count - 1)) {
            try image.decompressedELF(limit: vmlinux.count - 1)
        }
    }

    @Test("unknown and guest-only codecs, non-ELF and corrupt payloads each have their error")
    func payloadErrors() throws {
        var unknown = BzImageBuilder()
        unknown.payload = [0xAB, 0xCD, 0xEF, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]
        let u = try BzImage(parsing: unknown.bytes())
        #expect(u.codec == nil)
        #expect(!u.canDecompressOnHost)
        #expect(throws: LinuxBootError.unknownCompression(magic: [0xAB, 0xCD, 0xEF, 0x01, 0x02, 0x03, 0x04, 0x05])) {
            try u.decompressedELF()
        }

        var bzip2 = BzImageBuilder()
        bzip2.payload = Array("BZh91AY&SY....".utf8)
        let z = try BzImage(parsing: bzip2.bytes())
        #expect(z.codec == .bzip2)
        #expect(!z.canDecompressOnHost)
        #expect(throws: LinuxBootError.unsupportedCompression(.bzip2)) { try z.decompressedELF() }

        let text = Array("not a kernel at all, just some text".utf8)
        let notELF = try BzImage(parsing: BzImageBuilder.wrapping(text, codec: .gzip).bytes())
        #expect(throws: LinuxBootError.payloadNotELF(magic: Array(text.prefix(8)))) { try notELF.decompressedELF() }

        var arm = VmlinuxBuilder()
        arm.machine = 183
        let armImage = try BzImage(parsing: BzImageBuilder.wrapping(arm.bytes(), codec: .zstd).bytes())
        #expect(throws: LinuxBootError.elf(.wrongMachine(183))) { try armImage.decompressedELF() }

        var corrupt = BzImageBuilder.wrapping(VmlinuxBuilder().bytes(), codec: .xz)
        corrupt.payload[corrupt.payload.count / 2] ^= 0x40
        let error = try #require(throws: LinuxBootError.self) { try BzImage(parsing: corrupt.bytes()).decompressedELF() }
        guard case .corruptPayload(.xz, _) = error else { Issue.record("\(error)"); return }
    }

    // MARK: Real kernels, when present (never required)

    /// Debian's kernels in /boot and the project's test kernel, if this machine has them.
    static let realKernels: [String] = {
        var paths = globPaths("/boot/vmlinuz-*")
        // SAFETY: getenv's string is copied into a String at once.
        if let home = unsafe getenv("HOME") {
            unsafe paths += globPaths(String(cString: home) + "/.cache/swiftvisor/test-kernel/*/bzImage")
        }
        return paths
    }()

    @Test(
        "real bzImages on this machine parse and decompress on the host to a loadable vmlinux",
        .enabled(if: !realKernels.isEmpty, "no kernel in /boot or the test-kernel cache"))
    func realKernel() throws {
        for path in Self.realKernels {
            let bytes = try #require(readFile(path), "cannot read \(path)")
            guard case .bzImage(let image) = try KernelImage.detect(bytes) else {
                Issue.record("\(path): not a bzImage"); continue
            }
            #expect(image.header.version >= 0x020C)
            #expect(image.header.extendedLoadFlags.contains(.kernel64))
            guard image.canDecompressOnHost else { continue }
            // init_size bounds what the kernel's own decompressor may produce.
            let kernel = try image.decompressedELF(limit: Int(image.header.initSize))
            let entry = try #require(kernel.physicalEntry, "\(path): entry not in a segment")
            #expect(entry >= 0x10_0000)
            let ram = try GuestMemory(size: (kernel.physicalRange.upperBound + 0xF_FFFF) & ~0xF_FFFF)
            try kernel.load(into: ram)
        }
    }
}

/// The paths matching a shell pattern, sorted; empty if none.
func globPaths(_ pattern: String) -> [String] {
    // SAFETY: glob fills `matches`, a local, with gl_pathc NUL-terminated paths, each copied
    // out before globfree releases them.
    var matches = unsafe glob_t()
    defer { unsafe globfree(&matches) }
    guard unsafe glob(pattern, 0, nil, &matches) == 0 else { return [] }
    return unsafe (0..<Int(matches.gl_pathc)).compactMap { i in unsafe matches.gl_pathv[i].map { unsafe String(cString: $0) } }
}

/// The whole file at `path`, or nil if it cannot be read.
func readFile(_ path: String) -> [UInt8]? {
    // SAFETY: one FILE, opened and closed here; fread writes at most count bytes into the
    // array, pinned for the call.
    guard let file = unsafe fopen(path, "rb") else { return nil }
    defer { unsafe fclose(file) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = unsafe fread(&chunk, 1, chunk.count, file)
        if n == 0 { break }
        out += chunk[0..<n]
    }
    return out
}
