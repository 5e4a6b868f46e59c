import Testing
import TestSupport
import Glibc
@testable import VisorCore

@Suite("PortRange")
struct PortRangeTests {
    @Test("a valid range keeps base, count and last, and contains exactly its ports")
    func validRange() throws {
        let range = try PortRange(base: 0x3F8, count: 8)
        #expect(range.base == 0x3F8)
        #expect(range.count == 8)
        #expect(range.last == 0x3FF)
        #expect(!range.contains(0x3F7))
        #expect(range.contains(0x3F8))
        #expect(range.contains(0x3FF))
        #expect(!range.contains(0x400))
        #expect(range.description == "ports 0x3f8-0x3ff")
        #expect(try PortRange(base: 0xF4, count: 1).description == "port 0xf4")
    }

    @Test("the whole port space and the single last port are valid ranges")
    func edgesOfPortSpace() throws {
        let all = try PortRange(base: 0, count: 0x10000)
        #expect(all.last == 0xFFFF)
        #expect(all.contains(0) && all.contains(0xFFFF))
        let top = try PortRange(base: 0xFFFF, count: 1)
        #expect(top.last == 0xFFFF)
        let topPair = try PortRange(base: 0xFFFE, count: 2)
        #expect(topPair.last == 0xFFFF)
    }

    @Test("count 0 and negative counts are rejected with .invalidRange")
    func rejectsEmpty() {
        #expect(throws: BusError.invalidRange("0 ports from 0x80 do not fit 0x0-0xffff")) {
            try PortRange(base: 0x80, count: 0)
        }
        #expect(throws: BusError.invalidRange("-1 ports from 0x80 do not fit 0x0-0xffff")) {
            try PortRange(base: 0x80, count: -1)
        }
    }

    @Test("ranges running past port 0xFFFF are rejected with .invalidRange")
    func rejectsPastEnd() {
        #expect(throws: BusError.invalidRange("2 ports from 0xffff do not fit 0x0-0xffff")) {
            try PortRange(base: 0xFFFF, count: 2)
        }
        #expect(throws: BusError.invalidRange("65537 ports from 0x0 do not fit 0x0-0xffff")) {
            try PortRange(base: 0, count: 0x10001)
        }
        #expect(throws: BusError.invalidRange("16 ports from 0xfff8 do not fit 0x0-0xffff")) {
            try PortRange(base: 0xFFF8, count: 16)
        }
    }

    // `Int(base) + count` once overflowed and trapped for a huge count.
    @Test("an enormous count throws .invalidRange rather than trapping on overflow")
    func hugeCountDoesNotTrap() {
        #expect(throws: BusError.self) { try PortRange(base: 1, count: Int.max) }
        #expect(throws: BusError.self) { try PortRange(base: 0xFFFF, count: Int.max - 1) }
    }
}

@Suite("PortBus")
struct PortBusTests {
    @Test("every port of a registered range looks up to the registration; neighbours stay unclaimed")
    func lookupEveryPort() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "com1", range: ports(0x3F8, 8))
        for port: UInt16 in 0x3F8...0x3FF {
            let entry = try #require(bus.entry(for: port))
            #expect(entry.name == "com1")
            #expect(entry.range == ports(0x3F8, 8))
            #expect(entry.device === device)
        }
        #expect(bus.entry(for: 0x3F7) == nil)
        #expect(bus.entry(for: 0x400) == nil)
        #expect(bus.entry(for: 0) == nil)
        #expect(bus.entry(for: 0xFFFF) == nil)
    }

    @Test("the device is told the port and its offset from the range base")
    func offsetPassedToDevice() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "dev", range: ports(0x100, 4))
        let dispatcher = ExitDispatcher(ports: bus)
        for port: UInt16 in 0x100...0x103 {
            #expect(dispatcher.dispatch(portOut(port), vcpu: FakeDataChannel([UInt32(port) & 0xFF])) == .handled)
            #expect(dispatcher.dispatch(portIn(port), vcpu: FakeDataChannel()) == .handled)
        }
        #expect(
            device.calls == [
                .write(port: 0x100, offset: 0, width: 1, value: 0x00), .read(port: 0x100, offset: 0, width: 1),
                .write(port: 0x101, offset: 1, width: 1, value: 0x01), .read(port: 0x101, offset: 1, width: 1),
                .write(port: 0x102, offset: 2, width: 1, value: 0x02), .read(port: 0x102, offset: 2, width: 1),
                .write(port: 0x103, offset: 3, width: 1, value: 0x03), .read(port: 0x103, offset: 3, width: 1),
            ])
    }

    @Test("one device may serve two ranges and sees offsets relative to each")
    func oneDeviceTwoRanges() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "a", range: ports(0x60, 1))
        try bus.register(device, name: "b", range: ports(0x64, 1))
        let dispatcher = ExitDispatcher(ports: bus)
        _ = dispatcher.dispatch(portIn(0x60), vcpu: FakeDataChannel())
        _ = dispatcher.dispatch(portIn(0x64), vcpu: FakeDataChannel())
        #expect(device.calls == [.read(port: 0x60, offset: 0, width: 1), .read(port: 0x64, offset: 0, width: 1)])
        #expect(bus.entry(for: 0x64)?.name == "b")
    }

    @Test("an overlapping registration fails with .overlap naming both registrations and the first shared port")
    func overlapNamesBoth() throws {
        var bus = PortBus()
        try bus.register(RecordingPortDevice(), name: "com1", range: ports(0x3F8, 8))
        let error = #expect(throws: BusError.self) {
            try bus.register(RecordingPortDevice(), name: "probe", range: ports(0x3F0, 10))
        }
        #expect(
            error
                == .overlap(
                    new: "'probe' (ports 0x3f0-0x3f9)", existing: "'com1' (ports 0x3f8-0x3ff)",
                    at: "port 0x3f8"))
        #expect(
            error?.description
                == "cannot register 'probe' (ports 0x3f0-0x3f9): it overlaps 'com1' (ports 0x3f8-0x3ff) at port 0x3f8")
        // The failed registration claimed nothing.
        #expect(bus.entry(for: 0x3F0) == nil)
        #expect(bus.entry(for: 0x3F7) == nil)
        #expect(bus.entry(for: 0x3F8)?.name == "com1")
        #expect(bus.registrations.map(\.name) == ["com1"])
    }

    @Test("overlap at the last port and with a blocked range is rejected too")
    func overlapAtLastPortAndBlocked() throws {
        var bus = PortBus()
        try bus.block(ports(0x80, 1), name: "post")
        #expect(throws: BusError.overlap(new: "'dbg' (ports 0x7f-0x80)", existing: "'post' (port 0x80)", at: "port 0x80")) {
            try bus.register(RecordingPortDevice(), name: "dbg", range: ports(0x7F, 2))
        }
        #expect(throws: BusError.overlap(new: "'again' (port 0x80)", existing: "'post' (port 0x80)", at: "port 0x80")) {
            try bus.block(ports(0x80, 1), name: "again")
        }
        // Adjacent ranges are fine.
        try bus.register(RecordingPortDevice(), name: "below", range: ports(0x70, 0x10))
        try bus.register(RecordingPortDevice(), name: "above", range: ports(0x81, 1))
        #expect(bus.registrations.map(\.name) == ["below", "post", "above"])
    }

    @Test("unregister frees every port of the range and allows re-registration")
    func unregisterFrees() throws {
        var bus = PortBus()
        let first = RecordingPortDevice(), second = RecordingPortDevice()
        try bus.register(first, name: "dev", range: ports(0x200, 16))
        try bus.register(RecordingPortDevice(), name: "other", range: ports(0x300, 1))
        try bus.unregister(name: "dev")
        for port: UInt16 in 0x200...0x20F { #expect(bus.entry(for: port) == nil) }
        #expect(bus.entry(for: 0x300)?.name == "other", "other registrations survive")
        #expect(bus.registrations.map(\.name) == ["other"])
        try bus.register(second, name: "dev2", range: ports(0x208, 16))
        #expect(bus.entry(for: 0x208)?.device === second)
        #expect(bus.entry(for: 0x217)?.device === second)
        #expect(bus.entry(for: 0x207) == nil)
        #expect(bus.registrations.map(\.name) == ["dev2", "other"])
    }

    @Test("unregistering an unknown name fails with .notRegistered")
    func unregisterUnknown() throws {
        var bus = PortBus()
        #expect(throws: BusError.notRegistered("nope")) { try bus.unregister(name: "nope") }
        try bus.register(RecordingPortDevice(), name: "x", range: ports(1, 1))
        try bus.unregister(name: "x")
        #expect(throws: BusError.notRegistered("x")) { try bus.unregister(name: "x") }
        #expect(BusError.notRegistered("x").description == "nothing named 'x' is registered")
    }

    @Test("registrations are listed ordered by base port")
    func registrationsOrdered() throws {
        var bus = PortBus()
        try bus.register(RecordingPortDevice(), name: "c", range: ports(0x3F8, 8))
        try bus.block(ports(0x20, 2), name: "a")
        try bus.register(RecordingPortDevice(), name: "b", range: ports(0x60, 1))
        #expect(bus.registrations.map(\.name) == ["a", "b", "c"])
        #expect(bus.registrations.map(\.range.base) == [0x20, 0x60, 0x3F8])
        #expect(bus.registrations[0].device == nil)
    }

    @Test("a blocked range reads all ones at each width, drops writes, and ignores every unclaimed policy")
    func blockedRange() throws {
        var bus = PortBus()
        try bus.block(ports(0x80, 4), name: "post")
        for policy in UnclaimedAccessPolicy.allCases {
            let log = LogRecorder()
            let dispatcher = ExitDispatcher(ports: bus, unclaimedPorts: policy, log: log.sink)
            for (width, ones) in [(UInt8(1), UInt32(0xFF)), (2, 0xFFFF), (4, 0xFFFF_FFFF)] {
                let data = FakeDataChannel([0x1234])
                #expect(dispatcher.dispatch(portIn(0x83, width: width), vcpu: data) == .handled)
                #expect(data.elements == [ones])
            }
            let out = FakeDataChannel([0x99])
            #expect(dispatcher.dispatch(portOut(0x80), vcpu: out) == .handled)
            #expect(out.writes.isEmpty)
            let strings = FakeDataChannel(count: 3)
            #expect(dispatcher.dispatch(portIn(0x81, width: 2, count: 3), vcpu: strings) == .handled)
            #expect(strings.elements == [0xFFFF, 0xFFFF, 0xFFFF])
            #expect(log.lines.isEmpty, "policy \(policy) must not log a blocked range")
        }
    }

    @Test("route(for:) gives the exit path the device and base port, mirroring entry(for:)")
    func routes() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "dev", range: ports(0x1F0, 8))
        try bus.block(ports(0x80, 1), name: "post")
        for port: UInt16 in 0x1F0...0x1F7 {
            let route = try #require(bus.route(for: port))
            #expect(route.base == 0x1F0)
            #expect(route.device === device)
        }
        let blocked = try #require(bus.route(for: 0x80))
        #expect(blocked.base == 0x80)
        #expect(blocked.device == nil)
        #expect(bus.route(for: 0x1EF) == nil)
        #expect(bus.route(for: 0x1F8) == nil)
        try bus.unregister(name: "dev")
        #expect(bus.route(for: 0x1F0) == nil)
        // A new registration reusing the freed slot gets its own route.
        let other = RecordingPortDevice()
        try bus.register(other, name: "new", range: ports(0x2F8, 8))
        #expect(bus.route(for: 0x2FF)?.base == 0x2F8)
        #expect(bus.route(for: 0x2FF)?.device === other)
        #expect(bus.route(for: 0x80)?.base == 0x80)
    }
}
