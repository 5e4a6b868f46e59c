import Testing
import TestSupport
@testable import VisorCore
import VisorKVM

@Suite("ExitDispatcher: port I/O")
struct PortDispatchTests {
    static let widths: [(UInt8, UInt32)] = [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF)]

    @Test(
        "IN from an unclaimed port reads all ones at widths 1/2/4 under .block, without logging",
        arguments: widths)
    func unclaimedInBlock(width: UInt8, ones: UInt32) {
        let log = LogRecorder()
        let dispatcher = ExitDispatcher(unclaimedPorts: .block, log: log.sink)
        let data = FakeDataChannel([0x1234_5678])
        #expect(dispatcher.dispatch(portIn(0x71, width: width), vcpu: data) == .handled)
        #expect(data.elements == [ones])
        #expect(log.lines.isEmpty)
    }

    @Test(
        "IN from an unclaimed port reads all ones at widths 1/2/4 under .log, and logs once",
        arguments: widths)
    func unclaimedInLog(width: UInt8, ones: UInt32) {
        let log = LogRecorder()
        let dispatcher = ExitDispatcher(unclaimedPorts: .log, log: log.sink)
        let data = FakeDataChannel([0x1234_5678])
        #expect(dispatcher.dispatch(portIn(0x71, width: width), vcpu: data) == .handled)
        #expect(data.elements == [ones])
        #expect(log.lines == ["unclaimed port IN of \(width) bytes at 0x71 x1"])
    }

    @Test("OUT to an unclaimed port is dropped; .log logs it, .block does not")
    func unclaimedOut() {
        let blockLog = LogRecorder(), logLog = LogRecorder()
        let block = ExitDispatcher(unclaimedPorts: .block, log: blockLog.sink)
        let logging = ExitDispatcher(unclaimedPorts: .log, log: logLog.sink)
        let data = FakeDataChannel([0xAB])
        #expect(block.dispatch(portOut(0x3F8), vcpu: data) == .handled)
        #expect(logging.dispatch(portOut(0x3F8, width: 2, count: 1), vcpu: data) == .handled)
        #expect(data.elements == [0xAB])
        #expect(data.writes.isEmpty)
        #expect(blockLog.lines.isEmpty)
        #expect(logLog.lines == ["unclaimed port OUT of 2 bytes at 0x3f8 x1"])
    }

    @Test("under .stop an unclaimed IN or OUT stops with .unclaimedPort and touches no data")
    func unclaimedStop() {
        let log = LogRecorder()
        let dispatcher = ExitDispatcher(unclaimedPorts: .stop, log: log.sink)
        let data = FakeDataChannel([0x42])
        #expect(
            dispatcher.dispatch(portIn(0x71, width: 2), vcpu: data)
                == .stop(.unclaimedPort(port: 0x71, isWrite: false, width: 2)))
        #expect(
            dispatcher.dispatch(portOut(0x72, width: 4), vcpu: data)
                == .stop(.unclaimedPort(port: 0x72, isWrite: true, width: 4)))
        #expect(data.elements == [0x42])
        #expect(data.writes.isEmpty)
        #expect(log.lines.isEmpty)
        #expect(
            StopReason.unclaimedPort(port: 0x71, isWrite: false, width: 2).description
                == "unclaimed port access: IN of 2 bytes at port 0x71")
        #expect(StopReason.unclaimedPort(port: 0x71, isWrite: true, width: 2).exitStatus == 120)
    }

    @Test("unclaimed string IN fills every element with all ones")
    func unclaimedStringIn() {
        let dispatcher = ExitDispatcher(unclaimedPorts: .block)
        let data = FakeDataChannel(count: 5, value: 0)
        #expect(dispatcher.dispatch(portIn(0x1F0, width: 2, count: 5), vcpu: data) == .handled)
        #expect(data.elements == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF])
        #expect(data.writes == [0, 1, 2, 3, 4])
    }

    @Test("a claimed OUT passes port, offset, width and value to the device")
    func claimedOut() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "dev", range: ports(0xCF8, 8))
        let dispatcher = ExitDispatcher(ports: bus, unclaimedPorts: .stop)
        #expect(dispatcher.dispatch(portOut(0xCFC, width: 4), vcpu: FakeDataChannel([0x8000_F8AC])) == .handled)
        #expect(device.calls == [.write(port: 0xCFC, offset: 4, width: 4, value: 0x8000_F8AC)])
    }

    @Test("string OUT (count 6) delivers every element to the device in order")
    func stringOut() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "dev", range: ports(0x500, 2))
        let dispatcher = ExitDispatcher(ports: bus)
        let data = FakeDataChannel([0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x0A])
        #expect(dispatcher.dispatch(portOut(0x501, width: 1, count: 6), vcpu: data) == .handled)
        #expect(
            device.calls
                == [0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x0A].map {
                    PortCall.write(port: 0x501, offset: 1, width: 1, value: $0)
                })
        #expect(data.reads == [0, 1, 2, 3, 4, 5])
    }

    @Test("string IN (count 4) fills every element, in order, from successive device reads")
    func stringIn() throws {
        var bus = PortBus()
        let device = RecordingPortDevice(readBase: 0x1000)
        try bus.register(device, name: "dev", range: ports(0x1F0, 8))
        let dispatcher = ExitDispatcher(ports: bus)
        let data = FakeDataChannel(count: 4, value: 0)
        #expect(dispatcher.dispatch(portIn(0x1F0, width: 2, count: 4), vcpu: data) == .handled)
        #expect(data.elements == [0x1000, 0x1001, 0x1002, 0x1003])
        #expect(data.writes == [0, 1, 2, 3])
        #expect(device.calls == Array(repeating: .read(port: 0x1F0, offset: 0, width: 2), count: 4))
    }

    @Test("a device returning .stop(.guestExit) stops a string OUT at that element")
    func stopMidString() throws {
        var bus = PortBus()
        let device = RecordingPortDevice(stopValue: 0x2A, stopStatus: 3)
        try bus.register(device, name: "exit", range: ports(0xF4, 1))
        let dispatcher = ExitDispatcher(ports: bus)
        let data = FakeDataChannel([1, 2, 0x2A, 4, 5])
        #expect(dispatcher.dispatch(portOut(0xF4, width: 1, count: 5), vcpu: data) == .stop(.guestExit(status: 3)))
        #expect(
            device.calls == [
                .write(port: 0xF4, offset: 0, width: 1, value: 1),
                .write(port: 0xF4, offset: 0, width: 1, value: 2),
                .write(port: 0xF4, offset: 0, width: 1, value: 0x2A),
            ])
        #expect(data.reads == [0, 1, 2])
        #expect(StopReason.guestExit(status: 3).exitStatus == 3)
    }

    @Test("a wide access at the last port of a range goes to that range's owner in full, not the neighbour")
    func lastPortRouting() throws {
        var bus = PortBus()
        let low = RecordingPortDevice(readBase: 0xAABB_CCDD), high = RecordingPortDevice()
        try bus.register(low, name: "low", range: ports(0x10, 4))
        try bus.register(high, name: "high", range: ports(0x14, 4))
        let dispatcher = ExitDispatcher(ports: bus, unclaimedPorts: .stop)
        let data = FakeDataChannel([0])
        #expect(dispatcher.dispatch(portIn(0x13, width: 4), vcpu: data) == .handled)
        #expect(data.elements == [0xAABB_CCDD])
        #expect(dispatcher.dispatch(portOut(0x13, width: 2), vcpu: FakeDataChannel([0xBEEF])) == .handled)
        #expect(
            low.calls == [
                .read(port: 0x13, offset: 3, width: 4),
                .write(port: 0x13, offset: 3, width: 2, value: 0xBEEF),
            ])
        #expect(high.calls.isEmpty)
        // A wide access at the last port of the whole space is routed too, without wrapping.
        let top = RecordingPortDevice()
        try bus.register(top, name: "top", range: ports(0xFFFF, 1))
        let topDispatcher = ExitDispatcher(ports: bus, unclaimedPorts: .stop)
        #expect(topDispatcher.dispatch(portIn(0xFFFF, width: 4), vcpu: FakeDataChannel()) == .handled)
        #expect(top.calls == [.read(port: 0xFFFF, offset: 0, width: 4)])
    }

    @Test("a zero-count I/O exit calls nothing and touches no data")
    func zeroCount() throws {
        var bus = PortBus()
        let device = RecordingPortDevice()
        try bus.register(device, name: "dev", range: ports(0x10, 1))
        let dispatcher = ExitDispatcher(ports: bus)
        let data = FakeDataChannel([])
        #expect(dispatcher.dispatch(portIn(0x10, count: 0), vcpu: data) == .handled)
        #expect(dispatcher.dispatch(portOut(0x10, count: 0), vcpu: data) == .handled)
        #expect(device.calls.isEmpty)
    }
}

@Suite("ExitDispatcher: other exits")
struct OtherExitDispatchTests {
    let dispatcher = ExitDispatcher(unclaimedPorts: .stop, unclaimedMMIO: .stop)
    let data = FakeDataChannel()

    @Test("halt stops with .halted whatever RFLAGS.IF was")
    func halt() {
        #expect(dispatcher.dispatch(.halt(interruptsEnabled: false), vcpu: data) == .stop(.halted))
        #expect(dispatcher.dispatch(.halt(interruptsEnabled: true), vcpu: data) == .stop(.halted))
        #expect(StopReason.halted.exitStatus == 0)
    }

    @Test("shutdown is a fatal triple fault (status 121)")
    func shutdown() {
        #expect(dispatcher.dispatch(.shutdown, vcpu: data) == .fatal(.tripleFault))
        #expect(FatalExit.tripleFault.exitStatus == 121)
    }

    @Test("internal error keeps suberror and data; its message names the emulation failure")
    func internalError() {
        let outcome = dispatcher.dispatch(.internalError(suberror: 1, data: [0x10, 0xABC]), vcpu: data)
        #expect(outcome == .fatal(.internalError(suberror: 1, data: [0x10, 0xABC])))
        #expect(
            FatalExit.internalError(suberror: 1, data: [0x10, 0xABC]).description
                == "KVM internal error, suberror 1 (instruction emulation failed), data 0x10 0xabc")
        #expect(FatalExit.internalError(suberror: 3, data: []).description == "KVM internal error, suberror 3")
        #expect(FatalExit.internalError(suberror: 1, data: []).exitStatus == 122)
    }

    @Test("failed entry keeps hardware reason and CPU")
    func failEntry() {
        #expect(
            dispatcher.dispatch(.failEntry(hardwareReason: 0x21, cpu: 3), vcpu: data)
                == .fatal(.failedEntry(hardwareReason: 0x21, cpu: 3)))
        #expect(
            FatalExit.failedEntry(hardwareReason: 0x21, cpu: 3).description
                == "VM entry failed on CPU 3, hardware reason 0x21")
        #expect(FatalExit.failedEntry(hardwareReason: 0, cpu: 0).exitStatus == 123)
    }

    @Test("other, exception and debug exits are fatal .unhandledExit with the kernel's reason")
    func unhandled() {
        #expect(dispatcher.dispatch(.other(reason: 29, hardwareReason: 7), vcpu: data) == .fatal(.unhandledExit(reason: 29)))
        #expect(dispatcher.dispatch(.other(reason: 999, hardwareReason: 0), vcpu: data) == .fatal(.unhandledExit(reason: 999)))
        #expect(dispatcher.dispatch(.exception(vector: 6, errorCode: 0), vcpu: data) == .fatal(.unhandledExit(reason: 1)))
        #expect(dispatcher.dispatch(.debug, vcpu: data) == .fatal(.unhandledExit(reason: 4)))
        #expect(FatalExit.unhandledExit(reason: 29).description == "unhandled exit KVM_EXIT_X86_RDMSR")
        #expect(FatalExit.unhandledExit(reason: 999).description == "unhandled exit reason 999")
        #expect(FatalExit.unhandledExit(reason: 999).exitStatus == 124)
    }

    @Test("a malformed I/O exit is fatal and names port, width and count")
    func malformedIO() {
        #expect(
            dispatcher.dispatch(.malformedIO(port: 0x3F8, width: 4, count: 9999), vcpu: data)
                == .fatal(.malformedExit("I/O exit at port 0x3f8 with width 4 and count 9999 does not fit the run page")))
    }

    @Test("a system event stops with its type")
    func systemEvent() {
        #expect(dispatcher.dispatch(.systemEvent(type: 2), vcpu: data) == .stop(.systemEvent(type: 2)))
    }

    @Test(".interrupted resumes the guest")
    func interrupted() {
        #expect(dispatcher.dispatch(.interrupted, vcpu: data) == .handled)
    }

    @Test("each VMExit reports the KVM exit reason it came from")
    func reasons() {
        #expect(portIn(1).reason == .io)
        #expect(VMExit.malformedIO(port: 1, width: 1, count: 1).reason == .io)
        #expect(mmioRead(0, width: 1).reason == .mmio)
        #expect(VMExit.halt(interruptsEnabled: false).reason == .hlt)
        #expect(VMExit.shutdown.reason == .shutdown)
        #expect(VMExit.interrupted.reason == .intr)
        #expect(VMExit.other(reason: 39, hardwareReason: 0).reason == .memoryFault)
        #expect(VMExit.other(reason: 1000, hardwareReason: 0).reason == nil)
        #expect(ExitReason.io.kernelName == "KVM_EXIT_IO")
        #expect(ExitReason.allCases.count == 40)
    }
}
