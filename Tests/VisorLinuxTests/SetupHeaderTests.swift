import Testing
@testable import VisorLinux
import VisorLoader

@Suite("Setup header and bzImage parsing")
struct SetupHeaderTests {
    @Test("every field of a protocol 2.15 header is read from its offset")
    func fields() throws {
        let b = BzImageBuilder()
        let bytes = b.bytes()
        let h = try SetupHeader(parsing: bytes)
        #expect(h.setupSectorsField == 4)
        #expect(h.setupSectors == 4)
        #expect(h.setupSize == 5 * 512)
        #expect(h.rootFlags == 1)
        #expect(h.syssize == UInt32((0x300 + b.payload.count + 0x40 + 15) / 16))
        #expect(h.version == 0x020F)
        #expect(h.versionString == "2.15")
        #expect(h.loadFlags == [.loadedHigh, .canUseHeap])
        #expect(h.code32Start == 0x10_0000)
        #expect(h.initrdAddressMax == 0x7FFF_FFFF)
        #expect(h.kernelAlignment == 0x20_0000)
        #expect(h.relocatable)
        #expect(h.minAlignmentLog2 == 21)
        #expect(h.extendedLoadFlags == [.kernel64, .canBeLoadedAbove4G])
        #expect(h.commandLineSize == 2047)
        #expect(h.payloadOffset == 0x300)
        #expect(h.payloadLength == UInt32(b.payload.count))
        #expect(h.preferredAddress == 0x100_0000)
        #expect(h.initSize == 0x200_0000)
        #expect(h.handoverOffset == 0x190)
        #expect(h.kernelInfoOffset == 0x1234)
        #expect(h.kernelVersionPointer == 0x100)
    }

    @Test("rawBytes are the file's bytes from 0x1F1 to the end the jump at 0x200 gives")
    func rawBytes() throws {
        var b = BzImageBuilder()
        let bytes = b.bytes()
        let h = try SetupHeader(parsing: bytes)
        #expect(h.headerEnd == 0x26C)
        #expect(h.rawBytes == Array(bytes[0x1F1..<0x26C]))
        #expect(h.rawBytes.count == 0x7B)
        // A longer header (a future protocol) is kept whole; the byte after it is not.
        b.headerLengthByte = 0x7E
        let longer = b.bytes()
        let h2 = try SetupHeader(parsing: longer)
        #expect(h2.rawBytes == Array(longer[0x1F1..<0x280]))
        #expect(h2.rawBytes.last == 0)
        #expect(longer[0x280] == 0xFA)
    }

    @Test("setup_sects 0 means 4; other values set the protected-mode kernel's offset")
    func setupSectors() throws {
        for (field, sectors) in [(UInt8(0), 4), (1, 1), (4, 4), (30, 30)] {
            var b = BzImageBuilder()
            b.setupSectorsField = field
            let image = try BzImage(parsing: b.bytes())
            #expect(image.header.setupSectors == sectors)
            #expect(image.setup.count == (sectors + 1) * 512)
            #expect(image.kernel.first == 0x90, "protected-mode kernel starts after \(sectors) sectors")
            #expect(Array(image.payload) == b.payload)
        }
    }

    @Test("kernel_info_offset is read only from protocol 2.15 on")
    func kernelInfoOnlyFrom215() throws {
        var b = BzImageBuilder()
        b.version = 0x020C
        b.headerLengthByte = 0x66  // a 2.12 header ends after handover_offset
        let h = try SetupHeader(parsing: b.bytes())
        #expect(h.version == 0x020C)
        #expect(h.kernelInfoOffset == 0)
        #expect(h.handoverOffset == 0x190)
        #expect(h.rawBytes.count == 0x268 - 0x1F1)
    }

    @Test("the kernel version string is read from the setup code, or nil if absent or binary")
    func kernelVersion() throws {
        let b = BzImageBuilder()
        #expect(try BzImage(parsing: b.bytes()).kernelVersion == b.kernelVersion)
        var none = BzImageBuilder()
        none.kernelVersion = nil
        #expect(try BzImage(parsing: none.bytes()).kernelVersion == nil)
        var binary = b.bytes()
        binary[0x301] = 0x01
        #expect(try BzImage(parsing: binary).kernelVersion == nil)
        var outside = b.bytes()
        Fixture.put(&outside, 0x20E, UInt16(0xFFFF))  // beyond the setup code
        #expect(try BzImage(parsing: outside).kernelVersion == nil)
    }

    // MARK: Validation errors, one test each

    @Test("a file too short for the header is truncated")
    func tooShort() {
        let bytes = Array(BzImageBuilder().bytes().prefix(0x100))
        #expect(throws: LinuxBootError.truncated(what: "the bzImage setup header", need: 0x206, have: 0x100)) {
            try SetupHeader(parsing: bytes)
        }
        let cut = Array(BzImageBuilder().bytes().prefix(0x240))
        #expect(throws: LinuxBootError.truncated(what: "the bzImage setup header", need: 0x26C, have: 0x240)) {
            try SetupHeader(parsing: cut)
        }
    }

    @Test("a wrong boot flag is rejected")
    func badBootFlag() {
        var b = BzImageBuilder()
        b.bootFlag = 0x55AA
        #expect(throws: LinuxBootError.invalidSetupHeader("boot flag at 0x1fe is 0x55aa, not 0xaa55")) {
            try SetupHeader(parsing: b.bytes())
        }
    }

    @Test("a missing HdrS signature is rejected")
    func noMagic() throws {
        var b = BzImageBuilder()
        b.magic = 0x5372_6449
        let error = try #require(throws: LinuxBootError.self) { try SetupHeader(parsing: b.bytes()) }
        guard case .invalidSetupHeader(let why) = error else { Issue.record("got \(error)"); return }
        #expect(why.contains("HdrS"))
    }

    @Test("protocols before 2.12 are too old; 2.12 itself is accepted")
    func oldProtocol() throws {
        var b = BzImageBuilder()
        b.version = 0x020B
        #expect(throws: LinuxBootError.protocolTooOld(version: 0x020B, minimum: 0x020C)) {
            try SetupHeader(parsing: b.bytes())
        }
        b.version = 0x0204
        #expect(throws: LinuxBootError.protocolTooOld(version: 0x0204, minimum: 0x020C)) {
            try SetupHeader(parsing: b.bytes())
        }
        b.version = 0x020C
        #expect(try SetupHeader(parsing: b.bytes()).version == 0x020C)
        #expect(LinuxBootError.protocolTooOld(version: 0x0209, minimum: 0x020C).description.contains("2.09"))
    }

    @Test("a header length outside 0x77...0x90 bytes, or no jump, is rejected")
    func headerLength() throws {
        for length in [UInt8(0x00), 0x65, 0x80, 0xFF] {
            var b = BzImageBuilder()
            b.headerLengthByte = length
            let error = try #require(throws: LinuxBootError.self) { try SetupHeader(parsing: b.bytes()) }
            guard case .invalidSetupHeader(let why) = error else { Issue.record("length byte \(length): \(error)"); continue }
            #expect(why.contains("header length"))
        }
        var b = BzImageBuilder()
        b.jump = 0xE9
        let error = try #require(throws: LinuxBootError.self) { try SetupHeader(parsing: b.bytes()) }
        #expect(error == .invalidSetupHeader("no short jump (0xeb) at 0x200 before the header fields"))
    }

    @Test("setup sectors running past the end of the file are truncation")
    func setupBeyondFile() {
        var b = BzImageBuilder()
        b.setupSectorsField = 4
        let bytes = Array(b.bytes().prefix(0x900))
        #expect(throws: LinuxBootError.truncated(what: "the real-mode setup code (4 sectors)", need: 0xA00, have: 0x900)) {
            try SetupHeader(parsing: bytes)
        }
    }

    @Test("a zImage (LOADED_HIGH clear) is rejected")
    func notLoadedHigh() {
        var b = BzImageBuilder()
        b.loadFlags = 0x80
        #expect(throws: LinuxBootError.notLoadedHigh) { try SetupHeader(parsing: b.bytes()) }
    }

    @Test("a kernel without the 64-bit entry (XLF_KERNEL_64 clear) is rejected")
    func no64BitEntry() {
        var b = BzImageBuilder()
        b.xloadflags = 0x0002
        #expect(throws: LinuxBootError.no64BitEntry) { try SetupHeader(parsing: b.bytes()) }
    }

    @Test("a relocatable kernel needs a power-of-two alignment; a fixed one may have any")
    func alignment() throws {
        for bad in [UInt32(0), 3, 0x30_0000] {
            var b = BzImageBuilder()
            b.kernelAlignment = bad
            #expect(throws: LinuxBootError.invalidKernelAlignment(bad)) { try SetupHeader(parsing: b.bytes()) }
        }
        var fixed = BzImageBuilder()
        fixed.relocatable = 0
        fixed.kernelAlignment = 3
        #expect(try SetupHeader(parsing: fixed.bytes()).relocatable == false)
    }

    @Test("syssize or the payload reaching past the file is truncation")
    func kernelBeyondFile() throws {
        var b = BzImageBuilder()
        let full = b.bytes()
        let kernelSize = full.count - b.setupSize
        b.syssize = UInt32(kernelSize / 16 + 1)
        #expect(
            throws: LinuxBootError.truncated(
                what: "the protected-mode kernel (syssize)",
                need: UInt64(full.count + 16), have: UInt64(full.count))
        ) {
            try BzImage(parsing: b.bytes())
        }
        b = BzImageBuilder()
        b.payloadLength = UInt32(b.payload.count + 0x100)
        #expect(
            throws: LinuxBootError.truncated(
                what: "the compressed kernel (payload_offset + payload_length)",
                need: UInt64(b.setupSize + 0x300 + b.payload.count + 0x100),
                have: UInt64(full.count))
        ) {
            try BzImage(parsing: b.bytes())
        }
        b = BzImageBuilder()
        b.payloadOffset = .max
        #expect(throws: LinuxBootError.self) { try BzImage(parsing: b.bytes()) }
        // Cutting a valid image anywhere after its header is truncation, never a trap.
        for cut in stride(from: 0x26C, to: full.count, by: 97) {
            let error = try #require(throws: LinuxBootError.self) { try BzImage(parsing: Array(full.prefix(cut))) }
            guard case .truncated = error else { Issue.record("cut at \(cut): \(error)"); continue }
        }
    }

    @Test("syssize 0 and payload_length 0 are invalid")
    func emptyParts() {
        var b = BzImageBuilder()
        b.syssize = 0
        #expect(throws: LinuxBootError.invalidSetupHeader("syssize is 0: there is no protected-mode kernel")) {
            try BzImage(parsing: b.bytes())
        }
        b = BzImageBuilder()
        b.payloadLength = 0
        #expect(throws: LinuxBootError.invalidSetupHeader("payload_length is 0: there is no compressed kernel")) {
            try BzImage(parsing: b.bytes())
        }
    }

    @Test("every error message is one non-empty line")
    func messages() {
        let all: [LinuxBootError] = [
            .notAKernel(magic: [0x23, 0x21]), .notAKernel(magic: []),
            .truncated(what: "x", need: 2, have: 1), .invalidSetupHeader("why"),
            .protocolTooOld(version: 0x0202, minimum: 0x020C), .notLoadedHigh, .no64BitEntry,
            .invalidKernelAlignment(3), .unknownCompression(magic: [1, 2, 3]), .unsupportedCompression(.bzip2),
            .corruptPayload(codec: .xz, reason: "bad"), .decompressedTooLarge(codec: .lz4, limit: 10),
            .decompressionBomb(codec: .zstd, payloadSize: 1024, ratio: 64),
            .payloadNotELF(magic: [0]), .elf(.notELF), .elf(.wrongMachine(3)),
            .initrdTooLarge(size: 10, available: 5), .commandLineTooLong(length: 3000, limit: 2047),
            .noPVHNote, .memoryTooSmall(needed: 2, have: 1), .file(path: "/k", reason: "gone"), .malformed("m"),
        ]
        for error in all {
            #expect(!error.description.isEmpty)
            #expect(!error.description.contains("\n"), "\(error)")
        }
        #expect(LinuxBootError.notAKernel(magic: [0x23, 0x21, 0x2F]).description.contains("23 21 2f"))
        #expect(LinuxBootError.unknownCompression(magic: [0xAB, 0x01]).description.contains("ab 01"))
        #expect(LinuxBootError.unknownCompression(magic: []).description.contains("--no-host-decompress"))
        #expect(LinuxBootError.elf(.wrongMachine(3)).description.contains("x86-64"))
    }
}
