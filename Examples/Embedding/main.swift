// An embedding program: SwiftVisor as a library, with a port device, an MMIO device and a
// hypercall of its own. Run it with `swift run swiftvisor-example`.
//
// It boots two of the built-in guests:
// - pio_loop, which writes port 0x510 from ring 3 a thousand times: our PortDevice counts;
// - mmio_widths, which writes and reads 0xD0000000 at every width: our MMIODevice answers.
import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests

/// Counts writes to its port; an IN returns the count so far.
final class WriteCounter: PortDevice {
    let writes = Atomic<Int>(0)

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        UInt32(truncatingIfNeeded: writes.load(ordering: .relaxed))
    }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        writes.add(1, ordering: .relaxed)
        return .continue
    }
}

/// A 4 KiB MMIO region that logs every write and answers reads with a pattern that shows
/// the offset and width it was asked for.
final class ScratchRegisters: MMIODevice {
    let log = Mutex<[String]>([])

    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        // 0xA0 + offset in every byte, so the guest can see which register it read.
        UInt64(0xA0 &+ UInt8(truncatingIfNeeded: offset)) &* 0x0101_0101_0101_0101
    }

    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        log.withLock { $0.append("write \(width) bytes at +0x\(String(offset, radix: 16)): 0x\(String(value, radix: 16))") }
        return .continue
    }
}

func run(_ name: String, _ configure: (inout MachineConfiguration) throws -> Void) throws -> RunReport {
    var config = MachineConfiguration(guest: .elf(GuestImages.named(name)!))
    config.collectStatistics = true
    try configure(&config)
    let machine = try Machine(config)
    let report = try machine.run()
    print("\(name): \(report.outcome)")
    if let diagnostic = report.diagnostic { print(diagnostic) }
    return report
}

do {
    let counter = WriteCounter()
    let pio = try run("pio_loop") { config in
        config.commandLine = "1000"
        config.portDevices = [.init(name: "counter", range: try PortRange(base: 0x510, count: 1), device: counter)]
        // A hypercall of our own, number 0x100: returns its first argument doubled.
        config.hypercallHandlers[0x100] = { request in .value(request.arguments[0] &* 2) }
    }
    print("  the counter saw \(counter.writes.load(ordering: .relaxed)) writes")
    print(
        "  exits by kind: "
            + (pio.statistics.map { stats in
                ExitKind.allCases.filter { stats.count($0) > 0 }.map { "\($0)=\(stats.count($0))" }.joined(separator: " ")
            } ?? ""))

    let registers = ScratchRegisters()
    _ = try run("mmio_widths") { config in
        config.mmioDevices = [
            .init(
                name: "scratch", range: try MMIORange(start: 0xD000_0000, size: 0x1000),
                device: registers)
        ]
    }
    for line in registers.log.withLock({ $0 }) { print("  " + line) }
} catch {
    print("error: \(error)")
    exit(1)
}
