"""W&B run files built by hand, for the cases the real `wandb` cannot be made to write.

Payloads are serialised by wandb's own protobuf classes (the real schema); the framing
(header, 32 KiB blocks, FULL/FIRST/MIDDLE/LAST records, IEEE CRC of type + data) is
written here, independently of diag's reader, from the format's description.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
FRAME = 7


def frame_record(kind: int, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(bytes([kind])))
    return struct.pack("<IHB", crc, len(data), kind) + data


def frame(payloads: Iterable[bytes], header: bytes = HEADER) -> bytes:
    """A whole run file holding `payloads` in order."""
    out = bytearray(header)
    for payload in payloads:
        pos, first = 0, True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < FRAME:
                out += b"\x00" * left
                continue
            # With exactly 7 bytes left, a payload starts with an empty FIRST, as in LevelDB.
            chunk = payload[pos : pos + left - FRAME]
            last = pos + len(chunk) == len(payload)
            kind = (1 if last else 2) if first else (4 if last else 3)  # FULL FIRST LAST MIDDLE
            out += frame_record(kind, chunk)
            pos, first = pos + len(chunk), False
            if last:
                break
    return bytes(out)


def record_offsets(blob: bytes) -> list[int]:
    """Where each record's frame starts, for tests that damage one."""
    offsets, pos = [], FRAME
    while pos + FRAME <= len(blob):
        left = BLOCK - pos % BLOCK
        if left < FRAME:
            pos += left
            continue
        (length,) = struct.unpack_from("<H", blob, pos + 4)
        offsets.append(pos)
        pos += FRAME + length
    return offsets


def history(items: dict[str, str], step: int | None = None, old_style: bool = False) -> bytes:
    """A `Record{history}`: items as key -> value_json, `_step` added when `step` is given.

    `old_style` puts names in `key` (wandb < 0.18's Python backend) instead of `nested_key`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    if step is not None:
        items = {**items, "_step": str(step)}
    for name, value_json in items.items():
        item = record.history.item.add()
        if old_style:
            item.key = name
        else:
            item.nested_key.append(name)
        item.value_json = value_json
    if step is not None:
        record.history.step.num = step
    return record.SerializeToString()


def run_record(run_id: str, name: str = "", project: str = "p") -> bytes:
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    record.run.run_id = run_id
    record.run.display_name = name
    record.run.project = project
    return record.SerializeToString()


def exit_record(code: int = 0) -> bytes:
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    record.exit.exit_code = code
    return record.SerializeToString()


def payloads(blob: bytes) -> list[bytes]:
    """The payloads of a run file, split records joined (no checks: for seeds and tests)."""
    out, parts = [], []
    for offset in record_offsets(blob):
        length, kind = struct.unpack_from("<HB", blob, offset + 4)
        parts.append(blob[offset + FRAME : offset + FRAME + length])
        if kind in (1, 4):
            out.append(b"".join(parts))
            parts = []
    return out
