import Synchronization
import Testing
import TestSupport
@testable import VisorCore
import VisorKVM
import VisorMemory

/// A port device that answers every write with a fixed action.
final class ActionPortDevice: PortDevice {
    let action: DeviceAction
    init(_ action: DeviceAction) { self.action = action }
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction { action }
}

@Suite("Injection from devices")
struct InjectionTests {
    func dispatcher(with action: DeviceAction) throws -> ExitDispatcher {
        var bus = PortBus()
        try bus.register(ActionPortDevice(action), name: "injector", range: PortRange(base: 0x530, count: 1))
        return ExitDispatcher(ports: bus)
    }

    @Test(
        "a device's injection reaches the vCPU and the guest runs on",
        arguments: [
            Injection.generalProtection(0x18), .invalidOpcode, .pageFault(errorCode: 2, address: 0xDEAD_0000), .nmi,
            .interrupt(vector: 0x40), .exception(vector: 0, errorCode: nil),
        ])
    func injects(_ injection: Injection) throws {
        let vcpu = FakeDataChannel()
        let outcome = try dispatcher(with: .inject(injection))
            .dispatch(.io(PortAccess(isWrite: true, port: 0x530, width: 1)), vcpu: vcpu)
        #expect(outcome == .handled)
        #expect(vcpu.injections == [injection])
    }

    @Test("an exception vector above 31 or an interrupt vector below 32 is a fatal, named error")
    func badVectors() throws {
        for injection in [Injection.exception(vector: 40, errorCode: nil), .interrupt(vector: 13)] {
            let vcpu = FakeDataChannel()
            let outcome = try dispatcher(with: .inject(injection))
                .dispatch(.io(PortAccess(isWrite: true, port: 0x530, width: 1)), vcpu: vcpu)
            guard case .fatal(.badInjection(let message)) = outcome else {
                Issue.record("expected badInjection, got \(outcome)")
                continue
            }
            #expect(message.contains("vectors are"))
            #expect(vcpu.injections.isEmpty)
        }
    }

    @Test("a string OUT stops at the element whose handler injects")
    func stringStopsAtInjection() throws {
        let vcpu = FakeDataChannel(count: 5)
        let outcome = try dispatcher(with: .inject(.nmi))
            .dispatch(.io(PortAccess(isWrite: true, port: 0x530, width: 1, count: 5)), vcpu: vcpu)
        #expect(outcome == .handled)
        #expect(vcpu.reads == [0])
        #expect(vcpu.injections == [.nmi])
    }

    @Test("only architectural vectors take an error code")
    func errorCodeVectors() {
        #expect(Injection.vectorHasErrorCode(13))
        #expect(Injection.vectorHasErrorCode(14))
        #expect(Injection.vectorHasErrorCode(8))
        #expect(!Injection.vectorHasErrorCode(6))
        #expect(!Injection.vectorHasErrorCode(2))
    }
}

@Suite("Hypercalls")
struct HypercallTests {
    final class Console: Sendable {
        let bytes = Mutex<[UInt8]>([])
        func append(_ byte: UInt8) { bytes.withLock { $0.append(byte) } }
        var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
        var isEmpty: Bool { bytes.withLock { $0.isEmpty } }
    }

    let memory: GuestMemory
    let console = Console()

    init() throws {
        memory = try GuestMemory(size: 1 << 20)
    }

    func dispatcher() -> ExitDispatcher {
        let console = self.console
        return ExitDispatcher(
            hypercalls: HypercallTable.standard(
                memory: memory,
                console: { bytes in
                    for i in bytes.indices { console.append(bytes[i]) }
                }))
    }

    func call(_ number: UInt64, _ args: [UInt64] = [], dispatcher: ExitDispatcher? = nil) -> (ExitOutcome, FakeDataChannel) {
        let vcpu = FakeDataChannel()
        vcpu.regs.rax = number
        let a = args + Array(repeating: 0, count: 4 - args.count)
        vcpu.regs.rbx = a[0]; vcpu.regs.rcx = a[1]; vcpu.regs.rsi = a[2]; vcpu.regs.rdi = a[3]
        vcpu.regs.rdx = 0x502
        let outcome = (dispatcher ?? self.dispatcher())
            .dispatch(.io(PortAccess(isWrite: true, port: HypercallTable.defaultPort, width: 1)), vcpu: vcpu)
        return (outcome, vcpu)
    }

    @Test("identity returns the signature, ABI version and vCPU")
    func identity() {
        let (outcome, vcpu) = call(HypercallTable.Number.identity)
        #expect(outcome == .handled)
        #expect(vcpu.regs.rax == 0)
        #expect(vcpu.regs.rbx == 0x7273_6956_7466_7753)
        let rbx = vcpu.regs.rbx
        #expect(String(decoding: (0..<8).map { UInt8(truncatingIfNeeded: rbx >> ($0 * 8)) }, as: UTF8.self) == "SwftVisr")
        #expect(vcpu.regs.rcx == 1)
        #expect(vcpu.regs.rsi == 0)
        #expect(vcpu.injections.isEmpty)
    }

    @Test("console write copies the buffer from guest memory and returns its length")
    func consoleWrite() throws {
        try memory.write(Array("hello, host\n".utf8), at: 0x8000)
        let (outcome, vcpu) = call(HypercallTable.Number.consoleWrite, [0x8000, 12])
        #expect(outcome == .handled)
        #expect(vcpu.regs.rax == 12)
        #expect(console.text == "hello, host\n")
    }

    @Test("a buffer running past the end of RAM returns -EFAULT and writes nothing")
    func consoleWritePastRAM() {
        let (outcome, vcpu) = call(HypercallTable.Number.consoleWrite, [(1 << 20) - 4, 64])
        #expect(outcome == .handled)
        #expect(vcpu.regs.rax == UInt64(bitPattern: -14))
        let (_, wrapped) = call(HypercallTable.Number.consoleWrite, [UInt64.max - 2, 16])
        #expect(wrapped.regs.rax == UInt64(bitPattern: -14))
        #expect(console.isEmpty)
    }

    @Test("an over-long console write returns -EINVAL")
    func consoleWriteTooLong() {
        let (_, vcpu) = call(HypercallTable.Number.consoleWrite, [0x1000, 65537])
        #expect(vcpu.regs.rax == UInt64(bitPattern: -22))
    }

    @Test("exit stops the VM with the low byte of RBX")
    func exit() {
        let (outcome, _) = call(HypercallTable.Number.exit, [0x1_07])
        #expect(outcome == .stop(.guestExit(status: 7)))
    }

    @Test("an unknown number injects #UD and leaves RAX alone")
    func unknown() {
        let (outcome, vcpu) = call(0x1234)
        #expect(outcome == .handled)
        #expect(vcpu.injections == [.invalidOpcode])
        #expect(vcpu.regs.rax == 0x1234)
    }

    @Test("embedding code can add and replace handlers, which see all four arguments")
    func customHandler() {
        var table = HypercallTable.standard(memory: memory, console: { _ in })
        table.register(0x100) { request in .value(request.arguments.reduce(0, &+) &+ UInt64(request.vcpu)) }
        table.register(HypercallTable.Number.identity) { _ in .inject(.generalProtection(0)) }
        #expect(table.numbers == [0, 1, 2, 0x100])
        let dispatcher = ExitDispatcher(hypercalls: table)
        let (outcome, vcpu) = call(0x100, [1, 2, 3, 4], dispatcher: dispatcher)
        #expect(outcome == .handled)
        #expect(vcpu.regs.rax == 10)
        let (_, replaced) = call(0, dispatcher: dispatcher)
        #expect(replaced.injections == [.generalProtection(0)])
    }

    @Test("an IN from the hypercall port is an ordinary port read")
    func inIsNotACall() {
        let vcpu = FakeDataChannel()
        let outcome = dispatcher().dispatch(.io(PortAccess(isWrite: false, port: 0x502, width: 1)), vcpu: vcpu)
        #expect(outcome == .handled)
        #expect(vcpu.elements == [0xFF])
    }
}
