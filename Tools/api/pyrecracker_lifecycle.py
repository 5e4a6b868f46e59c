#!/usr/bin/env python3
"""Drives `firecracker` (SwiftVisor, through a link of that name) with pyrecracker 0.6.4.

pyrecracker is a Firecracker client from PyPI that nobody here wrote. Its VMManager
starts `sudo firecracker --api-sock SOCKET` and, as it is, configures (machine, boot
source, a root drive, a network interface on a TAP it creates with `sudo ip`), starts,
pauses, resumes and stops (SendCtrlAltDel) the VM. The test that runs this puts a `sudo`
that only runs its arguments and the `firecracker` link first on PATH.

    pyrecracker_lifecycle.py SOCKET KERNEL INITRD ROOTFS TAP LOG

One change to pyrecracker's behaviour: `stop()` sleeps a fixed pause before it kills the
process; here that pause waits for the process to exit by itself instead, so that the
result shows whether Ctrl-Alt-Del ended the VM. Prints one JSON object of what happened.
"""
import json
import sys
import time

import requests_unixsocket
import pyrecracker.vm
from pyrecracker.vm import VMManager

socket_path, kernel, initrd, rootfs, tap, log = sys.argv[1:7]
result = {}


def state() -> str:
    session = requests_unixsocket.Session()
    url = "http+unix://" + socket_path.replace("/", "%2F") + "/"
    return session.get(url).json()["state"]


def log_text() -> str:
    with open(log, errors="replace") as file:
        return file.read()


spawned = time.monotonic()
vm = VMManager(socket_path=socket_path, kernel_image_path=kernel, firecracker_logs_path=log)
process = vm._VMManager__host_env.process_stack[0]  # the `sudo firecracker` it spawned
vm.initrd_path = initrd
vm.boot_args = "console=ttyS0 reboot=k panic=1 pci=off kunit.enable=0"
vm.vcpu_count = 1
vm.mem_size_mib = 128
vm.path_on_host = rootfs
vm.is_read_only = True
vm.host_dev_name = tap
vm.guest_mac = "06:00:ac:10:00:02"
vm.host_ip = "172.16.203.1"
vm.guest_ip = "172.16.203.2"
vm.configure()  # creates the TAP, then its first requests
result["configured_after_s"] = round(time.monotonic() - spawned, 3)
vm.start()
result["after_start"] = state()

# The kernel reaches its spinning init and binds its keyboard (a Ctrl-Alt-Del before the
# driver binds is lost, in Firecracker too).
deadline = time.monotonic() + 900
while time.monotonic() < deadline and process.poll() is None:
    text = log_text()
    if "Run /init as init process" in text and "AT Translated Set 2 keyboard" in text:
        break
    time.sleep(0.2)
result["keyboard_bound"] = "AT Translated Set 2 keyboard" in log_text()

vm.pause()
result["after_pause"] = state()
vm.resume()
result["after_resume"] = state()


def wait_for_exit(_seconds: float) -> None:
    try:
        process.wait(timeout=300)
    except Exception:
        pass


pyrecracker.vm.sleep = wait_for_exit
vm.stop()
result["exit_status"] = process.returncode
result["restarted"] = "reboot: Restarting system" in log_text()
print(json.dumps(result))
