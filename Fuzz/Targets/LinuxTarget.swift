// The Linux loader end to end: detect, prepare (with or without host decompression), load.
import FuzzDeviceTargets
import VisorLinux
import VisorMemory

/// Guest RAM for the Linux target: 1 MiB of low memory and 1 MiB above it, the least the
/// loader accepts that still holds a small kernel at 1 MiB.
let linuxRAMSize = 2 << 20

/// The first byte holds flags: bit 0 host decompression, bit 1 PVH instead of the 64-bit
/// boot protocol, bit 2 an initrd. Then a command-line length byte (0...63) and the command
/// line, an initrd length (two bytes, when bit 2 is set) and the initrd; the rest is the kernel.
///
/// Checks: on success guest RAM changes only inside the ranges the plan names (kernel,
/// initrd) and the loader's fixed boot-data pages (GDT, PVH start info, zero page, page
/// tables, command line); on an error it does not change at all.
func fuzzLinux(_ data: [UInt8]) {
    var input = ByteReader(data)
    let flags = input.byte()
    let commandLineBytes = (0..<Int(input.byte() & 63)).map { _ in input.byte() }
    let initrd: [UInt8]? = flags & 4 == 0 ? nil : (0..<Int(input.uint16())).map { _ in input.byte() }
    let kernel = input.rest()
    let request = LinuxBootRequest(
        kernel: kernel, initrd: initrd, commandLine: String(decoding: commandLineBytes, as: UTF8.self),
        bootProtocol: flags & 2 == 0 ? .linux64 : .pvh, hostDecompression: flags & 1 != 0)

    let (memory, before) = patternedRAM(size: linuxRAMSize)
    let plan: LinuxBootPlan
    do {
        plan = try LinuxLoader.load(request, into: memory, rsdpAddress: 0xE0000)
    } catch {
        precondition(snapshot(memory, size: linuxRAMSize) == before, "Linux: a failed load changed guest RAM (\(error))")
        return
    }
    var allowed: [Range<UInt64>] = [
        LinuxLoader.gdtAddress..<(LinuxLoader.gdtAddress + 0x1000),
        LinuxLoader.startInfoAddress..<(LinuxLoader.zeroPageAddress + 0x1000),
        LinuxLoader.pml4Address..<(LinuxLoader.firstPageDirectory + 4 * 0x1000),
        LinuxLoader.commandLineAddress..<(LinuxLoader.commandLineAddress + UInt64(plan.commandLine.utf8.count) + 1),
        plan.kernelRange,
    ]
    if let range = plan.initrdRange { allowed.append(range) }
    let after = snapshot(memory, size: linuxRAMSize)
    for address in after.indices where after[address] != before[address] {
        let a = UInt64(address)
        precondition(
            allowed.contains { $0.contains(a) },
            "Linux: guest RAM changed at 0x\(String(address, radix: 16)), outside the plan's ranges")
    }
}
