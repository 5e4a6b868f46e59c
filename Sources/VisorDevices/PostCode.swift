public import VisorCore
public import VisorSnapshot
import Synchronization

/// Port 0x80, the POST-code port: a sink that counts the guest's writes and remembers the
/// last code written.
///
/// Linux writes it for I/O delays (`outb_p`, `io_delay`), which makes it one of the most
/// frequent port exits of a boot; the handler is two atomic stores and no lock.
///
/// Reads return all ones at the access width. (Some chipsets return the last code written;
/// nothing Linux does reads it, and all ones is what an absent POST card gives. The host
/// reads the last code through `lastCode`.) An access of any width counts as one write,
/// and its low byte is the code.
public final class PostCodeDevice: PortDevice {
    public static let defaultPort: UInt16 = 0x80
    public static let portCount = 1

    private let writeCount = Atomic<UInt64>(0)
    private let code = Atomic<UInt8>(0)

    public init() {}

    /// Writes the guest has made so far.
    public var writes: UInt64 { writeCount.load(ordering: .relaxed) }

    /// The low byte of the last write (0 before the first).
    public var lastCode: UInt8 { code.load(ordering: .relaxed) }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        UInt32(truncatingIfNeeded: allOnes(width: width))
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        code.store(UInt8(truncatingIfNeeded: value), ordering: .relaxed)
        writeCount.add(1, ordering: .relaxed)
        return .continue
    }
}

extension PostCodeDevice {
    /// The sink at port 0x80. No ACPI description: nothing looks for one.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "post-code", ports: [try .ports("post-code", Self.defaultPort, count: Self.portCount)],
            portDevice: self, state: self)
    }
}

extension PostCodeDevice: SnapshotStateful {
    /// The last code and the count, so a restored VM reports what the guest wrote before.
    public func saveState(to writer: inout SnapshotWriter) {
        writer.write(lastCode)
        writer.write(writes)
    }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let last = try reader.readUInt8("the last POST code")
        let count = try reader.readUInt64("the POST-code write count")
        code.store(last, ordering: .relaxed)
        writeCount.store(count, ordering: .relaxed)
    }
}
