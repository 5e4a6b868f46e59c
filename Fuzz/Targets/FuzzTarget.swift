// The fuzz targets: each a deterministic function over bytes that checks a property and
// traps when it fails. The libFuzzer entry (`swiftvisor-fuzz`) and the seeded pass in
// `swift test` both call `FuzzTarget.run(_:)`, so a crash found by one replays in the other.

import FuzzDeviceTargets

/// A guest- or file-facing entry point under fuzzing. Each case's doc comment says what
/// the input means and which property its run checks beyond "no crash".
package enum FuzzTarget: String, CaseIterable, Sendable {
    /// The 16550 register model driven by register accesses and host input.
    /// Checks: the transmitted bytes equal a model of the THR writes, in order; the receive
    /// FIFO never holds more than 64 bytes; with every interrupt source disabled or cleared
    /// no interrupt is pending.
    case serial16550
    /// The 8042 keyboard controller on its port adapter, driven by port reads and writes.
    /// Checks: the output queue never exceeds 16 bytes; each IRQ line's last driven level
    /// equals the controller's level, so every raised line is lowered when its byte is read.
    case i8042
    /// The CMOS/RTC on its port adapter, with a fixed clock.
    /// Checks: the index port reads back what was written; a data read of a RAM byte outside
    /// the clock registers returns the last value written there.
    case cmos
    /// The ACPI PM1a event and control blocks on their port adapter, at any width and
    /// alignment. Checks: every read equals a model of the status, enable and control
    /// registers, lane by lane; only a sleep request for S5 stops the VM.
    case pm1
    /// The reset control register at port 0xCF9 on its port adapter.
    /// Checks: a read returns the last byte written without RST_CPU, with ones above it at
    /// wider widths; a write stops the VM with a reset exactly when it sets RST_CPU.
    case resetControl = "reset"
    /// Snapshot state as a restore reads it: a whole state file, the saved machine
    /// configuration, or one PC device's state, picked by the first byte.
    /// Checks: everything accepted is canonical (re-encodes or saves to exactly the input);
    /// a refused device restore leaves the device as it was.
    case snapshotState = "snapshot-state"
    /// The PCI configuration ports 0xCF8-0xCFF on their port adapter, at every width.
    /// Checks: 0xCF8 read as a dword returns the last dword written there; every other read
    /// is all ones (no device behind any address); no write stops the VM.
    case pciConfig = "pci-config"
    /// The `--cpuid` override parser (`CPUIDOverride(parsing:)`) on the input as UTF-8.
    /// Checks: a parsed field lies inside its register and its value fits; the override's
    /// description parses back to the same override.
    case cpuidOverride = "cpuid-override"
    /// The `--msr` override parser (`MSROverride(parsing:)`) on the input as UTF-8.
    /// Checks: a parsed index is the 32-bit number before `=` and a parsed value the 64-bit
    /// number after `:`; the override's description parses back to the same override; a
    /// malformed argument throws rather than traps.
    case msrOption = "msr-option"
    /// The `--memory` size parser (`ByteSize(parsing:)`) on the input as UTF-8.
    /// Checks: a parsed size's description is a number times its unit, equal to the size,
    /// in the largest unit that divides it, and parses back to the same size.
    case byteSize = "byte-size"
    /// Random exits (any port, width, string count up to 4,096, MMIO address, MSR) through
    /// the PC platform's device list on a `PortBus`/`MMIOBus` with `ExitDispatcher`.
    /// Checks: no trap; every element of an IN is written exactly once, in order; an
    /// unclaimed read returns all ones; an OUT writes no element.
    case dispatch
    /// Run-page decoding (`RunPage`, which `VCPUHandle.run()` uses) over a fake kvm_run page
    /// of 1-3 pages that ends at a PROT_NONE guard page, filled from the input.
    /// Checks: decoding touches nothing outside the page and writes nothing; the exit equals
    /// a model of the kernel ABI (malformed I/O data areas and MMIO lengths are flagged,
    /// unknown reasons are `.other`); a decoded I/O exit's data lies inside the page and its
    /// elements read and write exactly the bytes at the data offset; an element outside the
    /// page reads all ones and writes nothing.
    case runPage = "run-page"
    /// The instruction emulator (`InstructionEmulator.emulate`) on one instruction, biased
    /// toward the ones it handles, in any code mode (real, protected, paged, long,
    /// compatibility), CPL and register state, over 64 KiB of identity-mapped guest RAM.
    /// Checks: it never stops the VM; a declined instruction changes nothing; a completed
    /// one advances RIP by its decoded length and changes only its destination registers,
    /// the arithmetic flags and AC, and RAM only at CMPXCHG16B's aligned block (holding
    /// RDX:RAX before and RCX:RBX after); a fault changes no register and no byte.
    case emulator
    /// The ELF loader: parse the input, load it into a small guest RAM.
    /// Checks: RAM changes only inside the loaded segments' ranges, and not at all when
    /// loading fails.
    case elf
    /// The multiboot loader's planning (`MultibootPlan`): RAM of 1-17 MiB, sometimes with a
    /// region at 4 GiB, up to three modules of chosen sizes and strings, a command line,
    /// then the image (ELF32, ELF64 or a flat image with the header's address fields).
    /// Checks: every accepted image's segments lie in RAM below 4 GiB and do not overlap
    /// each other, the loader's block or the modules; the block and the modules lie in free
    /// RAM below 4 GiB, apart; the entry lies in a segment; the information's pointers
    /// (command line, module list, memory map, loader name) point into the block.
    case multiboot
    /// The Linux loader end to end on a kernel image (bzImage or vmlinux), with or without
    /// host decompression, into 2 MiB of guest RAM.
    /// Checks: guest RAM changes only inside the ranges the plan and the loader's boot-data
    /// layout name, and not at all when loading fails.
    case linux
    /// The guest address translator (`AddressTranslator`) against a reference walker from
    /// the SDM's tables, in every paging mode, on tables built in 64 KiB of RAM.
    /// Checks: each access (read, write or fetch; user or supervisor) gives the same physical
    /// address or the same fault and #PF error code in both; RAM afterwards holds the same
    /// accessed and dirty flags.
    case translator

    /// Split virtqueue chains (`Virtqueue.pop`) over a descriptor table, available ring and
    /// indirect table filled from the input, with any queue size.
    /// Checks: every chain equals a separately written reference walker's (buffers in order,
    /// or invalid); buffers lie in RAM and their lengths add up within 32 bits; a runaway
    /// available index yields nothing, and a sane one yields exactly its entries.
    case virtqueue
    /// The virtio entropy device behind the virtio-mmio transport, driven by register
    /// accesses of any offset, width and value, guest-memory writes and notifications.
    /// Checks: the interrupt line follows InterruptStatus; the device is active exactly
    /// with DRIVER_OK and without DEVICE_NEEDS_RESET; FEATURES_OK only for offered
    /// features; bounded requests per notification and bytes per request.
    case virtioEntropy = "virtio-entropy"
    /// The virtio block device on a temporary disk (read-only or not), driven by descriptors,
    /// available heads, request headers and data written by a hostile driver, and
    /// notifications. Checks: RAM changes only inside writable descriptors and the used
    /// ring; the used index moves by exactly the requests completed, at most a queue's
    /// worth per notification; a completed request's length fits its writable buffers and
    /// its status is 0, 1 or 2 (or it was malformed, length 0); the disk never changes size,
    /// and a read-only one never changes.
    case virtioBlock = "virtio-block"
    /// The vsock device on a fake host side, driven by a hostile guest's packets, rx
    /// buffers and device resets, by host programs' lines, bytes and ends, and by failing
    /// watches, with the host side's work held back as an I/O thread would. Checks: the
    /// guest never gets more payload than its advertised credit; every used length fits its
    /// buffer; a connection reset by either side, or by a device reset, is gone; no closed
    /// host socket is used again; no host socket leaks.
    case virtioVsock = "virtio-vsock"
    /// The virtio console device with both queues, driven by descriptors and available
    /// heads of a hostile driver, transmit notifications and input. Checks: the output is
    /// exactly the readable bytes of the valid transmit chains completed, in order; input
    /// changes RAM only inside receive buffers and the used ring, and the completed
    /// receive chains hold exactly the bytes taken.
    case virtioConsole = "virtio-console"
    /// The virtio network device on a SOCK_SEQPACKET pair standing in for its TAP, driven by
    /// receive and transmit descriptors, available heads, frames from the host (around the
    /// size limits), readiness, notifications and 8-byte writes. Checks: every frame written
    /// to the TAP is exactly a valid transmit chain's readable bytes, header zeroed, in
    /// order, and nothing else; a receive chain's used length never exceeds its writable
    /// length, and a delivered frame is one of the host's, whole and in order, behind a
    /// clean header; used indices move by exactly the chains completed, within the bounds.
    case virtioNet = "virtio-net"
    /// Firecracker's REST API rules (`RequestRules.apply` of `VisorAPI`) over a sequence of
    /// requests: any method, a path from the endpoints (or raw), any body. Checks: only 200
    /// with JSON, 204 with nothing or 400 with a `fault_message`; a refused request changes
    /// nothing; the configuration keeps its invariants (one root drive, first; unique IDs,
    /// MACs and TAPs; machine limits); runtime requests only in their phase.
    case apiRequest = "api-request"
    /// The devices' token-bucket rate limiter (`RateLimiter` of `VisorVirtio`) with buckets
    /// of any 64-bit values, over requests, clock steps and bucket updates. Checks: no
    /// trap; budgets within sizes; a blocked limiter refuses; a refusal blocks past now, at
    /// most 100 ms when newly refused, and keeps the ops budget (the refund); the requests
    /// admitted never exceed the ops bucket's size, burst and refill over the time elapsed.
    case rateLimiter = "rate-limiter"
    /// The decoders of a snapshot's KVM state (`VCPUState` and `VMState` of `VisorKVM`):
    /// the first byte picks one (even: vCPU, odd: VM), the rest is its encoding. Checks: a
    /// decode fails with a `SnapshotError` or gives a state whose kernel blocks have their
    /// structures' sizes and lists their bounds, and which encodes to exactly the bytes read.
    case kvmState = "kvm-state"
    /// One tagged value of the sandbox calling convention as the host reads it from a
    /// guest's call area; the first byte picks the expected type. Checks: whatever decodes
    /// re-encodes to exactly the bytes read, and `skipValue` accepts it over the same bytes.
    case sandboxMessage = "sandbox-message"

    /// Inputs a seeded pass in `swift test` runs: fewer where one run snapshots guest RAM,
    /// which is slow in a debug build.
    package var seededInputs: Int {
        switch self {
        case .elf: 300
        case .linux: 40
        case .virtioBlock: 300
        case .virtioNet: 500
        default: 3_000
        }
    }

    /// Runs the target on one input. Traps (`precondition`) when its property fails.
    package func run(_ data: [UInt8]) {
        // The device and parser targets are `DeviceFuzzTarget`'s, under the same names.
        if let device = DeviceFuzzTarget(rawValue: rawValue) { return device.run(data) }
        switch self {
        case .serial16550, .i8042, .cmos, .pm1, .resetControl, .pciConfig, .cpuidOverride, .msrOption, .byteSize:
            preconditionFailure("\(rawValue) is a device target")
        case .snapshotState: fuzzSnapshotState(data)
        case .dispatch: fuzzDispatch(data)
        case .runPage: fuzzRunPage(data)
        case .emulator: fuzzEmulator(data)
        case .elf: fuzzELF(data)
        case .multiboot: fuzzMultiboot(data)
        case .linux: fuzzLinux(data)
        case .translator: fuzzTranslator(data)
        case .virtqueue: fuzzVirtqueue(data)
        case .virtioEntropy: fuzzVirtioEntropy(data)
        case .virtioBlock: fuzzVirtioBlock(data)
        case .virtioVsock: fuzzVirtioVsock(data)
        case .virtioConsole: fuzzVirtioConsole(data)
        case .virtioNet: fuzzVirtioNet(data)
        case .apiRequest: fuzzAPIRequest(data)
        case .rateLimiter: fuzzRateLimiter(data)
        case .kvmState: fuzzKVMState(data)
        case .sandboxMessage: fuzzSandboxMessage(data)
        }
    }
}
