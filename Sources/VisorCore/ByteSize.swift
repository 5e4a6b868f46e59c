/// A size in bytes as the command line writes it: `64M`, `1G`, `512K`, `4096` or
/// `0x4000000` (K, M and G are powers of 1024; a trailing `B` or `iB` is allowed, and case
/// does not matter). `description` writes it back in the largest unit that divides it.
public struct ByteSize: Sendable, Equatable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    /// Parses a size; nil when it is not a decimal or 0x-hex number with an optional unit,
    /// or when the number times its unit does not fit 64 bits.
    public init?(parsing text: String) {
        var text = text.uppercased()
        if text.hasSuffix("IB") { text.removeLast(2) } else if text.hasSuffix("B") { text.removeLast() }
        var shift: UInt64 = 0
        switch text.last {
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        default: break
        }
        if shift > 0 { text.removeLast() }
        guard let value = parseNumber64(text), value <= UInt64.max >> shift else { return nil }
        bytes = value << shift
    }

    /// The size in the largest unit that divides it (`512M`, `1G`), or in bytes.
    public var description: String {
        for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] as [(String, UInt64)]
        where bytes != 0 && bytes & ((1 << shift) - 1) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}
