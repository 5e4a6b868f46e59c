/// The setup header of a bzImage: the Linux x86 boot protocol's description of the kernel,
/// at offset 0x1F1 of the file (Documentation/arch/x86/boot.rst).
///
/// Parsing checks everything SwiftVisor relies on and nothing more: the boot flag, the
/// `HdrS` magic, protocol 2.12 or later, the header's length, the real-mode setup code
/// lying inside the file, LOADED_HIGH, the 64-bit entry point, and, for a relocatable
/// kernel, a power-of-two alignment. Every read is bounds-checked, so any byte sequence
/// yields a header or a `LinuxBootError`, never a trap.
package struct SetupHeader: Sendable, Equatable {
    /// Where the header starts, in the file and in the zero page alike.
    package static let offset = 0x1F1
    /// The oldest protocol accepted: 2.12 (Linux 3.8) introduced `xloadflags`.
    package static let minimumVersion: UInt16 = 0x020C
    package static let bootFlagValue: UInt16 = 0xAA55
    /// "HdrS", little-endian.
    package static let magic: UInt32 = 0x5372_6448

    /// `loadflags` (offset 0x211).
    package struct LoadFlags: OptionSet, Sendable, Hashable {
        package let rawValue: UInt8
        package init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The protected-mode kernel loads at 0x100000 or above (a bzImage).
        package static let loadedHigh = LoadFlags(rawValue: 1 << 0)
        /// Set by the kernel itself when KASLR was used.
        package static let kaslr = LoadFlags(rawValue: 1 << 1)
        package static let quiet = LoadFlags(rawValue: 1 << 5)
        package static let keepSegments = LoadFlags(rawValue: 1 << 6)
        /// `heap_end_ptr` is valid.
        package static let canUseHeap = LoadFlags(rawValue: 1 << 7)
    }

    /// `xloadflags` (offset 0x236, protocol 2.12+).
    package struct ExtendedLoadFlags: OptionSet, Sendable, Hashable {
        package let rawValue: UInt16
        package init(rawValue: UInt16) { self.rawValue = rawValue }
        /// The kernel has the legacy 64-bit entry point at load address + 0x200.
        package static let kernel64 = ExtendedLoadFlags(rawValue: 1 << 0)
        /// The kernel, boot_params, command line and initrd may live above 4 GiB.
        package static let canBeLoadedAbove4G = ExtendedLoadFlags(rawValue: 1 << 1)
        package static let efiHandover32 = ExtendedLoadFlags(rawValue: 1 << 2)
        package static let efiHandover64 = ExtendedLoadFlags(rawValue: 1 << 3)
        package static let efiKexec = ExtendedLoadFlags(rawValue: 1 << 4)
        package static let fiveLevelPaging = ExtendedLoadFlags(rawValue: 1 << 5)
        package static let fiveLevelPagingEnabled = ExtendedLoadFlags(rawValue: 1 << 6)
        package static let memoryEncryption = ExtendedLoadFlags(rawValue: 1 << 7)
    }

    /// `setup_sects` as stored; 0 means 4.
    package let setupSectorsField: UInt8
    /// `root_flags`.
    package let rootFlags: UInt16
    /// `syssize`: the protected-mode kernel's size in 16-byte units.
    package let syssize: UInt32
    /// `version`: 0x020F is protocol 2.15.
    package let version: UInt16
    /// `kernel_version`: offset of the version string, minus 0x200; 0 if none.
    package let kernelVersionPointer: UInt16
    /// `loadflags`.
    package let loadFlags: LoadFlags
    /// `code32_start`: the default 32-bit entry, where a non-relocatable kernel must load.
    package let code32Start: UInt32
    /// `initrd_addr_max`: the highest address the initrd's last byte may occupy.
    package let initrdAddressMax: UInt32
    /// `kernel_alignment`: the physical alignment a relocatable kernel needs.
    package let kernelAlignment: UInt32
    /// `relocatable_kernel` is nonzero.
    package let relocatable: Bool
    /// `min_alignment`: log2 of the smallest alignment the kernel accepts.
    package let minAlignmentLog2: UInt8
    /// `xloadflags`.
    package let extendedLoadFlags: ExtendedLoadFlags
    /// `cmdline_size`: the longest command line, without its NUL.
    package let commandLineSize: UInt32
    /// `payload_offset`: where the compressed kernel starts, from the start of the
    /// protected-mode kernel.
    package let payloadOffset: UInt32
    /// `payload_length`.
    package let payloadLength: UInt32
    /// `pref_address`: where a relocatable kernel prefers to be loaded.
    package let preferredAddress: UInt64
    /// `init_size`: the linear memory the kernel needs from its load address until it has
    /// read the memory map (covers decompression in place and the decompressed kernel).
    package let initSize: UInt32
    /// `handover_offset`: the EFI handover entry, from the protected-mode kernel's start.
    package let handoverOffset: UInt32
    /// `kernel_info_offset` (protocol 2.15+; 0 before).
    package let kernelInfoOffset: UInt32
    /// The header exactly as in the file, from offset 0x1F1 up to its end (0x202 plus the
    /// byte at 0x201), for copying into the zero page verbatim.
    package let rawBytes: [UInt8]

    /// Real-mode setup sectors, with 0 read as 4.
    package var setupSectors: Int { setupSectorsField == 0 ? 4 : Int(setupSectorsField) }
    /// Bytes before the protected-mode kernel: the boot sector plus the setup sectors.
    package var setupSize: Int { (setupSectors + 1) * 512 }
    /// One past the header's last byte, as a file offset.
    package var headerEnd: Int { Self.offset + rawBytes.count }
    /// "2.15".
    package var versionString: String {
        let minor = version & 0xFF
        return "\(version >> 8).\(minor < 10 ? "0" : "")\(minor)"
    }

    /// Parses and validates the setup header at the start of `bytes`, a whole bzImage.
    package init(parsing bytes: [UInt8]) throws(LinuxBootError) {
        let have = UInt64(bytes.count)
        let magicEnd = 0x206
        guard bytes.count >= magicEnd else {
            throw .truncated(what: "the bzImage setup header", need: UInt64(magicEnd), have: have)
        }
        let bootFlag = UInt16(LE.read(bytes, 0x1FE, 2))
        guard bootFlag == Self.bootFlagValue else {
            throw .invalidSetupHeader("boot flag at 0x1fe is 0x\(String(bootFlag, radix: 16)), not 0xaa55")
        }
        guard LE.read(bytes, 0x202, 4) == Self.magic else {
            throw .invalidSetupHeader("no \"HdrS\" signature at 0x202 (a kernel from before boot protocol 2.00)")
        }
        guard bytes.count >= 0x208 else {
            throw .truncated(what: "the bzImage setup header", need: 0x208, have: have)
        }
        version = UInt16(LE.read(bytes, 0x206, 2))
        guard version >= Self.minimumVersion else {
            throw .protocolTooOld(version: version, minimum: Self.minimumVersion)
        }
        // The header ends where the short jump at 0x200 lands: 0x202 plus its displacement.
        // From 2.12 on it reaches at least past handover_offset (0x268); a displacement
        // above 0x7F would be a backward jump.
        guard bytes[0x200] == 0xEB else {
            throw .invalidSetupHeader("no short jump (0xeb) at 0x200 before the header fields")
        }
        let end = 0x202 + Int(bytes[0x201])
        guard bytes[0x201] < 0x80, end >= 0x268 else {
            throw .invalidSetupHeader(
                "header length 0x\(String(end - Self.offset, radix: 16)) (from the jump at 0x200) is not between 0x77 and 0x90 bytes"
            )
        }
        guard bytes.count >= end else {
            throw .truncated(what: "the bzImage setup header", need: UInt64(end), have: have)
        }
        setupSectorsField = bytes[0x1F1]
        let sectors = setupSectorsField == 0 ? 4 : Int(setupSectorsField)
        let setupSize = (sectors + 1) * 512
        guard bytes.count >= setupSize else {
            throw .truncated(what: "the real-mode setup code (\(sectors) sectors)", need: UInt64(setupSize), have: have)
        }

        rootFlags = UInt16(LE.read(bytes, 0x1F2, 2))
        syssize = UInt32(LE.read(bytes, 0x1F4, 4))
        kernelVersionPointer = UInt16(LE.read(bytes, 0x20E, 2))
        loadFlags = LoadFlags(rawValue: bytes[0x211])
        code32Start = UInt32(LE.read(bytes, 0x214, 4))
        initrdAddressMax = UInt32(LE.read(bytes, 0x22C, 4))
        kernelAlignment = UInt32(LE.read(bytes, 0x230, 4))
        relocatable = bytes[0x234] != 0
        minAlignmentLog2 = bytes[0x235]
        extendedLoadFlags = ExtendedLoadFlags(rawValue: UInt16(LE.read(bytes, 0x236, 2)))
        commandLineSize = UInt32(LE.read(bytes, 0x238, 4))
        payloadOffset = UInt32(LE.read(bytes, 0x248, 4))
        payloadLength = UInt32(LE.read(bytes, 0x24C, 4))
        preferredAddress = LE.read(bytes, 0x258, 8)
        initSize = UInt32(LE.read(bytes, 0x260, 4))
        handoverOffset = UInt32(LE.read(bytes, 0x264, 4))
        kernelInfoOffset = version >= 0x020F && end >= 0x26C ? UInt32(LE.read(bytes, 0x268, 4)) : 0
        rawBytes = Array(bytes[Self.offset..<end])

        guard loadFlags.contains(.loadedHigh) else { throw .notLoadedHigh }
        guard extendedLoadFlags.contains(.kernel64) else { throw .no64BitEntry }
        if relocatable {
            guard kernelAlignment != 0, kernelAlignment & (kernelAlignment - 1) == 0 else {
                throw .invalidKernelAlignment(kernelAlignment)
            }
        }
    }
}

/// Little-endian reads that never trap: a read reaching past the end yields 0. Callers
/// check lengths first; this is the backstop.
enum LE {
    static func read(_ bytes: [UInt8], _ offset: Int, _ size: Int) -> UInt64 {
        guard offset >= 0, size >= 0, size <= 8, offset <= bytes.count - size else { return 0 }
        var value: UInt64 = 0
        for i in 0..<size { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return value
    }

    /// The same, at a 64-bit offset (as ELF headers give them).
    static func read(_ bytes: [UInt8], _ offset: UInt64, _ size: Int) -> UInt64 {
        guard offset <= UInt64(Int.max) else { return 0 }
        return read(bytes, Int(offset), size)
    }
}
