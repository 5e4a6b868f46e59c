#!/usr/bin/env bash
# Runs the Linux boot benchmarks of BENCHMARKS.md ("Linux boot"), one step after another
# (never two VMs at once), and prints the load average before each step.
#
# Usage: Tools/bench/linux-boot.sh [STEP...]
#   setup        host-side set-up of Debian's kernel and the test kernel, medians of 9
#   boot         the test kernel to KUnit and power-off: bzImage/linux64 and vmlinux/PVH
#                with 1 vCPU, bzImage/linux64 with 2 vCPUs, and with earlyprintk; medians of 3
#   guest-gzip   one boot of the test bzImage with its own gzip decompressor (15 min timeout)
#   stock        Debian's kernel to its banner and early lines, then stopped, without and with
#                earlyprintk; medians of 3
#   cli          `swiftvisor boot` of the test bzImage, timed from process start; medians of 3
#   qemu         qemu-system-x86_64 -enable-kvm with the same kernels and command line
#   qemu-policy  the same, with CMPXCHG16B and paravirtual send-IPI hidden as SwiftVisor hides them
#   (no STEP: all of them, in this order)
#
# Build first:
#   swift build -c release --static-swift-stdlib --scratch-path .build-static
# Environment:
#   SWIFTVISOR_BENCH_LOGS  where the timestamped console logs go (default /tmp/swiftvisor-linux-bench)
#   SWIFTVISOR_MAX_LOAD    wait (up to 10 minutes) before a step while the 1-minute load is above this (default 3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=$repo/.build-static/release/swiftvisor-bench
cli=$repo/.build-static/release/swiftvisor
[[ -x $bench && -x $cli ]] || { echo "linux-boot.sh: build first: swift build -c release --static-swift-stdlib --scratch-path .build-static" >&2; exit 1; }
logs=${SWIFTVISOR_BENCH_LOGS:-/tmp/swiftvisor-linux-bench}
max_load=${SWIFTVISOR_MAX_LOAD:-3}
mkdir -p "$logs"

test_kernel=$("$repo/Tools/linux/build-test-kernel.sh")
stock_kernel=$("$repo/Tools/linux/fetch-stock-kernel.sh")
# The command line SwiftVisor gives the test kernel on this host (the probed quirks included).
cmdline=$("$bench" linux-cmdline --append kunit_shutdown=poweroff)
stock_cmdline=$("$bench" linux-cmdline)
stock_marks=(--no-kunit --mark "Hypervisor detected: KVM" --mark "smpboot: Allowing" --mark "Memory:")

# Waits while the machine is busy, then prints the load.
quiet() {
    local waited=0
    while awk -v max="$max_load" '{ exit !($1 > max) }' /proc/loadavg && (( waited < 600 )); do
        sleep 30
        waited=$((waited + 30))
    done
    echo "== $* ($(date -u +%FT%TZ); uptime:$(uptime | sed 's/.*load average//'))"
}

step_setup() {
    quiet "setup: Debian's stock kernel"
    "$bench" linux-setup --kernel "$stock_kernel" --rounds 9
    quiet "setup: test kernel bzImage"
    "$bench" linux-setup --kernel "$test_kernel/bzImage" --memory 128M --rounds 9
    quiet "setup: test kernel vmlinux"
    "$bench" linux-setup --kernel "$test_kernel/vmlinux" --memory 128M --rounds 9
}

step_boot() {
    quiet "boot: bzImage, linux64, 1 vCPU"
    "$bench" linux-boot --kernel "$test_kernel/bzImage" --append kunit_shutdown=poweroff --rounds 3 --log "$logs/bzimage-linux64-1cpu.log"
    quiet "boot: vmlinux, PVH, 1 vCPU"
    "$bench" linux-boot --kernel "$test_kernel/vmlinux" --protocol pvh --append kunit_shutdown=poweroff --rounds 3 --log "$logs/vmlinux-pvh-1cpu.log"
    quiet "boot: bzImage, linux64, 2 vCPUs"
    "$bench" linux-boot --kernel "$test_kernel/bzImage" --cpus 2 --append kunit_shutdown=poweroff --rounds 3 --log "$logs/bzimage-linux64-2cpu.log"
    quiet "boot: bzImage, linux64, 1 vCPU, earlyprintk (the banner as it is printed)"
    "$bench" linux-boot --kernel "$test_kernel/bzImage" --append "earlyprintk=serial,ttyS0 kunit_shutdown=poweroff" --rounds 3 --log "$logs/bzimage-linux64-1cpu-earlyprintk.log"
}

step_guest_gzip() {
    quiet "guest-gzip: bzImage, linux64, 1 vCPU, the kernel's own decompressor"
    "$bench" linux-boot --kernel "$test_kernel/bzImage" --no-host-decompress --append kunit_shutdown=poweroff --timeout 900 --log "$logs/bzimage-guest-gzip.log"
}

step_stock() {
    quiet "stock: Debian's kernel to its early lines, 512 MiB, 1 vCPU"
    "$bench" linux-boot --kernel "$stock_kernel" --memory 512M "${stock_marks[@]}" --stop-when-marked --rounds 3 --timeout 600 --log "$logs/stock.log"
    # The same lines printed as they are logged, not when the console driver registers.
    quiet "stock: Debian's kernel with earlyprintk, 512 MiB, 1 vCPU"
    "$bench" linux-boot --kernel "$stock_kernel" --memory 512M --append earlyprintk=serial,ttyS0 "${stock_marks[@]}" \
        --mark "printk: console [ttyS0] enabled" --stop-when-marked --rounds 3 --timeout 600 --log "$logs/stock-earlyprintk.log"
}

step_cli() {
    quiet "cli: swiftvisor boot, from process start"
    "$bench" timed-run --rounds 3 --timeout 900 --log "$logs/cli.log" -- \
        "$cli" boot --kernel "$test_kernel/bzImage" --memory 128M --cmdline kunit_shutdown=poweroff
}

qemu=(qemu-system-x86_64 -enable-kvm -m 128M -smp 1 -nographic -no-reboot -serial stdio -monitor none)
# QEMU pauses the VM on a KVM emulation failure and waits; its register dump ends with "Code=".
stop_on_failure=(--stop-at "Code=")
step_qemu() {
    command -v qemu-system-x86_64 >/dev/null || { echo "linux-boot.sh: install qemu-system-x86 (apt-get install qemu-system-x86)" >&2; exit 1; }
    # `-cpu host` as such: QEMU 7.2 stops at once on this host (it cannot set MSR 0x10a).
    quiet "qemu: -cpu host, test bzImage"
    "$bench" timed-run --timeout 60 --log "$logs/qemu-cpu-host.log" -- \
        "${qemu[@]}" -cpu host -kernel "$test_kernel/bzImage" -append "$cmdline"
    # Without the ARCH_CAPABILITIES MSR QEMU starts; everything else as above.
    quiet "qemu: test bzImage (the guest's own gzip decompressor)"
    "$bench" timed-run --timeout 600 "${stop_on_failure[@]}" --log "$logs/qemu-bzimage.log" -- \
        "${qemu[@]}" -cpu host,-arch-capabilities -kernel "$test_kernel/bzImage" -append "$cmdline"
    quiet "qemu: test vmlinux (PVH)"
    "$bench" timed-run --timeout 600 "${stop_on_failure[@]}" --log "$logs/qemu-vmlinux-pvh.log" -- \
        "${qemu[@]}" -cpu host,-arch-capabilities -kernel "$test_kernel/vmlinux" -append "$cmdline"
    quiet "qemu: Debian's bzImage (the guest's own LZ4 decompressor), 512 MiB"
    "$bench" timed-run --timeout 480 "${stock_marks[@]}" "${stop_on_failure[@]}" --log "$logs/qemu-stock.log" -- \
        "${qemu[@]/128M/512M}" -cpu host,-arch-capabilities -kernel "$stock_kernel" -append "$stock_cmdline"
}

# QEMU with the CPUID help SwiftVisor gives a Linux guest here: CMPXCHG16B and paravirtual
# send-IPI hidden. (What SwiftVisor finishes in user space, QEMU cannot.)
step_qemu_policy() {
    quiet "qemu-policy: test vmlinux (PVH), -cx16"
    "$bench" timed-run --timeout 600 "${stop_on_failure[@]}" --log "$logs/qemu-policy-vmlinux-pvh.log" -- \
        "${qemu[@]}" -cpu host,-arch-capabilities,-cx16,kvm-pv-ipi=off -kernel "$test_kernel/vmlinux" -append "$cmdline"
    quiet "qemu-policy: Debian's bzImage, -cx16, 512 MiB"
    "$bench" timed-run --timeout 480 "${stock_marks[@]}" "${stop_on_failure[@]}" --log "$logs/qemu-policy-stock.log" -- \
        "${qemu[@]/128M/512M}" -cpu host,-arch-capabilities,-cx16,kvm-pv-ipi=off -kernel "$stock_kernel" -append "$stock_cmdline"
}

steps=("$@")
(( ${#steps[@]} )) || steps=(setup boot guest-gzip stock cli qemu qemu-policy)
for step in "${steps[@]}"; do
    case $step in
        setup) step_setup ;;
        boot) step_boot ;;
        guest-gzip) step_guest_gzip ;;
        stock) step_stock ;;
        cli) step_cli ;;
        qemu) step_qemu ;;
        qemu-policy) step_qemu_policy ;;
        *) echo "linux-boot.sh: unknown step '$step'" >&2; exit 2 ;;
    esac
done
