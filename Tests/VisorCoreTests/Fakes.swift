import Synchronization
@testable import VisorCore
import VisorKVM

/// A fake vCPU over plain storage: the elements of a (string) I/O exit, the last MMIO read
/// result, registers and injected events, so tests see exactly what the dispatcher did.
final class FakeDataChannel: VCPUContext {
    let id: UInt32 = 0
    var elements: [UInt32]
    /// The vCPU's registers, as hypercalls read and write them.
    var regs = Registers()
    /// Every injection, in order.
    var injections: [Injection] = []

    func registers() throws(KVMError) -> Registers { regs }
    var sregs = SpecialRegisters()
    func specialRegisters() throws(KVMError) -> SpecialRegisters { sregs }
    var xcr: UInt64 = 0x7
    func xcr0() throws(KVMError) -> UInt64 { xcr }
    func setRegisters(_ registers: Registers) throws(KVMError) { regs = registers }
    func inject(_ injection: Injection) throws(KVMError) { injections.append(injection) }

    /// The last value passed to `setMMIOData`, nil until then.
    var mmioData: UInt64?
    /// How many times `setMMIOData` was called.
    var mmioSets = 0
    /// Indices read through `ioElement`, in order.
    var reads: [Int] = []
    /// Indices written through `setIOElement`, in order.
    var writes: [Int] = []

    init(_ elements: [UInt32] = [0]) {
        self.elements = elements
    }

    /// `count` elements all holding `value`.
    convenience init(count: Int, value: UInt32 = 0x5A5A_5A5A) {
        self.init(Array(repeating: value, count: count))
    }

    func ioElement(_ index: Int) -> UInt32 {
        reads.append(index)
        return elements[index]
    }

    func setIOElement(_ index: Int, _ value: UInt32) {
        writes.append(index)
        elements[index] = value
    }

    func setMMIOData(_ value: UInt64) {
        mmioData = value
        mmioSets += 1
    }

    /// The last MSR completion: (value, fault).
    var msrCompletion: (value: UInt64, fault: Bool)?
    func completeMSR(value: UInt64, fault: Bool) { msrCompletion = (value, fault) }
}

/// One access a fake port device saw.
enum PortCall: Equatable, Sendable {
    case read(port: UInt16, offset: UInt16, width: UInt8)
    case write(port: UInt16, offset: UInt16, width: UInt8, value: UInt32)
}

/// A port device that records every call. Reads return `readBase + n` for the n-th read
/// (counting from 0), so string INs show their order; a write of `stopValue` returns
/// `.stop(.guestExit(status: stopStatus))`.
final class RecordingPortDevice: PortDevice {
    private let log = Mutex<[PortCall]>([])
    let readBase: UInt32
    let stopValue: UInt32?
    let stopStatus: UInt8

    init(readBase: UInt32 = 0x40, stopValue: UInt32? = nil, stopStatus: UInt8 = 0) {
        self.readBase = readBase
        self.stopValue = stopValue
        self.stopStatus = stopStatus
    }

    var calls: [PortCall] { log.withLock { $0 } }

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        log.withLock { calls in
            let n = calls.filter { if case .read = $0 { true } else { false } }.count
            calls.append(.read(port: port, offset: offset, width: width))
            return readBase &+ UInt32(n)
        }
    }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        log.withLock { $0.append(.write(port: port, offset: offset, width: width, value: value)) }
        if let stopValue, value == stopValue { return .stop(.guestExit(status: stopStatus)) }
        return .continue
    }
}

/// One access a fake MMIO device saw.
enum MMIOCall: Equatable, Sendable {
    case read(address: UInt64, offset: UInt64, width: UInt8)
    case write(address: UInt64, offset: UInt64, width: UInt8, value: UInt64)
}

/// An MMIO device that records every call. Reads return `readValue` (deliberately wider
/// than any access, so masking shows); a write of `stopValue` stops the VM.
final class RecordingMMIODevice: MMIODevice {
    private let log = Mutex<[MMIOCall]>([])
    let readValue: UInt64
    let stopValue: UInt64?

    init(readValue: UInt64 = 0x1122_3344_5566_7788, stopValue: UInt64? = nil) {
        self.readValue = readValue
        self.stopValue = stopValue
    }

    var calls: [MMIOCall] { log.withLock { $0 } }

    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        log.withLock { $0.append(.read(address: address, offset: offset, width: width)) }
        return readValue
    }

    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        log.withLock { $0.append(.write(address: address, offset: offset, width: width, value: value)) }
        if let stopValue, value == stopValue { return .stop(.guestExit(status: 7)) }
        return .continue
    }
}

/// Collects the dispatcher's log lines.
final class LogRecorder: Sendable {
    private let storage = Mutex<[String]>([])
    var lines: [String] { storage.withLock { $0 } }
    var sink: @Sendable (String) -> Void { { [self] line in storage.withLock { $0.append(line) } } }
}

/// Shorthands for hand-made exits.
func portIn(_ port: UInt16, width: UInt8 = 1, count: UInt32 = 1) -> VMExit {
    .io(PortAccess(isWrite: false, port: port, width: width, count: count))
}

func portOut(_ port: UInt16, width: UInt8 = 1, count: UInt32 = 1) -> VMExit {
    .io(PortAccess(isWrite: true, port: port, width: width, count: count))
}

func mmioRead(_ address: UInt64, width: UInt8) -> VMExit {
    .mmio(MMIOAccess(isWrite: false, address: address, width: width))
}

func mmioWrite(_ address: UInt64, width: UInt8, value: UInt64) -> VMExit {
    .mmio(MMIOAccess(isWrite: true, address: address, width: width, value: value))
}

/// A port range known to be valid (the tests of `PortRange` itself check the throwing paths).
func ports(_ base: UInt16, _ count: Int) -> PortRange {
    try! PortRange(base: base, count: count)
}

/// An MMIO range known to be valid.
func region(_ start: UInt64, _ size: UInt64) -> MMIORange {
    try! MMIORange(start: start, size: size)
}
