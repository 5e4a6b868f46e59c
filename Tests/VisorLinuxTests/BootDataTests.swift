import Testing
import VisorMemory
@testable import VisorLinux

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// The guest RAM layout the machine uses: RAM to 3 GiB, then the rest from 4 GiB.
private func regions(_ size: UInt64) -> [GuestRegion] {
    var result = [GuestRegion(start: 0, size: min(size, 3 * GiB))]
    if size > 3 * GiB { result.append(GuestRegion(start: 4 * GiB, size: size - 3 * GiB)) }
    return result
}

@Suite("e820 map")
struct E820Tests {
    @Test func sixtyFourMiB() {
        let map = E820Map.build(for: regions(64 * MiB))
        #expect(
            map == [
                E820Entry(address: 0, size: 0x9FC00, kind: .ram),
                E820Entry(address: 0x9FC00, size: 0x400, kind: .reserved),
                E820Entry(address: 0xE0000, size: 0x20000, kind: .reserved),
                E820Entry(address: MiB, size: 63 * MiB, kind: .ram),
            ])
    }

    @Test func threeGiBEndsAtTheHole() {
        let map = E820Map.build(for: regions(3 * GiB))
        #expect(map.last == E820Entry(address: MiB, size: 3 * GiB - MiB, kind: .ram))
        #expect(map.allSatisfy { $0.end <= 3 * GiB })
    }

    @Test func eightGiBContinuesAboveFourGiB() {
        let map = E820Map.build(for: regions(8 * GiB))
        #expect(map.count == 5)
        #expect(map[3] == E820Entry(address: MiB, size: 3 * GiB - MiB, kind: .ram))
        #expect(map[4] == E820Entry(address: 4 * GiB, size: 5 * GiB, kind: .ram))
        // Usable RAM adds up to what the guest has, less the reserved and unlisted low areas.
        let ram = map.filter { $0.kind == .ram }.reduce(0) { $0 + $1.size }
        #expect(ram == 8 * GiB - (MiB - 0x9FC00))
        // Nothing usable in the 32-bit device hole.
        #expect(!map.contains { $0.kind == .ram && $0.address < 4 * GiB && $0.end > 3 * GiB })
    }

    @Test func entriesDoNotOverlapAndAreSorted() {
        for size in [2 * MiB, 64 * MiB, 3 * GiB, 3 * GiB + 4096, 8 * GiB] {
            let map = E820Map.build(for: regions(size))
            for (a, b) in zip(map, map.dropFirst()) { #expect(a.end <= b.address) }
        }
    }
}

@Suite("Zero page")
struct ZeroPageTests {
    @Test func builtHeaderForAVmlinux() {
        var page = ZeroPage(setupHeader: nil)
        page.setCommandLine(at: 0x20000)
        page.setInitrd(at: 0x1_2345_6000, size: 0x1_0000_0001)
        page.setACPIRSDP(0xE0000)
        page.setE820(E820Map.build(for: regions(64 * MiB)))
        let b = page.bytes
        #expect(b.count == 4096)
        #expect(b[0x1FE] == 0x55 && b[0x1FF] == 0xAA)
        #expect(Array(b[0x202..<0x206]) == Array("HdrS".utf8))
        #expect(page.protocolVersion == 0x020F)
        #expect(page.loaderType == 0xFF)
        #expect(b[0x211] & 1 == 1)  // LOADED_HIGH
        #expect(page.commandLineAddress == 0x20000)
        #expect(page.commandLineLimit == 2047)
        #expect(page.initrd.address == 0x1_2345_6000 && page.initrd.size == 0x1_0000_0001)
        // ramdisk_image / ramdisk_size hold the low halves, ext_* the high halves.
        #expect(Array(b[0x218..<0x21C]) == [0x00, 0x60, 0x45, 0x23])
        #expect(Array(b[0xC0..<0xC4]) == [1, 0, 0, 0])
        #expect(Array(b[0xC4..<0xC8]) == [1, 0, 0, 0])
        #expect(page.acpiRSDP == 0xE0000)
        #expect(b[0x1E8] == 4)
        #expect(page.e820 == E820Map.build(for: regions(64 * MiB)))
        // The e820 table starts at 0x2D0 with 20-byte entries.
        #expect(Array(b[0x2D0 + 20 + 16..<0x2D0 + 20 + 20]) == [2, 0, 0, 0])
    }

    @Test func setupHeaderIsCopiedVerbatimThenPatched() {
        // A header as a bzImage carries it, from 0x1F1: setup_sects 0x1F, protocol 2.15.
        var header = [UInt8](repeating: 0, count: 0x202 + 0x7B - 0x1F1)
        header[0] = 0x1F
        header[0x1FE - 0x1F1] = 0x55; header[0x1FF - 0x1F1] = 0xAA
        header.replaceSubrange((0x202 - 0x1F1)..<(0x206 - 0x1F1), with: Array("HdrS".utf8))
        header[0x206 - 0x1F1] = 0x0F; header[0x207 - 0x1F1] = 0x02
        header[0x210 - 0x1F1] = 0x00  // type_of_loader: replaced by 0xFF
        header[0x238 - 0x1F1] = 0xFF; header[0x239 - 0x1F1] = 0x07  // cmdline_size 2047
        let page = ZeroPage(setupHeader: header)
        #expect(page.bytes[0x1F1] == 0x1F)
        #expect(page.protocolVersion == 0x020F)
        #expect(page.loaderType == 0xFF)
        #expect(page.commandLineLimit == 2047)
        #expect(page.bytes[0x1FA] == 0xFF && page.bytes[0x1FB] == 0xFF)  // vid_mode normal
    }

    @Test func oversizedHeaderCannotReachTheE820Table() {
        let page = ZeroPage(setupHeader: [UInt8](repeating: 0xEE, count: 4096))
        #expect(page.bytes[0x2D0] == 0)
        #expect(page.bytes[0x2CF] == 0xEE)
    }
}

@Suite("PVH start info")
struct PVHStartInfoTests {
    @Test func layout() {
        let map = E820Map.build(for: regions(64 * MiB))
        let info = PVHStartInfo(
            commandLineAddress: 0x20000, rsdpAddress: 0xE0000,
            initrd: (0x3F00000, 0x12345), memoryMap: map)
        let b = info.encode(at: 0x6000)
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << ($1 * 8) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << ($1 * 8) } }
        #expect(u32(0) == 0x336E_C578)
        #expect(u32(4) == 1)
        #expect(u32(12) == 1)  // one module
        #expect(u64(16) == 0x6040)  // modlist
        #expect(u64(24) == 0x20000)
        #expect(u64(32) == 0xE0000)
        #expect(u64(40) == 0x6080)  // memmap
        #expect(u32(48) == UInt32(map.count))
        #expect(u64(64) == 0x3F00000 && u64(72) == 0x12345)
        #expect(b.count == 128 + 24 * map.count)
        for (i, entry) in map.enumerated() {
            #expect(u64(128 + 24 * i) == entry.address)
            #expect(u64(136 + 24 * i) == entry.size)
            #expect(u32(144 + 24 * i) == entry.kind.rawValue)
        }
    }

    @Test func noInitrdMeansNoModules() {
        let info = PVHStartInfo(commandLineAddress: 0x20000, rsdpAddress: 0, initrd: nil, memoryMap: [])
        let b = info.encode(at: 0x6000)
        #expect(b[12] == 0)
        #expect(b[16..<24].allSatisfy { $0 == 0 })
    }
}
