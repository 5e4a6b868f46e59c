#!/usr/bin/env python3
"""Writes the multiboot fuzz target's seeds: small hand-made images behind the target's prefix.

Usage: python3 Fuzz/make-multiboot-seeds.py   (from the repository's root)

Each seed is the prefix fuzzMultiboot reads (a RAM size byte, a module count, per module a
size byte and a string, a command line) followed by a multiboot image: an ELF32 file at
1 MiB, a flat image with the header's address fields at 0x8000, an ELF64 file whose entry
is virtual, and an image whose header checksum is wrong.
"""
import struct

MAGIC = 0x1BADB002
CODE = bytes([0xB8, 0, 0, 0, 0, 0xE7, 0xF4, 0xF4])


def header(flags, checksum=None):
    if checksum is None:
        checksum = (-(MAGIC + flags)) & 0xFFFFFFFF
    return struct.pack("<III", MAGIC, flags, checksum)


def prefix(ram, modules, cmdline):
    out = bytes([ram, len(modules)])
    for size, string in modules:
        out += bytes([size, len(string)]) + string
    return out + bytes([len(cmdline)]) + cmdline


def elf32(paddr, memsz):
    ehdr = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, paddr, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0x60, paddr, paddr, 20, memsz, 7, 4)
    body = ehdr + phdr
    body += bytes(0x60 - len(body))
    return body + header(3) + CODE


def elf64(vaddr, paddr):
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, vaddr + 12, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0x78, vaddr, paddr, 20, 0x1000, 8)
    return ehdr + phdr + header(3) + CODE


def flat(load):
    flags = 0x10003
    fields = struct.pack("<IIIII", load + 8, load, 0, load + 0x100, load)
    return CODE + header(flags) + fields + CODE


seeds = {
    "elf32-1mib": prefix(16, [], b"") + elf32(0x100000, 0x40),
    "flat-8000-modules": prefix(0x82, [(2, b"one"), (0, b"empty")], b"console=ttyS0") + flat(0x8000),
    "elf64-virtual-entry": prefix(4, [(1, b"m")], b"x") + elf64(0xFFFFFFFF80000000, 0x200000),
    "bad-checksum": prefix(0, [], b"") + CODE + header(3, 0),
}
for name, data in seeds.items():
    with open("Fuzz/corpus/multiboot/" + name, "wb") as f:
        f.write(data)
