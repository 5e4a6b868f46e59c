// Run-page decoding (`RunPage` in VisorKVM, which `VCPUHandle.run()` uses) over a fake
// kvm_run page that ends at a guard page.
import FuzzDeviceTargets
import VisorKVM

/// Offsets in `struct kvm_run` on x86-64 (linux/kvm.h), written here independently of the
/// C headers so that the target models the kernel ABI rather than the code under test.
private enum KVMRun {
    static let exitReason = 8, ifFlag = 13, union = 32
    // io: direction u8, size u8, port u16, count u32, data_offset u64
    static let ioDirection = 32, ioSize = 33, ioPort = 34, ioCount = 36, ioDataOffset = 40
    // mmio: phys_addr u64, data[8], len u32, is_write u8
    static let mmioAddress = 32, mmioData = 40, mmioLength = 48, mmioIsWrite = 52
    // msr: error u8, pad[7], reason u32, index u32, data u64
    static let msrError = 32, msrIndex = 44, msrData = 48
    // internal: suberror u32, ndata u32, data[16] u64
    static let internalNData = 36, internalData = 40, internalCapacity = 16
}

/// The input: the mapping's page count (1-3) and how many 8-byte words the run page ends
/// short of it (so its last byte sits right before the guard page); an exit reason (mostly
/// from a list of interesting ones, sometimes any 32-bit number); the I/O fields (direction,
/// size, port, count, data offset, biased toward sizes 1/2/4, counts that reach the end of
/// the page and offsets near it) and an MMIO length; then bytes that fill the page,
/// repeated, under those fields.
///
/// Checks: decoding reads nothing outside the page (the guard page would fault) and writes
/// nothing; the decoded exit equals a model of the kernel ABI read from the bytes at the
/// documented offsets (an I/O exit whose data leaves the page, or overlaps struct kvm_run,
/// is `.malformedIO`, an MMIO
/// length above 8 and unknown reasons are `.other`), and its `reason` is
/// `ExitReason(rawValue:)` of the written code; a decoded I/O exit's data range lies inside
/// the page, every element reads back as the little-endian bytes at `data_offset + i * size`,
/// writing every element changes exactly those bytes, and an element past the page reads
/// all ones and writes nothing; MMIO and MSR completions change only their fields.
func fuzzRunPage(_ data: [UInt8]) {
    var input = ByteReader(data)
    let pages = GuardedPages(pages: 1 + Int(input.byte() % 3))
    let shortBy = 8 * Int(input.byte() % 32)
    let size = pages.size - shortBy
    let reasons: [UInt32] = [2, 2, 2, 2, 6, 6, 6, 5, 8, 17, 9, 24, 1, 4, 10, 29, 30, 0, 7, 39, 40, 0xFFFF_FFFF]
    let pick = input.byte()
    let reason = pick < 0xF0 ? reasons[Int(pick) % reasons.count] : input.uint32()
    let direction = input.byte() & 1
    let sizePick = input.byte()
    let ioSize = sizePick < 0xC0 ? [1, 2, 4][Int(sizePick) % 3] : sizePick
    let port = input.uint16()
    let countPick = input.byte()
    let count: UInt32 =
        switch countPick >> 6 {
        case 0: UInt32(countPick & 0x3F)
        case 1: UInt32(size / Int(max(ioSize, 1))) &- UInt32(countPick & 0x3)
        case 2: UInt32(input.uint16())
        default: input.uint32()
        }
    let offsetPick = input.byte()
    let offset: UInt64 =
        switch offsetPick >> 6 {
        case 0: 4096 * UInt64(offsetPick % 3)
        case 1: UInt64(size) &- UInt64(offsetPick & 0x3F)
        case 2: UInt64(input.uint16())
        default: input.uint64()
        }
    let lengthPick = input.byte()
    let mmioLength = lengthPick < 0xE0 ? UInt32(1 + lengthPick % 8) : input.uint32()

    var model = fill(input.rest(), size: size)
    put(&model, KVMRun.exitReason, UInt64(reason), bytes: 4)
    if reason == ExitReason.io.rawValue {
        model[KVMRun.ioDirection] = direction
        model[KVMRun.ioSize] = ioSize
        put(&model, KVMRun.ioPort, UInt64(port), bytes: 2)
        put(&model, KVMRun.ioCount, UInt64(count), bytes: 4)
        put(&model, KVMRun.ioDataOffset, offset, bytes: 8)
    } else if reason == ExitReason.mmio.rawValue {
        put(&model, KVMRun.mmioLength, UInt64(mmioLength), bytes: 4)
    }
    pages.write(model, at: shortBy)

    unsafe pages.withBase(offset: shortBy) { base in
        let runPage: RunPage
        do {
            // SAFETY: base points to `size` bytes of the mapping (shortBy + size = pages.size),
            // 8-byte aligned, alive for this closure, which is the only place runPage is used.
            runPage = try unsafe RunPage(unsafeBase: base, size: size)
        } catch {
            preconditionFailure("run page: \(size) bytes refused: \(error)")
        }
        let exit = runPage.decodeExit()
        check(pages, shortBy, model, "decoding wrote to the page")
        precondition(
            exit.reason == ExitReason(rawValue: reason),
            "run page: \(exit) has reason \(String(describing: exit.reason)), not \(reason)")
        if let known = ExitReason(rawValue: reason) {
            precondition(known.kernelName.hasPrefix("KVM_EXIT_"), "run page: \(known) has no kernel name")
        }
        let expected = modelExit(model, size: size)
        precondition(exit == expected, "run page: decoded \(exit), the ABI says \(expected)")

        switch exit {
        case .io(let access):
            let width = Int(access.width)
            guard let range = runPage.ioDataRange else { preconditionFailure("run page: \(exit) without a data range") }
            precondition(
                range.lowerBound >= 0 && range.upperBound <= size && range.lowerBound == Int(offset)
                    && range.count == width * Int(access.count), "run page: data range \(range) of \(exit)")
            for i in 0..<Int(access.count) {
                let value = runPage.ioElement(i)
                precondition(
                    value == UInt32(get(model, range.lowerBound + i * width, bytes: width)),
                    "run page: element \(i) of \(exit) is \(value)")
            }
            for i in 0..<Int(access.count) {
                let value = UInt32(truncatingIfNeeded: i &* 0x9E37_79B9 ^ Int(port))
                runPage.setIOElement(i, value)
                put(&model, range.lowerBound + i * width, UInt64(value), bytes: width)
            }
            check(pages, shortBy, model, "writing the elements of \(exit)")
            let past = (size - range.lowerBound) / width
            for i in [past, past + 1, -1, Int.max, Int.min] { checkElement(runPage, i, model, size: size) }
            check(pages, shortBy, model, "writing past the elements of \(exit)")
        case .malformedIO:
            for i in [0, 1, Int(count) &- 1, size, Int.max] { checkElement(runPage, i, model, size: size) }
            check(pages, shortBy, model, "writing the elements of \(exit)")
        case .mmio:
            let value = get(model, 0, bytes: 8) ^ UInt64(size)
            runPage.setMMIOData(value)
            put(&model, KVMRun.mmioData, value, bytes: 8)
            check(pages, shortBy, model, "completing \(exit)")
        case .msr:
            let fault = port & 1 != 0
            runPage.completeMSR(value: UInt64(offset), fault: fault)
            put(&model, KVMRun.msrData, offset, bytes: 8)
            model[KVMRun.msrError] = fault ? 1 : 0
            check(pages, shortBy, model, "completing \(exit)")
            precondition(runPage.msrError == model[KVMRun.msrError], "run page: msr.error reads back wrong")
        default:
            break
        }
    }
}

/// The exit the kernel ABI describes in `page`, built from its bytes.
private func modelExit(_ page: [UInt8], size: Int) -> VMExit {
    let reason = UInt32(get(page, KVMRun.exitReason, bytes: 4))
    let u32 = { (offset: Int) in UInt32(get(page, offset, bytes: 4)) }
    let u64 = { (offset: Int) in get(page, offset, bytes: 8) }
    switch reason {
    case 2:
        let width = page[KVMRun.ioSize]
        let count = u32(KVMRun.ioCount)
        let port = UInt16(get(page, KVMRun.ioPort, bytes: 2))
        let offset = u64(KVMRun.ioDataOffset)
        let bytes = UInt64(width) * UInt64(count)  // at most 255 * (2^32 - 1): no overflow
        guard [1, 2, 4].contains(width), count > 0, offset >= UInt64(RunPage.structSize), offset <= UInt64(size),
            bytes <= UInt64(size) - offset
        else {
            return .malformedIO(port: port, width: width, count: count)
        }
        return .io(PortAccess(isWrite: page[KVMRun.ioDirection] == 1, port: port, width: width, count: count))
    case 6:
        let length = u32(KVMRun.mmioLength)
        guard (1...8).contains(length) else { return .other(reason: 6, hardwareReason: UInt64(length)) }
        let isWrite = page[KVMRun.mmioIsWrite] != 0
        return .mmio(
            MMIOAccess(
                isWrite: isWrite, address: u64(KVMRun.mmioAddress), width: UInt8(length),
                value: isWrite ? get(page, KVMRun.mmioData, bytes: Int(length)) : 0))
    case 5: return .halt(interruptsEnabled: page[KVMRun.ifFlag] != 0)
    case 8: return .shutdown
    case 17:
        let n = min(Int(u32(KVMRun.internalNData)), KVMRun.internalCapacity)
        return .internalError(suberror: u32(KVMRun.union), data: (0..<n).map { u64(KVMRun.internalData + 8 * $0) })
    case 9: return .failEntry(hardwareReason: u64(KVMRun.union), cpu: u32(KVMRun.union + 8))
    case 24: return .systemEvent(type: u32(KVMRun.union))
    case 1: return .exception(vector: u32(KVMRun.union), errorCode: u32(KVMRun.union + 4))
    case 4: return .debug
    case 10: return .interrupted
    case 29: return .msr(index: u32(KVMRun.msrIndex), value: nil)
    case 30: return .msr(index: u32(KVMRun.msrIndex), value: u64(KVMRun.msrData))
    default: return .other(reason: reason, hardwareReason: u64(KVMRun.union))
    }
}

/// Checks element `index` as the data channel must see it: the bytes at `data_offset +
/// index * size` when the size is 1, 2 or 4 and they lie inside the page after struct
/// kvm_run; else all ones, and a write of it must change nothing (which the caller's next
/// page check sees).
private func checkElement(_ runPage: RunPage, _ index: Int, _ model: [UInt8], size: Int) {
    let width = Int(model[KVMRun.ioSize])
    let offset = get(model, KVMRun.ioDataOffset, bytes: 8)
    // Short-circuits before anything can overflow: index <= size / width.
    let inside =
        [1, 2, 4].contains(width) && index >= 0 && offset >= UInt64(RunPage.structSize) && offset <= UInt64(size)
        && index <= size / width && Int(offset) + index * width + width <= size
    let expected = inside ? UInt32(get(model, Int(offset) + index * width, bytes: width)) : .max
    let value = runPage.ioElement(index)
    precondition(value == expected, "run page: element \(index) read \(value), expected \(expected)")
    if !inside { runPage.setIOElement(index, 0) }
}

/// Traps unless the run page's bytes equal `model`.
private func check(_ pages: GuardedPages, _ start: Int, _ model: [UInt8], _ what: @autoclosure () -> String) {
    let actual = pages.bytes(at: start, count: model.count)
    guard actual != model else { return }
    let first = zip(actual, model).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1
    preconditionFailure("run page: \(what()) changed byte \(first)")
}

/// `size` bytes: `bytes` repeated, or a fixed pattern when there are none.
private func fill(_ bytes: [UInt8], size: Int) -> [UInt8] {
    guard !bytes.isEmpty else { return (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 ^ 0x5A) } }
    return (0..<size).map { bytes[$0 % bytes.count] }
}

private func put(_ page: inout [UInt8], _ offset: Int, _ value: UInt64, bytes: Int) {
    for i in 0..<bytes { page[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
}

private func get(_ page: [UInt8], _ offset: Int, bytes: Int) -> UInt64 {
    (0..<bytes).reduce(0) { $0 | UInt64(page[offset + $1]) << (8 * UInt64($1)) }
}
