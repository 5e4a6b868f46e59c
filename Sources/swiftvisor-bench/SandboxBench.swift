// Sandbox benchmarks (issue 17): a guest function's call round trip and a host function's
// round trip against the C reference's bare exit round trip in the same run; reset after
// 1, 16 and 256 dirtied pages on 8 MiB and 256 MiB sandboxes; cold creation and pooled
// checkout; calls per second from 1 and 2 threads; heap allocations per call on the calling
// thread (interposed malloc). See BENCHMARKS.md, "Sandboxes".
//
//   swiftvisor-bench sandbox [--calls N] [--rounds R] [--reference PATH]
//
// The guest is Guests/sandbox/sandbox_calls.sandbox.c: `add` (two Int64 in, one out),
// `via_host` (calls host function `double` once), `touch` (writes N pages of a 1 MiB
// buffer).
import CBenchSupport
import Glibc
import Synchronization
import SwiftVisorGuests
import SwiftVisorSandbox
import VisorHost

enum SandboxBench {
    static let modes: Set<String> = ["sandbox"]

    static func main(_ arguments: [String]) -> Int32 {
        var calls = 20_000
        var rounds = 5
        var referencePath = "../shared/bench/reference"
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--calls": calls = Int(rest.popFirst() ?? "") ?? 0
            case "--rounds": rounds = Int(rest.popFirst() ?? "") ?? 0
            case "--reference": referencePath = rest.popFirst() ?? referencePath
            default: return usage()
            }
        }
        guard calls >= 100, rounds >= 1 else { return usage() }
        do {
            try run(calls: calls, rounds: rounds, referencePath: referencePath)
            return 0
        } catch {
            print("swiftvisor-bench sandbox: \(error)")
            return 1
        }
    }

    static func usage() -> Int32 {
        print("usage: swiftvisor-bench sandbox [--calls N (>= 100)] [--rounds R] [--reference PATH]")
        return 2
    }

    static func makeSandbox(memory: Int = 8 << 20, timeLimit: Duration? = .seconds(1)) throws(SandboxError) -> Sandbox {
        var configuration = SandboxConfiguration()
        configuration.memorySize = memory
        configuration.timeLimit = timeLimit
        let sandbox = try Sandbox(guest: GuestImages.sandboxCalls, configuration: configuration)
        sandbox.register("double") { (x: Int) in x &* 2 }
        return sandbox
    }

    /// Nanoseconds per call of `body` over `count` calls, and allocations per call.
    static func measure(_ count: Int, _ body: (Int) throws(SandboxError) -> Void) throws(SandboxError) -> (
        ns: Double, allocations: Double
    ) {
        for i in 0..<min(count, 200) { try body(i) }  // warm: first-touch faults, caches
        let allocations = calloc_counter_thread_allocations()
        let start = HostIO.monotonicNanoseconds()
        for i in 0..<count { try body(i) }
        let elapsed = HostIO.monotonicNanoseconds() - start
        return (Double(elapsed) / Double(count), Double(calloc_counter_thread_allocations() - allocations) / Double(count))
    }

    static func run(calls: Int, rounds: Int, referencePath: String) throws {
        // SAFETY: access reads the NUL-terminated copy of the path Swift passes for the call.
        let haveReference = unsafe access(referencePath, X_OK) == 0
        if !haveReference { print("note: no C reference at \(referencePath); ratios are left out") }
        let sandbox = try makeSandbox()
        var reference: [Double] = [], callTimes: [Double] = [], hostTimes: [Double] = []
        var callAllocations = 0.0, hostAllocations = 0.0
        for _ in 0..<rounds {
            if haveReference {
                let ref = spawn([referencePath, "pio", String(calls)])
                if let ns = field("ns_per_exit", ref.output) { reference.append(ns) }
            }
            let add = try measure(calls) { (i) throws(SandboxError) in
                let sum: Int = try sandbox.call("add", i, 1)
                if sum != i + 1 { fatalError("add returned \(sum)") }
            }
            callTimes.append(add.ns)
            callAllocations = add.allocations
            let host = try measure(calls) { (i) throws(SandboxError) in
                let result: Int = try sandbox.call("via_host", i)
                if result != 2 * i + 1 { fatalError("via_host returned \(result)") }
            }
            hostTimes.append(host.ns - add.ns)
            hostAllocations = host.allocations
        }
        // The same call with no time limit (no timer to arm), and a call with no arguments.
        let unlimited = try makeSandbox(timeLimit: nil)
        var unlimitedTimes: [Double] = [], bumpTimes: [Double] = []
        for _ in 0..<rounds {
            unlimitedTimes.append(
                try measure(calls) { (i) throws(SandboxError) in
                    let sum: Int = try unlimited.call("add", i, 1)
                    if sum != i + 1 { fatalError("add returned \(sum)") }
                }.ns)
            bumpTimes.append(try measure(calls) { (_) throws(SandboxError) in let _: Int = try unlimited.call("bump") }.ns)
        }
        let r = reference.isEmpty ? Double.nan : median(reference)
        let call = median(callTimes), host = median(hostTimes)
        print(
            "sandbox call round trip: calls=\(calls) rounds=\(rounds) reference_ns_per_exit=\(format(r)) call_ns=\(format(call)) ratio=\(format(call / r, 3)) allocations_per_call=\(format(callAllocations, 3))"
        )
        print(
            "sandbox call without a time limit: add_ns=\(format(median(unlimitedTimes))) bump_ns=\(format(median(bumpTimes)))"
        )
        print(
            "sandbox host-function round trip (via_host minus add): host_call_ns=\(format(host)) ratio=\(format(host / r, 3)) allocations_per_call=\(format(hostAllocations, 3))"
        )

        // Reset after N dirtied pages.
        for memory in [8 << 20, 256 << 20] {
            let box = try makeSandbox(memory: memory)
            var line = "sandbox reset, \(memory >> 20) MiB:"
            for pages in [1, 16, 256] {
                var times: [Double] = []
                for i in 0..<max(rounds * 20, 50) {
                    let touched: Int = try box.call("touch", pages)
                    precondition(touched == pages)
                    let start = HostIO.monotonicNanoseconds()
                    try box.reset()
                    if i >= 5 { times.append(Double(HostIO.monotonicNanoseconds() - start)) }
                }
                line += " pages_\(pages)_us=\(format(median(times) / 1000, 1))"
            }
            print(line)
        }

        // Cold creation and pooled checkout.
        var cold: [Double] = []
        for _ in 0..<max(rounds * 4, 10) {
            let start = HostIO.monotonicNanoseconds()
            _ = try makeSandbox()
            cold.append(Double(HostIO.monotonicNanoseconds() - start))
        }
        let pool = try SandboxPool(guest: GuestImages.sandboxCalls, count: 1) { $0.register("double") { (x: Int) in x &* 2 } }
        var checkout: [Double] = [], checkin: [Double] = []
        for i in 0..<max(rounds * 40, 100) {
            let start = HostIO.monotonicNanoseconds()
            let box = try pool.checkOut()
            let out = HostIO.monotonicNanoseconds()
            let sum: Int = try box.call("add", i, 1)
            precondition(sum == i + 1)
            let back = HostIO.monotonicNanoseconds()
            pool.checkIn(box)
            checkout.append(Double(out - start))
            checkin.append(Double(HostIO.monotonicNanoseconds() - back))
        }
        var referenceStartup = Double.nan
        if haveReference {
            let ref = spawn([referencePath, "startup"])
            referenceStartup = field("setup_us", ref.output) ?? .nan
        }
        print(
            "sandbox creation: cold_us=\(format(median(cold) / 1000, 1)) (new VM to READY and snapshot) reference_setup_us=\(format(referenceStartup, 1)) pooled_checkout_us=\(format(median(checkout) / 1000, 2)) checkin_reset_us=\(format(median(checkin) / 1000, 1))"
        )

        // Throughput from 1 and 2 threads, each with its own sandbox from a pool.
        let throughputPool = try SandboxPool(guest: GuestImages.sandboxCalls, count: 2)
        var line = "sandbox throughput:"
        for threads in [1, 2] {
            let done = Atomic<Int>(0)
            let failures = Atomic<Int>(0)
            let start = HostIO.monotonicNanoseconds()
            for _ in 0..<threads {
                HostThread.detach {
                    do {
                        try throughputPool.withSandbox { (box) throws(SandboxError) in
                            for i in 0..<calls {
                                let sum: Int = try box.call("add", i, 1)
                                if sum != i + 1 { failures.add(1, ordering: .relaxed) }
                            }
                        }
                    } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                    done.add(1, ordering: .relaxed)
                }
            }
            while done.load(ordering: .relaxed) < threads { HostIO.sleep(nanoseconds: 1_000_000) }
            let seconds = Double(HostIO.monotonicNanoseconds() - start) / 1e9
            precondition(failures.load(ordering: .relaxed) == 0)
            line += " threads_\(threads)_calls_per_s=\(format(Double(threads * calls) / seconds))"
        }
        print(line)
    }
}
