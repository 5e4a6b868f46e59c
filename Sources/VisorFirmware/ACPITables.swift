// ACPI tables for a SwiftVisor machine: RSDP, XSDT, FADT, FACS, MADT and DSDT, laid out as
// one blob to copy into guest memory. Offsets and values follow the ACPI 6.5
// specification, chapter 5 ("ACPI Software Programming Model").

/// A register block of ACPI fixed hardware that a device implements: the FADT points at it,
/// so the tables take its ports from the device that has them, never from a second copy.
package enum ACPIFixedHardware: Sendable, Equatable {
    /// The PM1a event block (PM1_STS then PM1_EN), `ACPIPM1.eventBlockLength` ports.
    case pm1aEventBlock(port: UInt16)
    /// The PM1a control block, `ACPIPM1.controlBlockLength` ports, and the SLP_TYP value for
    /// S5 (soft off, 0-7) that the DSDT's `\_S5` gives.
    case pm1aControlBlock(port: UInt16, s5SleepType: UInt8)
    /// The FADT reset register, a byte-wide port in system I/O space, and the value that
    /// the OS writes to it to reset the machine.
    case resetRegister(port: UInt16, value: UInt8)
    /// The ACPI PM timer: a 32-bit counter at 3.579545 MHz in a 4-byte port block
    /// (PM_TMR_BLK, with TMR_VAL_EXT set in the FADT flags).
    case pmTimer(port: UInt16)
    /// An 8042 keyboard controller at ports 0x60/0x64 (IAPC_BOOT_ARCH bit 1).
    case i8042
    /// The CMOS index of the RTC's century register (FADT CENTURY). Linux reads it when
    /// non-zero; a century of 0 there is ignored.
    case rtcCentury(index: UInt8)
}

/// What the tables need to know of one device of the platform.
package struct ACPIDevice: Sendable, Equatable {
    /// The device's name, for error messages.
    package var name: String
    /// Its DSDT fragment, placed in `\_SB` in the order of the platform's devices: usually
    /// one `Device` with `_HID` and `_CRS`. Empty for a device the OS finds otherwise.
    package var aml: [AMLTerm]
    /// The ISA IRQs it raises; the SCI must not share one.
    package var irqs: [UInt32]
    /// The fixed-hardware registers it implements, for the FADT.
    package var fixedHardware: [ACPIFixedHardware]

    package init(name: String, aml: [AMLTerm] = [], irqs: [UInt32] = [], fixedHardware: [ACPIFixedHardware] = []) {
        self.name = name
        self.aml = aml
        self.irqs = irqs
        self.fixedHardware = fixedHardware
    }
}

/// The machine that the ACPI tables describe: its processors and interrupt controllers,
/// and its devices as they describe themselves.
package struct ACPIPlatform: Sendable, Equatable {
    /// The number of vCPUs; their local APIC IDs and ACPI processor UIDs are 0..<count.
    package var processorCount: Int
    /// The platform's devices. One of them must implement the PM1a event and control
    /// blocks; at most one may implement each fixed-hardware register.
    package var devices: [ACPIDevice]
    package var ioAPICAddress: UInt32 = 0xFEC0_0000
    /// The IOAPIC's ID; nil means `processorCount`, the first ID after the local APICs.
    package var ioAPICID: UInt8? = nil
    package var localAPICAddress: UInt32 = 0xFEE0_0000
    /// The ISA IRQ of the SCI, routed to the same GSI, level-triggered and active high.
    package var sciInterrupt: UInt16 = 9
    /// Up to 6 printable ASCII characters, padded with spaces.
    package var oemID = "SWIFTV"
    /// Up to 8 printable ASCII characters, padded with spaces.
    package var oemTableID = "SVMACHIN"

    /// The most vCPUs the tables describe: xAPIC IDs are 8 bits, 0xFF is the broadcast
    /// ID, and the IOAPIC takes the ID after the last vCPU.
    package static let maxProcessors = 254
    /// ISA IRQs the platform itself uses: the timer (IRQ 0) and the PIC cascade (IRQ 2).
    package static let platformIRQs: Set<UInt16> = [0, 2]

    package init(processorCount: Int, devices: [ACPIDevice]) {
        self.processorCount = processorCount
        self.devices = devices
    }

    /// The IOAPIC ID the tables use.
    package var effectiveIOAPICID: UInt8 { ioAPICID ?? UInt8(clamping: processorCount) }

    /// Every fixed-hardware register of the devices, with the device that has it.
    private var fixedHardware: [(device: String, register: ACPIFixedHardware)] {
        devices.flatMap { device in device.fixedHardware.map { (device.name, $0) } }
    }

    /// The PM1a event block's first port, if a device has it.
    package var pm1aEventBlock: UInt16? {
        for (_, register) in fixedHardware { if case .pm1aEventBlock(let port) = register { return port } }
        return nil
    }

    /// The PM1a control block's first port and the S5 sleep type, if a device has them.
    package var pm1aControlBlock: (port: UInt16, s5SleepType: UInt8)? {
        for (_, register) in fixedHardware {
            if case .pm1aControlBlock(let port, let type) = register { return (port, type) }
        }
        return nil
    }

    /// The reset register's port and value, if a device has it.
    package var resetRegister: (port: UInt16, value: UInt8)? {
        for (_, register) in fixedHardware {
            if case .resetRegister(let port, let value) = register { return (port, value) }
        }
        return nil
    }

    /// The PM timer's port block, if a device has it.
    package var pmTimerBlock: UInt16? {
        for (_, register) in fixedHardware { if case .pmTimer(let port) = register { return port } }
        return nil
    }

    /// Whether a device is an 8042 at ports 0x60/0x64.
    package var hasI8042: Bool { fixedHardware.contains { $0.register == .i8042 } }

    /// The RTC's century index, or 0 for none.
    package var rtcCenturyIndex: UInt8 {
        for (_, register) in fixedHardware { if case .rtcCentury(let index) = register { return index } }
        return 0
    }

    /// ISA IRQs in use: the platform's own and every device's.
    package var usedIRQs: [UInt16] {
        Set(Self.platformIRQs).union(devices.flatMap(\.irqs).compactMap { UInt16(exactly: $0) }).sorted()
    }

    /// Checks that the tables can describe this platform. Port ranges are the buses'
    /// business: `PortBus.register` refuses overlaps when the devices are placed.
    package func validate() throws(ACPIError) {
        guard (1...Self.maxProcessors).contains(processorCount) else {
            throw .processorCount(processorCount)
        }
        guard Self.isPrintableASCII(oemID, maxLength: 6) else { throw .oemID(oemID) }
        guard Self.isPrintableASCII(oemTableID, maxLength: 8) else { throw .oemTableID(oemTableID) }
        if let id = ioAPICID, Int(id) < processorCount || id == 0xFF {
            throw .ioAPICID(id, processorCount: processorCount)
        }
        // Each kind of fixed-hardware register at most once; the PM1a blocks exactly once.
        let registers = fixedHardware
        var seen: Set<String> = []
        for (_, register) in registers where !seen.insert(register.kind).inserted {
            throw .duplicateFixedHardware(
                register.kind, devices: registers.filter { $0.register.kind == register.kind }.map(\.device))
        }
        let required: [ACPIFixedHardware] = [.pm1aEventBlock(port: 0), .pm1aControlBlock(port: 0, s5SleepType: 0)]
        for register in required where !seen.contains(register.kind) {
            throw .missingFixedHardware(register.kind)
        }
        if let control = pm1aControlBlock, control.s5SleepType > 7 { throw .s5SleepType(control.s5SleepType) }
        let used = usedIRQs
        guard sciInterrupt < 16, !used.contains(sciInterrupt) else {
            throw .sciInterrupt(sciInterrupt, inUse: used)
        }
    }

    static func isPrintableASCII(_ s: String, maxLength: Int) -> Bool {
        let bytes = Array(s.utf8)
        return (1...maxLength).contains(bytes.count) && bytes.allSatisfy { (0x20...0x7E).contains($0) }
    }
}

/// The PM1 registers as the tables lay them out, for the device model behind them.
///
/// The FADT sets SMI_CMD to 0: there is no ACPI-enable handshake, the machine is always in
/// ACPI mode, so SCI_EN in PM1 control must read as set. PM1 status bits are
/// write-one-to-clear; PM1 enable keeps what the guest writes.
package enum ACPIPM1 {
    /// The event block: PM1 status at offset 0, PM1 enable at offset 2, 16 bits each.
    package static let eventBlockLength = 4
    package static let statusOffset: UInt16 = 0
    package static let enableOffset: UInt16 = 2
    /// The control block: one 16-bit register.
    package static let controlBlockLength = 2
    /// PM1 control: SCI_EN (bit 0), SLP_TYP (bits 10-12), SLP_EN (bit 13, write-only).
    package static let sciEnable: UInt16 = 1 << 0
    package static let sleepTypeShift: UInt16 = 10
    package static let sleepTypeMask: UInt16 = 0x7 << 10
    package static let sleepEnable: UInt16 = 1 << 13
    /// PM1 status: WAK_STS (bit 15), set when the system has woken (the OS clears it
    /// before sleeping).
    package static let wakeStatus: UInt16 = 1 << 15
}

/// An error from building ACPI tables: the platform cannot be described, or the tables
/// do not fit where they were asked to go.
package enum ACPIError: Error, Equatable, CustomStringConvertible {
    case processorCount(Int)
    case oemID(String)
    case oemTableID(String)
    case ioAPICID(UInt8, processorCount: Int)
    case s5SleepType(UInt8)
    case sciInterrupt(UInt16, inUse: [UInt16])
    case missingFixedHardware(String)
    case duplicateFixedHardware(String, devices: [String])
    case misalignedBase(UInt64)
    case doesNotFit(base: UInt64, size: Int, region: Range<UInt64>)
    case aml(AMLError)

    package var description: String {
        switch self {
        case .processorCount(let n):
            "ACPI tables describe 1 to \(ACPIPlatform.maxProcessors) processors, not \(n); choose a vCPU count in that range"
        case .oemID(let id):
            "ACPI OEM ID \"\(id)\" must be 1 to 6 printable ASCII characters"
        case .oemTableID(let id):
            "ACPI OEM table ID \"\(id)\" must be 1 to 8 printable ASCII characters"
        case .ioAPICID(let id, let count):
            "IOAPIC ID \(id) is not usable: IDs 0-\(count - 1) belong to the local APICs and 255 is the broadcast ID"
        case .s5SleepType(let t):
            "S5 sleep type \(t) does not fit SLP_TYP (0-7)"
        case .sciInterrupt(let irq, let inUse):
            "SCI interrupt \(irq) must be an ISA IRQ 0-15 other than \(inUse.map(String.init).joined(separator: ", ")), which the platform uses"
        case .missingFixedHardware(let register):
            "ACPI tables need a device with the \(register); the platform has none"
        case .duplicateFixedHardware(let register, let devices):
            "ACPI tables name one \(register), but devices \(devices.joined(separator: ", ")) each claim it"
        case .misalignedBase(let base):
            "ACPI tables must start on a 16-byte boundary for the RSDP, not at 0x\(hex(base))"
        case .doesNotFit(let base, let size, let region):
            "ACPI tables of \(size) bytes at 0x\(hex(base)) do not fit in 0x\(hex(region.lowerBound))..<0x\(hex(region.upperBound))"
        case .aml(let error):
            "DSDT: \(error)"
        }
    }
}

/// The ACPI tables of a platform, laid out as one blob for guest memory.
package struct ACPITables: Sendable {
    /// Where a table sits in the blob.
    package struct Table: Sendable, Equatable {
        /// "RSD PTR ", "FACS", "XSDT", "FACP" (the FADT), "APIC" (the MADT) or "DSDT".
        package let signature: String
        /// Guest-physical address.
        package let address: UInt64
        package let length: Int
    }

    /// The BIOS area below 1 MiB, where Linux also scans for "RSD PTR ".
    package static let biosArea: Range<UInt64> = 0xE0000..<0x100000
    /// The creator ID and revision in every table header.
    package static let creatorID = "SWVS"
    package static let creatorRevision: UInt32 = 1
    package static let oemRevision: UInt32 = 1

    /// The RSDP's address: the start of the blob.
    package let rsdpAddress: UInt64
    /// The blob to copy into guest memory at `rsdpAddress`.
    package let bytes: [UInt8]
    /// Every table in the blob, RSDP first.
    package let tables: [Table]

    /// The table with this signature, if present.
    package func table(_ signature: String) -> Table? {
        tables.first { $0.signature == signature }
    }

    /// The bytes of a table in the blob.
    package func contents(of table: Table) -> ArraySlice<UInt8> {
        let offset = Int(table.address - rsdpAddress)
        return bytes[offset..<offset + table.length]
    }

    /// Builds the tables for `platform` as one blob starting at `base`, which must be
    /// 16-byte aligned; the whole blob must lie within `region`.
    package static func build(
        for platform: ACPIPlatform, at base: UInt64 = biosArea.lowerBound, within region: Range<UInt64> = biosArea
    ) throws(ACPIError) -> ACPITables {
        try platform.validate()
        guard base % 16 == 0 else { throw .misalignedBase(base) }

        let dsdt: [UInt8]
        do { dsdt = try buildDSDT(platform) } catch { throw .aml(error) }
        let madt = buildMADT(platform)

        // Layout: RSDP, FACS (64-byte aligned), XSDT, FADT, MADT, DSDT (16-byte aligned).
        // Offsets are relative to `base`; alignments are of the absolute address.
        var offsets: [(signature: String, offset: Int, length: Int)] = []
        var end = 0
        func place(_ signature: String, _ length: Int, alignment: Int) {
            let phase = Int(base % 64)  // alignments divide 64
            let offset = (phase + end + alignment - 1) / alignment * alignment - phase
            end = offset + length
            offsets.append((signature, offset, length))
        }
        place("RSD PTR ", rsdpLength, alignment: 16)
        place("FACS", facsLength, alignment: 64)
        place("XSDT", headerLength + 8 * 2, alignment: 16)
        place("FACP", fadtLength, alignment: 16)
        place("APIC", madt.count, alignment: 16)
        place("DSDT", dsdt.count, alignment: 16)
        guard region.contains(base), UInt64(end) <= region.upperBound - base else {
            throw .doesNotFit(base: base, size: end, region: region)
        }
        // Every address below is at most region.upperBound: no overflow.
        let layout = offsets.map { Table(signature: $0.signature, address: base + UInt64($0.offset), length: $0.length) }
        let rsdpAddress = layout[0].address, facsAddress = layout[1].address, xsdtAddress = layout[2].address
        let fadtAddress = layout[3].address, madtAddress = layout[4].address, dsdtAddress = layout[5].address

        var blob = [UInt8](repeating: 0, count: end)
        func put(_ table: [UInt8], at address: UInt64) {
            let offset = Int(address - base)
            blob.replaceSubrange(offset..<offset + table.count, with: table)
        }
        put(buildRSDP(platform, xsdt: xsdtAddress), at: rsdpAddress)
        put(buildFACS(), at: facsAddress)
        put(buildXSDT(platform, entries: [fadtAddress, madtAddress]), at: xsdtAddress)
        put(buildFADT(platform, facs: facsAddress, dsdt: dsdtAddress), at: fadtAddress)
        put(madt, at: madtAddress)
        put(dsdt, at: dsdtAddress)
        return ACPITables(rsdpAddress: rsdpAddress, bytes: blob, tables: layout)
    }

    // MARK: - The tables

    static let headerLength = 36
    static let rsdpLength = 36
    static let facsLength = 64
    static let fadtLength = 276

    /// The RSDP (ACPI 2.0+ form, revision 2): "RSD PTR ", checksum of the first 20 bytes
    /// at 8, OEM ID at 9, revision at 15, RsdtAddress (0: no RSDT) at 16, length at 20,
    /// XsdtAddress at 24, extended checksum of all 36 bytes at 32.
    static func buildRSDP(_ platform: ACPIPlatform, xsdt: UInt64) -> [UInt8] {
        var t = [UInt8](repeating: 0, count: rsdpLength)
        t.set(ascii: "RSD PTR ", at: 0, width: 8)
        t.set(ascii: platform.oemID, at: 9, width: 6)
        t[15] = 2
        t.set(UInt64(0), at: 16, width: 4)
        t.set(UInt64(rsdpLength), at: 20, width: 4)
        t.set(xsdt, at: 24, width: 8)
        t[8] = checksum(t[0..<20])
        t[32] = checksum(t[...])
        return t
    }

    /// The FACS (64 bytes, no checksum): signature, length, hardware signature 0, no
    /// waking vectors, global lock free, no flags, version 2.
    static func buildFACS() -> [UInt8] {
        var t = [UInt8](repeating: 0, count: facsLength)
        t.set(ascii: "FACS", at: 0, width: 4)
        t.set(UInt64(facsLength), at: 4, width: 4)
        t[32] = 2  // version
        return t
    }

    /// The XSDT: the header, then a 64-bit address per table (all but FACS and DSDT,
    /// which the FADT points to).
    static func buildXSDT(_ platform: ACPIPlatform, entries: [UInt64]) -> [UInt8] {
        var t = header("XSDT", revision: 1, platform)
        for entry in entries { t += AML.littleEndian(entry, bytes: 8) }
        return sealed(t)
    }

    /// FADT flags (ACPI 6.5 table 5.10).
    enum FADTFlag {
        static let wbinvd: UInt32 = 1 << 0
        static let processorC1: UInt32 = 1 << 2
        static let powerButtonNotFixed: UInt32 = 1 << 4
        static let sleepButtonNotFixed: UInt32 = 1 << 5
        static let rtcWakeNotFixed: UInt32 = 1 << 6
        static let timerValueExtended: UInt32 = 1 << 8
        static let resetRegisterSupported: UInt32 = 1 << 10
    }

    /// IA-PC boot architecture flags (ACPI 6.5 table 5.11).
    enum BootArchitecture {
        static let legacyDevices: UInt16 = 1 << 0
        static let i8042: UInt16 = 1 << 1
        static let vgaNotPresent: UInt16 = 1 << 2
    }

    /// The FADT, revision 6.5 (276 bytes).
    static func buildFADT(_ platform: ACPIPlatform, facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var t = header("FACP", revision: 6, platform)
        t += [UInt8](repeating: 0, count: fadtLength - headerLength)
        // 36 FIRMWARE_CTRL and 40 DSDT stay 0: X_FIRMWARE_CTRL and X_DSDT below are used.
        t[45] = 0  // Preferred_PM_Profile: unspecified
        t.set(UInt64(platform.sciInterrupt), at: 46, width: 2)  // SCI_INT
        // 48 SMI_CMD = 0, 52 ACPI_ENABLE = 0, 53 ACPI_DISABLE = 0: always in ACPI mode.
        // 54 S4BIOS_REQ = 0, 55 PSTATE_CNT = 0.
        // validate() makes sure both PM1a blocks are there.
        let pm1aEvent = platform.pm1aEventBlock ?? 0
        let pm1aControl = platform.pm1aControlBlock?.port ?? 0
        t.set(UInt64(pm1aEvent), at: 56, width: 4)  // PM1a_EVT_BLK
        t.set(UInt64(pm1aControl), at: 64, width: 4)  // PM1a_CNT_BLK
        // 60 PM1b_EVT_BLK, 68 PM1b_CNT_BLK, 72 PM2_CNT_BLK, 80 GPE0_BLK, 84 GPE1_BLK: none.
        if let timer = platform.pmTimerBlock {
            t.set(UInt64(timer), at: 76, width: 4)  // PM_TMR_BLK
            t[91] = 4  // PM_TMR_LEN
        }
        t[88] = UInt8(ACPIPM1.eventBlockLength)  // PM1_EVT_LEN
        t[89] = UInt8(ACPIPM1.controlBlockLength)  // PM1_CNT_LEN
        // 90 PM2_CNT_LEN, 92/93 GPE block lengths, 94 GPE1_BASE, 95 CST_CNT: 0.
        t.set(UInt64(101), at: 96, width: 2)  // P_LVL2_LAT > 100: no C2
        t.set(UInt64(1001), at: 98, width: 2)  // P_LVL3_LAT > 1000: no C3
        // 100 FLUSH_SIZE, 102 FLUSH_STRIDE, 104 DUTY_OFFSET, 105 DUTY_WIDTH, 106 DAY_ALRM,
        // 107 MON_ALRM: 0.
        t[108] = platform.rtcCenturyIndex  // CENTURY
        // The platform is PC-compatible (legacy ISA devices may be present) and never has VGA.
        var boot = BootArchitecture.legacyDevices | BootArchitecture.vgaNotPresent
        if platform.hasI8042 { boot |= BootArchitecture.i8042 }
        t.set(UInt64(boot), at: 109, width: 2)  // IAPC_BOOT_ARCH
        var flags =
            FADTFlag.wbinvd | FADTFlag.processorC1 | FADTFlag.powerButtonNotFixed
            | FADTFlag.sleepButtonNotFixed | FADTFlag.rtcWakeNotFixed
        if let reset = platform.resetRegister {
            flags |= FADTFlag.resetRegisterSupported
            t.set(gas: systemIO(port: reset.port, bitWidth: 8, accessSize: 1), at: 116)  // RESET_REG
            t[128] = reset.value  // RESET_VALUE
        }
        if platform.pmTimerBlock != nil { flags |= FADTFlag.timerValueExtended }  // a 32-bit timer
        t.set(UInt64(flags), at: 112, width: 4)
        // 129 ARM_BOOT_ARCH: 0.
        t[131] = 5  // FADT minor version: ACPI 6.5
        t.set(facs, at: 132, width: 8)  // X_FIRMWARE_CTRL
        t.set(dsdt, at: 140, width: 8)  // X_DSDT
        t.set(
            gas: systemIO(port: pm1aEvent, bitWidth: 8 * ACPIPM1.eventBlockLength, accessSize: 2),
            at: 148)  // X_PM1a_EVT_BLK
        t.set(
            gas: systemIO(port: pm1aControl, bitWidth: 8 * ACPIPM1.controlBlockLength, accessSize: 2),
            at: 172)  // X_PM1a_CNT_BLK
        if let timer = platform.pmTimerBlock {
            t.set(gas: systemIO(port: timer, bitWidth: 32, accessSize: 3), at: 208)  // X_PM_TMR_BLK
        }
        // 160 X_PM1b_EVT_BLK, 184 X_PM1b_CNT_BLK, 196 X_PM2_CNT_BLK, 220 X_GPE0_BLK,
        // 232 X_GPE1_BLK, 244 SLEEP_CONTROL_REG, 256 SLEEP_STATUS_REG, 268 hypervisor vendor
        // identity: none.
        return sealed(t)
    }

    /// A Generic Address Structure in system I/O space: address space ID 1, register bit
    /// width, bit offset 0, access size (1 byte, 2 word, 3 dword, 4 qword), 64-bit address.
    static func systemIO(port: UInt16, bitWidth: Int, accessSize: UInt8) -> [UInt8] {
        [1, UInt8(bitWidth), 0, accessSize] + AML.littleEndian(UInt64(port), bytes: 8)
    }

    /// MADT flag PCAT_COMPAT: the machine also has dual 8259 PICs.
    static let pcatCompatible: UInt32 = 1 << 0
    /// MPS INTI flags: active high (polarity 01), level-triggered (trigger mode 11).
    static let levelActiveHigh: UInt16 = 0b1101
    /// MPS INTI flags: active high, edge-triggered.
    static let edgeActiveHigh: UInt16 = 0b0101

    /// The MADT (revision 6): local APIC address, PCAT_COMPAT, a Processor Local APIC per
    /// vCPU, the IOAPIC at GSI 0, overrides for IRQ 0 (to GSI 2) and the SCI, and LINT1 as
    /// the NMI input of every processor.
    static func buildMADT(_ platform: ACPIPlatform) -> [UInt8] {
        var t = header("APIC", revision: 6, platform)
        t += AML.littleEndian(UInt64(platform.localAPICAddress), bytes: 4)
        t += AML.littleEndian(UInt64(pcatCompatible), bytes: 4)
        for id in 0..<platform.processorCount {
            // Type 0, length 8: ACPI processor UID, APIC ID, flags (bit 0: enabled).
            t += [0, 8, UInt8(id), UInt8(id)] + AML.littleEndian(1, bytes: 4)
        }
        // Type 1, length 12: IOAPIC ID, reserved, address, GSI base.
        t += [1, 12, platform.effectiveIOAPICID, 0]
        t += AML.littleEndian(UInt64(platform.ioAPICAddress), bytes: 4) + AML.littleEndian(0, bytes: 4)
        // Type 2, length 10: bus 0 (ISA), source IRQ, GSI, MPS INTI flags.
        t += [2, 10, 0, 0] + AML.littleEndian(2, bytes: 4) + AML.littleEndian(0, bytes: 2)  // conforms to ISA
        t += [2, 10, 0, UInt8(platform.sciInterrupt)] + AML.littleEndian(UInt64(platform.sciInterrupt), bytes: 4)
        t += AML.littleEndian(UInt64(levelActiveHigh), bytes: 2)
        // Type 4, length 6: ACPI processor UID 0xFF (all), MPS INTI flags, LINT# 1.
        t += [4, 6, 0xFF] + AML.littleEndian(UInt64(edgeActiveHigh), bytes: 2) + [1]
        return sealed(t)
    }

    /// The DSDT's AML: `\_S5` from the PM1a control block's S5 sleep type, then every
    /// device's fragment under `\_SB`, in the order of the platform's devices.
    static func dsdtTerms(_ platform: ACPIPlatform) -> [AMLTerm] {
        let s5 = UInt64(platform.pm1aControlBlock?.s5SleepType ?? 0)
        return [
            // SLP_TYPa, SLP_TYPb, reserved, reserved.
            .name("_S5", .package([.integer(s5), .integer(s5), .integer(0), .integer(0)])),
            .scope("\\_SB", platform.devices.flatMap(\.aml)),
        ]
    }

    /// The DSDT (revision 2: 64-bit integers).
    static func buildDSDT(_ platform: ACPIPlatform) throws(AMLError) -> [UInt8] {
        sealed(header("DSDT", revision: 2, platform) + (try AMLTerm.encode(termList: dsdtTerms(platform))))
    }

    /// A table header with the length and checksum left 0 (see `sealed`): signature,
    /// length at 4, revision at 8, checksum at 9, OEM ID at 10, OEM table ID at 16, OEM
    /// revision at 24, creator ID at 28, creator revision at 32.
    static func header(_ signature: String, revision: UInt8, _ platform: ACPIPlatform) -> [UInt8] {
        var t = [UInt8](repeating: 0, count: headerLength)
        t.set(ascii: signature, at: 0, width: 4)
        t[8] = revision
        t.set(ascii: platform.oemID, at: 10, width: 6)
        t.set(ascii: platform.oemTableID, at: 16, width: 8)
        t.set(UInt64(oemRevision), at: 24, width: 4)
        t.set(ascii: creatorID, at: 28, width: 4)
        t.set(UInt64(creatorRevision), at: 32, width: 4)
        return t
    }

    /// The table with its length and checksum filled in.
    static func sealed(_ table: [UInt8]) -> [UInt8] {
        var t = table
        t.set(UInt64(t.count), at: 4, width: 4)
        t[9] = 0
        t[9] = checksum(t[...])
        return t
    }

    /// The byte that makes `bytes` sum to zero modulo 256.
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}

extension ACPIFixedHardware {
    /// What the register is, without its ports, for validation and messages.
    var kind: String {
        switch self {
        case .pm1aEventBlock: "PM1a event block"
        case .pm1aControlBlock: "PM1a control block"
        case .resetRegister: "reset register"
        case .pmTimer: "PM timer"
        case .i8042: "8042 keyboard controller"
        case .rtcCentury: "RTC century register"
        }
    }
}

extension [UInt8] {
    mutating func set(_ value: UInt64, at offset: Int, width: Int) {
        for i in 0..<width { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    /// ASCII text, padded with spaces to `width` (callers validate the text first).
    mutating func set(ascii text: String, at offset: Int, width: Int) {
        let bytes = Array(text.utf8.prefix(width))
        for i in 0..<width { self[offset + i] = i < bytes.count ? bytes[i] : 0x20 }
    }

    mutating func set(gas: [UInt8], at offset: Int) {
        replaceSubrange(offset..<offset + gas.count, with: gas)
    }
}

func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16, uppercase: true) }
