"""Test-only classes and builders for the checkpoint-loader tests.

The classes live here (not in a test module) so that pickles made from them name a stable,
importable module (`helpers_pickles.Color`), the way a user's training code would.
"""

from __future__ import annotations

import enum
import io
import struct
import zipfile
from pathlib import Path
from typing import Any


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class HyperDict(dict):
    """A dict subclass, like Lightning's AttributeDict."""


class Payload:
    """An object that pickles as `func(*args)`: the classic pickle payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def touch_marker(path: str) -> None:
    """A harmless function standing in for attacker code: it creates a file."""
    Path(path).touch()


# ------------------------------------------------------------------ zip archives


def torch_archive(obj: Any) -> dict[str, bytes]:
    """The entries `torch.save(obj)` writes, as {name: bytes}, in order."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(
    path: Path, entries: dict[str, bytes], compressed: frozenset[str] = frozenset()
) -> Path:
    """Write entries as a zip; names in `compressed` are deflated, the rest stored."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            kind = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=kind)
    return path


def data_pkl_name(entries: dict[str, bytes]) -> str:
    return next(n for n in entries if n.endswith("/data.pkl"))


def pickle_zip(path: Path, pickled: bytes) -> Path:
    """A torch-zip-shaped archive whose data.pkl is `pickled` (hand-made, not torch's)."""
    return write_zip(
        path,
        {"archive/data.pkl": pickled, "archive/version": b"3\n", "archive/byteorder": b"little"},
    )


def extend_torch_dict(obj: dict[str, Any], extra_items: bytes) -> dict[str, bytes]:
    """torch.save(obj) with raw pickle `key value SETITEM` opcodes added to its root dict.

    Lets a test put a structure torch's pickler could not write (deep, shared, hostile)
    next to real tensors. `extra_items` must not use memo slots below 100000.
    """
    entries = torch_archive(obj)
    name = data_pkl_name(entries)
    data = entries[name]
    assert data.endswith(b"s.") or data.endswith(b"u."), data[-4:]
    entries[name] = data[:-1] + extra_items + b"."
    return entries


# ------------------------------------------------------------------ pickle opcodes


def op_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def op_put(slot: int) -> bytes:
    return b"r" + struct.pack("<I", slot)  # LONG_BINPUT


def op_get(slot: int) -> bytes:
    return b"j" + struct.pack("<I", slot)  # LONG_BINGET


def shared_lists(levels: int, fanout: int, base: int = 100000) -> bytes:
    """Opcodes leaving on the stack a list DAG: level k holds `fanout` refs to level k-1.

    Small in bytes, but `fanout ** levels` nodes if walked as a tree (a "billion laughs").
    """
    out = [b"]", op_put(base), b"0"]
    for k in range(1, levels + 1):
        out += [b"](", op_get(base + k - 1) * fanout, b"e", op_put(base + k), b"0"]
    out.append(op_get(base + levels))
    return b"".join(out)


def shared_dicts(
    levels: int, keys: tuple[str, ...], leaf: bytes = b"}", base: int = 200000
) -> bytes:
    """Opcodes leaving a dict DAG: level k maps every key in `keys` to level k-1."""
    out = [leaf, op_put(base), b"0"]
    for k in range(1, levels + 1):
        items = b"".join(op_str(key) + op_get(base + k - 1) for key in keys)
        out += [b"}(", items, b"u", op_put(base + k), b"0"]
    out.append(op_get(base + levels))
    return b"".join(out)


def op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def op_tensor(storage_key: str, numel: int) -> bytes:
    """Opcodes for a float32 tensor of shape (numel,), written the way torch writes one."""
    storage = b"(" + op_str("storage") + b"ctorch\nFloatStorage\n" + op_str(storage_key)
    storage += op_str("cpu") + op_int(numel) + b"tQ"  # TUPLE, BINPERSID
    size = op_int(numel) + b"\x85" + op_int(1) + b"\x85"  # (numel,), (1,)
    hooks = b"ccollections\nOrderedDict\n)R"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + op_int(0)
        + size
        + b"\x89"
        + hooks
        + b"tR"
    )


def hand_torch_zip(path: Path, items: bytes, storages: dict[str, bytes]) -> Path:
    """A torch zip whose data.pkl is a dict of hand-written `key value` opcode pairs."""
    entries = {"archive/data.pkl": b"\x80\x02}(" + items + b"u.", "archive/version": b"3\n"}
    entries.update({f"archive/data/{key}": data for key, data in storages.items()})
    return write_zip(path, entries)
