public import VisorCore
public import VisorDevices
public import VisorEmulator
package import VisorHost
import VisorMemory
public import VisorLinux

/// Everything needed to build a machine. Build one, adjust it, hand it to `Machine`.
public struct MachineConfiguration: Sendable {
    /// A guest image and how to enter it.
    public enum Guest: Sendable {
        /// A freestanding 64-bit ELF executable, entered in long mode (see the README's
        /// guest entry contract).
        case elf([UInt8])
        /// A raw binary copied to `loadAddress` and entered in 16-bit real mode there.
        case flat([UInt8], loadAddress: UInt64)
        /// A Linux kernel (bzImage or vmlinux) with its initrd and command line, on a
        /// PC-shaped platform: ACPI tables, an e820 map, the i8042, CMOS/RTC, ACPI PM1
        /// registers, the reset register at 0xCF9, port 0x80 and an empty PCI bus.
        /// `commandLine` of the configuration is not used; the request carries its own.
        case linux(LinuxBootRequest)
        /// A multiboot (version 1) image: an ELF32 or ELF64 file, or a flat image with the
        /// header's address fields, whose multiboot header lies in its first 8 KiB. Its
        /// segments load at their physical addresses (below 1 MiB too), `modules` are loaded
        /// page-aligned, and vCPU 0 enters in 32-bit protected mode, paging off, with
        /// EAX = 0x2BADB002 and EBX = the multiboot information (see the README's
        /// "Multiboot guests" section). `commandLine` of the configuration is the guest's.
        case multiboot([UInt8], modules: [MultibootModule] = [])

        /// Whether `bytes` carry a multiboot header's magic (0x1BADB002, 4-byte aligned, in
        /// the first 8 KiB): such an image is meant for `.multiboot`, even if it is ELF64.
        public static func isMultiboot(_ bytes: [UInt8]) -> Bool { MultibootHeader.hasMagic(bytes) }

        /// A machine saved by `Machine.snapshot`, resumed where it stopped. Build the
        /// configuration with `MachineConfiguration(restoring:)`, which sets what must
        /// match the snapshot.
        case snapshot(MachineSnapshot)
    }

    /// For a Linux guest: the CMOS/RTC of a previous machine (`machine.platform.cmos`), so
    /// that a rebooted guest keeps the time it set and its CMOS RAM, as a battery-backed
    /// CMOS would. nil gives a new one on the host's clock.
    public var batteryBackedCMOS: CMOSDevice?

    /// Called once the Linux loader has placed the kernel, before any vCPU runs (for traces).
    public var onLinuxBootPlan: (@Sendable (LinuxBootPlan) -> Void)?

    /// A port device to put on the bus besides the built-in ones.
    public struct PortRegistration: Sendable {
        public var name: String
        public var range: PortRange
        public var device: any PortDevice
        public init(name: String, range: PortRange, device: any PortDevice) {
            self.name = name
            self.range = range
            self.device = device
        }
    }

    /// An MMIO device to put on the bus.
    public struct MMIORegistration: Sendable {
        public var name: String
        public var range: MMIORange
        public var device: any MMIODevice
        public init(name: String, range: MMIORange, device: any MMIODevice) {
            self.name = name
            self.range = range
            self.device = device
        }
    }

    public var guest: Guest
    /// Guest RAM in bytes: a positive multiple of 4 KiB, at most the host's RAM.
    public var memorySize: UInt64 = 64 << 20
    /// Number of vCPUs, each on its own thread. vCPU 0 starts as the entry contract says;
    /// the others wait for INIT and SIPI from the guest.
    public var vcpuCount = 1
    /// KVM's in-kernel interrupt controllers (PICs, IOAPIC, local APICs) and PIT. With them,
    /// `hlt` waits for an interrupt; without them (one vCPU only), `hlt` ends the VM.
    public var interruptController = true
    /// Passed to ELF guests through the boot-info block, and to multiboot guests through the
    /// multiboot information and fw_cfg.
    public var commandLine = ""
    public var unclaimedPorts: UnclaimedAccessPolicy = .block
    public var unclaimedMMIO: UnclaimedAccessPolicy = .block
    /// Count exits by kind and port.
    public var collectStatistics = false
    /// Track the pages written since the last `Machine.dirtyPages()`, for diff snapshots:
    /// KVM logs the guest's writes to each memory slot, and guest memory marks the VMM's
    /// own (devices, the emulator, loaders). Off by default: logging makes the guest's
    /// first write to each page after a take fault into KVM.
    public var trackDirtyPages = false
    /// Receives one line per exit when set.
    public var trace: (@Sendable (String) -> Void)?
    /// Receives every byte the guest sends to COM1 (and the console-write hypercall). nil,
    /// the default: `consoleDescriptor`, unbuffered, one `write(2)` per guest access (a
    /// `rep outsb` of 4,096 bytes is one write); a write blocked on a full pipe gives up,
    /// dropping the rest of that access's bytes, when the VM is paused or stopped.
    public var consoleOutput: (@Sendable (UInt8) -> Void)?
    /// Where the console goes when `consoleOutput` is nil: standard output (1) by default,
    /// or any descriptor open for writing (a pseudo-terminal, a pipe, a file) that stays
    /// open while the machine runs.
    public var consoleDescriptor: Int32 = 1
    /// Receives warnings and `log`-policy messages. Default: standard error.
    public var log: @Sendable (String) -> Void = { HostIO.printError($0) }
    public var portDevices: [PortRegistration] = []
    /// Port ranges intercepted with no handler (reads all ones, writes dropped), exempt
    /// from the unclaimed-port policy. Named for statistics and error messages.
    public var blockedPorts: [(name: String, range: PortRange)] = []
    /// The hypercall port (see `HypercallTable`); nil turns hypercalls off, so the port is
    /// an ordinary unclaimed port. Default: the standard port for ELF and flat guests, nil
    /// for Linux, whose user processes with I/O privilege could otherwise write to the
    /// console past the kernel and end the VM (see the README's threat model).
    public var hypercallPort: UInt16?
    /// Whether the debug-exit port (0x501) is on the bus, through which the guest ends the
    /// VM with a status it picks. Default: on for ELF and flat guests (the test guests exit
    /// through it), off for Linux, which powers off through ACPI; off, the port is an
    /// ordinary unclaimed port.
    public var debugExitPort: Bool
    /// Whether QEMU's isa-debug-exit is on the bus at ports 0xF4-0xF7 (as kvm-unit-tests
    /// configures it, `iosize=4`): a write of V of any width ends the VM with status
    /// `(V << 1) | 1` (8 bits), so 1 is pass, 3 fail and 77 skip. Default: on for multiboot
    /// guests, off for the others; it gives guest code the same power as `debugExitPort`.
    public var qemuDebugExitPort: Bool
    /// Whether QEMU's fw_cfg interface is on the bus at ports 0x510 (selector) and 0x511
    /// (data), without DMA: the signature, interface ID, RAM size, CPU count, the command
    /// line and a file directory with "etc/e820" (see `FirmwareConfigDevice`). Default: on for
    /// multiboot guests, off for the others.
    public var firmwareConfig: Bool
    /// Whether QEMU's test devices (pc-testdev) are on the buses: a latch at ports
    /// 0xE0-0xE3, interrupt-line ports 0x2000 + n (writing 1 or 0 raises or lowers GSI n,
    /// n < 24, through the in-kernel interrupt controller) and a 64 KiB RAM-like MMIO
    /// window at 0xFF000000 (see `QEMUTestDevice`). They give guest code power over every
    /// interrupt line, so they are for test guests only. Default: off. A machine with them
    /// cannot be snapshotted.
    public var qemuTestDevices = false
    /// Hypercall handlers added to (or replacing) the built-in ones, by call number.
    public var hypercallHandlers: [UInt64: HypercallHandler] = [:]
    public var mmioDevices: [MMIORegistration] = []
    /// Virtio devices, each on its own virtio-mmio window and interrupt (see
    /// `VirtioDeviceConfiguration` for where they sit and how a Linux guest finds them).
    /// They need the interrupt controller; at most `VirtioLayout.maximumDevices`.
    public var virtioDevices: [VirtioDeviceConfiguration] = []
    /// Serve the virtio queues on an I/O thread: a queue notification then signals an
    /// eventfd inside the kernel (`KVM_IOEVENTFD`) instead of exiting to user space, and
    /// interrupts are injected through `KVM_IRQFD`. Off, notifications are served on the
    /// vCPU thread at their MMIO exit and interrupts go through `KVM_IRQ_LINE` (for
    /// comparison). Default: on.
    public var virtioIOThread = true
    /// Offer VIRTIO_F_EVENT_IDX on the devices that honour it (entropy, block) when they are
    /// served on the I/O thread: the driver then notifies only when the device asks
    /// (`avail_event`) and the device interrupts only when the driver asks (`used_event`).
    /// Off (for comparison), drivers notify for every batch. Default: on.
    public var virtioEventIndex = true
    /// How long the I/O thread keeps polling a block device's queue, or a network device's
    /// transmit queue, after it last found a request, in microseconds (adaptive polling, as QEMU's I/O threads do with
    /// `poll-max-ns`): while it polls, the driver is asked not to notify, so a request
    /// costs the guest no exit, and the thread spends at most this long spinning after each
    /// burst of requests. 0 turns polling off: every request is notified. Needs
    /// `virtioIOThread`; at most `maximumVirtioPollMicroseconds`. Default: 0, as polling
    /// spends host CPU that a host full of machines may not have (BENCHMARKS.md).
    public var virtioPollMicroseconds: UInt32 = 0
    /// The longest poll window `virtioPollMicroseconds` may ask for: 1 ms.
    public static let maximumVirtioPollMicroseconds: UInt32 = 1000
    /// Disk files opened ahead of the build by `openDisks()`, by device index.
    package var openedDisks: [Int: HostDiskFile] = [:]
    /// The vsock device's listening socket, made ahead of the build by `openVsock()`.
    package var openedVsockListener: HostUnixListener?
    /// TAP interfaces opened ahead of the build by `openTaps()`, by device index.
    package var openedTaps: [Int: HostTap] = [:]
    /// Finish in user space the instructions the host's KVM cannot emulate (see
    /// `InstructionEmulator`); off, an emulation failure stops the VM.
    public var emulation = true
    /// Instruction handlers added to (or replacing) the standard ones, by mnemonic.
    public var instructionHandlers: [String: InstructionHandler] = [:]
    /// What CPUID tells the guest (see `CPUIDPolicy`).
    public var cpuid = CPUIDPolicy()
    /// How the guest's RDMSR and WRMSR behave (see `MSRPolicy`).
    public var msrs = MSRPolicy.standard
    /// Confine each vCPU thread with a seccomp-BPF allowlist (`Seccomp.Role.vcpu`) and
    /// `PR_SET_NO_NEW_PRIVS` before it runs guest code; a system call off the list fails
    /// with `EPERM`. The filter stays on the thread until it ends. Default: on.
    public var seccomp = true
    /// The KVM device node, opened once per process and shared by every machine built
    /// from it.
    public var kvmPath = "/dev/kvm"

    /// A configuration with the defaults for `guest`: the debug-exit and hypercall ports on
    /// for ELF, flat and multiboot guests, off for Linux; QEMU's debug-exit and fw_cfg on for
    /// multiboot guests only. Changing `guest` later keeps the ports as they are.
    public init(guest: Guest) {
        self.guest = guest
        if case .multiboot = guest {
            qemuDebugExitPort = true
            firmwareConfig = true
        } else {
            qemuDebugExitPort = false
            firmwareConfig = false
        }
        if case .linux = guest {
            hypercallPort = nil
            debugExitPort = false
        } else {
            hypercallPort = HypercallTable.defaultPort
            debugExitPort = true
        }
    }
}
