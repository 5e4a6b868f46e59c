@testable import SwiftVisor
import Testing

@Suite("Host quirks: what a Linux guest gets from the probe's findings")
struct HostQuirksTests {
    let xsave = GuestFeature.hiddenForInterpretingHosts[0]
    let smap = GuestFeature.hiddenForInterpretingHosts.first { $0.name == "smap" }!
    let popcnt = GuestFeature.hiddenForInterpretingHosts.first { $0.name == "popcnt" }!

    @Test func nativeHostsGetNothing() {
        let quirks = HostQuirks(
            runsKernelCodeNatively: true, hiddenFeatures: [], stillVisible: [],
            hidesPVSendIPI: false, probeMilliseconds: 3)
        #expect(quirks.commandLineOptions.isEmpty)
        #expect(quirks.linuxPolicy(from: CPUIDPolicy()) == CPUIDPolicy())
        #expect(LinuxDefaults.commandLine(quirks: quirks, appending: "quiet") == "console=ttyS0 quiet")
    }

    @Test func stillVisibleFeaturesGoOnTheCommandLine() {
        let quirks = HostQuirks(
            runsKernelCodeNatively: false, hiddenFeatures: GuestFeature.hiddenForInterpretingHosts,
            stillVisible: [xsave, smap, popcnt], hidesPVSendIPI: true, probeMilliseconds: 10)
        #expect(quirks.commandLineOptions == ["noxsave", "clearcpuid=smap,popcnt"])
        #expect(LinuxDefaults.commandLine(quirks: quirks, appending: nil) == "console=ttyS0 noxsave clearcpuid=smap,popcnt")
        let policy = quirks.linuxPolicy(from: CPUIDPolicy())
        #expect(policy.presets == [.hidePVSendIPI])
        #expect(policy.overrides.count == GuestFeature.hiddenForInterpretingHosts.count)
        #expect(policy.overrides.contains(CPUIDOverride(leaf: 1, subleaf: 0, register: .ecx, bit: 26, value: 0)))
        #expect(quirks.report.contains { $0.contains("noxsave") })
    }

    @Test func userOverridesComeAfterTheHiddenFeatures() throws {
        var base = CPUIDPolicy()
        base.overrides = [try CPUIDOverride(parsing: "1.ecx.23=1")]
        let quirks = HostQuirks(
            runsKernelCodeNatively: false, hiddenFeatures: [popcnt], stillVisible: [],
            hidesPVSendIPI: false, probeMilliseconds: 10)
        // Overrides apply in order, so the user's explicit choice wins.
        #expect(quirks.linuxPolicy(from: base).overrides.last == base.overrides[0])
    }
}

extension KVMIntegration {
    @Suite("Host-quirk probe")
    struct HostQuirkProbeTests {
        @Test("the probe is consistent and cheap")
        func probe() throws {
            let quirks = try HostQuirks.probe()
            print(
                "host-quirk probe: \(quirks.probeMilliseconds) ms, natively: \(quirks.runsKernelCodeNatively), still visible: \(quirks.stillVisible.map(\.name))"
            )
            if quirks.runsKernelCodeNatively {
                #expect(quirks.hiddenFeatures.isEmpty && quirks.stillVisible.isEmpty && !quirks.hidesPVSendIPI)
            } else {
                #expect(quirks.hiddenFeatures == GuestFeature.hiddenForInterpretingHosts && quirks.hidesPVSendIPI)
                #expect(quirks.stillVisible.allSatisfy { quirks.hiddenFeatures.contains($0) })
            }
            #expect(quirks.probeMilliseconds < 1000)
        }
    }
}
