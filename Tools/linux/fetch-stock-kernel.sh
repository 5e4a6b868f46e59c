#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel and prints the path of its bzImage.
#
# Usage:
#   vmlinuz=$(Tools/linux/fetch-stock-kernel.sh)
#   "$(dirname "$vmlinuz")/config"   that kernel's .config
#
# Resolves the metapackage linux-image-cloud-amd64 to the kernel image package
# it currently depends on (for example linux-image-6.1.0-56-cloud-amd64),
# downloads that package with `apt-get download` (no installation), and
# extracts boot/vmlinuz-* and boot/config-* with `dpkg-deb -x` into
# ${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}/stock-kernel/<release>_<version>/,
# where <release> is the kernel release (6.1.0-56-cloud-amd64) and <version>
# the package version (6.1.192-2). An existing entry is reused without any
# download; the package lists decide which entry is current.
#
# Only the path goes to standard output; everything else goes to standard
# error. If the package lists do not know the metapackage yet, this runs
# `apt-get update` once (as root, or through sudo).

set -euo pipefail

exec 3>&1 1>&2

die() { printf 'fetch-stock-kernel: %s\n' "$*" >&2; exit 1; }
say() { printf 'fetch-stock-kernel: %s\n' "$*" >&2; }

metapackage=linux-image-cloud-amd64
cache_root=${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}
stock_cache="$cache_root/stock-kernel"

as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        command -v sudo >/dev/null || die "need root or sudo to run: $*"
        sudo "$@"
    fi
}

# The metapackage's Depends line names the image package and, usually, its
# exact version: "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
resolve_depends() {
    apt-cache show --no-all-versions "$metapackage" 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1
}

depends=$(resolve_depends)
if [[ -z $depends ]]; then
    say "the package lists do not know $metapackage; running apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    depends=$(resolve_depends)
    [[ -n $depends ]] || die "apt-cache does not know $metapackage even after apt-get update"
fi
[[ $depends =~ (linux-image-[A-Za-z0-9.+~-]+)(\ \(=\ ([^\)]+)\))? ]] \
    || die "$metapackage depends on no linux-image package: $depends"
image_package=${BASH_REMATCH[1]}
version=${BASH_REMATCH[3]}
if [[ -z $version ]]; then
    version=$(apt-cache show --no-all-versions "$image_package" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [[ -n $version ]] || die "apt-cache knows no version of $image_package"
fi
release=${image_package#linux-image-}
release=${release%-unsigned}
# A directory name: keep the usual version characters, map anything else (an epoch's ':') to '_'.
entry=$(printf '%s_%s' "$release" "$version" | tr -c 'A-Za-z0-9.+~_-' '_')
dest="$stock_cache/$entry"

if [[ -f $dest/vmlinuz ]]; then
    printf '%s\n' "$dest/vmlinuz" >&3
    exit 0
fi

mkdir -p "$stock_cache"
exec 9>"$stock_cache/.lock"
flock 9
if [[ -f $dest/vmlinuz ]]; then
    printf '%s\n' "$dest/vmlinuz" >&3
    exit 0
fi
# Holding the lock, nothing else is fetching: leftovers are from interrupted runs.
rm -rf "$stock_cache"/.work-*

work=$(mktemp -d "$stock_cache/.work-XXXXXX")
trap 'rm -rf "$work"' EXIT

say "downloading $image_package=$version"
# As root, apt-get downloads as the user _apt, who cannot write into a cache
# under a private home directory: download as root instead, which it would
# fall back to anyway (with a warning).
apt_options=()
((EUID == 0)) && apt_options=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download -q "${apt_options[@]}" "$image_package=$version") \
    || die "apt-get download $image_package=$version failed"
debs=("$work"/*.deb)
[[ -f ${debs[0]} ]] || die "apt-get download left no .deb in $work"

dpkg-deb -x "${debs[0]}" "$work/root"
vmlinuz=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' -type f | head -n 1)
[[ -n $vmlinuz ]] || die "${debs[0]##*/} contains no boot/vmlinuz-*"

staging="$work/entry"
mkdir "$staging"
cp "$vmlinuz" "$staging/vmlinuz"
config=$(find "$work/root/boot" -maxdepth 1 -name 'config-*' -type f | head -n 1)
[[ -n $config ]] && cp "$config" "$staging/config"
chmod 0755 "$staging"
rm -rf "$dest" # only an incomplete leftover can be here: we hold the lock
# The rename is the commit point: $dest either does not exist or is complete.
mv -T "$staging" "$dest"
say "extracted $(basename "$vmlinuz") from ${debs[0]##*/}"
printf '%s\n' "$dest/vmlinuz" >&3
