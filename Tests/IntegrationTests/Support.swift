import CBenchSupport
import CNativeOps
import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorKVM

/// Whether the KVM integration tests run. They skip, visibly, only where /dev/kvm is
/// missing; with SWIFTVISOR_REQUIRE_KVM=1 (as CI sets) they run anyway and fail loudly.
enum KVM {
    // SAFETY: access and getenv read string literals; getenv's result is copied at once.
    static let available = unsafe access("/dev/kvm", R_OK | W_OK) == 0
    static let required = unsafe getenv("SWIFTVISOR_REQUIRE_KVM").map { unsafe String(cString: $0) == "1" } ?? false
    static let enabled = available || required
    static let skipMessage: Comment = "/dev/kvm is missing or not accessible: KVM integration tests skipped"
}

/// All suites that use /dev/kvm, run one test at a time: the host has two cores, each
/// guest is a thread, and the leak checks count this process's file descriptors.
@Suite("KVM integration", .serialized, .enabled(if: KVM.enabled, KVM.skipMessage))
enum KVMIntegration {}

/// Collects what a guest writes to COM1.
final class ConsoleCapture: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
    var sink: @Sendable (UInt8) -> Void { { [self] byte in bytes.withLock { $0.append(byte) } } }
}

/// Collects log lines.
final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    var sink: @Sendable (String) -> Void { { [self] line in lines.withLock { $0.append(line) } } }
}

/// Runs a built-in guest and returns its report and console output.
func runGuest(
    _ image: [UInt8], commandLine: String = "", memory: UInt64 = 64 << 20,
    configure: (inout MachineConfiguration) -> Void = { _ in }
) throws -> (report: RunReport, console: String) {
    let console = ConsoleCapture()
    let guest: MachineConfiguration.Guest
    switch GuestImages.format(of: image) {
    case .elf64: guest = .elf(image)
    case .multiboot: guest = .multiboot(image)
    case .realModeFlat: guest = .flat(image, loadAddress: 0x7C00)
    }
    var config = MachineConfiguration(guest: guest)
    config.memorySize = memory
    config.commandLine = commandLine
    config.consoleOutput = console.sink
    configure(&config)
    let machine = try Machine(config)
    let report = try machine.run()
    return (report, console.text)
}

/// Counts device writes and records the vCPU thread's allocation counter at the
/// `sampleStart`-th and the last write, without allocating itself. (Every stored property
/// is an immutable atomic, so sharing it between threads is sound.)
class WriteCounter: @unchecked Sendable {
    let writes = Atomic<Int>(0)
    let lastWidth = Atomic<UInt8>(0)
    let allocationsAtStart = Atomic<UInt64>(0)
    let allocationsAtEnd = Atomic<UInt64>(0)
    let sampleStart: Int

    init(sampleStart: Int) {
        self.sampleStart = sampleStart
    }

    func countWrite(width: UInt8) {
        let n = writes.add(1, ordering: .relaxed).newValue
        lastWidth.store(width, ordering: .relaxed)
        let allocations = calloc_counter_thread_allocations()
        if n == sampleStart { allocationsAtStart.store(allocations, ordering: .relaxed) }
        allocationsAtEnd.store(allocations, ordering: .relaxed)
    }
}

/// A port device that counts writes (see `WriteCounter`) and answers reads with `readValue`.
final class CountingPortDevice: WriteCounter, PortDevice, @unchecked Sendable {
    let lastValue = Atomic<UInt32>(0)
    let readValue: UInt32

    init(sampleStart: Int = 100, readValue: UInt32 = 0) {
        self.readValue = readValue
        super.init(sampleStart: sampleStart)
    }

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { readValue }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        lastValue.store(value, ordering: .relaxed)
        countWrite(width: width)
        return .continue
    }
}

/// An MMIO device that counts writes the same way and records the last offset.
final class CountingMMIODevice: WriteCounter, MMIODevice, @unchecked Sendable {
    let lastOffset = Atomic<UInt64>(0)

    init() { super.init(sampleStart: 100) }

    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 { 0 }

    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        lastOffset.store(offset, ordering: .relaxed)
        countWrite(width: width)
        return .continue
    }
}

/// Removes the file at `path`, if any.
func removeFile(_ path: String) {
    // SAFETY: unlink reads the NUL-terminated copy of `path` Swift passes for the call.
    _ = unsafe unlink(path)
}

/// Open file descriptors of this process.
func openFileDescriptorCount() -> Int {
    // SAFETY: opendir reads a string literal; `dir` is used only until closedir, once.
    guard let dir = unsafe opendir("/proc/self/fd") else { return -1 }
    defer { unsafe closedir(dir) }
    var count = 0
    while unsafe readdir(dir) != nil { count += 1 }
    return count
}

/// What this host's KVM and CPU report at run time. A test's expectation about the CPU comes
/// from here, never from the machine the test was written on.
enum HostCPU {
    /// KVM's supported CPUID table (`KVM_GET_SUPPORTED_CPUID`).
    static let supported: [CPUIDEntry] = (try? KVMSystem().supportedCPUID()) ?? []

    /// The supported table's entry for `leaf`/`subleaf`, if KVM lists it.
    static func entry(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> CPUIDEntry? {
        supported.first { $0.function == leaf && $0.index == subleaf }
    }

    /// CPUID as a guest with the default policy sees it here, read by the `cpuid_probe`
    /// guest (by "LLLLLLLL.SS"). Some hosts' KVM does not apply every bit of the VMM's table
    /// (see the README's CPU policy section), so what a guest sees is measured, not derived.
    static let guestSees: [String: (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32)] =
        (try? runGuest(GuestImages.cpuidProbe)).map { parseCPUIDProbe($0.console) } ?? [:]

    /// The guest sees XSAVE (CPUID.1:ECX bit 26).
    static var guestHasXSAVE: Bool { (guestSees["00000001.00"]?.ecx ?? 0) & (1 << 26) != 0 }

    /// The guest sees SMAP (CPUID.(7,0):EBX bit 20).
    static var guestHasSMAP: Bool { (guestSees["00000007.00"]?.ebx ?? 0) & (1 << 20) != 0 }

    /// The XCR0 bits KVM can give a guest (leaf 0xD subleaf 0, EDX:EAX).
    static var kvmXCR0: UInt64 {
        guard let d = entry(0xD) else { return 0 }
        return UInt64(d.edx) << 32 | UInt64(d.eax)
    }

    /// The host's own XCR0 (0 where its OS has not enabled XSAVE).
    static let hostXCR0 = native_xcr0()
}
