#!/usr/bin/env python3
"""Measures how fast `swiftvisor firecracker` serves its API after being spawned.

Usage: Tools/bench-api.py [--binary PATH] [--runs N]

For each run: spawn `swiftvisor firecracker --api-sock SOCKET`, then try to connect and
send `GET /` until a 200 comes back, and note the time from spawn to the first connect that
succeeds and to that answer; then SIGTERM the process. The same for the launcher
`swiftvisor-firecracker` beside the binary, which binds the socket before swiftvisor loads. In the same run, as the floor a process start costs on this host,
it times `swiftvisor firecracker --version` from spawn to exit. Prints the median and
p90 of both and their ratio (absolute times on shared hosts are noise; the ratio says
what the server itself adds). Then it holds one server open and times 2,000 `GET /`
requests on one keep-alive connection (median and p99 latency, requests per second).
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "api"))
from apiclient import configure_linux, read_response, request  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def ready_time(command, path):
    """Returns (spawn to a connect that succeeds, spawn to the first 200 answered)."""
    start = time.perf_counter()
    connected = None
    process = subprocess.Popen(command + ["--api-sock", path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(path)
                if connected is None:
                    connected = time.perf_counter() - start
                sock.sendall(REQUEST)
                status = read_response(sock)
                sock.close()
                if b" 200" in status:
                    return connected, time.perf_counter() - start
            except (FileNotFoundError, ConnectionRefusedError, ConnectionError):
                sock.close()
                time.sleep(0.0002)
            if time.perf_counter() - start > 10:
                raise TimeoutError("no answer within 10 s")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        if os.path.exists(path):
            os.unlink(path)


def start_time(command, path, kernel, initrd):
    """Returns (InstanceStart sent to its 204, InstanceStart sent to the first console byte)."""
    process = subprocess.Popen(command + ["--api-sock", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        configure_linux(path, kernel, initrd, "console=ttyS0 reboot=k panic=1 kunit.enable=0")
        start = time.perf_counter()
        status = request(path, "PUT", "/actions", '{"action_type": "InstanceStart"}')
        answered = time.perf_counter() - start
        assert b" 204" in status, status
        process.stdout.read(1)
        return answered, time.perf_counter() - start
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        if os.path.exists(path):
            os.unlink(path)


def version_time(binary):
    start = time.perf_counter()
    subprocess.run([binary, "firecracker", "--version"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/swiftvisor")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--kernel", help="a bzImage: also time InstanceStart")
    parser.add_argument("--initrd")
    parser.add_argument("--start-runs", type=int, default=10)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="swiftvisor-api-bench-")
    path = os.path.join(directory, "api.sock")
    launcher = os.path.join(os.path.dirname(os.path.abspath(args.binary)), "swiftvisor-firecracker")
    direct, launched, floor = [], [], []
    for _ in range(args.runs):
        floor.append(version_time(args.binary))
        direct.append(ready_time([args.binary, "firecracker"], path))
        if os.path.exists(launcher):
            launched.append(ready_time([launcher], path))
    ms = lambda seconds: seconds * 1000
    summary = lambda values: f"median {ms(statistics.median(values)):.2f} ms, p90 {ms(percentile(values, 0.9)):.2f} ms"
    print(f"reference: spawn to exit of `firecracker --version`: {summary(floor)} ({args.runs} runs)")
    for name, runs in (("swiftvisor firecracker", direct), ("swiftvisor-firecracker (launcher)", launched)):
        if not runs:
            print(f"{name}: not built")
            continue
        connect = [c for c, _ in runs]
        answer = [a for _, a in runs]
        print(f"{name}: spawn to a connect that succeeds: {summary(connect)}")
        print(f"{name}: spawn to the first GET / answered: {summary(answer)}; "
              f"ratio to --version (medians) {statistics.median(answer) / statistics.median(floor):.2f}x")

    if args.kernel:
        command = [launcher] if os.path.exists(launcher) else [args.binary, "firecracker"]
        starts = [start_time(command, path, args.kernel, args.initrd) for _ in range(args.start_runs)]
        print(f"InstanceStart sent to its 204 (vCPUs started): {summary([a for a, _ in starts])} ({args.start_runs} runs)")
        print(f"InstanceStart sent to the guest's first console byte: {summary([b for _, b in starts])}")

    process = subprocess.Popen([args.binary, "firecracker", "--api-sock", path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(path):
            time.sleep(0.001)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        latencies = []
        began = time.perf_counter()
        for _ in range(2000):
            start = time.perf_counter()
            sock.sendall(REQUEST)
            read_response(sock)
            latencies.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        sock.close()
        print(f"GET / on one keep-alive connection: median {latencies and ms(statistics.median(latencies)) * 1000:.0f} us, "
              f"p99 {ms(percentile(latencies, 0.99)) * 1000:.0f} us, {len(latencies) / elapsed:,.0f} requests/s")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)


if __name__ == "__main__":
    sys.exit(main())
