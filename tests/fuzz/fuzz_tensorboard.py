"""Fuzz the TensorBoard event-file reader (own protobuf decoder, both record CRCs)."""

from __future__ import annotations

import struct

import google_crc32c
from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def one_input(data: bytes) -> None:
    # The first byte picks the mode. Odd: the rest is the file as is, so framing and CRC
    # checks get fuzzed. Even: each chunk of the rest is framed as a record with good CRCs,
    # so the mutations reach the protobuf decoder instead of dying at the first CRC.
    mode, data = data[:1], data[1:]
    if mode and mode[0] % 2 == 0:
        body = bytearray()
        for chunk in data.split(b"\xfe\xfe"):
            header = struct.pack("<Q", len(chunk))
            body += header + _masked_crc(header) + chunk + _masked_crc(chunk)
        data = bytes(body)
    path = scratch_file("events.out.tfevents.1700000000.fuzz", data)
    check_and_render(logs=[str(path)])


if __name__ == "__main__":
    fuzz(one_input)
