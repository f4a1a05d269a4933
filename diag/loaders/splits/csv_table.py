"""CSV / TSV, streamed twice: a first pass types the columns and keeps only labels, groups
and one byte offset per row (so `take` can seek); `chunks` parses the rows again."""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from diag.errors import InputError
from diag.loaders.splits.common import (
    IdTracker,
    Layout,
    RowIds,
    cell_kind,
    check_indices,
    check_size,
    column_roles,
    make_layout,
    one_line,
    split_chunk,
    table_chunk,
    typed_values,
)
from diag.loaders.splits.model import Split

# csv reads a line at a time; a file without newlines would otherwise be read whole.
MAX_LINE_BYTES = 16 * 1024**2


class _LineFeed:
    """Decoded lines of a binary file from an offset, for csv.reader; tracks the byte
    position so each row's start can be recorded (and sought back to)."""

    def __init__(self, path: Path, fh: IO[bytes], offset: int) -> None:
        self.path, self.fh, self.pos = path, fh, offset
        self.line = 0
        self._first = offset == 0
        fh.seek(offset)

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = self.fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise InputError(self.path, f"a line longer than {MAX_LINE_BYTES} bytes: not a CSV")
        self.pos += len(raw)
        self.line += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(self.path, f"not UTF-8 text (line {self.line})") from None
        if "\0" in text:  # csv accepts NUL since 3.11; in a text table it means binary data
            raise InputError(self.path, f"malformed CSV (line {self.line}): a NUL byte")
        if self._first:
            self._first = False
            text = text.removeprefix("\ufeff")
        return text


def _csv_rows(
    path: Path, fh: IO[bytes], offset: int, delimiter: str
) -> Iterator[tuple[int, list[str]]]:
    """(byte offset of the row, cells) for each non-blank row from `offset`."""
    feed = _LineFeed(path, fh, offset)
    # strict: an unclosed quote or text after a closing quote is an error, not a guess.
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    while True:
        start = feed.pos
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"line {feed.line}" if offset == 0 else f"the row at byte {start}"
            raise InputError(path, f"malformed CSV ({where}): {one_line(exc)}") from None
        if row:
            yield start, row


def _sniff_delimiter(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            first = fh.readline(64 * 1024).decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _column_names(raw: list[str]) -> tuple[list[str], list[str]]:
    """Header cells made unique; empty ones named like pandas' `Unnamed: 0` index column."""
    names: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for i, cell in enumerate(raw):
        base = cell.strip() or f"Unnamed: {i}"
        unique, k = base, 1
        while unique in seen:
            unique, k = f"{base}.{k}", k + 1
        if unique != base:
            notes.append(f"duplicate column {base!r} renamed {unique!r}")
        seen.add(unique)
        names.append(unique)
    return names, notes


@dataclass
class _CsvScan:
    """What the first pass keeps: one offset per row, labels, groups, column counts."""

    names: list[str]
    offsets: array
    counts: list[list[int]]  # per column: missing, number, text cells (plain ints: fast)
    id_trackers: list[IdTracker | None]
    labels: list[str]
    groups: list[str]
    ragged: int
    notes: list[str]


def open_csv(
    name: str,
    path: Path,
    delimiter: str | None,
    label_column: str | None,
    group_column: str | None,
) -> Split:
    delimiter = delimiter or _sniff_delimiter(path)
    scan, roles = _scan_csv(path, delimiter, label_column, group_column)
    rows = len(scan.offsets)
    if rows == 0:
        raise InputError(path, "no data rows (a header only)")
    types, notes = [], list(scan.notes)
    for i, column in enumerate(scan.names):
        _missing, numbers, texts = scan.counts[i]
        is_text = texts * 2 > numbers + texts
        types.append("text" if is_text else "numeric")
        if texts and not is_text and i not in roles:
            notes.append(f"column {column!r}: {texts} non-numeric cells read as missing (NaN)")
    if scan.ragged:
        notes.append(f"{scan.ragged} rows do not have one cell per column (padded or cut)")
    id_values = [t is not None and t.all_distinct(rows) for t in scan.id_trackers]
    layout = make_layout(path, scan.names, roles, types, id_values, notes)
    labels = typed_values(scan.labels) if roles[0] is not None else None
    groups = typed_values(scan.groups) if roles[1] is not None else None
    samples = _CsvSamples(path, delimiter, scan.offsets, layout)
    return Split(
        name, path, layout.kind, samples, labels, groups, RowIds(rows), layout.columns,
        layout.notes,
    )  # fmt: skip


def _scan_csv(
    path: Path, delimiter: str, label_column: str | None, group_column: str | None
) -> tuple[_CsvScan, tuple[int | None, int | None]]:
    try:
        with path.open("rb") as fh:
            rows = _csv_rows(path, fh, 0, delimiter)
            first = next(rows, None)
            if first is None:
                raise InputError(path, "empty CSV (no header row)")
            names, notes = _column_names(first[1])
            roles = column_roles(path, names, label_column, group_column)
            scan = _CsvScan(
                names, array("q"), [[0, 0, 0] for _ in names],
                [None if i in roles else IdTracker() for i in range(len(names))], [], [], 0, notes,
            )  # fmt: skip
            for start, cells in rows:
                _scan_row(scan, roles, start, cells)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    return scan, roles


def _scan_row(
    scan: _CsvScan, roles: tuple[int | None, int | None], start: int, cells: list[str]
) -> None:
    width = len(scan.names)
    if len(cells) != width:
        scan.ragged += 1
        cells = _fit(cells, width)
    scan.offsets.append(start)
    label, group = roles
    for i, cell in enumerate(cells):
        if i == label:
            scan.labels.append(cell)
        elif i == group:
            scan.groups.append(cell)
        else:
            kind = cell_kind(cell)
            scan.counts[i][kind] += 1
            tracker = scan.id_trackers[i]
            if tracker is not None and tracker.alive:
                if kind == 2:
                    tracker.add(cell)
                else:
                    tracker.alive = False


def _fit(cells: list[str], width: int) -> list[str]:
    return cells[:width] + [""] * (width - len(cells))


class _CsvSamples:
    """CSV rows parsed again on demand; `take` seeks to the offsets the scan recorded."""

    def __init__(self, path: Path, delimiter: str, offsets: array, layout: Layout) -> None:
        self._path, self._delimiter = path, delimiter
        self._offsets, self._layout = offsets, layout

    def __len__(self) -> int:
        return len(self._offsets)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        width, n, done = len(self._layout.names), len(self), 0
        with self._open() as fh:
            batch: list[list[str]] = []
            for _start, cells in _csv_rows(self._path, fh, self._offsets[0], self._delimiter):
                batch.append(cells if len(cells) == width else _fit(cells, width))
                if len(batch) == size or done + len(batch) == n:
                    yield done, table_chunk(self._layout, batch)
                    done, batch = done + len(batch), []
                if done == n:
                    break
        if done != n:
            raise InputError(self._path, "the file changed while it was being read")

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        width, rows = len(self._layout.names), {}
        with self._open() as fh:
            for i in sorted(set(wanted.tolist())):
                row = next(_csv_rows(self._path, fh, self._offsets[i], self._delimiter), None)
                if row is None:
                    raise InputError(self._path, "the file changed while it was being read")
                rows[i] = _fit(row[1], width)
        chunk = table_chunk(self._layout, [rows[i] for i in wanted.tolist()])
        return split_chunk(chunk, len(wanted))

    def _open(self) -> IO[bytes]:
        try:
            return self._path.open("rb")
        except OSError as exc:
            raise InputError(self._path, f"cannot read ({exc.strerror or exc})") from None
