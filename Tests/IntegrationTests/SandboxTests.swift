import Synchronization
import SwiftVisorGuests
import SwiftVisorSandbox
import Testing
import VisorHost
import VisorKVM

extension KVMIntegration {
    /// Sandboxes (Guests/sandbox/ABI.md) on KVM: calls, host functions, resets, and guests
    /// that misbehave in every way issue 17 lists, each an error of its kind followed by a
    /// call that works.
    @Suite("Sandboxes on KVM")
    struct SandboxTests {
        static func calls(_ configuration: SandboxConfiguration = SandboxConfiguration()) throws -> Sandbox {
            let sandbox = try Sandbox(guest: GuestImages.sandboxCalls, configuration: configuration)
            sandbox.register("double") { (x: Int) in x * 2 }
            sandbox.register("greet") { (name: String) in "hello, \(name)" }
            return sandbox
        }

        @Test("a guest's functions return typed results: integers, Double, String, an array")
        func typedCalls() throws {
            let sandbox = try Self.calls()
            #expect(try sandbox.call("add", 2, 40) as Int == 42)
            #expect(try sandbox.call("add", Int.max, 1) as Int == Int.min)
            #expect(try sandbox.call("scale", 1.5, 4.0) as Double == 6.0)
            #expect(try sandbox.call("upper", "héllo, World") as String == "HéLLO, WORLD")
            #expect(try sandbox.call("sum", [1, 2, 3, -10] as [Int]) as Int == -4)
            #expect(try sandbox.call("sum", [Int]()) as Int == 0)
            #expect(try sandbox.call("upper", "") as String == "")
        }

        @Test("the guest calls host functions with integers and strings")
        func hostFunctions() throws {
            let sandbox = try Self.calls()
            #expect(try sandbox.call("via_host", 20) as Int == 41)
            #expect(try sandbox.call("greet", "sandbox") as String == "hello, sandbox")
            // A host function that throws: the guest gets code 4 and passes the message on.
            sandbox.register("double") { (_: Int) throws -> Int in throw HostFailure() }
            #expect(throws: SandboxError.guestFailed("the host says no")) { try sandbox.call("via_host", 1) as Int }
            // A host function of the wrong type: the guest gets code 2.
            sandbox.register("double") { (_: String) in 0 }
            #expect {
                try sandbox.call("via_host", 1) as Int
            } throws: { error in
                guard case SandboxError.guestFailed(let message) = error else { return false }
                return message.contains("Int64") && message.contains("String")
            }
            sandbox.register("double") { (x: Int) in x * 3 }
            #expect(try sandbox.call("via_host", 2) as Int == 7)
        }

        @Test("the guest runtime's heap and memory functions work inside the sandbox")
        func guestRuntime() throws {
            let sandbox = try Self.calls()
            #expect(try sandbox.call("heap_check") as Int == 0)
            #expect(try sandbox.call("heap_check") as Int == 0)  // again, on a used heap
        }

        @Test("printed text reaches the output handler")
        func printing() throws {
            let lines = Mutex<[String]>([])
            var configuration = SandboxConfiguration()
            configuration.output = { text in lines.withLock { $0.append(text) } }
            let sandbox = try Self.calls(configuration)
            try sandbox.call("hello")
            #expect(lines.withLock { $0 } == ["hello from the sandbox\n"])
        }

        @Test("the C SDK: a status outside 1-4 becomes 4; messages and prints are cut between characters")
        func cSDKEdges() throws {
            let printed = Mutex<[String]>([])
            var configuration = SandboxConfiguration()
            configuration.output = { text in printed.withLock { $0.append(text) } }
            let sandbox = try Self.calls(configuration)
            for status in [5, 7, 255, 65537, -1] {
                #expect(throws: SandboxError.guestFailed("the function failed"), "status \(status)") {
                    try sandbox.call("odd_status", status)
                }
            }
            #expect(throws: SandboxError.wrongArguments("wrong arguments")) { try sandbox.call("odd_status", 2) }
            // 1 + 2 * 127 bytes: the longest whole-character prefix within 255.
            #expect(throws: SandboxError.guestFailed("a" + String(repeating: "é", count: 127))) {
                try sandbox.call("long_error")
            }
            try sandbox.call("print_wide")
            let chunks = printed.withLock { $0 }
            #expect(chunks.count >= 2)
            #expect(chunks.joined() == "a" + String(repeating: "é", count: 20_000))
        }

        @Test("errors the guest answers: unknown function, wrong arguments, a call too long")
        func answeredErrors() throws {
            let sandbox = try Self.calls()
            #expect(throws: SandboxError.unknownFunction("nope")) { try sandbox.call("nope", 1) as Int }
            #expect(throws: SandboxError.wrongArguments("wrong arguments")) { try sandbox.call("add", "x", 1) as Int }
            #expect(throws: SandboxError.wrongArguments("wrong arguments")) { try sandbox.call("add", 1) as Int }
            // The result type the caller asked for is not the one the guest returned.
            #expect(throws: SandboxError.badMessage("the result of add: a Int64 where a String was expected")) {
                try sandbox.call("add", 1, 2) as String
            }
            let huge = String(repeating: "x", count: 40_000)
            #expect {
                try sandbox.call("upper", huge) as String
            } throws: { error in
                guard case SandboxError.wrongArguments(let why) = error else { return false }
                return why.contains("input buffer")
            }
            #expect(throws: SandboxError.wrongArguments("a function name must have 1 to 255 bytes of UTF-8, not 0")) {
                try sandbox.call("", 1) as Int
            }
            #expect(try sandbox.call("add", 1, 2) as Int == 3)
        }

        @Test("reset puts back the state after READY; snapshot and restore go to a chosen state")
        func snapshots() throws {
            let sandbox = try Self.calls()
            #expect(try sandbox.call("bump") as Int == 1)
            #expect(try sandbox.call("bump") as Int == 2)
            try sandbox.reset()
            #expect(try sandbox.call("bump") as Int == 1)
            let one = try sandbox.snapshot()
            #expect(try sandbox.call("bump") as Int == 2)
            #expect(try sandbox.call("bump") as Int == 3)
            try sandbox.restore(one)
            #expect(try sandbox.call("bump") as Int == 2)
            _ = try sandbox.call("touch", 200) as Int
            try sandbox.restore(one)
            #expect(try sandbox.call("bump") as Int == 2)
            let other = try Self.calls()
            #expect(throws: SandboxError.invalidConfiguration("the snapshot belongs to another sandbox")) {
                try other.restore(one)
            }
        }

        @Test("a host function that calls back into its own sandbox gets .busy; the sandbox keeps working")
        func reentrantUse() throws {
            let sandbox = try Self.calls()
            let seen = Mutex<[SandboxError?]>([])
            let weak = WeakSandbox(sandbox)
            sandbox.register("double") { (x: Int) in
                guard let inner = weak.sandbox else { return 0 }
                // Each way back in, one at a time (not as an array of closures: the 6.3
                // compiler crashes on typed-throws closures stored in an array here).
                do throws(SandboxError) {
                    _ = try inner.call("add", 1, 2) as Int
                    seen.withLock { $0.append(nil) }
                } catch { seen.withLock { $0.append(error) } }
                do throws(SandboxError) {
                    try inner.call("bump")
                    seen.withLock { $0.append(nil) }
                } catch { seen.withLock { $0.append(error) } }
                do throws(SandboxError) {
                    _ = try inner.snapshot()
                    seen.withLock { $0.append(nil) }
                } catch { seen.withLock { $0.append(error) } }
                do throws(SandboxError) {
                    try inner.reset()
                    seen.withLock { $0.append(nil) }
                } catch { seen.withLock { $0.append(error) } }
                return x * 2
            }
            #expect(try sandbox.call("via_host", 20) as Int == 41)
            #expect(seen.withLock { $0 } == [.busy, .busy, .busy, .busy])
            #expect(try sandbox.call("add", 2, 3) as Int == 5)
            try sandbox.reset()
        }

        @Test("a snapshot of a dropped sandbox does not restore into a new one at the same address")
        func snapshotOfDroppedSandbox() throws {
            var reused = false
            for _ in 0..<20 where !reused {
                var first: Sandbox? = try Self.calls()
                _ = try first!.call("bump") as Int
                let snapshot = try first!.snapshot()
                let address = ObjectIdentifier(first!)
                first = nil
                let second = try Self.calls()
                reused = ObjectIdentifier(second) == address
                #expect(throws: SandboxError.invalidConfiguration("the snapshot belongs to another sandbox")) {
                    try second.restore(snapshot)
                }
                #expect(try second.call("bump") as Int == 1)
            }
            if !reused { print("snapshotOfDroppedSandbox: no address was reused in 20 tries") }
        }

        @Test("two threads using one sandbox at once: each call completes or gets .busy")
        func concurrentUse() throws {
            let sandbox = try Self.calls()
            let wrong = Atomic<Int>(0)
            let busy = Atomic<Int>(0)
            let done = Atomic<Int>(0)
            for t in 0..<2 {
                HostThread.detach {
                    for i in 0..<2000 {
                        do {
                            if try sandbox.call("add", t * 100_000 + i, 1) as Int != t * 100_000 + i + 1 {
                                wrong.add(1, ordering: .relaxed)
                            }
                        } catch SandboxError.busy {
                            busy.add(1, ordering: .relaxed)
                        } catch {
                            wrong.add(1, ordering: .relaxed)
                        }
                    }
                    done.add(1, ordering: .relaxed)
                }
            }
            while done.load(ordering: .relaxed) < 2 { HostIO.sleep(nanoseconds: 1_000_000) }
            #expect(wrong.load(ordering: .relaxed) == 0)
            print("concurrentUse: \(busy.load(ordering: .relaxed)) of 4000 calls found the sandbox busy")
            #expect(try sandbox.call("add", 1, 1) as Int == 2)
        }

        // MARK: Hostile guests

        static func hostile(_ configuration: SandboxConfiguration = SandboxConfiguration()) throws -> Sandbox {
            try Sandbox(guest: GuestImages.sandboxHostile, configuration: configuration)
        }

        /// Calls `name`, expects `check` to accept the error, then expects the sandbox to work
        /// (and to have been reset: `swap_state` sees the state after READY).
        func expectError(
            _ sandbox: Sandbox, _ name: String, _ arguments: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation,
            _ check: (SandboxError) -> Bool
        ) throws {
            #expect(try sandbox.call("swap_state", 7) as Int == 0, sourceLocation: sourceLocation)
            do {
                if let arguments { try sandbox.call(name, arguments) } else { try sandbox.call(name) }
                Issue.record("\(name) did not fail", sourceLocation: sourceLocation)
            } catch {
                let accepted = check(error)
                let text = "\(name): \(error)"
                #expect(accepted, "\(text)", sourceLocation: sourceLocation)
            }
            #expect(try sandbox.call("swap_state", 5) as Int == 0, "after \(name)", sourceLocation: sourceLocation)
            #expect(try sandbox.call("swap_state", 0) as Int == 5, sourceLocation: sourceLocation)
        }

        static func trap(_ vector: UInt8, errorCode: UInt64? = nil, cr2: UInt64? = nil) -> (SandboxError) -> Bool {
            { error in
                guard case .guestTrap(let trap) = error else { return false }
                return trap.vector == vector && (errorCode == nil || trap.errorCode == errorCode)
                    && (cr2 == nil || trap.cr2 == cr2) && !trap.tripleFault
            }
        }

        @Test("an endless loop ends at the time limit, and the sandbox works again")
        func endlessLoop() throws {
            var configuration = SandboxConfiguration()
            configuration.timeLimit = .milliseconds(50)
            let sandbox = try Self.hostile(configuration)
            let start = HostIO.monotonicNanoseconds()
            try expectError(sandbox, "spin") { $0 == .timeLimit(nanoseconds: 50_000_000) }
            let elapsed = (HostIO.monotonicNanoseconds() - start) / 1_000_000
            #expect(elapsed < 1000, "took \(elapsed) ms")
        }

        /// Runs `body` on a new thread and waits at most `seconds` for it; nil when it did not end.
        static func onThread<R: Sendable>(seconds: Int, _ body: @escaping @Sendable () -> R) -> R? {
            let result = Mutex<R?>(nil)
            let done = Atomic<Bool>(false)
            HostThread.detach {
                let value = body()
                result.withLock { $0 = value }
                done.store(true, ordering: .releasing)
            }
            for _ in 0..<seconds * 100 where !done.load(ordering: .acquiring) { HostIO.sleep(nanoseconds: 10_000_000) }
            return done.load(ordering: .acquiring) ? result.withLock { $0 } : nil
        }

        @Test("the time limit ends a call from a thread that blocks the kick signal, and from a Task")
        func timeLimitWhateverTheMask() async throws {
            let configuration = SandboxConfiguration(timeLimit: .milliseconds(20))
            let outcome = Self.onThread(seconds: 10) { () -> SandboxError? in
                do {
                    let sandbox = try Self.hostile(configuration)
                    // The thread has called once (READY); now it blocks the kick, as a worker thread does.
                    VCPUSignals.block([VCPUSignals.kick])
                    try sandbox.call("spin")
                    return nil
                } catch let error as SandboxError {
                    return error
                } catch {
                    return .hypervisor("\(error)")
                }
            }
            #expect(outcome == .some(.timeLimit(nanoseconds: 20_000_000)), "the call did not end: \(String(describing: outcome))")

            let sandbox = try Self.hostile(configuration)
            for _ in 0..<3 {
                let error = await Task.detached { () -> SandboxError? in
                    do throws(SandboxError) {
                        try sandbox.call("spin")
                        return nil
                    } catch {
                        return error
                    }
                }.value
                #expect(error == .timeLimit(nanoseconds: 20_000_000))
            }
        }

        @Test("the time limit covers host functions: a slow one ends the call when it returns")
        func slowHostFunction() throws {
            var configuration = SandboxConfiguration()
            configuration.timeLimit = .milliseconds(30)
            let sandbox = try Self.calls(configuration)
            sandbox.register("double") { (x: Int) in
                HostIO.sleep(nanoseconds: 100_000_000)
                return 2 * x
            }
            #expect(throws: SandboxError.timeLimit(nanoseconds: 30_000_000)) { try sandbox.call("via_host", 1) as Int }
            sandbox.register("double") { (x: Int) in 2 * x }
            #expect(try sandbox.call("via_host", 1) as Int == 3)
        }

        @Test("bad memory accesses: null, read-only, code, supervisor structures, the guard page; each a #PF")
        func memoryFaults() throws {
            let sandbox = try Self.hostile()
            // P=0 (not present), W, U.
            try expectError(sandbox, "write_null", nil, Self.trap(14, errorCode: 0x6, cr2: 0x10))
            try expectError(sandbox, "write_text", nil, Self.trap(14, errorCode: 0x7))
            // Text is at 0x400000: present, user, read-only.
            try expectError(sandbox, "write_at", 0x40_0000, Self.trap(14, errorCode: 0x7, cr2: 0x40_0000))
            // The GDT, the IDT, the TSS, the page tables: supervisor-only, for reads too.
            for address in [0x1000, 0x2000, 0x3000, 0x8000] {
                try expectError(sandbox, "write_at", address, Self.trap(14, errorCode: 0x7, cr2: UInt64(address)))
                try expectError(sandbox, "read_at", address, Self.trap(14, errorCode: 0x5, cr2: UInt64(address)))
            }
            // The guard page below the stack, and the trap page at the end of RAM.
            let guardPage = (8 << 20) - (256 << 10) - 4096
            try expectError(sandbox, "write_at", guardPage, Self.trap(14, errorCode: 0x6, cr2: UInt64(guardPage)))
            try expectError(sandbox, "read_at", 8 << 20, Self.trap(14, errorCode: 0x5, cr2: 8 << 20))
            // Non-canonical: #GP.
            try expectError(sandbox, "write_at", Int(bitPattern: 0x8000_0000_0000_0000), Self.trap(13))
        }

        @Test("a stack overflow faults in the guard page")
        func stackOverflow() throws {
            let sandbox = try Self.hostile()
            let guardPage = UInt64((8 << 20) - (256 << 10) - 4096)
            try expectError(sandbox, "stack_overflow") { error in
                guard case .guestTrap(let trap) = error else { return false }
                return trap.vector == 14 && trap.cr2 >= guardPage && trap.cr2 < guardPage + 4096
            }
        }

        @Test("hlt, cli, mov to CR3, out to another port, int n, int3, a divide by zero: each a trap")
        func privilegedInstructions() throws {
            let sandbox = try Self.hostile()
            try expectError(sandbox, "hlt", nil, Self.trap(13, errorCode: 0))
            try expectError(sandbox, "cli", nil, Self.trap(13, errorCode: 0))
            try expectError(sandbox, "write_cr3", nil, Self.trap(13, errorCode: 0))
            try expectError(sandbox, "port", nil, Self.trap(13, errorCode: 0))
            // int n through a DPL-0 gate is #GP with the gate in the error code; hosts that
            // raise #UD for int n at CPL 3 (see PLATFORM.md) end it the same way.
            try expectError(sandbox, "int") { error in
                Self.trap(13, errorCode: 0x21 * 8 + 2)(error) || Self.trap(6)(error)
            }
            try expectError(sandbox, "int3") { error in
                Self.trap(13, errorCode: 3 * 8 + 2)(error) || Self.trap(6)(error) || Self.trap(3)(error)
            }
            #expect(throws: SandboxError.self) { try sandbox.call("divide", 1, 0) as Int }
            #expect(try sandbox.call("divide", 10, 3) as Int == 3)
        }

        @Test("a trap reports the faulting RIP and the guest's registers")
        func trapState() throws {
            let sandbox = try Self.hostile()
            do {
                try sandbox.call("write_at", 0x40_0000)
                Issue.record("no trap")
            } catch {
                guard case .guestTrap(let trap) = error else {
                    Issue.record("\(error)")
                    return
                }
                #expect(trap.rip >= 0x40_0000 && trap.rip < 0x40_2000, "RIP \(trap.rip)")
                #expect(trap.registers.rip == trap.rip)
                #expect(trap.registers.rsp > UInt64((8 << 20) - (256 << 10)) && trap.registers.rsp < 8 << 20)
                #expect(trap.registers.rflags & 0x2 != 0)
                #expect(trap.name == "#PF")
                #expect(error.description.contains("CR2 0x400000"))
            }
        }

        @Test("host-call and message abuse: unknown host function, beyond the area, garbage, bad UTF-8, scribbles")
        func messageAbuse() throws {
            let sandbox = try Self.hostile()
            try expectError(sandbox, "unknown_host") { $0 == .unknownFunction("no_such_function") }
            try expectError(sandbox, "long_host_call") { error in
                guard case .badMessage(let why) = error else { return false }
                return why.contains("beyond the output buffer")
            }
            try expectError(sandbox, "garbage_string") { error in
                guard case .badMessage(let why) = error else { return false }
                return why.contains("runs past the end")
            }
            try expectError(sandbox, "bad_utf8") { error in
                guard case .badMessage(let why) = error else { return false }
                return why.contains("UTF-8")
            }
            try expectError(sandbox, "scribble") { error in
                guard case .badMessage(let why) = error else { return false }
                return why.contains("output length 4294967295")
            }
            try expectError(sandbox, "give_up") { $0 == .guestAbort("nothing left to try") }
            try expectError(sandbox, "port_in") { error in
                guard case .badMessage(let why) = error else { return false }
                return why.contains("only a 32-bit out")
            }
            try expectError(sandbox, "unknown_op") { $0 == .badMessage("unknown operation 77") }
        }

        @Test("output beyond the limit ends the call")
        func outputLimit() throws {
            var configuration = SandboxConfiguration()
            configuration.outputLimit = 4096
            configuration.output = { _ in }
            let sandbox = try Self.hostile(configuration)
            try sandbox.call("flood", 4)
            try expectError(sandbox, "flood", 5) { $0 == .outputLimit(4096) }
        }

        @Test("a guest that is not an ELF, or too big, or badly laid out, is refused")
        func invalidGuests() throws {
            #expect(throws: SandboxError.self) { try Sandbox(guest: [1, 2, 3]) }
            var small = SandboxConfiguration()
            small.memorySize = 4 << 20
            #expect(throws: SandboxError.self) { try Sandbox(guest: GuestImages.sandboxCalls, configuration: small) }
            // A classic guest (one RWX segment at 1 MiB) is not a sandbox guest.
            #expect(throws: SandboxError.self) { try Sandbox(guest: GuestImages.probe) }
        }

        // MARK: Pools and resources

        @Test("a pool hands out ready sandboxes to several threads and resets them")
        func pool() throws {
            let pool = try SandboxPool(guest: GuestImages.sandboxCalls, count: 2) { sandbox in
                sandbox.register("double") { (x: Int) in 2 * x }
            }
            #expect(pool.idleCount == 2)
            let failures = Atomic<Int>(0)
            let done = Atomic<Int>(0)
            for t in 0..<2 {
                HostThread.detach {
                    for i in 0..<200 {
                        do {
                            let result: (Int, Int) = try pool.withSandbox { sandbox throws(SandboxError) in
                                (try sandbox.call("bump"), try sandbox.call("via_host", t * 1000 + i))
                            }
                            if result != (1, 2 * (t * 1000 + i) + 1) { failures.add(1, ordering: .relaxed) }
                        } catch {
                            failures.add(1, ordering: .relaxed)
                        }
                    }
                    done.add(1, ordering: .relaxed)
                }
            }
            while done.load(ordering: .relaxed) < 2 { HostIO.sleep(nanoseconds: 1_000_000) }
            #expect(failures.load(ordering: .relaxed) == 0)
            #expect(pool.idleCount == 2)
        }

        @Test("a pool resets to the state after READY even when its user moved the snapshot")
        func poolIgnoresUserSnapshots() throws {
            let pool = try SandboxPool(guest: GuestImages.sandboxCalls, count: 1)
            try pool.withSandbox { sandbox throws(SandboxError) in
                #expect(try sandbox.call("bump") as Int == 1)
                _ = try sandbox.snapshot()
                #expect(try sandbox.call("bump") as Int == 2)
            }
            try pool.withSandbox { sandbox throws(SandboxError) in
                let one = try sandbox.call("bump") as Int
                #expect(one == 1, "the pool handed out the previous user's state")
                try sandbox.restore(try sandbox.snapshot())
            }
            #expect(pool.idleCount == 1)
            #expect(try pool.withSandbox { sandbox throws(SandboxError) in try sandbox.call("bump") as Int } == 1)
        }

        /// Calls with a reset after each in `swift test`; SWIFTVISOR_SANDBOX_CALLS overrides it.
        static let resetCalls = environmentCount("SWIFTVISOR_SANDBOX_CALLS", default: 10_000)

        @Test("10,000 calls with a reset after each leave descriptors, threads and RSS flat")
        func manyResets() throws {
            let sandbox = try Self.calls()
            for _ in 0..<100 {
                _ = try sandbox.call("touch", 3) as Int
                try sandbox.reset()
            }
            let baseline = ProcessResources()
            let start = HostIO.monotonicNanoseconds()
            for i in 0..<Self.resetCalls {
                #expect(try sandbox.call("add", i, 1) as Int == i + 1)
                #expect(try sandbox.call("bump") as Int == 1)
                try sandbox.reset()
            }
            print("\(Self.resetCalls) calls with resets in \(secondsSince(start)) s")
            baseline.expectUnchanged(rssSlackKiB: 4 * 1024)
        }

        @Test("sandboxes created and dropped leave nothing behind")
        func createAndDrop() throws {
            for _ in 0..<3 { _ = try Self.calls() }
            let baseline = ProcessResources()
            for _ in 0..<50 {
                let sandbox = try Self.calls()
                #expect(try sandbox.call("add", 1, 1) as Int == 2)
            }
            HostIO.sleep(nanoseconds: 20_000_000)  // the watchdog thread notices it has no timers
            baseline.expectUnchanged(rssSlackKiB: 8 * 1024)
        }
    }
}

/// A sandbox a host function of its own can reach without keeping it alive.
final class WeakSandbox: @unchecked Sendable {
    // @unchecked: `sandbox` is set once, in init, and only read afterwards.
    weak var sandbox: Sandbox?
    init(_ sandbox: Sandbox) { self.sandbox = sandbox }
}

struct HostFailure: Error, CustomStringConvertible {
    var description: String { "the host says no" }
}
