import Synchronization
import Testing
import TestSupport
import VisorCore
import VisorKVM

/// An emulation-failure handler that records the data it is given and answers `answer`.
final class RecordingEmulationHandler: EmulationFailureHandler {
    private let seen = Mutex<[[UInt64]]>([])
    let answer: ExitOutcome?

    init(answer: ExitOutcome?) { self.answer = answer }

    var calls: [[UInt64]] { seen.withLock { $0 } }

    func finish(data: [UInt64], vcpu: some VCPUContext) -> ExitOutcome? {
        seen.withLock { $0.append(data) }
        return answer
    }
}

@Suite("ExitDispatcher: emulation failures")
struct EmulationFailureHandlerTests {
    let data = FakeDataChannel()

    @Test("suberror 1 goes to the handler, whose outcome ends the exit")
    func handled() {
        let handler = RecordingEmulationHandler(answer: .handled)
        var dispatcher = ExitDispatcher()
        dispatcher.emulationFailureHandler = handler
        #expect(dispatcher.dispatch(.internalError(suberror: 1, data: [1, 0x90_01]), vcpu: data) == .handled)
        #expect(handler.calls == [[1, 0x90_01]])
    }

    @Test("a handler that does not know the instruction leaves the internal error fatal")
    func declined() {
        let handler = RecordingEmulationHandler(answer: nil)
        var dispatcher = ExitDispatcher()
        dispatcher.emulationFailureHandler = handler
        #expect(
            dispatcher.dispatch(.internalError(suberror: 1, data: [0]), vcpu: data)
                == .fatal(.internalError(suberror: 1, data: [0])))
        #expect(handler.calls.count == 1)
    }

    @Test("other suberrors never reach the handler")
    func otherSuberrors() {
        let handler = RecordingEmulationHandler(answer: .handled)
        var dispatcher = ExitDispatcher()
        dispatcher.emulationFailureHandler = handler
        #expect(
            dispatcher.dispatch(.internalError(suberror: 3, data: []), vcpu: data)
                == .fatal(.internalError(suberror: 3, data: [])))
        #expect(handler.calls.isEmpty)
    }
}
