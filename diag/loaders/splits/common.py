"""What the split formats share: one-line causes, index and chunk checks, and how a
table's columns get their roles (label, group, identifier, numeric or text feature)."""

from __future__ import annotations

import math
import os
import re
from abc import abstractmethod
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, TableChunk

# Table columns recognised without --label-column / --group-column (case-insensitive).
LABEL_COLUMNS = ("label", "labels", "target", "y", "class")
GROUP_COLUMNS = (
    "group", "groups", "patient", "patient_id", "subject", "subject_id", "writer", "session",
)  # fmt: skip
# Columns that name a sample rather than describe it: comparing them would make every row
# unique and hide real duplicates.
ID_COLUMNS = frozenset({"id", "uuid", "index", "path", "file", "filename", "image", "url"})
_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)", re.IGNORECASE | re.ASCII
)
_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)
# A value that names a file or a record: a URL, a path, a file name, or a token with a
# digit (img_0017, a UUID). No whitespace, so free text is never taken for an id.
_PATH_LIKE = re.compile(r"[a-z][a-z0-9+.-]*://\S+|\S*[/\\]\S*|[\w.-]+\.[A-Za-z][A-Za-z0-9]{0,4}")
_ID_LIKE = re.compile(r"(?=[\w.:-]*\d)[\w.:-]{1,128}")


def check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")


def check_indices(indices: Sequence[int], n: int) -> np.ndarray:
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise IndexError(f"sample index out of range 0..{n - 1}")
    return wanted


@dataclass
class IdTracker:
    """Whether a column's values are all distinct paths or ids (kept as 8-byte hashes)."""

    alive: bool = True
    hashes: array = field(default_factory=lambda: array("q"))

    def add(self, value: str) -> None:
        if not self.alive:
            return
        value = value.strip()
        if len(value) > 512 or not (_PATH_LIKE.fullmatch(value) or _ID_LIKE.fullmatch(value)):
            self.alive, self.hashes = False, array("q")
            return
        self.hashes.append(hash(value))

    def all_distinct(self, rows: int) -> bool:
        if not self.alive or rows < 2 or len(self.hashes) != rows:
            return False
        return np.unique(np.frombuffer(self.hashes, dtype=np.int64)).size == rows


@dataclass(frozen=True)
class Layout:
    """Which columns of a table are what, once typed."""

    names: tuple[str, ...]
    label: int | None
    group: int | None
    numeric: tuple[int, ...]
    text: tuple[int, ...]
    notes: tuple[str, ...]

    @property
    def kind(self) -> str:
        if self.image_shape is not None:
            return IMAGE
        return TEXT if not self.numeric and len(self.text) == 1 else TABLE

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) when the features are the pixels of flattened images (`pixel0`...)."""
        if self.text:
            return None
        return pixel_grid([self.names[i] for i in self.numeric])

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in (*self.numeric, *self.text))


def find_column(
    path: Path, names: Sequence[str], wanted: str | None, defaults: Sequence[str], role: str
) -> int | None:
    if wanted is not None:
        if wanted in names:
            return list(names).index(wanted)
        raise InputError(path, f"no {role} column {wanted!r} (columns: {names_list(names)})")
    lowered = [n.lower() for n in names]
    return next((lowered.index(d) for d in defaults if d in lowered), None)


def column_roles(
    path: Path, names: Sequence[str], label_column: str | None, group_column: str | None
) -> tuple[int | None, int | None]:
    label = find_column(path, names, label_column, LABEL_COLUMNS, "label")
    group = find_column(path, names, group_column, GROUP_COLUMNS, "group")
    return label, group


def id_by_name(name: str) -> bool:
    low = name.strip().lower()
    return (
        low in ID_COLUMNS or low.endswith("_id") or re.fullmatch(r"unnamed: \d+", low) is not None
    )


def make_layout(
    path: Path,
    names: Sequence[str],
    roles: tuple[int | None, int | None],
    types: Sequence[str],
    id_values: Sequence[bool],
    notes: Sequence[str],
) -> Layout:
    """Split columns into features (numeric, text) and excluded ones, saying why."""
    label, group = roles
    numeric: list[int] = []
    text: list[int] = []
    excluded: list[str] = []
    for i, column in enumerate(names):
        why = (
            "the label" if i == label
            else "the group" if i == group
            else "an identifier (by its name)" if id_by_name(column)
            else "an identifier (all values are distinct paths or ids)" if id_values[i]
            else None if types[i] in ("numeric", "text")
            else f"its type ({types[i]}) is not compared"
        )  # fmt: skip
        if why is not None:
            excluded.append(f"column {column!r} excluded: {why}")
        elif types[i] == "numeric":
            numeric.append(i)
        else:
            text.append(i)
    if not numeric and not text:
        raise InputError(path, "no feature columns left: " + "; ".join(excluded))
    if not numeric and len(text) == 1:  # the rule `Layout.kind` applies
        excluded.append(f"column {names[text[0]]!r} is the only feature: read as text samples")
    return Layout(tuple(names), label, group, tuple(numeric), tuple(text), (*excluded, *notes))


def typed_values(values: list[str]) -> np.ndarray:
    """Labels or groups from text cells: int64 if all are integers, float64 if all are
    numbers (or missing), else strings."""
    stripped = [v.strip() for v in values]
    if all(_INTEGER.fullmatch(v) for v in stripped):
        return np.array([int(v) for v in stripped], dtype=np.int64)
    kinds = [cell_kind(v) for v in stripped]
    if 1 in kinds and 2 not in kinds:
        return np.array([cell_value(v) for v in stripped], dtype=np.float64)
    return string_array(values)


def string_array(values: list[str]) -> np.ndarray:
    # A fixed-width str array is as wide as its longest value times the rows: one huge cell
    # would blow it up, so long values stay Python strings.
    if any(len(v) > 256 for v in values):
        return np.array(values, dtype=object)
    return np.array(values, dtype=str)


def cell_kind(cell: str) -> int:
    """0 missing, 1 number, 2 text. Numbers are strict: no '1_000', no '0x1f'."""
    s = cell.strip()
    if s.lower() in _MISSING:
        return 0
    return 1 if _NUMBER.fullmatch(s) else 2


def cell_value(cell: str) -> float:
    s = cell.strip()
    if s.lower() in _MISSING or not _NUMBER.fullmatch(s):
        return math.nan
    return float(s)


class LazyIds(Sequence[str]):
    """Sample ids named when asked, without holding a string per sample.

    A subclass gives `__len__` and `_id_of(index)`, the id of sample `index` (0 <= index <
    len); indexing (negative too), bounds and slices are this class's.
    """

    @abstractmethod
    def _id_of(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        n = len(self)
        if isinstance(index, slice):
            return [self._id_of(i) for i in range(*index.indices(n))]
        if not -n <= index < n:
            raise IndexError(index)
        return self._id_of(index % n)


class RowIds(LazyIds):
    """ "row 1", "row 2", ... (rows counted from 1)."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def _id_of(self, index: int) -> str:
        return f"row {index + 1}"


_PIXEL_NAME = re.compile(r"(?:pixel|pix|px)[_-]?(\d+)", re.IGNORECASE)
_ROW_COL_NAME = re.compile(r"(\d+)x(\d+)")


def pixel_grid(names: Sequence[str]) -> tuple[int, int] | None:
    """The image shape of columns that hold flattened pixels, in row-major order.

    Kaggle-style `pixel0`...`pixel783` (or `px`, from 0 or 1) make a square image;
    `1x1`...`28x28` name row and column. Pixels are compared as images (shift-robust),
    not as table rows.
    """
    n = len(names)
    if n < 16:
        return None
    numbers = [_PIXEL_NAME.fullmatch(c.strip()) for c in names]
    if all(numbers):
        index = [int(m[1]) for m in numbers]  # type: ignore[index]
        side = math.isqrt(n)
        if side * side == n and index in (list(range(n)), list(range(1, n + 1))):
            return side, side
        return None
    cells = [_ROW_COL_NAME.fullmatch(c.strip()) for c in names]
    if all(cells):
        rc = [(int(m[1]), int(m[2])) for m in cells]  # type: ignore[index]
        h, w = max(r for r, _ in rc), max(c for _, c in rc)
        if h * w == n and rc == [(r, c) for r in range(1, h + 1) for c in range(1, w + 1)]:
            return h, w
    return None


def table_chunk(layout: Layout, rows: Sequence[Sequence[str]]) -> object:
    """The chunk for parsed CSV rows: TableChunk, images, or a list of str for TEXT."""
    if layout.kind == TEXT:
        j = layout.text[0]
        return [row[j] for row in rows]
    numeric = np.array(
        [[cell_value(row[j]) for j in layout.numeric] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(layout.numeric))
    if layout.image_shape is not None:
        return numeric.reshape(len(rows), *layout.image_shape)
    if not layout.text:
        return TableChunk(numeric)
    text = ["|".join(f"{layout.names[j]}={row[j]}" for j in layout.text) for row in rows]
    return TableChunk(numeric, text)


def split_chunk(chunk: object, count: int) -> list[object]:
    """One element per row, for `take`."""
    if isinstance(chunk, TableChunk):
        return [
            TableChunk(chunk.numeric[i : i + 1], None if chunk.text is None else [chunk.text[i]])
            for i in range(count)
        ]
    return list(chunk)  # type: ignore[call-overload]


def inside(real: str, root: str) -> bool:
    return real.startswith(root.rstrip(os.sep) + os.sep)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def short(value: object) -> str:
    text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def names_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(short(n) for n in list(names)[:limit])
    more = len(names) - limit
    return f"{shown}, ... ({more} more)" if more > 0 else shown or "none"


def read_range(source: Any, start: int, stop: int, size: int) -> Iterator[tuple[int, object]]:
    """Samples start..stop-1 of a split in chunks like `chunks` gives: one shard of it.

    Sources that can seek to a sample read the range sequentially (`range_chunks`); the
    others are read through `take`, which every source has.
    """
    check_size(size)
    own = getattr(source, "range_chunks", None)
    if own is not None:
        yield from own(start, stop, size)
        return
    for lo in range(start, stop, size):
        items = source.take(list(range(lo, min(lo + size, stop))))
        if items and isinstance(items[0], TableChunk):
            texts = [t for item in items for t in (item.text or ())]
            numeric = np.concatenate([item.numeric for item in items])
            yield lo, TableChunk(numeric, texts if len(texts) == len(numeric) else None)
        else:
            yield lo, items
