// The fuzz input as a stream of decisions, shared by every target.

/// Reads fuzz input as a stream of small decisions; past the end every read is 0, so any
/// input, even an empty one, is a complete program.
package struct ByteReader {
    private let data: [UInt8]
    private var position = 0

    package init(_ data: [UInt8]) { self.data = data }

    package var isAtEnd: Bool { position >= data.count }

    package mutating func byte() -> UInt8 {
        guard position < data.count else { return 0 }
        defer { position += 1 }
        return data[position]
    }

    package mutating func uint16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }
    package mutating func uint32() -> UInt32 { UInt32(uint16()) | UInt32(uint16()) << 16 }
    package mutating func uint64() -> UInt64 { UInt64(uint32()) | UInt64(uint32()) << 32 }

    /// Everything not read yet.
    package mutating func rest() -> [UInt8] {
        defer { position = data.count }
        return position < data.count ? Array(data[position...]) : []
    }
}
