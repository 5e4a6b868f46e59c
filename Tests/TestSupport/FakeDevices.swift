// Fake devices and hand-made exits for tests and benchmarks of the exit core.
import Synchronization
package import VisorCore
package import VisorKVM

/// One access a fake port device saw.
package enum PortCall: Equatable, Sendable {
    case read(port: UInt16, offset: UInt16, width: UInt8)
    case write(port: UInt16, offset: UInt16, width: UInt8, value: UInt32)
}

/// A port device that records every call. Reads return `readBase + n` for the n-th read
/// (counting from 0), so string INs show their order; a write of `stopValue` returns
/// `.stop(.guestExit(status: stopStatus))`.
package final class RecordingPortDevice: PortDevice {
    private let log = Mutex<[PortCall]>([])
    package let readBase: UInt32
    package let stopValue: UInt32?
    package let stopStatus: UInt8

    package init(readBase: UInt32 = 0x40, stopValue: UInt32? = nil, stopStatus: UInt8 = 0) {
        self.readBase = readBase
        self.stopValue = stopValue
        self.stopStatus = stopStatus
    }

    package var calls: [PortCall] { log.withLock { $0 } }

    package func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        log.withLock { calls in
            let n = calls.filter { if case .read = $0 { true } else { false } }.count
            calls.append(.read(port: port, offset: offset, width: width))
            return readBase &+ UInt32(n)
        }
    }

    package func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        log.withLock { $0.append(.write(port: port, offset: offset, width: width, value: value)) }
        if let stopValue, value == stopValue { return .stop(.guestExit(status: stopStatus)) }
        return .continue
    }
}

/// One access a fake MMIO device saw.
package enum MMIOCall: Equatable, Sendable {
    case read(address: UInt64, offset: UInt64, width: UInt8)
    case write(address: UInt64, offset: UInt64, width: UInt8, value: UInt64)
}

/// An MMIO device that records every call. Reads return `readValue` (deliberately wider
/// than any access, so masking shows); a write of `stopValue` stops the VM.
package final class RecordingMMIODevice: MMIODevice {
    private let log = Mutex<[MMIOCall]>([])
    package let readValue: UInt64
    package let stopValue: UInt64?

    package init(readValue: UInt64 = 0x1122_3344_5566_7788, stopValue: UInt64? = nil) {
        self.readValue = readValue
        self.stopValue = stopValue
    }

    package var calls: [MMIOCall] { log.withLock { $0 } }

    package func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64 {
        log.withLock { $0.append(.read(address: address, offset: offset, width: width)) }
        return readValue
    }

    package func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction {
        log.withLock { $0.append(.write(address: address, offset: offset, width: width, value: value)) }
        if let stopValue, value == stopValue { return .stop(.guestExit(status: 7)) }
        return .continue
    }
}

/// Collects the dispatcher's log lines.
package final class LogRecorder: Sendable {
    package init() {}
    private let storage = Mutex<[String]>([])
    package var lines: [String] { storage.withLock { $0 } }
    package var sink: @Sendable (String) -> Void { { [self] line in storage.withLock { $0.append(line) } } }
}

/// Shorthands for hand-made exits.
package func portIn(_ port: UInt16, width: UInt8 = 1, count: UInt32 = 1) -> VMExit {
    .io(PortAccess(isWrite: false, port: port, width: width, count: count))
}

package func portOut(_ port: UInt16, width: UInt8 = 1, count: UInt32 = 1) -> VMExit {
    .io(PortAccess(isWrite: true, port: port, width: width, count: count))
}

package func mmioRead(_ address: UInt64, width: UInt8) -> VMExit {
    .mmio(MMIOAccess(isWrite: false, address: address, width: width))
}

package func mmioWrite(_ address: UInt64, width: UInt8, value: UInt64) -> VMExit {
    .mmio(MMIOAccess(isWrite: true, address: address, width: width, value: value))
}

/// A port range known to be valid (the tests of `PortRange` itself check the throwing paths).
package func ports(_ base: UInt16, _ count: Int) -> PortRange {
    try! PortRange(base: base, count: count)
}

/// An MMIO range known to be valid.
package func region(_ start: UInt64, _ size: UInt64) -> MMIORange {
    try! MMIORange(start: start, size: size)
}
