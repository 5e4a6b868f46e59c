public import VisorCore
public import VisorSnapshot
import Synchronization

// A register-level model of a 16550A UART.
//
// The model is pure state: it knows the eight register offsets of the chip and
// nothing about I/O ports, buses, threads or host file descriptors. A caller maps a
// port range onto `read(offset:)` / `write(offset:value:)`, forwards the byte that
// `write` returns to the outside world, feeds host input through `receive(_:)`, and
// drives the guest's interrupt line from `interruptPending`.
//
// Deliberate simplifications, all invisible to a well-behaved driver:
// - Transmission is instantaneous: LSR.THRE and LSR.TEMT are always set, and there is
//   no transmit FIFO to hold bytes (FCR bit 2 is accepted and has nothing to clear).
// - The receive FIFO holds `fifoCapacity` (64) bytes whether or not FCR enables the
//   FIFOs; FCR bit 0 only changes IIR bits 7:6 (and, as on the chip, toggling it
//   empties the receive FIFO). The receiver trigger level (FCR bits 7:6) is recorded
//   but the data-available interrupt fires as soon as one byte is queued, so the
//   character-timeout interrupt (IIR 0x0C) is never reported.
// - Parity, framing and break errors never happen; overrun is the only line-status
//   error, and LSR bit 7 (error in RX FIFO) is always clear.
// - The baud-rate divisor is stored and reported, never used for timing.

/// A 16550A UART modelled register by register. It knows register offsets (0...7), not ports or buses.
///
/// Register map (DLAB is LCR bit 7):
///
/// | offset | read                      | write                     |
/// |--------|---------------------------|---------------------------|
/// | 0      | RBR (DLAB=0) / DLL (DLAB=1) | THR (DLAB=0) / DLL (DLAB=1) |
/// | 1      | IER (DLAB=0) / DLM (DLAB=1) | IER (DLAB=0) / DLM (DLAB=1) |
/// | 2      | IIR                       | FCR                       |
/// | 3      | LCR                       | LCR                       |
/// | 4      | MCR                       | MCR                       |
/// | 5      | LSR                       | ignored (factory test)    |
/// | 6      | MSR                       | ignored                   |
/// | 7      | SCR                       | SCR                       |
///
/// Offsets 8...255 read 0xFF and ignore writes. No input traps.
///
/// Interrupts: `interruptPending` is *not* gated by MCR.OUT2. On a PC the OUT2 pin
/// enables the UART's IRQ driver, so a PC-style caller should use `pcInterruptLine`
/// (or AND `interruptPending` with `mcr & 0x08` itself); a caller that wires the
/// UART straight to an interrupt controller can use `interruptPending` directly.
package struct Serial16550: Sendable {
    /// Receive FIFO capacity in bytes; a byte arriving when the FIFO is full is dropped and flags overrun.
    /// (An unbounded receive queue was CVE-2020-27173 in another VMM.)
    package static let fifoCapacity = 64

    /// Divisor latch value after reset: 115200 / 12 = 9600 baud. (The real chip leaves it undefined.)
    package static let resetDivisor: UInt16 = 12

    // MARK: Register offsets

    /// Register offsets, for callers and tests that prefer names to numbers.
    package enum Offset {
        /// RBR (read) / THR (write) with DLAB=0; DLL with DLAB=1.
        package static let data: UInt8 = 0
        /// IER with DLAB=0; DLM with DLAB=1.
        package static let interruptEnable: UInt8 = 1
        /// IIR (read) / FCR (write).
        package static let interruptIdentFifoControl: UInt8 = 2
        /// LCR.
        package static let lineControl: UInt8 = 3
        /// MCR.
        package static let modemControl: UInt8 = 4
        /// LSR.
        package static let lineStatus: UInt8 = 5
        /// MSR.
        package static let modemStatus: UInt8 = 6
        /// SCR.
        package static let scratch: UInt8 = 7
    }

    // MARK: Bit definitions

    /// IER bit 0: interrupt when received data is available.
    package static let ierReceivedData: UInt8 = 0x01
    /// IER bit 1: interrupt when the transmit holding register is empty.
    package static let ierTHREmpty: UInt8 = 0x02
    /// IER bit 2: interrupt on a receiver line-status error (here: overrun).
    package static let ierLineStatus: UInt8 = 0x04
    /// IER bit 3: interrupt on a modem-status change (an MSR delta bit set).
    package static let ierModemStatus: UInt8 = 0x08

    /// IIR value when no interrupt is pending (bit 0 set means "none").
    package static let iirNone: UInt8 = 0x01
    /// IIR identification for a receiver line-status interrupt (highest priority).
    package static let iirLineStatus: UInt8 = 0x06
    /// IIR identification for a received-data-available interrupt.
    package static let iirReceivedData: UInt8 = 0x04
    /// IIR identification for a transmit-holding-register-empty interrupt.
    package static let iirTHREmpty: UInt8 = 0x02
    /// IIR identification for a modem-status interrupt (lowest priority).
    package static let iirModemStatus: UInt8 = 0x00
    /// IIR bits 7:6, set while the FIFOs are enabled by FCR bit 0.
    package static let iirFifosEnabled: UInt8 = 0xC0

    /// FCR bit 0: enable the FIFOs.
    package static let fcrEnable: UInt8 = 0x01
    /// FCR bit 1: empty the receive FIFO (self-clearing).
    package static let fcrClearReceive: UInt8 = 0x02
    /// FCR bit 2: empty the transmit FIFO (self-clearing; nothing to do here).
    package static let fcrClearTransmit: UInt8 = 0x04

    /// LCR bit 7: divisor latch access bit.
    package static let lcrDLAB: UInt8 = 0x80

    /// MCR bit 0: data terminal ready.
    package static let mcrDTR: UInt8 = 0x01
    /// MCR bit 1: request to send.
    package static let mcrRTS: UInt8 = 0x02
    /// MCR bit 2: user output 1.
    package static let mcrOUT1: UInt8 = 0x04
    /// MCR bit 3: user output 2 (gates the IRQ on PCs).
    package static let mcrOUT2: UInt8 = 0x08
    /// MCR bit 4: local loopback.
    package static let mcrLoopback: UInt8 = 0x10

    /// LSR bit 0: data ready (receive FIFO non-empty).
    package static let lsrDataReady: UInt8 = 0x01
    /// LSR bit 1: overrun error (a received byte was dropped); cleared by reading LSR.
    package static let lsrOverrun: UInt8 = 0x02
    /// LSR bit 5: transmit holding register empty.
    package static let lsrTHREmpty: UInt8 = 0x20
    /// LSR bit 6: transmitter empty.
    package static let lsrTransmitterEmpty: UInt8 = 0x40

    /// MSR bit 0: CTS changed since MSR was last read.
    package static let msrDeltaCTS: UInt8 = 0x01
    /// MSR bit 1: DSR changed since MSR was last read.
    package static let msrDeltaDSR: UInt8 = 0x02
    /// MSR bit 2: RI went from asserted to deasserted since MSR was last read.
    package static let msrTrailingEdgeRI: UInt8 = 0x04
    /// MSR bit 3: DCD changed since MSR was last read.
    package static let msrDeltaDCD: UInt8 = 0x08
    /// MSR bit 4: clear to send.
    package static let msrCTS: UInt8 = 0x10
    /// MSR bit 5: data set ready.
    package static let msrDSR: UInt8 = 0x20
    /// MSR bit 6: ring indicator.
    package static let msrRI: UInt8 = 0x40
    /// MSR bit 7: data carrier detect.
    package static let msrDCD: UInt8 = 0x80

    /// MSR upper nibble outside loopback: the modelled line is always connected (CTS, DSR, DCD; no ring).
    package static let connectedLineInputs: UInt8 = msrCTS | msrDSR | msrDCD

    // MARK: State

    /// Receive FIFO storage, used as a ring buffer of `fifoCapacity` bytes.
    private var fifo: [UInt8]
    /// Index in `fifo` of the oldest queued byte.
    private var fifoHead: Int = 0
    /// Number of queued bytes, 0...fifoCapacity.
    private var fifoCount: Int = 0

    /// IER: which interrupt sources are enabled (low 4 bits only).
    package private(set) var ier: UInt8 = 0
    /// LCR: word length, stop bits, parity, break and DLAB; stored verbatim.
    package private(set) var lcr: UInt8 = 0
    /// MCR: DTR, RTS, OUT1, OUT2 and loopback (low 5 bits only).
    package private(set) var mcr: UInt8 = 0
    /// SCR: a scratch byte with no effect on the UART.
    package private(set) var scr: UInt8 = 0
    /// The last value written to FCR, minus the self-clearing bits 1 and 2.
    package private(set) var fcr: UInt8 = 0
    /// Divisor latch low byte (DLL).
    private var dll: UInt8 = UInt8(truncatingIfNeeded: Serial16550.resetDivisor)
    /// Divisor latch high byte (DLM).
    private var dlm: UInt8 = UInt8(truncatingIfNeeded: Serial16550.resetDivisor >> 8)
    /// Sticky LSR overrun bit.
    private var overrun = false
    /// MSR delta bits (low nibble), cleared by reading MSR.
    private var msrDeltas: UInt8 = 0
    /// The THR-empty interrupt condition; reported only while IER bit 1 is set.
    private var thrEmptyLatched = false

    /// A UART in its reset state: IER=0, IIR=0x01, LCR=0, MCR=0, LSR=0x60, MSR=0xB0, SCR=0, divisor 12, FIFOs disabled and empty.
    package init() {
        fifo = [UInt8](repeating: 0, count: Self.fifoCapacity)
    }

    // MARK: Read-only views (no side effects)

    /// The 16-bit baud-rate divisor, DLM:DLL.
    package var divisor: UInt16 { UInt16(dlm) << 8 | UInt16(dll) }

    /// Number of bytes waiting in the receive FIFO.
    package var receivedCount: Int { fifoCount }

    /// True while LCR bit 7 (DLAB) redirects offsets 0 and 1 to the divisor latch.
    package var divisorLatchAccess: Bool { lcr & Self.lcrDLAB != 0 }

    /// True while MCR bit 4 (local loopback) is set.
    package var loopback: Bool { mcr & Self.mcrLoopback != 0 }

    /// True while FCR bit 0 has enabled the FIFOs (reported in IIR bits 7:6).
    package var fifosEnabled: Bool { fcr & Self.fcrEnable != 0 }

    /// LSR as a guest read would return it, without clearing the overrun bit.
    package var lsr: UInt8 {
        var value = Self.lsrTHREmpty | Self.lsrTransmitterEmpty
        if fifoCount > 0 { value |= Self.lsrDataReady }
        if overrun { value |= Self.lsrOverrun }
        return value
    }

    /// MSR as a guest read would return it, without clearing the delta bits.
    package var msr: UInt8 { modemInputs | msrDeltas }

    /// IIR as a guest read would return it, without clearing a THR-empty interrupt.
    package var iir: UInt8 {
        (fifosEnabled ? Self.iirFifosEnabled : 0) | pendingSource
    }

    /// True while an enabled interrupt condition is pending, i.e. IIR bit 0 is clear.
    /// Not gated by MCR.OUT2; see `pcInterruptLine` for the PC wiring.
    package var interruptPending: Bool { pendingSource != Self.iirNone }

    /// The IRQ line as a PC wires it: `interruptPending` gated by MCR bit 3 (OUT2).
    package var pcInterruptLine: Bool { interruptPending && mcr & Self.mcrOUT2 != 0 }

    // MARK: Guest access

    /// Guest read of the register at `offset` (0...7; other offsets read 0xFF).
    ///
    /// Side effects: RBR pops the receive FIFO; IIR clears a THR-empty interrupt when
    /// that is the source it reports; LSR clears the overrun bit; MSR clears the delta bits.
    package mutating func read(offset: UInt8) -> UInt8 {
        switch offset {
        case 0:
            if divisorLatchAccess { return dll }
            return popReceived()
        case 1:
            return divisorLatchAccess ? dlm : ier
        case 2:
            let value = iir
            if value & 0x0F == Self.iirTHREmpty { thrEmptyLatched = false }
            return value
        case 3:
            return lcr
        case 4:
            return mcr
        case 5:
            let value = lsr
            overrun = false
            return value
        case 6:
            let value = msr
            msrDeltas = 0
            return value
        case 7:
            return scr
        default:
            return 0xFF
        }
    }

    /// Guest write of `value` to the register at `offset`.
    ///
    /// Returns the byte to transmit to the outside world when the guest writes THR with
    /// DLAB=0 and loopback is off; nil otherwise. In loopback (MCR bit 4) a THR write
    /// goes into the receive FIFO instead (flagging overrun if it is full). Writes to
    /// LSR, MSR and offsets above 7 are ignored.
    package mutating func write(offset: UInt8, value: UInt8) -> UInt8? {
        switch offset {
        case 0:
            if divisorLatchAccess {
                dll = value
                return nil
            }
            return transmit(value)
        case 1:
            if divisorLatchAccess {
                dlm = value
            } else {
                writeIER(value)
            }
            return nil
        case 2:
            writeFCR(value)
            return nil
        case 3:
            lcr = value
            return nil
        case 4:
            writeMCR(value)
            return nil
        case 7:
            scr = value
            return nil
        default:
            // 5 (LSR) and 6 (MSR) are read-only here; 8...255 do not exist.
            return nil
        }
    }

    // MARK: Host access

    /// Host side: queue a received byte.
    ///
    /// Returns false (byte dropped, overrun flagged in LSR) when the FIFO already holds
    /// `fifoCapacity` bytes. Works in loopback too, as if the byte arrived on the wire.
    @discardableResult
    package mutating func receive(_ byte: UInt8) -> Bool {
        guard fifoCount < Self.fifoCapacity else {
            overrun = true
            return false
        }
        var tail = fifoHead + fifoCount
        if tail >= Self.fifoCapacity { tail -= Self.fifoCapacity }
        fifo[tail] = byte
        fifoCount += 1
        return true
    }

    /// Free space in the receive FIFO, for a host side that wants to stop reading its input when the guest falls behind.
    package var receiveSpace: Int { Self.fifoCapacity - fifoCount }

    // MARK: Internals

    /// The IIR identification (bits 3:0) of the highest-priority pending, enabled source, or `iirNone`.
    private var pendingSource: UInt8 {
        if ier & Self.ierLineStatus != 0 && overrun { return Self.iirLineStatus }
        if ier & Self.ierReceivedData != 0 && fifoCount > 0 { return Self.iirReceivedData }
        if ier & Self.ierTHREmpty != 0 && thrEmptyLatched { return Self.iirTHREmpty }
        if ier & Self.ierModemStatus != 0 && msrDeltas != 0 { return Self.iirModemStatus }
        return Self.iirNone
    }

    /// MSR upper nibble: the connected line, or in loopback MCR's outputs (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD).
    private var modemInputs: UInt8 { Self.modemInputs(forMCR: mcr) }

    private static func modemInputs(forMCR mcr: UInt8) -> UInt8 {
        guard mcr & mcrLoopback != 0 else { return connectedLineInputs }
        var value: UInt8 = 0
        if mcr & mcrRTS != 0 { value |= msrCTS }
        if mcr & mcrDTR != 0 { value |= msrDSR }
        if mcr & mcrOUT1 != 0 { value |= msrRI }
        if mcr & mcrOUT2 != 0 { value |= msrDCD }
        return value
    }

    private mutating func popReceived() -> UInt8 {
        // An empty FIFO reads 0 (the chip would return stale data).
        guard fifoCount > 0 else { return 0 }
        let byte = fifo[fifoHead]
        fifoHead += 1
        if fifoHead == Self.fifoCapacity { fifoHead = 0 }
        fifoCount -= 1
        return byte
    }

    private mutating func clearReceiveFIFO() {
        fifoHead = 0
        fifoCount = 0
    }

    /// THR write: writing THR clears a THR-empty interrupt, and since the byte leaves
    /// at once the holding register is empty again, which raises a fresh one.
    private mutating func transmit(_ byte: UInt8) -> UInt8? {
        thrEmptyLatched = false
        let outgoing: UInt8?
        if loopback {
            receive(byte)
            outgoing = nil
        } else {
            outgoing = byte
        }
        thrEmptyLatched = true
        return outgoing
    }

    /// IER write: only bits 3:0 exist. Enabling the THR-empty interrupt while THR is
    /// empty (always, here) raises it at once; disabling it drops the latched condition.
    private mutating func writeIER(_ value: UInt8) {
        let new = value & 0x0F
        let enabledNow = new & ~ier
        if enabledNow & Self.ierTHREmpty != 0 { thrEmptyLatched = true }
        if new & Self.ierTHREmpty == 0 { thrEmptyLatched = false }
        ier = new
    }

    /// FCR write: bit 0 enables the FIFOs (changing it empties them), bit 1 empties the
    /// receive FIFO, bit 2 the (absent) transmit FIFO; bits 7:6 (trigger level) are kept.
    private mutating func writeFCR(_ value: UInt8) {
        let enableChanged = (value ^ fcr) & Self.fcrEnable != 0
        if enableChanged || value & Self.fcrClearReceive != 0 {
            clearReceiveFIFO()
        }
        fcr = value & ~(Self.fcrClearReceive | Self.fcrClearTransmit)
    }

    /// MCR write: only bits 4:0 exist. Any change in the modem inputs this causes (in or
    /// out of loopback) sets the matching MSR delta bits, as on the chip.
    private mutating func writeMCR(_ value: UInt8) {
        let before = modemInputs
        mcr = value & 0x1F
        let after = modemInputs
        let changed = before ^ after
        if changed & Self.msrCTS != 0 { msrDeltas |= Self.msrDeltaCTS }
        if changed & Self.msrDSR != 0 { msrDeltas |= Self.msrDeltaDSR }
        if before & Self.msrRI != 0 && after & Self.msrRI == 0 { msrDeltas |= Self.msrTrailingEdgeRI }
        if changed & Self.msrDCD != 0 { msrDeltas |= Self.msrDeltaDCD }
    }
}

// MARK: Snapshot

extension Serial16550 {
    /// Appends the UART's registers and its receive FIFO (oldest byte first).
    package func saveState(to writer: inout SnapshotWriter) {
        writer.write(bytes: (0..<fifoCount).map { fifo[(fifoHead + $0) % Self.fifoCapacity] })
        for register in [ier, lcr, mcr, scr, fcr, dll, dlm, msrDeltas] { writer.write(register) }
        writer.write(overrun)
        writer.write(thrEmptyLatched)
    }

    /// The UART that `saveState` saved. Reserved register bits must be clear, as the model
    /// never sets them.
    package init(restoring reader: inout SnapshotReader) throws(SnapshotError) {
        self.init()
        let queued = try reader.readBytes("the 16550 receive FIFO", maxCount: Self.fifoCapacity)
        for (index, byte) in queued.enumerated() { fifo[index] = byte }
        fifoCount = queued.count
        ier = try reader.readUInt8("the 16550 IER", allowedBits: 0x0F)
        lcr = try reader.readUInt8("the 16550 LCR")
        mcr = try reader.readUInt8("the 16550 MCR", allowedBits: 0x1F)
        scr = try reader.readUInt8("the 16550 SCR")
        fcr = try reader.readUInt8("the 16550 FCR", allowedBits: ~(Self.fcrClearReceive | Self.fcrClearTransmit))
        dll = try reader.readUInt8("the 16550 DLL")
        dlm = try reader.readUInt8("the 16550 DLM")
        msrDeltas = try reader.readUInt8("the 16550 MSR deltas", allowedBits: 0x0F)
        overrun = try reader.readBool("the 16550 overrun flag")
        thrEmptyLatched = try reader.readBool("the 16550 THR-empty latch")
    }
}

/// The 16550 model on the port bus: a thin adapter that turns port accesses into register
/// accesses by offset and sends transmitted bytes to `output`.
///
/// Accesses wider than a byte are treated as byte accesses of their low byte; an IN wider
/// than a byte returns the register in the low byte and ones above it.
public final class Serial16550Device: PortDevice {
    /// Standard COM1 ports.
    public static let com1Base: UInt16 = 0x3F8
    public static let portCount = 8
    /// COM1's ISA interrupt line.
    public static let com1IRQ: UInt32 = 4

    /// The UART and the level last driven on the interrupt line.
    private let state = Mutex<(uart: Serial16550, line: Bool)>((Serial16550(), false))
    /// The bytes one string OUT transmits, handed to `output` as one batch. Its own lock, held
    /// while `output` runs, keeps batches whole without blocking register accesses (host
    /// input, other vCPUs) behind a slow console; the capacity is kept between exits.
    private let batch = Mutex<[UInt8]>([])
    private let output: ConsoleOutput
    private let interruptLine: (@Sendable (Bool) -> Void)?

    /// The most bytes one string OUT can hand over (KVM's 4 KiB I/O data page).
    static let batchCapacity = 4096

    /// - Parameters:
    ///   - output: receives the bytes the guest transmits, on the vCPU thread: one byte
    ///     per `out`, and every byte of a `rep outsb` at once.
    ///   - interruptLine: drives the UART's IRQ line: called with the new level whenever
    ///     "an enabled interrupt is pending and MCR.OUT2 is set" changes, as on a PC.
    public init(output: @escaping ConsoleOutput, interruptLine: (@Sendable (Bool) -> Void)? = nil) {
        self.output = output
        self.interruptLine = interruptLine
        batch.withLock { $0.reserveCapacity(Self.batchCapacity) }
    }

    /// Runs `body` on the UART and then updates the interrupt line, under one lock so that
    /// line changes reach the interrupt controller in the order they happened.
    private func access<R>(_ body: (inout Serial16550) -> R) -> R {
        state.withLock { state in
            let result = body(&state.uart)
            let level = state.uart.pcInterruptLine
            if level != state.line {
                state.line = level
                interruptLine?(level)
            }
            return result
        }
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value = access { $0.read(offset: UInt8(truncatingIfNeeded: offset)) }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let sent = access { $0.write(offset: UInt8(truncatingIfNeeded: offset), value: UInt8(truncatingIfNeeded: value)) }
        if let sent {
            let byte = InlineArray<1, UInt8>(repeating: sent)
            output(byte.span)
        }
        return .continue
    }

    public func portWrite(
        port: UInt16, offset: UInt16, width: UInt8, count: Int, element: (Int) -> UInt32
    ) -> DeviceAction {
        batch.withLock { batch in
            batch.removeAll(keepingCapacity: true)
            access { uart in
                for i in 0..<count {
                    let value = UInt8(truncatingIfNeeded: element(i))
                    if let sent = uart.write(offset: UInt8(truncatingIfNeeded: offset), value: value) {
                        batch.append(sent)
                    }
                }
            }
            if !batch.isEmpty { output(batch.span) }
        }
        return .continue
    }

    /// Queues bytes for the guest to read, as if they arrived on the line, and raises the
    /// interrupt if the guest enabled it. Returns how many fit in the 64-byte receive FIFO;
    /// the rest are not taken (the caller retries later, as a UART's sender would wait).
    @discardableResult
    public func receive(_ bytes: some Sequence<UInt8>) -> Int {
        access { uart in
            var taken = 0
            for byte in bytes {
                guard uart.receiveSpace > 0, uart.receive(byte) else { break }
                taken += 1
            }
            return taken
        }
    }

    /// Free bytes in the receive FIFO.
    public var receiveSpace: Int { state.withLock { $0.uart.receiveSpace } }
}

extension Serial16550Device: SnapshotStateful {
    /// The UART and the level of its interrupt line.
    public func saveState(to writer: inout SnapshotWriter) {
        state.withLock { state in
            state.uart.saveState(to: &writer)
            writer.write(state.line)
        }
    }

    /// Puts back a saved UART. A line that was high is raised again: the interrupt
    /// controller's restored state does not hold the level the device drove.
    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let uart = try Serial16550(restoring: &reader)
        let line = try reader.readBool("the COM1 interrupt line")
        state.withLock { state in
            state.uart = uart
            state.line = line
            if line { interruptLine?(true) }
        }
    }
}

extension Serial16550Device {
    /// The UART at a PC serial port's place, COM1 unless told otherwise: 8 ports from
    /// `base`, IRQ `irq`, and a DSDT device with _HID PNP0501. `irq` only describes the line;
    /// the adapter drives whatever its `interruptLine` was given.
    package func platformDevice(
        name: String = "com1", base: UInt16 = com1Base, irq: UInt32 = com1IRQ,
        amlName: String = "COM1", uid: UInt64 = 1
    ) throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: name, ports: [try .ports(name, base, count: Self.portCount)], portDevice: self, irqs: [irq],
            aml: try deviceAML(
                amlName, hid: "PNP0501", uid: uid,
                resources: [.ports(base, length: UInt8(Self.portCount)), .irq([Int(irq)])]),
            state: self)
    }
}
