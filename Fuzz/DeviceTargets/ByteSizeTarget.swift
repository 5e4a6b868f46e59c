// The `--memory` size parser, which lives in VisorCore so that embedders share it.
import VisorCore

/// The input, decoded as UTF-8, is one size argument (`64M`, `0x4000000`, `1GiB`).
///
/// Checks: a parsed size's description is a number, times its unit (G, M, K or none) equal
/// to the size without overflow, in the largest unit that divides it; and it parses back
/// to the same size.
package func fuzzByteSize(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    guard let parsed = ByteSize(parsing: text) else { return }
    let description = parsed.description
    let units: [Character: UInt64] = ["G": 30, "M": 20, "K": 10]
    let shift = description.last.flatMap { units[$0] } ?? 0
    let digits = shift == 0 ? Substring(description) : description.dropLast()
    guard let number = UInt64(digits) else { preconditionFailure("byte size: '\(description)' is not a number and a unit") }
    precondition(
        number <= UInt64.max >> shift && number << shift == parsed.bytes, "byte size: '\(description)' is not \(parsed.bytes)")
    precondition(
        parsed.bytes == 0 || shift == 30 || number & 1023 != 0, "byte size: '\(description)' is not in the largest unit")
    precondition(ByteSize(parsing: description) == parsed, "byte size: '\(description)' does not parse back to \(parsed.bytes)")
}
