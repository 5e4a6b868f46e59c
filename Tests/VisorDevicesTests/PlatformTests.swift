import Synchronization
import Testing
import VisorCore
import VisorDevices
import VisorFirmware

@Suite("Platform: the device list the buses and the ACPI tables are built from")
struct PlatformTests {
    func pc(irqLine: (@Sendable (UInt32, Bool) -> Void)? = nil) throws -> Platform {
        try Platform(kind: .pc, memoryBelow4GiB: 512 << 20, consoleOutput: { _ in }, irqLine: irqLine)
    }

    func contains(_ haystack: some Collection<UInt8>, _ needle: [UInt8]) -> Bool {
        let bytes = Array(haystack)
        guard !needle.isEmpty, needle.count <= bytes.count else { return false }
        return (0...(bytes.count - needle.count)).contains { bytes[$0..<$0 + needle.count].elementsEqual(needle) }
    }

    @Test("the minimal platform is COM1, the debug-exit port and the ACPI blocks at 0xB000, nothing else")
    func minimal() throws {
        let platform = try Platform(kind: .minimal, consoleOutput: { _ in }, irqLine: nil)
        #expect(platform.devices.map(\.name) == ["com1", "debug-exit", "acpi-pm1a", "acpi-pm-timer"])
        #expect(
            platform.devices.flatMap(\.ports).map(\.range) == [
                try PortRange(base: 0x3F8, count: 8), try PortRange(base: 0x501, count: 1),
                try PortRange(base: 0xB000, count: 4), try PortRange(base: 0xB004, count: 2),
                try PortRange(base: 0xB008, count: 4),
            ])
        #expect(platform.i8042 == nil && platform.cmos == nil)
        #expect(platform.powerManagement?.controlBlockBase == 0xB004 && platform.pmTimer?.port == 0xB008)
        let acpi = platform.acpiPlatform(processors: 1)
        #expect(acpi.pm1aEventBlock == 0xB000 && acpi.pm1aControlBlock?.port == 0xB004 && acpi.pmTimerBlock == 0xB008)
        #expect(try pc().pmTimer == nil, "the PC platform (Linux) has no PM timer")
        #expect(platform.resetControl == nil && platform.postCodes == nil && platform.pciConfiguration == nil)
    }

    @Test("a platform built without the debug-exit port leaves 0x501 unclaimed")
    func withoutDebugExit() throws {
        let minimal = try Platform(kind: .minimal, consoleOutput: { _ in }, irqLine: nil, debugExit: false)
        #expect(minimal.devices.map(\.name) == ["com1", "acpi-pm1a", "acpi-pm-timer"])
        #expect(minimal.debugExit == nil)
        let pc = try Platform(kind: .pc, consoleOutput: { _ in }, irqLine: nil, debugExit: false)
        #expect(!pc.devices.map(\.name).contains("debug-exit"))
        var ports = PortBus()
        var mmio = MMIOBus()
        try pc.register(ports: &ports, mmio: &mmio)
        #expect(ports.entry(for: 0x501) == nil)
    }

    @Test("the PC platform's devices register on the port bus without overlap, each at its PC ports")
    func pcPorts() throws {
        let platform = try pc()
        let regions = platform.devices.flatMap(\.ports)
        for (i, a) in regions.enumerated() {
            for b in regions[..<i] {
                #expect(a.range.last < b.range.base || b.range.last < a.range.base, "\(a.name) overlaps \(b.name)")
            }
        }
        var ports = PortBus()
        var mmio = MMIOBus()
        try platform.register(ports: &ports, mmio: &mmio)
        #expect(mmio.entries.isEmpty)
        let expected: [(UInt16, String?)] = [
            (0x3F8, "com1"), (0x3FF, "com1"), (0x501, "debug-exit"), (0x60, "i8042-data"), (0x61, nil),
            (0x64, "i8042-command"), (0x70, "cmos-rtc"), (0x71, "cmos-rtc"), (0x80, "post-code"),
            (0x600, "acpi-pm1a-event"), (0x603, "acpi-pm1a-event"), (0x604, "acpi-pm1a-control"),
            (0x605, "acpi-pm1a-control"), (0x606, nil), (0xCF8, "pci-config-address"), (0xCF9, "reset-control"),
            (0xCFA, "pci-config-address"), (0xCFB, "pci-config-address"), (0xCFC, "pci-config-data"),
            (0xCFF, "pci-config-data"),
        ]
        for (port, name) in expected {
            #expect(ports.entry(for: port)?.name == name, "port 0x\(String(port, radix: 16))")
        }
        #expect(ports.entry(for: 0x70)?.device === platform.cmos)
        #expect(ports.entry(for: 0xCF9)?.device === platform.resetControl)
    }

    @Test("a device placed on ports another device has is refused by the port bus")
    func overlapRefused() throws {
        let platform = try pc()
        let intruder = try DebugExitDevice().platformDevice(port: 0xCF9)
        var ports = PortBus()
        var mmio = MMIOBus()
        try platform.register(ports: &ports, mmio: &mmio)
        #expect {
            try intruder.register(ports: &ports, mmio: &mmio)
        } throws: { error in
            guard case BusError.overlap(_, let existing, _) = error else { return false }
            return existing.contains("reset-control")
        }
        // Ranges without a device to handle them are refused too.
        var bare = intruder
        bare.portDevice = nil
        #expect(throws: BusError.self) { try bare.register(ports: &ports, mmio: &mmio) }
    }

    @Test("the ACPI tables come from the device list: each DSDT fragment, the FADT's ports, the SCI's free IRQ")
    func acpiFromDevices() throws {
        let platform = try pc()
        let tables = try ACPITables.build(for: platform.acpiPlatform(processors: 2))
        let dsdt = tables.contents(of: try #require(tables.table("DSDT")))
        let withAML = platform.devices.filter { !$0.aml.isEmpty }
        #expect(withAML.map(\.name) == ["com1", "cmos-rtc", "i8042"])
        for device in withAML {
            #expect(contains(dsdt, try AMLTerm.encode(termList: device.aml)), "the DSDT holds \(device.name)'s fragment")
        }
        let fadt = Array(tables.contents(of: try #require(tables.table("FACP"))))
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(fadt[at + $1]) << (8 * $1) } }
        let pm1 = try #require(platform.powerManagement)
        #expect(u32(56) == UInt32(pm1.eventBlockBase) && u32(64) == UInt32(pm1.controlBlockBase))
        #expect(u32(120) == UInt32(ResetControlDevice.defaultPort) && fadt[128] == ResetControlDevice.fadtResetValue)
        #expect(fadt[108] == CMOS.Register.century)
        #expect(platform.acpiPlatform(processors: 1).usedIRQs == [0, 1, 2, 4, 8, 12])
    }

    @Test("a device added to the list appears in the DSDT with no other change")
    func addedDevice() throws {
        let platform = try pc()
        var acpi = platform.acpiPlatform(processors: 1)
        let before = try ACPITables.build(for: acpi)
        let fragment: [AMLTerm] = [
            .device(
                "TEST",
                [
                    .name("_HID", try .eisaID("PNP0C02")),
                    .name("_CRS", try .resourceTemplate([.ports(0x510, length: 4), .irq([5])])),
                ])
        ]
        let added = PlatformDevice(
            name: "test", ports: [.init(name: "test", range: try PortRange(base: 0x510, count: 4))],
            portDevice: PostCodeDevice(), irqs: [5], aml: fragment)
        acpi.devices.append(added.acpi)
        let after = try ACPITables.build(for: acpi)
        let dsdt = after.contents(of: try #require(after.table("DSDT")))
        #expect(contains(dsdt, try AMLTerm.encode(termList: fragment)))
        #expect(!contains(before.contents(of: try #require(before.table("DSDT"))), try AMLTerm.encode(termList: fragment)))
        #expect(acpi.usedIRQs.contains(5))
        // It registers beside the others.
        var ports = PortBus()
        var mmio = MMIOBus()
        try platform.register(ports: &ports, mmio: &mmio)
        try added.register(ports: &ports, mmio: &mmio)
        #expect(ports.entry(for: 0x513)?.name == "test")
    }

    @Test("COM1 and the i8042 drive their IRQs through the platform's irq line")
    func interruptLines() throws {
        let raised = Mutex<[UInt32: Bool]>([:])
        let platform = try pc { irq, level in raised.withLock { $0[irq] = level } }
        // COM1: THR-empty interrupt enabled (IER bit 1), OUT2 set: IRQ 4 goes high.
        _ = platform.serial.portWrite(port: 0x3F9, offset: 1, width: 1, value: 0x02)
        _ = platform.serial.portWrite(port: 0x3FC, offset: 4, width: 1, value: 0x08)
        #expect(raised.withLock { $0[4] } == true)
        // The i8042 answers a command byte read (0x20) with a byte and, its keyboard
        // interrupt enabled by default, raises IRQ 1.
        let i8042 = try #require(platform.i8042)
        _ = i8042.portWrite(port: 0x64, offset: 0, width: 1, value: 0x20)
        #expect(raised.withLock { $0[1] } == true)
    }

    @Test("a PC platform keeps the CMOS it is given, as a battery would")
    func keptCMOS() throws {
        let first = try pc()
        let cmos = try #require(first.cmos)
        let second = try Platform(kind: .pc, consoleOutput: { _ in }, irqLine: nil, cmos: cmos)
        #expect(second.cmos === cmos)
        #expect(try pc().cmos !== cmos)
    }
}
