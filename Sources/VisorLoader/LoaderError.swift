/// An error from loading a guest image. Each message says what is wrong with the file or
/// the request, so the user can fix it.
public enum LoaderError: Error, Equatable, CustomStringConvertible {
    case notELF
    case wrongClass(UInt8)
    case wrongEndianness
    case wrongMachine(UInt16)
    case wrongType(UInt16)
    case malformed(String)
    case noLoadableSegments
    case segmentOutsideRAM(address: UInt64, size: UInt64)
    case segmentOverlapsReserved(address: UInt64, size: UInt64, reservedEnd: UInt64)
    case virtualDiffersFromPhysical(virtual: UInt64, physical: UInt64)
    case entryNotLoaded(UInt64)
    case loadAddressInvalid(UInt64, String)
    case imageTooLarge(size: Int, limit: UInt64)
    case memoryTooSmall(needed: UInt64, have: UInt64)
    case memoryTooLarge(end: UInt64, limit: UInt64)
    case commandLineTooLong(length: Int, limit: Int)
    case multibootNoHeader
    case multibootChecksum(offset: Int)
    case multibootUnsupportedFlags(UInt32)
    case multibootAddressFields(String)
    case multibootNotELF
    case segmentsOverlap(first: UInt64, second: UInt64)
    case moduleDoesNotFit(index: Int, size: Int)
    case multibootNoRoom(size: Int)
    case tooManyModules(count: Int, limit: Int)

    public var description: String {
        switch self {
        case .notELF:
            "not an ELF file (no \\x7fELF magic); to run a raw real-mode binary, pass --load-address"
        case .wrongClass(let c):
            "ELF class \(c) is not supported: SwiftVisor loads 64-bit ELF (ELFCLASS64) guests"
        case .wrongEndianness:
            "ELF file is big-endian; x86-64 guests are little-endian"
        case .wrongMachine(let m):
            "ELF machine \(m) is not x86-64 (62)"
        case .wrongType(let t):
            "ELF type \(t) is not an executable (ET_EXEC); link the guest statically at a fixed address"
        case .malformed(let what):
            "malformed ELF file: \(what)"
        case .noLoadableSegments:
            "ELF file has no PT_LOAD segments"
        case .segmentOutsideRAM(let address, let size):
            "segment at 0x\(hex(address)) of \(size) bytes lies outside guest RAM; give the guest more memory (--memory) or link it lower"
        case .segmentOverlapsReserved(let address, let size, let end):
            "segment at 0x\(hex(address)) of \(size) bytes overlaps the VMM's reserved area below 0x\(hex(end)); link the guest at or above 0x\(hex(end))"
        case .virtualDiffersFromPhysical(let v, let p):
            "segment virtual address 0x\(hex(v)) differs from its physical address 0x\(hex(p)); guests run identity-mapped, so link with virtual == physical"
        case .entryNotLoaded(let entry):
            "entry point 0x\(hex(entry)) is not inside an executable PT_LOAD segment"
        case .loadAddressInvalid(let address, let why):
            "load address 0x\(hex(address)) is invalid: \(why)"
        case .imageTooLarge(let size, let limit):
            "image of \(size) bytes does not fit: at most \(limit) bytes are available there"
        case .memoryTooSmall(let needed, let have):
            "guest memory of \(have) bytes is too small: at least \(needed) bytes are needed"
        case .memoryTooLarge(let end, let limit):
            "guest RAM ending at 0x\(hex(end)) exceeds what the boot page tables can map (0x\(hex(limit)))"
        case .commandLineTooLong(let length, let limit):
            "command line of \(length) bytes is longer than the \(limit) bytes allowed"
        case .multibootNoHeader:
            "no multiboot header (magic 0x1BADB002) in the first 8 KiB of the file"
        case .multibootChecksum(let offset):
            "multiboot header at offset 0x\(hex(offset)) has a bad checksum (magic + flags + checksum must be 0 mod 2^32)"
        case .multibootUnsupportedFlags(let bits):
            "multiboot header requires flags 0x\(hex(bits)) that SwiftVisor cannot honour (it honours bits 0 and 1 of 0-15)"
        case .multibootAddressFields(let what):
            "multiboot header's address fields are invalid: \(what)"
        case .multibootNotELF:
            "multiboot image is not ELF and its header has no address fields (flag bit 16)"
        case .segmentsOverlap(let first, let second):
            "segments at 0x\(hex(first)) and 0x\(hex(second)) overlap"
        case .moduleDoesNotFit(let index, let size):
            "module \(index + 1) of \(size) bytes does not fit in free guest RAM below 4 GiB; give the guest more memory (--memory)"
        case .multibootNoRoom(let size):
            "no free guest RAM below 4 GiB for the \(size)-byte multiboot information; give the guest more memory (--memory)"
        case .tooManyModules(let count, let limit):
            "\(count) modules are more than the \(limit) allowed"
        }
    }
}

func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }
