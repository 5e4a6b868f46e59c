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
    public let i8042: I8042Ports
    public let cmos: CMOSPorts
    public let powerManagement: ACPIPowerManagement
    public let resetControl: ResetControlPort
    public let postCodes: PostCodePort
    public let pciConfiguration: PCIConfigPorts

    /// - Parameters:
    ///   - memoryBelow4GiB, memoryAbove4GiB: guest RAM, for the CMOS memory-size fields.
    ///   - irqLine: raises or lowers an ISA interrupt line (nil without an interrupt
    ///     controller).
    ///   - cmos: the CMOS/RTC to keep, as a battery would, from a previous machine (after a
    ///     guest reboot); nil for a new one.
    init(memoryBelow4GiB: UInt64, memoryAbove4GiB: UInt64, irqLine: (@Sendable (UInt32, Bool) -> Void)?,
         cmos: CMOSPorts? = nil) {
        i8042 = I8042Ports(interruptLine: irqLine)
        self.cmos = cmos ?? CMOSPorts(memoryBelow4GiB: memoryBelow4GiB, memoryAbove4GiB: memoryAbove4GiB)
        powerManagement = ACPIPowerManagement()
        resetControl = ResetControlPort()
        postCodes = PostCodePort()
        pciConfiguration = PCIConfigPorts()
    }

    /// The port registrations, by name.
    var portDevices: [MachineConfiguration.PortRegistration] {
        get throws(BusError) {
            [
                .init(name: "i8042-data", range: try PortRange(base: I8042Ports.dataPort, count: I8042Ports.portCount), device: i8042),
                .init(name: "i8042-command", range: try PortRange(base: I8042Ports.commandPort, count: I8042Ports.portCount), device: i8042),
                .init(name: "cmos-rtc", range: try PortRange(base: CMOSPorts.base, count: CMOSPorts.portCount), device: cmos),
                .init(name: "acpi-pm1a-event", range: try PortRange(base: powerManagement.eventBlockBase, count: ACPIPowerManagement.eventBlockLength), device: powerManagement),
                .init(name: "acpi-pm1a-control", range: try PortRange(base: powerManagement.controlBlockBase, count: ACPIPowerManagement.controlBlockLength), device: powerManagement),
                .init(name: "reset-control", range: try PortRange(base: ResetControlPort.defaultPort, count: ResetControlPort.portCount), device: resetControl),
                .init(name: "post-code", range: try PortRange(base: PostCodePort.defaultPort, count: PostCodePort.portCount), device: postCodes),
                .init(name: "pci-config-address", range: try PortRange(base: PCIConfigPorts.addressPort, count: PCIConfigPorts.addressPortCount), device: pciConfiguration),
                .init(name: "pci-config-address", range: try PortRange(base: PCIConfigPorts.addressUpperBase, count: PCIConfigPorts.addressUpperCount), device: pciConfiguration),
                .init(name: "pci-config-data", range: try PortRange(base: PCIConfigPorts.dataBase, count: PCIConfigPorts.dataPortCount), device: pciConfiguration),
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
