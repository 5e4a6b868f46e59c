// The value types of ABI.md ("Messages", `value`): Bool, Int32, Int, UInt32, UInt, Float,
// Double, String, [UInt8], and arrays of each. Each type knows its tag and payload; no
// reflection: the generic export and host-call functions are specialized for the types a
// guest uses.

/// A type that can cross the call area: an argument or result of an exported function or a
/// host function.
protocol SandboxValue {
    /// The type's tag in a `value` (ABI.md).
    static var sandboxTag: UInt8 { get }
    /// Reads the payload that follows the tag.
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Self
    /// Writes the payload that follows the tag.
    func writePayload(to writer: inout MessageWriter) throws(MessageError)
}

/// A type whose arrays can cross the call area (`[Int]`, `[String]`, `[[UInt8]]`, ...), and
/// `UInt8`, whose array is the `bytes` type.
protocol SandboxArrayElement {
    /// The tag of an array of this type.
    static var sandboxArrayTag: UInt8 { get }
    /// The fewest payload bytes one element takes (so a count can be checked before reading).
    static var minimumPayloadSize: Int { get }
    static func readElement(from reader: inout MessageReader) throws(MessageError) -> Self
    func writeElement(to writer: inout MessageWriter) throws(MessageError)
    /// Reads `count` elements (already checked against the message's length).
    static func readElements(_ count: Int, from reader: inout MessageReader) throws(MessageError) -> [Self]
    /// Writes the elements of `array`, without the count.
    static func writeElements(_ array: [Self], to writer: inout MessageWriter) throws(MessageError)
}

extension SandboxArrayElement {
    static func readElements(_ count: Int, from reader: inout MessageReader) throws(MessageError) -> [Self] {
        var array: [Self] = []
        array.reserveCapacity(count)
        for _ in 0..<count { array.append(try readElement(from: &reader)) }
        return array
    }

    static func writeElements(_ array: [Self], to writer: inout MessageWriter) throws(MessageError) {
        for element in array { try element.writeElement(to: &writer) }
    }
}

extension SandboxArrayElement where Self: SandboxValue {
    static var sandboxArrayTag: UInt8 { 0x40 | sandboxTag }
    static func readElement(from reader: inout MessageReader) throws(MessageError) -> Self {
        try readPayload(from: &reader)
    }
    func writeElement(to writer: inout MessageWriter) throws(MessageError) {
        try writePayload(to: &writer)
    }
}

extension Array: SandboxValue where Element: SandboxArrayElement {
    static var sandboxTag: UInt8 { Element.sandboxArrayTag }

    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> [Element] {
        let count = try reader.count(minimumSize: Element.minimumPayloadSize)
        return try Element.readElements(count, from: &reader)
    }

    func writePayload(to writer: inout MessageWriter) throws(MessageError) {
        guard count <= Int(UInt32.max) else { throw MessageError("an array of \(count) elements is too long") }
        try writer.u32(UInt32(count))
        try Element.writeElements(self, to: &writer)
    }
}

/// `[UInt8]` is the `bytes` type (tag 0x09), and `[[UInt8]]` an array of it (0x49).
extension UInt8: SandboxArrayElement {
    static var sandboxArrayTag: UInt8 { 0x09 }
    static var minimumPayloadSize: Int { 1 }
    static func readElement(from reader: inout MessageReader) throws(MessageError) -> UInt8 { try reader.u8() }
    func writeElement(to writer: inout MessageWriter) throws(MessageError) { try writer.u8(self) }
    static func readElements(_ count: Int, from reader: inout MessageReader) throws(MessageError) -> [UInt8] {
        try reader.bytes(count)
    }
    static func writeElements(_ array: [UInt8], to writer: inout MessageWriter) throws(MessageError) {
        try writer.bytes(array)
    }
}

extension Array: SandboxArrayElement where Element == UInt8 {
    static var sandboxArrayTag: UInt8 { 0x49 }
    static var minimumPayloadSize: Int { 4 }
    static func readElement(from reader: inout MessageReader) throws(MessageError) -> [UInt8] {
        try readPayload(from: &reader)
    }
    func writeElement(to writer: inout MessageWriter) throws(MessageError) { try writePayload(to: &writer) }
}

extension Bool: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x01 }
    static var minimumPayloadSize: Int { 1 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Bool {
        switch try reader.u8() {
        case 0: return false
        case 1: return true
        case let byte: throw MessageError("a Bool is \(byte) (0 or 1 allowed)")
        }
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u8(self ? 1 : 0) }
}

extension Int32: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x02 }
    static var minimumPayloadSize: Int { 4 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Int32 {
        Int32(bitPattern: try reader.u32())
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u32(UInt32(bitPattern: self)) }
}

extension Int: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x03 }
    static var minimumPayloadSize: Int { 8 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Int {
        Int(Int64(bitPattern: try reader.u64()))
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) {
        try writer.u64(UInt64(bitPattern: Int64(self)))
    }
}

extension UInt32: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x04 }
    static var minimumPayloadSize: Int { 4 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> UInt32 { try reader.u32() }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u32(self) }
}

extension UInt: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x05 }
    static var minimumPayloadSize: Int { 8 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> UInt { UInt(try reader.u64()) }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u64(UInt64(self)) }
}

extension Float: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x06 }
    static var minimumPayloadSize: Int { 4 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Float {
        Float(bitPattern: try reader.u32())
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u32(bitPattern) }
}

extension Double: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x07 }
    static var minimumPayloadSize: Int { 8 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> Double {
        Double(bitPattern: try reader.u64())
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) { try writer.u64(bitPattern) }
}

extension String: SandboxValue, SandboxArrayElement {
    static var sandboxTag: UInt8 { 0x08 }
    static var minimumPayloadSize: Int { 4 }
    static func readPayload(from reader: inout MessageReader) throws(MessageError) -> String {
        let count = try reader.count(minimumSize: 1)
        return try reader.string(count)
    }
    func writePayload(to writer: inout MessageWriter) throws(MessageError) {
        let count = utf8.count
        guard count <= Int(UInt32.max) else { throw MessageError("a string of \(count) bytes is too long") }
        try writer.u32(UInt32(count))
        try writer.utf8(self)
    }
}

/// The name of the type with tag `tag`, for error messages: "Int", "[String]", "[UInt8]".
func typeName(tag: UInt8) -> String {
    switch tag {
    case 0x00: return "Void"
    case 0x01: return "Bool"
    case 0x02: return "Int32"
    case 0x03: return "Int"
    case 0x04: return "UInt32"
    case 0x05: return "UInt"
    case 0x06: return "Float"
    case 0x07: return "Double"
    case 0x08: return "String"
    case 0x09: return "[UInt8]"
    case 0x41...0x49: return "[" + typeName(tag: tag & 0x0F) + "]"
    default: return "an unknown type (tag \(tag))"
    }
}
