/// A validated bzImage: the real-mode setup (boot sector, setup header, setup code), then
/// the protected-mode kernel, which holds the compressed kernel (the payload) and the
/// decompressor that unpacks it.
///
/// Everything the parts describe lies inside the file: the setup sectors, `syssize`, and
/// the payload given by `payload_offset` and `payload_length`.
package struct BzImage: Sendable {
    /// The whole file.
    package let bytes: [UInt8]
    package let header: SetupHeader
    /// The payload's codec, or nil if its magic number is unknown.
    package let codec: CompressionCodec?

    /// Boot sector and real-mode setup code: the first `header.setupSize` bytes.
    package var setup: ArraySlice<UInt8> { bytes[0..<header.setupSize] }
    /// The protected-mode kernel: everything after the setup code. Loaded at its load
    /// address, it is entered at offset 0x200 for the 64-bit boot protocol.
    package var kernel: ArraySlice<UInt8> { bytes[header.setupSize...] }
    /// The compressed kernel inside the protected-mode kernel, size trailer included.
    package var payload: ArraySlice<UInt8> {
        let start = header.setupSize + Int(header.payloadOffset)
        return bytes[start..<(start + Int(header.payloadLength))]
    }
    /// Whether `decompressedELF` can decode the payload; if not, the kernel has to
    /// decompress itself.
    package var canDecompressOnHost: Bool { codec?.isSupported ?? false }

    /// The version string the setup code carries ("6.1.0-18-amd64 (debian-kernel@...) #1 SMP ..."),
    /// if `kernel_version` points at printable text inside the setup code.
    package var kernelVersion: String? {
        guard header.kernelVersionPointer != 0 else { return nil }
        let start = Int(header.kernelVersionPointer) + 0x200
        guard start < header.setupSize else { return nil }
        let text = bytes[start..<min(header.setupSize, start + 256)].prefix { $0 != 0 }
        guard !text.isEmpty, text.allSatisfy({ (0x20...0x7E).contains($0) }) else { return nil }
        return String(decoding: text, as: UTF8.self)
    }

    /// Parses and validates a bzImage.
    package init(parsing bytes: [UInt8]) throws(LinuxBootError) {
        let header = try SetupHeader(parsing: bytes)
        let have = UInt64(bytes.count)
        let setupSize = UInt64(header.setupSize)
        guard header.syssize > 0 else {
            throw .invalidSetupHeader("syssize is 0: there is no protected-mode kernel")
        }
        let kernelEnd = setupSize + UInt64(header.syssize) * 16
        guard kernelEnd <= have else {
            throw .truncated(what: "the protected-mode kernel (syssize)", need: kernelEnd, have: have)
        }
        guard header.payloadLength > 0 else {
            throw .invalidSetupHeader("payload_length is 0: there is no compressed kernel")
        }
        let payloadEnd = setupSize + UInt64(header.payloadOffset) + UInt64(header.payloadLength)
        guard payloadEnd <= have else {
            throw .truncated(what: "the compressed kernel (payload_offset + payload_length)", need: payloadEnd, have: have)
        }
        self.bytes = bytes
        self.header = header
        let start = header.setupSize + Int(header.payloadOffset)
        codec = CompressionCodec.detect(bytes[start..<(start + Int(header.payloadLength))])
    }

    /// Decompresses the payload on the host to the ELF kernel (vmlinux) inside it.
    ///
    /// `limit` bounds the decompressed size; `header.initSize` is a tighter bound a kernel
    /// always meets. Throws `unknownCompression` or `unsupportedCompression` when the
    /// kernel must decompress itself instead.
    package func decompressedELF(limit: Int = Decompressor.defaultLimit) throws(LinuxBootError) -> ELFKernel {
        guard let codec else { throw .unknownCompression(magic: Array(payload.prefix(8))) }
        let elf = try Decompressor.decompress(payload, codec: codec, limit: limit)
        guard elf.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { throw .payloadNotELF(magic: Array(elf.prefix(8))) }
        return try ELFKernel(parsing: elf)
    }
}
