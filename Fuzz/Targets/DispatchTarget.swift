// Random exits through the PC platform's devices on the buses, with the exit dispatcher.
import FuzzDeviceTargets
import TestSupport
import VisorCore
import VisorDevices
import VisorKVM

/// The first byte picks the unclaimed-access policy; then each exit is a kind byte and its
/// operands: a port access (port, width, element count 1...4,096, element values for an
/// OUT), an MMIO access (address, width, value), an MSR access, or one of the simple exits.
func fuzzDispatch(_ data: [UInt8]) {
    var input = ByteReader(data)
    let policy = UnclaimedAccessPolicy.allCases[Int(input.byte()) % UnclaimedAccessPolicy.allCases.count]
    let lines = LineRecorder()
    let platform: Platform
    var dispatcher = ExitDispatcher(unclaimedPorts: policy, unclaimedMMIO: policy)
    do {
        platform = try Platform(
            kind: .pc, memoryBelow4GiB: 1 << 30, consoleOutput: { _ in },
            irqLine: { irq, level in lines.set(irq, level) },
            cmos: CMOSDevice(clock: { 1_700_000_000 }))
        try platform.register(ports: &dispatcher.ports, mmio: &dispatcher.mmio)
    } catch {
        preconditionFailure("dispatch: the PC platform does not build: \(error)")
    }
    while !input.isAtEnd {
        let kind = input.byte()
        switch kind % 8 {
        case 0, 1, 2, 3:
            dispatchPort(&input, isWrite: kind & 1 != 0, dispatcher)
        case 4, 5:
            let access = MMIOAccess(
                isWrite: kind & 1 != 0, address: input.uint64(),
                width: [1, 2, 4, 8][Int(input.byte()) & 3], value: input.uint64())
            let vcpu = FakeDataChannel()
            let outcome = dispatcher.dispatch(.mmio(access), vcpu: vcpu)
            if access.isWrite {
                precondition(vcpu.mmioSets == 0, "dispatch: an MMIO write set read data")
            } else if outcome == .handled {
                precondition(vcpu.mmioSets == 1, "dispatch: an MMIO read set its data \(vcpu.mmioSets) times")
                if dispatcher.mmio.index(for: access.address) == nil {
                    precondition(
                        vcpu.mmioData == allOnes(width: access.width), "dispatch: an unclaimed MMIO read is not all ones")
                }
            }
        case 6:
            let index = input.uint32()
            let value: UInt64? = input.byte() & 1 == 0 ? nil : input.uint64()
            let vcpu = FakeDataChannel()
            let outcome = dispatcher.dispatch(.msr(index: index, value: value), vcpu: vcpu)
            precondition(
                outcome == .handled && vcpu.msrCompletion?.fault == true, "dispatch: an MSR without a policy did not fault")
        default:
            let exits: [VMExit] = [
                .halt(interruptsEnabled: true), .shutdown, .interrupted, .debug,
                .systemEvent(type: UInt32(input.byte())), .malformedIO(port: 0x3F8, width: 1, count: 0x10000),
                .exception(vector: 6, errorCode: 0), .other(reason: UInt32(input.byte()), hardwareReason: 0),
            ]
            _ = dispatcher.dispatch(exits[Int(input.byte()) % exits.count], vcpu: FakeDataChannel())
        }
    }
}

private func dispatchPort(_ input: inout ByteReader, isWrite: Bool, _ dispatcher: ExitDispatcher) {
    let port = input.uint16()
    let control = input.byte()
    let width: UInt8 = [1, 2, 4, 1][Int(control) & 3]
    // Mostly a single element; a string of up to 4,096 when bit 2 is set.
    let count = control & 4 == 0 ? 1 : 1 + Int(input.uint16() % 4096)
    var elements = [UInt32](repeating: 0x5A5A_5A5A, count: count)
    if isWrite {
        let pattern = input.uint32()
        for i in elements.indices { elements[i] = pattern &+ UInt32(truncatingIfNeeded: i) }
    }
    let vcpu = FakeDataChannel(elements)
    let access = PortAccess(isWrite: isWrite, port: port, width: width, count: UInt32(count))
    let outcome = dispatcher.dispatch(.io(access), vcpu: vcpu)
    if isWrite {
        precondition(vcpu.writes.isEmpty, "dispatch: an OUT wrote \(vcpu.writes.count) elements")
        precondition(vcpu.reads == Array(vcpu.reads.indices), "dispatch: an OUT read its elements out of order")
        return
    }
    precondition(vcpu.reads.isEmpty, "dispatch: an IN read its own elements")
    guard outcome == .handled else {
        precondition(vcpu.writes.isEmpty, "dispatch: a stopped IN wrote elements")
        return
    }
    precondition(vcpu.writes == Array(0..<count), "dispatch: an IN of \(count) wrote elements \(vcpu.writes.prefix(8))...")
    if dispatcher.ports.route(for: port)?.device == nil {
        let ones = UInt32(truncatingIfNeeded: allOnes(width: width))
        precondition(
            vcpu.elements.allSatisfy { $0 == ones }, "dispatch: an unclaimed IN at 0x\(String(port, radix: 16)) is not all ones")
    }
}
