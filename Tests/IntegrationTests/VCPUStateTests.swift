import Glibc
import Testing
import VisorKVM
import VisorSnapshot

/// Real-mode test guests for the state tests, loaded at 0x1000 and entered with CS=DS=SS=0.
/// Real mode keeps the setup to two registers; the kernel interprets it here, which is fast
/// enough for these loops.
enum StateGuests {
    /// Counts in EBX and in the dword at 0x500; every 64 iterations writes EBX to port 0xE0.
    ///
    ///     xor %ebx,%ebx ; mov %ebx,0x500
    ///     1: inc %ebx ; incl 0x500 ; test $0x3f,%bx ; jnz 1b
    ///     mov %ebx,%eax ; out %eax,$0xe0 ; jmp 1b
    static let counter: [UInt8] = [
        0x66, 0x31, 0xDB, 0x66, 0x89, 0x1E, 0x00, 0x05, 0x66, 0x43, 0x66, 0xFF,
        0x06, 0x00, 0x05, 0xF7, 0xC3, 0x3F, 0x00, 0x75, 0xF3, 0x66, 0x89, 0xD8,
        0x66, 0xE7, 0xE0, 0xEB, 0xEB,
    ]
    static let counterPort: UInt16 = 0xE0
    static let counterAddress = 0x500

    /// Remaps the master PIC to vector 0x20 (ICW1-4, only IRQ0 unmasked), points IVT entry
    /// 0x20 at a handler that counts ticks in the dword at 0x504 and sends EOI, programs
    /// PIT channel 0 in mode 2 with divisor 1193 (about 1 kHz), then loops on
    /// `sti; hlt; mov 0x504,%eax; out %eax,$0xe4`: one port write per tick.
    static let ticker: [UInt8] = [
        0x66, 0xC7, 0x06, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0xC7, 0x06, 0x80,
        0x00, 0x40, 0x10, 0xC7, 0x06, 0x82, 0x00, 0x00, 0x00, 0xB0, 0x11, 0xE6,
        0x20, 0xB0, 0x20, 0xE6, 0x21, 0xB0, 0x04, 0xE6, 0x21, 0xB0, 0x01, 0xE6,
        0x21, 0xB0, 0xFE, 0xE6, 0x21, 0xB0, 0x34, 0xE6, 0x43, 0xB0, 0xA9, 0xE6,
        0x40, 0xB0, 0x04, 0xE6, 0x40, 0xFB, 0xF4, 0x66, 0xA1, 0x04, 0x05, 0x66,
        0xE7, 0xE4, 0xEB, 0xF6, 0x66, 0xFF, 0x06, 0x04, 0x05, 0x50, 0xB0, 0x20,
        0xE6, 0x20, 0x58, 0xCF,
    ]
    static let tickerPort: UInt16 = 0xE4

    /// `rep outsb` of 8 KiB from 0x2000 to port 0xE8 (more than one exit carries; KVM here
    /// exits per byte), then
    /// writes 0x600D to port 0xE0 and halts.
    ///
    ///     mov $0x2000,%si ; mov $0x2000,%cx ; mov $0xe8,%dx ; cld ; rep outsb
    ///     mov $0x600d,%eax ; out %eax,$0xe0 ; hlt
    static let stringOut: [UInt8] = [
        0xBE, 0x00, 0x20, 0xB9, 0x00, 0x20, 0xBA, 0xE8, 0x00, 0xFC, 0xF3, 0x6E,
        0x66, 0xB8, 0x0D, 0x60, 0x00, 0x00, 0x66, 0xE7, 0xE0, 0xF4,
    ]
    static let pitDivisor: UInt32 = 1193
}

struct UnexpectedExit: Error, CustomStringConvertible {
    let exit: VMExit
    var description: String { "unexpected exit \(exit)" }
}

/// A VM built straight on VisorKVM: 1 MiB of anonymous guest RAM and one vCPU, optionally
/// with the in-kernel irqchip and PIT, started in real mode at 0x1000 (or left fresh for a
/// restore).
@safe final class BareVM {
    static let memorySize = 1 << 20
    let vm: VMHandle
    let vcpu: VCPUHandle
    /// The guest RAM mapping, `memorySize` bytes, unmapped in deinit after the VM is gone.
    private let memory: UnsafeMutableRawBufferPointer

    /// - Parameters:
    ///   - image: bytes copied to 0x1000, with the vCPU set to start there; nil for a VM
    ///     whose state will be restored.
    ///   - ram: the whole guest RAM to start from (a copy of another VM's).
    init(irqchip: Bool, image: [UInt8]?, ram: [UInt8]? = nil) throws {
        let system = try KVMSystem.shared()
        vm = try system.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.setIdentityMapAddress(0xFFFB_C000)
        if irqchip {
            try vm.createInterruptController()
            try vm.createPIT()
        }
        // SAFETY: a fresh anonymous private mapping; checked against MAP_FAILED, owned by
        // this object and unmapped in deinit.
        let base = unsafe mmap(nil, Self.memorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let base = unsafe base, unsafe base != MAP_FAILED else { throw KVMError.mapRunPage(errno: errno) }
        let memory = unsafe UnsafeMutableRawBufferPointer(start: base, count: Self.memorySize)
        unsafe self.memory = unsafe memory
        if let ram {
            precondition(ram.count == Self.memorySize)
            // SAFETY: both are memorySize bytes.
            unsafe ram.withUnsafeBytes { unsafe memory.copyMemory(from: $0) }
        }
        try vm.setMemoryRegion(
            slot: 0, guestPhysical: 0, size: UInt64(Self.memorySize), hostAddress: UInt(bitPattern: base))
        vcpu = try vm.createVCPU(id: 0)
        guard let image else { return }
        try vcpu.setCPUID(system.supportedCPUID())
        // SAFETY: 0x1000 + image.count is far inside the mapping.
        unsafe image.withUnsafeBytes {
            unsafe UnsafeMutableRawBufferPointer(rebasing: memory[0x1000..<(0x1000 + $0.count)]).copyMemory(from: $0)
        }
        var sregs = try vcpu.specialRegisters()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.setSpecialRegisters(sregs)
        var regs = Registers()
        regs.rip = 0x1000
        regs.rsp = 0x7000
        try vcpu.setRegisters(regs)
    }

    deinit {
        // SAFETY: the mapping made in init, which nothing else uses. The VM's handles close
        // just after this body; no vCPU runs any more, so KVM touches the memory no more.
        unsafe munmap(memory.baseAddress, memory.count)
    }

    /// A copy of the whole guest RAM.
    var ram: [UInt8] { unsafe Array(memory) }

    /// The dword at guest-physical `address`.
    func dword(at address: Int) -> UInt32 {
        unsafe memory.loadUnaligned(fromByteOffset: address, as: UInt32.self)
    }

    /// Runs until the guest writes to `port` and returns the value written. Any other exit
    /// but an interruption fails.
    func nextWrite(to port: UInt16) throws -> UInt32 {
        while true {
            let exit = try vcpu.run()
            switch exit {
            case .io(let access) where access.isWrite && access.port == port && access.count == 1:
                return vcpu.ioElement(0)
            case .interrupted: continue
            default: throw UnexpectedExit(exit: exit)
            }
        }
    }
}

private func encode(_ value: some SnapshotCodable) -> [UInt8] {
    var writer = SnapshotWriter()
    writer.write(value)
    return writer.bytes
}

private func decode<T: SnapshotCodable>(_ bytes: [UInt8]) throws -> T {
    var reader = SnapshotReader(bytes)
    let value = try reader.read(T.self)
    try reader.finish("the state")
    return value
}

private func microseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
}

extension KVMIntegration {
    @Suite("vCPU and VM state capture and restore")
    struct VCPUStateTests {
        @Test("a counting guest stopped mid-run continues in a second VM exactly where it stopped")
        func counterContinues() throws {
            let first = try BareVM(irqchip: true, image: StateGuests.counter)
            let port = StateGuests.counterPort
            let before = try (1...20).map { _ in try first.nextWrite(to: port) }
            #expect(before == (1...20).map { UInt32($0 * 64) })

            let clock = ContinuousClock()
            let captureStart = clock.now
            let vcpuState = try first.vcpu.captureState()
            let captureTime = clock.now - captureStart
            let vmState = try first.vm.captureState()
            let ram = first.ram
            let vcpuBytes = encode(vcpuState), vmBytes = encode(vmState)
            let savedVCPU: VCPUState = try decode(vcpuBytes)
            let savedVM: VMState = try decode(vmBytes)
            #expect(savedVCPU == vcpuState)
            #expect(savedVM == vmState)
            #expect(savedVM.irqchips.count == 3 && savedVM.pit != nil)
            #expect(!savedVCPU.lapic.isEmpty)
            #expect(savedVCPU.msrs.count > 10)
            #expect(savedVCPU.xsave.count >= KernelLayout.xsave)
            #expect(!savedVCPU.cpuid.isEmpty)
            // The capture finished the OUT: RIP is past it, on the `jmp`.
            #expect(savedVCPU.registers?.rip == 0x101B)
            #expect(savedVCPU.registers?.rbx == 20 * 64)
            #expect(first.dword(at: StateGuests.counterAddress) == 20 * 64)

            let second = try BareVM(irqchip: true, image: nil, ram: ram)
            let restoreStart = clock.now
            try second.vm.restoreState(savedVM)
            let vmRestoreTime = clock.now - restoreStart
            let vcpuRestoreStart = clock.now
            try second.vcpu.restoreState(savedVCPU)
            let restoreTime = clock.now - vcpuRestoreStart
            let probe = try BareVM(irqchip: true, image: nil)
            let probeStart = clock.now
            _ = try probe.vcpu.offeredCPUID()
            let probeTime = clock.now - probeStart
            print(
                "vCPU state: \(vcpuBytes.count) bytes encoded (\(savedVCPU.msrs.count) MSRs, XSAVE \(savedVCPU.xsave.count) bytes, "
                    + "\(savedVCPU.cpuid.count) CPUID entries); VM state: \(vmBytes.count) bytes; "
                    + "capture one vCPU \(microseconds(captureTime)) us, restore one vCPU \(microseconds(restoreTime)) us "
                    + "(of which the CPUID check \(microseconds(probeTime)) us), "
                    + "restore VM state \(microseconds(vmRestoreTime)) us")

            #expect(try second.vcpu.registers() == first.vcpu.registers())
            #expect(try second.vcpu.specialRegisters() == first.vcpu.specialRegisters())
            #expect(try second.vcpu.fpu() == first.vcpu.fpu())
            #expect(try second.vcpu.cpuidTable() == first.vcpu.cpuidTable())

            // Both go on: the next writes carry the next counts, in both VMs alike.
            for n in 21...25 {
                let fromSecond = try second.nextWrite(to: port)
                let fromFirst = try first.nextWrite(to: port)
                #expect(fromSecond == UInt32(n * 64))
                #expect(fromFirst == fromSecond)
            }
            #expect(second.dword(at: StateGuests.counterAddress) == 25 * 64)
            #expect(try second.vcpu.registers() == first.vcpu.registers())

            // The TSC was restored, not started again from 0, and goes on counting.
            let savedTSC = try #require(savedVCPU.msr(VCPUState.tscMSR))
            let tscAfter = try #require(second.vcpu.readMSRs([VCPUState.tscMSR]).first?.value)
            #expect(savedTSC > 0)
            #expect(tscAfter > savedTSC)
        }

        @Test("a programmed PIT keeps interrupting the guest after restore, and the TSC moves on")
        func timerKeepsRunning() throws {
            let first = try BareVM(irqchip: true, image: StateGuests.ticker)
            let port = StateGuests.tickerPort
            let ticks = try (1...10).map { _ in try first.nextWrite(to: port) }
            #expect(ticks.last ?? 0 >= 10)
            #expect(zip(ticks, ticks.dropFirst()).allSatisfy { $0 < $1 })

            let vcpuState = try first.vcpu.captureState()
            let vmState = try first.vm.captureState()
            let savedVCPU: VCPUState = try decode(encode(vcpuState))
            let savedVM: VMState = try decode(encode(vmState))
            let pit = try #require(savedVM.pit)
            // Channel 0's count, the first field of kvm_pit_state2: the guest's divisor.
            #expect(pit.prefix(4).elementsEqual([0xA9, 0x04, 0, 0]))
            let savedTicks = first.dword(at: 0x504)

            let second = try BareVM(irqchip: true, image: nil, ram: first.ram)
            try second.vm.restoreState(savedVM)
            try second.vcpu.restoreState(savedVCPU)
            #expect(try second.vm.captureState().pit?.prefix(4).elementsEqual(pit.prefix(4)) == true)
            let after = try (1...10).map { _ in try second.nextWrite(to: port) }
            #expect(after.first ?? 0 > savedTicks)
            #expect(zip(after, after.dropFirst()).allSatisfy { $0 < $1 })

            let savedTSC = try #require(savedVCPU.msr(VCPUState.tscMSR))
            let tscAfter = try #require(second.vcpu.readMSRs([VCPUState.tscMSR]).first?.value)
            #expect(tscAfter > savedTSC)
            // The KVM clock resumed at the saved value and went on from there.
            #expect(try second.vm.captureState().clock > savedVM.clock)
        }

        @Test("with two vCPUs, an application processor waiting for SIPI is still waiting after restore")
        func waitingProcessorStaysWaiting() throws {
            let first = try BareVM(irqchip: true, image: StateGuests.counter)
            let ap = try first.vm.createVCPU(id: 1)
            try ap.setCPUID(KVMSystem.shared().supportedCPUID())
            try ap.setMPState(VCPUHandle.mpStateWaitForSIPI)
            _ = try (1...3).map { _ in try first.nextWrite(to: StateGuests.counterPort) }
            let states = try [first.vcpu.captureState(), ap.captureState()]
            let vmState = try first.vm.captureState()
            #expect(states[1].mpState == VCPUHandle.mpStateWaitForSIPI)

            let second = try BareVM(irqchip: true, image: nil, ram: first.ram)
            let secondAP = try second.vm.createVCPU(id: 1)
            try second.vm.restoreState(decode(encode(vmState)))
            try second.vcpu.restoreState(decode(encode(states[0])))
            try secondAP.restoreState(decode(encode(states[1])))
            #expect(try secondAP.mpState() == VCPUHandle.mpStateWaitForSIPI)
            #expect(try secondAP.registers() == ap.registers())
            #expect(try second.nextWrite(to: StateGuests.counterPort) == 4 * 64)
            #expect(try secondAP.mpState() == VCPUHandle.mpStateWaitForSIPI)
        }

        @Test("a capture in the middle of a rep OUTSB resumes the string in a second VM where it stopped")
        func stringOutResumes() throws {
            let first = try BareVM(irqchip: true, image: StateGuests.stringOut)
            let exit = try first.vcpu.run()
            guard case .io(let access) = exit, access.port == 0xE8 else { throw UnexpectedExit(exit: exit) }
            var sent = Int(access.count)
            // A KVM that moves several bytes per exit may need user space again to finish
            // the batch: the capture then hands back that exit to handle first.
            var captured: VCPUState?
            while captured == nil {
                do {
                    captured = try first.vcpu.captureState()
                } catch KVMError.exitPending(let next) {
                    guard case .io(let more) = next, more.port == 0xE8 else { throw UnexpectedExit(exit: next) }
                    sent += Int(more.count)
                }
            }
            let state = try #require(captured)
            let regs = try #require(state.registers)
            // Between iterations (RIP on the instruction, CX counting down) or past it.
            if regs.rip == 0x100A {
                #expect(Int(regs.rcx & 0xFFFF) == 0x2000 - sent)
                #expect(Int(regs.rsi & 0xFFFF) == 0x2000 + sent)
            } else {
                #expect(regs.rip == 0x100C && sent == 0x2000)
            }

            let second = try BareVM(irqchip: true, image: nil, ram: first.ram)
            try second.vm.restoreState(first.vm.captureState())
            try second.vcpu.restoreState(state)
            var rest = 0
            var marker: UInt32?
            while marker == nil {
                let next = try second.vcpu.run()
                switch next {
                case .io(let more) where more.port == 0xE8: rest += Int(more.count)
                case .io(let more) where more.port == StateGuests.counterPort: marker = second.vcpu.ioElement(0)
                case .interrupted: continue
                default: throw UnexpectedExit(exit: next)
                }
            }
            #expect(sent + rest == 0x2000)
            #expect(marker == 0x600D)
        }

        @Test("state is refused by a VM built differently, with the reason")
        func mismatchRefused() throws {
            let first = try BareVM(irqchip: true, image: StateGuests.counter)
            _ = try first.nextWrite(to: StateGuests.counterPort)
            let vcpuState = try first.vcpu.captureState()
            let vmState = try first.vm.captureState()

            let bare = try BareVM(irqchip: false, image: nil)
            #expect(throws: KVMError.stateMismatch("the saved VM had the in-kernel irqchip, and this VM has none")) {
                try bare.vm.restoreState(vmState)
            }
            #expect(throws: KVMError.stateMismatch("the vCPU had an in-kernel local APIC, and this VM has no in-kernel irqchip"))
            {
                try bare.vcpu.restoreState(vcpuState)
            }
            // A CPU feature the host's KVM does not offer: the lowest bit of leaf 7 EBX that
            // a fresh vCPU here is not given (KVM's table, plus what a nested KVM adds).
            var foreign = vcpuState
            let offered = try BareVM(irqchip: true, image: nil).vcpu.offeredCPUID()
            let leaf7 = offered.first { $0.function == 7 && $0.index == 0 }?.ebx ?? 0
            let missingBit = try #require((0..<32).first { leaf7 & (1 << $0) == 0 })
            let slot = try #require(foreign.cpuid.firstIndex { $0.function == 7 && $0.index == 0 })
            foreign.cpuid[slot].ebx |= 1 << missingBit
            let target = try BareVM(irqchip: true, image: nil)
            #expect(throws: KVMError.incompatibleCPU(leaf: 7, subleaf: 0, register: "EBX", bit: missingBit)) {
                try target.vcpu.restoreState(foreign)
            }
        }
    }
}
