/// A snapshot's state file: a header, then named sections, each with its own checksum.
///
/// ```
/// offset 0   magic "SVSNAPST" (8 bytes)
///        8   format version (UInt32, little-endian)
///        12  section count (UInt32)
///        16  sections, each: tag (byte string, at most 64 bytes, UTF-8),
///            length (UInt64), CRC-32C of tag, length and contents (UInt32), contents
/// ```
///
/// The format version changes whenever any section's layout changes; a reader accepts its
/// own version only. Guest memory is not in this file but in its own (see the README).
public struct SnapshotFile: Sendable, Equatable {
    /// The version this build writes and reads.
    public static let formatVersion: UInt32 = 1
    /// The first eight bytes of every state file.
    public static let magic: [UInt8] = Array("SVSNAPST".utf8)
    /// The most sections a file may hold, and the longest section: limits that keep a
    /// hostile file from making the reader allocate without bound.
    public static let maxSections = 4096
    public static let maxSectionBytes = 64 << 20

    /// One named part of the state.
    public struct Section: Sendable, Equatable {
        public var tag: String
        public var contents: [UInt8]

        public init(tag: String, contents: [UInt8]) {
            self.tag = tag
            self.contents = contents
        }
    }

    public var sections: [Section]

    public init(sections: [Section] = []) { self.sections = sections }

    /// Adds a section holding `value`'s encoding.
    public mutating func append(_ tag: String, _ value: some SnapshotCodable) {
        var writer = SnapshotWriter()
        value.encode(to: &writer)
        sections.append(Section(tag: tag, contents: writer.bytes))
    }

    /// The file's bytes.
    public func encoded() -> [UInt8] {
        var writer = SnapshotWriter(capacity: 16 + sections.reduce(0) { $0 + $1.contents.count + 96 })
        for byte in Self.magic { writer.write(byte) }
        writer.write(Self.formatVersion)
        writer.write(UInt32(sections.count))
        for section in sections {
            writer.write(string: section.tag)
            writer.write(UInt64(section.contents.count))
            writer.write(Self.checksum(tag: section.tag, contents: section.contents))
            for byte in section.contents { writer.write(byte) }
        }
        return writer.bytes
    }

    /// Reads a state file, checking its magic, version, every length and every checksum.
    /// `source` names the file in errors.
    public init(decoding bytes: [UInt8], source: String = "the file") throws(SnapshotError) {
        var reader = SnapshotReader(bytes)
        guard bytes.count >= Self.magic.count, Array(bytes[0..<Self.magic.count]) == Self.magic else {
            throw .notASnapshot(source)
        }
        for _ in Self.magic { _ = try reader.readUInt8("the magic") }
        let version = try reader.readUInt32("the format version")
        guard version == Self.formatVersion else {
            throw .unsupportedVersion(found: version, supported: Self.formatVersion)
        }
        let count = Int(try reader.readUInt32("the section count"))
        guard count <= Self.maxSections else {
            throw .invalid("the section count", reason: "is \(count), more than \(Self.maxSections)")
        }
        var sections: [Section] = []
        for index in 0..<count {
            let tag = try reader.readString("the tag of section \(index)", maxCount: 64)
            let length = try reader.readUInt64("the length of section '\(tag)'")
            guard length <= UInt64(Self.maxSectionBytes) else {
                throw .invalid("section '\(tag)'", reason: "claims \(length) bytes, more than \(Self.maxSectionBytes)")
            }
            let checksum = try reader.readUInt32("the checksum of section '\(tag)'")
            var contents: [UInt8] = []
            contents.reserveCapacity(Int(min(length, UInt64(reader.remaining))))
            for _ in 0..<Int(length) { contents.append(try reader.readUInt8("section '\(tag)'")) }
            guard Self.checksum(tag: tag, contents: contents) == checksum else { throw .checksumMismatch("section '\(tag)'") }
            guard !sections.contains(where: { $0.tag == tag }) else {
                throw .invalid("section '\(tag)'", reason: "appears twice")
            }
            sections.append(Section(tag: tag, contents: contents))
        }
        try reader.finish("the state file")
        self.sections = sections
    }

    /// The checksum of a section: its tag, its length and its contents, so a damaged tag
    /// or length is caught as surely as damaged contents.
    static func checksum(tag: String, contents: [UInt8]) -> UInt32 {
        var covered = SnapshotWriter(capacity: tag.utf8.count + 12 + contents.count)
        covered.write(string: tag)
        covered.write(UInt64(contents.count))
        return CRC32C.checksum(covered.bytes + contents)
    }

    /// Whether a section named `tag` exists.
    public func contains(_ tag: String) -> Bool { sections.contains { $0.tag == tag } }

    /// Decodes section `tag` as a `T`, which must consume it exactly.
    public func decode<T: SnapshotCodable>(_ tag: String, as type: T.Type = T.self) throws(SnapshotError) -> T {
        guard let section = sections.first(where: { $0.tag == tag }) else {
            throw .invalid("the state file", reason: "has no section '\(tag)'")
        }
        var reader = SnapshotReader(section.contents)
        let value = try T(from: &reader)
        try reader.finish("section '\(tag)'")
        return value
    }
}

/// CRC-32C (Castagnoli), the checksum of each section: it catches the truncations and bit
/// flips a damaged file has. It is not a signature: a snapshot is trusted as much as the
/// directory it sits in.
public enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { (n: UInt32) in
        var c = n
        for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// The checksum of `bytes`.
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        let table = Self.table
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
