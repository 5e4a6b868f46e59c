// The sandbox's message decoding: what a hostile guest writes into the call area (host
// calls, responses) as the host reads it.
import SwiftVisorSandbox

/// The first byte picks a value type of the calling convention; the rest is one tagged
/// value as a guest writes it.
///
/// Checks: a decode throws a `SandboxMessageFault` or gives a value that encodes to exactly
/// the bytes it consumed (the format has one encoding per value), and `skipValue` accepts
/// that value too, consuming the same bytes.
func fuzzSandboxMessage(_ data: [UInt8]) {
    guard let first = data.first else { return }
    let body = Array(data.dropFirst())
    switch first % 12 {
    case 0: checkSandboxValue(Bool.self, body)
    case 1: checkSandboxValue(Int32.self, body)
    case 2: checkSandboxValue(Int.self, body)
    case 3: checkSandboxValue(UInt32.self, body)
    case 4: checkSandboxValue(UInt.self, body)
    case 5: checkSandboxValue(Float.self, body)
    case 6: checkSandboxValue(Double.self, body)
    case 7: checkSandboxValue(String.self, body)
    case 8: checkSandboxValue([UInt8].self, body)
    case 9: checkSandboxValue([Int32].self, body)
    case 10: checkSandboxValue([String].self, body)
    default: checkSandboxValue([Double].self, body)
    }
}

private func checkSandboxValue<V: SandboxValue>(_ type: V.Type, _ body: [UInt8]) {
    var reader = SandboxMessageReader(body, count: body.count)
    let value: V
    do throws(SandboxMessageFault) { value = try reader.value(V.self) } catch { return }
    let consumed = body.count - reader.remaining
    var writer = SandboxMessageWriter(capacity: consumed)
    writer.value(value)
    precondition(writer.bytes == Array(body[0..<consumed]), "sandbox message: \(V.self) re-encodes differently")
    var skipper = SandboxMessageReader(body, count: body.count)
    do throws(SandboxMessageFault) { try skipper.skipValue() } catch {
        preconditionFailure("sandbox message: skipValue refused a \(V.self) that value(_:) accepted: \(error)")
    }
    precondition(skipper.remaining == reader.remaining, "sandbox message: skipValue consumed a different length")
}
