// A sandbox guest in Embedded Swift: arithmetic, strings, a key=value parser, host calls, and every value type.

@main
struct Example: SandboxGuest {
    static func register() {
        // Arithmetic. Overflow is an error of the call, not a trap.
        Sandbox.export("add") { (a: Int, b: Int) throws(GuestError) -> Int in
            let (sum, overflow) = a.addingReportingOverflow(b)
            guard !overflow else { throw .failed("add: \(a) + \(b) overflows Int") }
            return sum
        }
        Sandbox.export("fib") { (n: Int) throws(GuestError) -> Int in
            guard n >= 0, n <= 92 else { throw .failed("fib: n must be 0 ... 92, not \(n)") }
            var (a, b) = (0, 1)
            // b runs one step ahead and overflows after fib(92), where it is no longer used.
            for _ in 0..<n { (a, b) = (b, a &+ b) }
            return a
        }

        // Strings.
        Sandbox.export("reverse") { (text: String) -> String in reverseScalars(text) }
        Sandbox.export("wordCount") { (text: String) -> Int in wordCount(text) }

        // A parser of untrusted text: the number of `key = value` lines.
        Sandbox.export("countPairs") { (text: String) throws(GuestError) -> Int in
            try countPairs(text)
        }

        // Host calls: `greeting` (String) -> String and `log` (String) -> Void, registered by
        // the host.
        Sandbox.export("greet") { (name: String) throws(GuestError) -> String in
            let greeting = try Host.call("greeting", name) as String
            try Host.call("log", "greeted " + name)
            return greeting + "!"
        }
        // Calls host function `name` with no arguments and returns its Int result.
        Sandbox.export("callHost") { (name: String) throws(GuestError) -> Int in
            try Host.call(name) as Int
        }
        Sandbox.export("say") { (text: String) in
            Sandbox.print(text)
        }

        // Every value type of ABI.md, there and back.
        Sandbox.export("echoBool") { (x: Bool) -> Bool in !x }
        Sandbox.export("echoInt32") { (x: Int32) -> Int32 in x &+ 1 }
        Sandbox.export("echoInt") { (x: Int) -> Int in x &+ 1 }
        Sandbox.export("echoUInt32") { (x: UInt32) -> UInt32 in x &+ 1 }
        Sandbox.export("echoUInt") { (x: UInt) -> UInt in x &+ 1 }
        Sandbox.export("echoFloat") { (x: Float) -> Float in x * 2 }
        Sandbox.export("echoDouble") { (x: Double) -> Double in x * 2 }
        Sandbox.export("echoString") { (x: String) -> String in x + x }
        Sandbox.export("echoBytes") { (x: [UInt8]) -> [UInt8] in x.reversed() }
        Sandbox.export("sumInts") { (xs: [Int]) -> Int in xs.reduce(0, &+) }
        Sandbox.export("mean") { (xs: [Double]) -> Double in xs.isEmpty ? 0 : xs.reduce(0, +) / Double(xs.count) }
        Sandbox.export("splitWords") { (text: String) -> [String] in words(text) }
        Sandbox.export("negate") { (xs: [Bool]) -> [Bool] in xs.map { !$0 } }
        Sandbox.export("chunks") { (bytes: [UInt8], size: Int) throws(GuestError) -> [[UInt8]] in
            guard size > 0 else { throw .failed("chunks: size must be positive") }
            return stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
        }
        Sandbox.export("mix") { (a: Int32, b: UInt32, c: UInt, d: Float, e: Bool) -> Double in
            Double(a) + Double(b) + Double(c) + Double(d) + (e ? 0.5 : 0)
        }
        Sandbox.export("nothing") {}
    }
}

/// `text` with its Unicode scalars in reverse order (combining marks move with the scalar,
/// since grapheme breaking would need Unicode tables the guest does not link).
func reverseScalars(_ text: String) -> String {
    var reversed = ""
    reversed.unicodeScalars.append(contentsOf: text.unicodeScalars.reversed())
    return reversed
}

/// Words: runs of bytes that are not ASCII whitespace.
func words(_ text: String) -> [String] {
    var result: [String] = []
    var current: [UInt8] = []
    for byte in text.utf8 {
        if isSpace(byte) {
            if !current.isEmpty { result.append(String(decoding: current, as: UTF8.self)) }
            current.removeAll(keepingCapacity: true)
        } else {
            current.append(byte)
        }
    }
    if !current.isEmpty { result.append(String(decoding: current, as: UTF8.self)) }
    return result
}

func wordCount(_ text: String) -> Int {
    var count = 0
    var inWord = false
    for byte in text.utf8 {
        if isSpace(byte) {
            inWord = false
        } else if !inWord {
            inWord = true
            count += 1
        }
    }
    return count
}

func isSpace(_ byte: UInt8) -> Bool {
    byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
}

/// Counts the `key = value` lines of `text`. Blank lines and lines starting with `#` are
/// skipped; a key is 1 ... 64 of `a-z A-Z 0-9 _ . -`, given once; spaces around `=` and the
/// value are allowed. Anything else fails the call with the line's number.
func countPairs(_ text: String) throws(GuestError) -> Int {
    var keys: [[UInt8]] = []
    var number = 0
    for line in text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false) {
        number += 1
        let trimmed = line.drop(while: isSpace).reversed().drop(while: isSpace).reversed()
        if trimmed.isEmpty || trimmed.first == UInt8(ascii: "#") { continue }
        guard let equals = trimmed.firstIndex(of: UInt8(ascii: "=")) else {
            throw .failed("line \(number): no '='")
        }
        let key = Array(trimmed[trimmed.startIndex..<equals].reversed().drop(while: isSpace).reversed())
        guard !key.isEmpty else { throw .failed("line \(number): no key before '='") }
        guard key.count <= 64 else { throw .failed("line \(number): a key longer than 64 bytes") }
        for byte in key where !isKeyByte(byte) {
            throw .failed("line \(number): a key may use only a-z, A-Z, 0-9, '_', '.' and '-'")
        }
        guard !keys.contains(key) else {
            throw .failed("line \(number): key '" + String(decoding: key, as: UTF8.self) + "' given twice")
        }
        keys.append(key)
    }
    return keys.count
}

func isKeyByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        true
    case UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
        true
    default:
        false
    }
}
