import Testing
import TestSupport
@testable import VisorCore
import VisorKVM

/// The MMIO page counts as a dictionary, for exact comparison whatever the slot order.
func pageCounts(_ stats: ExitStatistics) -> [UInt64: UInt64] {
    Dictionary(stats.mmioPages.counts.map { ($0.page, $0.count) }, uniquingKeysWith: { _, _ in .max })
}

@Suite("ExitStatistics")
struct StatisticsTests {
    /// 3 OUTs to 0x3f8, 2 INs from 0x3fd, 1 OUT to 0xf4, 2 MMIO reads in one page, 1 MMIO
    /// write in another, 1 halt, 1 interrupted: 11 exits.
    func sample() -> ExitStatistics {
        var stats = ExitStatistics()
        for _ in 0..<3 { stats.record(portOut(0x3F8)) }
        stats.record(portIn(0x3FD))
        stats.record(portIn(0x3FD, width: 1, count: 50))  // one exit, however many elements
        stats.record(portOut(0xF4))
        stats.record(mmioRead(0xFEE0_0030, width: 4))
        stats.record(mmioRead(0xFEE0_0FFF, width: 1))
        stats.record(mmioWrite(0xFEC0_0010, width: 4, value: 1))
        stats.record(.halt(interruptsEnabled: false))
        stats.record(.interrupted)
        return stats
    }

    @Test("counts by kind, port, MMIO page, and the total")
    func counts() {
        let stats = sample()
        #expect(stats.count(.portOut) == 4)
        #expect(stats.count(.portIn) == 2)
        #expect(stats.count(.mmioRead) == 2)
        #expect(stats.count(.mmioWrite) == 1)
        #expect(stats.count(.halt) == 1)
        #expect(stats.count(.interrupted) == 1)
        #expect(stats.count(.shutdown) == 0)
        #expect(stats.total == 11)
        #expect(stats.byPort[0x3F8] == 3)
        #expect(stats.byPort[0x3FD] == 2)
        #expect(stats.byPort[0xF4] == 1)
        #expect(stats.byPort.reduce(0, +) == 6)
        #expect(stats.mmioPages.count(0xFEE0_0000) == 2)
        #expect(stats.mmioPages.count(0xFEC0_0000) == 1)
        #expect(stats.mmioPages.count(0x1000) == 0)
        #expect(pageCounts(stats) == [0xFEE0_0000: 2, 0xFEC0_0000: 1])
        #expect(stats.mmioPages.overflow == 0)
    }

    @Test("a fresh record is all zeros, with a slot per port")
    func empty() {
        let stats = ExitStatistics()
        #expect(stats.total == 0)
        #expect(stats.byPort.count == 0x10000)
        #expect(stats.byKind.count == ExitKind.allCases.count)
        #expect(stats.render() == "exits: 0")
    }

    @Test("every exit maps to its kind; malformed I/O counts as other and not against a port")
    func kinds() {
        var stats = ExitStatistics()
        let exits: [(VMExit, ExitKind)] = [
            (portIn(1), .portIn), (portOut(1), .portOut),
            (mmioRead(0, width: 1), .mmioRead), (mmioWrite(0, width: 1, value: 0), .mmioWrite),
            (.halt(interruptsEnabled: true), .halt), (.shutdown, .shutdown),
            (.internalError(suberror: 1, data: []), .internalError),
            (.failEntry(hardwareReason: 0, cpu: 0), .failEntry), (.systemEvent(type: 1), .systemEvent),
            (.exception(vector: 0, errorCode: 0), .exception), (.debug, .debug),
            (.interrupted, .interrupted), (.other(reason: 99, hardwareReason: 0), .other),
            (.malformedIO(port: 0x77, width: 1, count: 1), .other),
        ]
        for (exit, kind) in exits {
            #expect(ExitKind(exit) == kind)
            stats.record(exit)
        }
        #expect(stats.count(.other) == 2)
        #expect(stats.total == 14)
        #expect(stats.byPort[0x77] == 0)
        #expect(stats.byPort[1] == 2)
    }

    @Test("merge adds kinds, ports and MMIO pages")
    func merge() {
        var a = sample()
        var b = ExitStatistics()
        b.record(portOut(0x3F8))
        b.record(portIn(0x60))
        b.record(mmioRead(0xFEE0_0000, width: 4))
        b.record(mmioRead(0x1000, width: 4))
        b.record(.shutdown)
        a.merge(b)
        #expect(a.total == 16)
        #expect(a.count(.portOut) == 5)
        #expect(a.count(.portIn) == 3)
        #expect(a.count(.mmioRead) == 4)
        #expect(a.count(.shutdown) == 1)
        #expect(a.byPort[0x3F8] == 4)
        #expect(a.byPort[0x60] == 1)
        #expect(pageCounts(a) == [0xFEE0_0000: 3, 0xFEC0_0000: 1, 0x1000: 1])
        #expect(b.total == 5, "the merged-in record is unchanged")
    }

    @Test("render lists the total, non-zero kinds, then ports busiest first with names, then MMIO pages")
    func render() {
        let text = sample().render { $0 == 0x3F8 ? "com1" : nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "exits: 11")
        #expect(lines.contains("  io-in            2"))
        #expect(lines.contains("  io-out           4"))
        #expect(lines.contains("  mmio-read        2"))
        #expect(lines.contains("  hlt              1"))
        #expect(!text.contains("shutdown"), "kinds with no exits are left out")
        let portHeader = try! #require(lines.firstIndex(of: "port exits:"))
        #expect(
            Array(lines[(portHeader + 1)...(portHeader + 3)]) == [
                "  0x3f8 (com1)             3",
                "  0x3fd                    2",
                "  0xf4                     1",
            ])
        let mmioHeader = try! #require(lines.firstIndex(of: "mmio exits by page:"))
        #expect(mmioHeader == portHeader + 4)
        #expect(
            Array(lines[(mmioHeader + 1)...]) == [
                "  0xfee00000               2",
                "  0xfec00000               1",
            ])
    }

    @Test("traceDescription shows kind, port or address, width and value")
    func trace() {
        #expect(traceDescription(portOut(0x3F8), data: FakeDataChannel([0x41])) == "io-out port=0x3f8 width=1 value=0x41")
        #expect(
            traceDescription(portIn(0x1F0, width: 2, count: 8), data: FakeDataChannel([0xBEEF]))
                == "io-in port=0x1f0 width=2 value=0xbeef count=8")
        #expect(
            traceDescription(mmioWrite(0xFEE000B0, width: 4, value: 0x1F), data: FakeDataChannel())
                == "mmio-write addr=0xfee000b0 width=4 value=0x1f")
        #expect(traceDescription(mmioRead(0x1000, width: 8), data: FakeDataChannel()) == "mmio-read addr=0x1000 width=8")
        #expect(traceDescription(.halt(interruptsEnabled: true), data: FakeDataChannel()) == "hlt if=1")
        #expect(traceDescription(.shutdown, data: FakeDataChannel()) == "shutdown KVM_EXIT_SHUTDOWN")
    }

    @Test("up to PageCounter.capacity distinct MMIO pages are counted separately; the rest go to overflow")
    func pageCounterOverflow() {
        var stats = ExitStatistics()
        let pages = (0..<UInt64(300)).map { 0xC000_0000 + $0 * 0x1000 }
        for page in pages { stats.record(mmioWrite(page + 8, width: 4, value: 0)) }
        for page in pages.prefix(10) { stats.record(mmioRead(page, width: 4)) }  // already counted pages
        #expect(stats.mmioPages.counts.count == PageCounter.capacity)
        #expect(PageCounter.capacity == 256)
        #expect(stats.mmioPages.overflow == 300 - 256)
        let counted = pageCounts(stats)
        #expect(counted.count == 256, "no page appears twice")
        #expect(counted.values.reduce(0, +) + stats.mmioPages.overflow == 310)
        for page in pages.prefix(10) { #expect(counted[page] == 2) }
        #expect(stats.count(.mmioWrite) == 300)
        #expect(stats.render().hasSuffix("  other pages              44"))
    }

    @Test("pages far apart and at the top of the address space are counted separately")
    func pageCounterSpread() {
        var stats = ExitStatistics()
        let pages: [UInt64] = [0, 0x8_0000, 0x10_0000, 0x80_0000, 0xFEE0_0000, 0xF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000]
        for (i, page) in pages.enumerated() {
            for _ in 0...i { stats.record(mmioRead(page | 0xFFF, width: 1)) }
        }
        #expect(pageCounts(stats) == Dictionary(uniqueKeysWithValues: pages.enumerated().map { ($1, UInt64($0 + 1)) }))
        #expect(stats.mmioPages.overflow == 0)
    }

    @Test("merging overflowing records keeps every exit counted")
    func mergeOverflow() {
        var a = ExitStatistics(), b = ExitStatistics()
        for i in 0..<UInt64(200) { a.record(mmioRead(i << 12, width: 1)) }
        for i in 100..<UInt64(400) { b.record(mmioRead(i << 12, width: 1)) }
        a.merge(b)
        #expect(a.count(.mmioRead) == 500)
        #expect(a.mmioPages.counts.count == 256)
        #expect(a.mmioPages.counts.reduce(0) { $0 + $1.count } + a.mmioPages.overflow == 500)
    }

    @Test("PageCounter counts any page value, including 0 and the highest page")
    func pageCounterEdges() {
        var counter = PageCounter()
        counter.record(0)
        counter.record(0xFFFF_FFFF_FFFF_F000, 3)
        #expect(counter.count(0) == 1)
        #expect(counter.count(0xFFFF_FFFF_FFFF_F000) == 3)
        #expect(counter.count(0x1000) == 0)
        #expect(counter.counts.count == 2)
    }

    // Keys once were `page &+ 1` with 0 meaning "free", so UInt64.max wrapped to a key of 0
    // and its count was lost. Addresses are now reduced to their 4 KiB page first.
    @Test("PageCounter.record(UInt64.max) is counted, not silently dropped")
    func pageCounterMaxKey() {
        var counter = PageCounter()
        counter.record(.max, 5)
        #expect(counter.count(.max) == 5)
        #expect(counter.counts.reduce(0) { $0 + $1.count } + counter.overflow == 5)
    }
}
