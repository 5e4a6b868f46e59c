// The value types of the calling convention (Guests/sandbox/ABI.md, "Messages") and how
// Swift values map to them: the message writer and reader, and the conformances of the
// integer, floating-point, Bool, String and byte-array types and their arrays.

/// Why a message was refused: it ended early, had a bad tag, bad UTF-8, a count past its
/// end, or bytes left over. Every field is checked against the message's end before use.
public enum SandboxMessageFault: Error, Sendable, Equatable, CustomStringConvertible {
    /// The message ended inside `field`.
    case truncated(field: String)
    /// A type tag that is not in the convention.
    case badTag(UInt8)
    /// A value of one type where another was expected (tags given).
    case typeMismatch(expected: UInt8, found: UInt8)
    /// A Bool byte other than 0 or 1.
    case badBool(UInt8)
    /// Text that is not valid UTF-8.
    case badUTF8(field: String)
    /// A length or count that runs past the end of the message.
    case pastEnd(field: String, count: UInt64)
    /// Bytes after the last field.
    case trailingBytes(Int)
    /// A name of length 0 or above 255.
    case badNameLength(Int)

    public var description: String {
        switch self {
        case .truncated(let field): "the message ends inside \(field)"
        case .badTag(let tag): "unknown type tag 0x\(String(tag, radix: 16))"
        case .typeMismatch(let expected, let found):
            "a \(SandboxTypeName.of(found)) where a \(SandboxTypeName.of(expected)) was expected"
        case .badBool(let byte): "Bool byte \(byte) is neither 0 nor 1"
        case .badUTF8(let field): "\(field) is not valid UTF-8"
        case .pastEnd(let field, let count): "\(field) of \(count) runs past the end of the message"
        case .trailingBytes(let count): "\(count) bytes left over after the message"
        case .badNameLength(let length): "name length \(length) is not in 1...255"
        }
    }
}

/// Names of the convention's type tags, for messages.
enum SandboxTypeName {
    static func of(_ tag: UInt8) -> String {
        if tag & 0x40 != 0, tag != 0x40 { return "[\(of(tag & ~0x40))]" }
        switch tag {
        case 0x00: return "void"
        case 0x01: return "Bool"
        case 0x02: return "Int32"
        case 0x03: return "Int64"
        case 0x04: return "UInt32"
        case 0x05: return "UInt64"
        case 0x06: return "Float"
        case 0x07: return "Double"
        case 0x08: return "String"
        case 0x09: return "[UInt8]"
        default: return "tag 0x\(String(tag, radix: 16))"
        }
    }
}

/// Writes a message into a reusable buffer: appending keeps the buffer's capacity, so a
/// message of a size seen before allocates nothing.
public struct SandboxMessageWriter {
    package var bytes: [UInt8]

    package init(capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    package mutating func reset() { bytes.removeAll(keepingCapacity: true) }

    package mutating func u8(_ value: UInt8) { bytes.append(value) }
    package mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value))
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
    }
    package mutating func u32(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }
    package mutating func u64(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
    /// A `u32` length and the UTF-8 bytes of `text`.
    package mutating func text32(_ text: String) {
        let start = bytes.count
        u32(0)
        bytes.append(contentsOf: text.utf8)
        let length = UInt32(truncatingIfNeeded: bytes.count - start - 4)
        for i in 0..<4 { bytes[start + i] = UInt8(truncatingIfNeeded: length >> UInt32(8 * i)) }
    }
    /// A `u16` length and up to `limit` bytes of UTF-8 (a name or an error message), cut
    /// at a character boundary.
    package mutating func text16(_ text: String, limit: Int = 0xFFFF) {
        var length = 0
        for scalar in text.unicodeScalars {
            let size = UTF8.width(scalar)
            if length + size > limit { break }
            length += size
        }
        u16(UInt16(length))
        bytes.append(contentsOf: text.utf8.prefix(length))
    }
    /// A value: its tag, then its payload.
    package mutating func value<V: SandboxValue>(_ value: V) {
        u8(V.sandboxTypeTag)
        value.sandboxEncode(into: &self)
    }
}

/// Reads a message that the other side wrote: every read is checked against the end.
public struct SandboxMessageReader {
    package let bytes: [UInt8]
    package private(set) var position: Int
    package let end: Int
    /// The first fault of `valueOrNil`, after which it reads nothing more.
    package private(set) var failure: SandboxMessageFault? = nil

    /// A reader of `bytes[0..<count]` (count is clamped to the array).
    package init(_ bytes: [UInt8], count: Int) {
        self.bytes = bytes
        self.position = 0
        self.end = max(0, min(count, bytes.count))
    }

    package var remaining: Int { end - position }

    package mutating func take(_ count: Int, _ field: String) throws(SandboxMessageFault) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .truncated(field: field) }
        defer { position += count }
        return position..<(position + count)
    }
    package mutating func u8(_ field: String) throws(SandboxMessageFault) -> UInt8 {
        bytes[try take(1, field).lowerBound]
    }
    package mutating func u16(_ field: String) throws(SandboxMessageFault) -> UInt16 {
        let at = try take(2, field).lowerBound
        return UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }
    package mutating func u32(_ field: String) throws(SandboxMessageFault) -> UInt32 {
        let at = try take(4, field).lowerBound
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[at + i]) << UInt32(8 * i) }
        return v
    }
    package mutating func u64(_ field: String) throws(SandboxMessageFault) -> UInt64 {
        let at = try take(8, field).lowerBound
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[at + i]) << UInt64(8 * i) }
        return v
    }
    /// A length field and that many bytes after it; the length is checked against the end
    /// before anything is read.
    package mutating func lengthPrefixed(_ length: Int, _ field: String) throws(SandboxMessageFault) -> Range<Int> {
        guard length <= remaining else { throw .pastEnd(field: field, count: UInt64(length)) }
        return try take(length, field)
    }
    package mutating func text(_ range: Range<Int>, _ field: String) throws(SandboxMessageFault) -> String {
        guard let text = String(validating: bytes[range], as: UTF8.self) else { throw .badUTF8(field: field) }
        return text
    }
    /// A `name`: `u16` length (1...255), then UTF-8.
    package mutating func name(_ field: String) throws(SandboxMessageFault) -> String {
        let length = Int(try u16(field))
        guard length >= 1, length <= 255 else { throw .badNameLength(length) }
        return try text(try lengthPrefixed(length, field), field)
    }
    /// A tagged value of type `V`: a different tag is `.typeMismatch`, an unknown one `.badTag`.
    package mutating func value<V: SandboxValue>(_ type: V.Type) throws(SandboxMessageFault) -> V {
        let tag = try u8("a type tag")
        guard tag == V.sandboxTypeTag else {
            try Self.checkTag(tag)
            throw .typeMismatch(expected: V.sandboxTypeTag, found: tag)
        }
        return try V.sandboxDecode(from: &self)
    }
    /// As `value(_:)`, but records the fault in `failure` and returns nil (and reads nothing
    /// once a fault is recorded): for decoding a parameter pack, element by element.
    package mutating func valueOrNil<V: SandboxValue>(_ type: V.Type) -> V? {
        guard failure == nil else { return nil }
        do throws(SandboxMessageFault) { return try value(type) } catch {
            failure = error
            return nil
        }
    }

    /// Refuses tags outside the convention.
    package static func checkTag(_ tag: UInt8) throws(SandboxMessageFault) {
        let element = tag & ~0x40
        if tag & 0x40 != 0 {
            guard tag & 0x80 == 0, (0x01...0x09).contains(element) else { throw .badTag(tag) }
        } else {
            guard tag <= 0x09 else { throw .badTag(tag) }
        }
    }
    /// Skips a tagged value of any type, checking it as `value(_:)` would (for messages whose
    /// value the host does not want, and for tests).
    package mutating func skipValue() throws(SandboxMessageFault) {
        let tag = try u8("a type tag")
        try Self.checkTag(tag)
        if tag & 0x40 != 0 {
            let count = try u32("an array count")
            guard Int(count) <= remaining else { throw .pastEnd(field: "an array count", count: UInt64(count)) }
            for _ in 0..<count { try skipPayload(tag & ~0x40) }
        } else {
            try skipPayload(tag)
        }
    }
    private mutating func skipPayload(_ tag: UInt8) throws(SandboxMessageFault) {
        switch tag {
        case 0x00: return
        case 0x01: _ = try Bool.sandboxDecode(from: &self)
        case 0x02, 0x04, 0x06: _ = try take(4, SandboxTypeName.of(tag))
        case 0x03, 0x05, 0x07: _ = try take(8, SandboxTypeName.of(tag))
        case 0x08: _ = try String.sandboxDecode(from: &self)
        default: _ = try [UInt8].sandboxDecode(from: &self)
        }
    }
}

/// A Swift type that crosses the sandbox boundary as one of the convention's values:
/// `Bool`, `Int32`, `Int` and `Int64`, `UInt32`, `UInt` and `UInt64`, `Float`, `Double`,
/// `String`, `[UInt8]` (bytes), and arrays of any of these. Conform no other types: the
/// tags are the convention's, and a guest knows no others.
public protocol SandboxValue {
    /// The value's type tag.
    static var sandboxTypeTag: UInt8 { get }
    /// Writes the payload (without the tag).
    func sandboxEncode(into writer: inout SandboxMessageWriter)
    /// Reads a payload (the tag was read and matched).
    static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Self
}

/// A type whose arrays cross the boundary: the scalar value types, `String`, `[UInt8]`,
/// and `UInt8` itself (an array of which is the bytes type, tag 0x09).
public protocol SandboxArrayElement {
    /// The element's tag: an array of them has tag 0x40 | it; 0 marks `UInt8`.
    static var sandboxElementTag: UInt8 { get }
    func sandboxEncodeElement(into writer: inout SandboxMessageWriter)
    static func sandboxDecodeElement(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Self
}

extension SandboxArrayElement where Self: SandboxValue {
    public static var sandboxElementTag: UInt8 { sandboxTypeTag }
    public func sandboxEncodeElement(into writer: inout SandboxMessageWriter) { sandboxEncode(into: &writer) }
    public static func sandboxDecodeElement(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Self {
        try sandboxDecode(from: &reader)
    }
}

extension Bool: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x01 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u8(self ? 1 : 0) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Bool {
        let byte = try reader.u8("a Bool")
        guard byte <= 1 else { throw .badBool(byte) }
        return byte == 1
    }
}

extension Int32: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x02 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u32(UInt32(bitPattern: self)) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Int32 {
        Int32(bitPattern: try reader.u32("an Int32"))
    }
}

extension Int64: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x03 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u64(UInt64(bitPattern: self)) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Int64 {
        Int64(bitPattern: try reader.u64("an Int64"))
    }
}

extension Int: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x03 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u64(UInt64(bitPattern: Int64(self))) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Int {
        Int(Int64(bitPattern: try reader.u64("an Int64")))
    }
}

extension UInt32: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x04 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u32(self) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> UInt32 {
        try reader.u32("a UInt32")
    }
}

extension UInt64: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x05 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u64(self) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> UInt64 {
        try reader.u64("a UInt64")
    }
}

extension UInt: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x05 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u64(UInt64(self)) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> UInt {
        UInt(try reader.u64("a UInt64"))
    }
}

extension Float: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x06 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u32(bitPattern) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Float {
        Float(bitPattern: try reader.u32("a Float"))
    }
}

extension Double: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x07 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.u64(bitPattern) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> Double {
        Double(bitPattern: try reader.u64("a Double"))
    }
}

extension String: SandboxValue, SandboxArrayElement {
    public static var sandboxTypeTag: UInt8 { 0x08 }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) { writer.text32(self) }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> String {
        let length = try reader.u32("a String's length")
        guard length <= UInt32(reader.remaining) else { throw .pastEnd(field: "a String's length", count: UInt64(length)) }
        return try reader.text(try reader.take(Int(length), "a String"), "a String")
    }
}

extension UInt8: SandboxArrayElement {
    public static var sandboxElementTag: UInt8 { 0 }
    public func sandboxEncodeElement(into writer: inout SandboxMessageWriter) { writer.u8(self) }
    public static func sandboxDecodeElement(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> UInt8 {
        try reader.u8("a byte")
    }
}

extension Array: SandboxValue where Element: SandboxArrayElement {
    /// 0x09 for `[UInt8]` (bytes), else 0x40 | the element's tag.
    public static var sandboxTypeTag: UInt8 {
        Element.sandboxElementTag == 0 ? 0x09 : 0x40 | Element.sandboxElementTag
    }
    public func sandboxEncode(into writer: inout SandboxMessageWriter) {
        writer.u32(UInt32(truncatingIfNeeded: count))
        if let bytes = self as? [UInt8] {
            writer.bytes.append(contentsOf: bytes)
        } else {
            for element in self { element.sandboxEncodeElement(into: &writer) }
        }
    }
    public static func sandboxDecode(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> [Element] {
        let field = Element.sandboxElementTag == 0 ? "a byte array's length" : "an array's count"
        let count = Int(try reader.u32(field))
        // Every element takes at least one byte: a count beyond the rest is refused before
        // anything is reserved.
        guard count <= reader.remaining else { throw .pastEnd(field: field, count: UInt64(count)) }
        if Element.self == UInt8.self {
            let range = try reader.take(count, "a byte array")
            return [UInt8](reader.bytes[range]) as! [Element]
        }
        var result: [Element] = []
        result.reserveCapacity(count)
        for _ in 0..<count { result.append(try Element.sandboxDecodeElement(from: &reader)) }
        return result
    }
}

extension Array: SandboxArrayElement where Element == UInt8 {
    public static var sandboxElementTag: UInt8 { 0x09 }
    public func sandboxEncodeElement(into writer: inout SandboxMessageWriter) { sandboxEncode(into: &writer) }
    public static func sandboxDecodeElement(from reader: inout SandboxMessageReader) throws(SandboxMessageFault) -> [UInt8] {
        try sandboxDecode(from: &reader)
    }
}

/// Counts the arguments of a pack.
@inline(__always) func packCount<each A>(_ values: repeat each A) -> Int {
    var n = 0
    for _ in repeat each values { n += 1 }
    return n
}

@inline(__always) func packTypeCount<each A>(_ types: repeat (each A).Type) -> Int {
    var n = 0
    for _ in repeat each types { n += 1 }
    return n
}
