import FoundationEssentials

/// A JSON document as parsed, before any field is interpreted. Request bodies are parsed
/// into this first (by Foundation's JSON parser, not ours) so that every field can be
/// checked by name, with a message that names it: serde-style "unknown field", "missing
/// field" and "invalid type" answers, as Firecracker gives them.
package enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// An integer that fits in 64 bits (signed or unsigned).
    case integer(Int64)
    case unsigned(UInt64)
    /// Any other number: a fraction, an exponent or an integer beyond 64 bits.
    case number(Double)
    case string(String)
    case array([JSONValue])
    /// Members in order: as written by us, or sorted by key when parsed.
    case object([Member])

    package struct Member: Sendable, Equatable {
        package var key: String
        package var value: JSONValue
    }

    /// An object with members in the given order.
    package static func members(_ pairs: KeyValuePairs<String, JSONValue>) -> JSONValue {
        .object(pairs.map { Member(key: $0.key, value: $0.value) })
    }

    /// The value of member `key`, if this is an object that has it.
    package subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last(where: { $0.key == key })?.value
    }

    /// What serde calls the kind, for "invalid type" messages.
    var kind: String {
        switch self {
        case .null: "null"
        case .bool(let value): "boolean `\(value)`"
        case .integer(let value): "integer `\(value)`"
        case .unsigned(let value): "integer `\(value)`"
        case .number(let value): "floating point `\(value)`"
        case .string(let value): "string \"\(value.count > 64 ? String(value.prefix(64)) + "..." : value)\""
        case .array: "sequence"
        case .object: "map"
        }
    }
}

extension JSONValue: Decodable {
    package init(from decoder: any Decoder) throws {
        if var array = try? decoder.unkeyedContainer() {
            var elements: [JSONValue] = []
            while !array.isAtEnd { elements.append(try array.decode(JSONValue.self)) }
            self = .array(elements)
            return
        }
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            var members: [Member] = []
            for key in object.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
                members.append(Member(key: key.stringValue, value: try object.decode(JSONValue.self, forKey: key)))
            }
            self = .object(members)
            return
        }
        let single = try decoder.singleValueContainer()
        if single.decodeNil() {
            self = .null
        } else if let value = try? single.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? single.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? single.decode(UInt64.self) {
            self = .unsigned(value)
        } else if let value = try? single.decode(Double.self) {
            self = .number(value)
        } else {
            self = .string(try single.decode(String.self))
        }
    }
}

extension JSONValue {
    /// Compact JSON text, members in their order (Foundation's encoder would sort or shuffle
    /// them, and Firecracker's clients see its order). Strings are escaped per RFC 8259;
    /// slashes are left alone, as serde leaves them.
    package var text: [UInt8] {
        var out: [UInt8] = []
        write(to: &out)
        return out
    }

    private func write(to out: inout [UInt8]) {
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let value): out += Array((value ? "true" : "false").utf8)
        case .integer(let value): out += Array(String(value).utf8)
        case .unsigned(let value): out += Array(String(value).utf8)
        case .number(let value): out += Array((value.isFinite ? "\(value)" : "null").utf8)
        case .string(let value): Self.writeString(value, to: &out)
        case .array(let elements):
            out.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                element.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (index, member) in members.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(member.key, to: &out)
                out.append(UInt8(ascii: ":"))
                member.value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ value: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                out += Array("\\u00".utf8)
                out += [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

package enum JSON {
    /// Parses a request body. Empty, non-JSON and truncated bodies are refused with
    /// Firecracker's deserialisation wording.
    package static func parse(_ bytes: [UInt8]) throws(APIError) -> JSONValue {
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            throw .badRequest("An error occurred when deserializing the json body of a request: EOF while parsing a value.")
        }
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw .badRequest("An error occurred when deserializing the json body of a request: \(describe(error)).")
        } catch {
            throw .badRequest("An error occurred when deserializing the json body of a request: \(error).")
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context):
            let detail = (context.underlyingError.map { "\($0)" } ?? context.debugDescription)
            return "the body is not valid JSON (\(detail))"
        default:
            return "the body is not valid JSON"
        }
    }

}

/// Reads one JSON object's members by name, refusing unknown ones and values of the wrong
/// type, with messages that name the field. Each `Body` type lists its fields in order.
package struct FieldReader {
    private let members: [String: JSONValue]
    private let known: [String]
    private var deprecatedUsed: [String] = []

    /// - Parameter known: every field this object may have, in the order serde lists them.
    package init(_ value: JSONValue, known: [String]) throws(APIError) {
        guard case .object(let list) = value else {
            throw .badRequest(
                "An error occurred when deserializing the json body of a request: invalid type: \(value.kind), expected struct.")
        }
        var members: [String: JSONValue] = [:]
        for member in list { members[member.key] = member.value }
        for name in members.keys.sorted() where !known.contains(name) {
            throw .badRequest(
                "An error occurred when deserializing the json body of a request: unknown field `\(name)`, expected \(serdeList(known))."
            )
        }
        self.members = members
        self.known = known
    }

    package func has(_ name: String) -> Bool {
        if let value = members[name], value != .null { return true }
        return false
    }

    private func invalid(_ name: String, _ value: JSONValue, expected: String) -> APIError {
        .badRequest(
            "An error occurred when deserializing the json body of a request: invalid type for `\(name)`: \(value.kind), expected \(expected)."
        )
    }

    private func missing(_ name: String) -> APIError {
        .badRequest("An error occurred when deserializing the json body of a request: missing field `\(name)`.")
    }

    package func string(_ name: String) throws(APIError) -> String? {
        guard let value = members[name], value != .null else { return nil }
        guard case .string(let text) = value else { throw invalid(name, value, expected: "a string") }
        return text
    }

    package func requiredString(_ name: String) throws(APIError) -> String {
        guard let text = try string(name) else { throw missing(name) }
        return text
    }

    package func bool(_ name: String) throws(APIError) -> Bool? {
        guard let value = members[name], value != .null else { return nil }
        guard case .bool(let flag) = value else { throw invalid(name, value, expected: "a boolean") }
        return flag
    }

    package func requiredBool(_ name: String) throws(APIError) -> Bool {
        guard let flag = try bool(name) else { throw missing(name) }
        return flag
    }

    /// An unsigned integer no larger than `maximum`; negative, fractional and larger
    /// numbers are refused by name.
    package func unsigned(_ name: String, maximum: UInt64) throws(APIError) -> UInt64? {
        guard let value = members[name], value != .null else { return nil }
        let number: UInt64
        switch value {
        case .integer(let signed) where signed >= 0: number = UInt64(signed)
        case .unsigned(let big): number = big
        default: throw invalid(name, value, expected: "an unsigned integer")
        }
        guard number <= maximum else {
            throw .badRequest(
                "An error occurred when deserializing the json body of a request: invalid value for `\(name)`: integer `\(number)`, expected at most \(maximum)."
            )
        }
        return number
    }

    package func requiredUnsigned(_ name: String, maximum: UInt64) throws(APIError) -> UInt64 {
        guard let number = try unsigned(name, maximum: maximum) else { throw missing(name) }
        return number
    }

    /// A string that must be one of `cases`.
    package func enumeration(_ name: String, cases: [String]) throws(APIError) -> String? {
        guard let text = try string(name) else { return nil }
        guard cases.contains(text) else {
            throw .badRequest(
                "An error occurred when deserializing the json body of a request: unknown variant `\(text)` for `\(name)`, expected \(serdeList(cases))."
            )
        }
        return text
    }

    package func object(_ name: String) -> JSONValue? {
        guard let value = members[name], value != .null else { return nil }
        return value
    }
}

/// serde's way of listing what was expected: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
func serdeList(_ names: [String]) -> String {
    let quoted = names.map { "`\($0)`" }
    switch quoted.count {
    case 0: return "nothing"
    case 1: return quoted[0]
    case 2: return quoted[0] + " or " + quoted[1]
    default: return "one of " + quoted.joined(separator: ", ")
    }
}
