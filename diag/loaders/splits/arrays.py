"""Array samples (from .npy, .npz or .pt): which array is x, y and group, what kind of
samples x holds, and chunked conversion (channels-first images become channels-last).

Array samples: x with ndim >= 3 are images (channels-first (N, C, H, W) becomes channels
last, and a single channel is squeezed so grey images are (H, W) like a decoded PNG), 2-D
(and 1-D numeric) x is a table, 1-D strings are text."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import check_indices, check_size, names_list
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, Split, TableChunk

# Array names accepted in .npz / .pt files, in order of preference.
X_NAMES = ("X", "x", "inputs", "data", "images", "features")
Y_NAMES = ("y", "Y", "labels", "label", "targets", "target")
GROUP_NAMES = ("group", "groups", "subject", "patient", "writer", "session")


@dataclass(frozen=True)
class Member:
    """One array of an array file: its header, and how to get it (mapped where possible)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


class UnopenedMember:
    """An array a split does not use: named (for --label-column), parsed only if picked."""

    def __init__(self, name: str, open_member: Callable[[], Member]) -> None:
        self.name = name
        self.open = open_member


def check_dtype(path: Path, array_name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise InputError(
            path,
            f"array {array_name!r} holds Python objects (a ragged list?): object arrays are not "
            "supported (they would need pickle)",
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(path, f"array {array_name!r}: structured arrays are not supported")
    if dtype.itemsize == 0:
        raise InputError(path, f"array {array_name!r}: zero-size dtype {dtype}")


def pick(names: Iterable[str], wanted: Sequence[str]) -> str | None:
    present = set(names)
    return next((w for w in wanted if w in present), None)


def array_split(
    name: str,
    path: Path,
    members: Mapping[str, Member | UnopenedMember],
    label_column: str | None,
    group_column: str | None,
) -> Split:
    x_name = pick(members, X_NAMES)
    notes: list[str] = []
    if x_name is None and len(members) == 1:
        x_name = next(iter(members))
        if x_name != "x":
            notes.append(f"the only array, {x_name!r}, is read as the samples")
    if x_name is None:
        raise InputError(
            path,
            f"no samples array (expected one named {', '.join(X_NAMES)}; found "
            f"{names_list(list(members))})",
        )
    y_name = label_column if label_column in members else pick(members, Y_NAMES)
    g_name = group_column if group_column in members else pick(members, GROUP_NAMES)
    x = _opened(path, members, x_name)
    kind, channels_first = _array_kind(path, x)
    n = x.shape[0]
    labels = _side_array(path, _opened(path, members, y_name), x_name, n) if y_name else None
    groups = _side_array(path, _opened(path, members, g_name), x_name, n) if g_name else None
    if channels_first:
        notes.append(f"{x_name!r} is channels-first {x.shape[1:]}: read as channels-last")
    if kind == TABLE and len(x.shape) == 1:
        notes.append(f"{x_name!r} is 1-D: read as a table of one feature")
    samples = _ArraySamples(path, x_name, x.load(), kind, channels_first)
    return Split(name, path, kind, samples, labels, groups, notes=tuple(notes))


def _opened(path: Path, members: Mapping[str, Member | UnopenedMember], key: str) -> Member:
    member = members[key]
    if isinstance(member, UnopenedMember):  # named by --label-column: open it now
        return member.open()
    return member


def _array_kind(path: Path, x: Member) -> tuple[str, bool]:
    """(kind, channels_first) of the samples array, after checking it can be samples."""
    shape, dtype = x.shape, x.dtype
    check_dtype(path, x.name, dtype)
    if not shape:
        raise InputError(path, f"array {x.name!r} is 0-d (a single value), not one per sample")
    if shape[0] == 0:
        raise InputError(path, f"array {x.name!r} holds no samples (shape {shape})")
    if 0 in shape[1:]:
        raise InputError(path, f"array {x.name!r} has empty samples (shape {shape})")
    if dtype.kind in "US":
        if len(shape) != 1:
            raise InputError(path, f"string array {x.name!r} must be 1-D, got shape {shape}")
        return TEXT, False
    if dtype.kind not in "biuf":
        raise InputError(
            path, f"array {x.name!r} has dtype {dtype}: expected numbers (images, tables) or text"
        )
    if len(shape) > 4:
        raise InputError(
            path,
            f"array {x.name!r} has shape {shape}: images must be (N, H, W), (N, H, W, C) "
            "or (N, C, H, W)",
        )
    if len(shape) >= 3:
        channels_first = len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) > 4
        return IMAGE, channels_first
    return TABLE, False


def _side_array(path: Path, member: Member, x_name: str, n: int) -> np.ndarray:
    """Labels or groups: 1-D, one per sample, read into memory (they are small)."""
    check_dtype(path, member.name, member.dtype)
    shape = member.shape
    if member.dtype.kind not in "biufUS":
        raise InputError(path, f"array {member.name!r} has dtype {member.dtype}: not labels")
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise InputError(
            path,
            f"array {member.name!r} must be 1-D (one entry per sample), got shape {member.shape}",
        )
    if shape[0] != n:
        raise InputError(
            path, f"array {x_name!r} has {n} samples but {member.name!r} has {shape[0]} entries"
        )
    values = np.array(member.load()).reshape(n)
    if values.dtype.kind == "S":
        return np.array([v.decode("utf-8", "replace") for v in values.tolist()])
    return values.astype(values.dtype.newbyteorder("="), copy=False)


class _ArraySamples:
    """Samples of one array (often a memory map), converted a chunk at a time."""

    def __init__(self, path: Path, name: str, x: np.ndarray, kind: str, channels_first: bool):
        self._path, self._name, self._x = path, name, x
        self._kind, self._channels_first = kind, channels_first

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, self._convert(self._x[start:stop], np.arange(start, stop))

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        if not wanted.size:
            return []
        converted = self._convert(self._x[wanted], wanted)
        if isinstance(converted, TableChunk):
            return [TableChunk(converted.numeric[i : i + 1]) for i in range(len(wanted))]
        return list(converted)

    def _convert(self, block: np.ndarray, where: np.ndarray) -> object:
        # One copy out of the map, in native byte order.
        block = np.array(block, dtype=block.dtype.newbyteorder("="))
        if self._kind == TEXT:
            if block.dtype.kind == "S":
                return [v.decode("utf-8", "replace") for v in block.tolist()]
            return [str(v) for v in block.tolist()]
        if self._kind == TABLE:
            with np.errstate(invalid="ignore"):  # a signalling NaN in float16 warns on cast
                return TableChunk(numeric=block.reshape(len(block), -1).astype(np.float64))
        if self._channels_first:
            block = np.moveaxis(block, 1, -1)
        if block.ndim == 4 and block.shape[-1] == 1:
            block = block[..., 0]
        if block.dtype.kind == "f":
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if not finite.all():
                bad = int(where[int(np.argmin(finite))])
                raise InputError(
                    self._path, f"array {self._name!r}: image #{bad} holds NaN or inf values"
                )
        return np.ascontiguousarray(block)
