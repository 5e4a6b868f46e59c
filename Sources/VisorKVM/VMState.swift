internal import CKVM
package import VisorSnapshot

/// The state KVM holds for a whole VM rather than one vCPU: the in-kernel interrupt
/// controllers (PIC master, PIC slave, IOAPIC), the PIT, and the KVM clock. A VM without
/// an in-kernel irqchip or PIT records that, and restores only into a VM built the same way.
package struct VMState: Sendable, Equatable, SnapshotCodable {
    /// The encoding's own version, written first: a reader refuses any other.
    package static let encodingVersion: UInt32 = 1

    /// `struct kvm_irqchip` for chips 0 (PIC master), 1 (PIC slave) and 2 (IOAPIC), or
    /// empty for a VM without the in-kernel irqchip.
    package var irqchips: [[UInt8]]
    /// `struct kvm_pit_state2`, or nil for a VM without the in-kernel PIT.
    package var pit: [UInt8]?
    /// The KVM clock (`KVM_GET_CLOCK`), in nanoseconds.
    package var clock: UInt64

    package init(irqchips: [[UInt8]], pit: [UInt8]?, clock: UInt64) {
        self.irqchips = irqchips
        self.pit = pit
        self.clock = clock
    }

    /// The chip ids of `irqchips`, in order.
    static let chipIDs: [UInt32] = [CKVM_IRQCHIP_PIC_MASTER, CKVM_IRQCHIP_PIC_SLAVE, CKVM_IRQCHIP_IOAPIC]

    package func encode(to writer: inout SnapshotWriter) {
        writer.write(Self.encodingVersion)
        writer.write(!irqchips.isEmpty)
        for chip in irqchips { writer.write(bytes: chip) }
        writer.write(pit != nil)
        if let pit { writer.write(bytes: pit) }
        writer.write(clock)
    }

    package init(from reader: inout SnapshotReader) throws(SnapshotError) {
        let version = try reader.readUInt32("the VM state's version")
        guard version == Self.encodingVersion else {
            throw .invalid("the VM state", reason: "has encoding version \(version), not \(Self.encodingVersion)")
        }
        irqchips = []
        if try reader.readBool("whether the VM has an in-kernel irqchip") {
            for (slot, id) in Self.chipIDs.enumerated() {
                let what = ["the PIC master", "the PIC slave", "the IOAPIC"][slot]
                let chip = try reader.readBytes(what, exactly: KernelLayout.irqchip)
                // The chip id is the structure's first field, little-endian.
                let stored = UInt32(chip[0]) | UInt32(chip[1]) << 8 | UInt32(chip[2]) << 16 | UInt32(chip[3]) << 24
                guard stored == id else { throw .invalid(what, reason: "has chip id \(stored), not \(id)") }
                irqchips.append(chip)
            }
        }
        pit = nil
        if try reader.readBool("whether the VM has an in-kernel PIT") {
            pit = try reader.readBytes("the PIT", exactly: KernelLayout.pit)
        }
        clock = try reader.readUInt64("the KVM clock")
    }
}

extension VMHandle {
    /// Reads the VM-wide state (see `VMState`). Call it with every vCPU stopped.
    package func captureState() throws(KVMError) -> VMState {
        var chips: [[UInt8]] = []
        if hasInterruptController {
            for id in VMState.chipIDs {
                var chip = kvm_irqchip()
                chip.chip_id = id
                try ioctlStruct(fd, CKVM_GET_IRQCHIP, "KVM_GET_IRQCHIP", &chip)
                chips.append(kernelBytes(of: chip))
            }
        }
        var pitBytes: [UInt8]?
        if hasPIT {
            var state = kvm_pit_state2()
            try ioctlStruct(fd, CKVM_GET_PIT2, "KVM_GET_PIT2", &state)
            pitBytes = kernelBytes(of: state)
        }
        var clock = kvm_clock_data()
        try ioctlStruct(fd, CKVM_GET_CLOCK, "KVM_GET_CLOCK", &clock)
        return VMState(irqchips: chips, pit: pitBytes, clock: clock.clock)
    }

    /// Puts `state` into this VM, which must have been built the same way (in-kernel
    /// irqchip and PIT, or not) and whose vCPUs are restored after it. The KVM clock
    /// resumes at the saved value: the time the VM spent saved does not pass for the guest.
    package func restoreState(_ state: VMState) throws(KVMError) {
        guard state.irqchips.isEmpty != hasInterruptController else {
            throw .stateMismatch(
                hasInterruptController
                    ? "the saved VM had no in-kernel irqchip, and this VM has one"
                    : "the saved VM had the in-kernel irqchip, and this VM has none")
        }
        guard (state.pit != nil) == hasPIT else {
            throw .stateMismatch(
                hasPIT
                    ? "the saved VM had no in-kernel PIT, and this VM has one"
                    : "the saved VM had the in-kernel PIT, and this VM has none")
        }
        var pitState: kvm_pit_state2?
        if let bytes = state.pit {
            guard let value = kernelValue(kvm_pit_state2(), from: bytes) else {
                throw .stateMismatch("the PIT state has the wrong size")
            }
            pitState = value
        }
        var chips: [kvm_irqchip] = []
        for (bytes, id) in zip(state.irqchips, VMState.chipIDs) {
            guard let chip = kernelValue(kvm_irqchip(), from: bytes), chip.chip_id == id else {
                throw .stateMismatch("interrupt controller \(id)'s state is malformed")
            }
            chips.append(chip)
        }
        guard chips.count == state.irqchips.count, chips.isEmpty || chips.count == VMState.chipIDs.count else {
            throw .stateMismatch("the saved VM has \(state.irqchips.count) interrupt controllers, not 3")
        }
        if var pitState {
            try ioctlStruct(fd, CKVM_SET_PIT2, "KVM_SET_PIT2", &pitState)
        }
        var clock = kvm_clock_data()
        clock.clock = state.clock
        try ioctlStruct(fd, CKVM_SET_CLOCK, "KVM_SET_CLOCK", &clock)
        for var chip in chips {
            try ioctlStruct(fd, CKVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", &chip)
        }
    }
}
