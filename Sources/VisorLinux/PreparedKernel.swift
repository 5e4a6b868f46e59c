import VisorHost
import VisorLoader
import VisorMemory

/// A kernel image turned into what to copy where: checked in full before anything is
/// written to guest memory.
struct PreparedKernel {
    enum Payload {
        /// An ELF (a vmlinux, or the one inside a bzImage) loaded by physical address.
        case elf(ELFKernel)
        /// A bzImage's protected-mode kernel, copied to `address`; it decompresses itself.
        case protectedMode(ArraySlice<UInt8>, address: UInt64)
    }
    var payload: Payload
    /// RAM the kernel occupies from its load address.
    var range: Range<UInt64>
    var entry64: UInt64
    var pvhEntry: UInt32?
    /// The bzImage's setup header bytes, or nil for a bare vmlinux.
    var setupHeader: [UInt8]?
    var code32Start: UInt32?
    var commandLineLimit: Int
    /// One past the highest address the initrd may use.
    var initrdCeiling: UInt64
    var description: String
    var loadDescription: String
    var decompressionMilliseconds: Double = 0

    /// The 64-bit entry of a bzImage's protected-mode kernel, from its load address.
    static let startup64Offset: UInt64 = 0x200
    /// COMMAND_LINE_SIZE less the terminating NUL, for kernels without a setup header.
    static let vmlinuxCommandLineLimit = 2047

    static func prepare(_ image: KernelImage, bytes: [UInt8], request: LinuxBootRequest) throws(LinuxBootError) -> PreparedKernel
    {
        switch image {
        case .elf(let kernel):
            guard let entry = kernel.physicalEntry else { throw .malformed("the ELF entry point is in no loadable segment") }
            return PreparedKernel(
                payload: .elf(kernel), range: kernel.physicalRange, entry64: entry, pvhEntry: kernel.pvhEntry,
                setupHeader: nil, code32Start: nil, commandLineLimit: vmlinuxCommandLineLimit,
                initrdCeiling: 0x8000_0000,
                description: "ELF vmlinux" + (kernel.pvhEntry == nil ? "" : " with a PVH entry"),
                loadDescription: "ELF")

        case .bzImage(let bz):
            let header = bz.header
            let description =
                "bzImage (protocol \(header.versionString), \(bz.codec.map { "\($0)" } ?? "unknown") payload"
                + (bz.kernelVersion.map { ", Linux \($0.prefix { $0 != " " })" } ?? "") + ")"
            let commandLineLimit = Int(header.commandLineSize)
            let initrdCeiling = UInt64(header.initrdAddressMax) + 1
            if request.hostDecompression, bz.canDecompressOnHost {
                let limit = header.initSize > 0 ? min(Int(header.initSize), Decompressor.defaultLimit) : Decompressor.defaultLimit
                let start = monotonicMilliseconds()
                let kernel = try bz.decompressedELF(limit: limit)
                let elapsed = monotonicMilliseconds() - start
                guard let entry = kernel.physicalEntry else {
                    throw .malformed("the decompressed kernel's entry point is in no loadable segment")
                }
                return PreparedKernel(
                    payload: .elf(kernel), range: kernel.physicalRange, entry64: entry, pvhEntry: kernel.pvhEntry,
                    setupHeader: header.rawBytes, code32Start: nil, commandLineLimit: commandLineLimit,
                    initrdCeiling: initrdCeiling, description: description,
                    loadDescription: "host-decompressed ELF (\(kernel.bytes.count) bytes)",
                    decompressionMilliseconds: elapsed)
            }
            if request.bootProtocol == .pvh { throw .pvhNeedsELF }
            // Relocatable kernels may go anywhere aligned; others only where they were built
            // for, which the header gives as pref_address. Both are at pref_address here.
            let preferred = UInt64(header.preferredAddress)
            let address = preferred >= 0x10_0000 ? preferred : 0x100_0000
            let size = max(UInt64(header.initSize), UInt64(bz.kernel.count))
            // pref_address is the file's to choose: it may be anywhere up to 2^64 - 1. The
            // protected-mode kernel runs from a 32-bit code32_start, so all of it must lie
            // below 4 GiB; checked without an arithmetic trap.
            let (end, overflow) = address.addingReportingOverflow(size)
            guard !overflow, end <= 1 << 32 else {
                throw .invalidSetupHeader(
                    "pref_address 0x\(String(address, radix: 16)) with \(size) bytes of kernel ends beyond 4 GiB; "
                        + "a kernel that decompresses itself must load below 4 GiB (host decompression lifts this)")
            }
            return PreparedKernel(
                payload: .protectedMode(bz.kernel, address: address), range: address..<end,
                entry64: address + startup64Offset, pvhEntry: nil, setupHeader: header.rawBytes,
                code32Start: UInt32(truncatingIfNeeded: address), commandLineLimit: commandLineLimit,
                initrdCeiling: initrdCeiling, description: description,
                loadDescription: "protected-mode kernel that decompresses itself"
                    + (bz.canDecompressOnHost ? "" : " (its codec is not one the host decodes)"))
        }
    }

    /// Copies the kernel into guest RAM (the caller checked `range` against RAM).
    func load(into memory: GuestMemory) throws(LinuxBootError) {
        switch payload {
        case .elf(let kernel):
            _ = try kernel.load(into: memory)
        case .protectedMode(let bytes, let address):
            do { try memory.write(bytes, at: address) } catch {
                throw .memoryTooSmall(needed: address + UInt64(bytes.count), have: memory.totalSize)
            }
        }
    }
}

func monotonicMilliseconds() -> Double {
    Double(HostIO.monotonicNanoseconds()) / 1e6
}
