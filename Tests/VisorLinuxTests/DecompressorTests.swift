import Testing
import TestSupport
@testable import VisorLinux

@Suite("Decompressor: codecs through zlib, liblzma, liblz4 and libzstd")
struct DecompressorTests {
    static let supported: [CompressionCodec] = [.gzip, .xz, .lzma, .lz4, .zstd]

    // MARK: Detection

    @Test("each codec is recognised by its magic number, and only by it")
    func detection() {
        let streams: [(bytes: [UInt8], codec: CompressionCodec?)] = [
            ([0x1F, 0x8B, 0x08, 0x00], .gzip),
            ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0x00, 0x01], .xz),
            ([0x5D, 0x00, 0x00, 0x00, 0x04, 0xFF], .lzma),
            ([0x5D, 0x00, 0x00, 0x80, 0x00], .lzma),
            ([0x02, 0x21, 0x4C, 0x18, 0x10, 0x00], .lz4),
            ([0x28, 0xB5, 0x2F, 0xFD, 0x04], .zstd),
            (Array("BZh91AY&SY".utf8), .bzip2),
            ([0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A], .lzo),
            ([0x1F, 0x8C], nil),
            ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x01], nil),
            ([0x5D, 0x00, 0x01], nil),
            ([0x04, 0x22, 0x4D, 0x18], nil),  // the modern LZ4 frame: not what the kernel uses
            ([0x7F, 0x45, 0x4C, 0x46], nil),
            ([0x1F], nil),
            ([], nil),
        ]
        for (bytes, codec) in streams {
            #expect(CompressionCodec.detect(bytes) == codec, "\(bytes)")
        }
        #expect(Set(CompressionCodec.allCases.filter(\.isSupported)) == Set(Self.supported))
    }

    // MARK: Round trips

    @Test(
        "each codec decodes what its library encoded, with and without the size trailer",
        arguments: supported)
    func roundTrip(codec: CompressionCodec) throws {
        for size in [0, 1, 1000, 100_000] {
            let input = Fixture.sample(size, seed: UInt64(size) + 7)
            for trailer in [false, true] {
                let compressed = Fixture.compress(input, codec, trailer: trailer)
                let output = try Decompressor.decompress(compressed[...], codec: codec)
                #expect(output == input, "\(codec), \(size) bytes, trailer \(trailer)")
            }
        }
    }

    @Test("inputs of several 8 MiB LZ4 blocks decode whole, at an exact limit too", arguments: [CompressionCodec.lz4, .zstd])
    func multiBlock(codec: CompressionCodec) throws {
        let input = Fixture.sample((8 << 20) * 2 + 12_345, seed: 99)
        let compressed = Fixture.compress(input, codec)
        // Exactly the size: the last block is decoded through the scratch path.
        #expect(try Decompressor.decompress(compressed[...], codec: codec, limit: input.count) == input)
        #expect(throws: LinuxBootError.decompressedTooLarge(codec: codec, limit: input.count - 1)) {
            try Decompressor.decompress(compressed[...], codec: codec, limit: input.count - 1)
        }
    }

    /// 1,070 bytes ("SwiftVisor fixture line 0\n" to "... 39\n") compressed by the Debian
    /// command-line tools, so the decoders are checked against the formats the kernel build
    /// writes, not only against the libraries' own encoders.
    static let toolInput: [UInt8] = Array((0..<40).map { "SwiftVisor fixture line \($0)\n" }.joined().utf8)
    static let toolOutputs: [(CompressionCodec, String, String)] = [
        (
            .gzip, "gzip -n -9",
            "1f8b08000000000002037dd3c10983501444d1bd55fc129c1935b10ec10e143e8408c690946f05f7afefea1de62dbfba5f6bfd1c67d9ebfffa9e5b79d5f756fa6e81222cc6122c039611cb84e581e58965e64b1b08ac2066103b8821c412620ab1851843ac61d6706313ac61d6306b9835cc1a660db3865923ac11d648e3455823ac11d6086b8435c21a99bb1b261b3ffa2e040000"
        ),
        (
            .xz, "xz --check=crc32",
            "fd377a585a0000016922de360200210116000000742fe5a3e0042d00755d00299dc9267bfb907760ac6c7299dcb460278aa3b1ea9bb4fa98bb52ad7afb63714d34dd50a32cf6a6b2f64790fc38c8077aed70133d904e198ff084da5ff370178f5e93c242c985bba7f771753c0ef4a52519ff46f1bfd6a4a842db9f68eb99b3bfd2a9582fb0fa0f33013f3f5b8dc9bb4c3fabf10000000000261b3ffa00018d01ae080000e5c5bcff3e300d8b020000000001595a"
        ),
        (
            .lzma, "xz --format=lzma",
            "5d00008000ffffffffffffffff00299dc9267bfb907760ac6c7299dcb460278aa3b1ea9bb4fa98bb52ad7afb63714d34dd50a32cf6a6b2f64790fc38c8077aed70133d904e198ff084da5ff370178f5e93c242c985bba7f771753c0ef4a52519ff46f1bfd6a4a842db9f68eb99b3bfd2a9582fb0fa0f33013f3f5b8dc9bb4c47f6ad1ebffcfcd6c0"
        ),
        (
            .lz4, "lz4 -l",
            "02214c18e2000000ff0b53776966745669736f722066697874757265206c696e6520300a1a00051f311a00061f321a00061f331a00061f341a00061f351a00061f361a00061f371a00061f381a00061f391a00061f310501080f0601071f310701071f310801071f310901071f310a01071f310b01071f310c01071f310d01071f310e01071f320e01071f320e01071f320e01071f320e01071f320e01071f320e01071f320e01071f320e01071f320e01071f320e01071f330e01071f330e01071f330e01071f330e01071f330e01071f330e01071f330e01071f330e01071f330e010550652033390a"
        ),
        (
            .zstd, "zstd -19",
            "28b52ffd642e0315030032c40d11a02f0660e9e75a48bd78e44fcaf5db0a05208d31c618638cf1ffffffdbb66ddb091d53c8b881080cba1798acf4ba16649c6ed1e6ac0a27a811f0eb7f0780a3e20311fcbf03f40372758f20440f756843195aa842094528574a99003610d5e2975d2b"
        ),
    ]

    static func unhex(_ text: String) -> [UInt8] {
        let digits = Array(text.utf8).map { $0 <= 0x39 ? $0 - 0x30 : $0 - 0x57 }
        return stride(from: 0, to: digits.count, by: 2).map { digits[$0] << 4 | digits[$0 + 1] }
    }

    @Test("streams written by gzip, xz, lz4 -l and zstd decode, with the kernel's size trailer too")
    func toolStreams() throws {
        #expect(Self.toolInput.count == 1070)
        for (codec, tool, hex) in Self.toolOutputs {
            let stream = Self.unhex(hex)
            #expect(CompressionCodec.detect(stream) == codec, "\(tool)")
            #expect(try Decompressor.decompress(stream[...], codec: codec) == Self.toolInput, "\(tool)")
            let withTrailer = stream + [0x2E, 0x04, 0x00, 0x00]  // 1070
            #expect(try Decompressor.decompress(withTrailer[...], codec: codec) == Self.toolInput, "\(tool) + size")
        }
    }

    // MARK: Limits

    @Test("output exactly at the limit is accepted; one byte over is an error", arguments: supported)
    func limit(codec: CompressionCodec) throws {
        let input = Fixture.sample(50_000)
        let compressed = Fixture.compress(input, codec)
        #expect(try Decompressor.decompress(compressed[...], codec: codec, limit: input.count) == input)
        for limit in [input.count - 1, 4096, 1, 0] {
            #expect(throws: LinuxBootError.decompressedTooLarge(codec: codec, limit: limit)) {
                try Decompressor.decompress(compressed[...], codec: codec, limit: limit)
            }
        }
    }

    @Test(
        "a size trailer that lies (too small, too large, absurd) changes nothing but the first guess",
        arguments: [CompressionCodec.xz, .lzma, .zstd])
    func lyingTrailer(codec: CompressionCodec) throws {
        let input = Fixture.sample(300_000, seed: 3)
        var compressed = Fixture.compress(input, codec)
        for stated in [UInt32(1), 1000, UInt32(input.count * 10), .max] {
            for i in 0..<4 { compressed[compressed.count - 4 + i] = UInt8(truncatingIfNeeded: stated >> (8 * i)) }
            let output = try Decompressor.decompress(compressed[...], codec: codec)
            #expect(output == input, "\(codec), trailer \(stated)")
            #expect(output.capacity < 4 << 20, "a too-large first buffer is trimmed (\(codec), trailer \(stated))")
        }
    }

    @Test("a legacy LZ4 frame's trailer must match the output, or it reads as a cut-off block")
    func lz4Trailer() throws {
        let input = Fixture.sample(30_000, seed: 4)
        var compressed = Fixture.compress(input, .lz4)
        #expect(try Decompressor.decompress(compressed[...], codec: .lz4) == input)
        compressed[compressed.count - 4] ^= 1
        let error = try #require(throws: LinuxBootError.self) { try Decompressor.decompress(compressed[...], codec: .lz4) }
        guard case .corruptPayload(.lz4, let reason) = error else { Issue.record("\(error)"); return }
        #expect(reason.contains("block header"))
    }

    @Test("gzip's ISIZE is checked by zlib: a wrong one is corruption")
    func gzipSize() throws {
        var compressed = Fixture.compress(Fixture.sample(30_000), .gzip)
        compressed[compressed.count - 1] ^= 0x80
        let error = try #require(throws: LinuxBootError.self) { try Decompressor.decompress(compressed[...], codec: .gzip) }
        #expect(error == .corruptPayload(codec: .gzip, reason: "incorrect length check"))
    }

    // MARK: Corruption

    /// A way to damage a valid stream of each codec that its format is sure to notice.
    static func damage(_ stream: [UInt8], _ codec: CompressionCodec) -> [UInt8] {
        var out = stream
        switch codec {
        case .gzip: out[out.count - 8] ^= 0xFF  // CRC32
        case .xz: out[out.count / 2] ^= 0x10  // covered by the block's CRC32
        case .lzma: out[0] = 0xFF  // properties byte beyond lc/lp/pb's range
        case .lz4: Fixture.put(&out, 4, UInt32(0x7FFF_FFF0))  // first block's size
        case .zstd: out[4] = 0xFF  // frame header descriptor with the reserved bit set
        default: break
        }
        return out
    }

    @Test("a damaged stream is a corrupt payload naming the codec", arguments: supported)
    func corrupt(codec: CompressionCodec) throws {
        let input = Fixture.sample(20_000, seed: 5)
        let stream = Fixture.compress(input, codec, trailer: false)
        let error = try #require(throws: LinuxBootError.self) {
            try Decompressor.decompress(Self.damage(stream, codec)[...], codec: codec, limit: 1 << 20)
        }
        guard case .corruptPayload(let named, let reason) = error else { Issue.record("\(codec): \(error)"); return }
        #expect(named == codec)
        #expect(!reason.isEmpty)
        #expect(error.description.contains("\(codec)"))
    }

    @Test("a stream cut short is a corrupt payload that says it ends early", arguments: supported)
    func truncated(codec: CompressionCodec) throws {
        let input = Fixture.sample(20_000, seed: 6)
        let stream = Fixture.compress(input, codec, trailer: false)
        for keep in [0, 3, stream.count / 2, stream.count - 1] {
            let error = try #require(throws: LinuxBootError.self) {
                try Decompressor.decompress(stream.prefix(keep), codec: codec, limit: 1 << 20)
            }
            guard case .corruptPayload(codec, let reason) = error else {
                Issue.record("\(codec) cut to \(keep): \(error)"); continue
            }
            #expect(
                reason.contains("end") || reason.contains("cut") || reason.contains("shorter") || reason.contains("corrupt"),
                "\(codec) cut to \(keep): \(reason)")
        }
    }

    @Test("a stream handed to the wrong decoder is corrupt, not a crash")
    func wrongDecoder() throws {
        let input = Fixture.sample(5_000)
        for source in Self.supported {
            let stream = Fixture.compress(input, source)
            for decoder in Self.supported where decoder != source {
                let error = try #require(throws: LinuxBootError.self) {
                    try Decompressor.decompress(stream[...], codec: decoder, limit: 1 << 20)
                }
                switch error {
                case .corruptPayload(decoder, _), .decompressedTooLarge(decoder, _): break
                default: Issue.record("\(source) stream through \(decoder): \(error)")
                }
            }
        }
    }

    @Test("bzip2 and LZO are recognised but left to the guest")
    func unsupported() {
        for codec in [CompressionCodec.bzip2, .lzo] {
            #expect(!codec.isSupported)
            #expect(throws: LinuxBootError.unsupportedCompression(codec)) {
                try Decompressor.decompress(codec.magic[...], codec: codec)
            }
            #expect(Decompressor.compress([1, 2, 3], codec: codec) == nil)
        }
    }

    @Test("decoding is thread-safe: codecs run concurrently give the same bytes")
    func concurrent() async throws {
        let input = Fixture.sample(200_000, seed: 11)
        let streams = Self.supported.map { ($0, Fixture.compress(input, $0)) }
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for round in 0..<4 {
                for (codec, stream) in streams {
                    group.addTask { try Decompressor.decompress(stream[...], codec: codec, limit: input.count + round) == input }
                }
            }
            for try await same in group { #expect(same) }
        }
    }
}

/// Payloads that expand far more than any kernel: they must fail fast, with output bounded
/// by `Decompressor.maximumRatio` times their size.
@Suite("Decompression bombs")
struct DecompressionBombTests {
    /// 64 MiB of zeros compressed: from about 10 KiB (xz) to 260 KiB (lz4), so ratios of
    /// 250 to 6,000 and more.
    static let zeros = [UInt8](repeating: 0, count: 64 << 20)

    @Test(
        "a payload expanding hundreds of times fails within 2 s, having produced at most 64 times its size",
        arguments: DecompressorTests.supported)
    func bomb(codec: CompressionCodec) throws {
        // The trailer claims 4 GiB - 1, as a bomb's would.
        let bomb = (Decompressor.compress(Self.zeros, codec: codec) ?? []) + [0xFF, 0xFF, 0xFF, 0xFF]
        try #require(bomb.count > 4)
        let elapsed = ContinuousClock().measure {
            #expect(throws: LinuxBootError.decompressionBomb(codec: codec, payloadSize: bomb.count, ratio: 64)) {
                try Decompressor.decompress(bomb[...], codec: codec, limit: Decompressor.defaultLimit)
            }
        }
        print("\(codec) bomb: \(bomb.count) bytes, rejected in \(elapsed)")
        #expect(elapsed < .seconds(2))
    }

    @Test(
        "a bzImage whose header allows 4 GiB and whose payload is a bomb is refused by the loader",
        arguments: DecompressorTests.supported)
    func bzImageBomb(codec: CompressionCodec) throws {
        var builder = BzImageBuilder()
        builder.payload = (Decompressor.compress(Self.zeros, codec: codec) ?? []) + [0xFF, 0xFF, 0xFF, 0xFF]
        builder.initSize = 0xFFFF_FFFF
        let request = LinuxBootRequest(kernel: builder.bytes())
        let memory = try guestRAM(32 << 20)
        let error = try #require(throws: LinuxBootError.self) {
            try LinuxLoader.load(request, into: memory, rsdpAddress: 0xE0000)
        }
        guard case .decompressionBomb(codec, _, 64) = error else {
            Issue.record("expected a decompression bomb error, got \(error)")
            return
        }
    }
}
