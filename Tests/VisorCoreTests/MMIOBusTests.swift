import Testing
import TestSupport
@testable import VisorCore

@Suite("MMIORange")
struct MMIORangeTests {
    @Test("a range knows its end and contains [start, end)")
    func contains() throws {
        let range = try MMIORange(start: 0xFEC0_0000, size: 0x1000)
        #expect(range.end == 0xFEC0_1000)
        #expect(!range.contains(0xFEBF_FFFF))
        #expect(range.contains(0xFEC0_0000))
        #expect(range.contains(0xFEC0_0FFF))
        #expect(!range.contains(0xFEC0_1000))
        #expect(range.description == "[0xfec00000, 0xfec01000)")
    }

    @Test("size zero and ranges past the end of the 64-bit space are rejected")
    func invalid() throws {
        #expect(throws: BusError.invalidRange("0 bytes at 0x1000 do not fit the address space")) {
            try MMIORange(start: 0x1000, size: 0)
        }
        #expect(throws: BusError.invalidRange("2 bytes at 0xffffffffffffffff do not fit the address space")) {
            try MMIORange(start: .max, size: 2)
        }
        #expect(throws: BusError.invalidRange("18446744073709551615 bytes at 0x1 do not fit the address space")) {
            try MMIORange(start: 1, size: .max)
        }
        // The exclusive end must fit in 64 bits, so the highest range ends at UInt64.max.
        let top = try MMIORange(start: UInt64.max - 0x1000, size: 0x1000)
        #expect(top.end == .max)
        #expect(top.contains(.max - 1))
        #expect(!top.contains(.max))
        #expect(throws: BusError.invalidRange("4096 bytes at 0xfffffffffffff000 do not fit the address space")) {
            try MMIORange(start: UInt64.max - 0xFFF, size: 0x1000)
        }
    }
}

@Suite("MMIOBus")
struct MMIOBusTests {
    /// Three regions registered out of order, with gaps: [0x1000,0x2000), [0x3000,0x3100), [0x8000,0x10000).
    func threeRegions() throws -> (MMIOBus, [RecordingMMIODevice]) {
        var bus = MMIOBus()
        let devices = [RecordingMMIODevice(), RecordingMMIODevice(), RecordingMMIODevice()]
        try bus.register(devices[2], name: "c", range: region(0x8000, 0x8000))
        try bus.register(devices[0], name: "a", range: region(0x1000, 0x1000))
        try bus.register(devices[1], name: "b", range: region(0x3000, 0x100))
        return (bus, devices)
    }

    @Test("regions are kept ordered by start address whatever the registration order")
    func ordered() throws {
        let (bus, _) = try threeRegions()
        #expect(bus.entries.map(\.name) == ["a", "b", "c"])
        #expect(bus.entries.map(\.range.start) == [0x1000, 0x3000, 0x8000])
    }

    @Test("lookup finds a region at its start and end-1, not at end or in gaps")
    func lookup() throws {
        let (bus, _) = try threeRegions()
        #expect(bus.index(for: 0x1000) == 0)
        #expect(bus.index(for: 0x1FFF) == 0)
        #expect(bus.index(for: 0x2000) == nil)
        #expect(bus.index(for: 0x2FFF) == nil)
        #expect(bus.index(for: 0x3000) == 1)
        #expect(bus.index(for: 0x30FF) == 1)
        #expect(bus.index(for: 0x3100) == nil)
        #expect(bus.index(for: 0x8000) == 2)
        #expect(bus.index(for: 0xFFFF) == 2)
        #expect(bus.index(for: 0x10000) == nil)
        #expect(bus.index(for: 0) == nil)
        #expect(bus.index(for: 0xFFF) == nil)
        #expect(bus.index(for: .max) == nil)
        #expect(MMIOBus().index(for: 0x1000) == nil)
    }

    @Test("a region overlapping the previous one is rejected, naming both")
    func overlapPrevious() throws {
        var (bus, _) = try threeRegions()
        // Starts inside "b" [0x3000, 0x3100) and ends in the gap before "c".
        #expect(throws: BusError.overlap(new: "'x' [0x30ff, 0x4000)", existing: "'b' [0x3000, 0x3100)", at: "0x30ff")) {
            try bus.register(RecordingMMIODevice(), name: "x", range: region(0x30FF, 0xF01))
        }
        #expect(bus.entries.map(\.name) == ["a", "b", "c"])
    }

    @Test("a region overlapping the next one is rejected, naming both")
    func overlapNext() throws {
        var (bus, _) = try threeRegions()
        // Starts in the gap after "b" and runs one byte into "c".
        let error = #expect(throws: BusError.self) {
            try bus.register(RecordingMMIODevice(), name: "y", range: region(0x4000, 0x4001))
        }
        #expect(error == .overlap(new: "'y' [0x4000, 0x8001)", existing: "'c' [0x8000, 0x10000)", at: "0x8000"))
        #expect(error?.description == "cannot register 'y' [0x4000, 0x8001): it overlaps 'c' [0x8000, 0x10000) at 0x8000")
        #expect(bus.entries.map(\.name) == ["a", "b", "c"])
    }

    @Test("same start, enclosing and enclosed regions are rejected")
    func overlapOtherShapes() throws {
        var (bus, _) = try threeRegions()
        #expect(throws: BusError.overlap(new: "'s' [0x1000, 0x1001)", existing: "'a' [0x1000, 0x2000)", at: "0x1000")) {
            try bus.register(RecordingMMIODevice(), name: "s", range: region(0x1000, 1))
        }
        #expect(throws: BusError.overlap(new: "'e' [0x2800, 0x3800)", existing: "'b' [0x3000, 0x3100)", at: "0x3000")) {
            try bus.register(RecordingMMIODevice(), name: "e", range: region(0x2800, 0x1000))
        }
        #expect(throws: BusError.overlap(new: "'i' [0x9000, 0x9008)", existing: "'c' [0x8000, 0x10000)", at: "0x9000")) {
            try bus.register(RecordingMMIODevice(), name: "i", range: region(0x9000, 8))
        }
        #expect(bus.entries.count == 3)
    }

    @Test("adjacent regions on both sides are allowed")
    func adjacent() throws {
        var (bus, _) = try threeRegions()
        try bus.register(RecordingMMIODevice(), name: "fill", range: region(0x3100, 0x4F00))  // [0x3100, 0x8000)
        try bus.register(RecordingMMIODevice(), name: "before", range: region(0, 0x1000))
        try bus.register(RecordingMMIODevice(), name: "gap", range: region(0x2000, 0x1000))
        #expect(bus.entries.map(\.name) == ["before", "a", "gap", "b", "fill", "c"])
        #expect(bus.index(for: 0x30FF) == 3)
        #expect(bus.index(for: 0x3100) == 4)
        #expect(bus.index(for: 0x7FFF) == 4)
        #expect(bus.index(for: 0x8000) == 5)
    }

    @Test("unregister removes the region; its addresses become unclaimed and can be re-registered")
    func unregister() throws {
        var (bus, _) = try threeRegions()
        try bus.unregister(name: "b")
        #expect(bus.entries.map(\.name) == ["a", "c"])
        #expect(bus.index(for: 0x3000) == nil)
        #expect(bus.index(for: 0x8000) == 1)
        #expect(throws: BusError.notRegistered("b")) { try bus.unregister(name: "b") }
        try bus.register(RecordingMMIODevice(), name: "b2", range: region(0x2000, 0x6000))
        #expect(bus.entries.map(\.name) == ["a", "b2", "c"])
    }
}

@Suite("ExitDispatcher: MMIO")
struct MMIODispatchTests {
    static let widths: [UInt8] = [1, 2, 4, 8]

    @Test(
        "reads of each width are routed with their offset and the result masked to the width",
        arguments: widths)
    func routedRead(width: UInt8) throws {
        var bus = MMIOBus()
        let device = RecordingMMIODevice(readValue: 0x1122_3344_5566_7788)
        try bus.register(device, name: "dev", range: region(0xD000_0000, 0x1000))
        let dispatcher = ExitDispatcher(mmio: bus, unclaimedMMIO: .stop)
        let data = FakeDataChannel()
        #expect(dispatcher.dispatch(mmioRead(0xD000_0010, width: width), vcpu: data) == .handled)
        #expect(device.calls == [.read(address: 0xD000_0010, offset: 0x10, width: width)])
        let expected: UInt64 = [1: 0x88, 2: 0x7788, 4: 0x5566_7788, 8: 0x1122_3344_5566_7788][width]!
        #expect(data.mmioData == expected)
        #expect(data.mmioSets == 1)
    }

    @Test(
        "writes of each width are routed with their offset and the value masked to the width",
        arguments: widths)
    func routedWrite(width: UInt8) throws {
        var bus = MMIOBus()
        let device = RecordingMMIODevice()
        try bus.register(device, name: "dev", range: region(0xD000_0000, 0x1000))
        let dispatcher = ExitDispatcher(mmio: bus, unclaimedMMIO: .stop)
        let data = FakeDataChannel()
        // A value with bits above the width, as a hand-made exit may carry.
        #expect(dispatcher.dispatch(mmioWrite(0xD000_0FF8, width: width, value: 0xFEDC_BA98_7654_3210), vcpu: data) == .handled)
        let expected: UInt64 = [1: 0x10, 2: 0x3210, 4: 0x7654_3210, 8: 0xFEDC_BA98_7654_3210][width]!
        #expect(device.calls == [.write(address: 0xD000_0FF8, offset: 0xFF8, width: width, value: expected)])
        #expect(data.mmioSets == 0, "a write sets no read data")
    }

    @Test("a device's .stop on an MMIO write stops the VM")
    func writeStops() throws {
        var bus = MMIOBus()
        try bus.register(RecordingMMIODevice(stopValue: 0x5555), name: "dev", range: region(0x1000, 0x10))
        let dispatcher = ExitDispatcher(mmio: bus)
        #expect(
            dispatcher.dispatch(mmioWrite(0x1004, width: 2, value: 0x5555), vcpu: FakeDataChannel())
                == .stop(.guestExit(status: 7)))
        #expect(dispatcher.dispatch(mmioWrite(0x1004, width: 2, value: 0x5554), vcpu: FakeDataChannel()) == .handled)
    }

    @Test("an unclaimed MMIO read returns all ones at its width under .block and .log", arguments: widths)
    func unclaimedRead(width: UInt8) {
        for policy in [UnclaimedAccessPolicy.block, .log] {
            let log = LogRecorder()
            let dispatcher = ExitDispatcher(unclaimedMMIO: policy, log: log.sink)
            let data = FakeDataChannel()
            #expect(dispatcher.dispatch(mmioRead(0xFEE0_0030, width: width), vcpu: data) == .handled)
            #expect(data.mmioData == allOnes(width: width))
            if policy == .log {
                #expect(log.lines == ["unclaimed MMIO read of \(width) bytes at 0xfee00030"])
            } else {
                #expect(log.lines.isEmpty)
            }
        }
    }

    @Test("an unclaimed MMIO write is dropped (logged only under .log)")
    func unclaimedWrite() {
        let blockLog = LogRecorder(), logLog = LogRecorder()
        let data = FakeDataChannel()
        #expect(
            ExitDispatcher(unclaimedMMIO: .block, log: blockLog.sink)
                .dispatch(mmioWrite(0xFEE0_00B0, width: 4, value: 0), vcpu: data) == .handled)
        #expect(
            ExitDispatcher(unclaimedMMIO: .log, log: logLog.sink)
                .dispatch(mmioWrite(0xFEE0_00B0, width: 4, value: 0), vcpu: data) == .handled)
        #expect(data.mmioSets == 0)
        #expect(blockLog.lines.isEmpty)
        #expect(logLog.lines == ["unclaimed MMIO write of 4 bytes at 0xfee000b0"])
    }

    @Test("under .stop an unclaimed MMIO access stops with .unclaimedMMIO")
    func unclaimedStop() throws {
        var bus = MMIOBus()
        try bus.register(RecordingMMIODevice(), name: "dev", range: region(0x1000, 0x1000))
        let dispatcher = ExitDispatcher(mmio: bus, unclaimedMMIO: .stop)
        let data = FakeDataChannel()
        #expect(
            dispatcher.dispatch(mmioRead(0x2000, width: 4), vcpu: data)
                == .stop(.unclaimedMMIO(address: 0x2000, isWrite: false, width: 4)))
        #expect(
            dispatcher.dispatch(mmioWrite(0xFFF, width: 8, value: 1), vcpu: data)
                == .stop(.unclaimedMMIO(address: 0xFFF, isWrite: true, width: 8)))
        #expect(data.mmioSets == 0)
        #expect(
            StopReason.unclaimedMMIO(address: 0x2000, isWrite: false, width: 4).description
                == "unclaimed MMIO access: read of 4 bytes at 0x2000")
        #expect(StopReason.unclaimedMMIO(address: 0x2000, isWrite: false, width: 4).exitStatus == 120)
    }

    @Test("the port policy does not govern MMIO and vice versa")
    func policiesIndependent() {
        let dispatcher = ExitDispatcher(unclaimedPorts: .stop, unclaimedMMIO: .block)
        let data = FakeDataChannel()
        #expect(dispatcher.dispatch(mmioRead(0x1234, width: 2), vcpu: data) == .handled)
        #expect(data.mmioData == 0xFFFF)
        #expect(dispatcher.dispatch(portIn(0x80), vcpu: data) == .stop(.unclaimedPort(port: 0x80, isWrite: false, width: 1)))
    }
}

@Suite("allOnes")
struct AllOnesTests {
    @Test(
        "all ones at 1, 2, 4 and 8 bytes",
        arguments: [
            (UInt8(1), UInt64(0xFF)), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, 0xFFFF_FFFF_FFFF_FFFF),
        ])
    func widths(width: UInt8, expected: UInt64) {
        #expect(allOnes(width: width) == expected)
    }

    @Test("odd widths 3 and 0 give 0xFFFFFF and 0")
    func oddWidths() {
        #expect(allOnes(width: 3) == 0xFF_FFFF)
        #expect(allOnes(width: 0) == 0)
    }
}
