import Synchronization

/// How one model-specific register behaves for the guest.
public enum MSRRule: Sendable {
    /// KVM handles it (not routed to user space).
    case allow
    /// Reads and writes raise #GP.
    case deny
    /// Reads return the value; writes are ignored (IA32_BIOS_SIGN_ID answers all ones, so a
    /// guest never attempts a microcode update).
    case readOnly(UInt64)
    /// Writes are ignored; reads raise #GP (IA32_BIOS_UPDT_TRIG).
    case writeIgnored
    /// Reads return the value; writes raise #GP (a locked register).
    case constant(UInt64)
    /// Reads return the last value written, starting from the given one (Akaros' "fake
    /// write").
    case recorded(UInt64)
    /// A Swift handler decides.
    case handler(MSRHandler)
}

/// An MSR access as a handler sees it.
public struct MSRAccess: Sendable, Equatable {
    public var index: UInt32
    /// The value for a write, nil for a read.
    public var writeValue: UInt64?
    public var vcpu: UInt32
}

/// A handler's answer: a value (for a read; ignored for a write), or #GP.
public enum MSRResult: Sendable, Equatable {
    case value(UInt64)
    case fault
}

public typealias MSRHandler = @Sendable (MSRAccess) -> MSRResult

/// The MSR policy: a table of rules by MSR number. MSRs without a rule stay with KVM; an
/// MSR KVM does not know, or refuses, comes back as an exit and raises #GP in the guest.
/// No guest access ever reaches the host's MSRs or stops the VM.
public struct MSRPolicy: Sendable {
    public static let biosSignID: UInt32 = 0x8B
    public static let biosUpdateTrigger: UInt32 = 0x79
    public static let featureControl: UInt32 = 0x3A
    /// IA32_VMX_BASIC ... IA32_VMX_VMFUNC.
    public static let vmxCapabilities: ClosedRange<UInt32> = 0x480...0x491

    public private(set) var rules: [UInt32: MSRRule] = [:]

    /// No rules: every MSR stays with KVM.
    public static let empty = MSRPolicy()

    private init() {}

    /// The default policy: BIOS_SIGN_ID reads all ones with writes ignored; BIOS_UPDT_TRIG
    /// writes ignored; FEATURE_CONTROL reads as locked with VMX off; the VMX capability MSRs
    /// raise #GP, since VMX is hidden from the guest.
    public static var standard: MSRPolicy {
        var policy = MSRPolicy()
        policy.set(biosSignID, .readOnly(.max))
        policy.set(biosUpdateTrigger, .writeIgnored)
        policy.set(featureControl, .constant(1))
        for msr in vmxCapabilities { policy.set(msr, .deny) }
        return policy
    }

    public mutating func set(_ index: UInt32, _ rule: MSRRule) {
        if case .allow = rule { rules[index] = nil } else { rules[index] = rule }
    }

    /// The MSRs to route to user space, merged into ranges of consecutive numbers.
    public var routedRanges: [(base: UInt32, count: UInt32)] {
        var ranges: [(base: UInt32, count: UInt32)] = []
        for index in rules.keys.sorted() {
            if let last = ranges.last, last.base &+ last.count == index {
                ranges[ranges.count - 1].count += 1
            } else {
                ranges.append((index, 1))
            }
        }
        return ranges
    }
}

/// The policy at run time: applies the rules, keeps recorded values and counts denials.
public final class MSREmulator: Sendable {
    public let policy: MSRPolicy
    private let recorded: Mutex<[UInt32: UInt64]>
    private let denials = Atomic<UInt64>(0)

    public init(policy: MSRPolicy) {
        self.policy = policy
        var initial: [UInt32: UInt64] = [:]
        for (index, rule) in policy.rules {
            if case .recorded(let value) = rule { initial[index] = value }
        }
        recorded = Mutex(initial)
    }

    /// The values `recorded` rules hold now, by MSR number (for a snapshot).
    public var recordedValues: [(index: UInt32, value: UInt64)] {
        recorded.withLock { values in values.keys.sorted().map { ($0, values[$0] ?? 0) } }
    }

    /// Puts back values saved from `recordedValues`. Only MSRs whose rule here is
    /// `recorded` take a value; others are ignored, as a guest write would be.
    public func restoreRecordedValues(_ saved: [(index: UInt32, value: UInt64)]) {
        recorded.withLock { values in
            for (index, value) in saved {
                if case .recorded? = policy.rules[index] { values[index] = value }
            }
        }
    }

    /// Accesses that raised #GP so far.
    public var deniedAccesses: UInt64 { denials.load(ordering: .relaxed) }

    /// Decides one access. MSRs with no rule (KVM did not know them) raise #GP.
    public func access(_ access: MSRAccess) -> MSRResult {
        let result: MSRResult
        switch policy.rules[access.index] {
        case nil, .allow?, .deny?:
            result = .fault
        case .readOnly(let value)?:
            result = .value(access.writeValue == nil ? value : 0)
        case .writeIgnored?:
            result = access.writeValue == nil ? .fault : .value(0)
        case .constant(let value)?:
            result = access.writeValue == nil ? .value(value) : .fault
        case .recorded?:
            result = recorded.withLock { values in
                if let written = access.writeValue {
                    values[access.index] = written
                    return .value(0)
                }
                return .value(values[access.index] ?? 0)
            }
        case .handler(let handler)?:
            result = handler(access)
        }
        if result == .fault { denials.add(1, ordering: .relaxed) }
        return result
    }
}

/// One `INDEX=RULE` argument of the `--msr` option: an MSR and a rule the command line can
/// name (every `MSRRule` but a handler). `description` reads the way it is typed and parses
/// back to the same override.
public struct MSROverride: Sendable, Equatable, CustomStringConvertible {
    /// A rule as the command line names it: `allow`, `deny`, `readonly:V`, `write-ignored`,
    /// `const:V`, `record[:V]`.
    public enum Rule: Sendable, Equatable {
        case allow
        case deny
        case readOnly(UInt64)
        case writeIgnored
        case constant(UInt64)
        case recorded(UInt64)
    }

    public var index: UInt32
    public var rule: Rule

    public init(index: UInt32, rule: Rule) {
        self.index = index
        self.rule = rule
    }

    /// Parses `INDEX=RULE`, numbers in decimal or 0x-hex: `0x8b=readonly:0`, `0x79=deny`,
    /// `0x40001000=const:0x1234`, `0x40001001=record`. A value after `allow`, `deny` or
    /// `write-ignored` is read and ignored, as the command line always has.
    public init(parsing text: String) throws(MSRPolicyError) {
        let sides = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard sides.count == 2 else { throw .badOverride(text, "expected INDEX=RULE") }
        guard let index = parseNumber64(sides[0]), index <= UInt32.max else {
            throw .badOverride(text, "bad MSR index '\(sides[0])'")
        }
        // A rule of only colons splits into no parts at all (empty pieces are dropped).
        let parts = sides[1].split(separator: ":", maxSplits: 1).map(String.init)
        guard let name = parts.first else { throw .badOverride(text, "expected a rule after '='") }
        let value = parts.count == 2 ? parseNumber64(parts[1]) : nil
        if parts.count == 2, value == nil { throw .badOverride(text, "bad value '\(parts[1])'") }
        let rule: Rule
        switch name {
        case "allow": rule = .allow
        case "deny": rule = .deny
        case "write-ignored": rule = .writeIgnored
        case "readonly":
            guard let value else { throw .badOverride(text, "readonly needs a value") }
            rule = .readOnly(value)
        case "const":
            guard let value else { throw .badOverride(text, "const needs a value") }
            rule = .constant(value)
        case "record": rule = .recorded(value ?? 0)
        default: throw .badOverride(text, "rule must be allow, deny, readonly:V, write-ignored, const:V or record[:V]")
        }
        self.init(index: UInt32(index), rule: rule)
    }

    /// The rule as `MSRPolicy` takes it.
    public var policyRule: MSRRule {
        switch rule {
        case .allow: .allow
        case .deny: .deny
        case .readOnly(let value): .readOnly(value)
        case .writeIgnored: .writeIgnored
        case .constant(let value): .constant(value)
        case .recorded(let value): .recorded(value)
        }
    }

    public var description: String {
        let rule: String =
            switch self.rule {
            case .allow: "allow"
            case .deny: "deny"
            case .readOnly(let value): "readonly:0x\(String(value, radix: 16))"
            case .writeIgnored: "write-ignored"
            case .constant(let value): "const:0x\(String(value, radix: 16))"
            case .recorded(let value): "record:0x\(String(value, radix: 16))"
            }
        return "0x\(String(index, radix: 16))=\(rule)"
    }
}

extension MSRPolicy {
    /// Sets the rule an `--msr` override names.
    public mutating func apply(_ override: MSROverride) { set(override.index, override.policyRule) }
}

/// An error in an MSR policy.
public enum MSRPolicyError: Error, Equatable, CustomStringConvertible {
    /// An `--msr` argument that does not parse, and why.
    case badOverride(String, String)

    public var description: String {
        switch self {
        case .badOverride(let text, let why): "bad MSR rule '\(text)': \(why)"
        }
    }
}

/// A decimal or 0x-prefixed hexadecimal 64-bit number, as the command line writes them.
func parseNumber64(_ text: String) -> UInt64? {
    let lower = text.lowercased()
    return lower.hasPrefix("0x") ? UInt64(lower.dropFirst(2), radix: 16) : UInt64(lower)
}
