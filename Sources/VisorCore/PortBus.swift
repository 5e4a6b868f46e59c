/// An error from registering devices on a bus. Messages name both parties of a conflict.
public enum BusError: Error, Equatable, CustomStringConvertible {
    /// The range is empty or runs past the end of the address space.
    case invalidRange(String)
    /// The new range overlaps one already registered.
    case overlap(new: String, existing: String, at: String)
    /// Nothing with that name is registered.
    case notRegistered(String)

    public var description: String {
        switch self {
        case .invalidRange(let what): "invalid bus range: \(what)"
        case .overlap(let new, let existing, let at): "cannot register \(new): it overlaps \(existing) at \(at)"
        case .notRegistered(let name): "nothing named '\(name)' is registered"
        }
    }
}

/// A range of I/O ports [base, base + count).
public struct PortRange: Sendable, Equatable, CustomStringConvertible {
    public let base: UInt16
    /// Number of ports, 1...65536.
    public let count: Int

    /// Fails for an empty range or one that runs past port 0xFFFF.
    public init(base: UInt16, count: Int) throws(BusError) {
        guard count >= 1, count <= 0x10000 - Int(base) else {
            throw .invalidRange("\(count) ports from 0x\(String(base, radix: 16)) do not fit 0x0-0xffff")
        }
        self.base = base
        self.count = count
    }

    public var last: UInt16 { UInt16(Int(base) + count - 1) }

    public func contains(_ port: UInt16) -> Bool { port >= base && Int(port) < Int(base) + count }

    public var description: String {
        count == 1 ? "port 0x\(hex(base))" : "ports 0x\(hex(base))-0x\(hex(last))"
    }
}

func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }

/// The port I/O bus: a 65,536-entry interception map from port to owner.
///
/// Lookup is one array load per access, whatever the number of devices; there is no tree
/// walk and no allocation. An entry is a device, or a "blocked" range that is intercepted
/// with no handler. Ports with no entry follow the dispatcher's unclaimed-port policy.
///
/// An access is routed by its first port: a 2- or 4-byte access at the last port of a
/// range goes to that range's owner in full, with its offset, even if its upper bytes
/// would fall in a neighbour's range. Devices see such accesses as an offset near their
/// end and a width, and decide (the 16550, for example, handles byte accesses only and
/// treats wider ones as the low byte).
public struct PortBus: Sendable {
    /// One registration: a device, or nil for a blocked range.
    public struct Entry: Sendable {
        public let name: String
        public let range: PortRange
        public let device: (any PortDevice)?
    }

    /// What the exit path needs of a registration: the device (nil when blocked) and the
    /// base port, without the name, so that a lookup copies one reference.
    public struct Route: Sendable {
        public let device: (any PortDevice)?
        public let base: UInt16
    }

    /// owner[port] is an index into `entries` and `routes`, or 0 for no owner.
    private var owner: [UInt16]
    /// entries[0] is unused so that 0 can mean "unclaimed".
    private var entries: [Entry?]
    /// routes[i] mirrors entries[i].
    private var routes: [Route?]

    public init() {
        owner = Array(repeating: 0, count: 0x10000)
        entries = [nil]
        routes = [nil]
    }

    /// Registers `device` for `range`. Fails, naming both, if any port is already taken.
    public mutating func register(_ device: any PortDevice, name: String, range: PortRange) throws(BusError) {
        try add(Entry(name: name, range: range, device: device))
    }

    /// Intercepts `range` with no handler: reads return all ones, writes are dropped,
    /// and the accesses are not subject to the unclaimed-port policy.
    public mutating func block(_ range: PortRange, name: String) throws(BusError) {
        try add(Entry(name: name, range: range, device: nil))
    }

    /// Removes the registration called `name`.
    public mutating func unregister(name: String) throws(BusError) {
        guard let index = entries.firstIndex(where: { $0?.name == name }), let entry = entries[index] else {
            throw .notRegistered(name)
        }
        for port in Int(entry.range.base)...Int(entry.range.last) { owner[port] = 0 }
        entries[index] = nil
        routes[index] = nil
    }

    private mutating func add(_ entry: Entry) throws(BusError) {
        for port in Int(entry.range.base)...Int(entry.range.last) where owner[port] != 0 {
            let existing = entries[Int(owner[port])]!
            throw .overlap(
                new: "'\(entry.name)' (\(entry.range))",
                existing: "'\(existing.name)' (\(existing.range))",
                at: "port 0x\(hex(port))")
        }
        let index: Int
        if let free = entries.indices.dropFirst().first(where: { entries[$0] == nil }) {
            index = free
            entries[index] = entry
            routes[index] = Route(device: entry.device, base: entry.range.base)
        } else {
            guard entries.count <= Int(UInt16.max) else { throw .invalidRange("too many registrations") }
            index = entries.count
            entries.append(entry)
            routes.append(Route(device: entry.device, base: entry.range.base))
        }
        for port in Int(entry.range.base)...Int(entry.range.last) { owner[port] = UInt16(index) }
    }

    /// The registration that owns `port`, if any.
    public func entry(for port: UInt16) -> Entry? {
        let index = Int(owner[Int(port)])
        return index == 0 ? nil : entries[index]
    }

    /// The route for `port`: one table load and one array load.
    @inline(__always)
    public func route(for port: UInt16) -> Route? {
        let index = Int(owner[Int(port)])
        return index == 0 ? nil : routes[index]
    }

    /// Every registration, ordered by base port.
    public var registrations: [Entry] {
        entries.compactMap { $0 }.sorted { $0.range.base < $1.range.base }
    }
}
