import Foundation
import Testing
import VisorSnapshot

@testable import SwiftVisor

/// The saved machine configuration, without KVM: what a restore builds the machine from.
@Suite("Snapshot: the saved machine configuration")
struct SnapshotShapeTests {
    static func linuxLike() -> MachineConfiguration {
        var config = MachineConfiguration(guest: .elf([]))
        config.memorySize = 256 << 20
        config.vcpuCount = 2
        config.debugExitPort = false
        config.hypercallPort = nil
        config.unclaimedMMIO = .log
        config.trackDirtyPages = true
        config.msrs.set(0x4000_1000, .recorded(7))
        config.virtioDevices = [
            .block(
                path: "/var/disk.img", readOnly: true, id: "root",
                rateLimiter: .init(ops: .init(size: 100, oneTimeBurst: 5, refillTimeMilliseconds: 1000))),
            .net(tap: "tap0", mac: [2, 0, 0, 0, 0, 1], mtu: 1400), .entropy, .console, .vsock(cid: 3, udsPath: "/tmp/v.sock"),
        ]
        return config
    }

    @Test("the configuration round-trips, and a restoring configuration takes every saved field")
    func roundTrip() throws {
        let shape = SavedMachineShape(Self.linuxLike())
        var writer = SnapshotWriter()
        shape.encode(to: &writer)
        var reader = SnapshotReader(writer.bytes)
        let decoded = try SavedMachineShape(from: &reader)
        try reader.finish("the shape")
        #expect(decoded == shape)
        #expect(decoded.virtioDevices == Self.linuxLike().virtioDevices)
        #expect(decoded.msrPolicy.rules.count == MSRPolicy.standard.rules.count + 1)
        // Every truncation is an error, never a trap.
        for length in 0..<writer.bytes.count {
            var short = SnapshotReader(Array(writer.bytes.prefix(length)))
            #expect(throws: SnapshotError.self) { _ = try SavedMachineShape(from: &short) }
        }
    }

    @Test("values a configuration cannot hold are refused by name")
    func refusals() {
        func decode(_ edit: (inout [UInt8]) -> Void) -> SnapshotError? {
            var writer = SnapshotWriter()
            SavedMachineShape(Self.linuxLike()).encode(to: &writer)
            var bytes = writer.bytes
            edit(&bytes)
            var reader = SnapshotReader(bytes)
            do { _ = try SavedMachineShape(from: &reader) } catch { return error }
            return nil
        }
        #expect(decode { $0[0] = 1 } == .invalid("the memory size", reason: "is 268435457, not a positive multiple of 4 KiB"))
        #expect(decode { $0[8] = 0 } == .invalid("the vCPU count", reason: "is 0, not 1 to 255"))
    }

    @Test("the fuzz seed of the machine configuration decodes, so the target starts from a valid input")
    func fuzzSeedDecodes() throws {
        let seed = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/snapshot-state/machine-test-guest")
        let bytes = try [UInt8](Data(contentsOf: seed))
        var reader = SnapshotReader(Array(bytes.dropFirst()))
        let shape = try SavedMachineShape(from: &reader)
        try reader.finish("the seed")
        #expect(shape.virtioDevices == [.block(path: "/tmp/disk.img", readOnly: false, id: "rootfs")])
    }
}
