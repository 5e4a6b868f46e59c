// Where everything of a sandbox lives in guest-physical (= guest-virtual) memory, and the
// VMM's structures that make the guest run at CPL 3 with no ring-0 code: the page tables,
// the GDT, the TSS with its I/O bitmap, and the IDT whose gates lead to a page with no
// memory behind it. Pure functions over values, tested without KVM.

/// Fixed addresses of the machine (ABI.md, "The machine").
package enum SandboxAddress {
    static let page: UInt64 = 4096
    /// The GDT (null, ring-0 code and data, ring-3 data and code, the TSS).
    package static let gdt: UInt64 = 0x1000
    /// The IDT: 256 16-byte gates.
    package static let idt: UInt64 = 0x2000
    /// The 64-bit TSS, then its I/O bitmap (8 KiB) and the terminating 0xFF byte.
    package static let tss: UInt64 = 0x3000
    /// The supervisor stack the CPU switches to when it delivers an exception (RSP0).
    package static let exceptionStackBottom: UInt64 = 0x6000
    package static let exceptionStackTop: UInt64 = 0x8000
    /// The page tables start here; they end well below `imageFloor` for memory up to 1 GiB.
    package static let pageTables: UInt64 = 0x8000
    /// The lowest address an image segment may use.
    package static let imageFloor: UInt64 = 0x40_0000
    /// The only port CPL 3 may use.
    package static let port: UInt16 = 0x5B0

    package static let tssIOBitmapOffset: UInt64 = 104
    /// The TSS's limit: the 104-byte TSS, the 8 KiB bitmap and its terminating byte.
    package static let tssLimit: UInt32 = 104 + 8192

    /// GDT selectors.
    package static let kernelCode: UInt16 = 0x08
    package static let kernelData: UInt16 = 0x10
    package static let userData: UInt16 = 0x18 | 3
    package static let userCode: UInt16 = 0x20 | 3
    package static let tssSelector: UInt16 = 0x28
}

/// What a page may be used for: the leaf entry's bits.
package struct PagePermissions: Equatable, Sendable {
    package var user: Bool
    package var writable: Bool
    package var executable: Bool

    package init(user: Bool, writable: Bool, executable: Bool) {
        self.user = user
        self.writable = writable
        self.executable = executable
    }

    package static let supervisorData = PagePermissions(user: false, writable: true, executable: false)
    package static let trap = PagePermissions(user: false, writable: false, executable: true)
    package static let userData = PagePermissions(user: true, writable: true, executable: false)
}

/// A range of pages and their permissions.
package struct PageMapping: Equatable, Sendable {
    package var start: UInt64
    package var end: UInt64
    package var permissions: PagePermissions

    package init(start: UInt64, end: UInt64, permissions: PagePermissions) {
        self.start = start
        self.end = end
        self.permissions = permissions
    }
}

/// A sandbox's memory map, from its configuration and its image's segments.
package struct SandboxLayout: Equatable, Sendable {
    package var memorySize: UInt64
    package var entry: UInt64
    package var imageEnd: UInt64
    package var callArea: UInt64
    package var callAreaSize: UInt64
    package var heap: UInt64
    package var heapSize: UInt64
    package var guardPage: UInt64
    package var stackBottom: UInt64
    package var stackTop: UInt64
    /// Gate `v` of the IDT points at `trapBase + 16 * v`: the page at the end of RAM, mapped
    /// supervisor and executable, with no memory slot behind it.
    package var trapBase: UInt64
    /// Where the page tables end (the first byte after them).
    package var pageTablesEnd: UInt64
    /// Every mapped range, in address order.
    package var mappings: [PageMapping]

    static func roundUp(_ value: UInt64, _ to: UInt64) -> UInt64? {
        let (sum, overflow) = value.addingReportingOverflow(to - 1)
        return overflow ? nil : sum & ~(to - 1)
    }

    /// The pages the page tables take for `memorySize` bytes of RAM plus the trap page:
    /// the PML4, one PDPT, a PD per GiB and a PT per 2 MiB.
    package static func pageTablePages(memorySize: UInt64) -> UInt64 {
        let covered = memorySize + SandboxAddress.page
        let pds = (covered + (1 << 30) - 1) >> 30
        let pts = (covered + (1 << 21) - 1) >> 21
        return 2 + pds + pts
    }

    /// Lays out `segments` (address, size, writable, executable) with a call area, a heap,
    /// a guard page and a stack in `memorySize` bytes.
    package init(
        memorySize: UInt64, stackSize: UInt64, callAreaSize: UInt64, entry: UInt64,
        segments: [(address: UInt64, size: UInt64, writable: Bool, executable: Bool)]
    ) throws(SandboxError) {
        let page = SandboxAddress.page
        guard memorySize % page == 0, memorySize >= 8 << 20, memorySize <= 1 << 30 else {
            throw .invalidConfiguration("memory size \(memorySize) must be a multiple of 4096 from 8 MiB to 1 GiB")
        }
        guard stackSize >= page, stackSize % page == 0, stackSize < memorySize else {
            throw .invalidConfiguration(
                "stack size \(stackSize) must be a positive multiple of 4096 smaller than the memory size \(memorySize)")
        }
        guard callAreaSize >= 4096, callAreaSize % page == 0, callAreaSize <= 1 << 30 else {
            throw .invalidConfiguration("call area size \(callAreaSize) must be a multiple of 4096 from 4 KiB to 1 GiB")
        }
        let tablesEnd = SandboxAddress.pageTables + Self.pageTablePages(memorySize: memorySize) * page
        var mappings = [PageMapping(start: SandboxAddress.gdt, end: tablesEnd, permissions: .supervisorData)]
        var imageEnd = SandboxAddress.imageFloor
        var pages: [(UInt64, PagePermissions)] = []
        for s in segments where s.size > 0 {
            guard s.address >= SandboxAddress.imageFloor, s.address <= memorySize, s.size <= memorySize - s.address,
                let end = Self.roundUp(s.address + s.size, page)
            else {
                throw .invalidGuest(
                    "a segment at 0x\(String(s.address, radix: 16)) of \(s.size) bytes lies outside 0x400000..<RAM's end")
            }
            guard !(s.writable && s.executable) else {
                throw .invalidGuest("the segment at 0x\(String(s.address, radix: 16)) asks to be writable and executable")
            }
            let permissions = PagePermissions(user: true, writable: s.writable, executable: s.executable)
            var p = s.address & ~(page - 1)
            while p < end {
                pages.append((p, permissions))
                p += page
            }
            imageEnd = max(imageEnd, end)
        }
        pages.sort { $0.0 < $1.0 }
        for i in pages.indices.dropFirst() where pages[i].0 == pages[i - 1].0 && pages[i].1 != pages[i - 1].1 {
            throw .invalidGuest("two segments with different permissions share the page 0x\(String(pages[i].0, radix: 16))")
        }
        for (p, permissions) in pages {
            if let last = mappings.last, last.end > p {
                continue  // the same page again, with the same permissions (checked above)
            } else if let last = mappings.last, last.end == p, last.permissions == permissions {
                mappings[mappings.count - 1].end = p + page
            } else {
                mappings.append(PageMapping(start: p, end: p + page, permissions: permissions))
            }
        }
        let stackBottom = memorySize - stackSize
        let callArea = imageEnd
        let (heap, overflow) = callArea.addingReportingOverflow(callAreaSize)
        guard !overflow, stackBottom >= page, heap <= stackBottom - page else {
            throw .invalidConfiguration(
                "\(memorySize) bytes of memory cannot hold the image (up to 0x\(String(imageEnd, radix: 16))), "
                    + "a \(callAreaSize)-byte call area, a guard page and a \(stackSize)-byte stack")
        }
        let guardPage = stackBottom - page
        mappings.append(PageMapping(start: callArea, end: guardPage, permissions: .userData))
        mappings.append(PageMapping(start: stackBottom, end: memorySize, permissions: .userData))
        mappings.append(PageMapping(start: memorySize, end: memorySize + page, permissions: .trap))
        self.memorySize = memorySize
        self.entry = entry
        self.imageEnd = imageEnd
        self.callArea = callArea
        self.callAreaSize = callAreaSize
        self.heap = heap
        self.heapSize = guardPage - heap
        self.guardPage = guardPage
        self.stackBottom = stackBottom
        self.stackTop = memorySize
        self.trapBase = memorySize
        self.pageTablesEnd = tablesEnd
        self.mappings = mappings
    }
}

/// The 4-level page tables of a layout, as the words to write at `SandboxAddress.pageTables`.
package struct SandboxPageTables {
    static let present: UInt64 = 1
    static let writable: UInt64 = 1 << 1
    static let user: UInt64 = 1 << 2
    static let accessed: UInt64 = 1 << 5
    static let dirty: UInt64 = 1 << 6
    static let noExecute: UInt64 = 1 << 63
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000

    /// The tables' words: the PML4, the PDPT, the PDs, the PTs, each 512 words.
    package let words: [UInt64]
    package let base: UInt64

    /// Builds the tables. Accessed and dirty bits are set in advance, so the CPU never
    /// writes the tables (they stay out of the dirty log).
    package init(layout: SandboxLayout) {
        let base = SandboxAddress.pageTables
        let page = SandboxAddress.page
        let pageCount = SandboxLayout.pageTablePages(memorySize: layout.memorySize)
        let pdCount = (layout.memorySize + page + (1 << 30) - 1) >> 30
        var words = [UInt64](repeating: 0, count: Int(pageCount) * 512)
        let pdpt = base + page
        let firstPD = base + 2 * page
        let firstPT = firstPD + pdCount * page
        let table = Self.present | Self.writable | Self.user | Self.accessed
        words[0] = pdpt | table
        for pd in 0..<pdCount { words[512 + Int(pd)] = (firstPD + pd * page) | table }
        for mapping in layout.mappings {
            var address = mapping.start
            while address < mapping.end {
                let pt = address >> 21
                let pdIndex = Int(address >> 21)  // the PDs are consecutive: PD p holds 2 MiB chunks 512p...
                words[Int((firstPD - base) / 8) + pdIndex] = (firstPT + pt * page) | table
                let leaf = Int((firstPT - base) / 8) + Int(address >> 12)
                var entry = address | Self.present | Self.accessed | Self.dirty
                if mapping.permissions.user { entry |= Self.user }
                if mapping.permissions.writable { entry |= Self.writable }
                if !mapping.permissions.executable { entry |= Self.noExecute }
                words[leaf] = entry
                address += page
            }
        }
        self.words = words
        self.base = base
    }

    /// The leaf entry for `address` found by walking the tables as the CPU does, or nil
    /// when a level is not present. For tests.
    package func walk(_ address: UInt64) -> (entry: UInt64, user: Bool, writable: Bool, executable: Bool)? {
        var tableAddress = base
        var user = true, writable = true, executable = true
        for level in [39, 30, 21, 12] as [UInt64] {
            let index = Int((tableAddress - base) / 8) + Int((address >> level) & 511)
            guard index >= 0, index < words.count else { return nil }
            let entry = words[index]
            guard entry & Self.present != 0 else { return nil }
            user = user && entry & Self.user != 0
            writable = writable && entry & Self.writable != 0
            executable = executable && entry & Self.noExecute == 0
            if level == 12 { return (entry, user, writable, executable) }
            tableAddress = entry & Self.addressMask
        }
        return nil
    }

    /// The PML4's address, for CR3.
    package var root: UInt64 { base }
}

/// The GDT, the TSS and the IDT of a layout, as bytes.
package enum SandboxDescriptors {
    /// Null, ring-0 code (0x08) and data (0x10), ring-3 data (0x1B) and code (0x23), the TSS
    /// (0x28, two slots).
    package static func gdt() -> [UInt8] {
        var entries: [UInt64] = [
            0,
            0x0020_9A00_0000_0000,  // 64-bit code, DPL 0
            0x0000_9200_0000_0000,  // data, DPL 0
            0x0000_F200_0000_0000,  // data, DPL 3
            0x0020_FA00_0000_0000,  // 64-bit code, DPL 3
        ]
        let tss = SandboxAddress.tss, limit = UInt64(SandboxAddress.tssLimit)
        entries.append(
            (limit & 0xFFFF) | (tss & 0xFF_FFFF) << 16 | 0x89 << 40 | ((limit >> 16) & 0xF) << 48 | ((tss >> 24) & 0xFF) << 56)
        entries.append(tss >> 32)
        return entries.flatMap(le64)
    }

    /// The TSS: RSP0 at the exception stack's top, the I/O bitmap right after the 104
    /// bytes, with only ports 0x5B0-0x5B3 (one 32-bit `out` to 0x5B0) allowed.
    package static func tss() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(SandboxAddress.tssLimit) + 1)
        for (i, b) in le64(SandboxAddress.exceptionStackTop).enumerated() { bytes[4 + i] = b }
        bytes[102] = UInt8(SandboxAddress.tssIOBitmapOffset & 0xFF)
        bytes[103] = UInt8(SandboxAddress.tssIOBitmapOffset >> 8)
        let bitmap = Int(SandboxAddress.tssIOBitmapOffset)
        for i in bitmap..<bytes.count { bytes[i] = 0xFF }
        for port in Int(SandboxAddress.port)..<Int(SandboxAddress.port) + 4 {
            bytes[bitmap + port / 8] &= ~UInt8(1 << (port % 8))
        }
        return bytes
    }

    /// 256 interrupt gates, DPL 0, gate `v` at `trapBase + 16 * v`, ring-0 code selector.
    package static func idt(trapBase: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256 * 16)
        for vector in 0..<UInt64(256) {
            let offset = trapBase + 16 * vector
            let low =
                (offset & 0xFFFF) | UInt64(SandboxAddress.kernelCode) << 16 | 0x8E << 40 | ((offset >> 16) & 0xFFFF) << 48
            bytes += le64(low)
            bytes += le64(offset >> 32)
        }
        return bytes
    }

    static func le64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
}
