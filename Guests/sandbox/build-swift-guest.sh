#!/bin/sh
# Builds one Embedded Swift sandbox guest: its Swift files and the SDK (SDK/*.swift) in one
# module, linked with the sandbox runtime (runtime/) by runtime/sandbox.ld into an ELF file.
#
# Usage: build-swift-guest.sh SWIFTC CLANG LD_LLD WORKDIR OUT.elf SOURCE.swift...
#
# Guests/build.sh runs it for each Guests/sandbox/NAME.sandbox.swift; Tools/sandbox/build-guest
# runs it for a user's own files. WORKDIR holds the objects. SANDBOX_RUNTIME_OBJS, when set,
# names runtime objects already built (Guests/build.sh shares its own with the C guests);
# otherwise the runtime is compiled here.
set -eu
LC_ALL=C
export LC_ALL

[ $# -ge 6 ] || {
    echo "usage: $0 SWIFTC CLANG LD_LLD WORKDIR OUT.elf SOURCE.swift..." >&2
    exit 64
}
swiftc=$1
clang=$2
lld=$3
work=$4
out=$5
shift 5
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
name=$(basename "$out" .elf)

# Embedded Swift for bare x86-64: the whole module at once (-wmo, which Embedded requires),
# sized for small images. -parse-as-library: the guest's entry is its `@main` type, which the
# SDK's sandbox_main calls. Strict memory safety as in the package: only SDK/CallArea.swift
# holds unsafe code. No stack protector (the runtime has no __stack_chk_guard); one section
# per function so that --gc-sections drops what the guest does not use. The guest runs at
# CPL 3 with interrupts never delivered to it, so SSE and the red zone are fine.
swiftflags="-target x86_64-unknown-none-elf -enable-experimental-feature Embedded
    -enable-experimental-feature Extern -swift-version 6 -strict-memory-safety -Osize -wmo
    -parse-as-library -Xfrontend -disable-stack-protector -Xfrontend -function-sections
    -Xcc -fno-stack-protector"
# The module name only shows in symbols; a fixed one keeps every guest's build alike.
# shellcheck disable=SC2086
"$swiftc" $swiftflags -module-name SandboxGuest -module-cache-path "$work/module-cache" \
    -c "$here"/SDK/*.swift "$@" -o "$work/$name.o"

runtime=${SANDBOX_RUNTIME_OBJS:-}
if [ -z "$runtime" ]; then
    # The same flags as Guests/build.sh's sandbox_cflags: freestanding C for CPL 3.
    cflags="-target x86_64-unknown-none-elf -std=c11 -ffreestanding -fno-builtin -nostdlibinc -fno-pic
        -fno-stack-protector -O2 -fno-asynchronous-unwind-tables -fno-unwind-tables
        -ffunction-sections -fdata-sections -Wall -Wextra"
    "$clang" -target x86_64-unknown-none-elf -c "$here/runtime/start.S" -o "$work/sandbox_start.o"
    # shellcheck disable=SC2086
    "$clang" $cflags -c "$here/runtime/libc.c" -o "$work/sandbox_libc.o"
    runtime="$work/sandbox_start.o $work/sandbox_libc.o"
fi

# String comparison, `count` and other grapheme- or normalization-aware operations need the
# toolchain's Unicode tables; as an archive, only what the guest uses is linked (none of it
# for most guests).
toolchain=$(dirname "$(readlink -f "$swiftc" 2>/dev/null || echo "$swiftc")")
unicode="$toolchain/../lib/swift/embedded/x86_64-unknown-none-elf/libswiftUnicodeDataTables.a"
[ -f "$unicode" ] || unicode=

# One page-aligned PT_LOAD per permission (sandbox.ld), symbols stripped.
# shellcheck disable=SC2086
"$lld" -static -nostdlib -s --build-id=none -z max-page-size=4096 -z noexecstack --gc-sections \
    -T "$here/runtime/sandbox.ld" -o "$out" $runtime "$work/$name.o" $unicode
