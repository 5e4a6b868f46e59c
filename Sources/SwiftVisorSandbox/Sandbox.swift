import Synchronization
import VisorHost
import VisorKVM
import VisorLoader
import VisorMemory

/// The operations of the port (ABI.md, "Signals").
enum SandboxOperation: UInt32 {
    case ready = 0, ret = 1, hostCall = 2, print = 3, abort = 4
}

/// The call area's header fields (ABI.md, "The call area").
enum CallArea {
    static let magic: UInt32 = 0x4253_5653
    static let version: UInt16 = 1
    static let headerSize: UInt64 = 64
    static let inputLengthOffset: UInt64 = 24
    static let outputLengthOffset: UInt64 = 28
}

/// A micro-VM that runs one guest's functions: created from a sandbox guest ELF (see
/// Guests/sandbox/ABI.md), called by name with typed arguments and results, with host
/// functions the guest can call, a time limit and an output limit per call, and a reset
/// that copies back only the pages a call dirtied.
///
/// ```swift
/// let sandbox = try Sandbox(guest: image)
/// sandbox.register("log") { (line: String) in print(line) }
/// let sum: Int = try sandbox.call("add", 2, 3)
/// ```
///
/// The guest runs at CPL 3 from its first instruction, on one vCPU with no interrupt
/// controller and no devices; every exception ends the call with `SandboxError.guestTrap`.
/// After any error the next call first restores the snapshot last taken or restored (at
/// first, the one taken when the guest signalled READY).
///
/// A sandbox is used by one thread at a time (calls run `KVM_RUN` on the calling thread);
/// it may move between threads, as `SandboxPool` moves them. A call, snapshot, restore or
/// reset while another is in progress (from another thread, or from a host function)
/// throws `SandboxError.busy`.
public final class Sandbox: @unchecked Sendable {
    // @unchecked: the mutable state below is touched only by the thread that holds the
    // sandbox (one at a time, enforced by `inUse`, except `register`), and the watchdog reaches only `timer`, which
    // is Sendable.

    typealias HostFunction = (inout SandboxMessageReader, Int, inout SandboxMessageWriter) throws(SandboxMessageFault) -> Void

    public let configuration: SandboxConfiguration
    /// The configuration's time limit in nanoseconds, or nil for none.
    let timeLimitNanoseconds: UInt64?
    let layout: SandboxLayout
    let vm: VMHandle
    let vcpu: VCPUHandle
    let memory: GuestMemory
    let timer: CallTimer
    let pageCount: UInt64

    let inputAddress: UInt64
    let inputCapacity: Int
    let outputAddress: UInt64
    let outputCapacity: Int

    private var functions: [String: HostFunction] = [:]
    private var writer: SandboxMessageWriter
    private var output: [UInt8]
    private var printed = 0

    /// The snapshot restores go back to (taken after READY, or the last `snapshot()` or
    /// `restore(_:)`), and the pages written since it.
    private var base: SandboxSnapshot!
    /// The snapshot taken after READY, which a pool resets to whatever `snapshot()` and
    /// `restore(_:)` did to `base`.
    private var initial: SandboxSnapshot!
    private var dirtySinceBase: [UInt64]
    /// Every page written since the sandbox was created (a superset of any snapshot's).
    private var everDirty: [UInt64]
    private var logScratch: [UInt64] = []
    /// The end of the call-area bytes the host wrote since the base (the guest's own
    /// writes are in KVM's log; the host's are not).
    private var hostWrittenEnd: UInt64
    /// An error left the guest in an unknown state: restore before the next call.
    private var poisoned = false
    /// A restore failed partway: its copies are in no dirty bitmap, so the next restore
    /// copies every page ever written.
    private var restoreIncomplete = false
    /// The last exit was a port exit the guest has not been resumed from: KVM finishes
    /// the instruction on the next `KVM_RUN` (for an emulated `in`, by writing RAX and RIP),
    /// which must happen before registers are read for a snapshot or written by a restore.
    private var pendingPortExit = false
    /// A call, snapshot or restore is in progress: a host function that calls back into its
    /// own sandbox, or a second thread, gets `.busy` instead of corrupting the call in
    /// progress. Atomic, so that two threads cannot both enter.
    private let inUse = Atomic<Bool>(false)
    /// Numbers the sandboxes of the process, so a snapshot names its owner by a value no
    /// other sandbox ever has (an object's address is reused once it is freed).
    private static let sandboxIDs = AtomicCounter()
    private let id = Sandbox.sandboxIDs.next()

    /// Creates a sandbox from a sandbox guest's ELF bytes and runs it until it signals
    /// READY, then takes the snapshot that calls are reset to.
    public init(guest: [UInt8], configuration: SandboxConfiguration = SandboxConfiguration()) throws(SandboxError) {
        self.configuration = configuration
        let image: ELFImage
        do { image = try ELFImage(parsing: guest) } catch { throw .invalidGuest("\(error)") }
        guard configuration.memorySize > 0, configuration.stackSize > 0, configuration.callAreaSize > 0,
            configuration.outputLimit >= 0
        else { throw .invalidConfiguration("sizes must be positive") }
        timeLimitNanoseconds = try configuration.timeLimitNanoseconds()
        let layout = try SandboxLayout(
            memorySize: UInt64(configuration.memorySize), stackSize: UInt64(configuration.stackSize),
            callAreaSize: UInt64(configuration.callAreaSize), entry: image.entry,
            segments: image.segments.map {
                (address: $0.physicalAddress, size: $0.memorySize, writable: $0.writable, executable: $0.executable)
            })
        guard image.segments.allSatisfy({ $0.physicalAddress == $0.virtualAddress }) else {
            throw .invalidGuest("a segment's physical address differs from its virtual address")
        }
        self.layout = layout
        self.pageCount = layout.memorySize / 4096
        let header = CallArea.headerSize
        let inputCapacity = (layout.callAreaSize - header) / 2
        self.inputAddress = layout.callArea + header
        self.inputCapacity = Int(inputCapacity)
        self.outputAddress = layout.callArea + header + inputCapacity
        self.outputCapacity = Int(layout.callAreaSize - header - inputCapacity)
        self.writer = SandboxMessageWriter(capacity: Int(inputCapacity))
        self.output = [UInt8](repeating: 0, count: Int(layout.callAreaSize - header - inputCapacity))
        let words = Int((pageCount + 63) / 64)
        self.dirtySinceBase = [UInt64](repeating: 0, count: words)
        self.everDirty = [UInt64](repeating: 0, count: words)
        self.hostWrittenEnd = layout.callArea

        do {
            let system = try KVMSystem.shared()
            vm = try system.createVM()
            memory = try GuestMemory(size: layout.memorySize)
            memory.dirtyTracking = true
            try Self.writeMachine(layout, image: image, guest: guest, into: memory)
            for (region, host) in memory.hostMappings {
                try vm.setMemoryRegion(
                    slot: 0, guestPhysical: region.start, size: region.size, hostAddress: host, logDirtyPages: true)
            }
            vcpu = try vm.createVCPU(id: 0)
            try vcpu.setSpecialRegisters(Self.entrySpecialRegisters(layout))
            try vcpu.setRegisters(Self.entryRegisters(layout))
        } catch let error as SandboxError {
            throw error
        } catch {
            throw .hypervisor("creating the sandbox: \(error)")
        }
        // The VMM's own writes so far (image, tables, header): the pages a snapshot must copy
        // besides those KVM logs.
        for (i, word) in (memory.takeDirtyPages().first ?? []).enumerated() where i < everDirty.count {
            everDirty[i] |= word
        }
        memory.dirtyTracking = false
        do { timer = try CallTimer(vcpu: vcpu) } catch { throw .hypervisor("creating the sandbox's time limit: \(error)") }
        if timeLimitNanoseconds != nil, let code = Watchdog.shared.register(timer) {
            throw .hypervisor("the time limit's watchdog thread cannot start (error \(code))")
        }

        // Run the guest's initialization up to READY.
        do {
            try withTimeLimit { () throws(SandboxError) in
                while true {
                    switch try runToSignal() {
                    case .ready: return
                    case .print: try handlePrint()
                    case .hostCall: try handleHostCall()
                    case .abort: throw .guestAbort(try abortMessage())
                    case .ret: throw .badMessage("RETURN before READY")
                    }
                }
            }
            base = try takeSnapshot()
            initial = base
        } catch {
            Watchdog.shared.unregister(timer)
            throw error
        }
    }

    /// Creates a sandbox from the sandbox guest ELF file at `path`.
    public convenience init(guestPath path: String, configuration: SandboxConfiguration = SandboxConfiguration())
        throws(SandboxError)
    {
        let bytes: [UInt8]
        do { bytes = try HostIO.readRegularFile(path, limit: configuration.memorySize, limitName: "sandbox memory") } catch {
            throw .invalidGuest("\(path): \(error)")
        }
        try self.init(guest: bytes, configuration: configuration)
    }

    deinit {
        Watchdog.shared.unregister(timer)
    }

    // MARK: Host functions

    /// Registers host function `name`, which the guest calls with arguments of the
    /// closure's parameter types and which returns the closure's result. A call with the
    /// wrong count or types gets error code 2; an error thrown by `body` reaches the guest
    /// as error code 4 with its description. Replaces a function of the same name.
    public func register<each A: SandboxValue, R: SandboxValue>(
        _ name: String, _ body: @escaping @Sendable (repeat each A) throws -> R
    ) {
        functions[name] = HostInvoker<repeat each A, R>(name: name, body: body).invoke
    }

    /// Registers host function `name` with no result (the guest gets void).
    public func register<each A: SandboxValue>(_ name: String, _ body: @escaping @Sendable (repeat each A) throws -> Void) {
        functions[name] = HostVoidInvoker<repeat each A>(name: name, body: body).invoke
    }

    // MARK: Calls

    /// Calls the guest's function `name` with `arguments` and returns its result as `R`.
    ///
    /// - Throws: `SandboxError`: `.unknownFunction`, `.wrongArguments`, `.guestFailed` as
    ///   the guest answers; `.guestTrap`, `.timeLimit`, `.outputLimit`, `.guestAbort`,
    ///   `.badMessage` when the guest misbehaves. The sandbox restores its snapshot before
    ///   the next call after any of them.
    public func call<R: SandboxValue, each A: SandboxValue>(
        _ name: String, _ arguments: repeat each A, as type: R.Type = R.self
    ) throws(SandboxError) -> R {
        try enter()
        defer { leave() }
        try encodeCall(name, repeat each arguments)
        return try finishCall { (reader) throws(SandboxError) -> R in
            do throws(SandboxMessageFault) {
                let result = try reader.value(R.self)
                guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
                return result
            } catch {
                throw .badMessage("the result of \(name): \(error)")
            }
        }
    }

    /// Calls the guest's function `name` and ignores its result (of any type).
    public func call<each A: SandboxValue>(_ name: String, _ arguments: repeat each A) throws(SandboxError) {
        try enter()
        defer { leave() }
        try encodeCall(name, repeat each arguments)
        try finishCall { (reader) throws(SandboxError) in
            do throws(SandboxMessageFault) {
                try reader.skipValue()
                guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
            } catch {
                throw .badMessage("the result of \(name): \(error)")
            }
        }
    }

    /// Marks the sandbox in use, or throws `.busy` when it already is.
    private func enter() throws(SandboxError) {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { throw .busy }
    }

    private func leave() { inUse.store(false, ordering: .releasing) }

    private func encodeCall<each A: SandboxValue>(_ name: String, _ arguments: repeat each A) throws(SandboxError) {
        if poisoned { try restoreInUse(base) }
        let nameLength = name.utf8.count
        guard nameLength >= 1, nameLength <= 255 else {
            throw .wrongArguments("a function name must have 1 to 255 bytes of UTF-8, not \(nameLength)")
        }
        writer.reset()
        writer.u8(1)
        writer.text16(name)
        writer.u16(UInt16(truncatingIfNeeded: packCount(repeat each arguments)))
        repeat writer.value(each arguments)
    }

    /// Sends the call in `writer`, runs the guest until it returns, and decodes its response.
    private func finishCall<R>(_ decodeResult: (inout SandboxMessageReader) throws(SandboxError) -> R) throws(SandboxError) -> R {
        do throws(SandboxError) {
            guard writer.bytes.count <= inputCapacity else {
                throw .wrongArguments("the call takes \(writer.bytes.count) bytes; the input buffer holds \(inputCapacity)")
            }
            try sendInput()
            printed = 0
            let count = try withTimeLimit { () throws(SandboxError) -> Int in
                while true {
                    switch try runToSignal() {
                    case .ret: return try readOutput()
                    case .hostCall: try handleHostCall()
                    case .print: try handlePrint()
                    case .abort: throw .guestAbort(try abortMessage())
                    case .ready: throw .badMessage("READY during a call")
                    }
                }
            }
            return try decodeResponse(count: count, decodeResult)
        } catch {
            poisoned = true
            throw error
        }
    }

    /// The response in `output[0..<count]`: the result, or the guest's error as a `SandboxError`.
    private func decodeResponse<R>(
        count: Int, _ decodeResult: (inout SandboxMessageReader) throws(SandboxError) -> R
    ) throws(SandboxError) -> R {
        var reader = SandboxMessageReader(output, count: count)
        let status: UInt8
        do throws(SandboxMessageFault) { status = try reader.u8("the response status") } catch {
            throw .badMessage("the response: \(error)")
        }
        if status == 0 { return try decodeResult(&reader) }
        let code: UInt16
        let message: String
        do throws(SandboxMessageFault) {
            guard status == 1 else { throw .badTag(status) }
            code = try reader.u16("the error code")
            let length = Int(try reader.u16("the error message's length"))
            message = try reader.text(try reader.lengthPrefixed(length, "the error message"), "the error message")
            guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
        } catch {
            throw .badMessage("the response: \(error)")
        }
        switch code {
        case 1: throw .unknownFunction(message)
        case 2: throw .wrongArguments(message)
        case 3: throw .badMessage("the guest refused the call: \(message)")
        case 4: throw .guestFailed(message)
        default: throw .badMessage("error code \(code) is not in the convention (\(message))")
        }
    }

    // MARK: Snapshots

    /// Takes a snapshot of the guest's memory and registers, which `restore(_:)` (and the
    /// automatic restore after an error) then goes back to. Costs a copy of every page the
    /// guest ever wrote.
    public func snapshot() throws(SandboxError) -> SandboxSnapshot {
        try enter()
        defer { leave() }
        if poisoned { try restoreInUse(base) }
        let snapshot = try takeSnapshot()
        base = snapshot
        return snapshot
    }

    /// Puts the guest back into `snapshot`'s state (one of this sandbox's): copies back only
    /// the pages written since the last snapshot or restore when `snapshot` is that one,
    /// else every page ever written; then the registers.
    public func restore(_ snapshot: SandboxSnapshot) throws(SandboxError) {
        try enter()
        defer { leave() }
        try restoreInUse(snapshot)
    }

    /// `restore(_:)` for a caller that has entered the sandbox.
    private func restoreInUse(_ snapshot: SandboxSnapshot) throws(SandboxError) {
        guard snapshot.owner == id else {
            throw .invalidConfiguration("the snapshot belongs to another sandbox")
        }
        // Until the restore is complete the guest is in neither state.
        let full = restoreIncomplete || snapshot !== base
        poisoned = true
        restoreIncomplete = true
        do {
            try completePendingExit()
            try collectDirtyPages()
            let pages = full ? everDirty : dirtySinceBase
            try Self.forEachRun(pages) { (first, count) throws(GuestMemoryError) in
                try memory.copy(from: snapshot.memory, at: first * 4096, count: Int(count * 4096))
            }
            try vcpu.setRegisters(snapshot.registers)
            try vcpu.setSpecialRegisters(snapshot.specialRegisters)
            try vcpu.setFPU(snapshot.fpu)
        } catch {
            throw .hypervisor("restoring the snapshot: \(error)")
        }
        for i in dirtySinceBase.indices { dirtySinceBase[i] = 0 }
        hostWrittenEnd = layout.callArea
        vcpu.requestImmediateExit(false)
        base = snapshot
        restoreIncomplete = false
        poisoned = false
    }

    /// Restores the snapshot last taken or restored: what a pool does after each use.
    public func reset() throws(SandboxError) {
        try enter()
        defer { leave() }
        try restoreInUse(base)
    }

    /// Restores the snapshot taken after READY, whatever snapshots were taken or restored
    /// since: what a pool does before handing the sandbox to its next user.
    func resetToInitial() throws(SandboxError) {
        try enter()
        defer { leave() }
        try restoreInUse(initial)
    }

    private func takeSnapshot() throws(SandboxError) -> SandboxSnapshot {
        do {
            try completePendingExit()
            try collectDirtyPages()
            let copy = try GuestMemory(size: layout.memorySize)
            try Self.forEachRun(everDirty) { (first, count) throws(GuestMemoryError) in
                try copy.copy(from: memory, at: first * 4096, count: Int(count * 4096))
            }
            let snapshot = SandboxSnapshot(
                owner: id, memory: copy, registers: try vcpu.registers(),
                specialRegisters: try vcpu.specialRegisters(), fpu: try vcpu.fpu())
            for i in dirtySinceBase.indices { dirtySinceBase[i] = 0 }
            hostWrittenEnd = layout.callArea
            return snapshot
        } catch {
            throw .hypervisor("taking a snapshot: \(error)")
        }
    }

    /// Lets KVM finish a port exit without entering the guest (`KVM_RUN` with the
    /// immediate-exit flag set completes pending I/O, then returns at once).
    private func completePendingExit() throws(KVMError) {
        guard pendingPortExit else { return }
        vcpu.requestImmediateExit(true)
        defer { vcpu.requestImmediateExit(false) }
        _ = try vcpu.run()
        pendingPortExit = false
    }

    /// Adds KVM's log of the guest's writes and the host's call-area writes to the bitmaps.
    private func collectDirtyPages() throws(KVMError) {
        try vm.dirtyLog(slot: 0, pageCount: pageCount, into: &logScratch)
        for i in 0..<min(logScratch.count, dirtySinceBase.count) where logScratch[i] != 0 {
            dirtySinceBase[i] |= logScratch[i]
            everDirty[i] |= logScratch[i]
        }
        var page = layout.callArea / 4096
        while page * 4096 < hostWrittenEnd {
            let bit: UInt64 = 1 << (page % 64)
            dirtySinceBase[Int(page / 64)] |= bit
            everDirty[Int(page / 64)] |= bit
            page += 1
        }
    }

    /// Calls `body(firstPage, pageCount)` for each run of set bits.
    private static func forEachRun(
        _ bitmap: [UInt64], _ body: (UInt64, UInt64) throws(GuestMemoryError) -> Void
    ) throws(GuestMemoryError) {
        var runStart: UInt64? = nil
        var runLength: UInt64 = 0
        for (w, word) in bitmap.enumerated() {
            if word == 0, runStart == nil { continue }
            for bit in 0..<UInt64(64) {
                let page = UInt64(w) * 64 + bit
                if word & (1 << bit) != 0 {
                    if runStart == nil { runStart = page; runLength = 0 }
                    runLength += 1
                } else if let start = runStart {
                    try body(start, runLength)
                    runStart = nil
                }
            }
        }
        if let start = runStart { try body(start, runLength) }
    }

    // MARK: The exit loop

    private func withTimeLimit<R>(_ body: () throws(SandboxError) -> R) throws(SandboxError) -> R {
        guard let limit = timeLimitNanoseconds else { return try body() }
        timer.arm(nanoseconds: limit)
        defer { timer.disarm() }
        return try body()
    }

    /// Runs the vCPU until the guest signals on the port; any other exit ends the call.
    private func runToSignal() throws(SandboxError) -> SandboxOperation {
        while true {
            let exit: VMExit
            do { exit = try vcpu.run() } catch { throw .hypervisor("\(error)") }
            pendingPortExit = false
            switch exit {
            case .io(let access):
                pendingPortExit = true
                guard access.port == SandboxAddress.port, access.isWrite, access.width == 4, access.count == 1 else {
                    throw .badMessage(
                        "the guest used port 0x\(String(access.port, radix: 16)) with \(access.isWrite ? "out" : "in") "
                            + "of \(access.width) bytes; only a 32-bit out to port 0x5B0 signals")
                }
                let value = vcpu.ioElement(0)
                guard let operation = SandboxOperation(rawValue: value) else {
                    throw .badMessage("unknown operation \(value)")
                }
                return operation
            case .interrupted:
                timer.takePendingKick()
                if timer.fired { throw .timeLimit(nanoseconds: timeLimitNanoseconds ?? 0) }
            case .internalError(let suberror, _) where suberror == 1:
                throw .guestTrap(try trapState())
            case .shutdown:
                var trap = try trapState(shutdown: true)
                trap.tripleFault = true
                throw .guestTrap(trap)
            default:
                throw .hypervisor("unexpected exit \(exit.reason?.kernelName ?? "\(exit)")")
            }
        }
    }

    /// The exception the guest took: the vector from RIP (gate v leads to trapBase + 16v),
    /// the frame from the exception stack.
    private func trapState(shutdown: Bool = false) throws(SandboxError) -> GuestTrap {
        do {
            var registers = try vcpu.registers()
            let special = try vcpu.specialRegisters()
            let rip = registers.rip
            if shutdown {
                return GuestTrap(vector: 8, errorCode: nil, rip: rip, cr2: special.cr2, registers: registers)
            }
            guard rip >= layout.trapBase, rip < layout.trapBase + 4096, (rip - layout.trapBase) % 16 == 0 else {
                throw SandboxError.hypervisor(
                    "KVM could not emulate an instruction at RIP 0x\(String(rip, radix: 16)) (CS 0x\(String(special.cs.selector, radix: 16)))"
                )
            }
            let vector = UInt8((rip - layout.trapBase) / 16)
            let top = SandboxAddress.exceptionStackTop
            let frame: UInt64
            var errorCode: UInt64? = nil
            if registers.rsp == top - 48 {
                errorCode = try memory.readUInt64(at: registers.rsp)
                frame = registers.rsp + 8
            } else if registers.rsp == top - 40 {
                frame = registers.rsp
            } else {
                throw SandboxError.hypervisor(
                    "the exception frame is not where the TSS puts it (RSP 0x\(String(registers.rsp, radix: 16)))")
            }
            registers.rip = try memory.readUInt64(at: frame)
            registers.rflags = try memory.readUInt64(at: frame + 16)
            registers.rsp = try memory.readUInt64(at: frame + 24)
            return GuestTrap(vector: vector, errorCode: errorCode, rip: registers.rip, cr2: special.cr2, registers: registers)
        } catch let error as SandboxError {
            throw error
        } catch {
            throw .hypervisor("reading the guest's state after an exception: \(error)")
        }
    }

    // MARK: The call area

    private func sendInput() throws(SandboxError) {
        do {
            try memory.write(writer.bytes, at: inputAddress)
            try memory.write(UInt32(writer.bytes.count), at: layout.callArea + CallArea.inputLengthOffset)
        } catch {
            throw .hypervisor("writing the call area: \(error)")
        }
        hostWrittenEnd = max(hostWrittenEnd, inputAddress + UInt64(writer.bytes.count))
    }

    /// Copies the guest's output message into `output` and returns its length, checked
    /// against the host's own output capacity.
    private func readOutput() throws(SandboxError) -> Int {
        do {
            let length = Int(try memory.readUInt32(at: layout.callArea + CallArea.outputLengthOffset))
            guard length <= outputCapacity else {
                throw SandboxError.badMessage("output length \(length) is beyond the output buffer's \(outputCapacity) bytes")
            }
            try memory.read(into: &output, count: length, at: outputAddress)
            return length
        } catch let error as SandboxError {
            throw error
        } catch {
            throw .hypervisor("reading the call area: \(error)")
        }
    }

    private func handlePrint() throws(SandboxError) {
        let length = try readOutput()
        let (total, overflow) = printed.addingReportingOverflow(length)
        guard !overflow, total <= configuration.outputLimit else { throw .outputLimit(configuration.outputLimit) }
        printed = total
        guard let text = String(validating: output[0..<length], as: UTF8.self) else {
            throw .badMessage("printed text is not valid UTF-8")
        }
        configuration.output?(text)
    }

    private func abortMessage() throws(SandboxError) -> String {
        let length = try readOutput()
        return String(decoding: output[0..<length], as: UTF8.self)
    }

    private func handleHostCall() throws(SandboxError) {
        let length = try readOutput()
        var reader = SandboxMessageReader(output, count: length)
        writer.reset()
        do throws(SandboxMessageFault) {
            let kind = try reader.u8("the host call's kind")
            guard kind == 2 else { throw .badTag(kind) }
            let name = try reader.name("the host function's name")
            let count = Int(try reader.u16("the argument count"))
            if let function = functions[name] {
                try function(&reader, count, &writer)
            } else {
                for _ in 0..<count { try reader.skipValue() }
                guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
                writer.hostError(1, name)
            }
        } catch {
            throw .badMessage("host call: \(error)")
        }
        if writer.bytes.count > inputCapacity {
            writer.reset()
            writer.hostError(3, "the reply takes more than the input buffer's \(inputCapacity) bytes")
        }
        try sendInput()
    }
}

// The host functions' adapters: decode the arguments as the closure's parameter types, call
// it, encode its result. (Structs whose method is stored, rather than closures: the
// compiler handles parameter packs captured by a method reference.)

/// Decodes a host call's `count` arguments as `A...`: nil, with the error reply written,
/// when the count or a type is wrong; throws when the message itself is malformed.
func decodeHostArguments<each A: SandboxValue>(
    _ types: (repeat (each A).Type), name: String, _ reader: inout SandboxMessageReader, _ count: Int,
    _ writer: inout SandboxMessageWriter
) throws(SandboxMessageFault) -> (repeat each A)? {
    let arity = packTypeCount(repeat (each A).self)
    guard count == arity else {
        writer.hostError(2, "\(name) takes \(arity) arguments, not \(count)")
        return nil
    }
    let arguments = (repeat reader.valueOrNil((each A).self))
    if let failure = reader.failure {
        guard case .typeMismatch = failure else { throw failure }
        writer.hostError(2, "\(name): \(failure)")
        return nil
    }
    guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
    return (repeat (each arguments)!)
}

struct HostInvoker<each A: SandboxValue, R: SandboxValue> {
    let name: String
    let body: @Sendable (repeat each A) throws -> R

    func invoke(_ reader: inout SandboxMessageReader, _ count: Int, _ writer: inout SandboxMessageWriter)
        throws(SandboxMessageFault)
    {
        guard
            let arguments = try decodeHostArguments((repeat (each A).self), name: name, &reader, count, &writer)
        else { return }
        do {
            let result = try body(repeat each arguments)
            writer.reset()
            writer.u8(0)
            writer.value(result)
        } catch {
            writer.hostError(4, "\(error)")
        }
    }
}

struct HostVoidInvoker<each A: SandboxValue> {
    let name: String
    let body: @Sendable (repeat each A) throws -> Void

    func invoke(_ reader: inout SandboxMessageReader, _ count: Int, _ writer: inout SandboxMessageWriter)
        throws(SandboxMessageFault)
    {
        guard
            let arguments = try decodeHostArguments((repeat (each A).self), name: name, &reader, count, &writer)
        else { return }
        do {
            try body(repeat each arguments)
            writer.reset()
            writer.u8(0)
            writer.u8(0)
        } catch {
            writer.hostError(4, "\(error)")
        }
    }
}

extension SandboxMessageWriter {
    /// A host reply or response with status 1.
    mutating func hostError(_ code: UInt16, _ message: String) {
        reset()
        u8(1)
        u16(code)
        text16(message, limit: 1024)
    }
}

/// A sandbox's memory and registers at one moment, for `Sandbox.restore(_:)`.
public final class SandboxSnapshot: Sendable {
    /// The number of the sandbox it was taken from.
    let owner: Int
    let memory: GuestMemory
    let registers: Registers
    let specialRegisters: SpecialRegisters
    let fpu: FPUState

    init(
        owner: Int, memory: GuestMemory, registers: Registers, specialRegisters: SpecialRegisters, fpu: FPUState
    ) {
        self.owner = owner
        self.memory = memory
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.fpu = fpu
    }
}

extension Sandbox {
    // MARK: Building the machine

    static func writeMachine(_ layout: SandboxLayout, image: ELFImage, guest: [UInt8], into memory: GuestMemory) throws {
        let tables = SandboxPageTables(layout: layout)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(tables.words.count * 8)
        for word in tables.words { bytes += SandboxDescriptors.le64(word) }
        try memory.write(bytes, at: tables.base)
        try memory.write(SandboxDescriptors.gdt(), at: SandboxAddress.gdt)
        try memory.write(SandboxDescriptors.idt(trapBase: layout.trapBase), at: SandboxAddress.idt)
        try memory.write(SandboxDescriptors.tss(), at: SandboxAddress.tss)
        try image.load(guest, into: memory, reservedEnd: layout.pageTablesEnd)
        // The call area's header.
        let header = CallArea.headerSize
        let inputCapacity = (layout.callAreaSize - header) / 2
        let area = layout.callArea
        try memory.write(CallArea.magic, at: area)
        try memory.write(CallArea.version, at: area + 4)
        try memory.write(UInt16(header), at: area + 6)
        try memory.write(UInt32(header), at: area + 8)
        try memory.write(UInt32(inputCapacity), at: area + 12)
        try memory.write(UInt32(header + inputCapacity), at: area + 16)
        try memory.write(UInt32(layout.callAreaSize - header - inputCapacity), at: area + 20)
    }

    static func entryRegisters(_ layout: SandboxLayout) -> Registers {
        var r = Registers()
        r.rip = layout.entry
        r.rsp = layout.stackTop - 8
        r.rdi = layout.callArea
        r.rsi = layout.callAreaSize
        r.rdx = layout.heap
        r.rcx = layout.heapSize
        r.rflags = 0x2
        return r
    }

    static func entrySpecialRegisters(_ layout: SandboxLayout) -> SpecialRegisters {
        var s = SpecialRegisters()
        s.cr0 = 0x8005_0033  // PG, AM off, WP, NE, ET, MP, PE
        s.cr3 = SandboxAddress.pageTables
        s.cr4 = 0x620  // PAE, OSFXSR, OSXMMEXCPT
        s.efer = 0xD00  // NXE, LMA, LME
        let code = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: SandboxAddress.userCode, type: 11, present: true, dpl: 3, db: false,
            s: true, l: true, g: true)
        let data = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: SandboxAddress.userData, type: 3, present: true, dpl: 3, db: true, s: true,
            l: false, g: true)
        s.cs = code
        s.ds = data
        s.es = data
        s.fs = data
        s.gs = data
        s.ss = data
        s.tr = Segment(
            base: SandboxAddress.tss, limit: SandboxAddress.tssLimit, selector: SandboxAddress.tssSelector, type: 11,
            present: true, dpl: 0, db: false, s: false, l: false, g: false)
        s.ldt = Segment(base: 0, limit: 0, selector: 0, type: 2, present: false, dpl: 0, db: false, s: false, l: false, g: false)
        s.ldt.unusable = true
        s.gdt = DescriptorTable(base: SandboxAddress.gdt, limit: 7 * 8 - 1)
        s.idt = DescriptorTable(base: SandboxAddress.idt, limit: 256 * 16 - 1)
        return s
    }
}

final class AtomicCounter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }
}
