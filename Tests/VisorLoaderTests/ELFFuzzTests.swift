import Testing
import TestSupport
import VisorMemory
@testable import VisorLoader

@Suite("ELFImage: mutation fuzzing")
struct ELFFuzzTests {
    /// Values that tend to break size and offset arithmetic.
    static let interesting: [UInt64] = [
        0, 1, 55, 56, 57, 63, 64, 0x1F0, 0x200, 0x210, 0x218, 0xFFFF, 0x10_0000, 0x1F_FFFF, 0x20_0000,
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
        UInt64.max - 0x1000, UInt64.max - 1, UInt64.max,
    ]

    /// One mutation of `bytes`: byte flips, random bytes in the headers, field overwrites
    /// with interesting values, truncation, or appended garbage.
    static func mutate(_ bytes: [UInt8], _ rng: inout LCG) -> [UInt8] {
        var out = bytes
        let rounds = 1 + rng.below(4)
        for _ in 0..<rounds {
            guard !out.isEmpty else { break }
            switch rng.below(6) {
            case 0:  // flip one bit anywhere
                let i = rng.below(out.count)
                out[i] ^= 1 << UInt8(rng.below(8))
            case 1:  // random byte in the ELF and program headers
                let i = rng.below(min(out.count, 64 + 3 * 56))
                out[i] = rng.byte()
            case 2:  // an interesting 8-byte value at an 8-aligned header offset
                let slots = (min(out.count, 64 + 3 * 56) - 8) / 8
                guard slots > 0 else { break }
                let at = 8 * rng.below(slots + 1)
                put(&out, at, interesting[rng.below(interesting.count)])
            case 3:  // an interesting 2-byte value in the ELF header's small fields
                let at = [16, 18, 52, 54, 56, 58, 60, 62][rng.below(8)]
                guard out.count >= at + 2 else { break }
                put(&out, at, UInt16(truncatingIfNeeded: interesting[rng.below(interesting.count)]))
            case 4:  // truncate
                out.removeLast(rng.below(out.count) + 1)
            default:  // append garbage
                out += (0..<rng.below(64)).map { _ in rng.byte() }
            }
        }
        return out
    }

    @Test("2,000 mutations of a valid ELF each parse or throw a LoaderError, and loading never traps")
    func mutations() throws {
        let original = ELFBuilder.valid().bytes()
        var rng = LCG(state: 0x5EED_1234_ABCD_0001)
        // Small RAM: the valid image's segments sit at 2 MiB, so most mutants fall outside.
        let ram = try GuestMemory(size: 3 << 20)
        var parsed = 0, loaded = 0, parseErrors = 0, loadErrors = 0
        var errorKinds = Set<String>()
        for _ in 0..<2_000 {
            let bytes = Self.mutate(original, &rng)
            let image: ELFImage
            do {
                image = try ELFImage(parsing: bytes)
            } catch {
                parseErrors += 1
                errorKinds.insert(String(describing: error).prefix(while: { $0 != "(" }).description)
                continue
            }
            parsed += 1
            #expect(!image.segments.isEmpty)
            for s in image.segments {
                #expect(s.fileSize <= s.memorySize)
                #expect(s.fileOffset + s.fileSize <= UInt64(bytes.count))
                #expect(s.physicalAddress <= UInt64.max - s.memorySize)
            }
            do {
                try image.load(bytes, into: ram, reservedEnd: 0x10_0000)
                loaded += 1
            } catch {
                loadErrors += 1
                errorKinds.insert(String(describing: error).prefix(while: { $0 != "(" }).description)
            }
        }
        #expect(parsed + parseErrors == 2_000)
        #expect(loaded + loadErrors == parsed)
        // The mutations must exercise both outcomes and several error paths.
        #expect(loaded > 50, "loaded \(loaded)")
        #expect(parseErrors > 200, "parse errors \(parseErrors)")
        #expect(loadErrors > 20, "load errors \(loadErrors)")
        #expect(errorKinds.count >= 6, "error kinds: \(errorKinds.sorted())")
    }

    @Test("random bytes behind a valid magic and a valid ELF header never trap")
    func randomBodies() {
        var rng = LCG(state: 42)
        let header = Array(ELFBuilder.valid().bytes().prefix(64))
        var outcomes = [0, 0]
        for i in 0..<500 {
            let body = (0..<rng.below(400)).map { _ in rng.byte() }
            let bytes = (i % 2 == 0 ? header : Array(header.prefix(4))) + body
            do {
                _ = try ELFImage(parsing: bytes)
                outcomes[0] += 1
            } catch {
                outcomes[1] += 1
            }
        }
        #expect(outcomes[0] + outcomes[1] == 500)
        #expect(outcomes[1] > 0)
    }
}
