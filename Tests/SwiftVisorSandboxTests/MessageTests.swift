import Testing

@testable import SwiftVisorSandbox

/// Encodes `value` with its tag.
func encoded<V: SandboxValue>(_ value: V) -> [UInt8] {
    var writer = SandboxMessageWriter(capacity: 64)
    writer.value(value)
    return writer.bytes
}

func decode<V: SandboxValue>(_ bytes: [UInt8], as type: V.Type) throws(SandboxMessageFault) -> V {
    var reader = SandboxMessageReader(bytes, count: bytes.count)
    let value = try reader.value(type)
    guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
    return value
}

@Suite("Sandbox messages: the value codec")
struct MessageTests {
    @Test("every value type round-trips with its tag")
    func roundTrips() throws {
        #expect(encoded(true) == [0x01, 1])
        #expect(encoded(Int32(-2)) == [0x02, 0xFE, 0xFF, 0xFF, 0xFF])
        #expect(encoded(-1) == [0x03] + [UInt8](repeating: 0xFF, count: 8))
        #expect(encoded(UInt32(7)) == [0x04, 7, 0, 0, 0])
        #expect(encoded(UInt64(1) << 63) == [0x05, 0, 0, 0, 0, 0, 0, 0, 0x80])
        #expect(encoded(Float(1)) == [0x06, 0, 0, 0x80, 0x3F])
        #expect(encoded("hé") == [0x08, 3, 0, 0, 0, 0x68, 0xC3, 0xA9])
        #expect(encoded([UInt8]([1, 2])) == [0x09, 2, 0, 0, 0, 1, 2])
        #expect(encoded([Int32(1), 2]) == [0x42, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0])
        #expect(encoded(["a", ""]) == [0x48, 2, 0, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0])
        #expect(encoded([[UInt8]([9])]) == [0x49, 1, 0, 0, 0, 1, 0, 0, 0, 9])
        #expect(try decode(encoded(3.25), as: Double.self) == 3.25)
        #expect(try decode(encoded(Int.min), as: Int.self) == Int.min)
        #expect(try decode(encoded(UInt.max), as: UInt.self) == UInt.max)
        #expect(try decode(encoded([true, false]), as: [Bool].self) == [true, false])
        #expect(try decode(encoded(["x", "yz"]), as: [String].self) == ["x", "yz"])
        #expect(try decode(encoded([[UInt8]([1]), []]), as: [[UInt8]].self) == [[1], []])
        #expect(try decode(encoded([Double.pi]), as: [Double].self) == [Double.pi])
    }

    @Test("every truncation of a message is refused, never read past")
    func truncations() {
        let messages: [[UInt8]] = [encoded(42), encoded("hello"), encoded([1, 2, 3] as [Int]), encoded(["ab", "c"])]
        for message in messages {
            for cut in 0..<message.count {
                let prefix = Array(message[0..<cut])
                #expect(throws: SandboxMessageFault.self) {
                    var reader = SandboxMessageReader(prefix, count: prefix.count)
                    try reader.skipValue()
                }
            }
        }
        #expect(throws: SandboxMessageFault.truncated(field: "an Int64")) { try decode([0x03, 1, 2], as: Int.self) }
    }

    @Test("bad tags and bad Bool bytes are refused")
    func badTags() {
        for tag: UInt8 in [0x0A, 0x3F, 0x40, 0x4A, 0x80, 0xC8, 0xFF] {
            #expect(throws: SandboxMessageFault.badTag(tag)) {
                var reader = SandboxMessageReader([tag, 0, 0, 0, 0], count: 5)
                try reader.skipValue()
            }
        }
        #expect(throws: SandboxMessageFault.badBool(2)) { try decode([0x01, 2], as: Bool.self) }
        #expect(throws: SandboxMessageFault.typeMismatch(expected: 0x03, found: 0x08)) {
            try decode(encoded("1"), as: Int.self)
        }
        #expect(throws: SandboxMessageFault.badTag(0x77)) { try decode([0x77], as: Int.self) }
    }

    @Test("bad UTF-8 in strings is refused: overlong, surrogates, stray continuation, cut sequences")
    func badUTF8() {
        let bad: [[UInt8]] = [[0xC0, 0xAF], [0xED, 0xA0, 0x80], [0x80], [0xE2, 0x82], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFF]]
        for bytes in bad {
            let message: [UInt8] = [0x08] + [UInt8(bytes.count), 0, 0, 0] + bytes
            #expect(throws: SandboxMessageFault.badUTF8(field: "a String")) { try decode(message, as: String.self) }
        }
        var names = SandboxMessageReader([2, 0, 0xC3, 0x28], count: 4)
        #expect(throws: SandboxMessageFault.self) { try names.name("a name") }
    }

    @Test("lengths and counts past the end are refused before anything is reserved")
    func countsPastTheEnd() {
        #expect(throws: SandboxMessageFault.pastEnd(field: "a String's length", count: 0xFFFF_FFFF)) {
            try decode([0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x61], as: String.self)
        }
        #expect(throws: SandboxMessageFault.pastEnd(field: "an array's count", count: 0x1000_0000)) {
            try decode([0x43, 0, 0, 0, 0x10, 1, 2, 3], as: [Int].self)
        }
        #expect(throws: SandboxMessageFault.pastEnd(field: "a byte array's length", count: 5)) {
            try decode([0x09, 5, 0, 0, 0, 1], as: [UInt8].self)
        }
        // A count that fits the bytes but whose elements do not.
        #expect(throws: SandboxMessageFault.self) { try decode([0x43, 1, 0, 0, 0, 1, 2, 3, 4], as: [Int].self) }
        #expect(throws: SandboxMessageFault.trailingBytes(1)) { try decode([0x01, 1, 0], as: Bool.self) }
    }

    @Test("a reader never reads past its count, even when the array is longer")
    func readerBounds() {
        let bytes: [UInt8] = [0x03, 1, 0, 0, 0, 0, 0, 0, 0]
        var reader = SandboxMessageReader(bytes, count: 5)
        #expect(throws: SandboxMessageFault.self) { try reader.value(Int.self) }
        var clamped = SandboxMessageReader([1], count: 1000)
        #expect(clamped.remaining == 1)
        #expect(throws: SandboxMessageFault.self) { try clamped.u16("x") }
    }

    @Test("names must be 1...255 bytes")
    func names() throws {
        var empty = SandboxMessageReader([0, 0], count: 2)
        #expect(throws: SandboxMessageFault.badNameLength(0)) { try empty.name("a name") }
        var long = SandboxMessageReader([0, 1] + [UInt8](repeating: 0x61, count: 256), count: 258)
        #expect(throws: SandboxMessageFault.badNameLength(256)) { try long.name("a name") }
        var fine = SandboxMessageReader([3, 0, 0x61, 0x62, 0x63], count: 5)
        #expect(try fine.name("a name") == "abc")
    }

    @Test("error messages are cut at a character boundary")
    func errorMessages() {
        var writer = SandboxMessageWriter(capacity: 16)
        writer.text16("aé", limit: 2)
        #expect(writer.bytes == [1, 0, 0x61])
        writer.hostError(4, "no")
        #expect(writer.bytes == [1, 4, 0, 2, 0, 0x6E, 0x6F])
    }

    @Test("the host-function adapter: arity, types, a throwing body, and malformed arguments")
    func hostInvoker() throws {
        let add = HostInvoker<Int, Int, Int>(name: "add") { a, b in a + b }
        var writer = SandboxMessageWriter(capacity: 64)
        var reader = SandboxMessageReader(encoded(2) + encoded(3), count: 18)
        try add.invoke(&reader, 2, &writer)
        #expect(writer.bytes == [0] + encoded(5))
        reader = SandboxMessageReader(encoded(2), count: 9)
        try add.invoke(&reader, 1, &writer)
        #expect(writer.bytes.prefix(3) == [1, 2, 0])
        reader = SandboxMessageReader(encoded("2") + encoded(3), count: 15)
        try add.invoke(&reader, 2, &writer)
        #expect(writer.bytes.prefix(3) == [1, 2, 0])
        reader = SandboxMessageReader([0x03, 1, 2], count: 3)
        #expect(throws: SandboxMessageFault.self) { try add.invoke(&reader, 2, &writer) }
        let fails = HostVoidInvoker<String>(name: "fail") { (_: String) throws in throw Failure() }
        reader = SandboxMessageReader(encoded("x"), count: 6)
        try fails.invoke(&reader, 1, &writer)
        #expect(writer.bytes == [1, 4, 0, 4, 0] + Array("nope".utf8))
    }
}

struct Failure: Error, CustomStringConvertible {
    var description: String { "nope" }
}
