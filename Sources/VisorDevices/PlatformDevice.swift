package import VisorCore
package import VisorFirmware
package import VisorSnapshot

/// One device as a machine places it: where it sits on the buses, which interrupts it
/// raises and how the ACPI tables describe it. Each device file makes its own with its
/// adapter's `platformDevice(...)`; a machine registers the ranges on its buses and builds
/// the ACPI tables from the same values.
package struct PlatformDevice: Sendable {
    /// A named port range of the device (the name shows in statistics and bus errors).
    package struct PortRegion: Sendable, Equatable {
        package var name: String
        package var range: PortRange
        package init(name: String, range: PortRange) {
            self.name = name
            self.range = range
        }
    }

    /// A named MMIO range of the device.
    package struct MMIORegion: Sendable, Equatable {
        package var name: String
        package var range: MMIORange
        package init(name: String, range: MMIORange) {
            self.name = name
            self.range = range
        }
    }

    /// The device's name, for errors and the ACPI tables' messages ("com1", "i8042").
    package var name: String
    /// Port ranges, all handled by `portDevice`.
    package var ports: [PortRegion]
    package var portDevice: (any PortDevice)?
    /// MMIO ranges, all handled by `mmioDevice`.
    package var mmio: [MMIORegion]
    package var mmioDevice: (any MMIODevice)?
    /// The ISA IRQs (GSIs) the device raises.
    package var irqs: [UInt32]
    /// Its DSDT fragment (a `Device` with `_HID` and `_CRS`, placed in `\_SB`), or empty.
    package var aml: [AMLTerm]
    /// The ACPI fixed-hardware registers it implements, which the FADT points at.
    package var fixedHardware: [ACPIFixedHardware]
    /// What a snapshot saves of it (its section is named after the device); nil for a
    /// device with no state a guest can see.
    package var state: (any SnapshotStateful)?

    package init(
        name: String, ports: [PortRegion] = [], portDevice: (any PortDevice)? = nil,
        mmio: [MMIORegion] = [], mmioDevice: (any MMIODevice)? = nil, irqs: [UInt32] = [],
        aml: [AMLTerm] = [], fixedHardware: [ACPIFixedHardware] = [], state: (any SnapshotStateful)? = nil
    ) {
        self.name = name
        self.ports = ports
        self.portDevice = portDevice
        self.mmio = mmio
        self.mmioDevice = mmioDevice
        self.irqs = irqs
        self.aml = aml
        self.fixedHardware = fixedHardware
        self.state = state
    }

    /// What the ACPI tables need of the device.
    package var acpi: ACPIDevice {
        ACPIDevice(name: name, aml: aml, irqs: irqs, fixedHardware: fixedHardware)
    }

    /// Registers every range on its bus. The buses refuse a range that overlaps one
    /// already there (`BusError.overlap`): that is the only overlap check there is.
    package func register(ports portBus: inout PortBus, mmio mmioBus: inout MMIOBus) throws(BusError) {
        if !ports.isEmpty {
            guard let portDevice else { throw .invalidRange("device '\(name)' has port ranges but no port device") }
            for region in ports { try portBus.register(portDevice, name: region.name, range: region.range) }
        }
        if !mmio.isEmpty {
            guard let mmioDevice else { throw .invalidRange("device '\(name)' has MMIO ranges but no MMIO device") }
            for region in mmio { try mmioBus.register(mmioDevice, name: region.name, range: region.range) }
        }
    }
}

/// A device that cannot be placed: a range that does not fit its bus, or an AML fragment
/// that cannot be encoded.
package enum PlatformError: Error, Equatable, CustomStringConvertible {
    case bus(BusError)
    case aml(AMLError)

    package var description: String {
        switch self {
        case .bus(let error): "\(error)"
        case .aml(let error): "device AML: \(error)"
        }
    }
}

extension PlatformDevice.PortRegion {
    /// `count` ports from `base`, named `name`.
    static func ports(_ name: String, _ base: UInt16, count: Int) throws(PlatformError) -> Self {
        do { return Self(name: name, range: try PortRange(base: base, count: count)) } catch { throw .bus(error) }
    }
}

/// A device's DSDT fragment: `Device(name)` with `_HID` (an EISA ID), an optional `_UID`,
/// and `_CRS` from `resources`.
func deviceAML(_ name: String, hid: String, uid: UInt64? = nil, resources: [AMLResource]) throws(PlatformError) -> [AMLTerm] {
    do {
        var body: [AMLTerm] = [.name("_HID", try .eisaID(hid))]
        if let uid { body.append(.name("_UID", .integer(uid))) }
        body.append(.name("_CRS", try .resourceTemplate(resources)))
        return [.device(name, body)]
    } catch {
        throw .aml(error)
    }
}
