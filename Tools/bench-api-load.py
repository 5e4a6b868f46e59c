#!/usr/bin/env python3
"""Does a loaded control API slow the VM it serves? GET / under wrk while a guest boots.

Usage: Tools/bench-api-load.py --kernel BZIMAGE --initrd INITRD [--binary PATH] [--runs N]
                               [--connections C] [--threads T]

Each run starts `swiftvisor-firecracker` (beside --binary), configures the kernel with one
vCPU and 128 MiB and the spinning init, and times InstanceStart to the kernel's `Run /init
as init process` line on the serial console. Runs alternate: quiet (no client), and loaded,
where wrk (Debian's package; it speaks TCP, so it goes through Tools/api/bridge.py) sends
`GET /` on C connections for the whole boot. It prints both boot times and their ratio,
and wrk's requests per second and latency. The boot is the kernel's own work, measured in
the VMM's vCPU thread; what the ratio shows is what serving the API costs the guest on the
same host, two cores here, where the server, the bridge and wrk compete with the vCPU for
the CPU.
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "api"))
from apiclient import configure_linux, request  # noqa: E402


def boot(launcher, kernel, initrd, directory, load):
    path = os.path.join(directory, "api.sock")
    process = subprocess.Popen([launcher, "--api-sock", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    bridge = wrk = None
    try:
        configure_linux(path, kernel, initrd, "console=ttyS0 reboot=k panic=1 kunit.enable=0")
        if load:
            bridge = subprocess.Popen([sys.executable, os.path.join(HERE, "api", "bridge.py"), path],
                                      stdout=subprocess.PIPE)
            port = int(bridge.stdout.readline())
            wrk = subprocess.Popen(["wrk", "-t", str(load[1]), "-c", str(load[0]), "-d", "600s", "--latency",
                                    f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(1)
        start = time.perf_counter()
        assert b" 204" in request(path, "PUT", "/actions", '{"action_type": "InstanceStart"}')
        seen = b""
        while b"Run /init as init process" not in seen:
            chunk = process.stdout.read1(65536)
            if not chunk:
                raise RuntimeError("the VM ended before init")
            seen = seen[-4096:] + chunk
        elapsed = time.perf_counter() - start
        report = ""
        if wrk:
            wrk.send_signal(signal.SIGINT)
            report = wrk.communicate(timeout=30)[0].decode()
        return elapsed, report
    finally:
        for child in (wrk, bridge):
            if child and child.poll() is None:
                child.kill()
                child.wait()
        process.send_signal(signal.SIGTERM)
        process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/swiftvisor")
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    launcher = os.path.join(os.path.dirname(os.path.abspath(args.binary)), "swiftvisor-firecracker")
    directory = tempfile.mkdtemp(prefix="swiftvisor-api-load-")
    quiet, loaded, reports = [], [], []
    for _ in range(args.runs):
        quiet.append(boot(launcher, args.kernel, args.initrd, directory, None)[0])
        elapsed, report = boot(launcher, args.kernel, args.initrd, directory, (args.connections, args.threads))
        loaded.append(elapsed)
        reports.append(report)
    os.rmdir(directory)
    print(f"InstanceStart to `Run /init`, quiet:  median {statistics.median(quiet):.2f} s  {['%.2f' % q for q in quiet]}")
    print(f"InstanceStart to `Run /init`, loaded: median {statistics.median(loaded):.2f} s  {['%.2f' % q for q in loaded]}")
    print(f"ratio (medians, loaded / quiet): {statistics.median(loaded) / statistics.median(quiet):.2f}x")
    for report in reports:
        rate = re.search(r"Requests/sec:\s+([\d.]+)", report)
        latency = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", report)
        p99 = re.search(r"99%\s+([\d.]+\w+)", report)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", report)
        print(f"wrk GET / with {args.connections} connections: {rate.group(1) if rate else '?'} requests/s, "
              f"latency mean {latency.group(1) if latency else '?'}, p99 {p99.group(1) if p99 else '?'}"
              + (f", {errors.group(0)}" if errors else ""))


if __name__ == "__main__":
    sys.exit(main())
