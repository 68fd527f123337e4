#!/usr/bin/env python3
"""Independent generator of the known-answer headers in `known_answers.rs`.

Builds each header byte by byte from the layout in docs/protocol.md and checksums it with
Python's zlib.crc32 (CRC-32/IEEE, the same as Go's crc32.ChecksumIEEE). Run it and compare
with the hex in known_answers.rs:

    python3 crates/proto/tests/make_vectors.py
"""
import struct
import zlib


def header(version: bytes, host: bytes, port: bytes, flags=None) -> bytes:
    b = version.ljust(8, b"\0")
    b += bytes([len(host)]) + host.ljust(255, b"\0")
    b += bytes([len(port)]) + port.ljust(5, b"\0")
    if flags is not None:
        b += bytes([flags])
    return b + struct.pack(">I", zlib.crc32(b) & 0xFFFFFFFF)


LONG = bytes(ord("a") + i % 26 for i in range(255))
CASES = [
    ("V0_1_0_0_SHORT_HOST", header(b"0.1.0.0", b"example.com", b"443")),
    ("V0_1_0_0_LONG_HOST", header(b"0.1.0.0", LONG, b"65535")),
    ("V0_1_0_0_IPV6", header(b"0.1.0.0", b"2001:db8::1", b"53")),
    ("V0_1_0_0_IPV4", header(b"0.1.0.0", b"127.0.0.1", b"1")),
    ("V0_1_0_SHORT_HOST", header(b"0.1.0", b"example.com", b"443", 0)),
    ("V0_1_0_LONG_HOST", header(b"0.1.0", LONG, b"65535", 0)),
    ("V0_1_0_IPV6", header(b"0.1.0", b"2001:db8::1", b"53", 0)),
    ("V0_1_0_HEALTH_CHECK", header(b"0.1.0", b"", b"", 1)),
]

if __name__ == "__main__":
    for name, data in CASES:
        print(f"{name} len={len(data)} crc={data[-4:].hex()}")
        print(data.hex())
