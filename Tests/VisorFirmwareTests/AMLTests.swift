import Testing
@testable import VisorFirmware

// Expected bytes are derived by hand from the ACPI 6.5 specification, chapter 20 (AML
// grammar) and section 6.4 (resource data types); each test says how.

@Suite("AML names")
struct AMLNameTests {
    @Test("a name segment is 4 bytes, padded with '_'")
    func nameSegments() throws {
        #expect(try AML.nameSegment("COM1") == [0x43, 0x4F, 0x4D, 0x31])
        #expect(try AML.nameSegment("_S5") == [0x5F, 0x53, 0x35, 0x5F])
        #expect(try AML.nameSegment("RTC") == [0x52, 0x54, 0x43, 0x5F])
        #expect(try AML.nameSegment("A") == [0x41, 0x5F, 0x5F, 0x5F])
        #expect(try AML.nameSegment("_") == [0x5F, 0x5F, 0x5F, 0x5F])
    }

    @Test(
        "invalid name segments are refused with a reason",
        arguments: ["", "ABCDE", "1ABC", "com1", "A-B", "AB C", "É"])
    func invalidSegments(name: String) {
        #expect(throws: AMLError.self) { try AML.nameSegment(name) }
    }

    @Test("name paths: root and parent prefixes, NameSeg, DualNamePath (0x2E), MultiNamePath (0x2F n), NullName")
    func namePaths() throws {
        let sb: [UInt8] = [0x5F, 0x53, 0x42, 0x5F], com1: [UInt8] = [0x43, 0x4F, 0x4D, 0x31]
        let pci0: [UInt8] = [0x50, 0x43, 0x49, 0x30]
        #expect(try AML.nameString("COM1") == com1)
        #expect(try AML.nameString("\\_SB") == [0x5C] + sb)
        #expect(try AML.nameString("\\_SB.COM1") == [0x5C, 0x2E] + sb + com1)
        #expect(try AML.nameString("_SB.PCI0.COM1") == [0x2F, 0x03] + sb + pci0 + com1)
        #expect(try AML.nameString("^^COM1") == [0x5E, 0x5E] + com1)
        #expect(try AML.nameString("\\") == [0x5C, 0x00])
        #expect(try AML.nameString("^") == [0x5E, 0x00])
    }

    @Test("invalid name paths are refused", arguments: ["", "A..B", "\\_SB.", ".A", "\\^A", "^\\A", "_SB.TOOLONG"])
    func invalidPaths(path: String) {
        #expect(throws: AMLError.self) { try AML.nameString(path) }
    }

    @Test("a name path holds at most 255 segments")
    func segmentLimit() throws {
        let path = Array(repeating: "A", count: 255).joined(separator: ".")
        let encoded = try AML.nameString(path)
        #expect(Array(encoded.prefix(2)) == [0x2F, 0xFF])
        #expect(encoded.count == 2 + 255 * 4)
        #expect(throws: AMLError.self) { try AML.nameString(path + ".B") }
    }

    @Test("EISA IDs: three 5-bit letters big-endian in 2 bytes, then the 4 hex digits as 2 bytes")
    func eisaIDs() throws {
        // P=0x10, N=0x0E, P=0x10: 10000 01110 10000 = 0x41D0 -> bytes 41 D0; "0501" -> 05 01.
        // As a little-endian DWORD: 0x0105D041.
        #expect(try AML.eisaID("PNP0501") == 0x0105_D041)
        #expect(try AML.eisaID("PNP0B00") == 0x000B_D041)
        #expect(try AML.eisaID("PNP0303") == 0x0303_D041)
        #expect(try AML.eisaID("PNP0b00") == 0x000B_D041, "hex digits in either case")
        // A=1, B=2, C=3: 00001 00010 00011 = 0x0443 -> 04 43; "1234" -> 12 34.
        #expect(try AML.eisaID("ABC1234") == 0x3412_4304)
        // In AML the ID is a DWordConst: 0C 41 D0 05 01.
        #expect(try AMLTerm.eisaID("PNP0501").encoded() == [0x0C, 0x41, 0xD0, 0x05, 0x01])
    }

    @Test("invalid EISA IDs are refused", arguments: ["PNP050", "PNP05011", "pnp0501", "PNP050G", "P1P0501", "@NP0501"])
    func invalidEISAIDs(id: String) {
        #expect(throws: AMLError.invalidEISAID(id)) { try AML.eisaID(id) }
    }
}

@Suite("AML package lengths and data")
struct AMLDataTests {
    // PkgLength counts its own bytes. One byte: bits 0-5 hold 0-63. Longer: bits 6-7 of the
    // lead byte = number of following bytes, bits 0-3 = low nibble, then 8 bits per byte.
    @Test(
        "package length: 1-byte form up to 63 in total",
        arguments: [(0, [0x01]), (1, [0x02]), (62, [0x3F])] as [(Int, [UInt8])])
    func oneByte(content: Int, expected: [UInt8]) throws {
        #expect(try AML.packageLength(contentLength: content) == expected)
    }

    @Test(
        "package length: 2-, 3- and 4-byte forms at their boundaries",
        arguments: [
            (63, [0x41, 0x04]),  // total 65 = 0x041
            (0xFFD, [0x4F, 0xFF]),  // total 0xFFF, the largest 2-byte form
            (0xFFE, [0x81, 0x00, 0x01]),  // total 0x1001
            (0xF_FFFC, [0x8F, 0xFF, 0xFF]),  // total 0xFFFFF, the largest 3-byte form
            (0xF_FFFD, [0xC1, 0x00, 0x00, 0x01]),  // total 0x100001
            (0xFFF_FFFB, [0xCF, 0xFF, 0xFF, 0xFF]),  // total 0xFFFFFFF, the largest
        ] as [(Int, [UInt8])])
    func multiByte(content: Int, expected: [UInt8]) throws {
        #expect(try AML.packageLength(contentLength: content) == expected)
    }

    @Test("package lengths beyond 2^28 - 1, or negative, are refused", arguments: [0xFFF_FFFC, -1])
    func tooLong(content: Int) {
        #expect(throws: AMLError.self) { try AML.packageLength(contentLength: content) }
    }

    @Test(
        "integers choose ZeroOp, OneOp, OnesOp or the smallest prefix",
        arguments: [
            (0, [0x00]), (1, [0x01]), (2, [0x0A, 0x02]), (0xFF, [0x0A, 0xFF]),
            (0x100, [0x0B, 0x00, 0x01]), (0xFFFF, [0x0B, 0xFF, 0xFF]),
            (0x1_0000, [0x0C, 0x00, 0x00, 0x01, 0x00]), (0xFFFF_FFFF, [0x0C, 0xFF, 0xFF, 0xFF, 0xFF]),
            (0x1_0000_0000, [0x0E, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]),
            (0x1234_5678_9ABC_DEF0, [0x0E, 0xF0, 0xDE, 0xBC, 0x9A, 0x78, 0x56, 0x34, 0x12]),
            (UInt64.max - 1, [0x0E, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            (UInt64.max, [0xFF]),
        ] as [(UInt64, [UInt8])])
    func integers(value: UInt64, expected: [UInt8]) throws {
        #expect(AML.integer(value) == expected)
        #expect(try AMLTerm.integer(value).encoded() == expected)
    }

    @Test("strings: StringPrefix 0x0D, ASCII bytes, NUL")
    func strings() throws {
        #expect(try AMLTerm.string("Hi").encoded() == [0x0D, 0x48, 0x69, 0x00])
        #expect(try AMLTerm.string("").encoded() == [0x0D, 0x00])
        #expect(throws: AMLError.self) { try AMLTerm.string("a\u{0}b").encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.string("café").encoded() }
    }

    @Test("buffers: BufferOp 0x11, PkgLength, BufferSize as an integer, the bytes")
    func buffers() throws {
        // Body = size (0A 03) + 3 bytes = 5 bytes; PkgLength = 6.
        #expect(try AMLTerm.buffer([1, 2, 3]).encoded() == [0x11, 0x06, 0x0A, 0x03, 0x01, 0x02, 0x03])
        // Body = ZeroOp; PkgLength = 2.
        #expect(try AMLTerm.buffer([]).encoded() == [0x11, 0x02, 0x00])
        // Body = 0A 64 + 100 bytes = 102; total 104 = 0x68 -> 2-byte form 48 06.
        let hundred = (0..<100).map { UInt8($0) }
        #expect(try AMLTerm.buffer(hundred).encoded() == [0x11, 0x48, 0x06, 0x0A, 0x64] + hundred)
    }

    @Test("packages: PackageOp 0x12, PkgLength, NumElements, elements; VarPackageOp 0x13 past 255")
    func packages() throws {
        // \_S5: 12, PkgLength 8, 4 elements: 0A 05, 0A 05, 00, 00.
        #expect(
            try AMLTerm.package([.integer(5), .integer(5), .integer(0), .integer(0)]).encoded()
                == [0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00])
        #expect(try AMLTerm.package([]).encoded() == [0x12, 0x02, 0x00])
        // Nested package and a name reference as elements.
        #expect(
            try AMLTerm.package([.package([.integer(1)]), .reference("\\_SB")]).encoded()
                == [0x12, 0x0B, 0x02, 0x12, 0x03, 0x01, 0x01, 0x5C, 0x5F, 0x53, 0x42, 0x5F])
        // 256 ZeroOps: body = VarNumElements (0B 00 01) + 256 = 259; total 261 = 0x105 -> 45 10.
        let big = try AMLTerm.package(Array(repeating: .integer(0), count: 256)).encoded()
        #expect(Array(big.prefix(6)) == [0x13, 0x45, 0x10, 0x0B, 0x00, 0x01])
        #expect(big.count == 6 + 256)
        // 255 elements still use PackageOp with a one-byte count.
        let most = try AMLTerm.package(Array(repeating: .integer(0), count: 255)).encoded()
        #expect(Array(most.prefix(4)) == [0x12, 0x42, 0x10, 0xFF])  // body 256, total 0x102
    }
}

@Suite("AML named objects and methods")
struct AMLObjectTests {
    @Test("Name(_S5_, Package(4){5, 5, 0, 0})")
    func s5() throws {
        #expect(
            try AMLTerm.name("_S5", .package([.integer(5), .integer(5), .integer(0), .integer(0)])).encoded()
                == [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00])
    }

    @Test("Scope: ScopeOp 0x10, PkgLength, NameString, terms")
    func scope() throws {
        #expect(try AMLTerm.scope("\\_SB", []).encoded() == [0x10, 0x06, 0x5C, 0x5F, 0x53, 0x42, 0x5F])
        #expect(
            try AMLTerm.scope("\\", [.name("X", .integer(1))]).encoded()
                == [0x10, 0x09, 0x5C, 0x00, 0x08, 0x58, 0x5F, 0x5F, 0x5F, 0x01])
    }

    @Test("Device: ExtOpPrefix 0x5B, DeviceOp 0x82, PkgLength, NameString, terms")
    func device() throws {
        // Name(_HID, EisaId("PNP0B00")) = 08 5F 48 49 44 0C 41 D0 0B 00 (10 bytes); body 14.
        let expected: [UInt8] = [
            0x5B, 0x82, 0x0F, 0x52, 0x54, 0x43, 0x5F,
            0x08, 0x5F, 0x48, 0x49, 0x44, 0x0C, 0x41, 0xD0, 0x0B, 0x00,
        ]
        #expect(try AMLTerm.device("RTC", [.name("_HID", .eisaID("PNP0B00"))]).encoded() == expected)
    }

    @Test("Method: MethodOp 0x14, PkgLength, NameString, flags (args | serialized << 3), terms; Return 0xA4")
    func methods() throws {
        #expect(
            try AMLTerm.method("_STA", serialized: true, [.return(.integer(0x0F))]).encoded()
                == [0x14, 0x09, 0x5F, 0x53, 0x54, 0x41, 0x08, 0xA4, 0x0A, 0x0F])
        #expect(
            try AMLTerm.method("FOO", arguments: 2, [.return(.argument(1))]).encoded()
                == [0x14, 0x08, 0x46, 0x4F, 0x4F, 0x5F, 0x02, 0xA4, 0x69])
        #expect(
            try AMLTerm.method("BAR", arguments: 7, serialized: true, [.return(.local(7))]).encoded()
                == [0x14, 0x08, 0x42, 0x41, 0x52, 0x5F, 0x0F, 0xA4, 0x67])
        #expect(
            Array(try AMLTerm.method("BAZ", [.return(.reference("\\_SB.COM1"))]).encoded().suffix(11))
                == [0xA4, 0x5C, 0x2E, 0x5F, 0x53, 0x42, 0x5F, 0x43, 0x4F, 0x4D, 0x31])
        #expect(try AMLTerm.method("ARG0", arguments: 1, [.return(.argument(0))]).encoded().last == 0x68)
        #expect(try AMLTerm.method("LOC0", [.return(.local(0))]).encoded().last == 0x60)
    }

    @Test("the same device as iasl 20200925 compiles it (its resource template checksum aside)")
    func deviceMatchesIASL() throws {
        // iasl's AML for:
        //   Device (COM1) {
        //     Name (_HID, EisaId ("PNP0501"))
        //     Name (_CRS, ResourceTemplate () { IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08) IRQNoFlags () {4} })
        //     Method (_STA, 0, Serialized) { Return (0x0F) }
        //   }
        // iasl writes 0 as the end tag's checksum ("treated as valid"); ours is the real one.
        let iasl: [UInt8] = [
            0x5B, 0x82, 0x2F, 0x43, 0x4F, 0x4D, 0x31, 0x08, 0x5F, 0x48, 0x49, 0x44, 0x0C, 0x41, 0xD0, 0x05,
            0x01, 0x08, 0x5F, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0A, 0x0D, 0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03,
            0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00, 0x14, 0x09, 0x5F, 0x53, 0x54, 0x41, 0x08, 0xA4, 0x0A,
            0x0F,
        ]
        var ours = try AMLTerm.device(
            "COM1",
            [
                .name("_HID", .eisaID("PNP0501")),
                .name("_CRS", .resourceTemplate([.ports(0x3F8, length: 8), .irq([4])])),
                .method("_STA", serialized: true, [.return(.integer(0x0F))]),
            ]
        ).encoded()
        let checksumAt = 38
        #expect(ours[checksumAt - 1] == 0x79)
        #expect(ours[26...checksumAt].reduce(0, &+) == 0, "the template sums to zero with our checksum")
        ours[checksumAt] = 0
        #expect(ours == iasl)
    }

    @Test("terms out of place are refused")
    func misplaced() throws {
        #expect(throws: AMLError.self) { try AMLTerm.encode(termList: [.integer(1)]) }
        #expect(throws: AMLError.self) { try AMLTerm.encode(termList: [.return(.integer(1))]) }
        #expect(throws: AMLError.self) { try AMLTerm.encode(termList: [.scope("\\_SB", [.return(.integer(1))])]) }
        #expect(throws: AMLError.self) { try AMLTerm.name("X", .reference("Y")).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.name("X", .argument(0)).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.name("X", .name("Y", .integer(1))).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.package([.local(0)]).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.method("M", [.return(.argument(7))]).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.method("M", [.return(.local(8))]).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.method("M", arguments: 8, []).encoded() }
        #expect(throws: AMLError.self) { try AMLTerm.method("M", [.return(.name("X", .integer(1)))]).encoded() }
        // A bare name as a statement is a call, which is allowed.
        #expect(try AMLTerm.encode(termList: [.reference("\\_SB.INIT")]).first == 0x5C)
    }

    @Test("errors carry one-line messages naming the value")
    func messages() {
        let errors: [AMLError] = [
            .invalidName("1AB", reason: "a name segment starts with A-Z or _"),
            .invalidString("é"), .invalidEISAID("PNP"),
            .outOfRange(what: "IRQ", value: 16, allowed: 0...15),
            .misplaced(term: "Return", context: "outside a method body"),
        ]
        for error in errors {
            #expect(!error.description.contains("\n"))
            #expect(!error.description.isEmpty)
        }
        #expect(AMLError.outOfRange(what: "IRQ", value: 16, allowed: 0...15).description.contains("16"))
    }
}

@Suite("AML resource templates")
struct AMLResourceTests {
    @Test("IO: tag 0x47, information (bit 0 = 16-bit decode), min, max, alignment, length")
    func io() throws {
        let bytes = try AML.resourceTemplate([.ports(0x3F8, length: 8)])
        #expect(Array(bytes.prefix(8)) == [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08])
        let tenBit = try AML.resourceTemplate([.io(minimum: 0x60, maximum: 0x64, alignment: 4, length: 1, decode16: false)])
        #expect(Array(tenBit.prefix(8)) == [0x47, 0x00, 0x60, 0x00, 0x64, 0x00, 0x04, 0x01])
    }

    @Test("IRQ: tag 0x22 with a 16-bit mask, or 0x23 with mask and flags")
    func irq() throws {
        #expect(Array(try AML.resourceTemplate([.irq([4])]).prefix(3)) == [0x22, 0x10, 0x00])
        #expect(
            Array(try AML.resourceTemplate([.memory32Fixed(base: 0xD000_1000, length: 0x1000)]).prefix(12))
                == [0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00])
        #expect(throws: AMLError.self) { try AML.resourceTemplate([.memory32Fixed(base: 0xFFFF_F000, length: 0x2000)]) }
        #expect(Array(try AML.resourceTemplate([.irq([1, 8, 15])]).prefix(3)) == [0x22, 0x02, 0x81])
        // Level (bit 0 clear), active low (bit 3), shared (bit 4): 0x18.
        #expect(
            Array(try AML.resourceTemplate([.irq([9], flags: [.activeLow, .shared])]).prefix(4))
                == [0x23, 0x00, 0x02, 0x18])
        #expect(
            Array(try AML.resourceTemplate([.irq([0], flags: [.edgeTriggered])]).prefix(4))
                == [0x23, 0x01, 0x00, 0x01])
    }

    @Test("the end tag 0x79 is followed by a checksum that makes the template sum to zero")
    func endTag() throws {
        // COM1: 47 01 F8 03 F8 03 01 08 | 22 10 00 | 79 sum 0x2F2 -> checksum 0x0E.
        let com1 = try AML.resourceTemplate([.ports(0x3F8, length: 8), .irq([4])])
        #expect(com1 == [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x0E])
        #expect(try AML.resourceTemplate([]) == [0x79, 0x87])
        for resources: [AMLResource] in [
            [.ports(0x70, length: 2), .irq([8])],
            [.ports(0x60, length: 1), .ports(0x64, length: 1), .irq([1])],
            [.irq([3, 5, 7], flags: [.shared, .wakeCapable])],
        ] {
            let bytes = try AML.resourceTemplate(resources)
            #expect(bytes.reduce(0, &+) == 0)
            #expect(bytes[bytes.count - 2] == 0x79)
        }
    }

    @Test("the template is a buffer in AML")
    func asBuffer() throws {
        // 11, PkgLength 16 (body 0A 0D + 13 bytes = 15), 0A 0D, then the 13 template bytes.
        let encoded = try AMLTerm.resourceTemplate([.ports(0x3F8, length: 8), .irq([4])]).encoded()
        #expect(Array(encoded.prefix(4)) == [0x11, 0x10, 0x0A, 0x0D])
        #expect(encoded.count == 4 + 13)
    }

    @Test("out-of-range descriptors are refused")
    func invalid() {
        #expect(throws: AMLError.self) { try AML.resourceTemplate([.irq([16])]) }
        #expect(throws: AMLError.self) { try AML.resourceTemplate([.irq([-1])]) }
        #expect(throws: AMLError.self) {
            try AML.resourceTemplate([.io(minimum: 0x100, maximum: 0xFF, alignment: 1, length: 1)])
        }
    }
}
