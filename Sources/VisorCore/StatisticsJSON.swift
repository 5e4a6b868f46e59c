extension ExitStatistics {
    /// The statistics as one JSON object: the total, exits by kind with latency percentiles,
    /// by port and by MMIO page. Written by hand, so the core needs no Foundation.
    public func renderJSON(
        portNames: (UInt16) -> String? = { _ in nil },
        mmioNames: (UInt64) -> String? = { _ in nil }
    ) -> String {
        var kinds: [String] = []
        for kind in ExitKind.allCases where byKind[kind.rawValue] > 0 {
            var fields = ["\"kind\": \(jsonString(kind.description))", "\"count\": \(byKind[kind.rawValue])"]
            let h = latency[kind.rawValue]
            if h.totalCount > 0 {
                let percentiles = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)]
                    .map { "\"\($0.0)\": \(h.valueAtPercentile($0.1))" }
                fields.append(
                    "\"latency_ns\": {\(percentiles.joined(separator: ", ")), \"max\": \(h.max), \"timed\": \(h.totalCount)}")
            }
            kinds.append("{" + fields.joined(separator: ", ") + "}")
        }
        var ports: [String] = []
        for port in byPort.indices where byPort[port] > 0 {
            var fields = ["\"port\": \(port)", "\"count\": \(byPort[port])"]
            if let name = portNames(UInt16(port)) { fields.append("\"device\": \(jsonString(name))") }
            ports.append("{" + fields.joined(separator: ", ") + "}")
        }
        var pages: [String] = []
        for (page, n) in mmioPages.counts.sorted(by: { $0.page < $1.page }) {
            var fields = ["\"page\": \(page)", "\"count\": \(n)"]
            if let name = mmioNames(page) { fields.append("\"device\": \(jsonString(name))") }
            pages.append("{" + fields.joined(separator: ", ") + "}")
        }
        return "{\"total\": \(total), \"by_kind\": [\(kinds.joined(separator: ", "))], "
            + "\"by_port\": [\(ports.joined(separator: ", "))], "
            + "\"by_mmio_page\": [\(pages.joined(separator: ", "))], "
            + "\"mmio_pages_not_tracked\": \(mmioPages.overflow)}"
    }
}

/// A JSON string literal for `s`, escaping quotes, backslashes and control characters.
func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20:
            out += "\\u00" + (scalar.value < 16 ? "0" : "") + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
