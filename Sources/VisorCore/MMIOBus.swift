/// A guest-physical range [start, end) for an MMIO device.
public struct MMIORange: Sendable, Equatable, CustomStringConvertible {
    public let start: UInt64
    public let size: UInt64
    public var end: UInt64 { start + size }

    /// Fails for size zero or a range past the end of the 64-bit address space.
    public init(start: UInt64, size: UInt64) throws(BusError) {
        guard size > 0, start <= UInt64.max - size else {
            throw .invalidRange("\(size) bytes at 0x\(hex(start)) do not fit the address space")
        }
        self.start = start
        self.size = size
    }

    public func contains(_ address: UInt64) -> Bool { address >= start && address - start < size }

    public var description: String { "[0x\(hex(start)), 0x\(hex(end)))" }
}

/// The MMIO bus: non-overlapping regions kept ordered by start address; lookup is a
/// binary search, with no allocation.
public struct MMIOBus: Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let range: MMIORange
        public let device: any MMIODevice
    }

    /// Sorted by `range.start`, non-overlapping.
    public private(set) var entries: [Entry] = []

    public init() {}

    /// Registers `device` for `range`. Fails, naming both, if it overlaps a registered region.
    public mutating func register(_ device: any MMIODevice, name: String, range: MMIORange) throws(BusError) {
        let i = insertionIndex(range.start)
        let neighbours = [i > 0 ? entries[i - 1] : nil, i < entries.count ? entries[i] : nil]
        for case let other? in neighbours where other.range.start < range.end && range.start < other.range.end {
            throw .overlap(
                new: "'\(name)' \(range)", existing: "'\(other.name)' \(other.range)",
                at: "0x\(hex(max(range.start, other.range.start)))")
        }
        entries.insert(Entry(name: name, range: range, device: device), at: i)
    }

    /// Removes the region called `name`.
    public mutating func unregister(name: String) throws(BusError) {
        guard let i = entries.firstIndex(where: { $0.name == name }) else { throw .notRegistered(name) }
        entries.remove(at: i)
    }

    /// First index whose start is >= `address`.
    private func insertionIndex(_ address: UInt64) -> Int {
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].range.start < address { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// The index of the region containing `address`, if any.
    @inline(__always)
    public func index(for address: UInt64) -> Int? {
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            let range = entries[mid].range
            if address < range.start {
                high = mid
            } else if address - range.start >= range.size {
                low = mid + 1
            } else {
                return mid
            }
        }
        return nil
    }
}
