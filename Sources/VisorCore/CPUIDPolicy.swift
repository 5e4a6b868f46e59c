public import VisorKVM

/// One CPUID register.
public enum CPUIDRegister: String, Sendable, CaseIterable {
    case eax, ebx, ecx, edx
}

/// A change to one bit (or a field of bits) of one CPUID leaf's register.
public struct CPUIDOverride: Sendable, Equatable, CustomStringConvertible {
    public var leaf: UInt32
    /// nil: every subleaf of the leaf.
    public var subleaf: UInt32?
    public var register: CPUIDRegister
    /// Lowest bit of the field.
    public var bit: UInt8
    /// Width of the field in bits (1 for a single bit).
    public var width: UInt8
    public var value: UInt32

    public init(
        leaf: UInt32, subleaf: UInt32? = nil, register: CPUIDRegister, bit: UInt8, width: UInt8 = 1,
        value: UInt32
    ) {
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.bit = bit
        self.width = width
        self.value = value
    }

    /// Parses `LEAF[.SUBLEAF].REG.BIT[:LASTBIT]=VALUE`, numbers in decimal or 0x-hex:
    /// `1.ecx.13=0`, `0x40000001.eax.11=0`, `7.0.ebx.5=1`, `1.ebx.16:23=4`.
    public init(parsing text: String) throws(CPUIDPolicyError) {
        let sides = text.split(separator: "=", omittingEmptySubsequences: false)
        guard sides.count == 2 else { throw .badOverride(text, "expected LEAF[.SUBLEAF].REG.BIT=VALUE") }
        let parts = sides[0].split(separator: ".").map(String.init)
        guard parts.count == 3 || parts.count == 4 else {
            throw .badOverride(text, "expected LEAF[.SUBLEAF].REG.BIT=VALUE")
        }
        guard let leaf = parseNumber(parts[0]) else { throw .badOverride(text, "bad leaf '\(parts[0])'") }
        var subleaf: UInt32?
        if parts.count == 4 {
            guard let s = parseNumber(parts[1]) else { throw .badOverride(text, "bad subleaf '\(parts[1])'") }
            subleaf = s
        }
        guard let register = CPUIDRegister(rawValue: parts[parts.count - 2].lowercased()) else {
            throw .badOverride(text, "register must be eax, ebx, ecx or edx")
        }
        let bits = parts[parts.count - 1].split(separator: ":").map(String.init)
        guard bits.count == 1 || bits.count == 2, let low = parseNumber(bits[0]), low < 32,
            let high = bits.count == 2 ? parseNumber(bits[1]) : low, high < 32, high >= low
        else {
            throw .badOverride(text, "bits must be 0-31, as BIT or LOW:HIGH")
        }
        let width = UInt8(high - low + 1)
        guard let value = parseNumber(String(sides[1])),
            width == 32 || value < (UInt32(1) << width)
        else {
            throw .badOverride(text, "value does not fit in \(width) bit\(width == 1 ? "" : "s")")
        }
        self.init(leaf: leaf, subleaf: subleaf, register: register, bit: UInt8(low), width: width, value: value)
    }

    var mask: UInt32 { (width == 32 ? UInt32.max : (UInt32(1) << width) - 1) << bit }

    func apply(to entry: inout CPUIDEntry) {
        guard entry.function == leaf, subleaf == nil || entry.index == subleaf else { return }
        let shifted = (value << bit) & mask
        switch register {
        case .eax: entry.eax = (entry.eax & ~mask) | shifted
        case .ebx: entry.ebx = (entry.ebx & ~mask) | shifted
        case .ecx: entry.ecx = (entry.ecx & ~mask) | shifted
        case .edx: entry.edx = (entry.edx & ~mask) | shifted
        }
    }

    public var description: String {
        let field = width == 1 ? "\(bit)" : "\(bit):\(Int(bit) + Int(width) - 1)"
        return "0x\(hex(leaf))" + (subleaf.map { ".\($0)" } ?? "") + ".\(register.rawValue).\(field)=\(value)"
    }
}

func parseNumber(_ text: String) -> UInt32? {
    let lower = text.lowercased()
    return lower.hasPrefix("0x") ? UInt32(lower.dropFirst(2), radix: 16) : UInt32(lower)
}

/// An error in a CPUID policy.
public enum CPUIDPolicyError: Error, Equatable, CustomStringConvertible {
    case badOverride(String, String)
    case badSignature(String)
    case unknownPreset(String)

    public var description: String {
        switch self {
        case .badOverride(let text, let why): "bad CPUID override '\(text)': \(why)"
        case .badSignature(let text): "hypervisor signature '\(text)' must be 1 to 12 ASCII characters"
        case .unknownPreset(let name):
            "unknown CPUID preset '\(name)'; known: \(CPUIDPolicy.Preset.allCases.map(\.rawValue).joined(separator: ", "))"
        }
    }
}

/// What the guest sees of the processor: a pure function from KVM's supported CPUID table
/// to each vCPU's table, as Akaros' and MiniVisor's CPUID handlers decide it.
public struct CPUIDPolicy: Sendable, Equatable {
    /// Named sets of overrides for known host limits.
    public enum Preset: String, Sendable, CaseIterable {
        /// Hides CMPXCHG16B (leaf 1 ECX bit 13): the nested KVM on our CI machines cannot
        /// emulate `lock cmpxchg16b` at CPL0.
        case hideCMPXCHG16B = "hide-cx16"
        /// Hides KVM's paravirtual send-IPI (0x40000001 EAX bit 11), which hangs AP bring-up
        /// on nested hosts.
        case hidePVSendIPI = "hide-pv-ipi"

        var overrides: [CPUIDOverride] {
            switch self {
            case .hideCMPXCHG16B: [CPUIDOverride(leaf: 1, register: .ecx, bit: 13, value: 0)]
            case .hidePVSendIPI: [CPUIDOverride(leaf: 0x4000_0001, register: .eax, bit: 11, value: 0)]
            }
        }
    }

    /// The 12-byte vendor signature of leaf 0x40000000. "KVMKVMKVM\0\0\0" lets Linux use
    /// KVM's paravirtual features.
    public var hypervisorSignature: [UInt8] = Array("KVMKVMKVM".utf8) + [0, 0, 0]
    /// Bits of leaf 0x40000001 EAX (KVM's paravirtual features) the guest may see.
    public var kvmFeatureMask: UInt32 = .max
    /// XCR0 bits the guest may enable, intersected with what the host supports (leaf 0xD).
    /// Default: x87, SSE and AVX.
    public var allowedXCR0: UInt64 = 0x7
    public var presets: [Preset] = []
    /// Applied last, in order.
    public var overrides: [CPUIDOverride] = []

    public init() {}

    /// Sets the signature from up to 12 ASCII characters, padded with NULs.
    public mutating func setSignature(_ text: String) throws(CPUIDPolicyError) {
        let bytes = Array(text.utf8)
        guard (1...12).contains(bytes.count), bytes.allSatisfy({ $0 < 0x80 }) else { throw .badSignature(text) }
        hypervisorSignature = bytes + Array(repeating: 0, count: 12 - bytes.count)
    }

    public static let hypervisorBit: UInt32 = 1 << 31
    public static let vmxBit: UInt32 = 1 << 5
    public static let monitorBit: UInt32 = 1 << 3
    public static let pdcmBit: UInt32 = 1 << 15
    public static let htBit: UInt32 = 1 << 28

    /// The table vCPU `apicID` of `vcpuCount` sees, from the host's supported `table`.
    public func normalize(_ table: [CPUIDEntry], apicID: UInt32, vcpuCount: UInt32) -> [CPUIDEntry] {
        let hostXCR0 =
            table.first { $0.function == 0xD && $0.index == 0 }
            .map { UInt64($0.eax) | UInt64($0.edx) << 32 } ?? 0
        let xcr0 = hostXCR0 & allowedXCR0
        var result: [CPUIDEntry] = []
        for entry in table {
            var e = entry
            switch e.function {
            case 0x1:
                e.ecx |= Self.hypervisorBit
                e.ecx &= ~(Self.vmxBit | Self.monitorBit | Self.pdcmBit)
                e.ebx = (e.ebx & 0x0000_FFFF) | (apicID & 0xFF) << 24 | (min(vcpuCount, 255) & 0xFF) << 16
                if vcpuCount > 1 { e.edx |= Self.htBit } else { e.edx &= ~Self.htBit }
            case 0x5:
                // MONITOR/MWAIT is hidden, so its leaf says nothing.
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            case 0xA:
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            case 0xB, 0x1F:
                continue  // rebuilt below
            case 0xD:
                if e.index == 0 {
                    e.eax = UInt32(truncatingIfNeeded: xcr0)
                    e.edx = UInt32(truncatingIfNeeded: xcr0 >> 32)
                    e.ecx = Self.xsaveSize(table, xcr0: xcr0)
                    e.ebx = e.ecx
                } else if e.index >= 2, e.index < 63, xcr0 & (UInt64(1) << e.index) == 0 {
                    // A component the guest may not enable: only XSS (supervisor) components,
                    // flagged in ECX bit 0, stay described.
                    if e.ecx & 1 == 0 { continue }
                }
            case 0x4000_0000:
                e.eax = max(e.eax, 0x4000_0001)
                (e.ebx, e.ecx, e.edx) = signatureWords
            case 0x4000_0001:
                e.eax &= kvmFeatureMask
            default:
                break
            }
            result.append(e)
        }
        if table.contains(where: { $0.function == 0xB }) {
            result += Self.topology(leaf: 0xB, apicID: apicID, vcpuCount: vcpuCount)
        }
        if table.contains(where: { $0.function == 0x1F }) {
            result += Self.topology(leaf: 0x1F, apicID: apicID, vcpuCount: vcpuCount)
        }
        let overrides = presets.flatMap(\.overrides) + self.overrides
        for i in result.indices {
            for o in overrides { o.apply(to: &result[i]) }
        }
        return result.sorted { ($0.function, $0.index) < ($1.function, $1.index) }
    }

    var signatureWords: (UInt32, UInt32, UInt32) {
        func word(_ i: Int) -> UInt32 {
            (0..<4).reduce(0) { $0 | UInt32(hypervisorSignature[i * 4 + $1]) << ($1 * 8) }
        }
        return (word(0), word(1), word(2))
    }

    /// Bytes of XSAVE area for the components in `xcr0`: the 512-byte legacy area and the
    /// 64-byte header, then each enabled component's offset + size from leaf 0xD.
    static func xsaveSize(_ table: [CPUIDEntry], xcr0: UInt64) -> UInt32 {
        var size: UInt32 = 576
        for e in table where e.function == 0xD && e.index >= 2 && e.index < 63 && xcr0 & (UInt64(1) << e.index) != 0 {
            size = max(size, e.ebx &+ e.eax)
        }
        return size
    }

    /// Leaf 0xB/0x1F for one thread per core and `vcpuCount` cores in one package:
    /// subleaf 0 is the SMT level, 1 the core level, 2 terminates. EDX is the x2APIC ID.
    static func topology(leaf: UInt32, apicID: UInt32, vcpuCount: UInt32) -> [CPUIDEntry] {
        var shift: UInt32 = 0
        while (UInt32(1) << shift) < vcpuCount { shift += 1 }
        let significantIndex: UInt32 = 1  // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        return [
            CPUIDEntry(function: leaf, index: 0, flags: significantIndex, eax: 0, ebx: 1, ecx: 0 | 1 << 8, edx: apicID),
            CPUIDEntry(
                function: leaf, index: 1, flags: significantIndex, eax: shift, ebx: vcpuCount, ecx: 1 | 2 << 8, edx: apicID),
            CPUIDEntry(function: leaf, index: 2, flags: significantIndex, eax: 0, ebx: 0, ecx: 2, edx: apicID),
        ]
    }
}
