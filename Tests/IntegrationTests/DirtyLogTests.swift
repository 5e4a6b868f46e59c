import Glibc
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorKVM

/// The set pages of a dirty bitmap.
private func setPages(_ words: [UInt64]) -> [UInt64] {
    words.indices.flatMap { w in (0..<64).compactMap { b in words[w] & (1 << UInt64(b)) != 0 ? UInt64(w * 64 + b) : nil } }
}

extension KVMIntegration {
    @Suite("KVM dirty log")
    struct DirtyLogTests {
        /// Real-mode code at 0x1000 that writes a byte to pages 3 and 5, a word across the
        /// boundary of pages 9 and 10, then halts.
        static let writer: [UInt8] = [
            0xC6, 0x06, 0x00, 0x30, 0x01,  // mov byte [0x3000], 1
            0xC6, 0x06, 0x00, 0x50, 0x02,  // mov byte [0x5000], 2
            0xC7, 0x06, 0xFF, 0x9F, 0x34, 0x12,  // mov word [0x9FFF], 0x1234
            0xF4,  // hlt
        ]

        /// Runs `vcpu` from 0x1000 in real mode until it halts.
        func runWriter(_ vcpu: VCPUHandle) throws {
            var sregs = try vcpu.specialRegisters()
            sregs.cs.base = 0
            sregs.cs.selector = 0
            sregs.ds.base = 0
            sregs.ds.selector = 0
            try vcpu.setSpecialRegisters(sregs)
            var regs = try vcpu.registers()
            regs.rip = 0x1000
            regs.rflags = 2
            try vcpu.setRegisters(regs)
            for _ in 0..<100 {
                let exit = try vcpu.run()
                if case .halt = exit { return }
                if case .interrupted = exit { continue }
                Issue.record("unexpected exit \(exit)")
                return
            }
            Issue.record("the guest did not halt")
        }

        @Test("KVM's dirty log reports exactly the pages the guest wrote, and is clear once read")
        func guestWrites() throws {
            let system = try KVMSystem.shared()
            let vm = try system.createVM()
            try vm.setTSSAddress(0xFFFB_D000)
            let memory = try GuestMemory(size: 1 << 20)
            try memory.write(Self.writer, at: 0x1000)
            let mapping = memory.hostMappings[0]
            try vm.setMemoryRegion(
                slot: 0, guestPhysical: 0, size: mapping.region.size, hostAddress: mapping.hostAddress,
                logDirtyPages: true)
            let vcpu = try vm.createVCPU(id: 0)

            #expect(setPages(try vm.dirtyLog(slot: 0, pageCount: 256)) == [], "nothing written yet")
            try runWriter(vcpu)
            let log = try vm.dirtyLog(slot: 0, pageCount: 256)
            #expect(log.count == 4)
            #expect(setPages(log) == [3, 5, 9, 10])
            #expect(try memory.readUInt8(at: 0x5000) == 2)
            #expect(try memory.readUInt16(at: 0x9FFF) == 0x1234)
            #expect(setPages(try vm.dirtyLog(slot: 0, pageCount: 256)) == [], "the get cleared the log")

            // Logging goes on after a get: writing the same values again dirties the pages again.
            try runWriter(vcpu)
            #expect(setPages(try vm.dirtyLog(slot: 0, pageCount: 256)) == [3, 5, 9, 10])
        }

        @Test("a dirty log of the wrong size, or of a slot that does not log, is refused")
        func wrongSlot() throws {
            let vm = try KVMSystem.shared().createVM()
            let memory = try GuestMemory(size: 1 << 20)
            let mapping = memory.hostMappings[0]
            try vm.setMemoryRegion(
                slot: 0, guestPhysical: 0, size: mapping.region.size, hostAddress: mapping.hostAddress,
                logDirtyPages: true)
            #expect(throws: KVMError.self) { try vm.dirtyLog(slot: 0, pageCount: 255) }
            #expect(throws: KVMError.self) { try vm.dirtyLog(slot: 1, pageCount: 256) }
            try vm.setMemoryRegion(
                slot: 0, guestPhysical: 0, size: mapping.region.size, hostAddress: mapping.hostAddress)
            #expect(throws: KVMError.self) { try vm.dirtyLog(slot: 0, pageCount: 256) }
        }
    }
}

extension KVMIntegration {
    @Suite("Machine dirty pages")
    struct MachineDirtyPageTests {
        @Test("a tracking machine reports the guest's and the VMM's writes together, and a take clears both")
        func machineDirtyPages() throws {
            var config = MachineConfiguration(guest: .elf(GuestImages.hello))
            config.consoleOutput = { _ in }
            config.trackDirtyPages = true
            let machine = try Machine(config)
            _ = try machine.run()
            // The VMM's part (the loaded image, the boot data) taken alone: what is left is
            // KVM's log of the guest's own writes (its stack, at least).
            let vmm = machine.memory.takeDirtyPages()
            #expect(vmm.flatMap(setPages).count > 0, "the loader's writes are marked")
            let guest = try machine.dirtyPages()
            #expect(guest.flatMap(setPages).count > 0, "the guest's writes are logged")
            #expect(try machine.dirtyPages().flatMap(setPages) == [], "a take clears both")

            try machine.memory.write(UInt32(7), at: 0x3F_FFFE)  // pages 0x3FF and 0x400
            #expect(try machine.dirtyPages().flatMap(setPages) == [0x3FF, 0x400])
        }

        @Test("a machine built without tracking refuses to report dirty pages")
        func untracked() throws {
            var config = MachineConfiguration(guest: .elf(GuestImages.hello))
            config.consoleOutput = { _ in }
            let machine = try Machine(config)
            #expect(throws: MachineError.self) { try machine.dirtyPages() }
            #expect(machine.memory.dirtyTracking == false)
        }
    }
}
