import Testing
import TestSupport
import Synchronization
import Glibc
import VisorCore
@testable import VisorDevices

/// A clock the test moves by hand.
private final class ManualClock: Sendable {
    private let now: Mutex<Int64>
    init(_ start: Int64) { now = Mutex(start) }
    func advance(_ seconds: Int64) { now.withLock { $0 += seconds } }
    func set(_ seconds: Int64) { now.withLock { $0 = seconds } }
    var read: CMOS.Clock { { self.now.withLock { $0 } } }
}

/// 2024-03-09 13:45:07 UTC, a Saturday.
private let saturday: Int64 = 1_709_991_907

private enum Reg {
    static let seconds: UInt8 = 0x00, minutes: UInt8 = 0x02, hours: UInt8 = 0x04, weekday: UInt8 = 0x06
    static let day: UInt8 = 0x07, month: UInt8 = 0x08, year: UInt8 = 0x09, century: UInt8 = 0x32
    static let a: UInt8 = 0x0A, b: UInt8 = 0x0B, c: UInt8 = 0x0C, d: UInt8 = 0x0D
}

extension CMOS {
    /// The eight time registers in the order seconds, minutes, hours, weekday, day, month, year, century.
    fileprivate mutating func timeRegisters() -> [UInt8] {
        [Reg.seconds, Reg.minutes, Reg.hours, Reg.weekday, Reg.day, Reg.month, Reg.year, Reg.century].map { read(register: $0) }
    }
}

@Suite("Calendar arithmetic")
struct CivilTimeTests {

    @Test(
        "known dates: the epoch, Y2K's eve, 2000-02-29, 2100-03-01, negative times, 2038, year 9999",
        arguments: [
            (Int64(0), CivilTime(year: 1970, month: 1, day: 1), 4),
            (946_684_799, CivilTime(year: 1999, month: 12, day: 31, hour: 23, minute: 59, second: 59), 5),
            (951_782_400, CivilTime(year: 2000, month: 2, day: 29), 2),
            (951_868_800, CivilTime(year: 2000, month: 3, day: 1), 3),
            (4_107_542_399, CivilTime(year: 2100, month: 2, day: 28, hour: 23, minute: 59, second: 59), 0),
            (4_107_542_400, CivilTime(year: 2100, month: 3, day: 1), 1),
            (1_709_991_907, CivilTime(year: 2024, month: 3, day: 9, hour: 13, minute: 45, second: 7), 6),
            (-1, CivilTime(year: 1969, month: 12, day: 31, hour: 23, minute: 59, second: 59), 3),
            (-2_203_891_200, CivilTime(year: 1900, month: 3, day: 1), 4),
            (-11_670_955_200, CivilTime(year: 1600, month: 2, day: 29, hour: 12), 2),
            (2_147_483_648, CivilTime(year: 2038, month: 1, day: 19, hour: 3, minute: 14, second: 8), 2),
            (253_402_300_799, CivilTime(year: 9999, month: 12, day: 31, hour: 23, minute: 59, second: 59), 5),
        ])
    func knownDates(epoch: Int64, civil: CivilTime, weekday: Int) {
        #expect(CivilTime(epochSeconds: epoch) == civil)
        #expect(civil.epochSeconds == epoch)
        #expect(civil.weekday == weekday)
    }

    @Test("leap years: 2000 and 2024 have 29 February, 1900 and 2100 do not")
    func leapYears() {
        for (year, leap) in [(1900, false), (2000, true), (2023, false), (2024, true), (2100, false), (2400, true)] {
            let days = CMOS.daysFromCivil(year: year, month: 3, day: 1) - CMOS.daysFromCivil(year: year, month: 2, day: 1)
            #expect(days == (leap ? 29 : 28), "February \(year)")
            let yearLength =
                CMOS.daysFromCivil(year: year + 1, month: 1, day: 1) - CMOS.daysFromCivil(year: year, month: 1, day: 1)
            #expect(yearLength == (leap ? 366 : 365))
        }
    }

    @Test("agrees with Glibc's gmtime_r on 20,000 times from 1900 to 2400")
    func matchesGmtime() {
        var rng = LCG(state: 0x5EED)
        for _ in 0..<20_000 {
            let t = Int64(rng.step() >> 30) % 15_778_800_000 - 2_208_988_800  // 1900 ... ~2400
            var seconds = time_t(t)
            // SAFETY: `tm` holds a time-zone name pointer, which this test never reads; both
            // pointers are to locals that outlive the call.
            var parts = unsafe tm()
            unsafe #expect(gmtime_r(&seconds, &parts) != nil)
            let expected = unsafe CivilTime(
                year: Int(parts.tm_year) + 1900, month: Int(parts.tm_mon) + 1, day: Int(parts.tm_mday),
                hour: Int(parts.tm_hour), minute: Int(parts.tm_min), second: Int(parts.tm_sec))
            let weekday = unsafe Int(parts.tm_wday)
            let civil = CivilTime(epochSeconds: t)
            #expect(civil == expected)
            #expect(civil.weekday == weekday)
            #expect(civil.epochSeconds == t)
        }
    }

    @Test("every day from 1600 to 2500 round-trips, and consecutive days step by one")
    func roundTrip() {
        let first = CMOS.daysFromCivil(year: 1600, month: 1, day: 1)
        let last = CMOS.daysFromCivil(year: 2500, month: 1, day: 1)
        var previous = CMOS.civilFromDays(first - 1)
        for day in first...last {
            let date = CMOS.civilFromDays(day)
            #expect(CMOS.daysFromCivil(year: date.year, month: date.month, day: date.day) == day)
            let next =
                date.day == previous.day + 1 && date.month == previous.month
                || date.day == 1 && (date.month == previous.month % 12 + 1)
            if !next { Issue.record("\(previous) -> \(date)"); break }
            previous = date
        }
    }

    @Test("extreme epoch values neither trap nor lose the time of day")
    func extremes() {
        for t in [Int64.min, Int64.min + 1, Int64.max, Int64.max - 86_399, -86_401] {
            let civil = CivilTime(epochSeconds: t)
            #expect((0...23).contains(civil.hour) && (0...59).contains(civil.minute) && (0...59).contains(civil.second))
            #expect((1...12).contains(civil.month) && (1...31).contains(civil.day))
        }
        #expect(CivilTime(epochSeconds: -86_401) == CivilTime(year: 1969, month: 12, day: 30, hour: 23, minute: 59, second: 59))
    }
}

@Suite("CMOS/RTC registers")
struct CMOSRegisterTests {

    @Test("time registers in BCD, 24-hour (the power-on mode)")
    func bcd24() {
        var cmos = CMOS(clock: { saturday })
        #expect(cmos.read(register: Reg.b) == 0x02)
        #expect(cmos.timeRegisters() == [0x07, 0x45, 0x13, 0x07, 0x09, 0x03, 0x24, 0x20])
    }

    @Test("time registers in binary (B bit 2)")
    func binary() {
        var cmos = CMOS(clock: { saturday })
        cmos.write(register: Reg.b, value: 0x06)
        #expect(cmos.timeRegisters() == [7, 45, 13, 7, 9, 3, 24, 20])
    }

    @Test("12-hour mode (B bit 1 clear): 1 PM is 0x81; midnight 0x12; noon 0x92; binary 1 PM 0x81")
    func twelveHour() {
        let clock = ManualClock(saturday)
        var cmos = CMOS(clock: clock.read)
        cmos.write(register: Reg.b, value: 0x00)
        #expect(cmos.read(register: Reg.hours) == 0x81)
        clock.set(CivilTime(year: 2024, month: 3, day: 9, hour: 0, minute: 30).epochSeconds)
        #expect(cmos.read(register: Reg.hours) == 0x12)
        clock.set(CivilTime(year: 2024, month: 3, day: 9, hour: 12, minute: 30).epochSeconds)
        #expect(cmos.read(register: Reg.hours) == 0x92)
        clock.set(CivilTime(year: 2024, month: 3, day: 9, hour: 23).epochSeconds)
        #expect(cmos.read(register: Reg.hours) == 0x91)
        cmos.write(register: Reg.b, value: 0x04)
        #expect(cmos.read(register: Reg.hours) == 0x80 | 11)
    }

    @Test("the registers follow the clock at read time")
    func followsClock() {
        let clock = ManualClock(946_684_799)  // 1999-12-31 23:59:59, a Friday
        var cmos = CMOS(clock: clock.read)
        #expect(cmos.timeRegisters() == [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19])
        clock.advance(1)
        #expect(cmos.timeRegisters() == [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20])
        #expect(cmos.guestTime == 946_684_800)
    }

    @Test("Linux's mc146818_set_time: SET, A with divider reset, BCD fields, century, restore B and A")
    func linuxSetTime() {
        let clock = ManualClock(saturday)
        var cmos = CMOS(clock: clock.read)
        let savedB = cmos.read(register: Reg.b)
        cmos.write(register: Reg.b, value: savedB | 0x80)
        #expect(cmos.clockStopped)
        let savedA = cmos.read(register: Reg.a)
        cmos.write(register: Reg.a, value: savedA | 0x70)
        // 2031-07-04 05:06:07
        for (reg, value): (UInt8, UInt8) in [
            (Reg.year, 0x31), (Reg.month, 0x07), (Reg.day, 0x04),
            (Reg.hours, 0x05), (Reg.minutes, 0x06), (Reg.seconds, 0x07), (Reg.century, 0x20),
        ] {
            cmos.write(register: reg, value: value)
        }
        clock.advance(100)
        #expect(cmos.timeRegisters() == [0x07, 0x06, 0x05, 0x06, 0x04, 0x07, 0x31, 0x20], "frozen while SET")
        cmos.write(register: Reg.b, value: savedB)
        cmos.write(register: Reg.a, value: savedA)
        #expect(!cmos.clockStopped)
        let set = CivilTime(year: 2031, month: 7, day: 4, hour: 5, minute: 6, second: 7).epochSeconds
        #expect(cmos.guestTime == set)
        #expect(cmos.offset == set - (saturday + 100))
        clock.advance(10)
        #expect(cmos.read(register: Reg.seconds) == 0x17, "the guest's clock runs from the time it set")
        #expect(cmos.read(register: Reg.a) == 0x26)
    }

    @Test("a time-register write with SET clear moves the running clock at once")
    func writeWhileRunning() {
        let clock = ManualClock(saturday)
        var cmos = CMOS(clock: clock.read)
        cmos.write(register: Reg.hours, value: 0x20)
        #expect(cmos.read(register: Reg.hours) == 0x20)
        #expect(cmos.read(register: Reg.minutes) == 0x45)
        #expect(cmos.offset == 7 * 3600)
        cmos.write(register: Reg.b, value: 0x06)
        cmos.write(register: Reg.year, value: 99)
        #expect(cmos.read(register: Reg.year) == 99)
        #expect(cmos.read(register: Reg.century) == 20)
        #expect(CivilTime(epochSeconds: cmos.guestTime).year == 2099)
    }

    @Test("12-hour writes: 0x92 is noon, 0x12 midnight, 0x81 1 PM")
    func twelveHourWrites() {
        var cmos = CMOS(clock: { saturday })
        cmos.write(register: Reg.b, value: 0x80)  // SET, 12-hour, BCD
        for (written, hour): (UInt8, Int) in [(0x92, 12), (0x12, 0), (0x81, 13), (0x01, 1), (0x91, 23)] {
            cmos.write(register: Reg.hours, value: written)
            #expect(CivilTime(epochSeconds: cmos.guestTime).hour == hour, "hours register 0x\(String(written, radix: 16))")
            #expect(cmos.read(register: Reg.hours) == written)
        }
    }

    @Test("SET clears UIE; the day of week ignores writes")
    func setClearsUIE() {
        var cmos = CMOS(clock: { saturday })
        cmos.write(register: Reg.b, value: 0x92)
        #expect(cmos.read(register: Reg.b) == 0x82)
        cmos.write(register: Reg.weekday, value: 0x03)
        #expect(cmos.read(register: Reg.weekday) == 0x07)
    }

    @Test("register A: UIP reads 0, divider and rate bits are kept, 0x26 at power-on")
    func registerA() {
        var cmos = CMOS(clock: { saturday })
        #expect(cmos.read(register: Reg.a) == 0x26)
        cmos.write(register: Reg.a, value: 0xFF)
        #expect(cmos.read(register: Reg.a) == 0x7F)
    }

    @Test("register C: UF is set once the second changed since the last read, and cleared by reading; IRQF with UIE")
    func registerC() {
        let clock = ManualClock(saturday)
        var cmos = CMOS(clock: clock.read)
        #expect(cmos.read(register: Reg.c) == 0x00)
        clock.advance(1)
        #expect(cmos.read(register: Reg.c) == 0x10)
        #expect(cmos.read(register: Reg.c) == 0x00, "read to clear")
        cmos.write(register: Reg.b, value: 0x12)  // UIE
        clock.advance(5)
        #expect(cmos.read(register: Reg.c) == 0x90)
        cmos.write(register: Reg.c, value: 0xFF)
        #expect(cmos.read(register: Reg.c) == 0x00, "C is read-only")
        cmos.write(register: Reg.b, value: 0x82)  // SET: no updates
        clock.advance(5)
        #expect(cmos.read(register: Reg.c) == 0x00)
    }

    @Test("register D: VRT always 1, read-only")
    func registerD() {
        var cmos = CMOS(clock: { saturday })
        #expect(cmos.read(register: Reg.d) == 0x80)
        cmos.write(register: Reg.d, value: 0x00)
        #expect(cmos.read(register: Reg.d) == 0x80)
    }

    @Test("alarm registers and the rest of CMOS RAM keep what the guest writes")
    func ram() {
        var cmos = CMOS(clock: { saturday })
        let special: Set<UInt8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x32]
        for index: UInt8 in 0...0x7F where !special.contains(index) {
            cmos.write(register: index, value: index ^ 0xA5)
        }
        for index: UInt8 in 0...0x7F where !special.contains(index) {
            #expect(cmos.read(register: index) == index ^ 0xA5, "index 0x\(String(index, radix: 16))")
        }
        #expect(cmos.read(register: Reg.seconds) == 0x07, "time registers are untouched by the RAM writes")
    }

    @Test("the index port: bit 7 is the NMI mask, kept and readable, and selects nothing")
    func indexAndNMI() {
        var cmos = CMOS(clock: { saturday })
        cmos.writeIndex(0x8F)  // Linux's reboot path: CMOS_WRITE(0x00, 0x8f)
        #expect(cmos.nmiMasked)
        #expect(cmos.index == 0x0F)
        #expect(cmos.readIndex() == 0x8F)
        cmos.writeData(0x0A)
        cmos.writeIndex(0x0F)
        #expect(!cmos.nmiMasked)
        #expect(cmos.readData() == 0x0A)
        cmos.writeIndex(0xFF)  // the highest index, with the NMI bit
        #expect(cmos.index == 0x7F && cmos.nmiMasked)
        cmos.writeData(0x42)
        #expect(cmos.readData() == 0x42)
        cmos.writeIndex(0x80)  // index 0 with the NMI bit: the seconds
        #expect(cmos.readData() == 0x07)
    }

    @Test("memory-size fields for 3 GiB below and 5 GiB above 4 GiB, with the checksum")
    func memoryFields() {
        let gib: UInt64 = 1 << 30
        var cmos = CMOS(clock: { saturday }, memoryBelow4GiB: 3 * gib, memoryAbove4GiB: 5 * gib)
        #expect(cmos.read(register: 0x15) == 0x80 && cmos.read(register: 0x16) == 0x02, "640 KiB")
        #expect(cmos.read(register: 0x17) == 0xFF && cmos.read(register: 0x18) == 0xFF, "capped at 0xFFFF KiB")
        #expect(cmos.read(register: 0x30) == 0xFF && cmos.read(register: 0x31) == 0xFF)
        // (3 GiB - 16 MiB) / 64 KiB = 48896 = 0xBF00.
        #expect(cmos.read(register: 0x34) == 0x00 && cmos.read(register: 0x35) == 0xBF)
        // 5 GiB / 64 KiB = 81920 = 0x014000.
        #expect([0x5B, 0x5C, 0x5D].map { cmos.read(register: $0) } == [0x00, 0x40, 0x01])
        let sum = (0x10...0x2D).reduce(0) { $0 + Int(cmos.read(register: UInt8($1))) }
        #expect(Int(cmos.read(register: 0x2E)) << 8 | Int(cmos.read(register: 0x2F)) == sum)

        var small = CMOS(clock: { saturday }, memoryBelow4GiB: 8 << 20)
        #expect(small.read(register: 0x17) == 0x00 && small.read(register: 0x18) == 0x1C, "7 MiB = 7168 KiB")
        #expect(small.read(register: 0x34) == 0 && small.read(register: 0x35) == 0)

        var none = CMOS(clock: { saturday })
        #expect(none.read(register: 0x15) == 0 && none.read(register: 0x5D) == 0)
    }

    @Test("hostile guest: every value to every register in both modes, with SET on and off, never traps")
    func everyValue() {
        let clock = ManualClock(saturday)
        var cmos = CMOS(clock: clock.read)
        for mode: UInt8 in [0x00, 0x02, 0x04, 0x06, 0x80, 0x82, 0x84, 0x86] {
            for index: UInt8 in 0...0x7F where index != Reg.b {
                for value: UInt8 in 0...0xFF {
                    cmos.write(register: Reg.b, value: mode)
                    cmos.write(register: index, value: value)
                    _ = cmos.read(register: index)
                }
            }
            cmos.write(register: Reg.b, value: 0x02)
            let now = CivilTime(epochSeconds: cmos.guestTime)
            #expect((1...12).contains(now.month) && (0...23).contains(now.hour))
            #expect((0...9999).contains(now.year))
        }
    }

    @Test("impossible written dates are clamped: BCD 0xFF month is December; 31 February rolls into March")
    func clamping() {
        var cmos = CMOS(clock: { saturday })
        cmos.write(register: Reg.b, value: 0x82)
        cmos.write(register: Reg.month, value: 0xFF)
        #expect(cmos.read(register: Reg.month) == 0x12)
        cmos.write(register: Reg.month, value: 0x02)
        cmos.write(register: Reg.day, value: 0x31)
        cmos.write(register: Reg.b, value: 0x02)
        #expect(cmos.read(register: Reg.month) == 0x03)
        #expect(cmos.read(register: Reg.day) == 0x02, "2024 is a leap year: 31 Feb is 2 Mar")
    }

    @Test("hostClock reads the host's real time")
    func hostClock() {
        let ours = CMOS.hostClock()
        let libc = Int64(time(nil))
        #expect(abs(ours - libc) <= 1)
        #expect(ours > 1_700_000_000, "after November 2023")
    }
}

@Suite("CMOS/RTC on the port bus")
struct CMOSDeviceTests {

    @Test("offset 0 is the index port, 1 the data port; wide accesses use the low byte; other offsets read all ones")
    func ports() {
        let device = CMOSDevice(clock: { saturday })
        #expect(device.portWrite(port: 0x70, offset: 0, width: 1, value: 0x89) == .continue)
        #expect(device.nmiMasked)
        #expect(device.portRead(port: 0x70, offset: 0, width: 1) == 0x89)
        #expect(device.portRead(port: 0x71, offset: 1, width: 1) == 0x24, "year, BCD")
        #expect(device.portRead(port: 0x71, offset: 1, width: 2) == 0xFF24)
        #expect(device.portRead(port: 0x71, offset: 1, width: 4) == 0xFFFF_FF24)
        _ = device.portWrite(port: 0x70, offset: 0, width: 4, value: 0xFFFF_FF0B)
        #expect(!device.nmiMasked)
        _ = device.portWrite(port: 0x71, offset: 1, width: 2, value: 0x1206)
        #expect(device.portRead(port: 0x71, offset: 1, width: 1) == 0x06, "register B took the low byte")
        #expect(device.portRead(port: 0x72, offset: 2, width: 1) == 0xFF)
        #expect(device.portWrite(port: 0x72, offset: 2, width: 1, value: 0) == .continue)
        #expect(device.guestTime == saturday)
        #expect(CMOSDevice.base == 0x70 && CMOSDevice.portCount == 2)
    }

    @Test("Linux's boot-time read (mc146818_avoid_UIP, then mc146818_get_time) gets the host's time in one pass")
    func linuxRead() {
        let device = CMOSDevice(clock: { saturday })
        func cmosRead(_ index: UInt8) -> Int {
            _ = device.portWrite(port: 0x70, offset: 0, width: 1, value: UInt32(index))
            return Int(device.portRead(port: 0x71, offset: 1, width: 1) & 0xFF)
        }
        func bcd(_ value: Int) -> Int { (value >> 4) * 10 + value & 0xF }
        let seconds = cmosRead(0x00)
        #expect(cmosRead(0x0A) & 0x80 == 0, "UIP clear: no retry")
        #expect(cmosRead(0x00) == seconds)
        let minutes = cmosRead(0x02), hours = cmosRead(0x04), day = cmosRead(0x07)
        let month = cmosRead(0x08), year = cmosRead(0x09), century = cmosRead(0x32), control = cmosRead(0x0B)
        #expect(cmosRead(0x0A) & 0x80 == 0)
        #expect(control & 0x04 == 0, "BCD")
        #expect(control & 0x02 != 0, "24-hour, as rtc-cmos requires")
        let time = CivilTime(
            year: bcd(century) * 100 + bcd(year), month: bcd(month), day: bcd(day),
            hour: bcd(hours), minute: bcd(minutes), second: bcd(seconds))
        #expect(time.epochSeconds == saturday)
    }
}
