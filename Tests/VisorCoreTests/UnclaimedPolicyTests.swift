import Testing
import TestSupport
import VisorCore
import VisorKVM

/// What an unclaimed access came to, in the terms both buses share.
private struct Observed: Equatable {
    /// Whether the exit stopped the VM.
    var stopped: Bool
    /// The value a read delivered to the guest; nil when nothing was delivered.
    var delivered: UInt64?
    /// How many lines the dispatcher logged.
    var logLines: Int
}

@Suite("Unclaimed-access policy on both buses")
struct UnclaimedPolicyTests {
    @Test(
        "the port and MMIO buses apply each policy identically",
        arguments: UnclaimedAccessPolicy.allCases, [false, true])
    func sameOnBothBuses(policy: UnclaimedAccessPolicy, isWrite: Bool) {
        for width: UInt8 in [1, 2, 4] {
            let portLog = LogRecorder(), mmioLog = LogRecorder()
            let portDispatcher = ExitDispatcher(unclaimedPorts: policy, log: portLog.sink)
            let mmioDispatcher = ExitDispatcher(unclaimedMMIO: policy, log: mmioLog.sink)
            let portData = FakeDataChannel(count: 1), mmioData = FakeDataChannel()

            let portOutcome = portDispatcher.dispatch(
                isWrite ? portOut(0x71, width: width) : portIn(0x71, width: width), vcpu: portData)
            let mmioOutcome = mmioDispatcher.dispatch(
                isWrite ? mmioWrite(0xD000_0000, width: width, value: 0x12) : mmioRead(0xD000_0000, width: width),
                vcpu: mmioData)

            let port = Observed(
                stopped: portOutcome != .handled,
                delivered: portData.writes.isEmpty ? nil : UInt64(portData.elements[0]),
                logLines: portLog.lines.count)
            let mmio = Observed(
                stopped: mmioOutcome != .handled, delivered: mmioData.mmioData,
                logLines: mmioLog.lines.count)
            #expect(port == mmio, "\(policy), \(isWrite ? "write" : "read") of \(width) bytes")

            let expected =
                switch policy {
                case .block: Observed(stopped: false, delivered: isWrite ? nil : allOnes(width: width), logLines: 0)
                case .log: Observed(stopped: false, delivered: isWrite ? nil : allOnes(width: width), logLines: 1)
                case .stop: Observed(stopped: true, delivered: nil, logLines: 0)
                }
            #expect(port == expected)
            if policy == .stop {
                #expect(portOutcome == .stop(.unclaimedPort(port: 0x71, isWrite: isWrite, width: width)))
                #expect(mmioOutcome == .stop(.unclaimedMMIO(address: 0xD000_0000, isWrite: isWrite, width: width)))
            }
        }
    }
}
