public import VisorLoader

/// Everything that can go wrong on the way from the user's kernel file to a guest ready to
/// boot Linux. Each message is one line that says what is wrong and, where there is
/// something to do about it, what to do.
///
/// New cases go under the `MARK` of their stage, each with its message in `description`.
public enum LinuxBootError: Error, Equatable, CustomStringConvertible {
    // MARK: The kernel file

    /// Neither a bzImage (no `HdrS` setup header) nor an ELF file; `magic` is the first
    /// bytes of the file, for the message.
    case notAKernel(magic: [UInt8])
    /// The file ends before `what`, which needs `need` bytes where the file has `have`.
    case truncated(what: String, need: UInt64, have: UInt64)
    /// The setup header is present but inconsistent (bad boot flag, jump or header length).
    case invalidSetupHeader(String)
    /// The boot protocol is older than SwiftVisor supports. Versions are `0xMMmm`.
    case protocolTooOld(version: UInt16, minimum: UInt16)
    /// `loadflags` lacks LOADED_HIGH: a zImage, whose kernel loads at 0x10000.
    case notLoadedHigh
    /// `xloadflags` lacks XLF_KERNEL_64: the kernel has no 64-bit entry point.
    case no64BitEntry
    /// `kernel_alignment` of a relocatable kernel is not a power of two.
    case invalidKernelAlignment(UInt32)

    // MARK: The compressed payload inside a bzImage

    /// The payload starts with no magic number SwiftVisor knows; `magic` is its first bytes.
    case unknownCompression(magic: [UInt8])
    /// A codec SwiftVisor recognises but does not decompress on the host (bzip2, LZO).
    case unsupportedCompression(CompressionCodec)
    /// The codec's library rejected the payload; `reason` is its message.
    case corruptPayload(codec: CompressionCodec, reason: String)
    /// The payload decompresses to more than `limit` bytes.
    case decompressedTooLarge(codec: CompressionCodec, limit: Int)
    /// The payload expands to more than `ratio` times its size, which no kernel does.
    case decompressionBomb(codec: CompressionCodec, payloadSize: Int, ratio: Int)
    /// The payload decompressed, but what came out is not an ELF file.
    case payloadNotELF(magic: [UInt8])

    // MARK: The ELF kernel (vmlinux, or the payload of a bzImage)

    /// The ELF parser or the segment checks refused the kernel.
    case elf(LoaderError)

    // MARK: Boot set-up: initrd, command line, entry protocol, memory, files

    /// The initrd of `size` bytes does not fit in the `available` bytes of RAM it may use.
    case initrdTooLarge(size: UInt64, available: UInt64)
    /// The command line (without its NUL) is longer than the kernel accepts.
    case commandLineTooLong(length: Int, limit: Int)
    /// PVH boot was asked of a kernel without the Xen PHYS32_ENTRY ELF note.
    case noPVHNote
    /// PVH asked of a bzImage that is to decompress itself: PVH enters the ELF inside.
    case pvhNeedsELF
    /// Guest RAM is too small for the kernel and its boot data.
    case memoryTooSmall(needed: UInt64, have: UInt64)
    /// A file could not be read.
    case file(path: String, reason: String)
    /// Something the loader should have ruled out happened anyway; `what` says what.
    case malformed(String)

    public var description: String {
        switch self {
        case .notAKernel(let magic):
            "not a Linux kernel: neither a bzImage (no HdrS setup header) nor an ELF file (first bytes \(hexBytes(magic))); pass a bzImage such as /boot/vmlinuz-* or an x86-64 vmlinux"
        case .truncated(let what, let need, let have):
            "kernel file is truncated: \(what) needs \(need) bytes but the file has \(have); copy or download it again"
        case .invalidSetupHeader(let why):
            "bzImage setup header is invalid: \(why)"
        case .protocolTooOld(let version, let minimum):
            "bzImage uses boot protocol \(protocolString(version)); SwiftVisor needs \(protocolString(minimum)) or later (Linux 3.8+), so use a newer kernel"
        case .notLoadedHigh:
            "kernel is a zImage that loads below 1 MiB (LOADED_HIGH clear in loadflags); use a bzImage"
        case .no64BitEntry:
            "bzImage has no 64-bit entry point (XLF_KERNEL_64 clear): it is a 32-bit kernel; use an x86-64 kernel"
        case .invalidKernelAlignment(let alignment):
            "bzImage kernel_alignment 0x\(hex(alignment)) is not a power of two; the image is damaged"
        case .unknownCompression(let magic):
            "bzImage payload uses an unknown compression (first bytes \(hexBytes(magic))); boot with --no-host-decompress so the kernel decompresses itself"
        case .unsupportedCompression(let codec):
            "bzImage payload is \(codec) compressed, which SwiftVisor does not decompress on the host; boot with --no-host-decompress so the kernel decompresses itself"
        case .corruptPayload(let codec, let reason):
            "bzImage payload (\(codec)) is corrupt: \(reason); copy or download the kernel again"
        case .decompressedTooLarge(let codec, let limit):
            "bzImage payload (\(codec)) decompresses to more than \(limit) bytes, the most SwiftVisor accepts; the image is damaged or not a kernel"
        case .decompressionBomb(let codec, let size, let ratio):
            "bzImage payload (\(codec), \(size) bytes) expands to more than \(ratio) times its size, which no kernel does: a decompression bomb or not a kernel (a real one boots with --no-host-decompress)"
        case .payloadNotELF(let magic):
            "bzImage payload decompressed to something that is not an ELF kernel (first bytes \(hexBytes(magic))); boot with --no-host-decompress"
        case .elf(let error):
            "kernel ELF: \(error)"
        case .initrdTooLarge(let size, let available):
            "initrd of \(size) bytes does not fit: only \(available) bytes of guest RAM are free for it; give the guest more memory (--memory)"
        case .commandLineTooLong(let length, let limit):
            "kernel command line of \(length) bytes is longer than the \(limit) bytes the kernel accepts; shorten it"
        case .pvhNeedsELF:
            "PVH boots the ELF kernel inside a bzImage, so it needs host decompression: drop --no-host-decompress or use --boot-protocol linux64"
        case .noPVHNote:
            "kernel has no PVH entry point (no Xen PHYS32_ENTRY ELF note; build it with CONFIG_PVH=y); boot with --boot-protocol linux64 instead"
        case .memoryTooSmall(let needed, let have):
            "guest memory of \(have) bytes is too small for this kernel: at least \(needed) bytes are needed; raise --memory"
        case .file(let path, let reason):
            "cannot read \(path): \(reason)"
        case .malformed(let what):
            "cannot boot this kernel: \(what)"
        }
    }
}

// Helpers for the messages above; private so that other files of the module are free to
// use these names.

/// "2.15" for 0x020F.
private func protocolString(_ version: UInt16) -> String {
    let minor = version & 0xFF
    return "\(version >> 8).\(minor < 10 ? "0" : "")\(minor)"
}

private func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }

/// "4d 5a 00 01", at most the first 8 bytes, or "none" for an empty file.
private func hexBytes(_ bytes: [UInt8]) -> String {
    guard !bytes.isEmpty else { return "none" }
    return bytes.prefix(8).map { $0 < 16 ? "0" + hex($0) : hex($0) }.joined(separator: " ")
}
