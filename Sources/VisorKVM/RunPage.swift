internal import CKVM

/// A vCPU's run page: the `struct kvm_run` KVM shares with user space, plus the rest of the
/// mapping (`KVM_GET_VCPU_MMAP_SIZE` bytes), where string I/O data lives. Decodes the last
/// exit into a `VMExit` and is its `ExitDataChannel`.
///
/// Every offset and size the kernel writes here is checked against `size` before it is
/// used: an I/O data area that leaves the page, or overlaps struct kvm_run itself (the
/// kernel puts it a page in), decodes as `.malformedIO`, an MMIO length
/// above 8 as `.other`, and an element access outside the page reads all ones and writes
/// nothing. So no kernel value, however wrong, makes this type touch memory outside the
/// mapping.
///
/// `VCPUHandle` owns the mapping and keeps one of these; tests and the `run-page` fuzz
/// target build one over memory of their own.
@safe package struct RunPage {
    /// The mapping, `size` bytes starting with a struct kvm_run. Valid while the owner
    /// keeps it mapped (the caller of `init(unsafeBase:size:)` promises that).
    private let page: UnsafeMutablePointer<kvm_run>
    /// Bytes mapped at `page`: at least `RunPage.structSize`.
    package let size: Int

    /// Bytes of `struct kvm_run`: a run page is at least this large.
    package static var structSize: Int { MemoryLayout<kvm_run>.size }

    /// A run page over `size` bytes at `base`. Throws when `size` is smaller than
    /// `struct kvm_run`.
    ///
    /// Unsafe: `base` must be 8-byte aligned and point to `size` readable and writable
    /// bytes that stay mapped for as long as this value (or a copy) is used.
    @unsafe package init(unsafeBase base: UnsafeMutableRawPointer, size: Int) throws(KVMError) {
        guard size >= MemoryLayout<kvm_run>.size else {
            throw .malformedRunPage("map size \(size) is smaller than struct kvm_run")
        }
        // SAFETY: the caller promises `size` bytes at `base`, which hold a struct kvm_run
        // (checked above: size is at least that large).
        unsafe self.page = unsafe base.bindMemory(to: kvm_run.self, capacity: 1)
        self.size = size
    }

    // SAFETY (every ckvm_run_* call in this type): `page` points to the struct kvm_run at
    // the start of the mapping (see init), and each accessor reads or writes one fixed field
    // inside that struct.

    /// Whether `requestImmediateExit(true)` is in force.
    @inline(__always) package var immediateExitRequested: Bool { unsafe ckvm_run_immediate_exit(page) != 0 }

    /// Makes the next `KVM_RUN` return at once (`kvm_run.immediate_exit`).
    @inline(__always) package func requestImmediateExit(_ flag: Bool) {
        unsafe ckvm_run_set_immediate_exit(page, flag ? 1 : 0)
    }

    /// Decodes the last exit. Unknown exit reasons come back as `.other`; an I/O exit whose
    /// data area leaves the page as `.malformedIO`; an MMIO exit wider than 8 bytes as
    /// `.other` with the length as its hardware reason.
    @inline(__always)
    package func decodeExit() -> VMExit {
        switch exitReason {
        case ExitReason.io.rawValue:
            guard ioDataRange != nil else { return .malformedIO(port: ioPort, width: ioSize, count: ioCount) }
            return .io(PortAccess(isWrite: ioIsOut, port: ioPort, width: ioSize, count: ioCount))
        case ExitReason.mmio.rawValue:
            let length = mmioLength
            guard length >= 1, length <= 8 else {
                return .other(reason: ExitReason.mmio.rawValue, hardwareReason: UInt64(length))
            }
            let width = UInt8(length)
            let isWrite = mmioIsWrite
            let mask: UInt64 = width == 8 ? .max : (1 << (UInt64(width) * 8)) &- 1
            return .mmio(
                MMIOAccess(
                    isWrite: isWrite, address: mmioAddress, width: width,
                    value: isWrite ? mmioData & mask : 0))
        case ExitReason.hlt.rawValue:
            return .halt(interruptsEnabled: interruptFlag)
        case ExitReason.shutdown.rawValue:
            return .shutdown
        case ExitReason.internalError.rawValue:
            return .internalError(suberror: internalSuberror, data: internalData)
        case ExitReason.failEntry.rawValue:
            return .failEntry(hardwareReason: failEntryReason, cpu: failEntryCPU)
        case ExitReason.systemEvent.rawValue:
            return .systemEvent(type: systemEventType)
        case ExitReason.exception.rawValue:
            return .exception(vector: exceptionVector, errorCode: exceptionErrorCode)
        case ExitReason.debug.rawValue:
            return .debug
        case ExitReason.intr.rawValue:
            return .interrupted
        case ExitReason.x86Rdmsr.rawValue:
            return .msr(index: msrIndex, value: nil)
        case ExitReason.x86Wrmsr.rawValue:
            return .msr(index: msrIndex, value: msrData)
        default:
            return .other(reason: exitReason, hardwareReason: hardwareExitReason)
        }
    }

    /// The byte range of the current I/O exit's data inside the page, or nil when it is
    /// not valid: the size is not 1, 2 or 4, the count is 0, the offset falls inside struct
    /// kvm_run, or `data_offset + size * count` overflows or passes the end of the page.
    package var ioDataRange: Range<Int>? {
        let size = UInt64(ioSize)
        guard size == 1 || size == 2 || size == 4 else { return nil }
        let offset = unsafe ckvm_run_io_data_offset(page)
        guard offset >= UInt64(MemoryLayout<kvm_run>.size) else { return nil }
        let count = UInt64(ioCount)
        let (bytes, overflow1) = size.multipliedReportingOverflow(by: count)
        let (end, overflow2) = offset.addingReportingOverflow(bytes)
        guard !overflow1, !overflow2, end <= UInt64(self.size), count > 0 else { return nil }
        return Int(offset)..<Int(end)
    }

    /// The page offset of I/O element `index`, with its width, or nil when the element
    /// is not inside the page after struct kvm_run (a caller that broke the precondition,
    /// or a page changed since the exit was decoded).
    @inline(__always)
    private func ioElementPlace(_ index: Int) -> (offset: Int, width: Int)? {
        let width = Int(ioSize)
        let offset = unsafe ckvm_run_io_data_offset(page)
        guard width == 1 || width == 2 || width == 4, index >= 0, offset >= UInt64(MemoryLayout<kvm_run>.size),
            offset <= UInt64(size)
        else { return nil }
        let (relative, overflow1) = index.multipliedReportingOverflow(by: width)
        let (start, overflow2) = Int(offset).addingReportingOverflow(relative)
        guard !overflow1, !overflow2, start <= size - width else { return nil }
        return (start, width)
    }

    // MARK: Fields

    /// `kvm_run.exit_reason` of the last exit.
    @inline(__always) var exitReason: UInt32 { unsafe ckvm_run_exit_reason(page) }
    /// RFLAGS.IF as of the last exit.
    @inline(__always) var interruptFlag: Bool { unsafe ckvm_run_if_flag(page) != 0 }

    @inline(__always) var ioIsOut: Bool { unsafe UInt32(ckvm_run_io_direction(page)) == CKVM_EXIT_IO_OUT }
    @inline(__always) var ioSize: UInt8 { unsafe ckvm_run_io_size(page) }
    @inline(__always) var ioPort: UInt16 { unsafe ckvm_run_io_port(page) }
    @inline(__always) var ioCount: UInt32 { unsafe ckvm_run_io_count(page) }

    @inline(__always) var mmioAddress: UInt64 { unsafe ckvm_run_mmio_phys_addr(page) }
    @inline(__always) var mmioLength: UInt32 { unsafe ckvm_run_mmio_len(page) }
    @inline(__always) var mmioIsWrite: Bool { unsafe ckvm_run_mmio_is_write(page) != 0 }
    /// The data bytes of an MMIO write, little-endian; bytes past `mmioLength` are not meaningful.
    @inline(__always) var mmioData: UInt64 { unsafe ckvm_run_mmio_data(page) }

    /// The MSR of a `KVM_EXIT_X86_RDMSR`/`WRMSR` exit and (for a write) the value.
    @inline(__always) var msrIndex: UInt32 { unsafe ckvm_run_msr_index(page) }
    @inline(__always) var msrData: UInt64 { unsafe ckvm_run_msr_data(page) }
    /// `msr.error` as the VMM left it: nonzero makes the guest's RDMSR/WRMSR raise #GP.
    package var msrError: UInt8 { unsafe ckvm_run_msr_error(page) }

    var failEntryReason: UInt64 { unsafe ckvm_run_fail_entry_reason(page) }
    var failEntryCPU: UInt32 { unsafe ckvm_run_fail_entry_cpu(page) }
    var hardwareExitReason: UInt64 { unsafe ckvm_run_hw_exit_reason(page) }
    var internalSuberror: UInt32 { unsafe ckvm_run_internal_suberror(page) }
    /// `internal.data[0..<ndata]`, with ndata capped at the array's size.
    var internalData: [UInt64] {
        let count = unsafe min(ckvm_run_internal_ndata(page), ckvm_run_internal_capacity())
        return (0..<count).map { unsafe ckvm_run_internal_data(page, $0) }
    }
    var systemEventType: UInt32 { unsafe ckvm_run_system_event_type(page) }
    var exceptionVector: UInt32 { unsafe ckvm_run_ex_exception(page) }
    var exceptionErrorCode: UInt32 { unsafe ckvm_run_ex_error_code(page) }
}

// MARK: The current exit's data

extension RunPage: ExitDataChannel {
    /// Element `index` of the current I/O exit's data, zero-extended; all ones when the
    /// element is not inside the page (never the case for an exit decoded as `.io` and an
    /// index below its count, which the dispatcher keeps to).
    @inline(__always)
    package func ioElement(_ index: Int) -> UInt32 {
        guard let (offset, width) = ioElementPlace(index) else { return .max }
        // SAFETY: ioElementPlace proved offset + width <= size, so the load stays inside
        // the mapping; loadUnaligned copes with any alignment.
        let base = unsafe UnsafeRawPointer(page).advanced(by: offset)
        switch width {
        case 1: return unsafe UInt32(base.load(as: UInt8.self))
        case 2: return unsafe UInt32(UInt16(littleEndian: base.loadUnaligned(as: UInt16.self)))
        default: return unsafe UInt32(littleEndian: base.loadUnaligned(as: UInt32.self))
        }
    }

    /// Stores element `index` of the current IN exit's data (the low `width` bytes of
    /// `value`); KVM copies it into the guest. Does nothing when the element is not inside
    /// the page.
    @inline(__always)
    package func setIOElement(_ index: Int, _ value: UInt32) {
        guard let (offset, width) = ioElementPlace(index) else { return }
        // SAFETY: ioElementPlace proved offset + width <= size, so the store stays inside
        // the mapping; storeBytes(toByteOffset:) copes with any alignment.
        let base = unsafe UnsafeMutableRawPointer(page).advanced(by: offset)
        switch width {
        case 1: unsafe base.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
        case 2: unsafe base.storeBytes(of: UInt16(truncatingIfNeeded: value).littleEndian, toByteOffset: 0, as: UInt16.self)
        default: unsafe base.storeBytes(of: value.littleEndian, toByteOffset: 0, as: UInt32.self)
        }
    }

    /// Sets the value an MMIO read returns to the guest (KVM uses the low `width` bytes).
    @inline(__always) package func setMMIOData(_ value: UInt64) { unsafe ckvm_run_set_mmio_data(page, value) }

    /// Completes an MSR exit: the value a read returns, and whether the guest gets #GP.
    @inline(__always) package func completeMSR(value: UInt64, fault: Bool) {
        unsafe ckvm_run_set_msr_data(page, value)
        unsafe ckvm_run_set_msr_error(page, fault ? 1 : 0)
    }
}
