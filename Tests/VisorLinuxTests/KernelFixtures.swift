@testable import VisorLinux
import TestSupport
import VisorLoader
import VisorMemory

/// Builders for synthetic kernels: bzImage-shaped files and vmlinux-shaped ELF files, plus
/// a seeded generator for the fuzz tests. Namespaced so the test target's other files keep
/// their names.
enum Fixture {
    /// Writes `value` little-endian at `offset`.
    static func put<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ offset: Int, _ value: T) {
        for i in 0..<(T.bitWidth / 8) { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    /// Reads a little-endian value at `offset`.
    static func get<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, as: T.Type = T.self) -> T {
        var value: T = 0
        for i in 0..<(T.bitWidth / 8) { value |= T(bytes[offset + i]) << (8 * i) }
        return value
    }

    /// `bytes` compressed with `codec` by the library, followed (except for gzip, whose
    /// ISIZE says the same) by the 4-byte little-endian size the kernel build appends.
    static func compress(_ bytes: [UInt8], _ codec: CompressionCodec, trailer: Bool = true) -> [UInt8] {
        guard var out = Decompressor.compress(bytes, codec: codec) else {
            fatalError("compressing \(bytes.count) bytes with \(codec) failed")
        }
        if trailer && codec != .gzip {
            let size = UInt32(truncatingIfNeeded: bytes.count)
            out += (0..<4).map { UInt8(truncatingIfNeeded: size >> (8 * $0)) }
        }
        return out
    }

    /// Bytes that compress but not to nothing: a counter pattern with some noise.
    static func sample(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
        var rng = LCG(state: seed)
        return (0..<count).map { i in i % 5 == 0 ? rng.byte() : UInt8(truncatingIfNeeded: i / 64) }
    }
}

/// A minimal bzImage: boot sector with the setup header, setup sectors holding a kernel
/// version string, then a protected-mode kernel of `codeBefore` filler bytes, the
/// payload, and `codeAfter` filler bytes. Every header field can be overridden.
struct BzImageBuilder {
    var setupSectorsField: UInt8 = 4
    var rootFlags: UInt16 = 1
    var bootFlag: UInt16 = 0xAA55
    var jump: UInt8 = 0xEB
    /// Header end = 0x202 + this: 0x26C, as protocol 2.15 kernels have it.
    var headerLengthByte: UInt8 = 0x6A
    var magic: UInt32 = 0x5372_6448
    var version: UInt16 = 0x020F
    var loadFlags: UInt8 = 0x81  // LOADED_HIGH | CAN_USE_HEAP
    var code32Start: UInt32 = 0x10_0000
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var kernelAlignment: UInt32 = 0x20_0000
    var relocatable: UInt8 = 1
    var minAlignment: UInt8 = 21
    var xloadflags: UInt16 = 0x0003  // KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
    var cmdlineSize: UInt32 = 2047
    var prefAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x200_0000
    var handoverOffset: UInt32 = 0x190
    var kernelInfoOffset: UInt32 = 0x1234
    var kernelVersion: String? = "6.1.0-swiftvisor-test (builder@fixture) #1 SMP"
    var codeBefore = 0x300
    var codeAfter = 0x40
    var payload: [UInt8] = [0x02, 0x21, 0x4C, 0x18, 0, 0, 0, 0]
    /// Defaults to the protected-mode kernel's size in 16-byte units, rounded up.
    var syssize: UInt32?
    /// Defaults to `codeBefore`.
    var payloadOffset: UInt32?
    /// Defaults to the payload's size.
    var payloadLength: UInt32?

    /// A header whose payload is `elf` compressed with `codec` (size trailer included).
    static func wrapping(_ elf: [UInt8], codec: CompressionCodec) -> BzImageBuilder {
        var b = BzImageBuilder()
        b.payload = Fixture.compress(elf, codec)
        return b
    }

    var setupSize: Int { (Int(setupSectorsField == 0 ? 4 : setupSectorsField) + 1) * 512 }

    func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: setupSize)
        Fixture.put(&out, 0, UInt16(0x5A4D))  // "MZ", as EFI-stub kernels start
        out[0x1F1] = setupSectorsField
        Fixture.put(&out, 0x1F2, rootFlags)
        Fixture.put(&out, 0x1FE, bootFlag)
        out[0x200] = jump
        out[0x201] = headerLengthByte
        Fixture.put(&out, 0x202, magic)
        Fixture.put(&out, 0x206, version)
        out[0x211] = loadFlags
        Fixture.put(&out, 0x214, code32Start)
        Fixture.put(&out, 0x22C, initrdAddrMax)
        Fixture.put(&out, 0x230, kernelAlignment)
        out[0x234] = relocatable
        out[0x235] = minAlignment
        Fixture.put(&out, 0x236, xloadflags)
        Fixture.put(&out, 0x238, cmdlineSize)
        Fixture.put(&out, 0x258, prefAddress)
        Fixture.put(&out, 0x260, initSize)
        Fixture.put(&out, 0x264, handoverOffset)
        Fixture.put(&out, 0x268, kernelInfoOffset)
        // Start of the setup code proper, after the header: a recognisable byte.
        if headerLengthByte >= 0x6A && headerLengthByte < 0x80 { out[0x202 + Int(headerLengthByte)] = 0xFA }  // cli
        if let kernelVersion {
            let at = 0x300
            Fixture.put(&out, 0x20E, UInt16(at - 0x200))
            out.replaceSubrange(at..<(at + kernelVersion.utf8.count), with: Array(kernelVersion.utf8))
        }
        let protectedMode = [UInt8](repeating: 0x90, count: codeBefore) + payload + [UInt8](repeating: 0xCC, count: codeAfter)
        let paddedCount = (protectedMode.count + 15) / 16 * 16
        Fixture.put(&out, 0x1F4, syssize ?? UInt32(paddedCount / 16))
        Fixture.put(&out, 0x248, payloadOffset ?? UInt32(codeBefore))
        Fixture.put(&out, 0x24C, payloadLength ?? UInt32(payload.count))
        return out + protectedMode + [UInt8](repeating: 0, count: paddedCount - protectedMode.count)
    }
}

/// One ELF note as written into a PT_NOTE segment (4-byte alignment).
struct ELFNote {
    var name: String
    var type: UInt32
    var desc: [UInt8]

    static func pvh(_ entry: UInt32) -> ELFNote {
        ELFNote(name: "Xen", type: 18, desc: (0..<4).map { UInt8(truncatingIfNeeded: entry >> (8 * $0)) })
    }
    /// The 8-byte form of Linux 6.1 (`_ASM_PTR`).
    static func pvh64(_ entry: UInt64) -> ELFNote {
        ELFNote(name: "Xen", type: 18, desc: (0..<8).map { UInt8(truncatingIfNeeded: entry >> (8 * $0)) })
    }

    var bytes: [UInt8] {
        func pad(_ b: [UInt8]) -> [UInt8] { b + [UInt8](repeating: 0, count: (4 - b.count % 4) % 4) }
        let nameBytes = Array(name.utf8) + [0]
        var out = [UInt8](repeating: 0, count: 12)
        Fixture.put(&out, 0, UInt32(nameBytes.count))
        Fixture.put(&out, 4, UInt32(desc.count))
        Fixture.put(&out, 8, type)
        return out + pad(nameBytes) + pad(desc)
    }
}

/// A vmlinux-shaped ELF: text linked at virtual 0xffffffff81000000 and physical 0x1000000,
/// data with BSS, a per-CPU segment at virtual 0, and a PT_NOTE segment with a build-id
/// note, a Xen version note and (optionally) the PVH entry note. The entry is physical.
struct VmlinuxBuilder {
    static let virtualBase: UInt64 = 0xFFFF_FFFF_8100_0000
    static let physicalBase: UInt64 = 0x100_0000

    var machine: UInt16 = 62
    var elfClass: UInt8 = 2
    var entry: UInt64 = physicalBase
    var notes: [ELFNote] = [
        ELFNote(name: "GNU", type: 3, desc: [UInt8](repeating: 0xB1, count: 20)),
        ELFNote(name: "Xen", type: 6, desc: Array("linux\0".utf8)),
        .pvh(0x100_0100),
    ]
    var text: [UInt8] = (0..<0x200).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    var data: [UInt8] = (0..<0x40).map { UInt8(truncatingIfNeeded: 0xD0 &+ $0) }
    var bssSize: UInt64 = 0x1000
    var percpu: [UInt8] = [UInt8](repeating: 0x5C, count: 0x20)

    /// (physical, virtual, file bytes, memory size, flags) of the PT_LOAD segments.
    var loads: [(phys: UInt64, virt: UInt64, bytes: [UInt8], memsz: UInt64, flags: UInt32)] {
        [
            (Self.physicalBase, Self.virtualBase, text, UInt64(text.count), 5),
            (Self.physicalBase + 0x20_0000, Self.virtualBase + 0x20_0000, data, UInt64(data.count) + bssSize, 6),
            (Self.physicalBase + 0x30_0000, 0, percpu, UInt64(percpu.count), 6),
        ]
    }

    func bytes() -> [UInt8] {
        let noteBytes = notes.flatMap(\.bytes)
        let phnum = loads.count + (notes.isEmpty ? 0 : 1)
        var out = [UInt8](repeating: 0, count: 64 + 56 * phnum)
        out.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        out[4] = elfClass
        out[5] = 1
        out[6] = 1
        Fixture.put(&out, 16, UInt16(2))  // ET_EXEC
        Fixture.put(&out, 18, machine)
        Fixture.put(&out, 20, UInt32(1))
        Fixture.put(&out, 24, entry)
        Fixture.put(&out, 32, UInt64(64))
        Fixture.put(&out, 52, UInt16(64))
        Fixture.put(&out, 54, UInt16(56))
        Fixture.put(&out, 56, UInt16(phnum))
        func header(
            _ index: Int, type: UInt32, flags: UInt32, offset: Int, virt: UInt64, phys: UInt64,
            filesz: Int, memsz: UInt64, align: UInt64, into out: inout [UInt8]
        ) {
            let at = 64 + 56 * index
            Fixture.put(&out, at, type)
            Fixture.put(&out, at + 4, flags)
            Fixture.put(&out, at + 8, UInt64(offset))
            Fixture.put(&out, at + 16, virt)
            Fixture.put(&out, at + 24, phys)
            Fixture.put(&out, at + 32, UInt64(filesz))
            Fixture.put(&out, at + 40, memsz)
            Fixture.put(&out, at + 48, align)
        }
        for (i, segment) in loads.enumerated() {
            while out.count % 0x100 != 0 { out.append(0) }
            header(
                i, type: 1, flags: segment.flags, offset: out.count, virt: segment.virt, phys: segment.phys,
                filesz: segment.bytes.count, memsz: segment.memsz, align: 0x20_0000, into: &out)
            out += segment.bytes
        }
        if !notes.isEmpty {
            while out.count % 4 != 0 { out.append(0) }
            header(
                loads.count, type: 4, flags: 4, offset: out.count, virt: Self.virtualBase + 0x10_0000,
                phys: Self.physicalBase + 0x10_0000, filesz: noteBytes.count, memsz: UInt64(noteBytes.count),
                align: 4, into: &out)
            out += noteBytes
        }
        return out
    }
}
