"""Repair the superblock a killed writer (or a full disk) leaves in an HDF5 file.

A file written with ``libver='latest'`` carries a version 2/3 superblock whose consistency flags
are set while a writer has it open. If the writer dies (kill -9, power cut) the flags stay set and
the HDF5 library refuses ordinary opens ("file is already open for write") although every
flushed object is intact. This module resets the flags and the superblock checksum so ordinary
readers can open the file again; when the writer reserved space it could not write (disk full),
the recorded end of file is lowered to the real size. These are the repairs the HDF5 ``h5clear``
tool performs (``h5clear`` and ``h5clear -i``), done here so no extra tool is needed.

Superblock v2/v3 layout (HDF5 File Format Specification, section II.A): signature (8 bytes),
version, size of offsets, size of lengths, consistency flags (1 byte each), four addresses
(base, extension, end-of-file, root object header; ``size of offsets`` bytes each), then a
Jenkins lookup3 checksum of everything before it.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` as used by HDF5 for metadata checksums."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    pos = 0
    while length > 12:
        a = (a + int.from_bytes(data[pos:pos + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[pos + 4:pos + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[pos + 8:pos + 12], "little")) & _MASK
        a = (a - c) & _MASK; a ^= _rot(c, 4); c = (c + b) & _MASK
        b = (b - a) & _MASK; b ^= _rot(a, 6); a = (a + c) & _MASK
        c = (c - b) & _MASK; c ^= _rot(b, 8); b = (b + a) & _MASK
        a = (a - c) & _MASK; a ^= _rot(c, 16); c = (c + b) & _MASK
        b = (b - a) & _MASK; b ^= _rot(a, 19); a = (a + c) & _MASK
        c = (c - b) & _MASK; c ^= _rot(b, 4); b = (b + a) & _MASK
        length -= 12
        pos += 12
    if length == 0:
        return c
    tail = data[pos:pos + length] + b"\0" * (12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    c ^= b; c = (c - _rot(b, 14)) & _MASK
    a ^= c; a = (a - _rot(c, 11)) & _MASK
    b ^= a; b = (b - _rot(a, 25)) & _MASK
    c ^= b; c = (c - _rot(b, 16)) & _MASK
    a ^= c; a = (a - _rot(c, 4)) & _MASK
    b ^= a; b = (b - _rot(a, 14)) & _MASK
    c ^= b; c = (c - _rot(b, 24)) & _MASK
    return c


def _find_superblock(fh) -> int:
    # The superblock sits at 0 or, after a user block, at 512, 1024, 2048, ...
    size = os.fstat(fh.fileno()).st_size
    offset = 0
    while offset + 8 <= size:
        fh.seek(offset)
        if fh.read(8) == SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    raise ValueError("no HDF5 signature found")


def superblock_state(path: str | Path) -> tuple[int, int, int]:
    """Return (consistency flags, stored end-of-file address, actual file size)."""
    with open(path, "rb") as fh:
        base = _find_superblock(fh)
        fh.seek(base + 8)
        version, size_of_offsets, _, flags = fh.read(4)
        size = os.fstat(fh.fileno()).st_size
        if version < 2:
            return 0, size, size
        addrs = fh.read(4 * size_of_offsets)
    base_addr = int.from_bytes(addrs[:size_of_offsets], "little")
    eof = int.from_bytes(addrs[2 * size_of_offsets:3 * size_of_offsets], "little")
    return flags, base_addr + eof, size


def repair_superblock(path: str | Path) -> bool:
    """Make a file left by a writer that died (or hit a full disk) openable again.

    Clears the consistency flags and, when the superblock records an end of file beyond the
    actual file size (space the writer reserved but could not write), lowers it to the actual
    size. Returns True when something was changed. Raises ValueError when the file is not HDF5
    or the superblock checksum does not verify (the file is then left untouched). Only call this
    when no process is writing the file.
    """
    with open(path, "r+b") as fh:
        base = _find_superblock(fh)
        fh.seek(base + 8)
        version, size_of_offsets, _, flags = fh.read(4)
        if version < 2:
            return False
        body_len = 12 + 4 * size_of_offsets
        fh.seek(base)
        body = bytearray(fh.read(body_len))
        (stored,) = struct.unpack("<I", fh.read(4))
        if lookup3(bytes(body)) != stored:
            raise ValueError("HDF5 superblock checksum does not verify; file left untouched")
        o = size_of_offsets
        base_addr = int.from_bytes(body[12:12 + o], "little")
        eof_at = 12 + 2 * o
        eof = int.from_bytes(body[eof_at:eof_at + o], "little")
        size = os.fstat(fh.fileno()).st_size
        changed = False
        if flags:
            body[11] = 0
            changed = True
        if base_addr + eof > size:
            body[eof_at:eof_at + o] = (size - base_addr).to_bytes(o, "little")
            changed = True
        if not changed:
            return False
        fh.seek(base)
        fh.write(bytes(body) + struct.pack("<I", lookup3(bytes(body))))
        fh.flush()
        os.fsync(fh.fileno())
    return True
