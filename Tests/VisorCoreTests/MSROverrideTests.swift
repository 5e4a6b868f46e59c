import Testing
@testable import VisorCore

@Suite("MSR overrides (--msr)")
struct MSROverrideTests {
    @Test(
        "overrides parse from the CLI syntax",
        arguments: [
            ("0x8b=allow", MSROverride(index: 0x8B, rule: .allow)),
            ("121=deny", MSROverride(index: 0x79, rule: .deny)),
            ("0x3A=readonly:0xFFFFFFFFFFFFFFFF", MSROverride(index: 0x3A, rule: .readOnly(.max))),
            ("0xffffffff=write-ignored", MSROverride(index: .max, rule: .writeIgnored)),
            ("0x40001000=const:4660", MSROverride(index: 0x4000_1000, rule: .constant(4660))),
            ("0x40001001=record", MSROverride(index: 0x4000_1001, rule: .recorded(0))),
            ("0x40001001=record:", MSROverride(index: 0x4000_1001, rule: .recorded(0))),
            ("0x40001001=record:7", MSROverride(index: 0x4000_1001, rule: .recorded(7))),
            ("1=allow:5", MSROverride(index: 1, rule: .allow)),
        ])
    func parse(text: String, expected: MSROverride) throws {
        let parsed = try MSROverride(parsing: text)
        #expect(parsed == expected)
        #expect(try MSROverride(parsing: parsed.description) == parsed, "description \(parsed) parses back")
    }

    @Test(
        "malformed overrides are refused with a reason",
        arguments: [
            "", "0x8b", "=allow", "0x8b=", "0x100000000=allow", "x=allow", "0x=allow", "-1=deny", "0x8b=readonly",
            "0x8b=readonly:", "0x8b=const:x", "0x8b=record:0x", "0x8b=Allow", "0x8b==allow", "0x8b=const:0x10000000000000000",
            "0x8b=:", "2=::",
        ])
    func badOverride(text: String) {
        #expect(throws: MSRPolicyError.self) { try MSROverride(parsing: text) }
    }

    @Test("an override sets its rule in a policy; allow removes one")
    func apply() throws {
        var policy = MSRPolicy.standard
        policy.apply(try MSROverride(parsing: "0x8b=allow"))
        policy.apply(try MSROverride(parsing: "0x40001000=const:9"))
        #expect(policy.rules[0x8B] == nil)
        let emulator = MSREmulator(policy: policy)
        #expect(emulator.access(MSRAccess(index: 0x4000_1000, writeValue: nil, vcpu: 0)) == .value(9))
        #expect(
            "\(MSRPolicyError.badOverride("1", "expected INDEX=RULE"))" == "bad MSR rule '1': expected INDEX=RULE")
    }
}
