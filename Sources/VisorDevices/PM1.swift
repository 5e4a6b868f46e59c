public import VisorCore
public import VisorSnapshot
import Synchronization
import VisorFirmware

// ACPI fixed-hardware power management on I/O ports: the PM1a event block (PM1_STS and
// PM1_EN) and the PM1a control block (PM1_CNT). The reset register the FADT also names is
// `ResetControl` (ResetControl.swift).
//
// What Linux 6.1 does with them: ACPICA's `acpi_hw_legacy_sleep` writes PM1 control twice
// with 16-bit OUTs: first with SLP_TYP set and SLP_EN clear, then with SLP_EN set.
//
// The platform is always in ACPI mode: there is no SMI_CMD port, so SCI_EN reads 1. No SCI
// is raised: there are no event sources (no PM timer, power button or GPEs).

/// The PM1a event and control registers, modelled byte lane by byte lane. It knows byte
/// offsets into the event block (0-3) and the control block (0-1), not ports or buses.
///
/// | block   | offset | register | behaviour |
/// |---------|--------|----------|-----------|
/// | event   | 0-1    | PM1_STS  | write 1 to clear; only the host sets bits (`setStatus`) |
/// | event   | 2-3    | PM1_EN   | read/write, keeps what the guest writes |
/// | control | 0-1    | PM1_CNT  | SCI_EN (bit 0) reads 1; GBL_RLS (bit 2) and SLP_EN (bit 13) are write-only and read 0; SLP_TYP (bits 12:10) and the rest are kept |
///
/// A write that sets SLP_EN acts on the SLP_TYP the register holds after that write (so a
/// byte write of the high half alone works too): S5 (`s5SleepType`) asks for power-off.
/// Any other sleep type is not supported: the request is ignored and WAK_STS (PM1_STS bit
/// 15) is set at once, so that a guest waiting to wake up carries on as if it had slept.
package struct PM1Registers: Sendable {
    // The register layout is the one the FADT describes (`ACPIPM1`), not a second copy.
    /// PM1_STS bit 15: the system woke from a sleep state.
    package static let wakeStatus: UInt16 = ACPIPM1.wakeStatus
    /// PM1_CNT bit 0: SCI_EN, always 1 here.
    package static let sciEnable: UInt16 = ACPIPM1.sciEnable
    /// PM1_CNT bit 2: GBL_RLS, write-only.
    package static let globalRelease: UInt16 = 0x0004
    /// PM1_CNT bits 12:10: SLP_TYP.
    package static let sleepTypeMask: UInt16 = ACPIPM1.sleepTypeMask
    package static let sleepTypeShift: UInt16 = ACPIPM1.sleepTypeShift
    /// PM1_CNT bit 13: SLP_EN, write-only.
    package static let sleepEnable: UInt16 = ACPIPM1.sleepEnable
    /// Bytes in the event block and the control block.
    package static let eventBlockLength = ACPIPM1.eventBlockLength
    package static let controlBlockLength = ACPIPM1.controlBlockLength

    /// What a PM1 control write asked for.
    package enum SleepRequest: Sendable, Equatable {
        /// SLP_EN with SLP_TYP equal to the S5 type: power off.
        case powerOff
        /// SLP_EN with another SLP_TYP: not supported, ignored (WAK_STS is set).
        case unsupported(sleepType: UInt8)
    }

    /// The SLP_TYP value that means S5 (soft off); `PM1Device.platformDevice()` gives it to
    /// the DSDT's `\_S5` object.
    package let s5SleepType: UInt8
    /// PM1_STS.
    package private(set) var status: UInt16 = 0
    /// PM1_EN.
    package private(set) var enable: UInt16 = 0
    /// PM1_CNT as stored, without the write-only bits and without SCI_EN.
    private var controlBits: UInt16 = 0

    /// - Parameter s5SleepType: the SLP_TYP value for S5 (bits 2:0 are used).
    package init(s5SleepType: UInt8 = 5) {
        self.s5SleepType = s5SleepType & 0x07
    }

    /// Appends PM1_STS, PM1_EN and PM1_CNT.
    package func saveState(to writer: inout SnapshotWriter) {
        writer.write(status)
        writer.write(enable)
        writer.write(controlBits)
    }

    /// Reads what `saveState` wrote into registers for the same S5 type. PM1_CNT's
    /// write-only bits and SCI_EN are never stored, so they must be clear.
    package mutating func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let status = try reader.readUInt16("PM1_STS")
        let enable = try reader.readUInt16("PM1_EN")
        let control = try reader.readUInt16("PM1_CNT")
        guard control & (Self.sleepEnable | Self.globalRelease | Self.sciEnable) == 0 else {
            throw .invalid("PM1_CNT", reason: "is 0x\(String(control, radix: 16)), which sets bits never stored")
        }
        (self.status, self.enable, controlBits) = (status, enable, control)
    }

    /// PM1_CNT as the guest reads it.
    package var control: UInt16 { controlBits | Self.sciEnable }

    /// SLP_TYP as the guest last wrote it.
    package var sleepType: UInt8 { UInt8(truncatingIfNeeded: (controlBits & Self.sleepTypeMask) >> Self.sleepTypeShift) }

    /// Host side: sets PM1_STS bits (no SCI is raised; the guest sees them when it reads).
    package mutating func setStatus(_ bits: UInt16) { status |= bits }

    /// Reads byte `offset` of the event block (offsets past 3 read 0xFF).
    package func readEventByte(offset: Int) -> UInt8 {
        switch offset {
        case 0...1: return byte(status, offset)
        case 2...3: return byte(enable, offset - 2)
        default: return 0xFF
        }
    }

    /// Writes byte `offset` of the event block: status bytes clear the bits written as 1,
    /// enable bytes are stored. Offsets past 3 are ignored.
    package mutating func writeEventByte(offset: Int, value: UInt8) {
        switch offset {
        case 0...1: status &= ~(UInt16(value) << (8 * offset))
        case 2...3: enable = replacing(enable, byte: offset - 2, with: value)
        default: break
        }
    }

    /// Reads byte `offset` of the control block (offsets past 1 read 0xFF).
    package func readControlByte(offset: Int) -> UInt8 {
        (0...1).contains(offset) ? byte(control, offset) : 0xFF
    }

    /// Writes PM1_CNT: the bits in `mask` take their values from `value`, the others keep
    /// theirs (a byte write is a mask of 0x00FF or 0xFF00). Then, if this write set SLP_EN,
    /// acts on SLP_TYP as the register now holds it.
    package mutating func writeControl(_ value: UInt16, mask: UInt16 = 0xFFFF) -> SleepRequest? {
        let merged = controlBits & ~mask | value & mask
        controlBits = merged & ~(Self.sleepEnable | Self.globalRelease | Self.sciEnable)
        guard value & mask & Self.sleepEnable != 0 else { return nil }
        let type = sleepType
        if type == s5SleepType { return .powerOff }
        status |= Self.wakeStatus
        return .unsupported(sleepType: type)
    }

    private func byte(_ register: UInt16, _ index: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: register >> (8 * index))
    }

    private func replacing(_ register: UInt16, byte index: Int, with value: UInt8) -> UInt16 {
        let shift = UInt16(8 * index)
        return register & ~(0xFF << shift) | UInt16(value) << shift
    }
}

/// The PM1a event and control blocks on the port bus.
///
/// By default the event block is ports 0x600-0x603 and the control block 0x604-0x605.
/// `platformDevice()` places the two blocks as two ranges and names the same ports to the
/// FADT as PM1a_EVT_BLK and PM1a_CNT_BLK. The device decodes by port
/// number, byte lane by byte lane, so any access width and alignment works: a lane outside
/// both blocks reads 0xFF and is not written.
public final class PM1Device: PortDevice {
    public static let defaultEventBlockBase: UInt16 = 0x600
    public static let eventBlockLength = PM1Registers.eventBlockLength
    public static let defaultControlBlockBase: UInt16 = 0x604
    public static let controlBlockLength = PM1Registers.controlBlockLength
    /// The SLP_TYP for S5 unless told otherwise.
    public static let defaultS5SleepType: UInt8 = 5
    /// The power-off stop's source.
    public static let powerOffSource = "ACPI PM1a control, S5"

    public let eventBlockBase: UInt16
    public let controlBlockBase: UInt16
    private let state: Mutex<PM1Registers>

    /// - Parameters:
    ///   - eventBlockBase: the first of the 4 event-block ports (PM1a_EVT_BLK).
    ///   - controlBlockBase: the first of the 2 control-block ports (PM1a_CNT_BLK).
    ///   - s5SleepType: the SLP_TYP value the DSDT's `\_S5` gives for PM1a.
    public init(
        eventBlockBase: UInt16 = defaultEventBlockBase,
        controlBlockBase: UInt16 = defaultControlBlockBase,
        s5SleepType: UInt8 = defaultS5SleepType
    ) {
        self.eventBlockBase = eventBlockBase
        self.controlBlockBase = controlBlockBase
        state = Mutex(PM1Registers(s5SleepType: s5SleepType))
    }

    /// Where byte lane `port` falls: the event block, the control block, or neither.
    private enum Lane { case event(Int), control(Int), none }

    private func lane(_ port: Int) -> Lane {
        let event = port - Int(eventBlockBase)
        if (0..<Self.eventBlockLength).contains(event) { return .event(event) }
        let control = port - Int(controlBlockBase)
        if (0..<Self.controlBlockLength).contains(control) { return .control(control) }
        return .none
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        state.withLock { registers in
            var value: UInt32 = 0
            for index in 0..<min(Int(width), 4) {
                let byte: UInt8
                switch lane(Int(port) + index) {
                case .event(let offset): byte = registers.readEventByte(offset: offset)
                case .control(let offset): byte = registers.readControlByte(offset: offset)
                case .none: byte = 0xFF
                }
                value |= UInt32(byte) << (8 * index)
            }
            return value
        }
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let request: PM1Registers.SleepRequest? = state.withLock { registers in
            var controlValue: UInt16 = 0
            var controlMask: UInt16 = 0
            for index in 0..<min(Int(width), 4) {
                let byte = UInt8(truncatingIfNeeded: value >> (8 * index))
                switch lane(Int(port) + index) {
                case .event(let offset): registers.writeEventByte(offset: offset, value: byte)
                case .control(let offset):
                    controlValue |= UInt16(byte) << (8 * offset)
                    controlMask |= 0xFF << (8 * offset)
                case .none: break
                }
            }
            return controlMask == 0 ? nil : registers.writeControl(controlValue, mask: controlMask)
        }
        switch request {
        case .powerOff: return .stop(.powerOff(source: Self.powerOffSource))
        case .unsupported, nil: return .continue
        }
    }

    /// The registers' state, for inspection (a copy).
    package var registers: PM1Registers { state.withLock { $0 } }
}

extension PM1Device {
    /// The PM1a blocks where this device was told they are (0x600 and 0x604 by default), as
    /// the FADT's PM1a event and control blocks; `\_S5` gives the device's S5 sleep type.
    /// The OS finds them through the FADT, so there is no DSDT device.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "acpi-pm1a",
            ports: [
                try .ports("acpi-pm1a-event", eventBlockBase, count: Self.eventBlockLength),
                try .ports("acpi-pm1a-control", controlBlockBase, count: Self.controlBlockLength),
            ],
            portDevice: self,
            fixedHardware: [
                .pm1aEventBlock(port: eventBlockBase),
                .pm1aControlBlock(port: controlBlockBase, s5SleepType: registers.s5SleepType),
            ],
            state: self)
    }
}

extension PM1Device: SnapshotStateful {
    public func saveState(to writer: inout SnapshotWriter) { state.withLock { $0.saveState(to: &writer) } }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        var registers = state.withLock { $0 }
        try registers.restoreState(from: &reader)
        state.withLock { $0 = registers }
    }
}
