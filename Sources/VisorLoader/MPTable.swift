package import VisorMemory

/// An Intel MultiProcessor Specification 1.4 table: the floating pointer and a
/// configuration table listing the processors, the ISA bus, the IOAPIC and the interrupt
/// assignments, so that a guest can discover its CPUs and the IOAPIC the way PC firmware
/// reports them.
package enum MPTable {
    /// The floating pointer goes in the last KiB of base memory, where guests search first.
    package static let floatingPointerAddress: UInt64 = 0x9FC00
    /// The configuration table (its size grows with the vCPU count).
    package static let configTableAddress: UInt64 = 0x4000
    /// Room for the configuration table: up to 0x8000, where the page tables start.
    package static let configTableLimit = 0x4000
    package static let localAPICAddress: UInt32 = 0xFEE0_0000
    package static let ioAPICAddress: UInt32 = 0xFEC0_0000
    /// The most vCPUs the table describes: xAPIC IDs are 8 bits, 0xFF is the broadcast
    /// address and the IOAPIC takes the ID after the last vCPU, so 254.
    package static let maxProcessors = 254

    static let headerSize = 44

    /// The floating pointer and configuration table for `processors` vCPUs with APIC IDs
    /// 0..<processors (0 is the bootstrap processor), as bytes to place at
    /// `floatingPointerAddress` and `configTableAddress`.
    package static func build(processors: Int, cpuSignature: UInt32 = 0x600, featureFlags: UInt32 = 0x201)
        -> (floatingPointer: [UInt8], configTable: [UInt8])
    {
        let ioAPICID = UInt8(truncatingIfNeeded: processors)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for id in 0..<processors {
            entries += [0, UInt8(truncatingIfNeeded: id), 0x14, id == 0 ? 0x03 : 0x01]  // processor: EN, BP for 0
            entries += le32(cpuSignature) + le32(featureFlags) + Array(repeating: 0, count: 8)
            count += 1
        }
        entries += [1, 0] + Array("ISA   ".utf8)  // bus 0: ISA
        count += 1
        entries += [2, ioAPICID, 0x11, 0x01] + le32(ioAPICAddress)  // IOAPIC, enabled
        count += 1
        for irq in 0..<16 {  // ISA IRQ n -> IOAPIC pin n, bus-default polarity and trigger
            entries += [3, 0, 0, 0, 0, UInt8(irq), ioAPICID, UInt8(irq)]
            count += 1
        }
        entries += [4, 3, 0, 0, 0, 0, 0xFF, 0]  // ExtINT -> LINT0 of every local APIC
        entries += [4, 1, 0, 0, 0, 0, 0xFF, 1]  // NMI -> LINT1 of every local APIC
        count += 2

        var table = Array("PCMP".utf8)
        table += le16(UInt16(headerSize + entries.count))
        table += [4, 0]  // spec revision 1.4, checksum (below)
        table += Array("SWFTVISR".utf8) + Array("SwiftVisor  ".utf8)
        table += le32(0) + le16(0)  // no OEM table
        table += le16(count) + le32(localAPICAddress)
        table += le16(0) + [0, 0]  // no extended table
        table += entries
        table[7] = checksum(table)

        var pointer = Array("_MP_".utf8) + le32(UInt32(configTableAddress))
        pointer += [1, 4, 0, 0, 0, 0, 0, 0]  // 16 bytes, revision 1.4, checksum, feature bytes 0
        pointer[10] = checksum(pointer)
        return (pointer, table)
    }

    /// Writes the table for `processors` vCPUs into guest memory.
    package static func write(processors: Int, into memory: GuestMemory) throws(LoaderError) {
        guard processors >= 1, processors <= maxProcessors else {
            throw .malformed("an MP table holds 1 to \(maxProcessors) processors, not \(processors)")
        }
        let (pointer, table) = build(processors: processors)
        do {
            try memory.write(pointer, at: floatingPointerAddress)
            try memory.write(table, at: configTableAddress)
        } catch {
            throw .memoryTooSmall(needed: floatingPointerAddress + 16, have: memory.totalSize)
        }
    }

    /// The byte that makes `bytes` sum to zero modulo 256.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) } }
}
