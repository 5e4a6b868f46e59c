public import VisorKVM
/// What a device asks of the VM after handling an access.
public enum DeviceAction: Sendable, Equatable {
    /// Carry on running the guest.
    case `continue`
    /// Stop the VM with this reason (for example a debug-exit port).
    case stop(StopReason)
    /// Deliver an event to the guest (for example #GP for a forbidden register write).
    /// It arrives after the accessing instruction completes.
    case inject(Injection)
}

/// A device on the port I/O bus. It is told the port and the offset from the start of the
/// range it was registered for, so one type can serve several ranges.
///
/// Handlers run on the vCPU thread that made the access; with several vCPUs they may run
/// concurrently, so devices keep their state behind a lock (`Mutex`).
public protocol PortDevice: AnyObject, Sendable {
    /// An IN of `width` (1, 2 or 4) bytes. Only the low `width` bytes are used.
    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32
    /// An OUT of `width` bytes; `value` holds them zero-extended.
    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction
    /// A string OUT (`rep outs`) of `count` elements, `element(i)` being the i-th. The
    /// default writes them one by one with `portWrite` and stops at the first action other
    /// than `.continue`; a device overrides it to take the elements as one batch (COM1
    /// hands them to the console in one write).
    func portWrite(
        port: UInt16, offset: UInt16, width: UInt8, count: Int, element: (Int) -> UInt32
    ) -> DeviceAction
}

extension PortDevice {
    public func portWrite(
        port: UInt16, offset: UInt16, width: UInt8, count: Int, element: (Int) -> UInt32
    ) -> DeviceAction {
        for i in 0..<count {
            let action = portWrite(port: port, offset: offset, width: width, value: element(i))
            if action != .continue { return action }
        }
        return .continue
    }
}

/// Where a guest's console output goes (COM1 and the console-write hypercall): called on
/// the vCPU thread with every run of bytes one guest access sends, one byte for an `out`,
/// up to 4,096 for a `rep outsb`, up to 64 KiB for a hypercall, so that a sink can write
/// them with one system call.
public typealias ConsoleOutput = @Sendable (Span<UInt8>) -> Void

/// A device on the MMIO bus, told the address and its offset into the device's region.
public protocol MMIODevice: AnyObject, Sendable {
    /// A read of `width` (1, 2, 4 or 8) bytes. Only the low `width` bytes are used.
    func mmioRead(address: UInt64, offset: UInt64, width: UInt8) -> UInt64
    /// A write of `width` bytes; `value` holds them zero-extended.
    func mmioWrite(address: UInt64, offset: UInt64, width: UInt8, value: UInt64) -> DeviceAction
}

/// What happens to an access that no device claims.
public enum UnclaimedAccessPolicy: String, Sendable, CaseIterable {
    /// Reads return all ones at the access width; writes are dropped. The guest runs on.
    case block
    /// As `block`, and each access is logged.
    case log
    /// The VM stops with a diagnostic naming the access.
    case stop
}

/// All ones at `width` bytes (0xFF, 0xFFFF, 0xFFFF_FFFF, or all 64 bits).
@inline(__always)
public func allOnes(width: UInt8) -> UInt64 {
    width >= 8 ? UInt64.max : (UInt64(1) << (UInt64(width) * 8)) &- 1
}
