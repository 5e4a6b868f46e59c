#!/usr/bin/env bash
# Builds the guest images that keep a Linux guest alive on these machines, and
# prints the directory that holds them.
#
# Usage:
#   dir=$(Tools/linux/make-guest-images.sh)
#   "$dir/init"               the spinning init: a static x86-64 ELF whose whole
#                             program is `1: pause; jmp 1b` (spin-init.S)
#   "$dir/initramfs.cpio.gz"  a gzip newc cpio holding it as /init
#   "$dir/rootfs.ext4"        a 16 MiB ext4 image holding it as /sbin/init
#
# A system call from ring 3 is broken on these machines (see README.md), so no
# real user space runs; an init that makes no system call keeps the kernel up
# until the VMM stops it. The init is built from spin-init.S (beside this
# script) with gcc; the ext4 image is made with `mke2fs -d`, so no mount and no
# root are needed.
#
# The result is cached outside the repository in
# ${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}/guest-images/<key>/, where <key>
# is the first 16 hex digits of a SHA-256 over spin-init.S, this script and the
# versions of gcc, GNU as, cpio and mke2fs. A cached entry is reused as is. The
# ext4 image is the pristine one: a test that boots it writable must copy it
# first (the kernel updates the mount count and times when it mounts it).
#
# Only the directory path goes to standard output; everything else goes to
# standard error. Missing Debian packages are installed with apt-get (as root,
# or through sudo). Work happens under a lock, in a temporary directory renamed
# into place only when complete. Takes well under a second.

set -euo pipefail

# Everything but the final path goes to standard error.
exec 3>&1 1>&2

die() { printf 'make-guest-images: %s\n' "$*" >&2; exit 1; }
say() { printf 'make-guest-images: %s\n' "$*" >&2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path="$script_dir/$(basename "${BASH_SOURCE[0]}")"
source_file="$script_dir/spin-init.S"
[[ -f $source_file ]] || die "missing $source_file"

cache_root=${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}
images_cache="$cache_root/guest-images"
image_size=16M

# package -> a command it provides
declare -A tools=([gcc]=gcc [binutils]=as [cpio]=cpio [e2fsprogs]=mke2fs [gzip]=gzip)

install_missing() {
    local missing=() pkg
    for pkg in "${!tools[@]}"; do
        command -v "${tools[$pkg]}" >/dev/null || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing missing packages: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "could not install: ${missing[*]}"
}

# The first line of each tool's version: sed reads the whole output, where head would exit
# early and let the tool die of SIGPIPE, which pipefail turns into a failure.
cache_key() {
    {
        cat "$source_file" "$script_path"
        gcc --version | sed -n 1p
        as --version | sed -n 1p
        cpio --version | sed -n 1p
        mke2fs -V 2>&1 | sed -n 1p
    } | sha256sum | cut -c1-16
}

finish() {
    printf '%s\n' "$1" >&3
    exit 0
}

complete() {
    [[ -f $1/init && -f $1/initramfs.cpio.gz && -f $1/rootfs.ext4 ]]
}

# mke2fs lives in /sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
install_missing
key=$(cache_key)
dest="$images_cache/$key"
complete "$dest" && finish "$dest"

mkdir -p "$images_cache"
exec 9>"$images_cache/.lock"
flock 9
# Another process may have made the same images while we waited.
complete "$dest" && finish "$dest"
# Holding the lock: leftovers are from interrupted runs.
rm -rf "$images_cache"/.staging-*

staging=$(mktemp -d "$images_cache/.staging-$key-XXXXXX")
trap 'rm -rf "$staging"' EXIT

say "building the spinning init from $(basename "$source_file")"
gcc -nostdlib -static -s -Wl,--build-id=none -o "$staging/init" "$source_file"

# Fixed owner, mode and time, so the archive depends only on the init.
root="$staging/root"
mkdir -p "$root/sbin"
install -m 0755 "$staging/init" "$root/init"
install -m 0755 "$staging/init" "$root/sbin/init"
touch -h -d @0 "$root/init" "$root/sbin/init" "$root/sbin"

say "packing initramfs.cpio.gz (/init)"
(cd "$root" && printf 'init\n' | cpio --quiet -o -H newc -R 0:0 --reproducible) \
    | gzip -n -9 >"$staging/initramfs.cpio.gz"

say "making rootfs.ext4 ($image_size, /sbin/init)"
mkdir "$staging/ext4-root"
cp -a "$root/sbin" "$staging/ext4-root/sbin"
mke2fs -q -F -t ext4 -L swiftvisor-root -E root_owner=0:0 \
    -d "$staging/ext4-root" "$staging/rootfs.ext4" "$image_size"

rm -rf "$root" "$staging/ext4-root"
chmod 0755 "$staging"
rm -rf "$dest" # only an incomplete leftover can be here: we hold the lock
# The rename is the commit point: $dest either does not exist or is complete.
mv -T "$staging" "$dest"
trap - EXIT
say "made $dest"
finish "$dest"
