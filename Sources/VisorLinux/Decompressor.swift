internal import CDecompress

/// A compression format a bzImage payload may use, recognised by its magic number.
public enum CompressionCodec: String, Sendable, CaseIterable, CustomStringConvertible {
    case gzip, xz, lzma, lz4, zstd
    /// Recognised, but not decompressed on the host: the kernel decompresses itself.
    case bzip2, lzo

    /// Whether `Decompressor` decodes this codec.
    public var isSupported: Bool { cCodec != nil }

    public var description: String { rawValue }

    /// The first bytes of a stream in this format.
    public var magic: [UInt8] {
        switch self {
        case .gzip: [0x1F, 0x8B]
        case .xz: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
        // lzma-alone: properties byte 0x5D (lc=3, lp=0, pb=2), then a dictionary size
        // whose low 16 bits are zero, as every preset's is.
        case .lzma: [0x5D, 0x00, 0x00]
        // The LZ4 legacy frame (0x184C2102), which the kernel build writes with `lz4 -l`.
        case .lz4: [0x02, 0x21, 0x4C, 0x18]
        case .zstd: [0x28, 0xB5, 0x2F, 0xFD]
        case .bzip2: [0x42, 0x5A, 0x68]  // "BZh"
        case .lzo: [0x89, 0x4C, 0x5A, 0x4F]  // lzop
        }
    }

    /// The codec whose magic number `bytes` start with, or nil.
    public static func detect(_ bytes: some Collection<UInt8>) -> CompressionCodec? {
        allCases.first { bytes.starts(with: $0.magic) }
    }

    var cCodec: Int32? {
        switch self {
        case .gzip: Int32(CDEC_CODEC_GZIP)
        case .xz: Int32(CDEC_CODEC_XZ)
        case .lzma: Int32(CDEC_CODEC_LZMA)
        case .lz4: Int32(CDEC_CODEC_LZ4_LEGACY)
        case .zstd: Int32(CDEC_CODEC_ZSTD)
        case .bzip2, .lzo: nil
        }
    }
}

/// Decompresses kernel payloads through Debian's zlib, liblzma, liblz4 and libzstd.
///
/// Output is bounded by a caller-given limit; a payload that would exceed it fails with
/// `decompressedTooLarge` without producing more than the limit. It is also bounded by
/// `maximumRatio` times the payload's size; past that it fails with `decompressionBomb`. The size a payload
/// claims for itself (gzip's ISIZE, or the 4 bytes the kernel build appends) only sizes
/// the first output buffer; it is never trusted beyond the limit. Thread-safe.
public enum Decompressor {
    /// The default output limit: no kernel comes near it.
    public static let defaultLimit = 512 << 20

    /// The most a payload may expand: kernels expand 3 to 11 times (Debian's xz-compressed
    /// 6.1 kernel 3.8, our gzip test kernel 10.3), so 64 leaves room for any real one while
    /// a decompression bomb (a kilobyte that would become gigabytes) stops after 64 KiB
    /// of output instead of the whole limit, in bounded time and memory.
    public static let maximumRatio = 64

    /// The uncompressed size a payload states in its last 4 bytes (little-endian): gzip's
    /// ISIZE (the size modulo 2^32), or the size the kernel build appends to the other
    /// formats. Only a hint: nothing guarantees the bytes are that.
    public static func statedSize(of payload: ArraySlice<UInt8>) -> Int? {
        guard payload.count >= 8 else { return nil }
        let end = payload.endIndex
        var value = 0
        for i in 0..<4 { value |= Int(payload[end - 4 + i]) << (8 * i) }
        return value
    }

    /// Decompresses `payload` (a whole stream in `codec`, possibly followed by the kernel's
    /// size trailer) to at most `limit` bytes.
    public static func decompress(
        _ payload: ArraySlice<UInt8>, codec: CompressionCodec, limit: Int = defaultLimit
    ) throws(LinuxBootError) -> [UInt8] {
        guard let cCodec = codec.cCodec else { throw .unsupportedCompression(codec) }
        let (ratioCap, overflow) = payload.count.multipliedReportingOverflow(by: maximumRatio)
        let ratioBinds = !overflow && ratioCap < limit
        let limit = max(ratioBinds ? ratioCap : limit, 0)
        // First buffer: the stated size if there is one, else four times the input; both
        // clamped to the limit. Too small a guess costs a restart with twice the room.
        var capacity = min(limit, max(statedSize(of: payload) ?? payload.count * 4, 4096))
        while true {
            var status: Int32 = 0
            var reason = [CChar](repeating: 0, count: 256)
            let output = unsafe payload.withUnsafeBufferPointer { input in
                unsafe [UInt8](unsafeUninitializedCapacity: capacity) { buffer, initialized in
                    var produced = 0
                    // SAFETY: cdecompress reads input.count bytes from input.baseAddress and
                    // writes at most `min(capacity, buffer.count)` bytes from buffer.baseAddress,
                    // the storage of this array; reason's storage holds reason.count bytes.
                    status = unsafe cdecompress(
                        cCodec, input.baseAddress, input.count,
                        buffer.baseAddress, min(capacity, buffer.count), &produced,
                        &reason, reason.count)
                    // Only on success are the first `produced` bytes the caller's to keep.
                    initialized = status == Int32(CDEC_OK) ? min(produced, buffer.count) : 0
                }
            }
            switch status {
            case Int32(CDEC_OK):
                // A stated size far above the truth leaves a mostly empty buffer: copy the
                // output into one of its own size and let the large one go.
                guard output.capacity > 2 * output.count + (1 << 20) else { return output }
                var trimmed: [UInt8] = []
                trimmed.reserveCapacity(output.count)
                trimmed.append(contentsOf: output)
                return trimmed
            case Int32(CDEC_ERR_OUTPUT_FULL):
                guard capacity < limit else {
                    if ratioBinds {
                        throw .decompressionBomb(codec: codec, payloadSize: payload.count, ratio: maximumRatio)
                    }
                    throw .decompressedTooLarge(codec: codec, limit: limit)
                }
                capacity = capacity > limit / 2 ? limit : max(capacity * 2, 4096)
            default:
                // cdecompress NUL-terminates its message; prefix stops at the array's end anyway.
                let message = String(decoding: reason.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw .corruptPayload(codec: codec, reason: message.isEmpty ? "decoder error \(status)" : message)
            }
        }
    }

    /// Compresses `input` in `codec`'s format as `decompress` reads it (LZ4 as a legacy
    /// frame), without the kernel's size trailer. For tests and fuzzing; nil on failure or
    /// for a codec only recognised.
    static func compress(_ input: [UInt8], codec: CompressionCodec) -> [UInt8]? {
        guard let cCodec = codec.cCodec else { return nil }
        let bound = cdecompress_compress_bound(cCodec, input.count)
        guard bound > 0 else { return nil }
        var status: Int32 = 0
        let output = unsafe input.withUnsafeBufferPointer { source in
            unsafe [UInt8](unsafeUninitializedCapacity: bound) { buffer, initialized in
                var produced = 0
                // SAFETY: reads source.count bytes at source.baseAddress and writes at most
                // min(bound, buffer.count) bytes into this array's storage.
                status = unsafe cdecompress_compress(
                    cCodec, source.baseAddress, source.count,
                    buffer.baseAddress, min(bound, buffer.count), &produced)
                initialized = status == Int32(CDEC_OK) ? min(produced, buffer.count) : 0
            }
        }
        return status == Int32(CDEC_OK) ? output : nil
    }
}
