package import VisorCore
package import VisorFirmware

/// The devices of a machine, placed and wired: the one list a machine registers on its
/// buses and builds its ACPI tables from.
///
/// - `.minimal`, for test guests: COM1 and the debug-exit port, and the ACPI fixed
///   hardware the tables name: the PM1a blocks at 0xB000 and 0xB004 and the PM timer at
///   0xB008 (where QEMU's PIIX4 puts them, clear of the ports the test guests use).
/// - `.pc`, for Linux: those two, plus CMOS/RTC, the i8042, the ACPI PM1a blocks, the
///   reset register at 0xCF9, the POST-code port 0x80 and PCI configuration mechanism #1
///   with no devices behind it.
///
/// A new device is its own file plus one more `try device.platformDevice()` line in the
/// list of its kind below (and a stored property if callers need the device itself).
public final class Platform: Sendable {
    public enum Kind: Sendable, Equatable {
        case minimal
        case pc
    }

    public let kind: Kind
    /// COM1.
    public let serial: Serial16550Device
    /// The debug-exit port (0x501); nil when the platform was built without it.
    public let debugExit: DebugExitDevice?
    /// QEMU's debug-exit (ports 0xF4-0xF7); nil unless the platform was built with it.
    public let qemuDebugExit: QEMUDebugExitDevice?
    /// QEMU's fw_cfg (ports 0x510-0x511); nil unless the platform was built with it.
    public let firmwareConfig: FirmwareConfigDevice?
    /// QEMU's test devices (the latch at 0xE0, interrupt lines at 0x2000, MMIO at
    /// 0xFF000000); nil unless the platform was built with them.
    public let qemuTestDevice: QEMUTestDevice?
    /// The PC devices, nil on a minimal platform.
    public let i8042: I8042Device?
    /// The CMOS/RTC; pass it to the next platform to keep it across a reboot.
    public let cmos: CMOSDevice?
    /// The ACPI PM1a blocks: at 0x600 on the PC platform, at 0xB000 on the minimal one.
    public let powerManagement: PM1Device?
    /// The ACPI PM timer (minimal platform only).
    public let pmTimer: ACPIPMTimerDevice?
    public let resetControl: ResetControlDevice?
    public let postCodes: PostCodeDevice?
    public let pciConfiguration: PCIConfigDevice?
    /// Every device with its place, in the order their DSDT fragments appear.
    package let devices: [PlatformDevice]

    /// - Parameters:
    ///   - memoryBelow4GiB, memoryAbove4GiB: guest RAM, for the CMOS memory-size fields.
    ///   - consoleOutput: receives the bytes the guest sends to COM1, on the vCPU thread.
    ///   - irqLine: raises or lowers an ISA interrupt line; nil without an interrupt
    ///     controller.
    ///   - cmos: the CMOS/RTC to keep, as a battery would, from a previous machine (after a
    ///     guest reboot); nil for a new one. A minimal platform has none.
    ///   - debugExit: whether to place the debug-exit port. It lets any guest code with I/O
    ///     privilege end the VM with a status it picks, so a machine for an untrusted guest
    ///     leaves it out; the port is then an ordinary unclaimed port.
    ///   - qemuDebugExit: whether to place QEMU's debug-exit at 0xF4 (the same caution).
    ///   - firmwareConfig: QEMU's fw_cfg with its items, placed at 0x510 when given.
    ///   - qemuTestDevices: whether to place QEMU's test devices, whose interrupt-line
    ///     ports drive `irqLine` (the same caution: any guest code with I/O privilege can
    ///     raise any line).
    ///   - extraDevices: devices made by a higher layer (the virtio-mmio transports),
    ///     placed on the buses and in the ACPI tables after the platform's own.
    package init(
        kind: Kind, memoryBelow4GiB: UInt64 = 0, memoryAbove4GiB: UInt64 = 0,
        consoleOutput: @escaping ConsoleOutput,
        irqLine: (@Sendable (_ irq: UInt32, _ level: Bool) -> Void)?,
        cmos: CMOSDevice? = nil, debugExit: Bool = true, qemuDebugExit: Bool = false,
        firmwareConfig: FirmwareConfigDevice? = nil, qemuTestDevices: Bool = false,
        extraDevices: [PlatformDevice] = []
    ) throws(PlatformError) {
        self.kind = kind
        var com1Line: (@Sendable (Bool) -> Void)?
        if let irqLine {
            com1Line = { level in irqLine(Serial16550Device.com1IRQ, level) }
        }
        serial = Serial16550Device(output: consoleOutput, interruptLine: com1Line)
        var devices = [try serial.platformDevice()]
        if debugExit {
            let device = DebugExitDevice()
            devices.append(try device.platformDevice())
            self.debugExit = device
        } else {
            self.debugExit = nil
        }
        if qemuDebugExit {
            let device = QEMUDebugExitDevice()
            devices.append(try device.platformDevice())
            self.qemuDebugExit = device
        } else {
            self.qemuDebugExit = nil
        }
        if let firmwareConfig { devices.append(try firmwareConfig.platformDevice()) }
        self.firmwareConfig = firmwareConfig
        if qemuTestDevices {
            let device = QEMUTestDevice(interruptLine: irqLine)
            devices.append(try device.platformDevice())
            qemuTestDevice = device
        } else {
            qemuTestDevice = nil
        }
        switch kind {
        case .minimal:
            let powerManagement = PM1Device(
                eventBlockBase: Self.minimalPM1EventBlock, controlBlockBase: Self.minimalPM1ControlBlock)
            let pmTimer = ACPIPMTimerDevice()
            devices += [try powerManagement.platformDevice(), try pmTimer.platformDevice()]
            self.powerManagement = powerManagement
            self.pmTimer = pmTimer
            i8042 = nil
            self.cmos = nil
            resetControl = nil
            postCodes = nil
            pciConfiguration = nil
        case .pc:
            let cmos = cmos ?? CMOSDevice(memoryBelow4GiB: memoryBelow4GiB, memoryAbove4GiB: memoryAbove4GiB)
            let i8042 = I8042Device(interruptLine: irqLine)
            let powerManagement = PM1Device()
            let resetControl = ResetControlDevice()
            let postCodes = PostCodeDevice()
            let pciConfiguration = PCIConfigDevice()
            devices += [
                try cmos.platformDevice(),
                try i8042.platformDevice(),
                try powerManagement.platformDevice(),
                try resetControl.platformDevice(),
                try postCodes.platformDevice(),
                try pciConfiguration.platformDevice(),
            ]
            (self.cmos, self.i8042, self.powerManagement) = (cmos, i8042, powerManagement)
            pmTimer = nil
            (self.resetControl, self.postCodes, self.pciConfiguration) = (resetControl, postCodes, pciConfiguration)
        }
        self.devices = devices + extraDevices
    }

    /// The minimal platform's PM1a event block (4 ports) and control block (2 ports).
    public static let minimalPM1EventBlock: UInt16 = 0xB000
    public static let minimalPM1ControlBlock: UInt16 = 0xB004

    /// Registers every device's ranges on the buses; an overlap fails with
    /// `BusError.overlap`, naming both devices' ranges.
    package func register(ports: inout PortBus, mmio: inout MMIOBus) throws(BusError) {
        for device in devices { try device.register(ports: &ports, mmio: &mmio) }
    }

    /// The ACPI description of this platform with `processors` vCPUs.
    package func acpiPlatform(processors: Int) -> ACPIPlatform {
        ACPIPlatform(processorCount: processors, devices: devices.map(\.acpi))
    }
}
