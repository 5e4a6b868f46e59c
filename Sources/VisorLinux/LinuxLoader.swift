public import VisorLoader
package import VisorMemory

/// How the kernel is entered.
public enum LinuxBootProtocol: String, Sendable, CaseIterable {
    /// The Linux x86 64-bit boot protocol: long mode, identity-mapped page tables, a flat
    /// GDT with __BOOT_CS = 0x10 and __BOOT_DS = 0x18, interrupts off, RSI = zero page.
    case linux64
    /// PVH: 32-bit protected mode with paging off, EBX = `hvm_start_info`, entered at the
    /// kernel's Xen PHYS32_ENTRY note.
    case pvh
}

/// What to boot.
public struct LinuxBootRequest: Sendable {
    /// A bzImage or an x86-64 ELF vmlinux; told apart by content.
    public var kernel: [UInt8] { didSet { prepared = nil } }
    public var initrd: [UInt8]?
    /// The whole command line the kernel gets.
    public var commandLine: String
    public var bootProtocol: LinuxBootProtocol { didSet { prepared = nil } }
    /// Decompress a bzImage's payload on the host and boot the ELF inside it, so the guest
    /// skips its decompressor. When off, or when the codec is not one SwiftVisor decodes,
    /// the protected-mode kernel is entered at its 64-bit entry and decompresses itself.
    public var hostDecompression: Bool { didSet { prepared = nil } }
    /// The kernel as `prepareKernel()` left it, for every later load of this request.
    var prepared: PreparedKernel?

    public init(
        kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "",
        bootProtocol: LinuxBootProtocol = .linux64, hostDecompression: Bool = true
    ) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.bootProtocol = bootProtocol
        self.hostDecompression = hostDecompression
    }

    /// Detects and prepares the kernel now, decompressing a bzImage's payload if the host
    /// is to, and keeps the result: every machine built from this request afterwards (a new
    /// boot after each guest reset, say) loads it without decoding the file again. Setting
    /// `kernel`, `bootProtocol` or `hostDecompression` drops it.
    public mutating func prepareKernel() throws(LinuxBootError) {
        let image = try KernelImage.detect(kernel)
        prepared = try PreparedKernel.prepare(image, bytes: kernel, request: self)
    }

    /// Whether `prepareKernel()` has run since the kernel or how to boot it last changed.
    public var isKernelPrepared: Bool { prepared != nil }
}

/// What the loader did: the entry state and, for traces and tests, where everything went.
public struct LinuxBootPlan: Sendable {
    public var entry: EntryState
    /// The kernel as found: "bzImage (protocol 2.15, gzip payload)" or "ELF vmlinux".
    public var kernelDescription: String
    /// How it is booted: "host-decompressed ELF", "ELF", "protected-mode kernel (decompresses itself)".
    public var loadDescription: String
    /// Guest-physical RAM the kernel may use from its load address (image plus init_size).
    public var kernelRange: Range<UInt64>
    public var initrdRange: Range<UInt64>?
    public var commandLine: String
    public var memoryMap: [E820Entry]
    /// Set for the 64-bit protocol.
    package var zeroPage: ZeroPage?
    /// Set for PVH.
    package var startInfo: PVHStartInfo?
    /// Milliseconds this load spent decompressing on the host: 0 if it did not, or if the
    /// request's kernel was prepared beforehand (`LinuxBootRequest.prepareKernel()`).
    public var decompressionMilliseconds: Double
}

/// Loads a Linux kernel into guest RAM and builds its boot-time data.
///
/// Low-memory layout (all below the EBDA, so inside usable low RAM the kernel copies from
/// before it reuses it):
///
/// | address  | what |
/// |----------|------|
/// | 0x1000   | GDT: null, 0x08 32-bit code, 0x10 64-bit code, 0x18 data |
/// | 0x5000   | initial stack top (the kernel sets its own at once) |
/// | 0x6000   | PVH `hvm_start_info`, module list, memory map |
/// | 0x7000   | zero page (`boot_params`) |
/// | 0x9000   | PML4, then PDPT at 0xA000 and four page directories at 0xB000-0xEFFF: the first 4 GiB identity-mapped with 2 MiB pages |
/// | 0x20000  | command line (up to 64 KiB) |
/// | 0xE0000  | ACPI tables (written by the caller; reserved in the e820 map) |
package enum LinuxLoader {
    package static let gdtAddress: UInt64 = 0x1000
    package static let gdtLimit: UInt16 = 4 * 8 - 1
    package static let code32Selector: UInt16 = 0x08
    package static let bootCodeSelector: UInt16 = 0x10
    package static let bootDataSelector: UInt16 = 0x18
    package static let stackTop: UInt64 = 0x5000
    package static let startInfoAddress: UInt64 = 0x6000
    package static let zeroPageAddress: UInt64 = 0x7000
    package static let pml4Address: UInt64 = 0x9000
    package static let pdptAddress: UInt64 = 0xA000
    package static let firstPageDirectory: UInt64 = 0xB000
    package static let commandLineAddress: UInt64 = 0x2_0000
    package static let commandLineCeiling = 0x1_0000
    /// Where a bzImage's protected-mode kernel goes when its header prefers nothing usable.
    package static let defaultKernelAddress: UInt64 = 0x100_0000
    /// The largest decompressed kernel accepted from a payload whose header does not bound it.
    package static let decompressionLimit = 512 << 20

    /// Loads `request` into `memory` and returns the entry state. Nothing is written to guest
    /// memory until every check has passed, so a failure leaves RAM as it was.
    package static func load(
        _ request: LinuxBootRequest, into memory: GuestMemory,
        rsdpAddress: UInt64
    ) throws(LinuxBootError) -> LinuxBootPlan {
        guard let low = memory.regions.first(where: { $0.start == 0 }),
            low.end >= E820Map.highMemoryStart
        else {
            throw .memoryTooSmall(needed: E820Map.highMemoryStart, have: memory.totalSize)
        }
        var kernel: PreparedKernel
        if let prepared = request.prepared {
            kernel = prepared
            kernel.decompressionMilliseconds = 0  // done before this load
        } else {
            let image = try KernelImage.detect(request.kernel)
            kernel = try PreparedKernel.prepare(image, bytes: request.kernel, request: request)
        }

        guard kernel.range.upperBound <= low.end else {
            throw .memoryTooSmall(needed: kernel.range.upperBound, have: memory.totalSize)
        }

        // The command line, bounded by what the kernel accepts.
        let commandLine = Array(request.commandLine.utf8)
        let limit = min(kernel.commandLineLimit, commandLineCeiling - 1)
        guard commandLine.count <= limit else { throw .commandLineTooLong(length: commandLine.count, limit: limit) }
        guard !commandLine.contains(0) else { throw .malformed("the command line contains a NUL byte") }

        // The initrd: page-aligned, as high as the kernel allows, above the kernel.
        var initrdRange: Range<UInt64>?
        if let initrd = request.initrd {
            let ceiling = min(low.end, kernel.initrdCeiling)
            let floor = (kernel.range.upperBound + 0xFFF) & ~0xFFF
            let size = UInt64(initrd.count)
            let available = ceiling > floor ? ceiling - floor : 0
            guard size <= available, (ceiling - size) & ~0xFFF >= floor else {
                throw .initrdTooLarge(size: size, available: available)
            }
            let start = (ceiling - size) & ~0xFFF
            initrdRange = start..<(start + size)
        }

        var pvhEntry: UInt32 = 0
        if request.bootProtocol == .pvh {
            guard let entry = kernel.pvhEntry else { throw .noPVHNote }
            pvhEntry = entry
        }

        let map = E820Map.build(for: memory.regions)
        var plan = LinuxBootPlan(
            entry: EntryState(mode: .real(segment: 0), rip: 0, rsp: 0),
            kernelDescription: kernel.description, loadDescription: kernel.loadDescription,
            kernelRange: kernel.range, initrdRange: initrdRange,
            commandLine: request.commandLine, memoryMap: map, zeroPage: nil, startInfo: nil,
            decompressionMilliseconds: kernel.decompressionMilliseconds)

        try kernel.load(into: memory)
        do throws(GuestMemoryError) {
            if let initrd = request.initrd, let range = initrdRange {
                try memory.write(initrd, at: range.lowerBound)
            }
            try memory.write(commandLine + [0], at: commandLineAddress)
            try writeGDTAndPageTables(into: memory)
            switch request.bootProtocol {
            case .linux64:
                var zeroPage = ZeroPage(setupHeader: kernel.setupHeader)
                zeroPage.setCommandLine(at: commandLineAddress)
                if let range = initrdRange { zeroPage.setInitrd(at: range.lowerBound, size: UInt64(range.count)) }
                if let start = kernel.code32Start { zeroPage.setCode32Start(start) }
                zeroPage.setACPIRSDP(rsdpAddress)
                zeroPage.setE820(map)
                try memory.write(zeroPage.bytes, at: zeroPageAddress)
                plan.zeroPage = zeroPage
                plan.entry = EntryState(
                    mode: .long64(
                        pageTableRoot: pml4Address, gdtBase: gdtAddress, gdtLimit: gdtLimit,
                        codeSelector: bootCodeSelector, dataSelector: bootDataSelector),
                    rip: kernel.entry64, rsp: stackTop, rsi: zeroPageAddress)
            case .pvh:
                let info = PVHStartInfo(
                    commandLineAddress: commandLineAddress, rsdpAddress: rsdpAddress,
                    initrd: initrdRange.map { ($0.lowerBound, UInt64($0.count)) }, memoryMap: map)
                try memory.write(info.encode(at: startInfoAddress), at: startInfoAddress)
                plan.startInfo = info
                plan.entry = EntryState(
                    mode: .protected32(
                        gdtBase: gdtAddress, gdtLimit: gdtLimit,
                        codeSelector: code32Selector, dataSelector: bootDataSelector),
                    rip: UInt64(pvhEntry), rsp: stackTop, rbx: startInfoAddress)
            }
        } catch {
            // Every address above was checked against RAM first; this is a loader bug.
            throw .malformed("internal: a checked write to guest memory failed (\(error))")
        }
        return plan
    }

    /// GDT (null, 32-bit code, 64-bit code, data; all flat) and page tables identity-mapping
    /// the first 4 GiB with 2 MiB pages.
    static func writeGDTAndPageTables(into memory: GuestMemory) throws(GuestMemoryError) {
        try memory.fill(0, count: 0x1000, at: gdtAddress)
        try memory.write(UInt64(0x00CF_9A00_0000_FFFF), at: gdtAddress + 0x08)
        try memory.write(UInt64(0x00AF_9A00_0000_FFFF), at: gdtAddress + 0x10)
        try memory.write(UInt64(0x00CF_9200_0000_FFFF), at: gdtAddress + 0x18)
        let flags: UInt64 = 0x3  // present | writable
        try memory.fill(0, count: 0x2000, at: pml4Address)
        try memory.write(pdptAddress | flags, at: pml4Address)
        for gib in UInt64(0)..<4 {
            let directory = firstPageDirectory + gib * 0x1000
            try memory.write(directory | flags, at: pdptAddress + gib * 8)
            for entry in UInt64(0)..<512 {
                try memory.write((gib << 30 | entry << 21) | flags | 0x80, at: directory + entry * 8)
            }
        }
    }
}

extension LinuxBootPlan {
    /// One line per decision, for `--trace`.
    public var summary: [String] {
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        var lines = [
            "linux: kernel \(kernelDescription), loaded as \(loadDescription) at \(hex(kernelRange.lowerBound))-\(hex(kernelRange.upperBound))"
        ]
        if decompressionMilliseconds > 0 {
            let tenths = Int((decompressionMilliseconds * 10).rounded())
            lines.append("linux: payload decompressed on the host in \(tenths / 10).\(tenths % 10) ms")
        }
        switch entry.mode {
        case .protected32:
            lines.append("linux: PVH entry at \(hex(entry.rip)) (32-bit, paging off), start info at \(hex(entry.rbx))")
        default: lines.append("linux: 64-bit entry at \(hex(entry.rip)), zero page at \(hex(entry.rsi))")
        }
        if let initrdRange {
            lines.append(
                "linux: initrd at \(hex(initrdRange.lowerBound))-\(hex(initrdRange.upperBound)) (\(initrdRange.count) bytes)")
        }
        lines.append("linux: command line: \(commandLine)")
        for entry in memoryMap { lines.append("linux: e820 \(entry)") }
        return lines
    }
}
