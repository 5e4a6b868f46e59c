// The `--cpuid` option's parser, which lives in VisorCore so that embedders share it.
import VisorCore

/// The input, decoded as UTF-8, is one `LEAF[.SUBLEAF].REG.BIT[:LASTBIT]=VALUE` argument.
///
/// Checks: a parsed override names a field inside the register (bit + width <= 32) whose
/// value fits it, and its description, as `--cpuid` would print it, parses back to the same
/// override.
package func fuzzCPUIDOverride(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    guard let parsed = try? CPUIDOverride(parsing: text) else { return }
    precondition(parsed.width >= 1 && Int(parsed.bit) + Int(parsed.width) <= 32, "CPUID: field \(parsed) leaves the register")
    precondition(parsed.width == 32 || parsed.value < UInt32(1) << parsed.width, "CPUID: value of \(parsed) does not fit")
    let again = try? CPUIDOverride(parsing: parsed.description)
    precondition(again == parsed, "CPUID: '\(parsed)' parses back as \(again.map { "\($0)" } ?? "an error")")
}
