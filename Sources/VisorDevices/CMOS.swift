public import VisorCore
public import VisorSnapshot
import Synchronization
import VisorHost

// A model of the PC's CMOS RAM and real-time clock (Motorola MC146818 and compatibles), as
// reached through the index port 0x70 and the data port 0x71.
//
// The clock is the host's: the time registers are computed from the host's UTC time at the
// moment the guest reads them, plus an offset the guest sets by writing them. Nothing ticks
// in the background.
//
// How Linux 6.1 reads the clock, and why UIP can stay 0: `mach_get_cmos_time` and rtc-cmos
// both go through `mc146818_avoid_UIP`, which reads the seconds, checks that register A's
// UIP bit is clear, reads the other registers, checks UIP again and checks that the
// seconds did not change; it retries only while UIP is set or the seconds moved. It never
// waits for UIP to go from 1 to 0. So UIP always reads 0 here, and a read that straddles
// a host second is retried by the kernel because the seconds changed.
//
// Deliberate simplifications:
// - No interrupts: the periodic, alarm and update-ended interrupts (IRQ 8) are not
//   generated. Register B's PIE/AIE/UIE bits are stored; the alarm registers are plain
//   storage. Register C's update-ended flag (UF, bit 4) is computed when C is read: it is
//   set when the clock's second changed since the previous read of C. PF and AF are never
//   set. Linux's boot-time clock read and its rtc-cmos driver need none of this (rtc-cmos
//   then reports no working alarm if it has no IRQ).
// - UIP (register A bit 7) always reads 0 (see above). The divider and rate bits (6:0) are
//   stored and have no effect.
// - The time registers always read in the format register B asks for now: changing DM
//   (bit 2) or 24/12 (bit 1) re-encodes them at once, where the chip would leave stale
//   contents until the guest rewrote them. Daylight saving (bit 0) is stored, not applied.
// - The day of the week (register 6) is derived from the date; writes to it are ignored.
// - A guest-written time that does not exist (31 February, hour 25, BCD digits above 9) is
//   clamped field by field (month 1-12, day 1-31, hour 0-23, minutes and seconds 0-59),
//   and a day past the month's end rolls into the next month.

/// CMOS RAM and the real-time clock, modelled register by register. It knows the index and
/// data registers (ports 0x70 and 0x71), not ports or buses.
///
/// Register map (index 0x00-0x7F, selected by a write of the index port; bit 7 of that write
/// is the NMI mask, kept as `nmiMasked` and otherwise without effect):
///
/// | index | register |
/// |-------|----------|
/// | 0x00, 0x02, 0x04 | seconds, minutes, hours (host time + offset) |
/// | 0x01, 0x03, 0x05 | alarm seconds, minutes, hours (storage) |
/// | 0x06-0x09 | day of week (1 = Sunday), day of month, month, year (00-99) |
/// | 0x0A | A: UIP (bit 7, reads 0), divider and rate (stored) |
/// | 0x0B | B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE |
/// | 0x0C | C: interrupt flags, cleared by reading |
/// | 0x0D | D: VRT (bit 7) always 1, read-only |
/// | 0x32 | century (host time + offset, 19-99) |
/// | others | CMOS RAM, including the memory-size fields set at init |
///
/// Setting the clock: while B's SET bit is 1 the clock stands still and writes to the time
/// registers change the frozen time; clearing SET starts it again from that time, which
/// becomes an offset from the host's time. A time-register write while SET is 0 takes effect
/// at once the same way.
package struct CMOS: Sendable {
    /// Register indexes with names.
    package enum Register {
        package static let seconds: UInt8 = 0x00
        package static let alarmSeconds: UInt8 = 0x01
        package static let minutes: UInt8 = 0x02
        package static let alarmMinutes: UInt8 = 0x03
        package static let hours: UInt8 = 0x04
        package static let alarmHours: UInt8 = 0x05
        package static let dayOfWeek: UInt8 = 0x06
        package static let dayOfMonth: UInt8 = 0x07
        package static let month: UInt8 = 0x08
        package static let year: UInt8 = 0x09
        package static let a: UInt8 = 0x0A
        package static let b: UInt8 = 0x0B
        package static let c: UInt8 = 0x0C
        package static let d: UInt8 = 0x0D
        /// Base memory in KiB, low and high byte.
        package static let baseMemoryLow: UInt8 = 0x15
        package static let baseMemoryHigh: UInt8 = 0x16
        /// Extended memory (above 1 MiB) in KiB, low and high byte, capped at 0xFFFF.
        package static let extendedMemoryLow: UInt8 = 0x17
        package static let extendedMemoryHigh: UInt8 = 0x18
        /// Checksum over 0x10-0x2D, high byte first.
        package static let checksumHigh: UInt8 = 0x2E
        package static let checksumLow: UInt8 = 0x2F
        /// A copy of the extended-memory size.
        package static let extendedMemoryCopyLow: UInt8 = 0x30
        package static let extendedMemoryCopyHigh: UInt8 = 0x31
        /// The century (the register ACPI's FADT names as its century field).
        package static let century: UInt8 = 0x32
        /// Memory between 16 MiB and 4 GiB in 64 KiB units, low and high byte, capped at 0xFFFF.
        package static let memoryAbove16MLow: UInt8 = 0x34
        package static let memoryAbove16MHigh: UInt8 = 0x35
        /// Memory above 4 GiB in 64 KiB units, three bytes, low first.
        package static let memoryAbove4G0: UInt8 = 0x5B
        package static let memoryAbove4G1: UInt8 = 0x5C
        package static let memoryAbove4G2: UInt8 = 0x5D
    }

    /// Register A bit 7: update in progress (always 0 here).
    package static let aUpdateInProgress: UInt8 = 0x80
    /// Register A at power-on: 32.768 kHz time base, 1024 Hz rate.
    package static let initialA: UInt8 = 0x26
    /// Register B bit 7: stop the clock so that it can be set.
    package static let bSet: UInt8 = 0x80
    /// Register B bit 6: periodic interrupt enable.
    package static let bPeriodicInterrupt: UInt8 = 0x40
    /// Register B bit 5: alarm interrupt enable.
    package static let bAlarmInterrupt: UInt8 = 0x20
    /// Register B bit 4: update-ended interrupt enable (cleared when SET is set).
    package static let bUpdateInterrupt: UInt8 = 0x10
    /// Register B bit 2: binary (1) or BCD (0) time registers.
    package static let bBinary: UInt8 = 0x04
    /// Register B bit 1: 24-hour (1) or 12-hour (0) hours register.
    package static let b24Hour: UInt8 = 0x02
    /// Register B at power-on: BCD, 24-hour (Linux's rtc-cmos insists on 24-hour mode).
    package static let initialB: UInt8 = b24Hour
    /// Register C bit 7: an enabled interrupt flag is set.
    package static let cInterruptRequest: UInt8 = 0x80
    /// Register C bit 4: update ended.
    package static let cUpdateEnded: UInt8 = 0x10
    /// Register D bit 7: valid RAM and time (the battery is good).
    package static let dValidRAM: UInt8 = 0x80
    /// The hours register's PM flag in 12-hour mode.
    package static let pmFlag: UInt8 = 0x80

    /// A source of the current time: seconds since 1970-01-01 00:00:00 UTC.
    package typealias Clock = @Sendable () -> Int64

    /// The host's real time, from `clock_gettime(CLOCK_REALTIME)`.
    @Sendable package static func hostClock() -> Int64 { HostIO.realtimeSeconds() }

    // MARK: State

    private let clock: Clock
    /// 128 bytes of CMOS RAM. The time registers' bytes are unused (they are computed).
    private var ram: [UInt8]
    /// The last byte written to the index port, NMI bit included.
    package private(set) var indexPort: UInt8 = 0
    /// Seconds added to the clock to give the guest's time.
    package private(set) var offset: Int64 = 0
    /// The frozen time while register B's SET bit is 1.
    private var frozen: CivilTime?
    /// The guest-visible second at which register C was last read, for its UF flag.
    private var secondAtLastCRead: Int64

    /// - Parameters:
    ///   - clock: the time source; `hostClock` reads the host's UTC time.
    ///   - memoryBelow4GiB: guest RAM below 4 GiB in bytes, for the memory-size fields
    ///     (0x15-0x18, 0x30/0x31, 0x34/0x35); 0 leaves them zero.
    ///   - memoryAbove4GiB: guest RAM from 4 GiB up in bytes, for 0x5B-0x5D.
    package init(clock: @escaping Clock = CMOS.hostClock, memoryBelow4GiB: UInt64 = 0, memoryAbove4GiB: UInt64 = 0) {
        self.clock = clock
        ram = [UInt8](repeating: 0, count: 128)
        ram[Int(Register.a)] = Self.initialA
        ram[Int(Register.b)] = Self.initialB
        secondAtLastCRead = clock()
        setMemoryFields(below4GiB: memoryBelow4GiB, above4GiB: memoryAbove4GiB)
    }

    // MARK: Read-only views

    /// The register the data port reaches (index port bits 6:0).
    package var index: UInt8 { indexPort & 0x7F }

    /// True while the last index write had bit 7 set. Kept as state only: NMIs are not modelled.
    package var nmiMasked: Bool { indexPort & 0x80 != 0 }

    /// Register B's SET bit: the clock is stopped for setting.
    package var clockStopped: Bool { frozen != nil }

    /// Appends the RAM, the index port, the offset from the host's clock, the stopped time
    /// (if SET is on) and the second of the last register C read. The offset, not the time,
    /// is saved: a restored clock shows the host's time plus the same offset, so it is
    /// right however long the snapshot waited.
    package func saveState(to writer: inout SnapshotWriter) {
        writer.write(bytes: ram)
        writer.write(indexPort)
        writer.write(offset)
        writer.write(frozen != nil)
        if let frozen {
            for field in [frozen.year, frozen.month, frozen.day, frozen.hour, frozen.minute, frozen.second] {
                writer.write(Int64(field))
            }
        }
        writer.write(secondAtLastCRead)
    }

    /// Reads what `saveState` wrote, into a CMOS with this one's clock. A stopped time's
    /// fields must be in the ranges a guest's writes can give them.
    package mutating func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let ram = try reader.readBytes("the CMOS RAM", exactly: 128)
        let indexPort = try reader.readUInt8("the CMOS index port")
        let offset = try reader.readInt64("the RTC offset")
        var frozen: CivilTime?
        if try reader.readBool("whether the RTC is stopped") {
            // Any Int64 of seconds is within 300 billion years of 1970.
            let limits: [(String, ClosedRange<Int64>)] = [
                ("year", -300_000_000_000...300_000_000_000), ("month", 1...12), ("day", 1...31),
                ("hour", 0...23), ("minute", 0...59), ("second", 0...59),
            ]
            var fields: [Int] = []
            for (name, range) in limits {
                let value = try reader.readInt64("the stopped RTC's \(name)")
                guard range.contains(value) else { throw .invalid("the stopped RTC's \(name)", reason: "is \(value)") }
                fields.append(Int(value))
            }
            frozen = CivilTime(
                year: fields[0], month: fields[1], day: fields[2], hour: fields[3], minute: fields[4], second: fields[5])
        }
        let secondAtLastCRead = try reader.readInt64("the RTC's last register C read")
        (self.ram, self.indexPort, self.offset) = (ram, indexPort, offset)
        (self.frozen, self.secondAtLastCRead) = (frozen, secondAtLastCRead)
    }

    /// The time the guest's clock shows, in seconds since the epoch (UTC).
    package var guestTime: Int64 {
        if let frozen { return frozen.epochSeconds }
        return clock() &+ offset
    }

    // MARK: Guest access

    /// A write of the index port: bits 6:0 select a register, bit 7 masks NMIs.
    package mutating func writeIndex(_ value: UInt8) { indexPort = value }

    /// A read of the index port: the last byte written to it. (On many chipsets port 0x70 is
    /// write-only; returning the last write makes the NMI mask readable.)
    package func readIndex() -> UInt8 { indexPort }

    /// A read of the data port: the selected register.
    package mutating func readData() -> UInt8 { read(register: index) }

    /// A write of the data port: the selected register.
    package mutating func writeData(_ value: UInt8) { write(register: index, value: value) }

    /// Reads register `register` (bits 6:0 are used).
    package mutating func read(register: UInt8) -> UInt8 {
        let register = register & 0x7F
        switch register {
        case Register.seconds, Register.minutes, Register.hours, Register.dayOfWeek,
            Register.dayOfMonth, Register.month, Register.year, Register.century:
            return timeField(register, of: frozen ?? CivilTime(epochSeconds: clock() &+ offset))
        case Register.a:
            return ram[Int(register)] & ~Self.aUpdateInProgress
        case Register.c:
            return readC()
        case Register.d:
            return Self.dValidRAM
        default:
            return ram[Int(register)]
        }
    }

    /// Writes register `register` (bits 6:0 are used).
    package mutating func write(register: UInt8, value: UInt8) {
        let register = register & 0x7F
        switch register {
        case Register.seconds, Register.minutes, Register.hours,
            Register.dayOfMonth, Register.month, Register.year, Register.century:
            setTimeField(register, to: value)
        case Register.dayOfWeek, Register.c, Register.d:
            break
        case Register.a:
            ram[Int(register)] = value & ~Self.aUpdateInProgress
        case Register.b:
            writeB(value)
        default:
            ram[Int(register)] = value
        }
    }

    // MARK: Internals

    private var registerB: UInt8 { ram[Int(Register.b)] }
    private var binaryMode: Bool { registerB & Self.bBinary != 0 }
    private var twentyFourHour: Bool { registerB & Self.b24Hour != 0 }

    private mutating func writeB(_ value: UInt8) {
        var value = value
        if value & Self.bSet != 0 {
            // Setting SET stops the clock at the current time and clears UIE.
            value &= ~Self.bUpdateInterrupt
            if frozen == nil { frozen = CivilTime(epochSeconds: clock() &+ offset) }
        } else if let stopped = frozen {
            // Clearing SET starts the clock again from the time the guest set.
            offset = stopped.epochSeconds &- clock()
            frozen = nil
        }
        ram[Int(Register.b)] = value
    }

    private mutating func readC() -> UInt8 {
        var flags: UInt8 = 0
        let now = guestTime
        if frozen == nil && now != secondAtLastCRead { flags |= Self.cUpdateEnded }
        secondAtLastCRead = now
        // IRQF: some flag is set whose interrupt register B enables (bits 6:4 line up with C's).
        if flags & registerB & 0x70 != 0 { flags |= Self.cInterruptRequest }
        return flags
    }

    /// The encoded value of time register `register` for `time`.
    private func timeField(_ register: UInt8, of time: CivilTime) -> UInt8 {
        switch register {
        case Register.seconds: return encode(time.second)
        case Register.minutes: return encode(time.minute)
        case Register.hours:
            if twentyFourHour { return encode(time.hour) }
            let hour12 = time.hour % 12 == 0 ? 12 : time.hour % 12
            return encode(hour12) | (time.hour >= 12 ? Self.pmFlag : 0)
        case Register.dayOfWeek: return encode(time.weekday + 1)
        case Register.dayOfMonth: return encode(time.day)
        case Register.month: return encode(time.month)
        case Register.year: return encode(Self.floorMod(time.year, 100))
        default: return encode(Self.floorMod(Self.floorDiv(time.year, 100), 100))
        }
    }

    /// Sets one time field from a guest write, to the frozen time if SET is on, or else
    /// to the running clock by changing the offset.
    private mutating func setTimeField(_ register: UInt8, to value: UInt8) {
        let host = clock()
        var time = frozen ?? CivilTime(epochSeconds: host &+ offset)
        switch register {
        case Register.seconds: time.second = clamp(decode(value), 0, 59)
        case Register.minutes: time.minute = clamp(decode(value), 0, 59)
        case Register.hours:
            if twentyFourHour {
                time.hour = clamp(decode(value), 0, 23)
            } else {
                let hour12 = clamp(decode(value & ~Self.pmFlag), 1, 12) % 12
                time.hour = hour12 + (value & Self.pmFlag != 0 ? 12 : 0)
            }
        case Register.dayOfMonth: time.day = clamp(decode(value), 1, 31)
        case Register.month: time.month = clamp(decode(value), 1, 12)
        case Register.year:
            time.year = Self.floorDiv(time.year, 100) * 100 + clamp(decode(value), 0, 99)
        default:  // century
            time.year = clamp(decode(value), 0, 99) * 100 + Self.floorMod(time.year, 100)
        }
        if frozen != nil {
            frozen = time
        } else {
            offset = time.epochSeconds &- host
        }
    }

    /// A value 0...99 in the current mode: BCD or binary.
    private func encode(_ value: Int) -> UInt8 {
        let value = UInt8(truncatingIfNeeded: value)
        return binaryMode ? value : (value / 10) << 4 | value % 10
    }

    /// A guest byte in the current mode. BCD digits above 9 are taken at face value
    /// (0xFF decodes to 165) and left for the caller to clamp.
    private func decode(_ value: UInt8) -> Int {
        binaryMode ? Int(value) : Int(value >> 4) * 10 + Int(value & 0x0F)
    }

    private func clamp(_ value: Int, _ low: Int, _ high: Int) -> Int { min(max(value, low), high) }

    private mutating func setMemoryFields(below4GiB: UInt64, above4GiB: UInt64) {
        let kib: UInt64 = 1024, mib: UInt64 = 1024 * 1024
        func put16(_ low: UInt8, _ value: UInt64) {
            let value = min(value, 0xFFFF)
            ram[Int(low)] = UInt8(truncatingIfNeeded: value)
            ram[Int(low) + 1] = UInt8(truncatingIfNeeded: value >> 8)
        }
        put16(Register.baseMemoryLow, min(below4GiB / kib, 640))
        let extended = below4GiB > mib ? (below4GiB - mib) / kib : 0
        put16(Register.extendedMemoryLow, extended)
        put16(Register.extendedMemoryCopyLow, extended)
        put16(Register.memoryAbove16MLow, below4GiB > 16 * mib ? (below4GiB - 16 * mib) / (64 * kib) : 0)
        let high = min(above4GiB / (64 * kib), 0xFF_FFFF)
        ram[Int(Register.memoryAbove4G0)] = UInt8(truncatingIfNeeded: high)
        ram[Int(Register.memoryAbove4G1)] = UInt8(truncatingIfNeeded: high >> 8)
        ram[Int(Register.memoryAbove4G2)] = UInt8(truncatingIfNeeded: high >> 16)
        // The standard checksum: the sum of bytes 0x10-0x2D, high byte at 0x2E.
        let sum = ram[0x10...0x2D].reduce(UInt16(0)) { $0 &+ UInt16($1) }
        ram[Int(Register.checksumHigh)] = UInt8(truncatingIfNeeded: sum >> 8)
        ram[Int(Register.checksumLow)] = UInt8(truncatingIfNeeded: sum)
    }

    // MARK: Calendar arithmetic (proleptic Gregorian, UTC, no Foundation)

    /// Division rounding toward negative infinity.
    static func floorDiv(_ a: Int, _ b: Int) -> Int {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }

    /// The remainder that goes with `floorDiv`: always in 0..<b for b > 0.
    static func floorMod(_ a: Int, _ b: Int) -> Int { a - floorDiv(a, b) * b }

    /// Days from 1970-01-01 to `year`-`month`-`day`. Months 1...12; a day past the month's
    /// end counts on into the next month.
    package static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        // Count years from March, so that the leap day is the last day of the year.
        let y = month <= 2 ? year - 1 : year
        let era = floorDiv(y, 400)
        let yearOfEra = y - era * 400  // 0...399
        let shiftedMonth = month > 2 ? month - 3 : month + 9  // March = 0
        let dayOfYear = (153 * shiftedMonth + 2) / 5 + day - 1  // 0...365
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468  // 719468: 0000-03-01 to 1970-01-01
    }

    /// The date `days` days after 1970-01-01: (year, month 1...12, day 1...31).
    package static func civilFromDays(_ days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = floorDiv(z, 146_097)
        let dayOfEra = z - era * 146_097  // 0...146096
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153  // March = 0
        let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day)
    }
}

/// A broken-down UTC time, as the RTC's registers hold it.
package struct CivilTime: Sendable, Equatable, CustomStringConvertible {
    package var year: Int
    /// 1...12.
    package var month: Int
    /// 1...31.
    package var day: Int
    /// 0...23.
    package var hour: Int
    package var minute: Int
    package var second: Int

    package init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0) {
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
    }

    /// The time `epochSeconds` seconds after 1970-01-01 00:00:00 UTC (negative: before).
    /// Any Int64 is accepted.
    package init(epochSeconds: Int64) {
        // Int is 64 bits on every platform this runs on. days * 86400 can fall just outside
        // Int's range for the most negative inputs, so the remainder is taken with wrapping
        // arithmetic, which still yields the true value (0...86399).
        let days = CMOS.floorDiv(Int(epochSeconds), 86_400)
        let secondOfDay = Int(epochSeconds) &- days &* 86_400
        let date = CMOS.civilFromDays(days)
        self.init(
            year: date.year, month: date.month, day: date.day,
            hour: secondOfDay / 3600, minute: secondOfDay / 60 % 60, second: secondOfDay % 60)
    }

    /// Seconds since 1970-01-01 00:00:00 UTC. Fields out of range count on (second 60 is the
    /// next minute's 0), with wrapping rather than trapping for absurd years.
    package var epochSeconds: Int64 {
        let days = CMOS.daysFromCivil(year: year, month: month, day: day)
        return Int64(days) &* 86_400 &+ Int64(hour) &* 3600 &+ Int64(minute) &* 60 &+ Int64(second)
    }

    /// The day of the week: 0 = Sunday ... 6 = Saturday.
    package var weekday: Int {
        // 1970-01-01 was a Thursday (4).
        CMOS.floorMod(CMOS.daysFromCivil(year: year, month: month, day: day) + 4, 7)
    }

    package var description: String {
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2)) \(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2))"
    }
}

/// The CMOS/RTC model on the port bus at ports 0x70 (index) and 0x71 (data).
///
/// Ports are decoded by offset: 0 is the index port, 1 the data port; any other offset
/// reads all ones and ignores writes. An access wider than a byte is treated as a byte
/// access of its low byte; an IN wider than a byte returns the register in the low byte and
/// ones above it. No interrupts are raised (see `CMOS`).
public final class CMOSDevice: PortDevice {
    /// The index port; the data port follows it.
    public static let base: UInt16 = 0x70
    public static let portCount = 2
    /// The RTC's ISA interrupt line (not driven by this model; for the ACPI tables).
    public static let rtcIRQ: UInt32 = 8

    private let state: Mutex<CMOS>

    /// - Parameters:
    ///   - clock: the time source; `CMOS.hostClock` reads the host's UTC time.
    ///   - memoryBelow4GiB, memoryAbove4GiB: guest RAM in bytes below and from 4 GiB, for
    ///     the CMOS memory-size fields (0 leaves them zero).
    package init(clock: @escaping CMOS.Clock = CMOS.hostClock, memoryBelow4GiB: UInt64 = 0, memoryAbove4GiB: UInt64 = 0) {
        state = Mutex(CMOS(clock: clock, memoryBelow4GiB: memoryBelow4GiB, memoryAbove4GiB: memoryAbove4GiB))
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value: UInt8
        switch offset {
        case 0: value = state.withLock { $0.readIndex() }
        case 1: value = state.withLock { $0.readData() }
        default: return UInt32(truncatingIfNeeded: allOnes(width: width))
        }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let byte = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0: state.withLock { $0.writeIndex(byte) }
        case 1: state.withLock { $0.writeData(byte) }
        default: break
        }
        return .continue
    }

    /// True while the guest's last index write masked NMIs (bit 7).
    public var nmiMasked: Bool { state.withLock { $0.nmiMasked } }

    /// The guest's clock in seconds since the epoch, UTC: host time plus the guest's offset.
    public var guestTime: Int64 { state.withLock { $0.guestTime } }

    /// The model's state, for inspection (a copy).
    package var cmos: CMOS { state.withLock { $0 } }
}

extension CMOSDevice {
    /// CMOS/RTC at its PC place: ports 0x70-0x71, IRQ 8 (described, never raised), a DSDT
    /// device with _HID PNP0B00, and the century register for the FADT.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "cmos-rtc", ports: [try .ports("cmos-rtc", Self.base, count: Self.portCount)], portDevice: self,
            irqs: [Self.rtcIRQ],
            aml: try deviceAML(
                "RTC", hid: "PNP0B00",
                resources: [.ports(Self.base, length: UInt8(Self.portCount)), .irq([Int(Self.rtcIRQ)])]),
            fixedHardware: [.rtcCentury(index: CMOS.Register.century)], state: self)
    }
}

extension CMOSDevice: SnapshotStateful {
    public func saveState(to writer: inout SnapshotWriter) { state.withLock { $0.saveState(to: &writer) } }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        var cmos = state.withLock { $0 }
        try cmos.restoreState(from: &reader)
        state.withLock { $0 = cmos }
    }
}
