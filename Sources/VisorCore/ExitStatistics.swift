public import VisorKVM
public import Histogram

/// The kinds of exit that statistics and traces distinguish.
public enum ExitKind: Int, Sendable, CaseIterable, CustomStringConvertible {
    case portIn, portOut, mmioRead, mmioWrite, msrRead, msrWrite, halt, shutdown, internalError, failEntry
    case systemEvent, exception, debug, interrupted, other

    public init(_ exit: VMExit) {
        switch exit {
        case .io(let a): self = a.isWrite ? .portOut : .portIn
        case .malformedIO: self = .other
        case .mmio(let a): self = a.isWrite ? .mmioWrite : .mmioRead
        case .halt: self = .halt
        case .shutdown: self = .shutdown
        case .internalError: self = .internalError
        case .failEntry: self = .failEntry
        case .systemEvent: self = .systemEvent
        case .exception: self = .exception
        case .debug: self = .debug
        case .interrupted: self = .interrupted
        case .msr(_, let value): self = value == nil ? .msrRead : .msrWrite
        case .other: self = .other
        }
    }

    public var description: String {
        switch self {
        case .portIn: "io-in"
        case .portOut: "io-out"
        case .mmioRead: "mmio-read"
        case .mmioWrite: "mmio-write"
        case .msrRead: "rdmsr"
        case .msrWrite: "wrmsr"
        case .halt: "hlt"
        case .shutdown: "shutdown"
        case .internalError: "internal-error"
        case .failEntry: "fail-entry"
        case .systemEvent: "system-event"
        case .exception: "exception"
        case .debug: "debug"
        case .interrupted: "interrupted"
        case .other: "other"
        }
    }
}

/// Exit counts of one vCPU: by kind, by port and by MMIO page, and the VMM's handling
/// latency per exit kind (HdrHistogram, nanoseconds, 3 significant digits). Recording never
/// allocates; the tables (a 512 KiB per-port table, the histograms) exist only when
/// statistics are on.
public struct ExitStatistics: Sendable {
    public private(set) var byKind: [UInt64]
    /// Exits (not elements) per port, indexed by port number.
    public private(set) var byPort: [UInt64]
    /// Exits per MMIO page (4 KiB granularity), for up to `PageCounter.capacity` pages.
    public private(set) var mmioPages = PageCounter()

    /// Handling latency per exit kind: from KVM_RUN returning to the exit's handler
    /// finishing, in nanoseconds, indexed by `ExitKind.rawValue`.
    public private(set) var latency: [Histogram<UInt64>]

    /// The largest latency a histogram tracks (10 s); larger values are clamped to it.
    public static let latencyLimit: UInt64 = 10_000_000_000

    public init() {
        byKind = Array(repeating: 0, count: ExitKind.allCases.count)
        byPort = Array(repeating: 0, count: 0x10000)
        latency = ExitKind.allCases.map { _ in
            Histogram<UInt64>(highestTrackableValue: Self.latencyLimit, numberOfSignificantValueDigits: .three)
        }
    }

    /// Records an exit and how long the VMM took to handle it.
    @inline(__always)
    public mutating func record(_ exit: VMExit, nanoseconds: UInt64) {
        let kind = ExitKind(exit)
        count(exit, kind)
        latency[kind.rawValue].record(min(nanoseconds, Self.latencyLimit))
    }

    /// Latency percentile `p` (0-100) for `kind`, in nanoseconds; nil when no exit of that kind was timed.
    public func latency(_ kind: ExitKind, percentile p: Double) -> UInt64? {
        let h = latency[kind.rawValue]
        return h.totalCount == 0 ? nil : h.valueAtPercentile(p)
    }

    @inline(__always)
    public mutating func record(_ exit: VMExit) {
        count(exit, ExitKind(exit))
    }

    @inline(__always)
    private mutating func count(_ exit: VMExit, _ kind: ExitKind) {
        byKind[kind.rawValue] &+= 1
        switch exit {
        case .io(let access): byPort[Int(access.port)] &+= 1
        case .mmio(let access): mmioPages.record(access.address & ~0xFFF)
        default: break
        }
    }

    public var total: UInt64 { byKind.reduce(0, &+) }

    public func count(_ kind: ExitKind) -> UInt64 { byKind[kind.rawValue] }

    /// Adds another vCPU's counts to these.
    public mutating func merge(_ other: ExitStatistics) {
        for i in byKind.indices { byKind[i] &+= other.byKind[i] }
        for i in byPort.indices where other.byPort[i] != 0 { byPort[i] &+= other.byPort[i] }
        for (page, n) in other.mmioPages.counts { mmioPages.record(page, n) }
        for i in latency.indices { latency[i].add(other.latency[i]) }
        mmioPages.overflow &+= other.mmioPages.overflow
    }

    /// A plain-text table: exits by kind, then by port and MMIO page, busiest first.
    public func render(
        portNames: (UInt16) -> String? = { _ in nil },
        mmioNames: (UInt64) -> String? = { _ in nil }
    ) -> String {
        var lines = ["exits: \(total)"]
        for kind in ExitKind.allCases where byKind[kind.rawValue] > 0 {
            var line = "  \(pad(kind.description, 16)) \(byKind[kind.rawValue])"
            if let p50 = latency(kind, percentile: 50), let p90 = latency(kind, percentile: 90),
                let p99 = latency(kind, percentile: 99)
            {
                line = pad(line, 36) + "latency ns p50 \(p50) p90 \(p90) p99 \(p99) max \(latency[kind.rawValue].max)"
            }
            lines.append(line)
        }
        let ports = byPort.indices.filter { byPort[$0] > 0 }.sorted { byPort[$0] > byPort[$1] }
        if !ports.isEmpty {
            lines.append("port exits:")
            for port in ports {
                let name = portNames(UInt16(port)).map { " (\($0))" } ?? ""
                lines.append("  \(pad("0x" + hex(port) + name, 24)) \(byPort[port])")
            }
        }
        let pages = mmioPages.counts
        if !pages.isEmpty {
            lines.append("mmio exits by page:")
            for (page, n) in pages.sorted(by: { $0.count > $1.count }) {
                let name = mmioNames(page).map { " (\($0))" } ?? ""
                lines.append("  \(pad("0x" + hex(page) + name, 24)) \(n)")
            }
            if mmioPages.overflow > 0 { lines.append("  \(pad("other pages", 24)) \(mmioPages.overflow)") }
        }
        return lines.joined(separator: "\n")
    }
}

/// Counts per page address in a fixed open-addressing table, so that counting never
/// allocates. Pages beyond the table's capacity are counted together in `overflow`.
public struct PageCounter: Sendable {
    public static let capacity = 256
    /// Page address with bit 0 set (0 marks a free slot), and the count of each slot.
    private var keys: [UInt64]
    private var values: [UInt64]
    /// Exits to pages that found no free slot.
    public internal(set) var overflow: UInt64 = 0

    public init() {
        keys = Array(repeating: 0, count: Self.capacity)
        values = Array(repeating: 0, count: Self.capacity)
    }

    /// Adds `n` to the count of `page`, a 4 KiB-aligned address (bits 0-11 are ignored).
    @inline(__always)
    public mutating func record(_ page: UInt64, _ n: UInt64 = 1) {
        let page = page & ~0xFFF
        // Keys are stored as page | 1 (page addresses are 4 KiB-aligned, so bit 0 is free),
        // which keeps 0 free to mark an empty slot.
        let key = page | 1
        var slot = Int(truncatingIfNeeded: ((page >> 12) &* 0x9E37_79B9_7F4A_7C15) >> 56) % Self.capacity
        for _ in 0..<Self.capacity {
            if keys[slot] == key {
                values[slot] &+= n
                return
            }
            if keys[slot] == 0 {
                keys[slot] = key
                values[slot] = n
                return
            }
            slot = (slot + 1) % Self.capacity
        }
        overflow &+= n
    }

    /// The pages seen, with their counts.
    public var counts: [(page: UInt64, count: UInt64)] {
        keys.indices.filter { keys[$0] != 0 }.map { (keys[$0] & ~1, values[$0]) }
    }

    /// The count for the page holding `address`.
    public func count(_ address: UInt64) -> UInt64 {
        counts.first { $0.page == address & ~0xFFF }?.count ?? 0
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

/// One trace line for an exit: kind, port or address, width and value. Call it after the
/// exit was dispatched, so that an IN shows the value the guest received.
package func traceDescription(_ exit: VMExit, data: some ExitDataChannel) -> String {
    switch exit {
    case .io(let a):
        let value = " value=0x\(hex(data.ioElement(0)))"
        let count = a.count > 1 ? " count=\(a.count)" : ""
        return "\(ExitKind(exit)) port=0x\(hex(a.port)) width=\(a.width)\(value)\(count)"
    case .mmio(let a):
        return "\(ExitKind(exit)) addr=0x\(hex(a.address)) width=\(a.width)" + (a.isWrite ? " value=0x\(hex(a.value))" : "")
    case .halt(let interrupts):
        return "hlt if=\(interrupts ? 1 : 0)"
    case .msr(let index, let value):
        return "\(ExitKind(exit)) msr=0x\(hex(index))" + (value.map { " value=0x\(hex($0))" } ?? "")
    default:
        return "\(ExitKind(exit)) \(exit.reason?.kernelName ?? "")"
    }
}
