import VisorCore
public import VisorDevices
import VisorFirmware
import VisorLinux
import VisorMemory

/// The PC-shaped platform a Linux guest gets besides COM1: ACPI tables in the BIOS area,
/// the i8042, CMOS/RTC, the ACPI PM1a registers, the reset register at 0xCF9, the POST-code
/// port 0x80 and PCI configuration mechanism #1 with no devices behind it.
///
/// The ports match what the FADT and DSDT describe (`ACPIPlatform`'s defaults).
public final class PCPlatform: Sendable {
    public let i8042: I8042Device
    public let cmos: CMOSDevice
    public let powerManagement: PM1Device
    public let resetControl: ResetControlDevice
    public let postCodes: PostCodeDevice
    public let pciConfiguration: PCIConfigDevice

    /// - Parameters:
    ///   - memoryBelow4GiB, memoryAbove4GiB: guest RAM, for the CMOS memory-size fields.
    ///   - irqLine: raises or lowers an ISA interrupt line (nil without an interrupt
    ///     controller).
    ///   - cmos: the CMOS/RTC to keep, as a battery would, from a previous machine (after a
    ///     guest reboot); nil for a new one.
    init(memoryBelow4GiB: UInt64, memoryAbove4GiB: UInt64, irqLine: (@Sendable (UInt32, Bool) -> Void)?,
         cmos: CMOSDevice? = nil) {
        i8042 = I8042Device(interruptLine: irqLine)
        self.cmos = cmos ?? CMOSDevice(memoryBelow4GiB: memoryBelow4GiB, memoryAbove4GiB: memoryAbove4GiB)
        powerManagement = PM1Device()
        resetControl = ResetControlDevice()
        postCodes = PostCodeDevice()
        pciConfiguration = PCIConfigDevice()
    }

    /// The port registrations, by name.
    var portDevices: [MachineConfiguration.PortRegistration] {
        get throws(BusError) {
            [
                .init(name: "i8042-data", range: try PortRange(base: I8042Device.dataPort, count: I8042Device.portCount), device: i8042),
                .init(name: "i8042-command", range: try PortRange(base: I8042Device.commandPort, count: I8042Device.portCount), device: i8042),
                .init(name: "cmos-rtc", range: try PortRange(base: CMOSDevice.base, count: CMOSDevice.portCount), device: cmos),
                .init(name: "acpi-pm1a-event", range: try PortRange(base: powerManagement.eventBlockBase, count: PM1Device.eventBlockLength), device: powerManagement),
                .init(name: "acpi-pm1a-control", range: try PortRange(base: powerManagement.controlBlockBase, count: PM1Device.controlBlockLength), device: powerManagement),
                .init(name: "reset-control", range: try PortRange(base: ResetControlDevice.defaultPort, count: ResetControlDevice.portCount), device: resetControl),
                .init(name: "post-code", range: try PortRange(base: PostCodeDevice.defaultPort, count: PostCodeDevice.portCount), device: postCodes),
                .init(name: "pci-config-address", range: try PortRange(base: PCIConfigDevice.addressPort, count: PCIConfigDevice.addressPortCount), device: pciConfiguration),
                .init(name: "pci-config-address", range: try PortRange(base: PCIConfigDevice.addressUpperBase, count: PCIConfigDevice.addressUpperCount), device: pciConfiguration),
                .init(name: "pci-config-data", range: try PortRange(base: PCIConfigDevice.dataBase, count: PCIConfigDevice.dataPortCount), device: pciConfiguration),
            ]
        }
    }

    /// Writes the ACPI tables for `processors` vCPUs, then loads the kernel, initrd and boot
    /// data. Nothing runs yet.
    static func load(_ request: LinuxBootRequest, processors: Int, into memory: GuestMemory) throws(MachineError) -> LinuxBootPlan {
        let tables: ACPITables
        do { tables = try ACPITables.build(for: ACPIPlatform(processorCount: processors)) } catch {
            throw .firmware(error.description)
        }
        // The loader checks that the first MiB, and so the BIOS area the tables go to, is RAM.
        let plan: LinuxBootPlan
        do { plan = try LinuxLoader.load(request, into: memory, rsdpAddress: tables.rsdpAddress) } catch {
            throw .linux(error)
        }
        do { try memory.write(tables.bytes, at: tables.rsdpAddress) } catch { throw .memory(error) }
        return plan
    }
}
