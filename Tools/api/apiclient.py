"""A minimal client of SwiftVisor's Firecracker-compatible API on its Unix socket, shared by
the benchmark scripts (Tools/bench-api.py, Tools/bench-api-load.py): one request per
connection, the status line back.
"""
import json
import socket
import time


def read_response(sock):
    """Reads one response (head and a Content-Length body); returns its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b"\r\n")[0]


def request(path, method, target, body=""):
    """Sends one request on a new connection to the socket at `path`; returns the status line."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(path)
        data = body.encode()
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data)
        return read_response(sock)
    finally:
        sock.close()


def configure_linux(path, kernel, initrd, boot_args, vcpus=1, memory_mib=128):
    """Waits until the server at `path` answers, then sets the machine and the boot source."""
    while True:
        try:
            status = request(path, "PUT", "/machine-config",
                             json.dumps({"vcpu_count": vcpus, "mem_size_mib": memory_mib}))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.001)
    assert b" 204" in status, status
    boot = {"kernel_image_path": kernel, "boot_args": boot_args}
    if initrd:
        boot["initrd_path"] = initrd
    status = request(path, "PUT", "/boot-source", json.dumps(boot))
    assert b" 204" in status, status
