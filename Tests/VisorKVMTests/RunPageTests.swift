import Testing
import VisorKVM

/// A fake run page: `size` zeroed bytes, 8-byte aligned, with helpers that write kvm_run
/// fields at their x86-64 offsets (linux/kvm.h).
@safe final class FakeRunPage {
    let size: Int
    private let memory: UnsafeMutableRawPointer

    init(size: Int = 3 * 4096) {
        self.size = size
        // SAFETY: a fresh allocation of `size` bytes, zeroed here and freed in deinit.
        unsafe memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        unsafe memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    deinit {
        // SAFETY: the allocation made in init; RunPage values made by `page()` do not outlive
        // the tests that hold this object.
        unsafe memory.deallocate()
    }

    /// A run page over the whole buffer.
    func page() throws -> RunPage {
        // SAFETY: `size` bytes at `memory`, 8-byte aligned, alive as long as self, which
        // every test keeps while it uses the run page.
        try unsafe RunPage(unsafeBase: memory, size: size)
    }

    subscript(offset: Int) -> UInt8 {
        get {
            precondition(offset >= 0 && offset < size)
            // SAFETY: offset is inside the allocation (checked above).
            return unsafe memory.load(fromByteOffset: offset, as: UInt8.self)
        }
        set {
            precondition(offset >= 0 && offset < size)
            // SAFETY: offset is inside the allocation (checked above).
            unsafe memory.storeBytes(of: newValue, toByteOffset: offset, as: UInt8.self)
        }
    }

    func put(_ offset: Int, _ value: UInt64, bytes: Int) {
        for i in 0..<bytes { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    func get(_ offset: Int, bytes: Int) -> UInt64 {
        (0..<bytes).reduce(0) { $0 | UInt64(self[offset + $1]) << (8 * UInt64($1)) }
    }

    /// Writes an I/O exit's fields.
    func io(out: Bool, size: UInt8, port: UInt16, count: UInt32, offset: UInt64) {
        put(8, 2, bytes: 4)
        self[32] = out ? 1 : 0
        self[33] = size
        put(34, UInt64(port), bytes: 2)
        put(36, UInt64(count), bytes: 4)
        put(40, offset, bytes: 8)
    }
}

@Suite("Run page decoding")
struct RunPageTests {
    @Test("a run page smaller than struct kvm_run is refused")
    func tooSmall() {
        let fake = FakeRunPage(size: 64)
        #expect(throws: KVMError.self) { try fake.page() }
        #expect(RunPage.structSize > 32 && RunPage.structSize <= 4096)
    }

    @Test("an OUTSB exit decodes, and its elements are the bytes at data_offset")
    func ioOut() throws {
        let fake = FakeRunPage()
        fake.io(out: true, size: 1, port: 0x3F8, count: 3, offset: 4096)
        fake.put(4096, 0x43_4241, bytes: 3)
        let page = try fake.page()
        #expect(page.decodeExit() == .io(PortAccess(isWrite: true, port: 0x3F8, width: 1, count: 3)))
        #expect(page.ioDataRange == 4096..<4099)
        #expect((0..<3).map { page.ioElement($0) } == [0x41, 0x42, 0x43])
    }

    @Test("an INSW to the last byte of the page writes exactly its elements, little-endian")
    func ioInToEnd() throws {
        let fake = FakeRunPage(size: 2 * 4096)
        fake.io(out: false, size: 2, port: 0x1F0, count: 2048, offset: 4096)
        let page = try fake.page()
        #expect(page.decodeExit() == .io(PortAccess(isWrite: false, port: 0x1F0, width: 2, count: 2048)))
        page.setIOElement(0, 0xAABB_1234)
        page.setIOElement(2047, 0x5678)
        #expect(fake.get(4096, bytes: 2) == 0x1234)
        #expect(fake.get(8190, bytes: 2) == 0x5678)
        #expect(page.ioElement(2047) == 0x5678)
        #expect(page.ioElement(2048) == .max, "past the page: all ones")
        page.setIOElement(2048, 0)  // past the page: ignored, no out-of-bounds store
        #expect(page.ioElement(-1) == .max)
    }

    @Test(
        "I/O data areas that leave the page, overlap kvm_run, or have a bad size are malformed",
        arguments: [
            (UInt8(1), UInt32(1), UInt64(3 * 4096)),  // starts at the end
            (4, 1025, 8192),  // one element too many
            (4, 0x4000_0001, 0xFFFF_FFFF_FFFF_F000),  // offset + bytes overflows
            (1, 1, 0),  // inside struct kvm_run
            (3, 1, 4096),  // size 3
            (2, 0, 4096),  // no elements
        ])
    func malformedIO(size: UInt8, count: UInt32, offset: UInt64) throws {
        let fake = FakeRunPage()
        fake.io(out: true, size: size, port: 0x80, count: count, offset: offset)
        let page = try fake.page()
        #expect(page.decodeExit() == .malformedIO(port: 0x80, width: size, count: count))
        #expect(page.ioDataRange == nil)
    }

    @Test("MMIO: the value is masked to the width; a length above 8 is flagged; completion sets the data")
    func mmio() throws {
        let fake = FakeRunPage()
        fake.put(8, 6, bytes: 4)
        fake.put(32, 0xFEE0_00B0, bytes: 8)
        fake.put(40, 0x1122_3344_5566_7788, bytes: 8)
        fake.put(48, 2, bytes: 4)
        fake[52] = 1
        let page = try fake.page()
        #expect(page.decodeExit() == .mmio(MMIOAccess(isWrite: true, address: 0xFEE0_00B0, width: 2, value: 0x7788)))
        fake[52] = 0
        #expect(page.decodeExit() == .mmio(MMIOAccess(isWrite: false, address: 0xFEE0_00B0, width: 2)))
        page.setMMIOData(0xCAFE)
        #expect(fake.get(40, bytes: 8) == 0xCAFE)
        fake.put(48, 16, bytes: 4)
        #expect(page.decodeExit() == .other(reason: 6, hardwareReason: 16))
    }

    @Test("MSR exits decode and complete; unknown reasons are .other with the hardware reason")
    func msrAndOthers() throws {
        let fake = FakeRunPage()
        let page = try fake.page()
        fake.put(8, 30, bytes: 4)
        fake.put(44, 0x8B, bytes: 4)
        fake.put(48, 0xFFFF_0000, bytes: 8)
        #expect(page.decodeExit() == .msr(index: 0x8B, value: 0xFFFF_0000))
        fake.put(8, 29, bytes: 4)
        #expect(page.decodeExit() == .msr(index: 0x8B, value: nil))
        page.completeMSR(value: 7, fault: true)
        #expect(fake.get(48, bytes: 8) == 7 && page.msrError == 1)
        fake.put(8, 0x1234, bytes: 4)
        fake.put(32, 0xDEAD, bytes: 8)
        #expect(page.decodeExit() == .other(reason: 0x1234, hardwareReason: 0xDEAD))
        #expect(page.decodeExit().reason == nil)
        fake.put(8, 5, bytes: 4)
        fake[13] = 1
        #expect(page.decodeExit() == .halt(interruptsEnabled: true))
        let fresh = FakeRunPage()
        fresh.put(8, 17, bytes: 4)
        fresh.put(32, 1, bytes: 4)
        fresh.put(36, 1000, bytes: 4)
        fresh.put(40, 9, bytes: 8)
        let internalError = try fresh.page().decodeExit()
        #expect(internalError == .internalError(suberror: 1, data: [9] + Array(repeating: 0, count: 15)), "ndata capped")
    }

    @Test("the immediate-exit flag reads back")
    func immediateExit() throws {
        let fake = FakeRunPage()
        let page = try fake.page()
        page.requestImmediateExit(true)
        #expect(page.immediateExitRequested && fake[1] == 1)
        page.requestImmediateExit(false)
        #expect(!page.immediateExitRequested)
    }
}
