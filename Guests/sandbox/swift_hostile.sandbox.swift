// A hostile sandbox guest in Embedded Swift: an endless loop, runaway recursion, Swift traps, an abort, floods.

@main
struct Hostile: SandboxGuest {
    static func register() {
        // A harmless function, to show the sandbox works before and after the others.
        Sandbox.export("ping") { (x: Int) -> Int in x &+ 1 }

        // Never returns: only the host's time limit ends the call.
        Sandbox.export("spin") { () -> Int in spin() }

        // Recurses until the stack runs into its guard page (#PF).
        Sandbox.export("recurse") { (n: Int) -> Int in recurse(n) }

        // Swift's run-time checks: each is a trap (`ud2`, #UD).
        Sandbox.export("outOfRange") { (index: Int) -> Int in
            let table = [10, 20, 30]
            return table[index]
        }
        Sandbox.export("overflow") { (x: Int) -> Int in Int.max - 1 + x }
        Sandbox.export("divide") { (a: Int, b: Int) -> Int in a / b }
        Sandbox.export("unwrap") { (text: String) -> Int in
            let digits = text.utf8.first { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            return Int(digits! - UInt8(ascii: "0"))
        }
        Sandbox.export("fatal") { (message: String) -> Int in fatalError(message) }

        // Gives up with a message (ABORT).
        Sandbox.export("abort") { (message: String) -> Int in Sandbox.abort(message) }

        // Prints `lines` lines of `width` bytes: beyond the host's output limit, an error.
        Sandbox.export("flood") { (lines: Int, width: Int) -> Int in
            let line = String(repeating: "x", count: max(0, min(width, 1 << 20)))
            for _ in 0..<max(0, lines) { Sandbox.print(line) }
            return lines
        }

        // Allocates `count` blocks of 1 MiB and keeps them: past the heap, Swift's allocation
        // fails and traps.
        Sandbox.export("exhaustHeap") { (count: Int) -> Int in
            var blocks: [[UInt8]] = []
            for i in 0..<max(0, count) { blocks.append([UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1 << 20)) }
            return blocks.reduce(0) { $0 + $1.count }
        }

        // Calls a host function the host did not register.
        Sandbox.export("callMissing") { () throws(GuestError) -> Int in try Host.call("no_such_function") as Int }

        // Asks a host function for a String where it returns an Int: the reply's type is
        // checked, and the call fails.
        Sandbox.export("wrongType") { (name: String) throws(GuestError) -> String in try Host.call(name) as String }

        // Writes the global counter, so that a test can see a restore put it back.
        Sandbox.export("bump") { () -> Int in
            unsafe Counter.value += 1
            return unsafe Counter.value
        }
    }
}

/// State that outlives a call unless the host restores the sandbox. A guest has one thread
/// and no interrupts, so its accesses never race (hence `unsafe`, which says so).
enum Counter {
    nonisolated(unsafe) static var value = 0
}

/// An endless loop the optimizer cannot remove: it keeps writing memory.
func spin() -> Int {
    var counter = 0
    while true {
        counter &+= 1
        unsafe Counter.value = counter
    }
}

/// Recursion that the optimizer cannot turn into a loop: each frame keeps a buffer alive
/// across the call.
@_optimize(none)
func recurse(_ n: Int) -> Int {
    if n == Int.min { return 0 }  // never: n counts up from the argument
    var frame = (n, n &+ 1, n &+ 2, n &+ 3, n &+ 4, n &+ 5, n &+ 6, n &+ 7)
    frame.0 = recurse(n &+ 1)
    return frame.0 &+ frame.7
}
