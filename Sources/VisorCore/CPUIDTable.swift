package import VisorKVM

/// Text rendering of CPUID tables for `swiftvisor cpuid`.
package enum CPUIDTable {
    /// One line per guest leaf/subleaf; a line is marked with `*` and followed by the host's
    /// values where they differ, and host leaves the guest lacks are listed at the end.
    package static func render(host: [CPUIDEntry], guest: [CPUIDEntry]) -> String {
        func key(_ e: CPUIDEntry) -> String { "\(hex8(e.function)).\(hex2(e.index))" }
        func regs(_ e: CPUIDEntry) -> String {
            "eax=\(hex8(e.eax)) ebx=\(hex8(e.ebx)) ecx=\(hex8(e.ecx)) edx=\(hex8(e.edx))"
        }
        var hostByKey: [String: CPUIDEntry] = [:]
        for e in host { hostByKey[key(e)] = e }
        var lines = ["  leaf.sub     guest (host where different, marked *)"]
        var seen = Set<String>()
        for e in guest {
            let k = key(e)
            seen.insert(k)
            if let h = hostByKey[k] {
                if (h.eax, h.ebx, h.ecx, h.edx) == (e.eax, e.ebx, e.ecx, e.edx) {
                    lines.append("  \(k)  \(regs(e))")
                } else {
                    lines.append("* \(k)  \(regs(e))")
                    lines.append("    host       \(regs(h))")
                }
            } else {
                lines.append("+ \(k)  \(regs(e))  (not in the host table)")
            }
        }
        for e in host where !seen.contains(key(e)) {
            lines.append("- \(key(e))  host \(regs(e))  (hidden from the guest)")
        }
        return lines.joined(separator: "\n")
    }

    static func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 8 - s.count)) + s
    }

    static func hex2(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 2 - s.count)) + s
    }
}
