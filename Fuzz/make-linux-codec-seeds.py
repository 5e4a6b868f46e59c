#!/usr/bin/env python3
"""Writes the linux fuzz target's per-codec seeds from its gzip one.

Usage: python3 Fuzz/make-linux-codec-seeds.py   (from the repository's root; needs xz's
Python module, and the lz4 and zstd command-line tools)

Fuzz/corpus/linux/bzimage-gzip-host is a tiny bzImage (after the target's two leading
input bytes) whose payload is a gzip-compressed 152-byte ELF. This script recompresses
that ELF with xz, lzma, lz4 (legacy frame) and zstd, appends the 4-byte size the kernel
build appends, puts each payload in place of the gzip one, pads the protected-mode kernel
to whole 16-byte units, and fixes payload_length and syssize, so that every codec the host decodes has a seed.
"""
import lzma
import struct
import subprocess
import zlib

SOURCE = "Fuzz/corpus/linux/bzimage-gzip-host"

data = open(SOURCE, "rb").read()
prefix, kernel = data[:2], data[2:]
setup_size = ((kernel[0x1F1] or 4) + 1) * 512
offset, length = struct.unpack_from("<II", kernel, 0x248)
start = setup_size + offset
elf = zlib.decompress(kernel[start:start + length], 31)

def tool(command):
    return subprocess.run(command, input=elf, stdout=subprocess.PIPE, check=True).stdout

payloads = {
    "xz": lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lzma.compress(elf, format=lzma.FORMAT_ALONE),
    "lz4": tool(["lz4", "-l", "-9", "-c"]),
    "zstd": tool(["zstd", "-19", "-q", "-c"]),
}
for codec, payload in payloads.items():
    payload += struct.pack("<I", len(elf))
    image = bytearray(kernel[:start] + payload + kernel[start + length:])
    image += bytes(-(len(image) - setup_size) % 16)  # whole 16-byte units, as syssize counts
    struct.pack_into("<I", image, 0x24C, len(payload))
    struct.pack_into("<I", image, 0x1F4, (len(image) - setup_size) // 16)
    with open(f"Fuzz/corpus/linux/bzimage-{codec}-host", "wb") as out:
        out.write(prefix + bytes(image))
