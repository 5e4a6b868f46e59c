public import VisorCore
public import VisorSnapshot
import Synchronization

/// QEMU's firmware-configuration interface (fw_cfg), the I/O-port variant without DMA: a
/// guest writes an item's 16-bit selector to port 0x510 and then reads the item byte by
/// byte from port 0x511.
///
/// As in QEMU: a 2-byte write (at 0x510 or 0x511) selects an item and rewinds to its first
/// byte; a 1-byte read (at either port) returns the next byte, and 0 past the item's end or
/// for a selector with no item; 1-byte writes (the old data-write channel) are ignored; other
/// widths are refused as QEMU's port region refuses them (reads all ones, writes dropped).
/// Bit 14 of a selector (the write channel) is ignored; bit 15 selects the architecture's
/// items, of which there are none here. The interface ID says "no DMA", and port 0x514 is
/// not claimed.
public final class FirmwareConfigDevice: PortDevice {
    /// The selector port; the data port follows it.
    public static let defaultPort: UInt16 = 0x510
    public static let portCount = 2

    /// The item selectors SwiftVisor fills (the values of QEMU's `FW_CFG_*`).
    public enum Key {
        public static let signature: UInt16 = 0x00
        public static let interfaceID: UInt16 = 0x01
        public static let ramSize: UInt16 = 0x03
        public static let cpuCount: UInt16 = 0x05
        public static let maxCPUs: UInt16 = 0x0F
        public static let commandLineSize: UInt16 = 0x14
        public static let commandLineData: UInt16 = 0x15
        public static let fileDirectory: UInt16 = 0x19
        /// The first selector for a named file.
        public static let firstFile: UInt16 = 0x20
    }

    /// A named file in the directory.
    public struct File: Sendable, Equatable {
        public var name: String
        public var contents: [UInt8]
        public init(name: String, contents: [UInt8]) {
            self.name = name
            self.contents = contents
        }
    }

    /// The longest file name, without its NUL.
    public static let fileNameLimit = 55

    /// Item contents by selector (bit 14 clear).
    package let items: [UInt16: [UInt8]]
    private struct Cursor {
        var selector: UInt16 = 0
        var offset = 0
    }
    private let cursor = Mutex(Cursor())

    /// The standard items for a machine with `memorySize` bytes of RAM and `cpuCount` vCPUs:
    /// the signature "QEMU", interface ID 1 (traditional interface, no DMA), the RAM size
    /// (u64), the CPU count and maximum (u16), the command line (its size with the NUL as a
    /// u32, then its bytes and a NUL), and the file directory listing `files` (names longer
    /// than `fileNameLimit` bytes are cut). Numbers are little-endian, the directory
    /// big-endian, as in QEMU.
    public init(memorySize: UInt64, cpuCount: UInt16, commandLine: String, files: [File] = []) {
        var items: [UInt16: [UInt8]] = [:]
        items[Key.signature] = Array("QEMU".utf8)
        items[Key.interfaceID] = le(UInt32(1), 4)
        items[Key.ramSize] = le(memorySize, 8)
        items[Key.cpuCount] = le(UInt64(cpuCount), 2)
        items[Key.maxCPUs] = le(UInt64(cpuCount), 2)
        let cmdline = Array(commandLine.utf8) + [0]
        items[Key.commandLineSize] = le(UInt64(cmdline.count), 4)
        items[Key.commandLineData] = cmdline
        let files = files.prefix(Int(0x3FFF - Key.firstFile))
        var directory = be(UInt64(files.count), 4)
        for (i, file) in files.enumerated() {
            let selector = Key.firstFile + UInt16(i)
            items[selector] = file.contents
            directory += be(UInt64(file.contents.count), 4) + be(UInt64(selector), 2) + [0, 0]
            let name = Array(file.name.utf8.prefix(Self.fileNameLimit))
            directory += name + [UInt8](repeating: 0, count: 56 - name.count)
        }
        items[Key.fileDirectory] = directory
        self.items = items
    }

    /// The contents of the item at `selector` (bit 14 ignored), nil when there is none.
    package func item(_ selector: UInt16) -> [UInt8]? { items[selector & 0xBFFF] }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        guard width == 1 else { return UInt32(truncatingIfNeeded: allOnes(width: width)) }
        return cursor.withLock { cursor in
            guard let item = items[cursor.selector], cursor.offset < item.count else { return 0 }
            defer { cursor.offset += 1 }
            return UInt32(item[cursor.offset])
        }
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        if width == 2 {
            cursor.withLock { $0 = Cursor(selector: UInt16(truncatingIfNeeded: value) & 0xBFFF, offset: 0) }
        }
        return .continue
    }
}

private func le(_ value: UInt64, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
}

private func le(_ value: UInt32, _ count: Int) -> [UInt8] { le(UInt64(value), count) }

private func be(_ value: UInt64, _ count: Int) -> [UInt8] { le(value, count).reversed() }

extension FirmwareConfigDevice {
    /// The two ports at 0x510. No ACPI description here (QEMU's `QEMU0002` device is not
    /// needed by the guests that read it).
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "fw-cfg", ports: [try .ports("fw-cfg", Self.defaultPort, count: Self.portCount)], portDevice: self,
            state: self)
    }
}

extension FirmwareConfigDevice: SnapshotStateful {
    /// The selected item and how far the guest has read it (the items come from the
    /// machine's configuration, which a snapshot saves).
    public func saveState(to writer: inout SnapshotWriter) {
        let cursor = self.cursor.withLock { $0 }
        writer.write(cursor.selector)
        writer.write(UInt64(cursor.offset))
    }

    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let selector = try reader.readUInt16("the fw_cfg selector")
        let offset = try reader.readUInt64("the fw_cfg read offset")
        // Reads past an item's end return 0 whatever the offset; a bound keeps it an Int.
        guard offset <= UInt64(UInt32.max) else { throw .invalid("the fw_cfg read offset", reason: "is \(offset)") }
        cursor.withLock { $0 = Cursor(selector: selector, offset: Int(offset)) }
    }
}
