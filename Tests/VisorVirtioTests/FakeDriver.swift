import VisorMemory
import VisorVirtio

/// A virtio driver that writes split rings into test memory the way a guest would, or the
/// way a hostile guest would: every field can be set to anything.
struct FakeDriver {
    let memory: GuestMemory
    let size: UInt16
    let descriptors: UInt64
    let available: UInt64
    let used: UInt64
    /// Where buffers go.
    static let bufferBase: UInt64 = 0x10_000
    private(set) var availableIndex: UInt16 = 0

    init(memory: GuestMemory, size: UInt16 = 8, descriptors: UInt64 = 0x1000, available: UInt64 = 0x2000, used: UInt64 = 0x3000) {
        self.memory = memory
        self.size = size
        self.descriptors = descriptors
        self.available = available
        self.used = used
    }

    static func memory(_ size: UInt64 = 1 << 20) throws -> GuestMemory { try GuestMemory(size: size) }

    func queue(indirect: Bool = false, eventIndex: Bool = false) throws -> Virtqueue {
        try Virtqueue(
            size: size, maximum: 256, descriptors: descriptors, available: available, used: used,
            indirect: indirect, eventIndex: eventIndex, memory: memory)
    }

    /// Writes descriptor `index` of the table at `table` (the queue's own by default).
    func setDescriptor(
        _ index: UInt64, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0, table: UInt64? = nil
    ) throws {
        let at = (table ?? descriptors) + 16 * index
        try memory.write(address, at: at)
        try memory.write(length, at: at + 8)
        try memory.write(flags, at: at + 12)
        try memory.write(next, at: at + 14)
    }

    /// Puts `head` in the next available slot and publishes it.
    mutating func makeAvailable(_ head: UInt16) throws {
        try memory.write(head, at: available + 4 + 2 * UInt64(availableIndex % size))
        availableIndex &+= 1
        try memory.write(availableIndex, at: available + 2)
    }

    /// Sets the available index directly (a hostile driver).
    mutating func setAvailableIndex(_ index: UInt16) throws {
        availableIndex = index
        try memory.write(index, at: available + 2)
    }

    func setAvailableFlags(_ flags: UInt16) throws { try memory.write(flags, at: available) }
    func setUsedEvent(_ event: UInt16) throws { try memory.write(event, at: available + 4 + 2 * UInt64(size)) }

    var usedIndex: UInt16 { (try? memory.readUInt16(at: used + 2)) ?? 0xFFFF }

    /// Used-ring element `slot`: (id, length).
    func usedElement(_ slot: UInt16) -> (id: UInt32, length: UInt32) {
        let at = used + 4 + 8 * UInt64(slot % size)
        return ((try? memory.readUInt32(at: at)) ?? 0xFFFF_FFFF, (try? memory.readUInt32(at: at + 4)) ?? 0xFFFF_FFFF)
    }
}
