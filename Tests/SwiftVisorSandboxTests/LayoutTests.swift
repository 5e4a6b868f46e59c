import Testing

@testable import SwiftVisorSandbox

@Suite("Sandbox layout: memory map, page tables, descriptors")
struct LayoutTests {
    static let segments: [(address: UInt64, size: UInt64, writable: Bool, executable: Bool)] = [
        (0x40_0000, 0x1800, false, true),
        (0x40_2000, 0x100, false, false),
        (0x40_3000, 0x10_2008, true, false),
    ]

    func layout(memory: UInt64 = 8 << 20) throws -> SandboxLayout {
        try SandboxLayout(
            memorySize: memory, stackSize: 256 << 10, callAreaSize: 64 << 10, entry: 0x40_0000, segments: Self.segments)
    }

    @Test("a stack as large as RAM or larger is an invalid configuration, not a crash")
    func stackLargerThanMemory() {
        for stack: UInt64 in [8 << 20, 16 << 20, 1 << 40, UInt64.max & ~4095] {
            #expect(throws: SandboxError.self, "\(stack)") {
                try SandboxLayout(
                    memorySize: 8 << 20, stackSize: stack, callAreaSize: 64 << 10, entry: 0x40_0000, segments: Self.segments)
            }
            do {
                _ = try SandboxLayout(
                    memorySize: 8 << 20, stackSize: stack, callAreaSize: 64 << 10, entry: 0x40_0000, segments: Self.segments)
            } catch {
                guard case .invalidConfiguration(let why) = error else {
                    Issue.record("\(stack): \(error)")
                    continue
                }
                #expect(why.contains("stack size"))
            }
        }
    }

    @Test("the map: image, call area, heap, guard page, stack, trap page")
    func memoryMap() throws {
        let l = try layout()
        #expect(l.imageEnd == 0x50_6000)
        #expect(l.callArea == 0x50_6000)
        #expect(l.heap == 0x51_6000)
        #expect(l.stackTop == 8 << 20)
        #expect(l.stackBottom == (8 << 20) - (256 << 10))
        #expect(l.guardPage == l.stackBottom - 4096)
        #expect(l.heapSize == l.guardPage - l.heap)
        #expect(l.trapBase == 8 << 20)
        #expect(l.pageTablesEnd <= SandboxAddress.imageFloor)
    }

    @Test("page tables: per-segment permissions, NX, user only on guest pages, holes where nothing is")
    func pageTables() throws {
        let l = try layout()
        let tables = SandboxPageTables(layout: l)
        func at(_ address: UInt64) -> (user: Bool, writable: Bool, executable: Bool)? {
            tables.walk(address).map { ($0.user, $0.writable, $0.executable) }
        }
        #expect(at(0) == nil)  // null
        #expect(at(0xFFF) == nil)
        for address: UInt64 in [0x1000, 0x2000, 0x3000, 0x5000, 0x6000, 0x7FFF, 0x8000, l.pageTablesEnd - 1] {
            #expect(at(address)! == (false, true, false), "0x\(String(address, radix: 16))")
        }
        #expect(at(l.pageTablesEnd) == nil)
        #expect(at(0x3F_FFFF) == nil)
        #expect(at(0x40_0000)! == (true, false, true))  // text
        #expect(at(0x40_1FFF)! == (true, false, true))
        #expect(at(0x40_2000)! == (true, false, false))  // rodata
        #expect(at(0x40_3000)! == (true, true, false))  // data and bss
        #expect(at(l.callArea)! == (true, true, false))
        #expect(at(l.heap + 12345)! == (true, true, false))
        #expect(at(l.guardPage) == nil)
        #expect(at(l.guardPage + 4095) == nil)
        #expect(at(l.stackBottom)! == (true, true, false))
        #expect(at(l.stackTop - 1)! == (true, true, false))
        #expect(at(l.trapBase)! == (false, false, true))
        #expect(at(l.trapBase + 4096) == nil)
        #expect(at(1 << 40) == nil)
        // Accessed and dirty are preset; identity map.
        let entry = tables.walk(0x40_3000)!.entry
        #expect(entry & 0x60 == 0x60)
        #expect(entry & 0x000F_FFFF_FFFF_F000 == 0x40_3000)
    }

    @Test("page tables cover 256 MiB and 1 GiB, with the trap page past the end")
    func largeMemory() throws {
        for memory: UInt64 in [256 << 20, 1 << 30] {
            let l = try layout(memory: memory)
            let tables = SandboxPageTables(layout: l)
            #expect(tables.walk(memory - 1)?.user == true)
            #expect(tables.walk(memory)?.executable == true)
            #expect(tables.walk(memory)?.user == false)
            #expect(l.pageTablesEnd <= SandboxAddress.imageFloor)
        }
    }

    @Test("refused: W+X segments, overlapping permissions, too little memory, segments below 4 MiB")
    func refusals() {
        #expect(throws: SandboxError.self) {
            try SandboxLayout(
                memorySize: 8 << 20, stackSize: 4096, callAreaSize: 4096, entry: 0, segments: [(0x40_0000, 10, true, true)])
        }
        #expect(throws: SandboxError.self) {
            try SandboxLayout(
                memorySize: 8 << 20, stackSize: 4096, callAreaSize: 4096, entry: 0,
                segments: [(0x40_0000, 10, false, true), (0x40_0800, 10, true, false)])
        }
        #expect(throws: SandboxError.self) {
            try SandboxLayout(
                memorySize: 8 << 20, stackSize: 4096, callAreaSize: 4096, entry: 0, segments: [(0x10_0000, 10, false, true)])
        }
        #expect(throws: SandboxError.self) {
            try SandboxLayout(
                memorySize: 8 << 20, stackSize: 4 << 20, callAreaSize: 4 << 20, entry: 0, segments: [(0x40_0000, 10, false, true)]
            )
        }
        #expect(throws: SandboxError.self) {
            try SandboxLayout(
                memorySize: 8 << 20, stackSize: 4096, callAreaSize: 4096, entry: 0,
                segments: [(UInt64.max - 10, 100, false, true)])
        }
        #expect(throws: SandboxError.self) {
            try SandboxLayout(memorySize: 4 << 20, stackSize: 4096, callAreaSize: 4096, entry: 0, segments: [])
        }
    }

    @Test("the TSS lets CPL 3 use ports 0x5B0-0x5B3 only; RSP0 is the exception stack; the IDT leads to the trap page")
    func descriptors() {
        let tss = SandboxDescriptors.tss()
        #expect(tss.count == Int(SandboxAddress.tssLimit) + 1)
        let rsp0 = (0..<8).reduce(UInt64(0)) { $0 | UInt64(tss[4 + $1]) << (8 * UInt64($1)) }
        #expect(rsp0 == SandboxAddress.exceptionStackTop)
        let base = Int(tss[102]) | Int(tss[103]) << 8
        func allowed(_ port: Int) -> Bool { tss[base + port / 8] & (1 << (port % 8)) == 0 }
        #expect((0..<65536).filter(allowed) == [0x5B0, 0x5B1, 0x5B2, 0x5B3])
        #expect(tss.last == 0xFF)
        let idt = SandboxDescriptors.idt(trapBase: 0x80_0000)
        #expect(idt.count == 4096)
        for vector in [0, 14, 255] {
            let gate = Array(idt[(16 * vector)..<(16 * vector + 16)])
            let low: UInt64 = UInt64(gate[0]) | UInt64(gate[1]) << 8
            let middle: UInt64 = UInt64(gate[6]) << 16 | UInt64(gate[7]) << 24
            var high: UInt64 = 0
            for i in 0..<4 { high |= UInt64(gate[8 + i]) << UInt64(32 + 8 * i) }
            let offset = low | middle | high
            #expect(offset == 0x80_0000 + 16 * UInt64(vector))
            #expect(gate[5] == 0x8E)  // present, DPL 0, 64-bit interrupt gate
            #expect(UInt16(gate[2]) | UInt16(gate[3]) << 8 == SandboxAddress.kernelCode)
        }
        #expect(SandboxDescriptors.gdt().count == 7 * 8)
    }
}
