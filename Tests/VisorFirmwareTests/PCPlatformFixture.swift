import VisorDevices
@testable import VisorFirmware

extension ACPIPlatform {
    /// The devices of the PC platform as a Linux machine gets them, described for ACPI: the
    /// tables are tested on the same device list the machine registers on its buses.
    static func pcDevices(without names: Set<String> = []) -> [ACPIDevice] {
        // The PC platform's fixed places always encode; a failure here is a bug in a device file.
        let platform = try! Platform(kind: .pc, consoleOutput: { _ in }, irqLine: nil)
        return platform.devices.map(\.acpi).filter { !names.contains($0.name) }
    }

    /// The PC platform with `processorCount` vCPUs, without the devices named in `without`.
    static func pc(processorCount: Int, without names: Set<String> = []) -> ACPIPlatform {
        ACPIPlatform(processorCount: processorCount, devices: pcDevices(without: names))
    }
}
