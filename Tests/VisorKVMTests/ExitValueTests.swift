import Testing
import VisorKVM

@Suite("Decoded exits and injections")
struct ExitValueTests {
    @Test("every exit kind names the KVM exit reason it came from")
    func reasons() {
        #expect(VMExit.io(PortAccess(isWrite: true, port: 0x3F8, width: 1)).reason == .io)
        #expect(VMExit.malformedIO(port: 1, width: 3, count: 1).reason == .io)
        #expect(VMExit.mmio(MMIOAccess(isWrite: false, address: 0xD000_0000, width: 4)).reason == .mmio)
        #expect(VMExit.halt(interruptsEnabled: false).reason == .hlt)
        #expect(VMExit.shutdown.reason == .shutdown)
        #expect(VMExit.interrupted.reason == .intr)
        #expect(VMExit.msr(index: 0x10, value: nil).reason == .x86Rdmsr)
        #expect(VMExit.msr(index: 0x10, value: 1).reason == .x86Wrmsr)
        #expect(VMExit.other(reason: 39, hardwareReason: 0).reason == .memoryFault)
        #expect(VMExit.other(reason: 999, hardwareReason: 0).reason == nil)
    }

    @Test("every exit reason has its kernel name, and the numbers are the kernel's")
    func kernelNames() {
        for reason in ExitReason.allCases {
            #expect(reason.kernelName.hasPrefix("KVM_EXIT_"))
        }
        #expect(ExitReason.io.rawValue == 2)
        #expect(ExitReason.mmio.rawValue == 6)
        #expect(ExitReason.internalError.kernelName == "KVM_EXIT_INTERNAL_ERROR")
        #expect(Set(ExitReason.allCases.map(\.kernelName)).count == ExitReason.allCases.count)
    }

    @Test("exceptions take vectors 0-31 and interrupts 32-255; error codes only where the CPU pushes one")
    func injections() throws {
        try Injection.exception(vector: 31, errorCode: nil).validate()
        try Injection.interrupt(vector: 32).validate()
        #expect(throws: InjectionError.self) { try Injection.exception(vector: 32, errorCode: nil).validate() }
        #expect(throws: InjectionError.self) { try Injection.interrupt(vector: 31).validate() }
        #expect(Injection.vectorHasErrorCode(13))
        #expect(Injection.vectorHasErrorCode(14))
        #expect(!Injection.vectorHasErrorCode(6))
        #expect(Injection.generalProtection(0x10) == .exception(vector: 13, errorCode: 0x10))
        #expect(Injection.invalidOpcode == .exception(vector: 6, errorCode: nil))
    }
}
