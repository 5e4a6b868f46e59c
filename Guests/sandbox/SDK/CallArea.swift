// The call area of ABI.md and the runtime's two signals: the only file of the guest SDK with
// raw pointers. Everything above it reads and writes the buffers through `CallArea`'s checked
// accessors, by index.
//
// Why the unsafe code here is sound: `sandbox_main` receives the area's address and size from
// the VMM, which maps exactly that range user-readable and -writable for the guest's whole
// life. `CallArea.init` refuses an area that is null, shorter than the header, or wraps around
// the address space, and refuses a header whose buffers do not lie inside the area after the
// header or overlap. Every accessor checks its index against the buffer it touches (a `precondition`, so
// a bug in the SDK is a trap, never a stray access); the message layer above checks every
// length the host wrote against the buffer before it asks for a byte. The guest has one
// thread and no interrupts: nothing runs while the host owns the buffers (between a signal
// and its return), so no access races with the host's writes.

/// One `out` of `operation` to port 0x5B0 (the runtime's `sandbox_signal`): one exit.
@_extern(c, "sandbox_signal")
func sandboxSignal(_ operation: UInt32)

/// The runtime's `sandbox_trap`: `ud2` forever.
@_extern(c, "sandbox_trap")
func runtimeTrap()

/// Ends the call with #UD, which the host reports as a guest trap.
func sandboxTrap() -> Never {
    runtimeTrap()
    // sandbox_trap never returns; if it did, Swift's own trap is a `ud2` too.
    fatalError()
}

/// The signals of ABI.md ("Signals: one port, one exit").
enum Signal: UInt32 {
    case ready = 0
    case `return` = 1
    case hostCall = 2
    case print = 3
    case abort = 4
}

/// Sends `signal` to the host; returns when the host resumes the vCPU.
func signalHost(_ signal: Signal) {
    sandboxSignal(signal.rawValue)
}

/// The call area: its header checked once at entry, its two buffers by index.
@safe struct CallArea {
    static let magic: UInt32 = 0x4253_5653  // "SVSB"
    static let version: UInt16 = 1
    static let headerSize = 64
    static let inputLengthOffset = 24
    static let outputLengthOffset = 28

    private let base: UnsafeMutableRawPointer
    let size: Int
    let inputOffset: Int
    let inputCapacity: Int
    let outputOffset: Int
    let outputCapacity: Int

    /// Why `init(address:size:)` refused an area.
    enum Refusal {
        case null, tooSmall, wraps, magic, version, headerSize, inputOutside, outputOutside, overlap
    }

    /// Checks the area the host passed at entry: `address` and `size` from RDI and RSI.
    static func check(address: UnsafeMutableRawPointer?, size: UInt64) -> Result<CallArea, RefusalError> {
        guard let base = unsafe address else { return .failure(RefusalError(.null)) }
        guard size >= UInt64(headerSize), size <= UInt64(Int.max) else { return .failure(RefusalError(.tooSmall)) }
        let start = UInt(bitPattern: base)
        let (_, wraps) = start.addingReportingOverflow(UInt(size))
        guard !wraps else { return .failure(RefusalError(.wraps)) }
        let count = Int(size)
        // SAFETY: the header's 64 bytes lie inside the area (count >= 64, checked above).
        func u32(_ offset: Int) -> UInt32 {
            UInt32(littleEndian: unsafe base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }
        func u16(_ offset: Int) -> UInt16 {
            UInt16(littleEndian: unsafe base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
        }
        guard u32(0) == magic else { return .failure(RefusalError(.magic)) }
        guard u16(4) == version else { return .failure(RefusalError(.version)) }
        // Version 1's header is 64 bytes; the C SDK refuses any other size too.
        let header = Int(u16(6))
        guard header == headerSize else { return .failure(RefusalError(.headerSize)) }
        guard let input = Self.buffer(offset: u32(8), capacity: u32(12), after: header, in: count) else {
            return .failure(RefusalError(.inputOutside))
        }
        guard let output = Self.buffer(offset: u32(16), capacity: u32(20), after: header, in: count) else {
            return .failure(RefusalError(.outputOutside))
        }
        // The guest writes the output while it still holds decoded input, and the host writes
        // a reply while the guest's host call sits in the output: the two must not share bytes.
        guard input.upperBound <= output.lowerBound || output.upperBound <= input.lowerBound else {
            return .failure(RefusalError(.overlap))
        }
        return .success(
            unsafe CallArea(
                base: base, size: count, inputOffset: input.lowerBound, inputCapacity: input.count,
                outputOffset: output.lowerBound, outputCapacity: output.count))
    }

    /// The byte range `offset ..< offset + capacity` if it lies in `header ..< areaSize`.
    private static func buffer(offset: UInt32, capacity: UInt32, after header: Int, in areaSize: Int) -> Range<Int>? {
        let start = Int(offset)
        let (end, overflow) = start.addingReportingOverflow(Int(capacity))
        guard !overflow, start >= header, end <= areaSize else { return nil }
        return start..<end
    }

    private init(
        base: UnsafeMutableRawPointer, size: Int, inputOffset: Int, inputCapacity: Int, outputOffset: Int,
        outputCapacity: Int
    ) {
        unsafe self.base = base
        self.size = size
        self.inputOffset = inputOffset
        self.inputCapacity = inputCapacity
        self.outputOffset = outputOffset
        self.outputCapacity = outputCapacity
    }

    /// The input length the host wrote for the current message, or nil if it exceeds the input
    /// buffer's capacity.
    func inputLength() -> Int? {
        // SAFETY: the header lies inside the area (checked in `check`).
        let length = UInt32(
            littleEndian: unsafe base.loadUnaligned(fromByteOffset: Self.inputLengthOffset, as: UInt32.self))
        guard length <= UInt32(inputCapacity) else { return nil }
        return Int(length)
    }

    /// Publishes the output message's length.
    func setOutputLength(_ length: Int) {
        precondition(length >= 0 && length <= outputCapacity)
        // SAFETY: the header lies inside the area (checked in `check`).
        unsafe base.storeBytes(
            of: UInt32(length).littleEndian, toByteOffset: Self.outputLengthOffset, as: UInt32.self)
    }

    /// The input byte at `index` (0 ..< input capacity).
    func input(at index: Int) -> UInt8 {
        precondition(index >= 0 && index < inputCapacity)
        // SAFETY: the input buffer lies inside the area, and index is inside the buffer.
        return unsafe base.load(fromByteOffset: inputOffset + index, as: UInt8.self)
    }

    /// `count` input bytes from `index` as an array.
    func inputBytes(at index: Int, count: Int) -> [UInt8] {
        precondition(index >= 0 && count >= 0 && count <= inputCapacity - index)
        // SAFETY: the range lies inside the input buffer (checked above); the buffer pointer
        // does not escape the initializer, which copies the bytes.
        return unsafe [UInt8](UnsafeRawBufferPointer(start: base + inputOffset + index, count: count))
    }

    /// `count` input bytes from `index` decoded as UTF-8, or nil if they are not valid UTF-8.
    func inputString(at index: Int, count: Int) -> String? {
        precondition(index >= 0 && count >= 0 && count <= inputCapacity - index)
        // SAFETY: as in `inputBytes`; memory holding bytes may be viewed as UInt8, and
        // String copies the bytes before the pointer goes out of scope.
        let bytes = unsafe UnsafeBufferPointer(
            start: (base + inputOffset + index).assumingMemoryBound(to: UInt8.self), count: count)
        return unsafe String(validating: bytes, as: UTF8.self)
    }

    /// Stores `byte` at output index `index` (0 ..< output capacity).
    func setOutput(_ byte: UInt8, at index: Int) {
        precondition(index >= 0 && index < outputCapacity)
        // SAFETY: the output buffer lies inside the area, and index is inside the buffer.
        unsafe base.storeBytes(of: byte, toByteOffset: outputOffset + index, as: UInt8.self)
    }

    /// Copies `bytes` to the output from `index`; the caller checked that they fit.
    func setOutput(_ bytes: [UInt8], at index: Int) {
        precondition(index >= 0 && bytes.count <= outputCapacity - index)
        // SAFETY: the destination range lies inside the output buffer (checked above).
        unsafe bytes.withUnsafeBytes { source in
            unsafe (base + outputOffset + index).copyMemory(from: source.baseAddress!, byteCount: source.count)
        }
    }

    /// Copies the UTF-8 bytes `range` of `string` to the output from `index`; the caller
    /// checked that they fit.
    func setOutput(utf8 string: String, _ range: Range<Int>, at index: Int) {
        precondition(index >= 0 && range.count <= outputCapacity - index)
        var string = string
        // SAFETY: `range` is checked against the string's UTF-8 buffer, the destination range
        // lies inside the output buffer (checked above); neither pointer escapes.
        string.withUTF8 { utf8 in
            precondition(range.lowerBound >= 0 && range.upperBound <= utf8.count)
            guard !range.isEmpty else { return }
            unsafe (base + outputOffset + index).copyMemory(
                from: utf8.baseAddress! + range.lowerBound, byteCount: range.count)
        }
    }
}

/// Why the SDK refused the call area (the guest cannot tell the host: it ends with #UD).
struct RefusalError: Error {
    let reason: CallArea.Refusal
    init(_ reason: CallArea.Refusal) { self.reason = reason }
}

/// The call area, once `sandbox_main` has checked it. The guest has one thread and no
/// interrupts, so this global is never accessed concurrently.
nonisolated(unsafe) private var checkedArea: CallArea? = nil

/// The checked call area. Only `sandbox_main` runs before it is set.
var callArea: CallArea {
    // SAFETY: single-threaded, see `checkedArea`.
    guard let area = unsafe checkedArea else { sandboxTrap() }
    return area
}

/// The runtime's entry: checks the call area, runs the guest's registration (`main`, which
/// `@main` on a `SandboxGuest` generates), signals READY and serves calls forever.
@_cdecl("sandbox_main")
func sandboxMain(
    _ area: UnsafeMutableRawPointer?, _ areaSize: UInt64, _ heap: UnsafeMutableRawPointer?, _ heapSize: UInt64
) -> Never {
    switch unsafe CallArea.check(address: area, size: areaSize) {
    case .success(let checked):
        // SAFETY: single-threaded, see `checkedArea`.
        unsafe checkedArea = checked
        // SAFETY: `main` ignores its arguments (it calls the guest type's `main()`).
        _ = guestMain(0, nil)
        serveCalls()
    case .failure:
        // No output buffer to say why in: #UD ends the start as a guest trap.
        sandboxTrap()
    }
}

/// The exported functions, in the order they were registered (a guest exports a few, so a
/// look-up compares names one by one, without hashing). Single-threaded, see `checkedArea`.
nonisolated(unsafe) private var exports: [Export] = []

func appendExport(_ export: Export) {
    // SAFETY: single-threaded, see `checkedArea`.
    unsafe exports.append(export)
}

func findExport(where matches: (Export) -> Bool) -> Export? {
    // SAFETY: single-threaded, see `checkedArea`.
    for export in unsafe exports where matches(export) { return export }
    return nil
}

/// Text that Swift's `print` wrote through `putchar` and that is not sent yet: sent at a
/// newline, when full, and before any other message uses the output buffer. Single-threaded,
/// see `checkedArea`.
nonisolated(unsafe) private var printBuffer: [UInt8] = []
private let printBufferSize = 256

/// `putchar` for Swift's `print`. (An optimized Embedded Swift build prints no message for
/// `fatalError` or a failed check: it traps at once.)
@_cdecl("putchar")
func putchar(_ character: Int32) -> Int32 {
    // SAFETY: single-threaded, see `checkedArea`.
    unsafe printBuffer.append(UInt8(truncatingIfNeeded: character))
    let count = unsafe printBuffer.count
    if character == 10 || count >= printBufferSize { flushPrintBuffer() }
    return character
}

/// Sends the text `putchar` buffered as one or more PRINTs (nothing before the area is checked).
func flushPrintBuffer() {
    // SAFETY: single-threaded, see `checkedArea`.
    guard let area = unsafe checkedArea, unsafe !printBuffer.isEmpty else { return }
    let text = unsafe printBuffer
    unsafe printBuffer.removeAll(keepingCapacity: true)
    var start = 0
    while start < text.count {
        let count = min(text.count - start, area.outputCapacity)
        guard count > 0 else { return }
        area.setOutput(Array(text[start..<(start + count)]), at: 0)
        area.setOutputLength(count)
        signalHost(.print)
        start += count
    }
}

/// The C `main` that `@main` generates: calls the guest type's `main()`, which registers exports.
@_extern(c, "main")
func guestMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32
