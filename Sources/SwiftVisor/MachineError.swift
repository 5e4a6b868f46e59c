public import VisorKVM
public import VisorMemory
public import VisorCore
public import VisorLoader
public import VisorLinux
public import VisorSnapshot

/// An error from building or running a machine. Each wraps the failing layer's error, whose
/// message says what to do about it.
public enum MachineError: Error, CustomStringConvertible {
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case loader(LoaderError)
    case bus(BusError)
    /// The requested number of vCPUs is unusable.
    case invalidVCPUCount(String)
    /// The requested RAM size is unusable.
    case invalidMemorySize(String)
    /// A guest file could not be read.
    case cannotReadFile(path: String, reason: String)
    /// An output file could not be written.
    case cannotWriteFile(path: String, reason: String)
    /// The vCPU thread could not be started.
    case cannotStartThread(errno: Int32)
    /// `run` was called on a machine that already ran; build a new one.
    case alreadyRan
    /// The Linux boot path refused the kernel, initrd or command line.
    case linux(LinuxBootError)
    /// The platform's firmware tables could not be built.
    case firmware(String)
    /// The host-quirk probe guest did not behave as expected.
    case hostProbeFailed(String)
    /// Devices the machine cannot give what they need (interrupts, the interrupt controller).
    case invalidDevices(String)
    /// A snapshot's files are damaged, of another version, or do not fit this host.
    case snapshot(SnapshotError)
    /// The machine cannot be snapshotted or restored now, for the reason given.
    case snapshotRefused(String)

    public var description: String {
        switch self {
        case .kvm(let e): e.description
        case .memory(let e): e.description
        case .loader(let e): e.description
        case .bus(let e): e.description
        case .invalidMemorySize(let why): "invalid memory size: \(why)"
        case .invalidVCPUCount(let why): "invalid vCPU count \(why)"
        case .cannotReadFile(let path, let reason): "cannot read \(path): \(reason)"
        case .cannotWriteFile(let path, let reason): "cannot write \(path): \(reason)"
        case .cannotStartThread(let errno): "cannot start the vCPU thread: \(errnoText(errno))"
        case .alreadyRan: "this machine has already run; create a new Machine to run again"
        case .linux(let e): e.description
        case .firmware(let why): "cannot build the ACPI tables: \(why)"
        case .hostProbeFailed(let why): "host-quirk probe failed: \(why)"
        case .invalidDevices(let why): "invalid devices: \(why)"
        case .snapshot(let e): e.description
        case .snapshotRefused(let why): "cannot snapshot or restore: \(why)"
        }
    }
}

/// Why `Machine.setInterruptLine(_:high:)` did not set a line.
public enum InterruptLineError: Error, Equatable, CustomStringConvertible {
    /// The machine was built without the in-kernel interrupt controller
    /// (`MachineConfiguration.interruptController`), so there are no lines to drive.
    case noInterruptController
    /// The line is not one of the interrupt controller's (GSIs 0 to 23).
    case noSuchLine(UInt32)
    /// KVM refused `KVM_IRQ_LINE`.
    case kvm(KVMError)

    public var description: String {
        switch self {
        case .noInterruptController:
            "cannot set an interrupt line: the machine has no interrupt controller (interruptController is off)"
        case .noSuchLine(let line):
            "cannot set interrupt line \(line): the interrupt controller has lines 0-\(Machine.interruptLineCount - 1)"
        case .kvm(let error): "cannot set an interrupt line: \(error)"
        }
    }
}
