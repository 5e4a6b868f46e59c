import Foundation
import Testing
import TestSupport
@testable import SwiftVisor
import VisorKVM
import VisorFirmware
import VisorLoader
import VisorMemory

@Suite("Entry registers")
struct EntryRegistersTests {
    /// Special registers as KVM creates them, with a field no entry names.
    var base: SpecialRegisters {
        var sregs = SpecialRegisters()
        sregs.apicBase = 0xFEE0_0900
        return sregs
    }

    @Test("real mode: every segment at segment << 4 with a 64 KiB limit; paging and protection off")
    func realMode() {
        let entry = EntryState(mode: .real(segment: 0x1000), rip: 0, rsp: 0x7000)
        let regs = EntryRegisters(entry, over: base)
        #expect(regs.special.cs == Segment(base: 0x10000, limit: 0xFFFF, selector: 0x1000, type: 0xB))
        for data in [regs.special.ds, regs.special.es, regs.special.fs, regs.special.gs, regs.special.ss] {
            #expect(data == Segment(base: 0x10000, limit: 0xFFFF, selector: 0x1000, type: 0x3))
        }
        #expect(regs.special.cr0 == base.cr0)
        #expect(regs.special.apicBase == 0xFEE0_0900, "fields the entry does not name keep KVM's values")
        #expect(regs.general.rip == 0 && regs.general.rsp == 0x7000 && regs.general.rflags == 0x2)
    }

    @Test("long mode: 64-bit code, flat data, paging with PAE, LME and LMA, the GDT and page tables given")
    func longMode() {
        let entry = EntryState(
            mode: .long64(
                pageTableRoot: 0x9000, gdtBase: 0x500, gdtLimit: 0x1F,
                codeSelector: 0x10, dataSelector: 0x18),
            rip: 0x10_0000, rsp: 0x8_0000, rdi: 0x7000, rsi: 0x6000)
        let regs = EntryRegisters(entry, over: base)
        #expect(regs.special.cs.l && regs.special.cs.g && regs.special.cs.selector == 0x10)
        #expect(regs.special.ss.db && regs.special.ss.selector == 0x18)
        #expect(regs.special.cr0 == 0x8001_0033)
        #expect(regs.special.cr3 == 0x9000)
        #expect(regs.special.cr4 == 0x620)
        #expect(regs.special.efer == 0x500)
        #expect(regs.special.gdt == DescriptorTable(base: 0x500, limit: 0x1F))
        #expect(regs.special.idt == DescriptorTable(base: 0, limit: 0))
        #expect(regs.general.rip == 0x10_0000 && regs.general.rdi == 0x7000 && regs.general.rsi == 0x6000)
    }

    @Test("PVH: 32-bit flat segments, paging off, a busy 32-bit TSS at 0 with limit 0x67, EBX = start info")
    func protected32() {
        let entry = EntryState(
            mode: .protected32(gdtBase: 0x500, gdtLimit: 0x27, codeSelector: 0x8, dataSelector: 0x10),
            rip: 0x100_0000, rsp: 0, rbx: 0x6000)
        let regs = EntryRegisters(entry, over: base)
        #expect(regs.special.cs.db && !regs.special.cs.l)
        #expect(regs.special.tr == Segment(base: 0, limit: 0x67, selector: 0, type: 0xB, s: false))
        #expect(regs.special.cr0 == 0x11 && regs.special.cr3 == 0 && regs.special.cr4 == 0 && regs.special.efer == 0)
        #expect(regs.general.rbx == 0x6000)
        #expect(regs.general.rax == 0, "EAX is the multiboot magic only when the entry asks")
    }

    @Test("multiboot: EAX = 0x2BADB002 and EBX = the information, in the same 32-bit state")
    func multiboot() {
        var entry = EntryState(
            mode: .protected32(gdtBase: 0x10000, gdtLimit: 23, codeSelector: 0x8, dataSelector: 0x10),
            rip: 0x8000, rsp: 0, rbx: 0x10020)
        entry.rax = 0x2BAD_B002
        let regs = EntryRegisters(entry, over: base)
        #expect(regs.general.rax == 0x2BAD_B002 && regs.general.rbx == 0x10020 && regs.general.rip == 0x8000)
        #expect(regs.general.rflags == 2)
        #expect(regs.special.cs.selector == 8 && regs.special.ds.selector == 0x10 && regs.special.cr0 == 0x11)
    }
}

@Suite("Machine configuration: defaults for multiboot guests")
struct MultibootConfigurationTests {
    @Test("QEMU's debug-exit and fw_cfg are on for multiboot guests only; 0x501 stays on beside them")
    func defaults() {
        let multiboot = MachineConfiguration(guest: .multiboot([]))
        #expect(multiboot.qemuDebugExitPort && multiboot.firmwareConfig && multiboot.debugExitPort)
        let elf = MachineConfiguration(guest: .elf([]))
        #expect(!elf.qemuDebugExitPort && !elf.firmwareConfig)
    }

    @Test("fw_cfg's items follow the configuration; etc/e820 is the multiboot memory map")
    func firmwareConfigItems() {
        var config = MachineConfiguration(guest: .multiboot([]))
        config.memorySize = 32 << 20
        config.vcpuCount = 3
        config.commandLine = "abc"
        let device = MachineBuilder.firmwareConfig(config)
        #expect(device.item(0x03) == [0, 0, 0, 2, 0, 0, 0, 0])
        #expect(device.item(0x05) == [3, 0])
        #expect(device.item(0x15) == Array("abc\0".utf8))
        let e820 = device.item(0x20) ?? []
        #expect(e820.count == 4 * 20)
        // The last entry: 1 MiB to 32 MiB, available.
        #expect(Array(e820[60..<80]) == [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0xF0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    }
}

@Suite("Machine builder: checks that need no KVM")
struct MachineBuilderTests {
    func configuration(memory: UInt64 = 64 << 20, vcpus: Int = 1, irqchip: Bool = true) -> MachineConfiguration {
        var c = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
        c.memorySize = memory
        c.vcpuCount = vcpus
        c.interruptController = irqchip
        return c
    }

    @Test("memory must be positive, a multiple of 4 KiB, and no more than the host has")
    func memory() {
        let host: UInt64 = 1 << 30
        #expect(throws: Never.self) { try MachineBuilder.validate(configuration(), hostMemory: host) }
        for (size, message) in [
            (UInt64(0), "it must be larger than zero"),
            (4097, "4097 bytes is not a multiple of 4 KiB"),
            (2 << 30, "2048 MiB is more than the host's 1024 MiB of RAM"),
        ] {
            do {
                try MachineBuilder.validate(configuration(memory: size), hostMemory: host)
                Issue.record("\(size) was accepted")
            } catch {
                #expect(error.description == "invalid memory size: \(message)")
            }
        }
    }

    @Test("at least one vCPU; several need the interrupt controller; no more than KVM allows")
    func vcpus() {
        #expect(throws: (any Error).self) { try MachineBuilder.validate(configuration(vcpus: 0), hostMemory: 1 << 30) }
        #expect(throws: (any Error).self) {
            try MachineBuilder.validate(configuration(vcpus: 2, irqchip: false), hostMemory: 1 << 30)
        }
        #expect(throws: Never.self) { try MachineBuilder.validate(configuration(vcpus: 2), hostMemory: 1 << 30) }
        #expect(throws: Never.self) { try MachineBuilder.checkVCPULimit(2, maxVCPUs: 1024, recommendedVCPUs: 2) }
        do {
            try MachineBuilder.checkVCPULimit(3, maxVCPUs: 0, recommendedVCPUs: 2)
            Issue.record("3 vCPUs accepted where KVM allows 2")
        } catch {
            #expect(error.description == "invalid vCPU count 3: this host's KVM allows at most 2 vCPUs")
        }
    }

    @Test("RAM up to 3 GiB sits at 0; the rest continues at 4 GiB, above the MMIO hole")
    func regions() {
        #expect(MachineBuilder.guestRegions(memorySize: 64 << 20) == [GuestRegion(start: 0, size: 64 << 20)])
        #expect(MachineBuilder.guestRegions(memorySize: 3 << 30) == [GuestRegion(start: 0, size: 3 << 30)])
        #expect(
            MachineBuilder.guestRegions(memorySize: 5 << 30)
                == [GuestRegion(start: 0, size: 3 << 30), GuestRegion(start: 4 << 30, size: 2 << 30)])
    }

    @Test("the log passes the first messages, then one notice, then nothing")
    func rateLimit() {
        let recorder = LogRecorder()
        let log = MachineBuilder.rateLimited(recorder.sink)
        for i in 0..<(MachineBuilder.logLimit + 50) { log("message \(i)") }
        #expect(recorder.lines.count == MachineBuilder.logLimit + 1)
        #expect(recorder.lines.last == "further unclaimed-access messages suppressed after \(MachineBuilder.logLimit)")
    }
}

@Suite("MachineConfiguration: guest-facing defaults")
struct ConfigurationDefaultsTests {
    @Test("ELF and flat guests get the debug-exit and hypercall ports; a Linux guest gets neither")
    func portsFollowTheGuest() {
        for guest: MachineConfiguration.Guest in [.elf([]), .flat([], loadAddress: 0x7C00)] {
            let config = MachineConfiguration(guest: guest)
            #expect(config.debugExitPort)
            #expect(config.hypercallPort == HypercallTable.defaultPort)
        }
        let linux = MachineConfiguration(guest: .linux(LinuxBootRequest(kernel: [], commandLine: "")))
        #expect(!linux.debugExitPort)
        #expect(linux.hypercallPort == nil)
    }

    @Test("seccomp is on by default, for every guest")
    func seccompDefault() {
        #expect(MachineConfiguration(guest: .elf([])).seccomp)
        #expect(MachineConfiguration(guest: .linux(LinuxBootRequest(kernel: [], commandLine: ""))).seccomp)
    }
}

@Suite("Virtio devices: placement, command line and ACPI, without KVM")
struct VirtioPlacementTests {
    @Test("device i sits at 0xD0000000 + i * 4 KiB on the i-th free ISA IRQ, named on the kernel command line")
    func commandLine() {
        #expect(VirtioLayout.commandLineParameter(index: 0) == "virtio_mmio.device=4K@0xd0000000:5")
        #expect(VirtioLayout.commandLineParameter(index: 3) == "virtio_mmio.device=4K@0xd0003000:10")
        #expect(VirtioLayout.commandLineParameter(index: 7) == "virtio_mmio.device=4K@0xd0007000:15")
        #expect(VirtioLayout.maximumDevices == 8)
    }

    @Test("each device has a DSDT entry with _HID \"LNRO0005\", its window as Memory32Fixed and its IRQ")
    func dsdt() throws {
        var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
        config.virtioDevices = [.entropy, .entropy]
        let attachments = try MachineBuilder(configuration: config).makeVirtioDevices(
            memory: try GuestMemory(size: 1 << 20), irqLine: nil, consoleOutput: { _ in })
        #expect(attachments.map(\.platformDevice.name) == ["virtio-rng0", "virtio-rng1"])
        #expect(attachments.map(\.platformDevice.irqs) == [[5], [6]])
        let aml = try AMLTerm.encode(termList: attachments[1].platformDevice.aml)
        let hid = Array("LNRO0005".utf8) + [0]
        #expect(aml.indices.contains { aml[$0...].starts(with: [0x0D] + hid) }, "no _HID string")
        let window: [UInt8] = [0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00]
        #expect(aml.indices.contains { aml[$0...].starts(with: window) }, "no Memory32Fixed for 0xD0001000")
        #expect(aml.indices.contains { aml[$0...].starts(with: [0x22, 0x40, 0x00]) }, "no IRQNoFlags {6}")
    }

    @Test("the builder refuses virtio devices without the interrupt controller, and more than eight")
    func validation() {
        var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
        config.virtioDevices = [.entropy]
        #expect(throws: Never.self) { try MachineBuilder.validate(config, hostMemory: 1 << 30) }
        config.interruptController = false
        #expect(throws: (any Error).self) { try MachineBuilder.validate(config, hostMemory: 1 << 30) }
        config.interruptController = true
        config.virtioDevices = Array(repeating: .entropy, count: 9)
        #expect(throws: (any Error).self) { try MachineBuilder.validate(config, hostMemory: 1 << 30) }
    }

    @Test("--disk PATH[,readonly][,id=NAME]: a comma belongs to the path unless it starts a final option")
    func diskArgument() {
        #expect(VirtioDeviceConfiguration(disk: "d.img,id=root") == .block(path: "d.img", readOnly: false, id: "root"))
        #expect(
            VirtioDeviceConfiguration(disk: "d.img,readonly,id=root") == .block(path: "d.img", readOnly: true, id: "root"))
        #expect(
            VirtioDeviceConfiguration(disk: "d.img,id=root,readonly") == .block(path: "d.img", readOnly: true, id: "root"))
        #expect(VirtioDeviceConfiguration(disk: "a,id=x,b.img") == .block(path: "a,id=x,b.img", readOnly: false))
        #expect(VirtioDeviceConfiguration(disk: "d.img,id=") == nil)
        #expect(VirtioDeviceConfiguration(disk: "d.img,id=" + String(repeating: "x", count: 21)) == nil)
        #expect(
            VirtioDeviceConfiguration(disk: "d.img,id=" + String(repeating: "x", count: 20))
                == .block(path: "d.img", readOnly: false, id: String(repeating: "x", count: 20)))
        #expect(VirtioDeviceConfiguration(disk: "disk.img") == .block(path: "disk.img", readOnly: false))
        #expect(VirtioDeviceConfiguration(disk: "disk.img,readonly") == .block(path: "disk.img", readOnly: true))
        #expect(VirtioDeviceConfiguration(disk: "a,b.img") == .block(path: "a,b.img", readOnly: false))
        #expect(VirtioDeviceConfiguration(disk: "a,b.img,readonly") == .block(path: "a,b.img", readOnly: true))
        #expect(VirtioDeviceConfiguration(disk: "disk.img,ro") == .block(path: "disk.img,ro", readOnly: false))
        #expect(VirtioDeviceConfiguration(disk: "") == nil)
        #expect(VirtioDeviceConfiguration(disk: ",readonly") == nil)
        #expect(VirtioDeviceConfiguration(disk: "readonly") == .block(path: "readonly", readOnly: false))
    }

    @Test("--vsock cid=N,uds=PATH: either order, commas in the path, reserved CIDs and long paths refused")
    func vsockArgument() throws {
        #expect(try VirtioDeviceConfiguration(vsock: "cid=3,uds=/tmp/v.sock") == .vsock(cid: 3, udsPath: "/tmp/v.sock"))
        #expect(try VirtioDeviceConfiguration(vsock: "uds=/tmp/v.sock,cid=42") == .vsock(cid: 42, udsPath: "/tmp/v.sock"))
        #expect(try VirtioDeviceConfiguration(vsock: "cid=3,uds=/tmp/a,b") == .vsock(cid: 3, udsPath: "/tmp/a,b"))
        #expect(try VirtioDeviceConfiguration(vsock: "uds=/tmp/a,b,cid=7") == .vsock(cid: 7, udsPath: "/tmp/a,b"))
        #expect(
            try VirtioDeviceConfiguration(vsock: "cid=4294967294,uds=x") == .vsock(cid: 4_294_967_294, udsPath: "x"))
        func reason(_ text: String) -> String? {
            do throws(MachineError) {
                _ = try VirtioDeviceConfiguration(vsock: text)
                return nil
            } catch { return error.description }
        }
        for cid in ["0", "1", "2", "4294967295", "-3", "x", ""] {
            #expect(reason("cid=\(cid),uds=/tmp/v.sock")?.contains("CID") == true, "\(cid)")
        }
        #expect(reason("cid=3,uds=")?.contains("empty") == true)
        #expect(reason("cid=3,uds=/" + String(repeating: "x", count: 107))?.contains("longer") == true)
        #expect(reason("cid=3,uds=/" + String(repeating: "x", count: 106)) == nil)
        for text in ["cid=3", "uds=/tmp/v.sock", "cid=3;uds=/x", "port=3,uds=/x", ""] {
            #expect(reason(text)?.contains("cid=N,uds=PATH") == true, "\(text)")
        }
    }

    @Test("vsock: at most one, the I/O thread required, an existing path refused, the path removed with the machine's devices")
    func vsockValidation() throws {
        var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
        config.virtioDevices = [.vsock(cid: 3, udsPath: "/tmp/a"), .vsock(cid: 4, udsPath: "/tmp/b")]
        #expect(throws: (any Error).self) { try MachineBuilder.validate(config, hostMemory: 1 << 30) }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvisor-vsock-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("v.sock").path
        // Without the I/O thread (no fast path): refused, and no socket is made.
        #expect(buildDisks([.vsock(cid: 3, udsPath: path)])?.contains("I/O thread") == true)
        #expect(!FileManager.default.fileExists(atPath: path))
        // Listening ahead of the build (as the command line does), once for every machine.
        config.virtioDevices = [.vsock(cid: 3, udsPath: path)]
        try config.openVsock()
        #expect(FileManager.default.fileExists(atPath: path))
        var again = config
        again.openedVsockListener = nil
        #expect(throws: MachineError.self) { try again.openVsock() }
        config.openedVsockListener = nil
        #expect(!FileManager.default.fileExists(atPath: path))
        config.virtioDevices = [.vsock(cid: 2, udsPath: path)]
        #expect(throws: MachineError.self) { try config.openVsock() }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("--net tap=NAME[,mac=MAC]: parsed, with one-line errors for a missing tap=, a bad MAC or an unknown key")
    func netArgument() throws {
        #expect(try VirtioDeviceConfiguration(net: "tap=tap0") == .net(tap: "tap0", mac: nil))
        #expect(
            try VirtioDeviceConfiguration(net: "tap=swv1,mac=02:aa:BB:0c:0D:ee")
                == .net(tap: "swv1", mac: [0x02, 0xAA, 0xBB, 0x0C, 0x0D, 0xEE]))
        #expect(
            try VirtioDeviceConfiguration(net: "mac=06:00:00:00:00:01,tap=t") == .net(tap: "t", mac: [6, 0, 0, 0, 0, 1]))
        func error(_ text: String) -> String {
            do {
                _ = try VirtioDeviceConfiguration(net: text)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(error("mac=02:00:00:00:00:01") == "invalid devices: --net mac=02:00:00:00:00:01: tap=NAME is missing")
        #expect(error("") == "invalid devices: --net : '' is not KEY=VALUE (tap=NAME or mac=MAC)")
        #expect(error("tap=").contains("is not an interface name"))
        #expect(error("tap=0123456789abcdef").contains("is not an interface name"))
        #expect(error("tap=a/b").contains("is not an interface name"))
        for mac in ["02:00:00:00:00", "02:00:00:00:00:01:02", "2:00:00:00:00:01", "02-00-00-00-00-01", "zz:00:00:00:00:01", ""] {
            #expect(
                error("tap=t,mac=\(mac)")
                    == "invalid devices: --net tap=t,mac=\(mac): '\(mac)' is not a MAC address (six hex bytes, AA:BB:CC:DD:EE:FF)"
            )
        }
        #expect(error("tap=t,mac=01:00:5e:00:00:01").hasSuffix("is not a unicast address"))
        #expect(error("tap=t,mac=00:00:00:00:00:00").hasSuffix("is not a unicast address"))
        #expect(error("tap=t,speed=10") == "invalid devices: --net tap=t,speed=10: unknown key 'speed' (tap=NAME[,mac=MAC])")
        #expect(VirtioDeviceConfiguration.defaultMAC(index: 3) == [0x06, 0, 0xAC, 0x10, 0, 3])
        #expect(VirtioDeviceConfiguration.formatMAC([0x06, 0, 0xAC, 0x10, 0, 0x1F]) == "06:00:AC:10:00:1F")
    }

    @Test("network devices: need the I/O thread; duplicate MACs and TAPs are refused before anything is opened")
    func netValidation() {
        func refusal(_ devices: [VirtioDeviceConfiguration], ioThread: Bool = true) -> String? {
            var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
            config.virtioDevices = devices
            config.virtioIOThread = ioThread
            do {
                try MachineBuilder.validate(config, hostMemory: 1 << 30)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal([.net(tap: "a", mac: nil), .net(tap: "b", mac: nil)]) == nil)
        #expect(
            refusal([.net(tap: "a", mac: nil)], ioThread: false)
                == "invalid devices: the network device needs the I/O thread (virtioIOThread)")
        #expect(
            refusal([.net(tap: "a", mac: nil), .net(tap: "b", mac: [6, 0, 0xAC, 0x10, 0, 0])])
                == "invalid devices: MAC address 06:00:AC:10:00:00 is given twice")
        #expect(refusal([.net(tap: "a", mac: nil), .net(tap: "a", mac: nil)]) == "invalid devices: TAP a is given twice")
        #expect(
            refusal([.net(tap: "a", mac: [1, 2, 3, 4, 5, 6])])
                == "invalid devices: TAP a: the MAC address must be 6 bytes, unicast")
        // Without a VM's I/O thread the builder refuses the device, whatever the configuration says.
        #expect(buildDisks([.net(tap: "a", mac: nil)])?.contains("needs the I/O thread") == true)
    }

    /// Builds the virtio devices of `devices`, or the error's description.
    func buildDisks(_ devices: [VirtioDeviceConfiguration]) -> String? {
        var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
        config.virtioDevices = devices
        do {
            _ = try MachineBuilder(configuration: config).makeVirtioDevices(
                memory: try GuestMemory(size: 1 << 20), irqLine: nil, consoleOutput: { _ in })
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("disks: opened by the builder; missing, directory, odd-sized, twice-writable and locked files are refused")
    func diskValidation() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvisor-disks-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let good = directory.appendingPathComponent("good.img").path
        let odd = directory.appendingPathComponent("odd.img").path
        try Data(count: 4096).write(to: URL(fileURLWithPath: good))
        try Data(count: 1000).write(to: URL(fileURLWithPath: odd))
        #expect(buildDisks([.block(path: good, readOnly: false)]) == nil)
        #expect(buildDisks([.block(path: good, readOnly: true), .block(path: good, readOnly: true)]) == nil)
        let missing = buildDisks([.block(path: directory.path + "/none.img", readOnly: true)])
        #expect(missing?.contains("none.img") == true)
        #expect(buildDisks([.block(path: directory.path, readOnly: true)])?.contains("directory") == true)
        #expect(buildDisks([.block(path: odd, readOnly: false)])?.contains("multiple of 512") == true)
        #expect(
            buildDisks([.block(path: good, readOnly: false), .block(path: good, readOnly: false)])?.contains("in use") == true)
        #expect(
            buildDisks([.block(path: good, readOnly: true), .block(path: good, readOnly: false)])?.contains("in use") == true)
        // Another process's lock (here: another open file of this one, which flock treats
        // alike): an exclusive lock refuses every disk, a shared one only a writable disk.
        let holder = try FileHandle(forUpdating: URL(fileURLWithPath: good))
        #expect(flock(holder.fileDescriptor, LOCK_EX | LOCK_NB) == 0)
        let locked = buildDisks([.block(path: good, readOnly: true)])
        #expect(
            locked
                == "invalid devices: disk \(good): is in use: another disk or process holds a lock on it (a writable disk belongs to one VM)"
        )
        #expect(flock(holder.fileDescriptor, LOCK_SH | LOCK_NB) == 0)
        #expect(buildDisks([.block(path: good, readOnly: true)]) == nil)
        #expect(buildDisks([.block(path: good, readOnly: false)])?.contains("in use") == true)
        try holder.close()
        #expect(buildDisks([.block(path: good, readOnly: false)]) == nil)
        let attachments = try MachineBuilder(
            configuration: {
                var config = MachineConfiguration(guest: .flat([0xF4], loadAddress: 0x8000))
                config.virtioDevices = [.entropy, .block(path: good, readOnly: true)]
                return config
            }()
        ).makeVirtioDevices(memory: try GuestMemory(size: 1 << 20), irqLine: nil, consoleOutput: { _ in })
        #expect(attachments.map(\.platformDevice.name) == ["virtio-rng0", "virtio-blk1"])
    }
}
