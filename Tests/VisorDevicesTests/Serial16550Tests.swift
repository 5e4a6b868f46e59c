import Testing
import Synchronization
import VisorCore
import TestSupport
@testable import VisorDevices

/// Register offsets, spelled out so the tests read like a driver.
private enum Reg {
    static let rbrTHR: UInt8 = 0
    static let ier: UInt8 = 1
    static let iirFCR: UInt8 = 2
    static let lcr: UInt8 = 3
    static let mcr: UInt8 = 4
    static let lsr: UInt8 = 5
    static let msr: UInt8 = 6
    static let scr: UInt8 = 7
}

@Suite("Serial16550 register model")
struct Serial16550Tests {

    @Test("reset state: IER=0, IIR=0x01, LCR=0, MCR=0, LSR=0x60, MSR=0xB0, SCR=0, divisor 12, no IRQ")
    func resetValues() {
        var uart = Serial16550()
        #expect(uart.ier == 0)
        #expect(uart.lcr == 0)
        #expect(uart.mcr == 0)
        #expect(uart.lsr == 0x60)
        #expect(uart.msr == 0xB0)
        #expect(uart.scr == 0)
        #expect(uart.divisor == 12)
        #expect(uart.receivedCount == 0)
        #expect(!uart.interruptPending)
        #expect(!uart.pcInterruptLine)
        // The same values through guest reads.
        #expect(uart.read(offset: Reg.ier) == 0)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01)
        #expect(uart.read(offset: Reg.lcr) == 0)
        #expect(uart.read(offset: Reg.mcr) == 0)
        #expect(uart.read(offset: Reg.lsr) == 0x60)
        #expect(uart.read(offset: Reg.msr) == 0xB0)
        #expect(uart.read(offset: Reg.scr) == 0)
        #expect(uart.read(offset: Reg.rbrTHR) == 0, "empty RBR reads 0")
    }

    @Test("a THR write with DLAB=0 returns the byte to transmit; other registers return nil")
    func thrWriteReturnsByte() {
        var uart = Serial16550()
        #expect(uart.write(offset: Reg.rbrTHR, value: 0x41) == 0x41)
        #expect(uart.write(offset: Reg.rbrTHR, value: 0x00) == 0x00)
        #expect(uart.write(offset: Reg.rbrTHR, value: 0xFF) == 0xFF)
        for offset: UInt8 in 1...7 {
            #expect(uart.write(offset: offset, value: 0x41) == nil, "offset \(offset)")
        }
        // Transmitting does not touch the receive side, and the transmitter stays empty.
        var fresh = Serial16550()
        _ = fresh.write(offset: Reg.rbrTHR, value: 0x42)
        #expect(fresh.receivedCount == 0)
        #expect(fresh.lsr == 0x60)
    }

    @Test("DLAB=1 switches offsets 0/1 to the divisor latch; the divisor round-trips and IER/THR are untouched")
    func divisorLatch() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: 0x05)
        _ = uart.write(offset: Reg.lcr, value: 0x83)  // DLAB + 8N1
        #expect(uart.read(offset: Reg.rbrTHR) == 12, "DLL after reset")
        #expect(uart.read(offset: Reg.ier) == 0, "DLM after reset")
        #expect(uart.write(offset: Reg.rbrTHR, value: 0x34) == nil, "DLL write transmits nothing")
        #expect(uart.write(offset: Reg.ier, value: 0x12) == nil)
        #expect(uart.divisor == 0x1234)
        #expect(uart.read(offset: Reg.rbrTHR) == 0x34)
        #expect(uart.read(offset: Reg.ier) == 0x12)
        #expect(uart.ier == 0x05, "DLM write must not reach IER")

        // With DLAB=1 a received byte stays in the FIFO: offset 0 reads DLL, not RBR.
        let accepted = uart.receive(0x99)
        #expect(accepted)
        #expect(uart.read(offset: Reg.rbrTHR) == 0x34)
        #expect(uart.receivedCount == 1)

        _ = uart.write(offset: Reg.lcr, value: 0x03)  // DLAB off
        #expect(uart.lcr == 0x03)
        #expect(uart.read(offset: Reg.ier) == 0x05)
        #expect(uart.read(offset: Reg.rbrTHR) == 0x99)
        #expect(uart.divisor == 0x1234, "divisor survives DLAB off")
        #expect(uart.write(offset: Reg.rbrTHR, value: 0x55) == 0x55)
        #expect(uart.divisor == 0x1234, "THR write must not reach DLL")
    }

    @Test("IER keeps only its low 4 bits", arguments: [UInt8(0x00), 0x0F, 0xF0, 0xFF, 0xA5, 0x5A])
    func ierMasksToFourBits(value: UInt8) {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: value)
        #expect(uart.ier == value & 0x0F)
        #expect(uart.read(offset: Reg.ier) == value & 0x0F)
    }

    @Test("MCR keeps only its low 5 bits")
    func mcrMasksToFiveBits() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.mcr, value: 0xEF)
        #expect(uart.mcr == 0x0F)
        #expect(uart.read(offset: Reg.mcr) == 0x0F)
    }

    @Test("loopback sends THR bytes to RBR instead of the outside world")
    func loopbackRoutesTHRToRBR() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.mcr, value: 0x10)
        #expect(uart.loopback)
        #expect(uart.write(offset: Reg.rbrTHR, value: 0xA1) == nil)
        #expect(uart.write(offset: Reg.rbrTHR, value: 0xB2) == nil)
        #expect(uart.lsr & 0x01 == 0x01)
        #expect(uart.receivedCount == 2)
        #expect(uart.read(offset: Reg.rbrTHR) == 0xA1)
        #expect(uart.read(offset: Reg.rbrTHR) == 0xB2)
        #expect(uart.lsr & 0x01 == 0)

        _ = uart.write(offset: Reg.mcr, value: 0x00)
        #expect(uart.write(offset: Reg.rbrTHR, value: 0xC3) == 0xC3, "out of loopback the byte leaves again")
        #expect(uart.receivedCount == 0)
    }

    @Test("in loopback MSR bits 7:4 mirror MCR: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD")
    func loopbackMSRMirrorsMCR() {
        var uart = Serial16550()
        let cases: [(mcr: UInt8, msrHigh: UInt8)] = [
            (0x10, 0x00),
            (0x11, 0x20),  // DTR  -> DSR
            (0x12, 0x10),  // RTS  -> CTS
            (0x14, 0x40),  // OUT1 -> RI
            (0x18, 0x80),  // OUT2 -> DCD
            (0x1F, 0xF0),
            (0x13, 0x30),
            (0x1C, 0xC0),
        ]
        for (mcr, expected) in cases {
            _ = uart.write(offset: Reg.mcr, value: mcr)
            #expect(uart.read(offset: Reg.msr) & 0xF0 == expected, "MCR \(mcr)")
        }
        _ = uart.write(offset: Reg.mcr, value: 0x0F)  // out of loopback: connected line again
        #expect(uart.read(offset: Reg.msr) & 0xF0 == 0xB0)
    }

    @Test("MCR changes in loopback set MSR delta bits, which an MSR read clears and which drive the modem-status interrupt")
    func modemStatusDeltas() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.mcr, value: 0x10)  // connected (CTS|DSR|DCD) -> all low
        #expect(uart.msr == 0x0B, "DCTS, DDSR, DDCD; no TERI since RI was low")
        #expect(uart.read(offset: Reg.msr) == 0x0B)
        #expect(uart.msr == 0x00, "deltas cleared by the read")

        _ = uart.write(offset: Reg.mcr, value: 0x14)  // RI rises: no trailing edge
        #expect(uart.read(offset: Reg.msr) == 0x40)
        _ = uart.write(offset: Reg.mcr, value: 0x10)  // RI falls: trailing edge
        #expect(uart.read(offset: Reg.msr) == 0x04)

        _ = uart.write(offset: Reg.ier, value: 0x08)
        #expect(!uart.interruptPending, "no delta, no modem-status interrupt")
        _ = uart.write(offset: Reg.mcr, value: 0x12)  // RTS -> CTS changes
        #expect(uart.interruptPending)
        #expect(uart.read(offset: Reg.iirFCR) == 0x00, "modem-status IIR id is 0 with bit 0 clear")
        #expect(uart.interruptPending, "reading IIR does not clear a modem-status interrupt")
        #expect(uart.read(offset: Reg.msr) == 0x11)
        #expect(!uart.interruptPending)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01)
    }

    @Test("receive FIFO keeps order, caps at 64, rejects the 65th with OE, and an LSR read clears OE")
    func fifoOrderCapAndOverrun() {
        var uart = Serial16550()
        #expect(Serial16550.fifoCapacity == 64)
        for i in 0..<64 {
            let accepted = uart.receive(UInt8(i + 100))
            #expect(accepted, "byte \(i) accepted")
        }
        #expect(uart.receivedCount == 64)
        #expect(uart.lsr & 0x02 == 0, "no overrun yet")
        let acceptedExtra = uart.receive(0xEE)
        #expect(acceptedExtra == false, "65th byte rejected")
        #expect(uart.receivedCount == 64)
        #expect(uart.lsr & 0x02 == 0x02, "OE set")

        let lsr = uart.read(offset: Reg.lsr)
        #expect(lsr == 0x63, "DR | OE | THRE | TEMT")
        #expect(uart.read(offset: Reg.lsr) == 0x61, "OE cleared by the previous LSR read")

        for i in 0..<64 {
            #expect(uart.read(offset: Reg.rbrTHR) == UInt8(i + 100), "FIFO order at \(i)")
        }
        #expect(uart.receivedCount == 0)
        #expect(uart.read(offset: Reg.rbrTHR) == 0, "the dropped 0xEE never appears")

        // The ring buffer wraps correctly after partial drains.
        var acceptedAll = true
        for i in 0..<40 { acceptedAll = uart.receive(UInt8(i)) && acceptedAll }
        for i in 0..<30 { #expect(uart.read(offset: Reg.rbrTHR) == UInt8(i)) }
        for i in 40..<94 { acceptedAll = uart.receive(UInt8(i)) && acceptedAll }
        #expect(acceptedAll, "64 bytes fit across the wrap")
        #expect(uart.receivedCount == 64)
        let acceptedWrapped = uart.receive(0xFF)
        #expect(!acceptedWrapped)
        for i in 30..<94 { #expect(uart.read(offset: Reg.rbrTHR) == UInt8(i)) }
    }

    @Test("loopback THR writes into a full FIFO flag overrun too")
    func loopbackOverrun() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.mcr, value: 0x10)
        for i in 0..<64 { _ = uart.write(offset: Reg.rbrTHR, value: UInt8(i)) }
        #expect(uart.lsr & 0x02 == 0)
        _ = uart.write(offset: Reg.rbrTHR, value: 0xAA)
        #expect(uart.receivedCount == 64)
        #expect(uart.lsr & 0x02 == 0x02)
    }

    @Test("LSR DR (bit 0) tracks whether the receive FIFO holds data")
    func dataReadyTracksFIFO() {
        var uart = Serial16550()
        #expect(uart.read(offset: Reg.lsr) & 0x01 == 0)
        uart.receive(1)
        uart.receive(2)
        #expect(uart.read(offset: Reg.lsr) & 0x01 == 1)
        _ = uart.read(offset: Reg.rbrTHR)
        #expect(uart.read(offset: Reg.lsr) & 0x01 == 1, "one byte left")
        _ = uart.read(offset: Reg.rbrTHR)
        #expect(uart.read(offset: Reg.lsr) & 0x01 == 0)
        #expect(uart.read(offset: Reg.lsr) & 0x60 == 0x60, "THRE and TEMT always set")
    }

    @Test("FCR: bit 0 shows in IIR bits 7:6, bit 1 empties the receive FIFO, bit 2 is harmless")
    func fcrControlsFIFO() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.iirFCR, value: 0x01)
        #expect(uart.fifosEnabled)
        #expect(uart.read(offset: Reg.iirFCR) == 0xC1)
        for b: UInt8 in 1...10 { uart.receive(b) }
        _ = uart.write(offset: Reg.iirFCR, value: 0x05)  // clear TX only
        #expect(uart.receivedCount == 10)
        _ = uart.write(offset: Reg.iirFCR, value: 0x03)  // clear RX
        #expect(uart.receivedCount == 0)
        #expect(uart.lsr & 0x01 == 0)
        #expect(uart.read(offset: Reg.rbrTHR) == 0)
        #expect(uart.fcr & 0x06 == 0, "clear bits are self-clearing")
        #expect(uart.read(offset: Reg.iirFCR) == 0xC1, "FIFOs stay enabled")

        // Toggling the enable bit also empties the FIFO.
        for b: UInt8 in 1...3 { uart.receive(b) }
        _ = uart.write(offset: Reg.iirFCR, value: 0x00)
        #expect(uart.receivedCount == 0)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01)

        // The FIFO still works after clearing.
        uart.receive(0x77)
        #expect(uart.read(offset: Reg.rbrTHR) == 0x77)
    }

    @Test("IIR priority: line status > received data > THR empty > modem status")
    func iirPriorities() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: 0x0F)  // everything; enabling THRE raises it
        _ = uart.write(offset: Reg.mcr, value: 0x12)  // loopback + RTS: MSR deltas
        #expect(uart.iir == 0x02, "THRE outranks modem status")
        uart.receive(0x31)
        #expect(uart.read(offset: Reg.iirFCR) == 0x04, "RX data outranks THRE")
        // Fill to overrun.
        for _ in 0..<64 { uart.receive(0x32) }
        #expect(uart.read(offset: Reg.iirFCR) == 0x06, "line status outranks RX data")
        _ = uart.read(offset: Reg.lsr)  // clears OE
        #expect(uart.read(offset: Reg.iirFCR) == 0x04)
        _ = uart.write(offset: Reg.iirFCR, value: 0x02)  // drop the data
        #expect(uart.read(offset: Reg.iirFCR) == 0x02, "THRE was not consumed while RX data was reported")
        #expect(uart.read(offset: Reg.iirFCR) == 0x00, "reading IIR consumed THRE; modem status remains")
        _ = uart.read(offset: Reg.msr)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01)
    }

    @Test("a masked source is not reported even when its condition holds")
    func iirRespectsMask() {
        var uart = Serial16550()
        uart.receive(1)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01, "RX data with IER=0")
        _ = uart.write(offset: Reg.ier, value: 0x02)
        #expect(uart.read(offset: Reg.iirFCR) == 0x02, "THRE is reported past un-enabled RX data")
        for _ in 0..<64 { uart.receive(2) }
        _ = uart.write(offset: Reg.ier, value: 0x01)
        #expect(uart.read(offset: Reg.iirFCR) == 0x04, "overrun without IER bit 2 is not a line-status interrupt")
    }

    @Test("THRE interrupt: raised by enabling it, cleared by reading IIR, raised again by a THR write")
    func threInterruptLifecycle() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: 0x02)
        #expect(uart.interruptPending)
        #expect(uart.read(offset: Reg.iirFCR) == 0x02)
        #expect(!uart.interruptPending, "reading IIR cleared THRE")
        #expect(uart.read(offset: Reg.iirFCR) == 0x01)

        _ = uart.write(offset: Reg.rbrTHR, value: 0x61)
        #expect(uart.interruptPending, "transmitting empties THR again")
        #expect(uart.read(offset: Reg.iirFCR) == 0x02)
        #expect(!uart.interruptPending)

        // Rewriting IER with the bit already set does not re-raise it; re-enabling does.
        _ = uart.write(offset: Reg.ier, value: 0x02)
        #expect(!uart.interruptPending)
        _ = uart.write(offset: Reg.ier, value: 0x00)
        _ = uart.write(offset: Reg.ier, value: 0x02)
        #expect(uart.interruptPending)

        // Disabling THRE drops the latched condition.
        _ = uart.write(offset: Reg.ier, value: 0x00)
        _ = uart.write(offset: Reg.rbrTHR, value: 0x62)
        #expect(!uart.interruptPending)
    }

    @Test("a THR write clears a pending THRE before raising it again, so it never accumulates")
    func thrWriteClearsTHRE() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: 0x02)
        for b: UInt8 in 0..<5 { _ = uart.write(offset: Reg.rbrTHR, value: b) }
        #expect(uart.read(offset: Reg.iirFCR) == 0x02)
        #expect(uart.read(offset: Reg.iirFCR) == 0x01, "one IIR read suffices after many writes")
    }

    @Test("interruptPending follows IER for received data")
    func interruptPendingFollowsIER() {
        var uart = Serial16550()
        uart.receive(0x10)
        #expect(!uart.interruptPending, "IER=0 masks everything")
        _ = uart.write(offset: Reg.ier, value: 0x01)
        #expect(uart.interruptPending)
        #expect(!uart.pcInterruptLine, "OUT2 low gates the PC IRQ line")
        _ = uart.write(offset: Reg.mcr, value: 0x08)
        #expect(uart.pcInterruptLine)
        _ = uart.write(offset: Reg.ier, value: 0x00)
        #expect(!uart.interruptPending)
        #expect(!uart.pcInterruptLine)
        _ = uart.write(offset: Reg.ier, value: 0x01)
        #expect(uart.interruptPending)
        _ = uart.read(offset: Reg.rbrTHR)
        #expect(!uart.interruptPending, "draining the FIFO clears the RX interrupt")
    }

    @Test("SCR round-trips every value")
    func scratchRoundTrips() {
        var uart = Serial16550()
        for v in UInt8.min...UInt8.max {
            #expect(uart.write(offset: Reg.scr, value: v) == nil)
            #expect(uart.read(offset: Reg.scr) == v)
            #expect(uart.scr == v)
        }
    }

    @Test("LCR round-trips every value and LSR/MSR ignore writes")
    func lcrRoundTripsAndStatusIsReadOnly() {
        var uart = Serial16550()
        for v in UInt8.min...UInt8.max {
            _ = uart.write(offset: Reg.lcr, value: v)
            #expect(uart.read(offset: Reg.lcr) == v)
        }
        _ = uart.write(offset: Reg.lcr, value: 0)
        _ = uart.write(offset: Reg.lsr, value: 0x00)
        _ = uart.write(offset: Reg.msr, value: 0x0F)
        #expect(uart.lsr == 0x60)
        #expect(uart.msr == 0xB0)
    }

    @Test("offsets 8...255 read 0xFF, ignore writes, and leave state alone")
    func outOfRangeOffsets() {
        var uart = Serial16550()
        uart.receive(0x42)
        _ = uart.write(offset: Reg.scr, value: 0x5A)
        for offset in UInt8(8)...UInt8.max {
            #expect(uart.read(offset: offset) == 0xFF, "read \(offset)")
            #expect(uart.write(offset: offset, value: 0xFF) == nil, "write \(offset)")
        }
        #expect(uart.ier == 0)
        #expect(uart.lcr == 0)
        #expect(uart.mcr == 0)
        #expect(uart.scr == 0x5A)
        #expect(uart.divisor == 12)
        #expect(uart.receivedCount == 1)
        #expect(uart.read(offset: Reg.rbrTHR) == 0x42)
    }

    @Test("register views have no side effects")
    func viewsArePure() {
        var uart = Serial16550()
        _ = uart.write(offset: Reg.ier, value: 0x02)
        for _ in 0..<65 { uart.receive(1) }
        _ = uart.write(offset: Reg.mcr, value: 0x10)
        for _ in 0..<3 {
            #expect(uart.lsr == 0x63)
            #expect(uart.msr == 0x0B)
            #expect(uart.iir == 0x02)
        }
        #expect(uart.receivedCount == 64)
    }

    @Test("5000 seeded random register operations keep every invariant and match a reference FIFO")
    func randomOperationsKeepInvariants() {
        var rng = LCG(state: 0x5EED_1655_0A00_0001)
        var uart = Serial16550()
        var expectedFIFO: [UInt8] = []  // reference model of the receive FIFO
        var dataCompared = 0

        for step in 0..<5000 {
            let dlab = uart.lcr & 0x80 != 0
            let loop = uart.mcr & 0x10 != 0
            let fifoWasEnabled = uart.fifosEnabled
            let choice = rng.below(10)
            if choice < 2 {
                let byte = rng.byte()
                let accepted = uart.receive(byte)
                #expect(accepted == (expectedFIFO.count < 64), "step \(step)")
                if accepted { expectedFIFO.append(byte) }
            } else {
                // Mostly real registers, sometimes anything up to 255.
                let offset = rng.below(8) == 0 ? rng.byte() : UInt8(rng.below(8))
                var value = rng.byte()
                // Keep DLAB set only rarely, so THR/RBR traffic dominates.
                if offset == 3 && rng.below(4) != 0 { value &= 0x7F }
                if choice < 6 {
                    let out = uart.write(offset: offset, value: value)
                    switch offset {
                    case 0 where !dlab:
                        if loop {
                            #expect(out == nil, "step \(step)")
                            if expectedFIFO.count < 64 { expectedFIFO.append(value) }
                        } else {
                            #expect(out == value, "step \(step)")
                        }
                    case 2:
                        #expect(out == nil)
                        if value & 0x02 != 0 || (value & 0x01 != 0) != fifoWasEnabled {
                            expectedFIFO.removeAll()
                        }
                    default:
                        #expect(out == nil, "step \(step): only THR transmits")
                    }
                } else {
                    let pendingBefore = uart.interruptPending
                    let iirBefore = uart.iir
                    let got = uart.read(offset: offset)
                    switch offset {
                    case 0 where !dlab:
                        let want = expectedFIFO.isEmpty ? 0 : expectedFIFO.removeFirst()
                        #expect(got == want, "step \(step): RBR")
                        dataCompared += 1
                    case 2:
                        #expect(got == iirBefore)
                        #expect((got & 0x01 == 0) == pendingBefore, "step \(step): IIR bit 0 vs interruptPending")
                        #expect(got & 0x30 == 0)
                    case 5:
                        #expect(got & 0x60 == 0x60)
                        #expect(got & 0x9C == 0, "no parity/framing/break errors are modelled")
                    case 8...:
                        #expect(got == 0xFF)
                    default:
                        break
                    }
                }
            }

            // Invariants after every operation.
            #expect(uart.receivedCount <= Serial16550.fifoCapacity, "step \(step)")
            #expect(uart.receivedCount == expectedFIFO.count, "step \(step)")
            #expect((uart.lsr & 0x01 == 1) == !expectedFIFO.isEmpty, "step \(step): DR")
            #expect(uart.lsr & 0x60 == 0x60)
            #expect(uart.ier & 0xF0 == 0)
            #expect(uart.mcr & 0xE0 == 0)
            #expect((uart.iir & 0x01 == 0) == uart.interruptPending)
            #expect(uart.iir & 0xC0 == (uart.fifosEnabled ? 0xC0 : 0))
            let source = uart.iir & 0x0F
            #expect([0x01, 0x06, 0x04, 0x02, 0x00].contains(source), "step \(step): IIR id \(source)")
            if uart.mcr & 0x10 == 0 {
                #expect(uart.msr & 0xF0 == 0xB0)
            }
        }
        #expect(dataCompared > 100, "the run exercised RBR reads")
    }
}

/// The port adapter's console output: one call per guest access.
@Suite("16550 console output")
struct Serial16550OutputTests {
    final class Batches: Sendable {
        let all = Mutex<[[UInt8]]>([])
        var sink: ConsoleOutput {
            { [self] bytes in
                var copy: [UInt8] = []
                for i in bytes.indices { copy.append(bytes[i]) }
                all.withLock { $0.append(copy) }
            }
        }
    }

    @Test("a string OUT of 4,096 bytes to THR reaches the console as one batch, in order")
    func stringOutIsOneBatch() {
        let batches = Batches()
        let uart = Serial16550Device(output: batches.sink)
        let bytes = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let action = uart.portWrite(port: 0x3F8, offset: 0, width: 1, count: bytes.count) { UInt32(bytes[$0]) }
        #expect(action == .continue)
        #expect(batches.all.withLock { $0 } == [bytes])
        _ = uart.portWrite(port: 0x3F8, offset: 0, width: 1, value: 0x41)
        #expect(batches.all.withLock { $0 } == [bytes, [0x41]])
    }

    @Test("a string OUT with DLAB set writes the divisor latch and sends nothing")
    func stringOutWithDLAB() {
        let batches = Batches()
        let uart = Serial16550Device(output: batches.sink)
        _ = uart.portWrite(port: 0x3FB, offset: 3, width: 1, value: 0x80)
        _ = uart.portWrite(port: 0x3F8, offset: 0, width: 1, count: 16) { UInt32($0) }
        #expect(batches.all.withLock { $0 }.isEmpty)
        _ = uart.portWrite(port: 0x3FB, offset: 3, width: 1, value: 0x03)
        #expect(uart.portRead(port: 0x3F8, offset: 0, width: 1) == 0)
    }
}
