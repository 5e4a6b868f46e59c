// A short seeded pass of every fuzz target, so that `swift test` exercises each one
// without libFuzzer: the committed seeds, then mutants of them from the seeded LCG.
import Foundation
import FuzzDeviceTargets
import FuzzTargets
import Testing
import TestSupport
import VisorLinux

@Suite("Fuzz targets, seeded")
struct FuzzTargetTests {
    @Test("each target holds its property on its seeds and their seeded mutants", arguments: FuzzTarget.allCases)
    func seededPass(_ target: FuzzTarget) throws {
        let seeds = try Self.seeds(for: target)
        #expect(!seeds.isEmpty, "Fuzz/corpus/\(target.rawValue) holds no seeds")
        for seed in seeds { target.run(seed) }
        var random = LCG(state: 0x5EED_0000 &+ UInt64(target.rawValue.utf8.count))
        for _ in 0..<target.seededInputs {
            var input = seeds.isEmpty ? [] : seeds[random.below(seeds.count)]
            // A few byte flips, insertions and truncations, as libFuzzer's simplest mutators do.
            for _ in 0...random.below(8) {
                switch random.below(4) {
                case 0 where !input.isEmpty: input[random.below(input.count)] = random.byte()
                case 1: input.insert(random.byte(), at: random.below(input.count + 1))
                case 2 where !input.isEmpty: input.removeLast(random.below(input.count))
                default: input.append(contentsOf: (0..<random.below(16)).map { _ in random.byte() })
                }
            }
            target.run(input)
        }
    }

    @Test("each target of the device binary is one of the full binary's, under the same name, and holds on its seeds")
    func deviceTargetsAreFullTargets() throws {
        for device in DeviceFuzzTarget.allCases {
            let target = try #require(FuzzTarget(rawValue: device.rawValue), "\(device.rawValue) is not a FuzzTarget")
            // Both run the seeds (a property failure would trap, in either).
            for seed in try Self.seeds(for: target) {
                device.run(seed)
                target.run(seed)
            }
        }
    }

    /// The committed seed corpus of `target`: every file in Fuzz/corpus/<target>/.
    static func corpus(for target: FuzzTarget) -> String {
        String(#filePath.dropLast("Fuzz/Tests/FuzzTargetTests.swift".count)) + "Fuzz/corpus/" + target.rawValue
    }

    static func seeds(for target: FuzzTarget) throws -> [[UInt8]] {
        let directory = corpus(for: target)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.filter { !$0.hasPrefix(".") }.sorted().compactMap {
            FileManager.default.contents(atPath: directory + "/" + $0).map { Array($0) }
        }
    }
}

@Suite("Fuzz seeds")
struct FuzzSeedTests {
    @Test("the linux target's bzImage seeds boot through host decompression, one per codec the host decodes")
    func linuxCodecSeeds() throws {
        let seeds = Dictionary(
            uniqueKeysWithValues: try FileManager.default.contentsOfDirectory(
                atPath: FuzzTargetTests.corpus(for: .linux)
            ).map { ($0, $0) })
        for codec in CompressionCodec.allCases where codec.isSupported {
            let name = "bzimage-\(codec)-host"
            try #require(seeds[name] != nil, "no seed \(name)")
            let bytes = try #require(FileManager.default.contents(atPath: FuzzTargetTests.corpus(for: .linux) + "/" + name))
            let request = LinuxBootRequest(kernel: Array(bytes.dropFirst(2)), hostDecompression: true)
            let plan = try LinuxLoader.load(request, into: try guestRAM(2 << 20), rsdpAddress: 0xE0000)
            #expect(plan.loadDescription.hasPrefix("host-decompressed ELF"), "\(name): \(plan.loadDescription)")
            #expect(plan.kernelDescription.contains("\(codec) payload"), "\(name): \(plan.kernelDescription)")
        }
    }
}
