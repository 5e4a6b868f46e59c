#!/usr/bin/env bash
# Builds SwiftVisor's Linux test kernel and prints the directory that holds it.
#
# Usage:
#   dir=$(Tools/linux/build-test-kernel.sh)
#   "$dir/bzImage"     the kernel as a bzImage (gzip payload)
#   "$dir/vmlinux"     the uncompressed ELF (with the Xen PVH entry note)
#   "$dir/config"      the final kernel .config
#   "$dir/System.map"  its symbols, for reading guest RIPs
#
# The kernel is Debian's linux-source-6.1: `make tinyconfig`, with
# test-kernel.config (beside this script) merged on top, every option the
# fragment does not name answered "no". The result is cached outside the
# repository in ${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}/test-kernel/<key>/,
# where <key> is the first 16 hex digits of a SHA-256 over the fragment, this
# script and the linux-source-6.1 package version. A cached entry is reused as
# is; delete the directory to force a rebuild.
#
# Only the directory path goes to standard output; all build output goes to
# standard error. Missing Debian packages are installed with apt-get (as root,
# or through sudo). Builds run under a lock, in a temporary directory that is
# renamed into place only when complete, so an interrupted build leaves nothing
# that looks finished. Takes about 5-10 minutes on 2 cores.
#
# Environment:
#   SWIFTVISOR_CACHE        cache root (default: $HOME/.cache/swiftvisor)
#   SWIFTVISOR_BUILD_JOBS   parallel make jobs (default: nproc)
#   SWIFTVISOR_KEEP_KERNEL_WORK=1   keep the unpacked, built source tree
#                                   (in <cache>/test-kernel/.work-*) for inspection

set -euo pipefail

# Everything but the final path goes to standard error.
exec 3>&1 1>&2

die() { printf 'build-test-kernel: %s\n' "$*" >&2; exit 1; }
say() { printf 'build-test-kernel: %s\n' "$*" >&2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path="$script_dir/$(basename "${BASH_SOURCE[0]}")"
fragment="$script_dir/test-kernel.config"
[[ -f $fragment ]] || die "missing config fragment $fragment"

source_package=linux-source-6.1
source_tarball=/usr/src/linux-source-6.1.tar.xz
build_packages=(build-essential bc flex bison libelf-dev cpio xz-utils)

cache_root=${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}
kernel_cache="$cache_root/test-kernel"
jobs=${SWIFTVISOR_BUILD_JOBS:-$(nproc)}

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing missing packages: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
        sudo=(sudo)
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        say "apt-get install failed; updating the package lists and retrying"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            || die "could not install: ${missing[*]}"
    fi
}

cache_key() {
    local version
    version=$(dpkg-query -W -f='${Version}' "$source_package")
    { cat "$fragment" "$script_path"; printf '%s\n' "$source_package=$version"; } \
        | sha256sum | cut -c1-16
}

finish() {
    printf '%s\n' "$1" >&3
    exit 0
}

# Fast path: an existing cache entry needs no packages and no lock.
if is_installed "$source_package"; then
    dest="$kernel_cache/$(cache_key)"
    [[ -f $dest/bzImage && -f $dest/vmlinux ]] && finish "$dest"
fi

install_missing "$source_package" "${build_packages[@]}"
[[ -f $source_tarball ]] || die "$source_package is installed but $source_tarball is missing"
key=$(cache_key)
dest="$kernel_cache/$key"

mkdir -p "$kernel_cache"
exec 9>"$kernel_cache/.lock"
say "waiting for the build lock $kernel_cache/.lock"
flock 9
# Another process may have finished the same build while we waited.
[[ -f $dest/bzImage && -f $dest/vmlinux ]] && finish "$dest"

# Holding the lock, nothing else is building: leftovers are from interrupted runs.
rm -rf "$kernel_cache"/.work-* "$kernel_cache"/.staging-*

work=$(mktemp -d "$kernel_cache/.work-$key-XXXXXX")
cleanup() {
    if [[ ${SWIFTVISOR_KEEP_KERNEL_WORK:-0} == 1 ]]; then
        say "kept the work tree $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

start=$SECONDS
say "unpacking $source_tarball into $work"
tar -xf "$source_tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)
[[ -n $src ]] || die "no linux-source-* directory in $source_tarball"

export ARCH=x86_64
# A fixed user and host in the banner instead of this machine's.
export KBUILD_BUILD_USER=swiftvisor KBUILD_BUILD_HOST=test-kernel

say "configuring: tinyconfig + $(basename "$fragment")"
make -C "$src" tinyconfig
# -n: allnoconfig over tinyconfig plus the fragment, so options that the
# fragment makes visible default to "no" rather than to their usual defaults.
(cd "$src" && scripts/kconfig/merge_config.sh -n .config "$fragment")

# Kconfig silently drops options whose dependencies are missing: check that
# every line of the fragment made it into the final configuration.
check_config() {
    local config=$1 line name failures=0
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            if ! grep -qxF -- "$line" "$config"; then
                name=${BASH_REMATCH[1]}
                say "config check: $line was asked for, but the final config has: $(grep -E "^(# )?$name[= ]" "$config" || echo "nothing (dependencies not met)")"
                failures=$((failures + 1))
            fi
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]}
            if grep -qE "^$name=" "$config"; then
                say "config check: $name was asked to be off, but the final config has: $(grep -E "^$name=" "$config")"
                failures=$((failures + 1))
            fi
        fi
    done <"$fragment"
    ((failures == 0)) || die "$failures option(s) of $(basename "$fragment") did not stick; fix the fragment"
    say "config check: every option of $(basename "$fragment") is in the final config"
}
check_config "$src/.config"

say "building bzImage with $jobs jobs"
make -C "$src" -j"$jobs" bzImage
# The build may refresh .config (syncconfig): check what was actually built.
check_config "$src/.config"

staging=$(mktemp -d "$kernel_cache/.staging-$key-XXXXXX")
cp "$src/arch/x86/boot/bzImage" "$staging/bzImage"
cp "$src/vmlinux" "$staging/vmlinux"
cp "$src/.config" "$staging/config"
cp "$src/System.map" "$staging/System.map"
chmod 0755 "$staging"
rm -rf "$dest" # only an incomplete leftover can be here: we hold the lock
# The rename is the commit point: $dest either does not exist or is complete.
mv -T "$staging" "$dest"
say "built in $((SECONDS - start)) s: $dest"
finish "$dest"
