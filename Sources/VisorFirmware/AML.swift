// A small builder for ACPI Machine Language (AML), the byte code inside a DSDT.
//
// It covers what SwiftVisor's firmware tables need, encoded as the ACPI specification's
// chapter "ACPI Machine Language (AML) Specification" defines it: names and name paths,
// package lengths, integers, strings, buffers, packages, Name, Scope, Device, Method and
// Return, and resource templates with I/O port and IRQ descriptors.

/// An error from encoding AML. Each message names the offending value and what is allowed.
package enum AMLError: Error, Equatable, CustomStringConvertible {
    /// A name segment or path that AML cannot encode.
    case invalidName(String, reason: String)
    /// A string with a character outside ASCII 0x01-0x7F.
    case invalidString(String)
    /// An EISA ID that is not three letters A-Z followed by four hex digits.
    case invalidEISAID(String)
    /// A value outside what its encoding can hold.
    case outOfRange(what: String, value: Int, allowed: ClosedRange<Int>)
    /// A term used where AML does not allow it, e.g. an integer as a statement.
    case misplaced(term: String, context: String)

    package var description: String {
        switch self {
        case .invalidName(let name, let reason):
            "AML name \"\(name)\" is invalid: \(reason)"
        case .invalidString(let string):
            "AML string \"\(string)\" must contain only ASCII characters 0x01-0x7F"
        case .invalidEISAID(let id):
            "EISA ID \"\(id)\" must be three letters A-Z followed by four hex digits, like PNP0501"
        case .outOfRange(let what, let value, let allowed):
            "\(what) \(value) is out of range: AML allows \(allowed.lowerBound)...\(allowed.upperBound)"
        case .misplaced(let term, let context):
            "AML \(term) cannot appear \(context)"
        }
    }
}

/// One AML term: a data object, a named object, or a statement inside a method.
///
/// Terms form a tree; `encoded()` turns the tree into AML bytes and checks that each term
/// sits where AML allows it (a `Return` only inside a method, an integer only as a value).
package indirect enum AMLTerm: Sendable, Equatable {
    /// An integer; encoded as ZeroOp, OneOp, OnesOp or the smallest prefixed form.
    case integer(UInt64)
    /// A string of ASCII characters (without NUL), encoded with StringPrefix.
    case string(String)
    /// A buffer holding exactly these bytes.
    case buffer([UInt8])
    /// A package of values: integers, strings, buffers, packages or name references.
    case package([AMLTerm])
    /// `Name(name, value)`.
    case name(String, AMLTerm)
    /// `Scope(path) { terms }`.
    case scope(String, [AMLTerm])
    /// `Device(path) { terms }`.
    case device(String, [AMLTerm])
    /// `Method(path, arguments, Serialized|NotSerialized) { terms }`.
    case method(String, arguments: Int = 0, serialized: Bool = false, [AMLTerm])
    /// `Return(value)`, inside a method.
    case `return`(AMLTerm)
    /// `Arg0` to `Arg6`, inside a method.
    case argument(Int)
    /// `Local0` to `Local7`, inside a method.
    case local(Int)
    /// A name path used as a value (a reference) or as a statement (a call without arguments).
    case reference(String)

    /// `EisaId("PNP0501")`: the compressed 32-bit EISA ID as an integer.
    package static func eisaID(_ id: String) throws(AMLError) -> AMLTerm {
        .integer(UInt64(try AML.eisaID(id)))
    }

    /// `ResourceTemplate() { ... }`: a buffer holding the descriptors and an end tag.
    package static func resourceTemplate(_ resources: [AMLResource]) throws(AMLError) -> AMLTerm {
        .buffer(try AML.resourceTemplate(resources))
    }

    /// The AML bytes of this term, as it would appear in a definition block's term list
    /// (for named objects) or as a value (for data objects).
    package func encoded() throws(AMLError) -> [UInt8] {
        var out: [UInt8] = []
        let context: AML.Context =
            switch self {
            case .name, .scope, .device, .method, .reference: .termList(inMethod: false)
            case .return: .termList(inMethod: true)
            case .argument, .local: .termArg(inMethod: true)
            case .integer, .string, .buffer, .package: .dataObject
            }
        try encode(into: &out, context)
        return out
    }

    /// The AML bytes of a term list (the body of a definition block), outside any method.
    package static func encode(termList terms: [AMLTerm]) throws(AMLError) -> [UInt8] {
        var out: [UInt8] = []
        for term in terms { try term.encode(into: &out, .termList(inMethod: false)) }
        return out
    }

    var kind: String {
        switch self {
        case .integer: "integer"
        case .string: "string"
        case .buffer: "buffer"
        case .package: "package"
        case .name: "Name"
        case .scope: "Scope"
        case .device: "Device"
        case .method: "Method"
        case .return: "Return"
        case .argument: "Arg"
        case .local: "Local"
        case .reference: "name reference"
        }
    }

    func encode(into out: inout [UInt8], _ context: AML.Context) throws(AMLError) {
        switch self {
        case .integer(let value):
            try context.requireValue(self)
            out += AML.integer(value)

        case .string(let string):
            try context.requireValue(self)
            out.append(AML.stringPrefix)
            for byte in string.utf8 {
                guard byte >= 0x01, byte <= 0x7F else { throw .invalidString(string) }
                out.append(byte)
            }
            out.append(0x00)  // NullChar

        case .buffer(let bytes):
            try context.requireValue(self)
            // DefBuffer := BufferOp PkgLength BufferSize ByteList
            let body = AML.integer(UInt64(bytes.count)) + bytes
            out.append(AML.bufferOp)
            out += try AML.packageLength(contentLength: body.count)
            out += body

        case .package(let elements):
            try context.requireValue(self)
            var body: [UInt8] = []
            for element in elements { try element.encode(into: &body, .packageElement) }
            if elements.count <= 255 {
                // DefPackage := PackageOp PkgLength NumElements PackageElementList
                body.insert(UInt8(elements.count), at: 0)
                out.append(AML.packageOp)
            } else {
                // DefVarPackage := VarPackageOp PkgLength VarNumElements PackageElementList
                body.insert(contentsOf: AML.integer(UInt64(elements.count)), at: 0)
                out.append(AML.varPackageOp)
            }
            out += try AML.packageLength(contentLength: body.count)
            out += body

        case .name(let name, let value):
            try context.requireTermList(self)
            // DefName := NameOp NameString DataRefObject
            out.append(AML.nameOp)
            out += try AML.nameString(name)
            try value.encode(into: &out, .dataObject)

        case .scope(let path, let terms):
            try context.requireTermList(self)
            // DefScope := ScopeOp PkgLength NameString TermList
            var body = try AML.nameString(path)
            for term in terms { try term.encode(into: &body, .termList(inMethod: false)) }
            out.append(AML.scopeOp)
            out += try AML.packageLength(contentLength: body.count)
            out += body

        case .device(let path, let terms):
            try context.requireTermList(self)
            // DefDevice := DeviceOp PkgLength NameString TermList; DeviceOp := ExtOpPrefix 0x82
            var body = try AML.nameString(path)
            for term in terms { try term.encode(into: &body, .termList(inMethod: false)) }
            out += [AML.extOpPrefix, AML.deviceOp]
            out += try AML.packageLength(contentLength: body.count)
            out += body

        case .method(let path, let arguments, let serialized, let terms):
            try context.requireTermList(self)
            guard (0...7).contains(arguments) else {
                throw .outOfRange(what: "method argument count", value: arguments, allowed: 0...7)
            }
            // DefMethod := MethodOp PkgLength NameString MethodFlags TermList
            // MethodFlags: bits 0-2 ArgCount, bit 3 SerializeFlag, bits 4-7 SyncLevel (0 here).
            var body = try AML.nameString(path)
            body.append(UInt8(arguments) | (serialized ? 0x08 : 0x00))
            for term in terms { try term.encode(into: &body, .termList(inMethod: true)) }
            out.append(AML.methodOp)
            out += try AML.packageLength(contentLength: body.count)
            out += body

        case .return(let value):
            guard case .termList(inMethod: true) = context else {
                throw .misplaced(term: kind, context: "outside a method body")
            }
            // DefReturn := ReturnOp ArgObject
            out.append(AML.returnOp)
            try value.encode(into: &out, .termArg(inMethod: true))

        case .argument(let index):
            guard case .termArg(inMethod: true) = context else {
                throw .misplaced(term: "Arg\(index)", context: "outside an expression in a method body")
            }
            guard (0...6).contains(index) else { throw .outOfRange(what: "Arg index", value: index, allowed: 0...6) }
            out.append(AML.arg0Op + UInt8(index))

        case .local(let index):
            guard case .termArg(inMethod: true) = context else {
                throw .misplaced(term: "Local\(index)", context: "outside an expression in a method body")
            }
            guard (0...7).contains(index) else { throw .outOfRange(what: "Local index", value: index, allowed: 0...7) }
            out.append(AML.local0Op + UInt8(index))

        case .reference(let path):
            if case .dataObject = context {
                throw .misplaced(term: kind, context: "as the value of a Name (use a data object)")
            }
            out += try AML.nameString(path)
        }
    }
}

/// A descriptor inside a `ResourceTemplate` (small resource data types only).
package enum AMLResource: Sendable, Equatable {
    /// `IO(Decode16|Decode10, minimum, maximum, alignment, length)`: an I/O port range.
    case io(minimum: UInt16, maximum: UInt16, alignment: UInt8, length: UInt8, decode16: Bool = true)
    /// `IRQNoFlags() {irqs}` when `flags` is nil (edge-triggered, active high, exclusive),
    /// otherwise `IRQ(...) {irqs}` with the given flags. IRQ numbers are 0-15.
    case irq([Int], flags: IRQFlags? = nil)
    /// `Memory32Fixed(ReadWrite|ReadOnly, base, length)`: a fixed range of memory-mapped
    /// registers (a large resource item).
    case memory32Fixed(base: UInt32, length: UInt32, writable: Bool = true)

    /// A fixed I/O range of `length` ports at `base` (16-bit decode).
    package static func ports(_ base: UInt16, length: UInt8) -> AMLResource {
        .io(minimum: base, maximum: base, alignment: 1, length: length)
    }

    /// The information byte of an IRQ descriptor.
    package struct IRQFlags: OptionSet, Sendable, Equatable {
        package let rawValue: UInt8
        package init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Edge-triggered (clear: level-triggered).
        package static let edgeTriggered = IRQFlags(rawValue: 1 << 0)
        /// Active low (clear: active high).
        package static let activeLow = IRQFlags(rawValue: 1 << 3)
        /// Shared with other devices (clear: exclusive).
        package static let shared = IRQFlags(rawValue: 1 << 4)
        /// Capable of waking the system.
        package static let wakeCapable = IRQFlags(rawValue: 1 << 5)
    }
}

/// AML encodings of the primitive pieces, usable on their own.
package enum AML {
    static let zeroOp: UInt8 = 0x00
    static let oneOp: UInt8 = 0x01
    static let nameOp: UInt8 = 0x08
    static let bytePrefix: UInt8 = 0x0A
    static let wordPrefix: UInt8 = 0x0B
    static let dwordPrefix: UInt8 = 0x0C
    static let stringPrefix: UInt8 = 0x0D
    static let qwordPrefix: UInt8 = 0x0E
    static let scopeOp: UInt8 = 0x10
    static let bufferOp: UInt8 = 0x11
    static let packageOp: UInt8 = 0x12
    static let varPackageOp: UInt8 = 0x13
    static let methodOp: UInt8 = 0x14
    static let dualNamePrefix: UInt8 = 0x2E
    static let multiNamePrefix: UInt8 = 0x2F
    static let extOpPrefix: UInt8 = 0x5B
    static let deviceOp: UInt8 = 0x82  // after ExtOpPrefix
    static let rootChar: UInt8 = 0x5C  // '\'
    static let parentPrefixChar: UInt8 = 0x5E  // '^'
    static let local0Op: UInt8 = 0x60
    static let arg0Op: UInt8 = 0x68
    static let returnOp: UInt8 = 0xA4
    static let onesOp: UInt8 = 0xFF

    /// Where a term is being encoded, to reject terms AML does not allow there.
    enum Context {
        /// A TermList: the body of a definition block, scope, device or method.
        case termList(inMethod: Bool)
        /// A TermArg: an operand, such as the value of Return.
        case termArg(inMethod: Bool)
        /// A DataRefObject: the value of a Name.
        case dataObject
        /// A PackageElement: a data object or a name reference.
        case packageElement

        func requireValue(_ term: AMLTerm) throws(AMLError) {
            if case .termList = self { throw .misplaced(term: term.kind, context: "as a statement") }
        }

        func requireTermList(_ term: AMLTerm) throws(AMLError) {
            guard case .termList = self else { throw .misplaced(term: term.kind, context: "as a value") }
        }
    }

    /// A NameSeg: 1 to 4 characters, the first `A-Z` or `_`, the others `A-Z`, `0-9` or
    /// `_`, padded with `_` to 4 bytes ("RTC" -> "RTC_").
    package static func nameSegment(_ segment: String) throws(AMLError) -> [UInt8] {
        let bytes = Array(segment.utf8)
        guard (1...4).contains(bytes.count) else {
            throw .invalidName(segment, reason: "a name segment has 1 to 4 characters")
        }
        for (i, byte) in bytes.enumerated() {
            let isLead = (0x41...0x5A).contains(byte) || byte == 0x5F
            let isDigit = (0x30...0x39).contains(byte)
            guard isLead || (i > 0 && isDigit) else {
                throw .invalidName(
                    segment,
                    reason: i == 0
                        ? "a name segment starts with A-Z or _"
                        : "a name segment holds only A-Z, 0-9 and _ (upper case)")
            }
        }
        return bytes + Array(repeating: 0x5F, count: 4 - bytes.count)
    }

    /// A NameString: an optional root (`\`) or parent (`^`, repeatable) prefix, then
    /// dot-separated segments, encoded as NameSeg, DualNamePath, MultiNamePath or, for a
    /// bare prefix such as `\`, NullName.
    package static func nameString(_ path: String) throws(AMLError) -> [UInt8] {
        var rest = Substring(path)
        var out: [UInt8] = []
        if rest.first == "\\" {
            out.append(rootChar)
            rest = rest.dropFirst()
        } else {
            while rest.first == "^" {
                out.append(parentPrefixChar)
                rest = rest.dropFirst()
            }
        }
        if rest.isEmpty {
            guard !out.isEmpty else { throw .invalidName(path, reason: "a name path is not empty") }
            out.append(0x00)  // NullName
            return out
        }
        let segments = rest.split(separator: ".", omittingEmptySubsequences: false)
        guard segments.count <= 255 else {
            throw .invalidName(path, reason: "a name path has at most 255 segments")
        }
        var encoded: [UInt8] = []
        for segment in segments {
            guard !segment.isEmpty else { throw .invalidName(path, reason: "a name path has no empty segments") }
            encoded += try nameSegment(String(segment))
        }
        switch segments.count {
        case 1: break
        case 2: out.append(dualNamePrefix)
        default: out += [multiNamePrefix, UInt8(segments.count)]
        }
        return out + encoded
    }

    /// A PkgLength for a package whose contents after the PkgLength are `contentLength`
    /// bytes. The encoded length counts the PkgLength bytes themselves. One byte holds up
    /// to 63 in bits 0-5; otherwise bits 6-7 of the lead byte give the number of following
    /// bytes (1-3), bits 0-3 hold the low nibble, and each following byte the next 8 bits.
    package static func packageLength(contentLength: Int) throws(AMLError) -> [UInt8] {
        let limit = (1 << 28) - 1
        guard contentLength >= 0, contentLength + 4 <= limit else {
            throw .outOfRange(what: "package length", value: contentLength, allowed: 0...(limit - 4))
        }
        if contentLength + 1 <= 0x3F { return [UInt8(contentLength + 1)] }
        for following in 1...3 {
            let total = contentLength + 1 + following
            guard total < 1 << (4 + 8 * following) else { continue }
            var out = [UInt8(following << 6) | UInt8(total & 0x0F)]
            for i in 0..<following { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return out
        }
        // Unreachable: contentLength + 4 <= 2^28 - 1 always fits the 4-byte form above.
        throw .outOfRange(what: "package length", value: contentLength, allowed: 0...(limit - 4))
    }

    /// An integer as ZeroOp, OneOp, OnesOp (all 64 bits set, as in a revision-2 table) or
    /// the smallest of BytePrefix, WordPrefix, DWordPrefix and QWordPrefix.
    package static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: return [zeroOp]
        case 1: return [oneOp]
        case .max: return [onesOp]
        case 0...0xFF: return [bytePrefix, UInt8(value)]
        case 0...0xFFFF: return [wordPrefix] + littleEndian(value, bytes: 2)
        case 0...0xFFFF_FFFF: return [dwordPrefix] + littleEndian(value, bytes: 4)
        default: return [qwordPrefix] + littleEndian(value, bytes: 8)
        }
    }

    /// The compressed EISA ID of `id` (like ASL's `EisaId`): three letters, 5 bits each
    /// (letter - 0x40), packed big-endian into the first two bytes, then the four hex
    /// digits as the next two bytes; the result is those four bytes read little-endian.
    /// "PNP0501" gives bytes 41 D0 05 01, that is 0x0105D041.
    package static func eisaID(_ id: String) throws(AMLError) -> UInt32 {
        let chars = Array(id.utf8)
        guard chars.count == 7 else { throw .invalidEISAID(id) }
        var vendor: UInt16 = 0
        for c in chars[0..<3] {
            guard (0x41...0x5A).contains(c) else { throw .invalidEISAID(id) }
            vendor = vendor << 5 | UInt16(c - 0x40)
        }
        var product: UInt16 = 0
        for c in chars[3..<7] {
            let digit: UInt8
            switch c {
            case 0x30...0x39: digit = c - 0x30
            case 0x41...0x46: digit = c - 0x41 + 10
            case 0x61...0x66: digit = c - 0x61 + 10
            default: throw .invalidEISAID(id)
            }
            product = product << 4 | UInt16(digit)
        }
        let bytes = [UInt8(vendor >> 8), UInt8(vendor & 0xFF), UInt8(product >> 8), UInt8(product & 0xFF)]
        return bytes.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) }
    }

    /// The bytes of a resource template: each descriptor, then the end tag (0x79) and a
    /// checksum byte that makes the whole template sum to zero.
    package static func resourceTemplate(_ resources: [AMLResource]) throws(AMLError) -> [UInt8] {
        var out: [UInt8] = []
        for resource in resources {
            switch resource {
            case .io(let minimum, let maximum, let alignment, let length, let decode16):
                guard minimum <= maximum else {
                    throw .outOfRange(what: "I/O descriptor minimum", value: Int(minimum), allowed: 0...Int(maximum))
                }
                // Small item 0x08, length 7: information (bit 0: 16-bit decode), minimum,
                // maximum, alignment, length.
                out += [0x47, decode16 ? 0x01 : 0x00]
                out += littleEndian(UInt64(minimum), bytes: 2) + littleEndian(UInt64(maximum), bytes: 2)
                out += [alignment, length]
            case .irq(let irqs, let flags):
                var mask: UInt16 = 0
                for irq in irqs {
                    guard (0...15).contains(irq) else { throw .outOfRange(what: "IRQ", value: irq, allowed: 0...15) }
                    mask |= 1 << UInt16(irq)
                }
                // Small item 0x04, length 2 (mask) or 3 (mask, information).
                if let flags {
                    out += [0x23] + littleEndian(UInt64(mask), bytes: 2) + [flags.rawValue]
                } else {
                    out += [0x22] + littleEndian(UInt64(mask), bytes: 2)
                }
            case .memory32Fixed(let base, let length, let writable):
                guard UInt64(base) + UInt64(length) <= 1 << 32 else {
                    throw .outOfRange(what: "Memory32Fixed length", value: Int(length), allowed: 0...Int(UInt32.max - base))
                }
                // Large item 0x06, length 9: information (bit 0: read-write), base, length.
                out += [0x86, 0x09, 0x00, writable ? 0x01 : 0x00]
                out += littleEndian(UInt64(base), bytes: 4) + littleEndian(UInt64(length), bytes: 4)
            }
        }
        out.append(0x79)  // small item 0x0F (end tag), length 1
        out.append(0 &- out.reduce(0, &+))
        return out
    }

    static func littleEndian(_ value: UInt64, bytes: Int) -> [UInt8] {
        (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
}
