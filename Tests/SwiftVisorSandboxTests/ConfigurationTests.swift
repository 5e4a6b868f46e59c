import Testing

@testable import SwiftVisorSandbox

@Suite("Sandbox configuration: the time limit")
struct ConfigurationTests {
    func nanoseconds(_ limit: Duration?) throws(SandboxError) -> UInt64? {
        try SandboxConfiguration(timeLimit: limit).timeLimitNanoseconds()
    }

    @Test("a zero or negative time limit, whole or sub-second, is an invalid configuration")
    func nonPositive() {
        for limit: Duration in [.zero, .milliseconds(-500), .nanoseconds(-1), .seconds(-2), .seconds(-1) + .milliseconds(300)] {
            #expect(throws: SandboxError.self, "\(limit)") { try nanoseconds(limit) }
            do {
                _ = try nanoseconds(limit)
            } catch {
                guard case .invalidConfiguration(let why) = error else {
                    Issue.record("\(limit): \(error)")
                    continue
                }
                #expect(why.contains("positive"))
            }
        }
    }

    @Test("positive limits convert to nanoseconds, rounding up and capping")
    func positive() throws {
        #expect(try nanoseconds(nil) == nil)
        #expect(try nanoseconds(.milliseconds(50)) == 50_000_000)
        #expect(try nanoseconds(.seconds(2) + .nanoseconds(3)) == 2_000_000_003)
        #expect(try nanoseconds(Duration(secondsComponent: 0, attosecondsComponent: 1)) == 1)
        #expect(try nanoseconds(.seconds(Int64.max)) == .max)
    }
}
