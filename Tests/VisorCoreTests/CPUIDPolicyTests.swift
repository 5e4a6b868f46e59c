import Foundation
import Testing
import TestSupport
@testable import VisorCore
import VisorKVM

/// KVM_GET_SUPPORTED_CPUID as recorded on a CI machine (see the fixture's header).
let recordedHostCPUID: [CPUIDEntry] = {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/supported-cpuid-epyc.txt").path
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line in
        let f = line.split(separator: " ").compactMap { UInt32($0, radix: 16) }
        guard f.count == 7 else { return nil }
        return CPUIDEntry(function: f[0], index: f[1], flags: f[2], eax: f[3], ebx: f[4], ecx: f[5], edx: f[6])
    }
}()

func entry(_ table: [CPUIDEntry], _ function: UInt32, _ index: UInt32 = 0) -> CPUIDEntry? {
    table.first { $0.function == function && $0.index == index }
}

@Suite("CPUID policy")
struct CPUIDPolicyTests {
    /// The recorded table with VMX, MONITOR and PDCM forced on, as an Intel host would
    /// report them, so that hiding them is visible.
    var intelLikeHost: [CPUIDEntry] {
        recordedHostCPUID.map { e in
            var e = e
            if e.function == 1 { e.ecx |= CPUIDPolicy.vmxBit | CPUIDPolicy.monitorBit | CPUIDPolicy.pdcmBit }
            if e.function == 0xA { e.eax = 0x0730_0805 }
            return e
        }
    }

    @Test("the fixture holds the recorded host table")
    func fixture() throws {
        #expect(recordedHostCPUID.count > 50)
        #expect(entry(recordedHostCPUID, 0)?.ebx == 0x6874_7541)  // "Auth" of AuthenticAMD
    }

    @Test(
        "leaf 1: hypervisor bit set; VMX, MONITOR and PDCM cleared; APIC ID and count in EBX; HTT with several vCPUs",
        arguments: [(UInt32(0), UInt32(1)), (1, 2), (3, 4)])
    func leaf1(apicID: UInt32, count: UInt32) throws {
        let table = CPUIDPolicy().normalize(intelLikeHost, apicID: apicID, vcpuCount: count)
        let leaf = try #require(entry(table, 1))
        let host = try #require(entry(intelLikeHost, 1))
        #expect(leaf.ecx & CPUIDPolicy.hypervisorBit != 0)
        #expect(leaf.ecx & (CPUIDPolicy.vmxBit | CPUIDPolicy.monitorBit | CPUIDPolicy.pdcmBit) == 0)
        #expect(leaf.ebx >> 24 == apicID)
        #expect((leaf.ebx >> 16) & 0xFF == count)
        #expect(leaf.ebx & 0xFFFF == host.ebx & 0xFFFF)
        #expect((leaf.edx & CPUIDPolicy.htBit != 0) == (count > 1))
        #expect(leaf.eax == host.eax)
    }

    @Test("leaf 0xA (architectural PMU) and leaf 5 (MONITOR/MWAIT) are zeroed")
    func pmuHidden() throws {
        let table = CPUIDPolicy().normalize(intelLikeHost, apicID: 0, vcpuCount: 1)
        let pmu = try #require(entry(table, 0xA))
        #expect((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx) == (0, 0, 0, 0))
    }

    @Test(
        "leaf 0xB gives SMT and core levels consistent with the vCPU count, x2APIC ID in EDX",
        arguments: [(UInt32(0), UInt32(1), UInt32(0)), (1, 2, 1), (2, 3, 2), (4, 8, 3)])
    func topology(apicID: UInt32, count: UInt32, shift: UInt32) throws {
        let table = CPUIDPolicy().normalize(recordedHostCPUID, apicID: apicID, vcpuCount: count)
        let smt = try #require(entry(table, 0xB, 0))
        let core = try #require(entry(table, 0xB, 1))
        let end = try #require(entry(table, 0xB, 2))
        #expect((smt.eax, smt.ebx, smt.ecx, smt.edx) == (0, 1, 0x100, apicID))
        #expect((core.eax, core.ebx, core.ecx, core.edx) == (shift, count, 0x201, apicID))
        #expect((end.eax, end.ebx, end.ecx & 0xFF00, end.edx) == (0, 0, 0, apicID))
        #expect(table.filter { $0.function == 0xB }.count == 3)
    }

    @Test("leaf 0x40000000 carries KVM's signature by default, or a configured one")
    func signature() throws {
        let kvm = try #require(entry(CPUIDPolicy().normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0x4000_0000))
        #expect(kvm.eax >= 0x4000_0001)
        #expect((kvm.ebx, kvm.ecx, kvm.edx) == (0x4B4D_564B, 0x564B_4D56, 0x0000_004D))  // "KVMKVMKVM\0\0\0"
        var policy = CPUIDPolicy()
        try policy.setSignature("SwiftVisor")
        let ours = try #require(entry(policy.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0x4000_0000))
        #expect((ours.ebx, ours.ecx, ours.edx) == (0x6669_7753, 0x7369_5674, 0x0000_726F))
        #expect(throws: CPUIDPolicyError.badSignature("")) { try policy.setSignature("") }
        #expect(throws: CPUIDPolicyError.badSignature("thirteen char")) { try policy.setSignature("thirteen char") }
    }

    @Test("leaf 0x40000001's KVM features are filtered by the mask, and the pv-IPI preset hides bit 11")
    func kvmFeatures() throws {
        let host = try #require(entry(recordedHostCPUID, 0x4000_0001))
        var policy = CPUIDPolicy()
        policy.kvmFeatureMask = 0xFF
        #expect(entry(policy.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0x4000_0001)?.eax == host.eax & 0xFF)
        var preset = CPUIDPolicy()
        preset.presets = [.hidePVSendIPI]
        let eax = try #require(entry(preset.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0x4000_0001)).eax
        #expect(host.eax & (1 << 11) != 0)
        #expect(eax & (1 << 11) == 0)
        #expect(eax | (1 << 11) == host.eax)
    }

    @Test("leaf 0xD offers the host's XCR0 bits intersected with the policy, with the matching XSAVE size")
    func xcr0() throws {
        // Host: x87, SSE, AVX, PKRU (0x207). Policy default 0x7 drops PKRU.
        let table = CPUIDPolicy().normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1)
        let d0 = try #require(entry(table, 0xD, 0))
        #expect(d0.eax == 0x7)
        #expect(d0.edx == 0)
        #expect(d0.ecx == 0x240 + 0x100)  // AVX state ends at 0x340
        #expect(entry(table, 0xD, 9) == nil, "PKRU's subleaf is hidden")
        #expect(entry(table, 0xD, 2) != nil)
        var x87sse = CPUIDPolicy()
        x87sse.allowedXCR0 = 0x3
        let narrow = try #require(entry(x87sse.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0xD, 0))
        #expect(narrow.eax == 0x3)
        #expect(narrow.ecx == 576)
        var everything = CPUIDPolicy()
        everything.allowedXCR0 = .max
        #expect(
            entry(everything.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1), 0xD, 0)?.eax == 0x207,
            "never a superset of the host's bits")
    }

    @Test(
        "overrides parse from the CLI syntax and set or clear any field",
        arguments: [
            ("1.ecx.13=0", CPUIDOverride(leaf: 1, register: .ecx, bit: 13, value: 0)),
            ("0x40000001.eax.11=0", CPUIDOverride(leaf: 0x4000_0001, register: .eax, bit: 11, value: 0)),
            ("7.0.ebx.5=1", CPUIDOverride(leaf: 7, subleaf: 0, register: .ebx, bit: 5, value: 1)),
            ("1.EBX.16:23=4", CPUIDOverride(leaf: 1, register: .ebx, bit: 16, width: 8, value: 4)),
        ])
    func parse(text: String, expected: CPUIDOverride) throws {
        #expect(try CPUIDOverride(parsing: text) == expected)
    }

    @Test(
        "malformed overrides are refused with a reason",
        arguments: [
            "1.ecx.13", "1.ecx=0", "x.ecx.1=0", "1.esp.1=0", "1.ecx.32=0", "1.ecx.1=2", "1.ecx.8:4=0", "1.2.3.ecx.1=0",
        ])
    func badOverride(text: String) {
        #expect(throws: CPUIDPolicyError.self) { try CPUIDOverride(parsing: text) }
    }

    @Test("overrides apply after the normalization, and hide-cx16 clears CMPXCHG16B")
    func overridesApply() throws {
        var policy = CPUIDPolicy()
        policy.presets = [.hideCMPXCHG16B]
        policy.overrides = [try CPUIDOverride(parsing: "1.ecx.31=0"), try CPUIDOverride(parsing: "7.0.ebx.0:3=9")]
        let table = policy.normalize(recordedHostCPUID, apicID: 0, vcpuCount: 1)
        let leaf1 = try #require(entry(table, 1))
        #expect(leaf1.ecx & (1 << 13) == 0)
        #expect(leaf1.ecx & CPUIDPolicy.hypervisorBit == 0, "an override may even undo the policy")
        #expect(try #require(entry(table, 7, 0)).ebx & 0xF == 9)
    }

    @Test("the rendered table marks differences from the host")
    func render() {
        let text = CPUIDTable.render(
            host: recordedHostCPUID,
            guest: CPUIDPolicy().normalize(recordedHostCPUID, apicID: 0, vcpuCount: 2))
        #expect(text.contains("* 00000001.00"))
        #expect(text.contains("+ 0000000b.01"))
        #expect(text.contains("- 0000000d.09"))
    }
}

@Suite("MSR policy")
struct MSRPolicyTests {
    let emulator = MSREmulator(policy: .standard)

    func read(_ index: UInt32, _ e: MSREmulator? = nil) -> MSRResult {
        (e ?? emulator).access(MSRAccess(index: index, writeValue: nil, vcpu: 0))
    }

    func write(_ index: UInt32, _ value: UInt64, _ e: MSREmulator? = nil) -> MSRResult {
        (e ?? emulator).access(MSRAccess(index: index, writeValue: value, vcpu: 0))
    }

    @Test("IA32_BIOS_SIGN_ID reads all ones and ignores writes; BIOS_UPDT_TRIG ignores writes")
    func microcode() {
        #expect(read(0x8B) == .value(.max))
        #expect(write(0x8B, 0) == .value(0))
        #expect(read(0x8B) == .value(.max))
        #expect(write(0x79, 0x1234) == .value(0))
        #expect(read(0x79) == .fault)
    }

    @Test("IA32_FEATURE_CONTROL reads locked with VMX off; writes fault; VMX capability MSRs fault")
    func vmx() {
        #expect(read(0x3A) == .value(1))
        #expect(write(0x3A, 5) == .fault)
        for msr in UInt32(0x480)...0x491 { #expect(read(msr) == .fault) }
        #expect(read(0x492) == .fault, "an MSR with no rule came back from KVM: unknown, so #GP")
    }

    @Test("configurable rules: constant, recorded last write, Swift handler, deny; denials are counted")
    func rules() {
        var policy = MSRPolicy.empty
        policy.set(0x4000_1000, .constant(0xABCD))
        policy.set(0x4000_1001, .recorded(7))
        policy.set(0x4000_1002, .handler { access in .value(UInt64(access.index) &+ (access.writeValue ?? 100)) })
        policy.set(0x4000_1003, .deny)
        policy.set(0x4000_1004, .readOnly(3))
        let e = MSREmulator(policy: policy)
        #expect(read(0x4000_1000, e) == .value(0xABCD))
        #expect(read(0x4000_1001, e) == .value(7))
        #expect(write(0x4000_1001, 0x1122_3344_5566_7788, e) == .value(0))
        #expect(read(0x4000_1001, e) == .value(0x1122_3344_5566_7788))
        #expect(read(0x4000_1002, e) == .value(0x4000_1002 + 100))
        #expect(read(0x4000_1003, e) == .fault)
        #expect(write(0x4000_1003, 1, e) == .fault)
        #expect(write(0x4000_1000, 1, e) == .fault)
        #expect(e.deniedAccesses == 3)
    }

    @Test("routed MSRs merge into ranges of consecutive numbers; allow removes a rule")
    func ranges() {
        var policy = MSRPolicy.standard
        let ranges = policy.routedRanges
        #expect(ranges.map(\.base) == [0x3A, 0x79, 0x8B, 0x480])
        #expect(ranges.map(\.count) == [1, 1, 1, 18])
        policy.set(0x8B, .allow)
        #expect(!policy.routedRanges.contains { $0.base == 0x8B })
    }

    @Test("the dispatcher completes MSR exits with the policy's answer")
    func dispatch() {
        var dispatcher = ExitDispatcher()
        dispatcher.msrs = MSREmulator(policy: .standard)
        let vcpu = FakeDataChannel()
        #expect(dispatcher.dispatch(.msr(index: 0x8B, value: nil), vcpu: vcpu) == .handled)
        #expect(vcpu.msrCompletion?.value == .max)
        #expect(vcpu.msrCompletion?.fault == false)
        #expect(dispatcher.dispatch(.msr(index: 0x480, value: nil), vcpu: vcpu) == .handled)
        #expect(vcpu.msrCompletion?.fault == true)
        #expect(ExitDispatcher().dispatch(.msr(index: 0x10, value: 5), vcpu: vcpu) == .handled)
        #expect(vcpu.msrCompletion?.fault == true, "no policy: #GP, never a crash")
    }
}
