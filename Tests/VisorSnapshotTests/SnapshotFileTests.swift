import Testing
import VisorSnapshot

private struct Sample: SnapshotCodable, Equatable {
    var a: UInt8, b: UInt16, c: UInt32, d: UInt64, e: Int64, f: Bool, g: [UInt8], h: String

    func encode(to writer: inout SnapshotWriter) {
        writer.write(a); writer.write(b); writer.write(c); writer.write(d); writer.write(e); writer.write(f)
        writer.write(bytes: g); writer.write(string: h)
    }

    init(a: UInt8, b: UInt16, c: UInt32, d: UInt64, e: Int64, f: Bool, g: [UInt8], h: String) {
        self.a = a; self.b = b; self.c = c; self.d = d; self.e = e; self.f = f; self.g = g; self.h = h
    }

    init(from reader: inout SnapshotReader) throws(SnapshotError) {
        a = try reader.readUInt8("a"); b = try reader.readUInt16("b"); c = try reader.readUInt32("c")
        d = try reader.readUInt64("d"); e = try reader.readInt64("e"); f = try reader.readBool("f")
        g = try reader.readBytes("g", maxCount: 16); h = try reader.readString("h", maxCount: 16)
    }
}

private let sample = Sample(
    a: 0xA5, b: 0xBEEF, c: 0xDEAD_BEEF, d: 0x0123_4567_89AB_CDEF, e: -2, f: true, g: [1, 2, 3], h: "vcpu")

@Suite struct SnapshotCodingTests {
    @Test func valuesRoundTripLittleEndian() throws {
        var writer = SnapshotWriter()
        writer.write(sample)
        #expect(Array(writer.bytes.prefix(7)) == [0xA5, 0xEF, 0xBE, 0xEF, 0xBE, 0xAD, 0xDE])
        var reader = SnapshotReader(writer.bytes)
        #expect(try reader.read(Sample.self) == sample)
        try reader.finish("sample")
    }

    @Test func everyTruncationIsAnErrorNotATrap() {
        var writer = SnapshotWriter()
        writer.write(sample)
        for length in 0..<writer.bytes.count {
            var reader = SnapshotReader(Array(writer.bytes.prefix(length)))
            #expect(throws: SnapshotError.self) { _ = try reader.read(Sample.self) }
        }
    }

    @Test func lengthsBeyondTheLimitAreRefused() {
        var writer = SnapshotWriter()
        writer.write(UInt32.max)  // a byte string claiming 4 GiB
        var reader = SnapshotReader(writer.bytes)
        #expect(throws: SnapshotError.invalid("g", reason: "is 4294967295 bytes long, more than the 16 allowed")) {
            _ = try reader.readBytes("g", maxCount: 16)
        }
    }

    @Test func badBooleansAndLeftOversAreRefused() {
        var reader = SnapshotReader([2, 0])
        #expect(throws: SnapshotError.invalid("flag", reason: "is 2, not a Boolean")) {
            _ = try reader.readBool("flag")
        }
        #expect(throws: SnapshotError.self) { try reader.finish("the flag") }
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }
}

@Suite struct SnapshotFileTests {
    private func sampleFile() -> SnapshotFile {
        var file = SnapshotFile()
        file.append("sample", sample)
        file.sections.append(.init(tag: "empty", contents: []))
        return file
    }

    @Test func fileRoundTrips() throws {
        let bytes = sampleFile().encoded()
        let decoded = try SnapshotFile(decoding: bytes)
        #expect(decoded == sampleFile())
        #expect(try decoded.decode("sample", as: Sample.self) == sample)
        #expect(throws: SnapshotError.invalid("the state file", reason: "has no section 'vcpu.0'")) {
            _ = try decoded.decode("vcpu.0", as: Sample.self)
        }
    }

    @Test func everyTruncatedFileIsRefused() {
        let bytes = sampleFile().encoded()
        for length in 0..<bytes.count {
            #expect(throws: SnapshotError.self) { _ = try SnapshotFile(decoding: Array(bytes.prefix(length))) }
        }
    }

    @Test func everyFlippedByteIsRefused() {
        let bytes = sampleFile().encoded()
        for index in bytes.indices {
            var damaged = bytes
            damaged[index] ^= 0x01
            // A flip in a length or count may still describe a well-formed file only if
            // every checksum still matches; none can here.
            #expect(throws: SnapshotError.self) { _ = try SnapshotFile(decoding: damaged) }
        }
    }

    @Test func otherVersionsAndForeignFilesAreRefusedByName() {
        var bytes = sampleFile().encoded()
        bytes[8] = 2
        #expect(throws: SnapshotError.unsupportedVersion(found: 2, supported: 1)) {
            _ = try SnapshotFile(decoding: bytes)
        }
        #expect(throws: SnapshotError.notASnapshot("disk.img")) {
            _ = try SnapshotFile(decoding: Array("\u{7F}ELF and more".utf8), source: "disk.img")
        }
        #expect(
            SnapshotError.unsupportedVersion(found: 2, supported: 1).description
                == "the snapshot has format version 2; this SwiftVisor reads version 1 only")
    }

    @Test func duplicateSectionsAndTrailingBytesAreRefused() {
        var file = SnapshotFile()
        file.append("sample", sample)
        file.append("sample", sample)
        #expect(throws: SnapshotError.invalid("section 'sample'", reason: "appears twice")) {
            _ = try SnapshotFile(decoding: file.encoded())
        }
        #expect(throws: SnapshotError.invalid("the state file", reason: "has 1 bytes left over")) {
            _ = try SnapshotFile(decoding: sampleFile().encoded() + [0])
        }
    }
}
