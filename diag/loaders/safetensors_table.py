"""safetensors files: the header validated by hand, each tensor read by offset on demand.

Tensors are read with positional reads into fresh buffers rather than through a memory map,
so the pages of tensors already visited are never part of diag's resident memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import InputError
from diag.loaders.rawfile import FileSpan, RawFile
from diag.loaders.table import ITEMSIZE, TensorInfo

if TYPE_CHECKING:
    import torch

MAX_HEADER = 100_000_000
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool",
}  # fmt: skip


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse and validate the header: {name: entry}, metadata, data offset. Raises InputError.

    After this, every entry's span is known to lie inside the file without overlaps.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(path, "truncated safetensors file (no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n + 8 > size:
            raise InputError(
                path, f"safetensors header length {n} is invalid for a {size}-byte file"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise InputError(path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    spans = []
    for name, entry in header.items():
        try:
            start, end = entry["data_offsets"]
            shape = [int(d) for d in entry["shape"]]
            dtype = DTYPES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"safetensors entry {name!r} is malformed") from None
        count = 1
        for d in shape:
            if d < 0:
                raise InputError(path, f"safetensors entry {name!r} has a negative dimension")
            count *= d
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise InputError(path, f"safetensors entry {name!r} has invalid offsets")
        if end - start != count * ITEMSIZE[dtype]:
            raise InputError(path, f"safetensors entry {name!r}: offsets disagree with its shape")
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise InputError(path, f"safetensors entry {name!r} overlaps or leaves a gap")
        pos = end
    if 8 + n + pos != size:
        raise InputError(path, "truncated or padded safetensors file (data size mismatch)")
    return header, meta if isinstance(meta, dict) else {}, 8 + n


class SafetensorsTable:
    format = "safetensors"

    def __init__(self, path: Path) -> None:
        self.path = path
        header, self.metadata, self._data_start = read_header(path)
        # Header order is alphabetical in practice; offset order is the order written.
        entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        self._infos = [
            TensorInfo(name, tuple(int(d) for d in e["shape"]), DTYPES[e["dtype"]])
            for name, e in entries
        ]
        self._by_name = {i.name: i for i in self._infos}
        self._offsets = {name: tuple(e["data_offsets"]) for name, e in entries}
        self._file = RawFile(path)

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def span(self, name: str) -> FileSpan | None:
        start, end = self._offsets[name]
        return FileSpan(self._file, self._data_start + start, end - start) if end > start else None

    def read(self, name: str) -> torch.Tensor:
        import torch

        info = self._by_name[name]
        dtype = getattr(torch, info.dtype)
        start, end = self._offsets[name]
        if end == start:
            return torch.empty(info.shape, dtype=dtype)
        buf = bytearray(end - start)
        try:
            self._file.readinto(self._data_start + start, memoryview(buf), f"tensor {name!r}")
        except OSError as exc:
            raise InputError(self.path, f"cannot read tensor {name!r} ({exc})") from None
        return torch.frombuffer(buf, dtype=dtype).view(info.shape)

    def close(self) -> None:
        self._file.close()
