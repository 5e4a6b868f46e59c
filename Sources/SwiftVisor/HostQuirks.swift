public import VisorCore
import SwiftVisorProbes
import VisorEmulator
import Synchronization
import VisorHost

/// A processor feature a Linux guest must not use where the host interprets kernel code,
/// with where CPUID reports it and what Linux calls it.
public struct GuestFeature: Sendable, Equatable, CustomStringConvertible {
    /// Linux's name for `clearcpuid=`; "xsave" is turned off with `noxsave` instead.
    public var name: String
    public var leaf: UInt32
    public var subleaf: UInt32
    public var register: CPUIDRegister
    public var bit: UInt8

    public var description: String { "\(name) (CPUID 0x\(String(leaf, radix: 16)).\(subleaf).\(register.rawValue) bit \(bit))" }

    public var override: CPUIDOverride {
        CPUIDOverride(leaf: leaf, subleaf: subleaf, register: register, bit: bit, value: 0)
    }

    /// What the Linux policy hides on hosts that interpret CPL0 code. The host's KVM cannot
    /// finish these instructions at CPL0 (SSE/AVX arithmetic, XSAVE, AES, SHA), or can only
    /// with an exit to user space per use (POPCNT, CLAC/STAC for SMAP, CMPXCHG16B), which
    /// would dominate a boot. Linux falls back to plain code for each.
    public static let hiddenForInterpretingHosts: [GuestFeature] = [
        GuestFeature(name: "xsave", leaf: 1, subleaf: 0, register: .ecx, bit: 26),
        // KVM on such hosts honours this one; SwiftVisor could finish each `lock cmpxchg16b`,
        // but SLUB would cost thousands of exits per boot.
        GuestFeature(name: "cx16", leaf: 1, subleaf: 0, register: .ecx, bit: 13),
        GuestFeature(name: "smap", leaf: 7, subleaf: 0, register: .ebx, bit: 20),
        GuestFeature(name: "popcnt", leaf: 1, subleaf: 0, register: .ecx, bit: 23),
        GuestFeature(name: "ssse3", leaf: 1, subleaf: 0, register: .ecx, bit: 9),
        GuestFeature(name: "sse4_1", leaf: 1, subleaf: 0, register: .ecx, bit: 19),
        GuestFeature(name: "sse4_2", leaf: 1, subleaf: 0, register: .ecx, bit: 20),
        GuestFeature(name: "aes", leaf: 1, subleaf: 0, register: .ecx, bit: 25),
        GuestFeature(name: "pclmulqdq", leaf: 1, subleaf: 0, register: .ecx, bit: 1),
        GuestFeature(name: "avx", leaf: 1, subleaf: 0, register: .ecx, bit: 28),
        GuestFeature(name: "fma", leaf: 1, subleaf: 0, register: .ecx, bit: 12),
        GuestFeature(name: "f16c", leaf: 1, subleaf: 0, register: .ecx, bit: 29),
        GuestFeature(name: "avx2", leaf: 7, subleaf: 0, register: .ebx, bit: 5),
        GuestFeature(name: "sha_ni", leaf: 7, subleaf: 0, register: .ebx, bit: 29),
        GuestFeature(name: "vaes", leaf: 7, subleaf: 0, register: .ecx, bit: 9),
        GuestFeature(name: "vpclmulqdq", leaf: 7, subleaf: 0, register: .ecx, bit: 10),
    ]
}

/// What a tiny probe guest found out about the host's KVM, and what a Linux guest needs
/// because of it.
///
/// The probe (`Guests/host_quirks.16.S`) runs in real mode, so at CPL0:
/// 1. one POPCNT. A host that runs CPL0 code natively never exits on it; a host that
///    interprets CPL0 code (a nested, software-assisted KVM like our CI machines) fails to
///    emulate it and SwiftVisor finishes it. That tells the two kinds of host apart.
/// 2. CPUID for every leaf a hidden feature lives in, under the CPUID policy the kernel will
///    get, so what is measured is what the kernel will see: a bit the policy clears but the
///    guest still sees was ignored by the host's KVM.
public struct HostQuirks: Sendable {
    /// False when the host interprets CPL0 guest code.
    public var runsKernelCodeNatively: Bool
    /// The features hidden through CPUID for this host (empty on hosts that run kernel code
    /// natively).
    public var hiddenFeatures: [GuestFeature]
    /// Of those, the ones the guest still saw: they go on the kernel command line.
    public var stillVisible: [GuestFeature]
    /// Whether KVM's paravirtual send-IPI is hidden (0x40000001 EAX bit 11). It cannot be
    /// probed cheaply (the failure is a hang during AP bring-up), so this is a documented
    /// policy: hidden on hosts that interpret kernel code, where it hangs a 2-vCPU boot.
    public var hidesPVSendIPI: Bool
    /// Wall time of the probe, VM creation to teardown.
    public var probeMilliseconds: Double

    /// The options Linux needs on its command line: `noxsave` if XSAVE is still visible and
    /// `clearcpuid=` with the other still-visible features.
    public var commandLineOptions: [String] {
        var options: [String] = []
        if stillVisible.contains(where: { $0.name == "xsave" }) { options.append("noxsave") }
        let names = stillVisible.filter { $0.name != "xsave" }.map(\.name)
        if !names.isEmpty { options.append("clearcpuid=" + names.joined(separator: ",")) }
        return options
    }

    /// `policy` with what this host needs for Linux added.
    public func linuxPolicy(from policy: CPUIDPolicy) -> CPUIDPolicy {
        var result = policy
        if hidesPVSendIPI, !result.presets.contains(.hidePVSendIPI) { result.presets.append(.hidePVSendIPI) }
        result.overrides.insert(contentsOf: hiddenFeatures.map(\.override), at: 0)
        return result
    }

    /// One line per finding, for `--trace` and `swiftvisor cpuid`.
    public var report: [String] {
        var lines = [
            "host quirks: probed in \(formatMilliseconds(probeMilliseconds)) ms; the host "
                + (runsKernelCodeNatively
                    ? "runs CPL0 code natively: nothing hidden"
                    : "interprets CPL0 code: \(hiddenFeatures.count) features hidden through CPUID")
        ]
        if hidesPVSendIPI { lines.append("host quirks: paravirtual send-IPI hidden (hangs AP bring-up on such hosts)") }
        for feature in stillVisible {
            lines.append(
                "host quirks: \(feature) still visible after hiding: "
                    + (feature.name == "xsave" ? "noxsave" : "clearcpuid=\(feature.name)") + " on the kernel command line")
        }
        return lines
    }

    /// Runs the probe with `policy` plus the hiding policy, on `kvmPath`.
    public static func probe(policy: CPUIDPolicy = CPUIDPolicy(), kvmPath: String = "/dev/kvm") throws(MachineError) -> HostQuirks
    {
        let features = GuestFeature.hiddenForInterpretingHosts
        var leaves: [(UInt32, UInt32)] = []
        for feature in features where !leaves.contains(where: { $0 == (feature.leaf, feature.subleaf) }) {
            leaves.append((feature.leaf, feature.subleaf))
        }
        let device = ProbePort(queries: leaves)
        let trapped = TrapFlag()
        let standardPopcnt = InstructionEmulator.allHandlers["popcnt"]

        var config = MachineConfiguration(guest: .flat(ProbeImages.hostQuirks, loadAddress: 0x1_0000))
        config.memorySize = 1 << 20
        config.interruptController = false
        config.kvmPath = kvmPath
        config.consoleOutput = { _ in }
        config.hypercallPort = nil
        config.unclaimedPorts = .stop
        config.cpuid = HostQuirks(
            runsKernelCodeNatively: false, hiddenFeatures: features, stillVisible: [],
            hidesPVSendIPI: true, probeMilliseconds: 0
        ).linuxPolicy(from: policy)
        do {
            config.portDevices = [
                .init(name: "quirk-probe", range: try PortRange(base: ProbePort.port, count: 1), device: device)
            ]
        } catch { throw .bus(error) }
        config.instructionHandlers["popcnt"] = { state in
            trapped.value.store(true, ordering: .relaxed)
            return standardPopcnt?(&state) ?? .unsupported("popcnt")
        }

        let start = HostIO.monotonicNanoseconds()
        let machine = try Machine(config)
        let report = try machine.run()
        let elapsed = Double(HostIO.monotonicNanoseconds() - start) / 1e6
        guard report.outcome == .stopped(.guestExit(status: 0)) else {
            throw .hostProbeFailed("the host-quirk probe guest ended with: \(report.outcome)")
        }
        let answers = device.answers
        guard answers.popcnt == 8, answers.cpuid.count == leaves.count else {
            throw .hostProbeFailed(
                "the host-quirk probe guest answered \(answers.cpuid.count) of \(leaves.count) CPUID queries (POPCNT gave \(answers.popcnt.map(String.init) ?? "nothing"))"
            )
        }
        let interprets = trapped.value.load(ordering: .relaxed)
        var visible: [GuestFeature] = []
        if interprets {
            for feature in features {
                guard let index = leaves.firstIndex(where: { $0 == (feature.leaf, feature.subleaf) }) else { continue }
                let regs = answers.cpuid[index]
                let value: UInt32 =
                    switch feature.register {
                    case .eax: regs.0
                    case .ebx: regs.1
                    case .ecx: regs.2
                    case .edx: regs.3
                    }
                if value >> feature.bit & 1 == 1 { visible.append(feature) }
            }
        }
        return HostQuirks(
            runsKernelCodeNatively: !interprets, hiddenFeatures: interprets ? features : [],
            stillVisible: visible, hidesPVSendIPI: interprets, probeMilliseconds: elapsed)
    }
}

private final class TrapFlag: Sendable { let value = Atomic<Bool>(false) }

/// Port 0x510 of the probe guest: its first OUT is the POPCNT result; then each pair of INs
/// reads a (leaf, subleaf) query and four OUTs carry back EAX, EBX, ECX, EDX; an IN past the
/// last query reads 0xFFFFFFFF.
private final class ProbePort: PortDevice {
    static let port: UInt16 = 0x510
    struct Answers {
        var popcnt: UInt32?
        var cpuid: [(UInt32, UInt32, UInt32, UInt32)] = []
        var pending: [UInt32] = []
        var reads = 0
    }
    let queries: [(UInt32, UInt32)]
    private let state = Mutex(Answers())

    init(queries: [(UInt32, UInt32)]) { self.queries = queries }

    var answers: Answers { state.withLock { $0 } }

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        state.withLock { state in
            let query = state.reads / 2
            defer { state.reads += 1 }
            guard query < queries.count else { return .max }
            return state.reads % 2 == 0 ? queries[query].0 : queries[query].1
        }
    }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        state.withLock { state in
            if state.popcnt == nil {
                state.popcnt = value
                return
            }
            state.pending.append(value)
            if state.pending.count == 4 {
                state.cpuid.append((state.pending[0], state.pending[1], state.pending[2], state.pending[3]))
                state.pending.removeAll(keepingCapacity: true)
            }
        }
        return .continue
    }
}

/// Milliseconds with one decimal, for traces: "12.3".
package func formatMilliseconds(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}
