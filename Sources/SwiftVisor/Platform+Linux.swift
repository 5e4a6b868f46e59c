package import VisorDevices
import VisorFirmware
package import VisorLinux
package import VisorMemory

extension Platform {
    /// Writes the ACPI tables for `processors` vCPUs, built from `devices`, into the BIOS
    /// area, then loads the kernel, initrd and boot data. Nothing runs yet.
    package func loadLinux(_ request: LinuxBootRequest, processors: Int, into memory: GuestMemory) throws(MachineError)
        -> LinuxBootPlan
    {
        let tables: ACPITables
        do { tables = try ACPITables.build(for: acpiPlatform(processors: processors)) } catch {
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

extension MachineError {
    /// A platform whose devices cannot be placed.
    init(_ error: PlatformError) {
        switch error {
        case .bus(let error): self = .bus(error)
        case .aml: self = .firmware(error.description)
        }
    }
}
