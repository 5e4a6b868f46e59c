import Testing
import TestSupport
@testable import VisorLinux
import VisorLoader
import VisorMemory

/// Seeded mutation fuzzing of every parser a kernel file reaches: the setup header and
/// bzImage layout, the ELF and note walk with physical loading, and the decompressor front
/// end. Each mutant must parse or fail with a `LinuxBootError` (the typed throws make any
/// other error impossible); a trap ends the test process, so reaching the end is the check.
/// Swift's bounds-checked arrays turn any read outside the file into such a trap.
@Suite("Kernel images: mutation fuzzing")
struct KernelImageFuzzTests {
    /// Values that tend to break size and offset arithmetic.
    static let interesting: [UInt64] = [
        0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 0x3F, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x1F1, 0x200, 0x268, 0x26C, 0x300,
        0xFFF, 0x1000, 0xFFFF, 0x10000, 0x10_0000, 0x100_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFF0, 0xFFFF_FFFF,
        0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, UInt64.max - 0xFFF, UInt64.max,
    ]

    /// Offsets of the setup header fields a loader computes with.
    static let headerFields: [(offset: Int, size: Int)] = [
        (0x1F1, 1), (0x1F4, 4), (0x1FE, 2), (0x200, 1), (0x201, 1), (0x206, 2), (0x20E, 2), (0x211, 1),
        (0x22C, 4), (0x230, 4), (0x234, 1), (0x236, 2), (0x238, 4), (0x248, 4), (0x24C, 4), (0x258, 8),
        (0x260, 4), (0x268, 4),
    ]

    static func write(_ value: UInt64, size: Int, at offset: Int, into bytes: inout [UInt8]) {
        guard offset >= 0, offset + size <= bytes.count else { return }
        for i in 0..<size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    /// One to four mutations: bit flips (anywhere, or in `hot`), a field set to an
    /// interesting value, random bytes, truncation, or appended garbage.
    static func mutate(
        _ bytes: [UInt8], hot: Range<Int>, fields: [(offset: Int, size: Int)],
        _ rng: inout LCG
    ) -> [UInt8] {
        var out = bytes
        for _ in 0..<(1 + rng.below(4)) {
            guard !out.isEmpty else { break }
            switch rng.below(7) {
            case 0:
                let i = rng.below(out.count)
                out[i] ^= 1 << UInt8(rng.below(8))
            case 1:
                let i = hot.lowerBound + rng.below(hot.count)
                if i < out.count { out[i] ^= 1 << UInt8(rng.below(8)) }
            case 2, 3:
                let field = fields[rng.below(fields.count)]
                write(interesting[rng.below(interesting.count)], size: field.size, at: field.offset, into: &out)
            case 4:
                let i = hot.lowerBound + rng.below(hot.count)
                if i < out.count { out[i] = rng.byte() }
            case 5:
                out.removeLast(1 + rng.below(out.count))
            default:
                out += (0..<rng.below(64)).map { _ in rng.byte() }
            }
        }
        return out
    }

    @Test("3,000 mutants of a bzImage parse to consistent values or fail with a LinuxBootError")
    func bzImages() throws {
        let vmlinux = VmlinuxBuilder().bytes()
        let original = BzImageBuilder.wrapping(vmlinux, codec: .lz4).bytes()
        var rng = LCG(state: 0xB2_1A6E_0000_0001)
        var parsed = 0, decompressed = 0
        var errors = Set<String>()
        for round in 0..<3_000 {
            let bytes = Self.mutate(original, hot: 0x1F1..<0x300, fields: Self.headerFields, &rng)
            do {
                guard case .bzImage(let image) = try KernelImage.detect(bytes) else { continue }
                parsed += 1
                // What a loader reads must lie inside the file and agree with the header.
                let h = image.header
                #expect(h.rawBytes == Array(bytes[0x1F1..<h.headerEnd]))
                #expect(h.setupSize <= bytes.count)
                #expect(image.setup.count + image.kernel.count == bytes.count)
                #expect(image.payload.count == Int(h.payloadLength))
                #expect(image.payload.endIndex <= bytes.count)
                #expect(h.loadFlags.contains(.loadedHigh) && h.extendedLoadFlags.contains(.kernel64))
                _ = image.kernelVersion
                if round % 3 == 0 {
                    _ = try image.decompressedELF(limit: 1 << 20)
                    decompressed += 1
                }
            } catch {
                errors.insert(kind(error))
            }
        }
        // The mutations reached past the header checks, and into many distinct failures.
        #expect(parsed > 300, "\(parsed) mutants parsed")
        #expect(decompressed > 20, "\(decompressed) mutants decompressed")
        #expect(errors.count >= 8, "error kinds: \(errors.sorted())")
    }

    @Test("3,000 mutants of a vmlinux parse, find notes and load by physical address, or fail cleanly")
    func vmlinuxes() throws {
        let original = VmlinuxBuilder().bytes()
        // ELF header fields, the four program headers' fields, and the note headers.
        var fields: [(offset: Int, size: Int)] = [(4, 1), (5, 1), (16, 2), (18, 2), (24, 8), (32, 8), (54, 2), (56, 2)]
        for ph in 0..<4 {
            let at = 64 + 56 * ph
            fields += [(at, 4), (at + 4, 4), (at + 8, 8), (at + 16, 8), (at + 24, 8), (at + 32, 8), (at + 40, 8), (at + 48, 8)]
        }
        let notesAt = Int(Fixture.get(original, 64 + 56 * 3 + 8, as: UInt64.self))
        fields += [(notesAt, 4), (notesAt + 4, 4), (notesAt + 8, 4)]
        let ram = try guestRAM(24 << 20)
        var rng = LCG(state: 0xE1F0_0000_0000_0002)
        var parsed = 0, loaded = 0, withPVH = 0
        var errors = Set<String>()
        for _ in 0..<3_000 {
            let bytes = Self.mutate(original, hot: 0..<(64 + 56 * 4), fields: fields, &rng)
            do {
                guard case .elf(let kernel) = try KernelImage.detect(bytes) else { continue }
                parsed += 1
                if kernel.pvhEntry != nil { withPVH += 1 }
                _ = kernel.physicalEntry
                let range = try kernel.load(into: ram)
                loaded += 1
                // Whatever loaded lies in RAM, above the reserved first MiB.
                #expect(range.lowerBound >= 0x10_0000 && range.upperBound <= 24 << 20)
            } catch {
                errors.insert(kind(error))
            }
        }
        #expect(parsed > 500, "\(parsed) parsed")
        #expect(loaded > 100, "\(loaded) loaded")
        #expect(withPVH > 100, "\(withPVH) kept their PVH note")
        #expect(errors.count >= 6, "error kinds: \(errors.sorted())")
    }

    @Test(
        "mutated compressed streams of every codec decode within the limit or fail cleanly",
        arguments: [CompressionCodec.gzip, .xz, .lzma, .lz4, .zstd])
    func streams(codec: CompressionCodec) throws {
        let input = Fixture.sample(40_000, seed: 21)
        let original = Fixture.compress(input, codec)
        // Header bytes of every format sit in the first 32 bytes; the trailer in the last 4.
        let fields: [(offset: Int, size: Int)] = [
            (0, 4), (4, 4), (5, 8), (8, 4), (12, 4), (original.count - 4, 4),
            (original.count - 8, 4),
        ]
        var rng = LCG(state: 0xC0DE_C000_0000_0000 | UInt64(CompressionCodec.allCases.firstIndex(of: codec) ?? 0))
        var decoded = 0
        var errors = Set<String>()
        let rounds = codec == .xz || codec == .lzma ? 800 : 1_500
        for _ in 0..<rounds {
            let bytes = Self.mutate(original, hot: 0..<32, fields: fields, &rng)
            let limit = rng.below(2) == 0 ? 1 << 20 : rng.below(input.count + 1000)
            do {
                let output = try Decompressor.decompress(bytes[...], codec: codec, limit: limit)
                #expect(output.count <= limit)
                decoded += 1
            } catch {
                switch error {
                case .corruptPayload(codec, let reason):
                    #expect(!reason.isEmpty)
                    errors.insert("corrupt")
                case .decompressedTooLarge(codec, limit):
                    errors.insert("too large")
                default:
                    Issue.record("unexpected \(error)")
                }
            }
        }
        #expect(errors == ["corrupt", "too large"], "\(codec): \(errors)")
        #expect(decoded > 0, "\(codec): some mutants (trailer or padding changes) still decode")
    }

    /// The case name of an error, for counting distinct failures.
    func kind(_ error: LinuxBootError) -> String {
        String(describing: error).prefix { $0 != "(" && $0 != ":" }.description
            + ({ if case .elf(let e) = error { "/" + String(String(describing: e).prefix(20)) } else { "" } }())
    }
}
