#!/bin/sh
# Builds every guest in Guests/ and writes OUTDIR/GuestImages.swift, which embeds them as byte
# arrays (written as hex text, decoded on first use: see decodeHex in the output).
#
# Usage: Guests/build.sh OUTDIR [CLANG] [LD_LLD] [SWIFTC]
#
# CLANG, LD_LLD and SWIFTC default to the clang, ld.lld and swiftc next to the swiftc on PATH
# (the Swift toolchain's own), then to whatever PATH finds. Nothing else is used: no
# system assembler, no objcopy. The GuestBuilder plugin runs this script on every
# `swift build` whose inputs changed; see Guests/README.md.
#
# What is a guest, by file name (NAME becomes the image's name):
#   NAME.c        64-bit ELF guest in C, linked with common/crt0.S   -> OUTDIR/NAME.elf
#   NAME.S        64-bit ELF guest in assembly, defines _start        -> OUTDIR/NAME.elf
#   NAME.16.S     16-bit real-mode flat binary, loaded anywhere       -> OUTDIR/NAME.bin
#   NAME.mb.c     32-bit multiboot guest in C, linked with multiboot/entry.S (the header)
#                 and multiboot/multiboot.ld                           -> OUTDIR/NAME.mb
#                 A line "// multiboot-load: elf ADDRESS" or "// multiboot-load: flat ADDRESS"
#                 in the source says how: an ELF32 file linked at ADDRESS, or a flat image
#                 at ADDRESS that the loader places by the header's address fields.
#   sandbox/NAME.sandbox.c  64-bit sandbox guest in C (Guests/sandbox/ABI.md): CPL 3 code
#                 linked with the sandbox runtime (sandbox/runtime/) and the C SDK
#                 (sandbox/c/sandbox.c) by sandbox/runtime/sandbox.ld at 0x400000, one
#                 page-aligned PT_LOAD per permission                 -> OUTDIR/NAME.elf
#   sandbox/NAME.sandbox.swift  the same in Embedded Swift: compiled with the Swift SDK
#                 (sandbox/SDK/*.swift) by SWIFTC, linked with the same runtime by
#                 sandbox/build-swift-guest.sh (several at once)       -> OUTDIR/NAME.elf
# ELF guests are also linked with every common/*.S except crt0.S (COM1 output, boot-info
# parsing, the ring-3 switch); --gc-sections drops whatever a guest does not use.
# The first line of a guest's source is a comment describing it: it becomes the doc
# comment of its property in GuestImages.swift.
#
# Environment (for targets that embed only some guests, such as SwiftVisorProbes):
#   GUESTS_ONLY   space-separated guest names to build; all of them when unset
#   GUESTS_ENUM   the name of the generated enum (default GuestImages)
set -eu
LC_ALL=C
export LC_ALL

usage() {
    echo "usage: $0 OUTDIR [CLANG] [LD_LLD] [SWIFTC]" >&2
    exit 64
}
[ $# -ge 1 ] && [ $# -le 4 ] || usage
[ -n "$1" ] || usage

here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

# The toolchain: arguments, else the Swift toolchain's directory, else PATH.
toolchain_bin=
if swiftc_path=$(command -v swiftc 2>/dev/null); then
    toolchain_bin=$(dirname "$swiftc_path")
fi
find_tool() {
    if [ -n "$toolchain_bin" ] && [ -x "$toolchain_bin/$1" ]; then
        echo "$toolchain_bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        echo "$0: cannot find $1; pass it as an argument (usage: $0 OUTDIR [CLANG] [LD_LLD] [SWIFTC])" >&2
        exit 69
    fi
}
clang=${2:-}
lld=${3:-}
[ -n "$clang" ] || clang=$(find_tool clang)
[ -n "$lld" ] || lld=$(find_tool ld.lld)
# swiftc only for Embedded Swift sandbox guests: looked up when the first one is built.
swiftc=${4:-}

target="-target x86_64-unknown-none-elf"
# Freestanding, no PIC, no red zone, integer registers only: CPL0 guest code is interpreted
# by the host kernel on the project's machines and cannot use SSE/x87 state. -nostdlibinc
# keeps the compiler's own stdint.h/stddef.h and keeps host headers out.
cflags="$target -std=c11 -ffreestanding -fno-builtin -nostdlibinc -fno-pic -fno-stack-protector
    -mno-red-zone -mno-sse -mno-mmx -mno-80387 -mgeneral-regs-only -O2
    -fno-asynchronous-unwind-tables -fno-unwind-tables -ffunction-sections -fdata-sections
    -Wall -Wextra"
asflags="$target"
# The multiboot guests: the same, for 32-bit protected mode.
target32="-target i386-unknown-none-elf"
cflags32=$(echo "$cflags" | sed "s/$target/$target32/; s/-mno-red-zone//")
asflags32="$target32"
# One RWX PT_LOAD at 0x100000 (guest.ld); -N packs it right after the headers in the file,
# -s drops symbols, so an image is a few hundred bytes.
ldflags="-static -nostdlib -N -s --build-id=none -z max-page-size=4096 -z noexecstack --gc-sections"

# Sandbox guests run at CPL 3 only, where SSE and x87 run natively, so they may use them;
# the VMM enables OSFXSR. Each segment gets its own pages (no -N) so that the VMM can map
# text R+X, read-only data R and data R+W.
sandbox_cflags=$(echo "$cflags" | sed "s/-mno-sse//; s/-mno-mmx//; s/-mno-80387//; s/-mgeneral-regs-only//")
sandbox_ldflags="-static -nostdlib -s --build-id=none -z max-page-size=4096 -z noexecstack --gc-sections"

obj="$out/obj"
rm -rf "$obj"
mkdir -p "$obj"

# The sandbox runtime (entry point, memory functions, heap) that every sandbox guest links
# with, whatever its SDK, and the C SDK that C sandbox guests add to it.
sandbox_runtime_objs=
sandbox_c_objs=
build_sandbox_runtime() {
    [ -z "$sandbox_runtime_objs" ] || return 0
    "$clang" $asflags -c "$here/sandbox/runtime/start.S" -o "$obj/sandbox_start.o"
    # shellcheck disable=SC2086
    "$clang" $sandbox_cflags -c "$here/sandbox/runtime/libc.c" -o "$obj/sandbox_libc.o"
    # shellcheck disable=SC2086
    "$clang" $sandbox_cflags -c "$here/sandbox/c/sandbox.c" -o "$obj/sandbox_c.o"
    sandbox_runtime_objs="$obj/sandbox_start.o $obj/sandbox_libc.o"
    sandbox_c_objs="$obj/sandbox_c.o"
}

# The objects every ELF guest links with.
common_objs=
crt0_obj=
for src in "$here"/common/*.S; do
    [ -e "$src" ] || continue
    base=$(basename "$src" .S)
    "$clang" $asflags -I "$here/common" -c "$src" -o "$obj/common_$base.o"
    if [ "$base" = crt0 ]; then
        crt0_obj="$obj/common_$base.o"
    else
        common_objs="$common_objs $obj/common_$base.o"
    fi
done

link_elf() { # NAME OBJECT...
    name=$1
    shift
    # $common_objs is a space-separated list of paths inside $out.
    # shellcheck disable=SC2086
    "$lld" $ldflags -T "$here/guest.ld" -o "$out/$name.elf" "$@" $common_objs
}

# The guests, as "NAME KIND SOURCE" lines, sorted by name.
list="$obj/guests.txt"
: >"$list"
for src in "$here"/*.c "$here"/*.S "$here"/sandbox/*.sandbox.c "$here"/sandbox/*.sandbox.swift; do
    [ -e "$src" ] || continue
    file=$(basename "$src")
    case "$file" in
        *.sandbox.c) echo "${file%.sandbox.c} sandbox_c $src" >>"$list" ;;
        *.sandbox.swift) echo "${file%.sandbox.swift} sandbox_swift $src" >>"$list" ;;
        *.16.S) echo "${file%.16.S} real $src" >>"$list" ;;
        *.mb.c) echo "${file%.mb.c} mb $src" >>"$list" ;;
        *.S) echo "${file%.S} asm $src" >>"$list" ;;
        *.c) echo "${file%.c} c $src" >>"$list" ;;
    esac
done
sort -o "$list" "$list"
if [ -n "${GUESTS_ONLY:-}" ]; then
    awk -v only=" $GUESTS_ONLY " 'index(only, " " $1 " ") > 0' "$list" >"$list.only"
    mv "$list.only" "$list"
    for wanted in $GUESTS_ONLY; do
        grep -q "^$wanted " "$list" || { echo "$0: GUESTS_ONLY names $wanted, which has no source" >&2; exit 65; }
    done
fi
enum_name=${GUESTS_ENUM:-GuestImages}
dups=$(awk '{ print $1 }' "$list" | uniq -d)
if [ -n "$dups" ]; then
    echo "$0: more than one source for guest(s): $dups" >&2
    exit 65
fi

swift_jobs=
while read -r name kind src; do
    case "$name" in
        [a-z]*) ;;
        *) echo "$0: guest name '$name' must start with a lower-case letter" >&2; exit 65 ;;
    esac
    case "$name" in
        *[!a-z0-9_]*) echo "$0: guest name '$name' may use only a-z, 0-9 and _" >&2; exit 65 ;;
    esac
    case "$kind" in
        c)
            # shellcheck disable=SC2086
            "$clang" $cflags -I "$here/common" -c "$src" -o "$obj/$name.o"
            [ -n "$crt0_obj" ] || { echo "$0: common/crt0.S is missing" >&2; exit 66; }
            link_elf "$name" "$crt0_obj" "$obj/$name.o"
            ;;
        sandbox_c)
            build_sandbox_runtime
            # shellcheck disable=SC2086
            "$clang" $sandbox_cflags -I "$here/sandbox/include" -c "$src" -o "$obj/$name.o"
            # shellcheck disable=SC2086
            "$lld" $sandbox_ldflags -T "$here/sandbox/runtime/sandbox.ld" -o "$out/$name.elf" \
                $sandbox_runtime_objs $sandbox_c_objs "$obj/$name.o"
            ;;
        sandbox_swift)
            # swiftc takes seconds where clang takes milliseconds: these build in the
            # background, all at once, and are waited for after the loop.
            build_sandbox_runtime
            [ -n "$swiftc" ] || swiftc=$(find_tool swiftc)
            SANDBOX_RUNTIME_OBJS=$sandbox_runtime_objs /bin/sh "$here/sandbox/build-swift-guest.sh" \
                "$swiftc" "$clang" "$lld" "$obj/swift_$name" "$out/$name.elf" "$src" </dev/null &
            swift_jobs="$swift_jobs $!"
            ;;
        asm)
            # shellcheck disable=SC2086
            "$clang" $asflags -I "$here/common" -c "$src" -o "$obj/$name.o"
            link_elf "$name" "$obj/$name.o"
            ;;
        real)
            # shellcheck disable=SC2086
            "$clang" $asflags -c "$src" -o "$obj/$name.o"
            "$lld" --oformat=binary -Ttext=0 --image-base=0 --build-id=none -o "$out/$name.bin" "$obj/$name.o"
            ;;
        mb)
            spec=$(sed -n 's,^// multiboot-load: \(elf\|flat\) \(0x[0-9a-fA-F]*\)$,\1 \2,p' "$src")
            layout=${spec%% *}
            address=${spec#* }
            case "$layout" in
                elf) defines= ; format= ;;
                flat) defines=-DMB_FLAT ; format=--oformat=binary ;;
                *) echo "$0: $src has no '// multiboot-load: elf|flat ADDRESS' line" >&2; exit 65 ;;
            esac
            # shellcheck disable=SC2086
            "$clang" $cflags32 -I "$here/multiboot" -c "$src" -o "$obj/$name.o"
            # shellcheck disable=SC2086
            "$clang" $asflags32 $defines -c "$here/multiboot/entry.S" -o "$obj/${name}_entry.o"
            sed "s/^\( *\. = \)LOAD_ADDRESS;/\1$address;/" "$here/multiboot/multiboot.ld" >"$obj/$name.ld"
            # shellcheck disable=SC2086
            "$lld" $ldflags $format -T "$obj/$name.ld" -o "$out/$name.mb" "$obj/${name}_entry.o" "$obj/$name.o"
            ;;
    esac
done <"$list"
failed=0
for job in $swift_jobs; do
    wait "$job" || failed=1
done
[ "$failed" -eq 0 ] || { echo "$0: an Embedded Swift sandbox guest failed to build (see above)" >&2; exit 1; }

# NAME -> the Swift property name: snake_case to lowerCamelCase.
swift_name() {
    echo "$1" | awk -F_ '{ s = $1; for (i = 2; i <= NF; i++) s = s toupper(substr($i, 1, 1)) substr($i, 2); print s }'
}
# The first line of SOURCE without its comment markers.
describe() {
    sed -n '1{
        s,^[[:space:]]*//[[:space:]]*,,
        s,^[[:space:]]*/\*[[:space:]]*,,
        s,[[:space:]]*\*/[[:space:]]*$,,
        s,^[[:space:]]*[#;][[:space:]]*,,
        p
    }' "$1"
}
# A string literal's contents: backslashes and quotes escaped.
swift_escape() {
    printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'
}

swift="$out/GuestImages.swift.tmp"
{
    echo "// Generated by Guests/build.sh from the sources in Guests/. Do not edit."
    echo
    echo "/// The guest programs in Guests/, built from source by \`swift build\`."
    echo "///"
    echo "/// ELF images (magic 0x7F 'E' 'L' 'F') are 64-bit guests linked at 0x100000 with"
    echo "/// p_paddr == p_vaddr, unless they carry a multiboot header (32-bit multiboot guests,"
    echo "/// see \`GuestImages.format(of:)\`); the others are 16-bit real-mode flat binaries."
    echo "public enum $enum_name {"
    echo "    /// Decodes an image embedded as hex digits (newlines between them are ignored). A string"
    echo "    /// literal compiles many times faster than an array literal of the same bytes, which"
    echo "    /// matters for the sandbox guests' images of 100 KB; the text is decoded once, on first use."
    echo "    private static func decodeHex(_ text: String) -> [UInt8] {"
    echo "        var bytes: [UInt8] = []"
    echo "        bytes.reserveCapacity(text.utf8.count / 2)"
    echo "        var high: UInt8? = nil"
    echo "        for character in text.utf8 {"
    echo "            let digit: UInt8"
    echo "            switch character {"
    echo "            case UInt8(ascii: \"0\")...UInt8(ascii: \"9\"): digit = character - UInt8(ascii: \"0\")"
    echo "            case UInt8(ascii: \"a\")...UInt8(ascii: \"f\"): digit = character - UInt8(ascii: \"a\") + 10"
    echo "            case 0x0A: continue  // a newline between lines of digits"
    echo "            default: preconditionFailure(\"$enum_name: an embedded image holds a byte that is not a hex digit\")"
    echo "            }"
    echo "            if let first = high {"
    echo "                bytes.append(first << 4 | digit)"
    echo "                high = nil"
    echo "            } else {"
    echo "                high = digit"
    echo "            }"
    echo "        }"
    echo "        precondition(high == nil, \"$enum_name: an embedded image has an odd number of hex digits\")"
    echo "        return bytes"
    echo "    }"
    echo
    while read -r name kind src; do
        case "$kind" in
            real) image="$out/$name.bin"; what="16-bit real-mode flat binary" ;;
            mb) image="$out/$name.mb"; what="32-bit multiboot image" ;;
            sandbox_c) image="$out/$name.elf"; what="64-bit sandbox ELF (Guests/sandbox/ABI.md)" ;;
            sandbox_swift) image="$out/$name.elf"; what="64-bit sandbox ELF in Embedded Swift (Guests/sandbox/ABI.md)" ;;
            *) image="$out/$name.elf"; what="64-bit ELF" ;;
        esac
        size=$(wc -c <"$image" | tr -d ' ')
        echo "    /// $(describe "$src")"
        echo "    ///"
        echo "    /// \`$name\`: $what, $size bytes, from \`Guests/${src#"$here"/}\`."
        echo "    public static let $(swift_name "$name"): [UInt8] = decodeHex("
        echo "        \"\"\""
        od -An -v -tx1 "$image" | tr -d ' \n' | fold -w 128 | sed 's/^/        /'
        echo
        echo "        \"\"\")"
        echo
    done <"$list"
    echo "    /// The guests' names, as their source files spell them (\"exit_status\"), sorted."
    printf '    public static let names: [String] = ['
    sep=
    while read -r name kind src; do
        printf '%s"%s"' "$sep" "$name"
        sep=", "
    done <"$list"
    echo "]"
    echo
    echo "    /// The image of the guest called \`name\`: its source file's name (\"exit_status\") or its"
    echo "    /// property's name here (\"exitStatus\"). Nil if there is no such guest."
    echo "    public static func named(_ name: String) -> [UInt8]? {"
    echo "        switch name {"
    while read -r name kind src; do
        sname=$(swift_name "$name")
        if [ "$sname" = "$name" ]; then
            echo "        case \"$name\": $sname"
        else
            echo "        case \"$name\", \"$sname\": $sname"
        fi
    done <"$list"
    echo "        default: nil"
    echo "        }"
    echo "    }"
    echo
    echo "    /// The one-line description of the guest called \`name\` (as for \`named(_:)\`), or nil."
    echo "    public static func summary(of name: String) -> String? {"
    echo "        switch name {"
    while read -r name kind src; do
        sname=$(swift_name "$name")
        if [ "$sname" = "$name" ]; then
            label="\"$name\""
        else
            label="\"$name\", \"$sname\""
        fi
        echo "        case $label:"
        echo "            \"$(swift_escape "$(describe "$src")")\""
    done <"$list"
    echo "        default: nil"
    echo "        }"
    echo "    }"
    echo "}"
} >"$swift"
mv "$swift" "$out/GuestImages.swift"
