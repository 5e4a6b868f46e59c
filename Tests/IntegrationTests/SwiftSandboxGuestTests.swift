import Foundation
import Synchronization
import SwiftVisorGuests
import SwiftVisorSandbox
import Testing

extension KVMIntegration {
    /// The Embedded Swift sandbox guests (Guests/sandbox/*.sandbox.swift, built with the
    /// guest SDK) called from Swift through `Sandbox`: every export of `swift_example`, host
    /// functions called from the guest, and the hostile exports of `swift_hostile`.
    @Suite("Embedded Swift sandbox guests")
    struct SwiftSandboxGuestTests {
        /// What the guest printed and logged through the host.
        final class Recorder: Sendable {
            let printed = Mutex<[String]>([])
            let logged = Mutex<[String]>([])
        }

        /// A sandbox of `swift_example` with the host functions its exports call.
        func example(_ configure: (inout SandboxConfiguration) -> Void = { _ in }) throws -> (Sandbox, Recorder) {
            let recorder = Recorder()
            var configuration = SandboxConfiguration()
            configuration.output = { text in recorder.printed.withLock { $0.append(text) } }
            configure(&configuration)
            let sandbox = try Sandbox(guest: GuestImages.swiftExample, configuration: configuration)
            sandbox.register("greeting") { (name: String) -> String in "Hello, " + name }
            sandbox.register("log") { (line: String) in recorder.logged.withLock { $0.append(line) } }
            sandbox.register("answer") { () -> Int in 42 }
            return (sandbox, recorder)
        }

        /// A sandbox of `swift_hostile`, with a short time limit for `spin`.
        func hostile(_ configure: (inout SandboxConfiguration) -> Void = { _ in }) throws -> Sandbox {
            var configuration = SandboxConfiguration()
            configuration.timeLimit = .milliseconds(200)
            configuration.output = { _ in }
            configure(&configuration)
            let sandbox = try Sandbox(guest: GuestImages.swiftHostile, configuration: configuration)
            sandbox.register("answer") { () -> Int in 42 }
            return sandbox
        }

        /// Whether `error` is a guest trap of `vector`.
        func isTrap(_ error: SandboxError, vector: UInt8) -> Bool {
            if case .guestTrap(let trap) = error { trap.vector == vector } else { false }
        }

        /// Whether `error` is the guest's error response of code 4 containing `text`.
        func isFailure(_ error: SandboxError, containing text: String) -> Bool {
            if case .guestFailed(let message) = error { message.contains(text) } else { false }
        }

        @Test("arithmetic: add and fib, with overflow and an n out of range as errors of the call")
        func arithmetic() throws {
            let (sandbox, _) = try example()
            #expect(try sandbox.call("add", 2, 40) as Int == 42)
            #expect(try sandbox.call("add", -5, Int.min + 5) as Int == Int.min)
            #expect(try sandbox.call("fib", 0) as Int == 0)
            #expect(try sandbox.call("fib", 10) as Int == 55)
            #expect(try sandbox.call("fib", 92) as Int == 7_540_113_804_746_346_429)
            var error = #expect(throws: SandboxError.self) { try sandbox.call("add", Int.max, 1) as Int }
            #expect(error.map { isFailure($0, containing: "overflows Int") } == true)
            error = #expect(throws: SandboxError.self) { try sandbox.call("fib", 93) as Int }
            #expect(error.map { isFailure($0, containing: "0 ... 92") } == true)
            #expect(try sandbox.call("fib", 20) as Int == 6765)
        }

        @Test("strings: reverse by Unicode scalars, wordCount, splitWords")
        func strings() throws {
            let (sandbox, _) = try example()
            #expect(try sandbox.call("reverse", "héllo, wörld") as String == "dlröw ,olléh")
            #expect(try sandbox.call("reverse", "") as String == "")
            #expect(try sandbox.call("wordCount", "  the quick\tbrown\n fox ") as Int == 4)
            #expect(try sandbox.call("wordCount", "") as Int == 0)
            #expect(try sandbox.call("splitWords", " a bb  ccc ") as [String] == ["a", "bb", "ccc"])
            let long = String(repeating: "word ", count: 5000)
            #expect(try sandbox.call("wordCount", long) as Int == 5000)
        }

        @Test("the key=value parser counts pairs of untrusted text and names the bad line")
        func parser() throws {
            let (sandbox, _) = try example()
            let good = "# settings\nname = demo\n\n  version=2  \nlog.level = debug info\n"
            #expect(try sandbox.call("countPairs", good) as Int == 3)
            #expect(try sandbox.call("countPairs", "") as Int == 0)
            let bad: [(String, String)] = [
                ("a = 1\nno equals here\n", "line 2: no '='"),
                ("= value\n", "line 1: no key"),
                ("a = 1\na = 2\n", "line 2: key 'a' given twice"),
                ("sp ace = 1\n", "line 1: a key may use only"),
                (String(repeating: "k", count: 65) + " = 1", "longer than 64"),
                ("\u{0}\u{1}\u{2}=\n", "line 1: a key may use only"),
            ]
            for (text, reason) in bad {
                let error = #expect(throws: SandboxError.self) { try sandbox.call("countPairs", text) as Int }
                #expect(error.map { isFailure($0, containing: reason) } == true, "\(String(describing: error))")
            }
            // Random bytes as text: a count or a clean failure, never anything else.
            var generator = SystemRandomNumberGenerator()
            for _ in 0..<50 {
                let bytes = (0..<Int.random(in: 0..<400, using: &generator)).map { _ in
                    UInt8.random(in: 0...127, using: &generator) | (Bool.random(using: &generator) ? 0 : 0x20)
                }
                let text = String(decoding: bytes, as: UTF8.self)
                switch Result(catching: { () throws(SandboxError) in try sandbox.call("countPairs", text) as Int }) {
                case .success(let count): #expect(count >= 0)
                case .failure(.guestFailed(let message)): #expect(message.hasPrefix("line "), "\(message)")
                case .failure(let error): Issue.record("countPairs of random text: \(error)")
                }
            }
        }

        @Test("host functions called from the guest: a String result, a void one, a missing one, one of the wrong type")
        func hostFunctions() throws {
            let (sandbox, recorder) = try example()
            #expect(try sandbox.call("greet", "Ann") as String == "Hello, Ann!")
            #expect(recorder.logged.withLock { $0 } == ["greeted Ann"])
            #expect(try sandbox.call("callHost", "answer") as Int == 42)
            var error = #expect(throws: SandboxError.self) { try sandbox.call("callHost", "missing") as Int }
            #expect(error.map { isFailure($0, containing: "host function 'missing'") } == true, "\(String(describing: error))")
            // `greeting` returns a String where the guest asks for an Int.
            error = #expect(throws: SandboxError.self) { try sandbox.call("callHost", "greeting") as Int }
            #expect(error != nil)
            #expect(try sandbox.call("greet", "Bob") as String == "Hello, Bob!")
        }

        @Test("printing through the host")
        func printing() throws {
            let (sandbox, recorder) = try example()
            try sandbox.call("say", "hello from the test")
            #expect(recorder.printed.withLock { $0.joined() } == "hello from the test\n")
        }

        @Test("every value type of the convention, there and back")
        func valueTypes() throws {
            let (sandbox, _) = try example()
            #expect(try sandbox.call("echoBool", true) as Bool == false)
            #expect(try sandbox.call("echoInt32", Int32(-5)) as Int32 == -4)
            #expect(try sandbox.call("echoInt32", Int32.max) as Int32 == Int32.min)
            #expect(try sandbox.call("echoInt", -7) as Int == -6)
            #expect(try sandbox.call("echoUInt32", UInt32.max) as UInt32 == 0)
            #expect(try sandbox.call("echoUInt", UInt(5)) as UInt == 6)
            #expect(try sandbox.call("echoFloat", Float(1.5)) as Float == 3)
            #expect(try sandbox.call("echoDouble", 2.25) as Double == 4.5)
            #expect(try sandbox.call("echoString", "ab€") as String == "ab€ab€")
            #expect(try sandbox.call("echoBytes", [UInt8]([1, 2, 3])) as [UInt8] == [3, 2, 1])
            #expect(try sandbox.call("echoBytes", [UInt8]()) as [UInt8] == [])
            #expect(try sandbox.call("sumInts", [1, 2, 3, -10]) as Int == -4)
            #expect(try sandbox.call("mean", [1.0, 2.0, 4.5]) as Double == 2.5)
            #expect(try sandbox.call("negate", [true, false, false]) as [Bool] == [false, true, true])
            #expect(try sandbox.call("chunks", [UInt8]([1, 2, 3, 4, 5]), 2) as [[UInt8]] == [[1, 2], [3, 4], [5]])
            #expect(try sandbox.call("mix", Int32(-1), UInt32(2), UInt(3), Float(0.25), true) as Double == 4.75)
            try sandbox.call("nothing")
            // Large values, near the call area's limits (64 KiB: 32 KiB each way).
            let bytes = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            #expect(try sandbox.call("echoBytes", bytes) as [UInt8] == bytes.reversed())
        }

        @Test("calls the guest refuses: an unknown function, a wrong count, wrong types; the sandbox works after each")
        func refusedCalls() throws {
            let (sandbox, _) = try example()
            var error = #expect(throws: SandboxError.self) { try sandbox.call("noSuchFunction", 1) as Int }
            #expect(
                error.map { if case .unknownFunction = $0 { true } else { false } } == true, "\(String(describing: error))")
            error = #expect(throws: SandboxError.self) { try sandbox.call("add", 1) as Int }
            #expect(error.map { if case .wrongArguments = $0 { true } else { false } } == true, "\(String(describing: error))")
            error = #expect(throws: SandboxError.self) { try sandbox.call("add", 1, "two") as Int }
            #expect(error.map { if case .wrongArguments = $0 { true } else { false } } == true, "\(String(describing: error))")
            error = #expect(throws: SandboxError.self) { try sandbox.call("echoInt32", 5) as Int32 }
            #expect(error.map { if case .wrongArguments = $0 { true } else { false } } == true, "\(String(describing: error))")
            // The guest's result is an Int; asking for a String is the host's check.
            #expect(throws: SandboxError.self) { try sandbox.call("add", 1, 2) as String }
            #expect(try sandbox.call("add", 1, 2) as Int == 3)
        }

        @Test("an endless loop ends at the time limit, and the sandbox works after")
        func endlessLoop() throws {
            let sandbox = try hostile()
            #expect(try sandbox.call("ping", 1) as Int == 2)
            let error = #expect(throws: SandboxError.self) { try sandbox.call("spin") as Int }
            #expect(error.map { if case .timeLimit = $0 { true } else { false } } == true, "\(String(describing: error))")
            #expect(try sandbox.call("ping", 2) as Int == 3)
        }

        @Test("recursion into the stack's guard page is a page fault, and the sandbox works after")
        func stackOverflow() throws {
            let sandbox = try hostile()
            let error = #expect(throws: SandboxError.self) { try sandbox.call("recurse", 0) as Int }
            #expect(error.map { isTrap($0, vector: 14) } == true, "\(String(describing: error))")
            #expect(try sandbox.call("ping", 2) as Int == 3)
        }

        @Test(
            "Swift's run-time traps are #UD: index out of range, overflow, division by zero, nil, fatalError",
            arguments: ["outOfRange", "overflow", "divide", "unwrap", "fatal"])
        func swiftTraps(function: String) throws {
            let printed = Mutex<String>("")
            let sandbox = try hostile { $0.output = { text in printed.withLock { $0 += text } } }
            let error = #expect(throws: SandboxError.self) {
                switch function {
                case "outOfRange": _ = try sandbox.call("outOfRange", 3) as Int
                case "overflow": _ = try sandbox.call("overflow", 2) as Int
                case "divide": _ = try sandbox.call("divide", 1, 0) as Int
                case "unwrap": _ = try sandbox.call("unwrap", "no digits") as Int
                default: _ = try sandbox.call("fatal", "the guest gives up") as Int
                }
            }
            #expect(error.map { isTrap($0, vector: 6) } == true, "\(String(describing: error))")
            // An optimized Embedded Swift build traps without printing fatalError's message.
            #expect(printed.withLock { $0 }.isEmpty)
            #expect(try sandbox.call("outOfRange", 2) as Int == 30)
            #expect(try sandbox.call("divide", 7, 2) as Int == 3)
        }

        @Test("an abort ends the call with its message, and the sandbox works after")
        func abort() throws {
            let sandbox = try hostile()
            let error = #expect(throws: SandboxError.self) { try sandbox.call("abort", "enough of this") as Int }
            #expect(error == .guestAbort("enough of this"), "\(String(describing: error))")
            #expect(try sandbox.call("ping", 5) as Int == 6)
        }

        @Test("printing past the output limit is an error; printing under it is not")
        func outputFlood() throws {
            let sandbox = try hostile { $0.outputLimit = 16 << 10 }
            #expect(try sandbox.call("flood", 10, 100) as Int == 10)
            let error = #expect(throws: SandboxError.self) { try sandbox.call("flood", 1000, 100) as Int }
            #expect(error.map { if case .outputLimit = $0 { true } else { false } } == true, "\(String(describing: error))")
            // One line longer than the whole output buffer goes out in pieces.
            #expect(throws: SandboxError.self) { try sandbox.call("flood", 1, 100_000) as Int }
            #expect(try sandbox.call("ping", 5) as Int == 6)
        }

        @Test("allocating past the heap is a trap, and the sandbox works after")
        func heapExhaustion() throws {
            let sandbox = try hostile()
            #expect(try sandbox.call("exhaustHeap", 2) as Int == 2 << 20)
            let error = #expect(throws: SandboxError.self) { try sandbox.call("exhaustHeap", 64) as Int }
            #expect(error.map { if case .guestTrap = $0 { true } else { false } } == true, "\(String(describing: error))")
            #expect(try sandbox.call("exhaustHeap", 2) as Int == 2 << 20)
        }

        @Test("a call of a missing host function, or a reply of another type, fails the call")
        func badHostCalls() throws {
            let sandbox = try hostile()
            var error = #expect(throws: SandboxError.self) { try sandbox.call("callMissing") as Int }
            #expect(error.map { isFailure($0, containing: "no_such_function") } == true, "\(String(describing: error))")
            error = #expect(throws: SandboxError.self) { try sandbox.call("wrongType", "answer") as String }
            #expect(error.map { isFailure($0, containing: "expected String") } == true, "\(String(describing: error))")
            #expect(try sandbox.call("ping", 5) as Int == 6)
        }

        @Test("reset puts the guest's globals back to their state after initialization")
        func resetRestoresGlobals() throws {
            let sandbox = try hostile()
            #expect(try sandbox.call("bump") as Int == 1)
            #expect(try sandbox.call("bump") as Int == 2)
            try sandbox.reset()
            #expect(try sandbox.call("bump") as Int == 1)
            let snapshot = try sandbox.snapshot()
            #expect(try sandbox.call("bump") as Int == 2)
            try sandbox.restore(snapshot)
            #expect(try sandbox.call("bump") as Int == 2)
        }

        @Test("the example program runs plugins from pools of sandboxes on several threads")
        func exampleProgram() throws {
            let binary = CLITests.binary.deletingLastPathComponent().appendingPathComponent("swiftvisor-sandbox-example")
            let process = Process()
            process.executableURL = binary
            process.arguments = ["2", "32"]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "\(text)")
            #expect(text.contains("all 32 jobs on 2 threads gave what they should"), "\(text)")
        }
    }
}
