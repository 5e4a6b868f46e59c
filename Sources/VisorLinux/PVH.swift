/// The PVH boot ABI's start-of-day block (`struct hvm_start_info`, version 1), which a PVH
/// kernel finds through EBX, with its module list and memory map laid out behind it.
///
/// Layout (Xen's public `arch-x86/hvm/start_info.h`): magic, version, flags, nr_modules
/// (u32 each), modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr (u64 each),
/// memmap_entries, reserved (u32 each): 56 bytes. A module entry is paddr, size,
/// cmdline_paddr, reserved (u64 each); a memory-map entry is addr, size (u64), type,
/// reserved (u32), with e820 types.
package struct PVHStartInfo: Sendable, Equatable {
    package static let magic: UInt32 = 0x336E_C578
    package static let headerSize = 56
    package static let moduleEntrySize = 32
    package static let memoryMapEntrySize = 24

    package var commandLineAddress: UInt64
    package var rsdpAddress: UInt64
    /// The initial RAM disk, if any (module 0).
    package var initrd: (address: UInt64, size: UInt64)?
    package var memoryMap: [E820Entry]

    package init(
        commandLineAddress: UInt64, rsdpAddress: UInt64, initrd: (address: UInt64, size: UInt64)?,
        memoryMap: [E820Entry]
    ) {
        self.commandLineAddress = commandLineAddress
        self.rsdpAddress = rsdpAddress
        self.initrd = initrd
        self.memoryMap = memoryMap
    }

    package static func == (a: PVHStartInfo, b: PVHStartInfo) -> Bool {
        a.commandLineAddress == b.commandLineAddress && a.rsdpAddress == b.rsdpAddress
            && a.initrd?.address == b.initrd?.address && a.initrd?.size == b.initrd?.size && a.memoryMap == b.memoryMap
    }

    /// The bytes to place at `address`: the header, then the module list (64 bytes in, if
    /// there is an initrd), then the memory map (at 128 bytes in).
    package func encode(at address: UInt64) -> [UInt8] {
        let moduleOffset = 64
        let mapOffset = 128
        var out = [UInt8](repeating: 0, count: mapOffset + memoryMap.count * Self.memoryMapEntrySize)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            for i in 0..<(T.bitWidth / 8) { out[offset + i] = UInt8(truncatingIfNeeded: value >> (i * 8)) }
        }
        put(Self.magic, 0)
        put(UInt32(1), 4)  // version 1: has the memory map
        put(UInt32(0), 8)  // flags
        put(UInt32(initrd == nil ? 0 : 1), 12)
        put(initrd == nil ? UInt64(0) : address + UInt64(moduleOffset), 16)
        put(commandLineAddress, 24)
        put(rsdpAddress, 32)
        put(address + UInt64(mapOffset), 40)
        put(UInt32(memoryMap.count), 48)
        if let initrd {
            put(initrd.address, moduleOffset)
            put(initrd.size, moduleOffset + 8)
        }
        for (index, entry) in memoryMap.enumerated() {
            let at = mapOffset + index * Self.memoryMapEntrySize
            put(entry.address, at)
            put(entry.size, at + 8)
            put(entry.kind.rawValue, at + 16)
        }
        return out
    }
}
