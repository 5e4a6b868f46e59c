/// SwiftVisor's defaults for booting Linux.
public enum LinuxDefaults {
    /// The command line every boot starts from: the console on COM1.
    public static let commandLine = "console=ttyS0"
    /// The largest kernel file read.
    public static let kernelFileLimit = 256 << 20
    /// Default guest RAM for a Linux boot.
    public static let memorySize: UInt64 = 512 << 20

    /// The default command line, then what `quirks` found the host needs, then `extra`.
    /// With `virtioConsole`, the kernel's console is the virtio console (`console=hvc0`)
    /// instead of COM1.
    public static func commandLine(quirks: HostQuirks?, appending extra: String? = nil, virtioConsole: Bool = false)
        -> String
    {
        var parts = [virtioConsole ? "console=hvc0" : commandLine]
        if let quirks { parts += quirks.commandLineOptions }
        if let extra, !extra.isEmpty { parts.append(extra) }
        return parts.joined(separator: " ")
    }
}
