// The `--msr` option's parser, which lives in VisorCore so that embedders share it.
import VisorCore

/// The input, decoded as UTF-8, is one `INDEX=RULE` argument.
///
/// Checks: a parsed override's index is the 32-bit number before `=` and its value the
/// 64-bit number after `:` (re-read independently of the parser), and its description, as
/// `--msr` would print it, parses back to the same override. A malformed argument throws.
package func fuzzMSROption(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    guard let parsed = try? MSROverride(parsing: text) else { return }
    // An independent reading of the two numbers: a parsed index fits 32 bits and a parsed
    // value 64 bits, or the parser would have refused them.
    let sides = text.split(separator: "=", maxSplits: 1)
    precondition(sides.count == 2, "MSR: '\(text)' parsed without '='")
    let index = number(sides[0])
    precondition(index == UInt64(parsed.index), "MSR: index of '\(text)' read as \(parsed.index)")
    let value: UInt64? =
        switch parsed.rule {
        case .readOnly(let v), .constant(let v), .recorded(let v): v
        case .allow, .deny, .writeIgnored: nil
        }
    if let value {
        let rule = sides[1].split(separator: ":", maxSplits: 1)
        precondition(value == (rule.count == 2 ? number(rule[1]) : 0), "MSR: value of '\(text)' read as \(value)")
    }
    let again = try? MSROverride(parsing: parsed.description)
    precondition(again == parsed, "MSR: '\(parsed)' parses back as \(again.map { "\($0)" } ?? "an error")")
}

/// A decimal or 0x-hex number the way a reader would take it, or nil when it does not fit
/// 64 bits.
private func number(_ text: Substring) -> UInt64? {
    let lower = text.lowercased()
    return lower.hasPrefix("0x") ? UInt64(lower.dropFirst(2), radix: 16) : UInt64(lower)
}
