import SwiftVisorGuests
import Testing
@testable import VisorLoader

/// The Embedded Swift sandbox guests as `Guests/build.sh` links them: the shape ABI.md asks
/// of a sandbox image, checked without KVM.
@Suite("Embedded Swift sandbox guest images")
struct SandboxGuestImageTests {
    /// A PT_LOAD's flags and range, read straight from the program headers.
    struct Load: Equatable {
        var flags: UInt32
        var address: UInt64
        var memorySize: UInt64
    }

    /// The PT_LOAD headers of `bytes`, a 64-bit little-endian ELF file.
    func loads(_ bytes: [UInt8]) -> [Load] {
        func le(_ at: Int, _ count: Int) -> UInt64 {
            (0..<count).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
        }
        let tableOffset = Int(le(32, 8))
        let entrySize = Int(le(54, 2))
        let count = Int(le(56, 2))
        return (0..<count).compactMap { i in
            let at = tableOffset + i * entrySize
            guard le(at, 4) == 1 else { return nil }  // PT_LOAD
            return Load(flags: UInt32(le(at + 4, 4)), address: le(at + 16, 8), memorySize: le(at + 40, 8))
        }
    }

    @Test(
        "each is an ELF at 0x400000 with code R+X, constants R and data R+W on pages of their own",
        arguments: ["swift_example", "swift_hostile"])
    func shape(name: String) throws {
        let bytes = try #require(GuestImages.named(name))
        let image = try ELFImage(parsing: bytes)
        let segments = loads(bytes)
        #expect(segments.map(\.flags) == [5, 4, 6], "R+X, R, R+W")
        #expect(segments.allSatisfy { $0.flags & 3 != 3 }, "never writable and executable")
        #expect(segments.first?.address == 0x40_0000)
        #expect(segments.allSatisfy { $0.address % 4096 == 0 })
        for (lower, upper) in zip(segments, segments.dropFirst()) {
            #expect(lower.address + lower.memorySize <= upper.address, "segments share no page")
        }
        // The entry is the runtime's _start, the first thing in the text segment.
        #expect(image.entry == 0x40_0000)
        #expect(image.segments.first?.executable == true)
        // A few dozen KB: a bound that only a runaway build (an unstripped image, the whole
        // Unicode tables linked) crosses.
        #expect(bytes.count < 256 << 10, "\(bytes.count) bytes")
    }
}
