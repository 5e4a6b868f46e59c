/// The byte encoding of snapshot state: fixed-width little-endian integers, Booleans as one
/// byte, and byte strings with a 32-bit length before them. Every component that has state
/// to save writes it with a `SnapshotWriter` and reads it back with a `SnapshotReader`.
///
/// A snapshot file is as hostile as a guest: the reader checks every length against the
/// bytes that remain and against a limit its caller gives, and never traps.

/// Why a snapshot could not be read. Each message names the part and says what to do.
public enum SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bytes end inside `what`.
    case truncated(String)
    /// `what` holds a value the reader refuses, for `reason`.
    case invalid(String, reason: String)
    /// The stored checksum of `what` does not match its bytes.
    case checksumMismatch(String)
    /// The file is not a SwiftVisor snapshot (its magic bytes differ).
    case notASnapshot(String)
    /// The file was written in a format version this build does not read.
    case unsupportedVersion(found: UInt32, supported: UInt32)
    /// The snapshot needs something this host or build does not have.
    case incompatible(String)

    public var description: String {
        switch self {
        case .truncated(let what): "the snapshot is truncated: it ends inside \(what)"
        case .invalid(let what, let reason): "the snapshot is corrupt: \(what) \(reason)"
        case .checksumMismatch(let what):
            "the snapshot is corrupt: the checksum of \(what) does not match its contents"
        case .notASnapshot(let what): "\(what) is not a SwiftVisor snapshot"
        case .unsupportedVersion(let found, let supported):
            "the snapshot has format version \(found); this SwiftVisor reads version \(supported) only"
        case .incompatible(let reason): "the snapshot cannot be restored on this host: \(reason)"
        }
    }
}

/// Something whose state goes into a snapshot and comes back from one.
public protocol SnapshotCodable {
    /// Appends the state to `writer`.
    func encode(to writer: inout SnapshotWriter)
    /// Reads the state that `encode(to:)` wrote, checking every value.
    init(from reader: inout SnapshotReader) throws(SnapshotError)
}

/// A live component (a device) whose state a snapshot saves and a restore puts back into
/// a component built from the same configuration. `restoreState` checks everything before
/// it changes anything: on an error the component is as it was.
public protocol SnapshotStateful: AnyObject, Sendable {
    func saveState(to writer: inout SnapshotWriter)
    func restoreState(from reader: inout SnapshotReader) throws(SnapshotError)
}

/// Appends values to a growing byte array, little-endian.
public struct SnapshotWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: UInt8) { bytes.append(value) }
    public mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func write(_ value: UInt16) { writeLittleEndian(UInt64(value), count: 2) }
    public mutating func write(_ value: UInt32) { writeLittleEndian(UInt64(value), count: 4) }
    public mutating func write(_ value: UInt64) { writeLittleEndian(value, count: 8) }
    public mutating func write(_ value: Int64) { write(UInt64(bitPattern: value)) }

    /// Writes an optional byte: 0, or 1 and the byte.
    public mutating func write(optional value: UInt8?) {
        write(value != nil)
        if let value { write(value) }
    }

    /// Writes a byte string: its length as a 32-bit count, then the bytes.
    /// Precondition: fewer than 2^32 bytes (state is small; memory goes to its own file).
    public mutating func write<C: Collection<UInt8>>(bytes value: C) {
        precondition(value.count <= Int(UInt32.max), "a snapshot byte string is limited to 4 GiB")
        write(UInt32(value.count))
        bytes.append(contentsOf: value)
    }

    /// Writes a string as its UTF-8 bytes.
    public mutating func write(string value: String) { write(bytes: Array(value.utf8)) }

    /// Writes a value's encoding.
    public mutating func write(_ value: some SnapshotCodable) { value.encode(to: &self) }

    /// Writes a count, then each element.
    public mutating func write<E: SnapshotCodable>(array: [E]) {
        write(UInt32(array.count))
        for element in array { element.encode(to: &self) }
    }

    private mutating func writeLittleEndian(_ value: UInt64, count: Int) {
        for i in 0..<count { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }
}

/// Reads values from bytes that `SnapshotWriter` wrote, checking every length.
///
/// Each read names what it reads (`what`), so an error says which part of the snapshot is
/// short or wrong.
public struct SnapshotReader: Sendable {
    private let bytes: [UInt8]
    /// The index of the next byte to read, in `startIndex...endIndex`.
    public private(set) var position: Int
    private let end: Int

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        position = 0
        end = bytes.count
    }

    public init(_ slice: ArraySlice<UInt8>) { self.init(Array(slice)) }

    /// How many bytes remain.
    public var remaining: Int { end - position }
    /// Whether every byte has been read.
    public var isAtEnd: Bool { position == end }

    private mutating func take(_ count: Int, _ what: String) throws(SnapshotError) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .truncated(what) }
        defer { position += count }
        return position..<(position + count)
    }

    private mutating func readLittleEndian(_ count: Int, _ what: String) throws(SnapshotError) -> UInt64 {
        let range = try take(count, what)
        var value: UInt64 = 0
        for (shift, index) in range.enumerated() { value |= UInt64(bytes[index]) << (8 * UInt64(shift)) }
        return value
    }

    public mutating func readUInt8(_ what: String) throws(SnapshotError) -> UInt8 {
        bytes[try take(1, what).lowerBound]
    }

    /// Reads a byte whose set bits must all lie in `allowedBits` (a register with reserved bits).
    public mutating func readUInt8(_ what: String, allowedBits: UInt8) throws(SnapshotError) -> UInt8 {
        let value = try readUInt8(what)
        guard value & ~allowedBits == 0 else {
            throw .invalid(what, reason: "is 0x\(String(value, radix: 16)), which sets reserved bits")
        }
        return value
    }

    /// Reads a byte that is either 0 (nil) or 1 followed by the value.
    public mutating func readOptionalUInt8(_ what: String) throws(SnapshotError) -> UInt8? {
        try readBool("whether \(what) is present") ? try readUInt8(what) : nil
    }

    public mutating func readBool(_ what: String) throws(SnapshotError) -> Bool {
        switch try readUInt8(what) {
        case 0: return false
        case 1: return true
        case let other: throw .invalid(what, reason: "is \(other), not a Boolean")
        }
    }

    public mutating func readUInt16(_ what: String) throws(SnapshotError) -> UInt16 {
        UInt16(truncatingIfNeeded: try readLittleEndian(2, what))
    }

    public mutating func readUInt32(_ what: String) throws(SnapshotError) -> UInt32 {
        UInt32(truncatingIfNeeded: try readLittleEndian(4, what))
    }

    public mutating func readUInt64(_ what: String) throws(SnapshotError) -> UInt64 {
        try readLittleEndian(8, what)
    }

    public mutating func readInt64(_ what: String) throws(SnapshotError) -> Int64 {
        Int64(bitPattern: try readUInt64(what))
    }

    /// Reads a value that must be below `limit`, e.g. an index into a table of that size.
    public mutating func readUInt32(_ what: String, below limit: UInt32) throws(SnapshotError) -> UInt32 {
        let value = try readUInt32(what)
        guard value < limit else { throw .invalid(what, reason: "is \(value), beyond its limit \(limit - 1)") }
        return value
    }

    /// Reads a byte string of at most `maxCount` bytes.
    public mutating func readBytes(_ what: String, maxCount: Int) throws(SnapshotError) -> [UInt8] {
        let count = Int(try readUInt32("the length of \(what)"))
        guard count <= maxCount else {
            throw .invalid(what, reason: "is \(count) bytes long, more than the \(maxCount) allowed")
        }
        return Array(bytes[try take(count, what)])
    }

    /// Reads a byte string that must be exactly `count` bytes long.
    public mutating func readBytes(_ what: String, exactly count: Int) throws(SnapshotError) -> [UInt8] {
        let value = try readBytes(what, maxCount: count)
        guard value.count == count else {
            throw .invalid(what, reason: "is \(value.count) bytes long, not \(count)")
        }
        return value
    }

    /// Reads a UTF-8 string of at most `maxCount` bytes.
    public mutating func readString(_ what: String, maxCount: Int) throws(SnapshotError) -> String {
        let raw = try readBytes(what, maxCount: maxCount)
        guard let value = String(validating: raw, as: UTF8.self) else {
            throw .invalid(what, reason: "is not UTF-8")
        }
        return value
    }

    /// Reads a value's encoding.
    public mutating func read<T: SnapshotCodable>(_ type: T.Type = T.self) throws(SnapshotError) -> T {
        try T(from: &self)
    }

    /// Reads a count of at most `maxCount`, then each element.
    public mutating func readArray<E: SnapshotCodable>(_ what: String, maxCount: Int) throws(SnapshotError) -> [E] {
        let count = Int(try readUInt32("the count of \(what)"))
        guard count <= maxCount else {
            throw .invalid(what, reason: "has \(count) entries, more than the \(maxCount) allowed")
        }
        var result: [E] = []
        result.reserveCapacity(count)
        for _ in 0..<count { result.append(try E(from: &self)) }
        return result
    }

    /// Fails unless every byte was read: left-over bytes mean the writer and the reader
    /// disagree on the layout of `what`.
    public func finish(_ what: String) throws(SnapshotError) {
        guard isAtEnd else { throw .invalid(what, reason: "has \(remaining) bytes left over") }
    }
}
