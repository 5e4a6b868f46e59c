import Testing
import VisorCore

@Suite("Byte sizes (--memory)")
struct ByteSizeTests {
    @Test(
        "sizes parse with units K, M, G, an optional B or iB, in decimal or hex",
        arguments: [
            ("64M", 64 << 20), ("1G", 1 << 30), ("512k", 512 << 10), ("4096", 4096), ("0x4000000", 64 << 20),
            ("1GiB", 1 << 30), ("2mb", 2 << 20), ("0", 0), ("17179869183G", 0xFFFF_FFFF_C000_0000),
        ] as [(String, UInt64)])
    func parse(text: String, bytes: UInt64) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test("malformed or too large sizes are refused", arguments: ["", "lots", "G", "1T", "0x", "-1M", "17179869184G", "1.5G"])
    func refused(text: String) {
        #expect(ByteSize(parsing: text) == nil)
    }

    @Test("the description uses the largest unit that divides the size, and parses back")
    func description() {
        for (bytes, text) in [(UInt64(512) << 20, "512M"), (1 << 30, "1G"), (1536 << 10, "1536K"), (4097, "4097"), (0, "0")] {
            #expect(ByteSize(bytes: bytes).description == text)
            #expect(ByteSize(parsing: text) == ByteSize(bytes: bytes))
        }
    }
}
