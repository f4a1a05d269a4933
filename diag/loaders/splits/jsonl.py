"""JSON Lines splits (`.jsonl`, `.ndjson`, `datasets`' `to_json`): one JSON object per line,
read as text samples (see `text_records` for which fields hold the text).

Streamed twice, like CSV: a first pass validates every line and keeps only labels, groups
and one byte offset per record (so `take` can seek); `chunks` parses the lines again. A
split may span several files (the JSONL shards of a Hub dataset repository).
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from diag.errors import InputError
from diag.loaders.splits.common import (
    GROUP_COLUMNS,
    LABEL_COLUMNS,
    LazyIds,
    check_indices,
    check_size,
    names_list,
    one_line,
    typed_values,
)
from diag.loaders.splits.model import TEXT, Split
from diag.loaders.splits.text_records import RecordError, record_text, text_layout

# A record is read whole; a file without newlines would otherwise be one giant read.
MAX_LINE_BYTES = 16 * 1024**2
MAX_RECORDS = 50_000_000


@dataclass
class _Scan:
    """What the first pass keeps: where each record is, and its label and group."""

    layout: str | None = None
    label: str | None = None
    group: str | None = None
    files: array = field(default_factory=lambda: array("i"))
    offsets: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


def open_jsonl(
    name: str,
    paths: Sequence[Path],
    label_column: str | None,
    group_column: str | None,
    source: Path | None = None,
) -> Split:
    """Open one or more JSON Lines files, in order, as the split `name`."""
    scan = _Scan()
    for k, path in enumerate(paths):
        with _open(path) as fh:
            for offset, line_no, record in _records(path, fh, 0):
                if scan.layout is None:
                    _first_record(path, line_no, record, scan, label_column, group_column)
                _scan_record(path, line_no, record, scan)
                scan.files.append(k)
                scan.offsets.append(offset)
                scan.lines.append(line_no)
                if len(scan.offsets) > MAX_RECORDS:
                    raise InputError(path, f"more than {MAX_RECORDS} records")
    if not scan.offsets:
        raise InputError(paths[0], "no JSON records (an empty file?)")
    labels = typed_values(scan.labels) if scan.label is not None else None
    groups = typed_values(scan.groups) if scan.group is not None else None
    samples = _JsonlSamples(list(paths), scan)
    ids = _LineIds(list(paths), scan.files, scan.lines)
    notes = (f"text from the {scan.layout!r} field" + ("s" if scan.layout == "messages" else ""),)
    return Split(
        name, source or paths[0], TEXT, samples, labels, groups, ids, (str(scan.layout),), notes
    )


def _first_record(
    path: Path,
    line_no: int,
    record: dict,
    scan: _Scan,
    label_column: str | None,
    group_column: str | None,
) -> None:
    keys = list(record)
    scan.layout = text_layout(keys)
    if scan.layout is None:
        raise InputError(
            path,
            f"line {line_no}: no text field (expected 'text', 'content', 'prompt' and "
            f"'completion', or 'messages'; found {names_list(keys)})",
        )
    scan.label = _role(path, line_no, keys, label_column, LABEL_COLUMNS, "label")
    scan.group = _role(path, line_no, keys, group_column, GROUP_COLUMNS, "group")


def _role(
    path: Path,
    line_no: int,
    keys: list[str],
    wanted: str | None,
    defaults: Sequence[str],
    role: str,
) -> str | None:
    if wanted is not None:
        if wanted in keys:
            return wanted
        raise InputError(path, f"line {line_no}: no {role} field {wanted!r} ({names_list(keys)})")
    lowered = {k.lower(): k for k in reversed(keys)}
    return next((lowered[d] for d in defaults if d in lowered), None)


def _scan_record(path: Path, line_no: int, record: dict, scan: _Scan) -> None:
    try:
        record_text(record, str(scan.layout))
    except RecordError as exc:
        raise InputError(path, f"line {line_no}: {exc}") from None
    if scan.label is not None:
        scan.labels.append(_cell(record.get(scan.label)))
    if scan.group is not None:
        scan.groups.append(_cell(record.get(scan.group)))


def _cell(value: object) -> str:
    """A label or group value as the text a CSV cell would hold (typed later, all at once)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _records(path: Path, fh: IO[bytes], offset: int) -> Iterator[tuple[int, int, dict]]:
    """(byte offset, line number, object) for every non-blank line from `offset`.

    Line numbers count from `offset`, so they are true line numbers only from 0."""
    fh.seek(offset)
    pos, line_no = offset, 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        start, pos = pos, pos + len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise InputError(path, f"line {line_no} is longer than {MAX_LINE_BYTES} bytes")
        if not raw.strip():
            continue
        yield start, line_no, _parse(path, raw, line_no, last=not raw.endswith(b"\n"))


def _parse(path: Path, raw: bytes, line_no: int, *, last: bool) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"line {line_no}: not UTF-8 (byte {exc.start + 1})") from None
    if line_no == 1:
        text = text.removeprefix("\ufeff")
    try:
        record = json.loads(text)
    # json raises ValueError on bad JSON and huge ints, RecursionError on deep nesting.
    except (ValueError, RecursionError) as exc:
        hint = " (the file ends mid-record: truncated?)" if last else ""
        raise InputError(path, f"invalid JSON at line {line_no}{hint}: {one_line(exc)}") from None
    if not isinstance(record, dict):
        kind = "null" if record is None else f"a {type(record).__name__}"
        raise InputError(path, f"line {line_no} is {kind}, not a JSON object")
    return record


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None


class _JsonlSamples:
    """Records parsed again on demand; `take` seeks to the offsets the scan recorded."""

    def __init__(self, paths: list[Path], scan: _Scan) -> None:
        self._paths, self._scan = paths, scan
        self._layout = str(scan.layout)

    def __len__(self) -> int:
        return len(self._scan.offsets)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        done, batch = 0, []
        for k, path in enumerate(self._paths):
            with _open(path) as fh:
                for _offset, line_no, record in _records(path, fh, 0):
                    batch.append(self._text(path, line_no, record))
                    if len(batch) == size:
                        yield done, batch
                        done, batch = done + size, []
            if done + len(batch) != self._count_through(k):
                raise InputError(path, "the file changed while it was being read")
        if batch:
            yield done, batch

    def range_chunks(self, start: int, stop: int, size: int) -> Iterator[tuple[int, object]]:
        """Samples start..stop-1 in chunks, read sequentially from the first one's offset
        (a shard of the split, for an engine that reads shards in parallel)."""
        check_size(size)
        i, batch, first = start, [], start
        while i < stop:
            k = self._scan.files[i]
            path = self._paths[k]
            with _open(path) as fh:
                for _offset, _line, record in _records(path, fh, self._scan.offsets[i]):
                    batch.append(self._text(path, self._scan.lines[i], record))
                    i += 1
                    if len(batch) == size:
                        yield first, batch
                        first, batch = i, []
                    if i >= stop or self._scan.files[i] != k:
                        break
        if batch:
            yield first, batch

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        found: dict[int, str] = {}
        for i in sorted(set(wanted.tolist())):
            path = self._paths[self._scan.files[i]]
            with _open(path) as fh:
                record = next(_records(path, fh, self._scan.offsets[i]), None)
            if record is None:
                raise InputError(path, "the file changed while it was being read")
            found[i] = self._text(path, self._scan.lines[i], record[2])
        return [found[i] for i in wanted.tolist()]

    def _text(self, path: Path, line_no: int, record: dict) -> str:
        try:
            return record_text(record, self._layout)
        except RecordError as exc:
            raise InputError(path, f"line {line_no}: {exc}") from None

    def _count_through(self, k: int) -> int:
        """Records in files 0..k (the scan appended file indices in order)."""
        return bisect.bisect_right(self._scan.files, k)


class _LineIds(LazyIds):
    """'line 17' (or 'train-00001.jsonl line 17' across files) without a string per record."""

    def __init__(self, paths: list[Path], files: array, lines: array) -> None:
        self._names = [p.name for p in paths] if len(paths) > 1 else None
        self._files, self._lines = files, lines

    def __len__(self) -> int:
        return len(self._lines)

    def _id_of(self, index: int) -> str:
        line = f"line {self._lines[index]}"
        return line if self._names is None else f"{self._names[self._files[index]]} {line}"
