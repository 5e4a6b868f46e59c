import Testing
import TestSupport
import VisorLoader
import VisorMemory
@testable import VisorLinux

@Suite("Linux loader: placement, entry state and boot data")
struct LinuxLoaderTests {
    static let MiB: UInt64 = 1 << 20

    func load(
        _ kernel: [UInt8], memory: GuestMemory, initrd: [UInt8]? = nil, commandLine: String = "console=ttyS0",
        protocol bootProtocol: LinuxBootProtocol = .linux64, hostDecompression: Bool = true
    ) throws(LinuxBootError) -> LinuxBootPlan {
        try LinuxLoader.load(
            LinuxBootRequest(
                kernel: kernel, initrd: initrd, commandLine: commandLine,
                bootProtocol: bootProtocol, hostDecompression: hostDecompression),
            into: memory, rsdpAddress: 0xE0000)
    }

    @Test func vmlinuxThroughThe64BitProtocol() throws {
        let builder = VmlinuxBuilder()
        let memory = try guestRAM(64 * Self.MiB)
        let plan = try load(builder.bytes(), memory: memory)
        #expect(
            plan.entry.mode
                == .long64(
                    pageTableRoot: 0x9000, gdtBase: 0x1000, gdtLimit: 31,
                    codeSelector: 0x10, dataSelector: 0x18))
        #expect(plan.entry.rip == VmlinuxBuilder.physicalBase)
        #expect(plan.entry.rsi == LinuxLoader.zeroPageAddress)
        // Segments by physical address.
        #expect(try memory.read(builder.text.count, at: VmlinuxBuilder.physicalBase) == builder.text)
        #expect(try memory.read(builder.percpu.count, at: VmlinuxBuilder.physicalBase + 0x30_0000) == builder.percpu)
        // The zero page in guest memory is the one in the plan, pointing at the command line.
        let zeroPage = try #require(plan.zeroPage)
        #expect(try memory.read(4096, at: 0x7000) == zeroPage.bytes)
        #expect(zeroPage.commandLineAddress == 0x20000)
        #expect(try memory.read(14, at: 0x20000) == Array("console=ttyS0\0".utf8))
        #expect(zeroPage.acpiRSDP == 0xE0000)
        #expect(zeroPage.e820 == E820Map.build(for: memory.regions))
        // __BOOT_CS (0x10) is 64-bit code, __BOOT_DS (0x18) flat data.
        #expect(try memory.readUInt64(at: 0x1010) == 0x00AF_9A00_0000_FFFF)
        #expect(try memory.readUInt64(at: 0x1018) == 0x00CF_9200_0000_FFFF)
        // Identity map: PML4[0] -> PDPT, PDPT[3] -> fourth directory, whose last entry maps 4 GiB - 2 MiB.
        #expect(try memory.readUInt64(at: 0x9000) == 0xA003)
        #expect(try memory.readUInt64(at: 0xA018) == 0xE003)
        #expect(try memory.readUInt64(at: 0xE000 + 511 * 8) == (0xFFE0_0000 | 0x83))
    }

    @Test func vmlinuxThroughPVH() throws {
        let memory = try guestRAM(64 * Self.MiB)
        let plan = try load(VmlinuxBuilder().bytes(), memory: memory, initrd: [1, 2, 3], protocol: .pvh)
        #expect(plan.entry.mode == .protected32(gdtBase: 0x1000, gdtLimit: 31, codeSelector: 0x08, dataSelector: 0x18))
        #expect(plan.entry.rip == 0x100_0100)
        #expect(plan.entry.rbx == LinuxLoader.startInfoAddress)
        let info = try #require(plan.startInfo)
        #expect(try memory.read(info.encode(at: 0x6000).count, at: 0x6000) == info.encode(at: 0x6000))
        #expect(try memory.readUInt32(at: 0x6000) == PVHStartInfo.magic)
        #expect(info.initrd?.size == 3)
        #expect(plan.zeroPage == nil)
    }

    @Test func bzImageDecompressedOnTheHost() throws {
        let elf = VmlinuxBuilder().bytes()
        let image = BzImageBuilder.wrapping(elf, codec: .gzip).bytes()
        let memory = try guestRAM(64 * Self.MiB)
        let plan = try load(image, memory: memory)
        #expect(plan.entry.rip == VmlinuxBuilder.physicalBase)
        #expect(plan.loadDescription.hasPrefix("host-decompressed ELF"))
        #expect(try memory.read(VmlinuxBuilder().text.count, at: VmlinuxBuilder.physicalBase) == VmlinuxBuilder().text)
        // The zero page carries the image's own setup header, loader type patched.
        let zeroPage = try #require(plan.zeroPage)
        #expect(zeroPage.bytes[0x1F1] == 4)
        #expect(zeroPage.loaderType == 0xFF)
        #expect(zeroPage.protocolVersion == 0x020F)
    }

    @Test("a prepared request loads the same bytes again and again without decompressing its payload again")
    func preparedKernelIsReused() throws {
        let image = BzImageBuilder.wrapping(VmlinuxBuilder().bytes(), codec: .gzip).bytes()
        var request = LinuxBootRequest(kernel: image, commandLine: "console=ttyS0")
        let fresh = try guestRAM(64 * Self.MiB)
        let unprepared = try LinuxLoader.load(request, into: fresh, rsdpAddress: 0xE0000)
        #expect(unprepared.decompressionMilliseconds > 0)

        try request.prepareKernel()
        #expect(request.isKernelPrepared)
        for _ in 0..<2 {  // as for the boots after two guest resets
            let memory = try guestRAM(64 * Self.MiB)
            let plan = try LinuxLoader.load(request, into: memory, rsdpAddress: 0xE0000)
            #expect(plan.decompressionMilliseconds == 0, "this load decompressed the payload again")
            #expect(plan.kernelRange == unprepared.kernelRange)
            #expect(plan.entry == unprepared.entry)
            #expect(try memory.read(Int(64 * Self.MiB), at: 0) == fresh.read(Int(64 * Self.MiB), at: 0))
        }

        // Another kernel, or another way to boot it, drops the preparation.
        request.hostDecompression = false
        #expect(!request.isKernelPrepared)
        try request.prepareKernel()
        request.kernel = VmlinuxBuilder().bytes()
        #expect(!request.isKernelPrepared)
    }

    @Test func bzImageThatDecompressesItself() throws {
        let builder = BzImageBuilder.wrapping(VmlinuxBuilder().bytes(), codec: .gzip)
        let image = builder.bytes()
        let memory = try guestRAM(64 * Self.MiB)
        let plan = try load(image, memory: memory, hostDecompression: false)
        #expect(plan.entry.rip == 0x100_0000 + 0x200)
        #expect(plan.kernelRange == 0x100_0000..<(0x100_0000 + UInt64(builder.initSize)))
        #expect(try memory.read(image.count - builder.setupSize, at: 0x100_0000) == Array(image[builder.setupSize...]))
        #expect(try memory.readUInt32(at: 0x7000 + 0x214) == 0x100_0000)  // code32_start
        #expect(throws: LinuxBootError.pvhNeedsELF) {
            _ = try load(image, memory: memory, protocol: .pvh, hostDecompression: false)
        }
    }

    /// A file's pref_address near 2^64 once made `address + size` trap (status 132) before
    /// any range check ran; it must be a one-line error, with guest RAM untouched.
    @Test(
        "a self-decompressing kernel whose pref_address ends beyond 4 GiB is refused, not a trap",
        arguments: [UInt64(0xFFFF_FFFF_FFFF_F000), 0xFFFF_FFFF_0000_0000, 0xFFFF_0000])
    func preferredAddressBeyond4GiB(prefAddress: UInt64) throws {
        var builder = BzImageBuilder.wrapping(VmlinuxBuilder().bytes(), codec: .gzip)
        builder.prefAddress = prefAddress
        let memory = try guestRAM(64 * Self.MiB)
        let before = try memory.read(Int(64 * Self.MiB), at: 0)
        do {
            _ = try load(builder.bytes(), memory: memory, hostDecompression: false)
            Issue.record("pref_address 0x\(String(prefAddress, radix: 16)) was accepted")
        } catch {
            guard case .invalidSetupHeader(let why) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(why.contains("beyond 4 GiB"))
        }
        #expect(try memory.read(Int(64 * Self.MiB), at: 0) == before)
    }

    @Test func unknownCodecFallsBackToTheGuestDecompressor() throws {
        var builder = BzImageBuilder()
        builder.payload = Array("not compressed at all".utf8)
        let plan = try load(builder.bytes(), memory: try guestRAM(64 * Self.MiB))
        #expect(plan.entry.rip == 0x100_0200)
        #expect(plan.loadDescription.contains("decompresses itself"))
    }

    @Test func initrdGoesAsHighAsAllowedPageAligned() throws {
        let memory = try guestRAM(64 * Self.MiB)
        let initrd = [UInt8](repeating: 0x42, count: 10_000)
        let plan = try load(VmlinuxBuilder().bytes(), memory: memory, initrd: initrd)
        let range = try #require(plan.initrdRange)
        #expect(range.lowerBound % 4096 == 0)
        #expect(range.lowerBound == (64 * Self.MiB - 10_000) & ~0xFFF)
        #expect(try memory.read(initrd.count, at: range.lowerBound) == initrd)
        #expect(plan.zeroPage?.initrd.address == range.lowerBound)
        #expect(plan.zeroPage?.initrd.size == 10_000)
    }

    @Test func initrdCeilingComesFromTheHeader() throws {
        var builder = BzImageBuilder.wrapping(VmlinuxBuilder().bytes(), codec: .gzip)
        builder.initrdAddrMax = 0x1FF_FFFF  // 32 MiB - 1
        let plan = try load(builder.bytes(), memory: try guestRAM(64 * Self.MiB), initrd: [0])
        #expect(plan.initrdRange?.upperBound ?? .max <= 0x200_0000)
    }

    @Test func failuresLeaveGuestMemoryUntouched() throws {
        let memory = try guestRAM(64 * Self.MiB)
        let before = try memory.read(Int(64 * Self.MiB), at: 0)
        #expect(
            throws: LinuxBootError.initrdTooLarge(
                size: 60 * Self.MiB, available: 64 * Self.MiB - (VmlinuxBuilder.physicalBase + 0x30_1000))
        ) {
            _ = try load(VmlinuxBuilder().bytes(), memory: memory, initrd: [UInt8](repeating: 0, count: Int(60 * Self.MiB)))
        }
        #expect(throws: LinuxBootError.commandLineTooLong(length: 2048, limit: 2047)) {
            _ = try load(VmlinuxBuilder().bytes(), memory: memory, commandLine: String(repeating: "x", count: 2048))
        }
        var noNote = VmlinuxBuilder()
        noNote.notes = []
        #expect(throws: LinuxBootError.noPVHNote) {
            _ = try load(noNote.bytes(), memory: memory, protocol: .pvh)
        }
        #expect(try memory.read(Int(64 * Self.MiB), at: 0) == before)
    }

    @Test func kernelMustFitInLowRAM() throws {
        let memory = try guestRAM(16 * Self.MiB)
        #expect(throws: LinuxBootError.self) {
            _ = try load(VmlinuxBuilder().bytes(), memory: memory)
        }
    }
}
