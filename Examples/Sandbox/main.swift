// Runs untrusted "plugins" in pools of sandboxes from several threads. Run it with
// `swift run swiftvisor-sandbox-example [THREADS] [JOBS]` (defaults: 2 threads, 48 jobs).
//
// The plugins are the functions of two Embedded Swift guests from Guests/sandbox/:
// - swift_example behaves: it counts the pairs of untrusted configuration text (or says
//   which line is bad), counts words, and greets through two host functions of ours;
// - swift_hostile does not: it loops forever, recurses into its stack's guard page, and
//   indexes an array out of range.
// Each job checks a sandbox out of its guest's pool, makes one call and gives the sandbox
// back; the pool resets it, so each job starts from the state right after the guest's
// initialization, whatever the job before did to it. The program prints what each kind of
// job gave and exits with status 0 only if every job gave what it should.
import Dispatch
import Glibc
import Synchronization
import SwiftVisorGuests
import SwiftVisorSandbox

/// What a job should give: a value (as text), or an error that `matches` accepts.
enum Expected: Sendable {
    case value(String)
    case error(String, @Sendable (SandboxError) -> Bool)
}

/// One plugin call: which pool, what to call, and what it should give.
struct Job: Sendable {
    let name: String
    let hostile: Bool
    let run: @Sendable (Sandbox) throws(SandboxError) -> String
    let expected: Expected
}

let jobs: [Job] = [
    Job(
        name: "countPairs of a good file", hostile: false,
        run: { (s) throws(SandboxError) in String(try s.call("countPairs", "# plugin\nname = demo\nversion = 2\n") as Int) },
        expected: .value("2")),
    Job(
        name: "countPairs of a bad file", hostile: false,
        run: { (s) throws(SandboxError) in String(try s.call("countPairs", "name = demo\nthis is not a pair\n") as Int) },
        expected: .error(
            "the guest says which line is bad",
            {
                if case .guestFailed(let message) = $0 { message.contains("line 2") } else { false }
            })),
    Job(
        name: "wordCount", hostile: false,
        run: { (s) throws(SandboxError) in String(try s.call("wordCount", "the quick brown fox jumps") as Int) },
        expected: .value("5")),
    Job(
        name: "greet through host functions", hostile: false,
        run: { (s) throws(SandboxError) in try s.call("greet", "plugin") as String },
        expected: .value("Hello, plugin!")),
    Job(
        name: "spin forever", hostile: true,
        run: { (s) throws(SandboxError) in String(try s.call("spin") as Int) },
        expected: .error(
            "the time limit",
            {
                if case .timeLimit = $0 { true } else { false }
            })),
    Job(
        name: "recurse into the guard page", hostile: true,
        run: { (s) throws(SandboxError) in String(try s.call("recurse", 0) as Int) },
        expected: .error(
            "a page fault (#PF)",
            {
                if case .guestTrap(let trap) = $0 { trap.vector == 14 } else { false }
            })),
    Job(
        name: "index out of range", hostile: true,
        run: { (s) throws(SandboxError) in String(try s.call("outOfRange", 7) as Int) },
        expected: .error(
            "Swift's trap (#UD)",
            {
                if case .guestTrap(let trap) = $0 { trap.vector == 6 } else { false }
            })),
    Job(
        name: "ping after all that", hostile: true,
        run: { (s) throws(SandboxError) in String(try s.call("ping", 41) as Int) },
        expected: .value("42")),
]

/// What the jobs of one kind gave.
struct Tally {
    var good = 0
    var bad: [String] = []
}

let arguments = CommandLine.arguments.dropFirst().compactMap { Int($0) }
let threads = max(1, arguments.first ?? 2)
let jobCount = max(jobs.count, arguments.dropFirst().first ?? 48)

let logLines = Atomic<Int>(0)
let greeter: @Sendable (Sandbox) -> Void = { sandbox in
    sandbox.register("greeting") { (name: String) -> String in "Hello, " + name }
    sandbox.register("log") { (_: String) in logLines.add(1, ordering: .relaxed) }
}

do {
    // A short time limit: the endless loop costs this much per job.
    let hostileConfiguration = SandboxConfiguration(timeLimit: .milliseconds(100))
    let plugins = try SandboxPool(guest: GuestImages.swiftExample, count: threads, setUp: greeter)
    let hostile = try SandboxPool(guest: GuestImages.swiftHostile, configuration: hostileConfiguration, count: threads)

    let tallies = Mutex<[Tally]>(Array(repeating: Tally(), count: jobs.count))
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: threads) { _ in
        while true {
            let n = next.add(1, ordering: .relaxed).oldValue
            guard n < jobCount else { return }
            let job = jobs[n % jobs.count]
            let pool = job.hostile ? hostile : plugins
            let outcome: Result<String, SandboxError> = Result { () throws(SandboxError) in
                try pool.withSandbox { (sandbox) throws(SandboxError) in try job.run(sandbox) }
            }
            let problem: String? =
                switch (outcome, job.expected) {
                case (.success(let value), .value(let wanted)): value == wanted ? nil : "gave \(value), not \(wanted)"
                case (.success(let value), .error(let wanted, _)): "gave \(value), not \(wanted)"
                case (.failure(let error), .value(let wanted)): "failed (\(error)), not \(wanted)"
                case (.failure(let error), .error(let wanted, let matches)):
                    matches(error) ? nil : "failed (\(error)), not \(wanted)"
                }
            tallies.withLock { tallies in
                if let problem { tallies[n % jobs.count].bad.append(problem) } else { tallies[n % jobs.count].good += 1 }
            }
        }
    }

    var failures = 0
    for (job, tally) in zip(jobs, tallies.withLock { $0 }) {
        print("\(job.name): \(tally.good) as expected" + (tally.bad.isEmpty ? "" : ", \(tally.bad.count) not: \(tally.bad[0])"))
        failures += tally.bad.count
    }
    // The guest's greet calls the host's log once per call.
    let greets = (0..<jobCount).filter { jobs[$0 % jobs.count].name.hasPrefix("greet") }.count
    let logged = logLines.load(ordering: .relaxed)
    print("host function log called \(logged) times for \(greets) greetings")
    if logged != greets { failures += 1 }
    if failures == 0 {
        print("all \(jobCount) jobs on \(threads) threads gave what they should")
    } else {
        print("\(failures) of \(jobCount) jobs did not give what they should")
        exit(1)
    }
} catch {
    print("swiftvisor-sandbox-example: \(error)")
    exit(2)
}
