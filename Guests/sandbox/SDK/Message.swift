// Reading and writing ABI.md's messages ("Messages") in the call area's buffers. The reader
// trusts nothing: every length, count and tag is checked against what is left of the message
// before it is used, and a message that ends early or has bytes left over is refused.

/// Why a message could not be read or written; `reason` is for the error response.
struct MessageError: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}

/// Reads the current message in the input buffer, front to back.
struct MessageReader {
    private let area: CallArea
    private let end: Int
    private var position = 0

    /// The message the host just wrote, or an error if its length exceeds the input buffer.
    init(area: CallArea) throws(MessageError) {
        guard let length = area.inputLength() else {
            throw MessageError("the input length exceeds the input buffer's \(area.inputCapacity) bytes")
        }
        self.area = area
        self.end = length
    }

    /// Bytes not read yet.
    var remaining: Int { end - position }

    /// Claims the next `count` bytes; returns where they start.
    private mutating func take(_ count: Int) throws(MessageError) -> Int {
        guard count >= 0, count <= remaining else { throw endsEarly(count) }
        let start = position
        position += count
        return start
    }

    // Error messages are built out of line: string interpolation is large in Embedded Swift,
    // and these run only on the error path.
    @inline(never)
    private func endsEarly(_ count: Int) -> MessageError {
        MessageError("the message ends early (\(count) bytes wanted at offset \(position), \(remaining) left)")
    }

    mutating func u8() throws(MessageError) -> UInt8 {
        area.input(at: try take(1))
    }

    mutating func u16() throws(MessageError) -> UInt16 {
        let at = try take(2)
        return UInt16(area.input(at: at)) | UInt16(area.input(at: at + 1)) << 8
    }

    mutating func u32() throws(MessageError) -> UInt32 {
        let at = try take(4)
        var value: UInt32 = 0
        for i in 0..<4 { value |= UInt32(area.input(at: at + i)) << (8 * UInt32(i)) }
        return value
    }

    mutating func u64() throws(MessageError) -> UInt64 {
        let at = try take(8)
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(area.input(at: at + i)) << (8 * UInt64(i)) }
        return value
    }

    /// The next `count` bytes.
    mutating func bytes(_ count: Int) throws(MessageError) -> [UInt8] {
        area.inputBytes(at: try take(count), count: count)
    }

    /// The next `count` bytes, which must be valid UTF-8.
    mutating func string(_ count: Int) throws(MessageError) -> String {
        let at = try take(count)
        guard let string = area.inputString(at: at, count: count) else {
            throw MessageError("a string of \(count) bytes at offset \(at) is not valid UTF-8")
        }
        return string
    }

    /// A `u32` count of elements at least `minimumSize` bytes each, checked against what is
    /// left of the message (so a hostile count cannot make the reader reserve memory).
    mutating func count(minimumSize: Int) throws(MessageError) -> Int {
        let count = Int(try u32())
        let (needed, overflow) = count.multipliedReportingOverflow(by: minimumSize)
        guard !overflow, needed <= remaining else {
            throw MessageError("a count of \(count) runs past the message's end (\(remaining) bytes left)")
        }
        return count
    }

    /// A `name`: `u16` length (1 ... 255), then UTF-8; returned as where its bytes start and
    /// how many there are, so that a look-up compares bytes without allocating.
    mutating func name() throws(MessageError) -> Range<Int> {
        let length = Int(try u16())
        guard length >= 1, length <= 255 else { throw MessageError("a name is \(length) bytes long (1 ... 255 allowed)") }
        let start = try take(length)
        return start..<(start + length)
    }

    /// Whether the input bytes `range` (from `name()`) equal `bytes`.
    func bytes(_ range: Range<Int>, equal bytes: [UInt8]) -> Bool {
        guard range.count == bytes.count else { return false }
        for (i, byte) in bytes.enumerated() where area.input(at: range.lowerBound + i) != byte { return false }
        return true
    }

    /// The input bytes `range` as text for an error message (invalid UTF-8 is replaced).
    func text(_ range: Range<Int>) -> String {
        String(decoding: area.inputBytes(at: range.lowerBound, count: range.count), as: UTF8.self)
    }

    /// Refuses bytes left over after the message.
    func finish() throws(MessageError) {
        guard remaining == 0 else { throw MessageError("\(remaining) bytes are left over after the message") }
    }
}

/// Writes a message into the output buffer, front to back; `publish()` sets its length.
struct MessageWriter {
    private let area: CallArea
    private(set) var position = 0

    /// Starts a message at the output buffer's start. Any text `print` still buffers is sent
    /// first, since sending it uses the output buffer too.
    init(area: CallArea) {
        flushPrintBuffer()
        self.area = area
    }

    /// Bytes still free.
    var remaining: Int { area.outputCapacity - position }

    private mutating func take(_ count: Int) throws(MessageError) -> Int {
        guard count <= remaining else { throw tooLong() }
        let start = position
        position += count
        return start
    }

    @inline(never)
    private func tooLong() -> MessageError {
        MessageError("the message does not fit in the output buffer's \(area.outputCapacity) bytes")
    }

    mutating func u8(_ value: UInt8) throws(MessageError) {
        area.setOutput(value, at: try take(1))
    }

    mutating func u16(_ value: UInt16) throws(MessageError) {
        let at = try take(2)
        area.setOutput(UInt8(truncatingIfNeeded: value), at: at)
        area.setOutput(UInt8(truncatingIfNeeded: value >> 8), at: at + 1)
    }

    mutating func u32(_ value: UInt32) throws(MessageError) {
        let at = try take(4)
        for i in 0..<4 { area.setOutput(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))), at: at + i) }
    }

    mutating func u64(_ value: UInt64) throws(MessageError) {
        let at = try take(8)
        for i in 0..<8 { area.setOutput(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))), at: at + i) }
    }

    mutating func bytes(_ bytes: [UInt8]) throws(MessageError) {
        area.setOutput(bytes, at: try take(bytes.count))
    }

    /// The string's UTF-8 bytes, without a length.
    mutating func utf8(_ string: String) throws(MessageError) {
        let count = string.utf8.count
        area.setOutput(utf8: string, 0..<count, at: try take(count))
    }

    /// The first `count` UTF-8 bytes of `string`, without a length.
    mutating func utf8(_ string: String, prefix count: Int) throws(MessageError) {
        area.setOutput(utf8: string, 0..<count, at: try take(count))
    }

    /// A `name`: `u16` length (1 ... 255), then the bytes.
    mutating func name(_ name: [UInt8]) throws(MessageError) {
        guard name.count >= 1, name.count <= 255 else { throw MessageError("a name must be 1 ... 255 bytes long") }
        try u16(UInt16(name.count))
        try bytes(name)
    }

    /// A value: its tag, then its payload.
    mutating func value<T: SandboxValue>(_ value: T) throws(MessageError) {
        try u8(T.sandboxTag)
        try value.writePayload(to: &self)
    }

    /// Makes the message the output: stores its length in the header.
    func publish() {
        area.setOutputLength(position)
    }
}

/// The length of the longest prefix of `string`'s UTF-8 that is at most `limit` bytes and
/// does not cut a character's encoding in two.
func utf8Prefix(of string: String, limit: Int) -> Int {
    let utf8 = string.utf8
    guard utf8.count > limit else { return utf8.count }
    var end = max(limit, 0)
    // Back up over continuation bytes (10xxxxxx) so the cut falls between scalars.
    var index = utf8.index(utf8.startIndex, offsetBy: end)
    while end > 0, utf8[index] & 0xC0 == 0x80 {
        end -= 1
        index = utf8.index(before: index)
    }
    return end
}
