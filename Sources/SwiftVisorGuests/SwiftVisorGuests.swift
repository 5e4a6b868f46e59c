// SwiftVisorGuests: the guest programs in Guests/, embedded as byte arrays.
//
// The images themselves are in GuestImages.swift, which the GuestBuilder plugin generates on
// every `swift build` by running Guests/build.sh (the Swift toolchain's clang and ld.lld
// build each guest from source). This file only documents the module and adds helpers that
// do not depend on which guests exist.

/// The guest programs that SwiftVisor's command-line tool, benchmarks and integration tests
/// run, built from the sources in `Guests/` by `swift build`.
///
/// `GuestImages.hello` is the default guest. Each image is either a 64-bit ELF executable
/// (linked at guest-physical 0x100000, one `PT_LOAD` segment with `p_paddr == p_vaddr`,
/// entered in long mode at CPL0 with RDI pointing at the boot-info block) or a 16-bit
/// real-mode flat binary (entered at `CS:IP = (load >> 4):0`). `GuestImages.format(of:)`
/// tells which; `Guests/README.md` describes what each guest prints and how it exits.
extension GuestImages {
    /// How an image is to be loaded.
    public enum Format: Sendable, Equatable {
        /// A 64-bit ELF executable: load its `PT_LOAD` segments, enter at `e_entry` in long mode.
        case elf64
        /// A multiboot (version 1) image, 32-bit ELF here: load it with the multiboot loader.
        case multiboot
        /// A 16-bit real-mode flat binary: copy it to a 16-byte aligned address and enter it
        /// there at offset 0 with all segment registers equal to `address >> 4`.
        case realModeFlat
    }

    /// The format of `image`: multiboot if a multiboot magic (0x1BADB002) lies 4-byte aligned
    /// in its first 8 KiB, else ELF if it starts with the ELF magic (0x7F 'E' 'L' 'F'), else
    /// a real-mode flat binary (which has no header to check).
    public static func format(of image: [UInt8]) -> Format {
        let end = min(image.count, 8192)
        if end >= 12 {
            for at in stride(from: 0, through: end - 12, by: 4)
            where image[at] == 0x02 && image[at + 1] == 0xB0 && image[at + 2] == 0xAD && image[at + 3] == 0x1B {
                return .multiboot
            }
        }
        return image.starts(with: [0x7F, 0x45, 0x4C, 0x46]) ? .elf64 : .realModeFlat
    }

    /// The name of the guest that runs when none is chosen.
    public static let defaultName = "hello"
}
