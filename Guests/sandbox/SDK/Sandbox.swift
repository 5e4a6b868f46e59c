// What a guest uses: `SandboxGuest` (its registration), `Sandbox.export` (functions the host
// calls by name), `Host.call` (functions the host registered), `Sandbox.print`,
// `Sandbox.abort` and `GuestError`; and the loop that serves the host's calls.

/// A sandbox guest: the type marked `@main` registers the guest's exported functions.
///
///     @main
///     struct Calculator: SandboxGuest {
///         static func register() {
///             Sandbox.export("add") { (a: Int, b: Int) -> Int in a + b }
///         }
///     }
///
/// `register()` runs once, before the guest signals READY; the host snapshots the guest after
/// it, so work done there (tables, parsed constants) is not repeated for each call.
protocol SandboxGuest {
    static func register()
}

extension SandboxGuest {
    /// Called by the C `main` that `@main` generates, which the SDK's `sandbox_main` calls.
    static func main() {
        register()
    }
}

/// An error an exported function throws, or a host call throws.
///
/// An exported function that throws ends its call with error code 4 ("the function failed")
/// and the error's `message`. Closures that throw must say so: `{ (s: String) throws(GuestError) -> Int in ... }`
/// (Embedded Swift has typed throws only).
enum GuestError: Error {
    /// The function failed, for the reason given.
    case failed(String)
    /// The host function `function` answered with error `code` (ABI.md's error codes) and `message`.
    case hostFunction(function: String, code: UInt16, message: String)
    /// The host's reply to a call of `function` was malformed or of another type than asked for.
    case badReply(function: String, reason: String)
    /// A call of the host function `function` did not fit in the output buffer.
    case callTooLong(function: String)

    /// The error's text, as the error response carries it.
    var message: String {
        switch self {
        case .failed(let reason): reason
        case .hostFunction(let function, let code, let message):
            "host function '" + function + "' failed (error \(code)): " + message
        case .badReply(let function, let reason): "the reply of host function '" + function + "' is bad: " + reason
        case .callTooLong(let function): "the call of host function '" + function + "' does not fit in the output buffer"
        }
    }
}

/// The error codes of ABI.md (response and host reply, status 1).
enum ErrorCode: UInt16 {
    case unknownFunction = 1
    case wrongArguments = 2
    case badMessage = 3
    case failed = 4
}

/// Why a call ends with an error response.
struct CallFailure: Error {
    let code: ErrorCode
    let message: String
    init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// Reads an exported function's arguments from a call message, checking each one's type.
struct ArgumentReader {
    var reader: MessageReader
    let function: String
    private var index = 0

    init(reader: MessageReader, function: String) {
        self.reader = reader
        self.function = function
    }

    /// The next argument, which must have `T`'s tag.
    mutating func next<T: SandboxValue>() throws(CallFailure) -> T {
        try expectTag(T.sandboxTag)
        do { return try T.readPayload(from: &reader) } catch { throw badArgument(error) }
    }

    /// Reads the next argument's tag, which must be `expected` (the part of `next` that needs
    /// no specialization).
    private mutating func expectTag(_ expected: UInt8) throws(CallFailure) {
        index += 1
        let tag: UInt8
        do { tag = try reader.u8() } catch { throw badArgument(error) }
        guard tag == expected else { throw wrongType(tag, expected) }
    }

    @inline(never)
    private func wrongType(_ tag: UInt8, _ expected: UInt8) -> CallFailure {
        CallFailure(
            .wrongArguments,
            "argument \(index) of '" + function + "' is " + typeName(tag: tag) + ", expected " + typeName(tag: expected))
    }

    @inline(never)
    private func badArgument(_ error: MessageError) -> CallFailure {
        CallFailure(.badMessage, "argument \(index) of '" + function + "': " + error.reason)
    }

    /// Refuses bytes after the last argument.
    func finish() throws(CallFailure) {
        do { try reader.finish() } catch { throw CallFailure(.badMessage, "the call of '" + function + "': " + error.reason) }
    }
}

/// Runs an exported function's body, turning its error into the call's.
func invoke<R>(_ body: () throws(GuestError) -> R) throws(CallFailure) -> R {
    do { return try body() } catch { throw CallFailure(.failed, error.message) }
}

/// Writes the success response carrying `result`.
func respond<R: SandboxValue>(_ result: R, function: String) throws(CallFailure) {
    var writer = MessageWriter(area: callArea)
    do {
        try writer.u8(0)
        try writer.value(result)
    } catch {
        throw CallFailure(.badMessage, "the result of '" + function + "' does not fit in the output buffer")
    }
    writer.publish()
}

/// Writes the success response of a function without a result.
func respondVoid() {
    var writer = MessageWriter(area: callArea)
    do {
        try writer.u8(0)
        try writer.u8(0x00)
    } catch {
        // Fewer than two bytes of output: nothing sensible to say.
        sandboxTrap()
    }
    writer.publish()
}

/// An exported function: reads its arguments, runs and writes its response.
typealias ExportThunk = (inout ArgumentReader) throws(CallFailure) -> Void

struct Export {
    let name: [UInt8]
    let displayName: String
    let arity: Int
    let thunk: ExportThunk
}

/// The functions the host can call, namespaced.
enum Sandbox {
    /// Registers `thunk` as the function `name`; a name must be 1 ... 255 bytes, and unique.
    static func register(_ name: String, arity: Int, _ thunk: @escaping ExportThunk) {
        let bytes = Array(name.utf8)
        guard bytes.count >= 1, bytes.count <= 255 else {
            abort("cannot export '" + name + "': a name must be 1 ... 255 bytes of UTF-8")
        }
        if findExport(where: { $0.name == bytes }) != nil {
            abort("cannot export '" + name + "' twice")
        }
        appendExport(Export(name: bytes, displayName: name, arity: arity, thunk: thunk))
    }

    /// Exports `body`, a function of no arguments with a result, as `name`.
    static func export<R: SandboxValue>(_ name: String, _ body: @escaping () throws(GuestError) -> R) {
        register(name, arity: 0) { (arguments: inout ArgumentReader) throws(CallFailure) in
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body() }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of no arguments with no result, as `name`.
    static func export(_ name: String, _ body: @escaping () throws(GuestError) -> Void) {
        register(name, arity: 0) { (arguments: inout ArgumentReader) throws(CallFailure) in
            try arguments.finish()
            try invoke { () throws(GuestError) in try body() }
            respondVoid()
        }
    }

    /// Exports `body`, a function of one argument with a result, as `name`.
    static func export<A: SandboxValue, R: SandboxValue>(_ name: String, _ body: @escaping (A) throws(GuestError) -> R) {
        register(name, arity: 1) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body(a) }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of one argument with no result, as `name`.
    static func export<A: SandboxValue>(_ name: String, _ body: @escaping (A) throws(GuestError) -> Void) {
        register(name, arity: 1) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            try arguments.finish()
            try invoke { () throws(GuestError) in try body(a) }
            respondVoid()
        }
    }

    /// Exports `body`, a function of 2 arguments with a result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, R: SandboxValue>(
        _ name: String, _ body: @escaping (A, B) throws(GuestError) -> R
    ) {
        register(name, arity: 2) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body(a, b) }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of 2 arguments with no result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue>(_ name: String, _ body: @escaping (A, B) throws(GuestError) -> Void) {
        register(name, arity: 2) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            try arguments.finish()
            try invoke { () throws(GuestError) in try body(a, b) }
            respondVoid()
        }
    }

    /// Exports `body`, a function of 3 arguments with a result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue, R: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C) throws(GuestError) -> R
    ) {
        register(name, arity: 3) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body(a, b, c) }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of 3 arguments with no result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C) throws(GuestError) -> Void
    ) {
        register(name, arity: 3) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            try arguments.finish()
            try invoke { () throws(GuestError) in try body(a, b, c) }
            respondVoid()
        }
    }

    /// Exports `body`, a function of 4 arguments with a result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, R: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C, D) throws(GuestError) -> R
    ) {
        register(name, arity: 4) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            let d: D = try arguments.next()
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body(a, b, c, d) }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of 4 arguments with no result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C, D) throws(GuestError) -> Void
    ) {
        register(name, arity: 4) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            let d: D = try arguments.next()
            try arguments.finish()
            try invoke { () throws(GuestError) in try body(a, b, c, d) }
            respondVoid()
        }
    }

    /// Exports `body`, a function of 5 arguments with a result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, E: SandboxValue, R: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C, D, E) throws(GuestError) -> R
    ) {
        register(name, arity: 5) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            let d: D = try arguments.next()
            let e: E = try arguments.next()
            try arguments.finish()
            try respond(try invoke { () throws(GuestError) in try body(a, b, c, d, e) }, function: arguments.function)
        }
    }

    /// Exports `body`, a function of 5 arguments with no result, as `name`.
    static func export<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, E: SandboxValue>(
        _ name: String, _ body: @escaping (A, B, C, D, E) throws(GuestError) -> Void
    ) {
        register(name, arity: 5) { (arguments: inout ArgumentReader) throws(CallFailure) in
            let a: A = try arguments.next()
            let b: B = try arguments.next()
            let c: C = try arguments.next()
            let d: D = try arguments.next()
            let e: E = try arguments.next()
            try arguments.finish()
            try invoke { () throws(GuestError) in try body(a, b, c, d, e) }
            respondVoid()
        }
    }

    /// Prints `text` and `terminator` through the host (PRINT; the output counts toward the
    /// call's output limit). Text longer than the output buffer goes in several pieces.
    static func print(_ text: String, terminator: String = "\n") {
        var pending = text + terminator
        while !pending.utf8.isEmpty {
            var writer = MessageWriter(area: callArea)
            var cut = utf8Prefix(of: pending, limit: writer.remaining)
            if cut == 0 {
                cut = min(pending.utf8.count, writer.remaining)  // a buffer smaller than one character
                guard cut > 0 else { return }
            }
            do { try writer.utf8(pending, prefix: cut) } catch { return }
            writer.publish()
            signalHost(.print)
            pending = String(decoding: pending.utf8.dropFirst(cut), as: UTF8.self)
        }
    }

    /// Ends the call: ABORT with `message` (cut to fit the output buffer). Never returns.
    static func abort(_ message: String) -> Never {
        var writer = MessageWriter(area: callArea)
        let count = utf8Prefix(of: message, limit: writer.remaining)
        do { try writer.utf8(message, prefix: count) } catch { sandboxTrap() }
        writer.publish()
        signalHost(.abort)
        // The host never resumes an aborted guest without restoring it; if it does, trap.
        sandboxTrap()
    }
}

/// Answers calls forever: READY, then for each call message a response and RETURN.
func serveCalls() -> Never {
    let area = callArea
    MessageWriter(area: area).publish()  // flushes print text; output length 0
    signalHost(.ready)
    while true {
        do {
            try serveOneCall(area)
        } catch {
            var writer = MessageWriter(area: area)
            writeError(error.code, error.message, to: &writer)
            writer.publish()
        }
        signalHost(.return)
    }
}

/// Reads one call message, runs the function and writes its response.
func serveOneCall(_ area: CallArea) throws(CallFailure) {
    var reader: MessageReader
    let nameRange: Range<Int>
    let count: Int
    do throws(MessageError) {
        reader = try MessageReader(area: area)
        let kind = try reader.u8()
        guard kind == 1 else { throw MessageError("the message is of kind \(kind), not a call (1)") }
        nameRange = try reader.name()
        count = Int(try reader.u16())
    } catch {
        throw CallFailure(.badMessage, "bad call message: " + error.reason)
    }
    guard let export = findExport(where: { reader.bytes(nameRange, equal: $0.name) }) else {
        throw CallFailure(.unknownFunction, "the guest exports no function '" + reader.text(nameRange) + "'")
    }
    guard count == export.arity else {
        throw CallFailure(
            .wrongArguments, "'" + export.displayName + "' takes \(export.arity) arguments, the call passed \(count)")
    }
    var arguments = ArgumentReader(reader: reader, function: export.displayName)
    try export.thunk(&arguments)
}

/// An error response: status 1, the code, the message cut to what fits.
func writeError(_ code: ErrorCode, _ message: String, to writer: inout MessageWriter) {
    do {
        try writer.u8(1)
        try writer.u16(code.rawValue)
        let count = utf8Prefix(of: message, limit: min(max(writer.remaining - 2, 0), Int(UInt16.max)))
        try writer.u16(UInt16(count))
        try writer.utf8(message, prefix: count)
    } catch {
        // An output buffer of fewer than 5 bytes cannot hold any error response.
        sandboxTrap()
    }
}

/// The host's functions, called by name.
///
///     let n = try Host.call("count", "some text") as Int
///     try Host.call("log", "text")   // a host function without a result
///
/// Errors (the host function failed, a malformed reply, a reply of another type) are thrown
/// as `GuestError`.
enum Host {
    /// Sends a host call of `name` with `count` arguments that `arguments` writes, and returns
    /// the reply reader positioned at the result's tag.
    static func send(
        _ name: String, count: UInt16, _ arguments: (inout MessageWriter) throws(MessageError) -> Void
    ) throws(GuestError) -> MessageReader {
        let area = callArea
        var writer = MessageWriter(area: area)
        do {
            try writer.u8(2)
            try writer.name(Array(name.utf8))
            try writer.u16(count)
            try arguments(&writer)
        } catch {
            throw .callTooLong(function: name)
        }
        writer.publish()
        signalHost(.hostCall)
        var reader: MessageReader
        let failure: (code: UInt16, message: String)
        do throws(MessageError) {
            reader = try MessageReader(area: area)
            switch try reader.u8() {
            case 0:
                return reader
            case 1:
                let code = try reader.u16()
                let length = Int(try reader.u16())
                failure = (code, try reader.string(length))
                try reader.finish()
            case let status:
                throw MessageError("status \(status) (0 or 1 allowed)")
            }
        } catch {
            throw .badReply(function: name, reason: error.reason)
        }
        throw .hostFunction(function: name, code: failure.code, message: failure.message)
    }

    /// Reads the result of type `R` from a reply.
    static func result<R: SandboxValue>(_ name: String, _ reader: inout MessageReader) throws(GuestError) -> R {
        do throws(MessageError) {
            let tag = try reader.u8()
            guard tag == R.sandboxTag else {
                throw MessageError("it is " + typeName(tag: tag) + ", expected " + typeName(tag: R.sandboxTag))
            }
            let value = try R.readPayload(from: &reader)
            try reader.finish()
            return value
        } catch {
            throw .badReply(function: name, reason: error.reason)
        }
    }

    /// Checks a reply without a result (tag 0x00).
    static func void(_ name: String, _ reader: inout MessageReader) throws(GuestError) {
        do throws(MessageError) {
            let tag = try reader.u8()
            guard tag == 0 else { throw MessageError("it is " + typeName(tag: tag) + ", expected Void") }
            try reader.finish()
        } catch {
            throw .badReply(function: name, reason: error.reason)
        }
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<R: SandboxValue>(_ name: String) throws(GuestError) -> R {
        var reply = try send(name, count: 0) { (w: inout MessageWriter) throws(MessageError) in }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call(_ name: String) throws(GuestError) {
        var reply = try send(name, count: 0) { (w: inout MessageWriter) throws(MessageError) in }
        try void(name, &reply)
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<A: SandboxValue, R: SandboxValue>(_ name: String, _ a: A) throws(GuestError) -> R {
        var reply = try send(name, count: 1) { (w: inout MessageWriter) throws(MessageError) in try w.value(a) }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call<A: SandboxValue>(_ name: String, _ a: A) throws(GuestError) {
        var reply = try send(name, count: 1) { (w: inout MessageWriter) throws(MessageError) in try w.value(a) }
        try void(name, &reply)
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<A: SandboxValue, B: SandboxValue, R: SandboxValue>(_ name: String, _ a: A, _ b: B) throws(GuestError) -> R {
        var reply = try send(name, count: 2) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b)
        }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call<A: SandboxValue, B: SandboxValue>(_ name: String, _ a: A, _ b: B) throws(GuestError) {
        var reply = try send(name, count: 2) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b)
        }
        try void(name, &reply)
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue, R: SandboxValue>(_ name: String, _ a: A, _ b: B, _ c: C)
        throws(GuestError) -> R
    {
        var reply = try send(name, count: 3) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c)
        }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue>(_ name: String, _ a: A, _ b: B, _ c: C) throws(GuestError)
    {
        var reply = try send(name, count: 3) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c)
        }
        try void(name, &reply)
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, R: SandboxValue>(
        _ name: String, _ a: A, _ b: B, _ c: C, _ d: D
    ) throws(GuestError) -> R {
        var reply = try send(name, count: 4) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c); try w.value(d)
        }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue>(
        _ name: String, _ a: A, _ b: B, _ c: C, _ d: D
    ) throws(GuestError) {
        var reply = try send(name, count: 4) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c); try w.value(d)
        }
        try void(name, &reply)
    }

    /// Calls the host function `name` with a result of type `R`.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, E: SandboxValue, R: SandboxValue>(
        _ name: String, _ a: A, _ b: B, _ c: C, _ d: D, _ e: E
    ) throws(GuestError) -> R {
        var reply = try send(name, count: 5) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c); try w.value(d); try w.value(e)
        }
        return try result(name, &reply)
    }

    /// Calls the host function `name` without a result.
    static func call<A: SandboxValue, B: SandboxValue, C: SandboxValue, D: SandboxValue, E: SandboxValue>(
        _ name: String, _ a: A, _ b: B, _ c: C, _ d: D, _ e: E
    ) throws(GuestError) {
        var reply = try send(name, count: 5) { (w: inout MessageWriter) throws(MessageError) in
            try w.value(a); try w.value(b); try w.value(c); try w.value(d); try w.value(e)
        }
        try void(name, &reply)
    }
}
