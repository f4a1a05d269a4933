"""Weights & Biases run files (`run-<id>.wandb`) -> `LogRun`s, read without wandb or protobuf.

Every W&B run, online or offline, writes its whole history to a local transaction log,
`wandb/run-<time>-<id>/run-<id>.wandb` (`offline-run-...` offline). Reading it needs no
account, no network and no wandb install, and it holds every point exactly as logged.

The file is a 7-byte header (`:W&B`, u16 magic 0xBEE1, u8 version 0) followed by LevelDB's
log format: 32 KiB blocks of records, each

    u32 crc · u16 length · u8 type (1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST) · data

where the CRC is the plain (unmasked) IEEE CRC-32 of the type byte and the data, and a
block's last < 7 bytes are zero padding. A payload longer than a block is cut into a
FIRST, MIDDLE... and LAST record. Each payload is a `Record` protobuf; we decode the few
fields the metrics live in and skip everything else by its wire type:

    Record         history=2 HistoryRecord, config=5 ConfigRecord, run=17 RunRecord,
                   exit=18 RunExitRecord (members of one oneof; summary=3 and the rest skipped)
    HistoryRecord  item=1 repeated HistoryItem, step=2 HistoryStep{num=1 int64}
    HistoryItem    key=1 string, nested_key=2 repeated string, value_json=16 string
    RunRecord      run_id=1, project=3, display_name=8, config=4 ConfigRecord
    ConfigRecord   update=1 repeated ConfigItem{key=1, nested_key=2, value_json=16}
    RunExitRecord  exit_code=1 int32

A history record is one `wandb.log` call: its items in no fixed order, wandb's own `_step`,
`_timestamp` and `_runtime` among them. The step of a row is the trainer's global step when
the row logs one (`train/global_step` from the HF Trainer, `trainer/global_step` from
Lightning, which W&B itself plots against), else `_step`.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import InputError
from diag.loaders.logs import is_folder
from diag.loaders.logs.protowire import (
    MAX_GROUP_DEPTH,
    Malformed,
    delimited,
    field_key,
    last_varint,
    past_the_end,
    signed64,
    skip_field,
)
from diag.loaders.logs.series import LogRun, Series

SUFFIX = ".wandb"
MAGIC = b":W&B\xe1\xbe"  # ident, then the u16 0xBEE1 little-endian
VERSION = 0
BLOCK = 32 * 1024
FRAME = 7  # record header: crc, length, type

# A sanity bound on one reassembled record. History rows are hundreds of bytes; a run
# record with a big config reaches tens of kB. Larger is refused as corruption.
MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_SERIES = 10_000  # distinct metric names per run
MAX_NAME_BYTES = 1024  # a longer key is no metric name; its points are skipped
MAX_NUMBER_BYTES = 64  # value_json longer than this is no number (JSON text of a float is < 25)
MAX_POINTS = 50_000_000  # per call: ~1 GB of arrays at 16 bytes a point plus rows
MAX_CONFIG_ITEMS = 2_000
MAX_CONFIG_VALUE_BYTES = 4096
MAX_FILES = 1_000  # .wandb files per call
MAX_DEPTH = 8  # folder levels searched below the given folder
MAX_FOLDERS = 20_000

_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# A record's CRC covers its type byte first; start each CRC from the type byte's CRC.
_TYPE_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (_FULL, _FIRST, _MIDDLE, _LAST)}
_FRAME = struct.Struct("<IHB")
_INT64_RANGE = (-(2**63), 2**63 - 1)

# Record fields that share the `record_type` oneof with history, config, run and exit.
_RECORD_ONEOF = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 20, 21, 22, 23})
_RECORD_ONEOF |= frozenset({24, 25, 26, 27, 100})

# What a history key is used for.
_SERIES, _STEP, _GLOBAL_STEP, _TIME, _EPOCH, _IGNORED = range(6)
_SPECIAL = {
    "_step": _STEP,
    "_timestamp": _TIME,
    "_runtime": _IGNORED,
    "train/global_step": _GLOBAL_STEP,  # HF Trainer's WandbCallback
    "trainer/global_step": _GLOBAL_STEP,  # Lightning's WandbLogger
    "train/epoch": _EPOCH,  # HF Trainer
    "epoch": _EPOCH,  # Lightning
}
# Keys that are also kept as series (the epoch is a curve users look at).
_ALSO_SERIES = {_EPOCH, _GLOBAL_STEP}

_RUN_FOLDER = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9_-]+)$")
_RUN_FILE = re.compile(r"^run-([A-Za-z0-9_-]+)\.wandb$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def is_wandb_file(path: Path) -> bool:
    """A W&B run file, by name (`*.wandb`) or by its first bytes."""
    path = Path(path)
    if path.name.endswith(SUFFIX):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def is_run_folder(folder: Path) -> bool:
    """A folder wandb made for one run: `run-<time>-<id>` or `offline-run-<time>-<id>`."""
    return _RUN_FOLDER.match(Path(folder).name) is not None


def find_wandb_files(root: Path) -> list[Path]:
    """The `.wandb` run files under `root` (a project, a `wandb/` folder or a run folder).

    Symbolic links are not followed, so `wandb/latest-run` (a link to the newest run
    folder) is not read twice, and nothing outside `root` is read. The walk is bounded.
    """
    found: list[Path] = []
    pending: list[tuple[Path, int]] = [(Path(root), 0)]
    folders = 0
    while pending:
        folder, depth = pending.pop()
        folders += 1
        if folders > MAX_FOLDERS:
            raise InputError(root, f"more than {MAX_FOLDERS} folders to search; point at a run")
        try:
            with os.scandir(folder) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(folder, f"cannot list folder: {exc.strerror or exc}") from exc
        here = [
            Path(e.path)
            for e in listing
            if e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False)
        ]
        found.extend(here)
        if len(found) > MAX_FILES:
            raise InputError(root, f"more than {MAX_FILES} W&B run files; point at one run")
        if here and is_run_folder(folder):
            continue  # a run folder's files/, logs/ and tmp/ hold no other run
        if depth < MAX_DEPTH:
            pending.extend(
                (Path(e.path), depth + 1)
                for e in reversed(listing)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            )
    return found


def read_wandb(path: Path) -> list[LogRun]:
    """The runs of a `.wandb` file, or of every `.wandb` file under a folder.

    A folder gives one `LogRun` per W&B run: a resumed run writes a new run folder with the
    same run id, and its files are read as one run in folder-name (= start time) order.
    A last record cut short (a run still being written) is noted in `LogRun.notes`; any
    other damage raises `InputError` naming the file.
    """
    path = Path(path)
    is_dir = is_folder(path)
    files = find_wandb_files(path) if is_dir else [path]
    if not files:
        raise InputError(path, "no W&B run files (run-*.wandb) in this folder")
    return read_wandb_files(files)


def read_wandb_files(files: list[Path]) -> list[LogRun]:
    """One `LogRun` per run id among `files`, the files of a resumed run in time order."""
    if len(files) > MAX_FILES:
        raise InputError(files[0].parent, f"more than {MAX_FILES} W&B run files; point at one run")
    groups: dict[str, list[Path]] = {}
    for file in files:
        match = _RUN_FILE.match(file.name)
        groups.setdefault(match[1] if match else str(file), []).append(file)
    budget = [MAX_POINTS]
    runs = []
    for group in groups.values():
        group.sort(key=lambda f: (f.parent.name.split("run-", 1)[-1], str(f)))
        runs.append(_read_run(group, budget))
    return _unique_labels(runs)


def _unique_labels(runs: list[LogRun]) -> list[LogRun]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.run] = counts.get(run.run, 0) + 1
    out = []
    for run in runs:
        if counts[run.run] > 1:  # the same run copied twice: tell the copies apart by folder
            label = f"{run.run} [{run.source.parent.name}]"
            run = LogRun(run.source, run.format, run.series, label, run.meta, run.notes)
        out.append(run)
    return out


@dataclass
class _Metric:
    """One metric's points: the row each was logged in, and its value."""

    name: str
    rows: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))


@dataclass
class _RunState:
    """What the files of one run add up to."""

    budget: list[int]
    metrics: dict[bytes, tuple[int, _Metric | None]] = field(default_factory=dict)
    n_series: int = 0
    steps: array = field(default_factory=lambda: array("q"))  # per row
    walls: array = field(default_factory=lambda: array("d"))  # per row, NaN if not logged
    epochs: array = field(default_factory=lambda: array("d"))  # per row, NaN if not logged
    any_epoch: bool = False
    run_id: str = ""
    name: str = ""
    project: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)
    skipped_names: int = 0


def _read_run(files: list[Path], budget: list[int]) -> LogRun:
    state = _RunState(budget)
    for file in files:
        state.exit_code = None  # a resumed run's earlier file ends with its own exit
        _read_file(file, state)
    if state.exit_code is None:
        state.notes.append(f"{files[-1]}: no exit record: the run was still running or died")
    elif state.exit_code != 0:
        state.notes.append(f"{files[-1]}: the run exited with code {state.exit_code}")
    if state.skipped_names:
        state.notes.append(
            f"{state.skipped_names} point(s) under names longer than {MAX_NAME_BYTES} bytes skipped"
        )
    steps = np.frombuffer(state.steps, dtype=np.int64)
    walls = np.frombuffer(state.walls, dtype=np.float64)
    epochs = np.frombuffer(state.epochs, dtype=np.float64) if state.any_epoch else None
    series = {}
    for _role, metric in state.metrics.values():
        if metric is None or not metric.values or metric.name in series:
            continue
        rows = np.frombuffer(metric.rows, dtype=np.int64)
        series[metric.name] = Series(
            name=metric.name,
            steps=steps[rows],
            values=np.frombuffer(metric.values, dtype=np.float64).copy(),
            epochs=None if epochs is None else epochs[rows],
            wall_times=walls[rows],
        )
    run_id = state.run_id or _file_run_id(files[-1])
    label = f"{state.name} ({run_id})" if state.name and run_id else state.name or run_id
    meta: dict[str, Any] = {"run_id": run_id, "project": state.project, "hparams": state.hparams}
    source = files[-1]
    return LogRun(source, "wandb", series, label, meta, tuple(state.notes))


def _file_run_id(file: Path) -> str:
    match = _RUN_FILE.match(file.name)
    return match[1] if match else ""


def _clean(raw: bytes, limit: int = 200) -> str:
    """A name from the file, as text that cannot break a one-line message."""
    text = raw.decode("utf-8", errors="replace")
    return _UNPRINTABLE.sub("?", text)[:limit]


def _read_file(file: Path, state: _RunState) -> None:
    """Add the rows of one run file to `state`.

    The file is memory-mapped; W&B only ever appends to it, so the size seen at open time
    is a consistent snapshot while the run is still writing.
    """
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                state.notes.append(f"{file}: empty (the run had just started?)")
                return
            buf = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(file, f"cannot read: {cause}") from exc
    try:
        _check_header(file, buf, size)
        for offset, data in _payloads(file, buf, size, state.notes):
            try:
                _decode_record(data, state)
            except Malformed as exc:
                raise InputError(
                    file, f"corrupt W&B run file: malformed record at byte {offset} ({exc})"
                ) from None
    finally:
        buf.close()


def _check_header(file: Path, buf: mmap.mmap, size: int) -> None:
    head = buf[:FRAME]
    if head[: min(size, len(MAGIC))] != MAGIC[: min(size, len(MAGIC))]:
        raise InputError(file, "not a W&B run file (no :W&B header)")
    if size < FRAME:
        raise InputError(file, f"W&B run file cut short in its {FRAME}-byte header")
    if head[6] != VERSION:
        raise InputError(file, f"W&B run file of version {head[6]}; diag reads version {VERSION}")


def _payloads(
    file: Path, buf: mmap.mmap, size: int, notes: list[str]
) -> Iterator[tuple[int, bytes]]:
    """Frame and CRC-check every record -> (offset of its first record, whole payload)."""
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    type_crc = _TYPE_CRC
    parts: list[bytes] | None = None  # the records of a payload split across blocks
    parts_start = total = 0
    pos = FRAME
    while pos < size:
        left = BLOCK - pos % BLOCK
        if left < FRAME:  # a block's trailer: zero padding
            if buf[pos : min(pos + left, size)].strip(b"\x00"):
                raise _corrupt(file, pos, "non-zero bytes in a block's padding")
            pos += left
            continue
        if size - pos < FRAME:
            break
        crc, length, kind = unpack(buf, pos)
        end = pos + FRAME + length
        if kind not in type_crc:
            if not buf[pos:size].strip(b"\x00"):  # pre-allocated space never written
                notes.append(f"{file}: zero-filled from byte {pos} to its end (not written)")
                return
            raise _corrupt(file, pos, f"unknown record type {kind}")
        if length > left - FRAME:
            raise _corrupt(file, pos, f"record of {length} bytes crosses its 32 KiB block")
        if end > size:
            break
        data = buf[pos + FRAME : end]
        if crc32(data, type_crc[kind]) != crc:
            raise _corrupt(file, pos, "CRC mismatch")
        if kind == _FULL:
            if parts is not None:
                raise _corrupt(file, pos, "a whole record inside a split one")
            yield pos, data
        elif kind == _FIRST:
            if parts is not None:
                raise _corrupt(file, pos, "a split record started inside another")
            parts, parts_start, total = [data], pos, length
        else:
            if parts is None:
                raise _corrupt(file, pos, "the middle or end of a split record without its start")
            total += length
            if total > MAX_RECORD_BYTES:
                raise _corrupt(file, parts_start, f"record over {MAX_RECORD_BYTES} bytes")
            parts.append(data)
            if kind == _LAST:
                yield parts_start, b"".join(parts)
                parts = None
        pos = end
    if pos < size or parts is not None:
        at = parts_start if parts is not None and pos >= size else pos
        notes.append(
            f"{file}: last record (at byte {at}) cut short at byte {size} (still being written?)"
        )


def _corrupt(file: Path, pos: int, what: str) -> InputError:
    return InputError(file, f"corrupt W&B run file: {what} in record at byte {pos}")


# ------------------------------------------------------------------ records


def _decode_record(data: bytes, state: _RunState) -> None:
    """Apply one `Record`: its history row, run info, config or exit code."""
    common = _common_shape(data)
    if common is not None:
        tag, start = common
        if tag == 0x1A:  # a summary: the history rows hold the same numbers
            return
        if tag == 0x12:
            _history_row(data, [(start, len(data))], state)
            return
    kind = 0  # the member of the record_type oneof set last
    spans: list[tuple[int, int]] = []  # its occurrences: protobuf merges them
    pos, end = 0, len(data)
    while pos < end:
        number, wire, pos = field_key(data, pos, end)
        if wire == 2 and number in _RECORD_ONEOF:
            span = delimited(data, pos, end)
            if number != kind:
                kind, spans = number, []
            spans.append(span)
            pos = span[1]
        else:
            pos = skip_field(data, pos, end, number, wire)
    if kind == 2:
        _history_row(data, spans, state)
    elif kind == 17:
        for start, stop in spans:
            _run_info(data, start, stop, state)
    elif kind == 5:
        for start, stop in spans:
            _config(data, start, stop, state)
    elif kind == 18:
        state.exit_code = 0
        for start, stop in spans:
            _exit(data, start, stop, state)


def _common_shape(data: bytes) -> tuple[int, int] | None:
    """(key byte, payload start) of a record shaped `[num] field-to-the-end`, else None.

    Nearly every record wandb writes is `08 <num> 12|1A <length> <history|summary>`: this
    recognises them in a few byte reads; anything else goes through the general decoder.
    """
    n = len(data)
    p = 0
    if n > 12 and data[0] == 0x08:
        p = 1
        while data[p] >= 0x80:
            p += 1
            if p > 10:
                return None  # an over-long varint: the general decoder names it
        p += 1
    if p + 3 > n:
        return None
    b = data[p + 1]
    if b < 0x80:
        length, start = b, p + 2
    elif data[p + 2] < 0x80:
        length, start = (b & 0x7F) | data[p + 2] << 7, p + 3
    else:
        return None
    return (data[p], start) if start + length == n else None


def _history_row(data: bytes, spans: list[tuple[int, int]], state: _RunState) -> None:
    """One `wandb.log` call: every numeric item becomes a point of this row."""
    items, step_span = _row_items(data, spans)
    row = len(state.steps)
    metrics = state.metrics
    step = global_step = None
    wall = epoch = float("nan")
    added = 0
    for name, raw in items:
        role, metric = metrics.get(name) or _new_metric(name, state)
        if role == _IGNORED or len(raw) > MAX_NUMBER_BYTES:
            continue
        try:
            value = float(raw)  # JSON numbers, and NaN and ±Infinity as wandb writes them
        except ValueError:
            continue  # a string, a bool, null, a list or a dict: not a point
        if metric is not None:
            metric.rows.append(row)
            metric.values.append(value)
            added += 1
            if role == _SERIES:
                continue
        if role == _STEP:
            step = _integer(raw)
        elif role == _GLOBAL_STEP:
            global_step = _integer(raw)
        elif role == _TIME:
            wall = value
        elif role == _EPOCH:
            epoch = value
            state.any_epoch = True
    state.budget[0] -= added
    if state.budget[0] < 0:
        raise Malformed(f"more than {MAX_POINTS} points")
    if global_step is None:
        global_step = step
    if global_step is None and step_span is not None:
        global_step = _history_step(data, *step_span)
    if global_step is None:
        global_step = state.steps[-1] + 1 if state.steps else 0
    state.steps.append(global_step)
    state.walls.append(wall)
    state.epochs.append(epoch)


def _row_items(
    data: bytes, spans: list[tuple[int, int]]
) -> tuple[list[tuple[bytes, bytes]], tuple[int, int] | None]:
    """A HistoryRecord's items as (name, value_json), and where its own step lies."""
    items = []
    step_span = None
    for h_start, h_end in spans:
        pos = h_start
        while pos < h_end:
            if data[pos] == 0x0A and pos + 1 < h_end and data[pos + 1] < 0x80:
                start = pos + 2  # an item under 128 bytes: its key and length inline
                pos = start + data[pos + 1]
                if pos > h_end:
                    raise past_the_end(pos - start, h_end - start)
            else:
                number, wire, pos = field_key(data, pos, h_end)
                if wire != 2 or number not in (1, 2):
                    pos = skip_field(data, pos, h_end, number, wire)
                    continue
                start, pos = delimited(data, pos, h_end)
                if number == 2:
                    step_span = (start, pos)  # decoded only if the items hold no step
                    continue
            # `12 <len> key 82 01 <len> value_json`: one nested_key, then value_json, both
            # under 128 bytes, as wandb writes every scalar; other layouts decoded in full.
            vp = start + 2 + data[start + 1] if pos - start > 4 else pos
            if (
                vp + 3 <= pos
                and data[start] == 0x12
                and data[start + 1] < 0x80
                and data[vp] == 0x82
                and data[vp + 1] == 0x01
                and data[vp + 2] < 0x80
                and vp + 3 + data[vp + 2] == pos
            ):
                items.append((data[start + 2 : vp], data[vp + 3 : pos]))
            else:
                name, raw = _history_item(data, start, pos)
                if name is not None:
                    items.append((name, raw))
    return items, step_span


def _new_metric(name: bytes, state: _RunState) -> tuple[int, _Metric | None]:
    text = name.decode("utf-8", errors="replace")
    role = _SPECIAL.get(text, _SERIES)
    metric = None
    if len(name) > MAX_NAME_BYTES:
        state.skipped_names += 1
        role = _IGNORED
    elif role == _SERIES or role in _ALSO_SERIES:
        if state.n_series >= MAX_SERIES:
            raise Malformed(f"more than {MAX_SERIES} metric names")
        state.n_series += 1
        metric = _Metric(text)
    found = (role, metric)
    if role != _IGNORED or len(name) <= MAX_NAME_BYTES:
        state.metrics[name] = found  # long names are not remembered: no unbounded memory
    return found


def _history_step(data: bytes, start: int, end: int) -> int:
    """`HistoryStep.num` (0 if unset)."""
    raw = last_varint(data, start, end, 1)
    return 0 if raw is None else signed64(raw)


def _history_item(data: bytes, start: int, end: int) -> tuple[bytes | None, bytes]:
    """A `HistoryItem` in any field order -> (its name, its value_json); name None if unset."""
    key = b""
    nested: list[bytes] = []
    raw = b""
    pos = start
    while pos < end:
        number, wire, pos = field_key(data, pos, end)
        if wire == 2 and number in (1, 2, 16):
            s_start, pos = delimited(data, pos, end)
            if number == 1:
                key = data[s_start:pos]
            elif number == 2:
                nested.append(data[s_start:pos])
                if len(nested) > MAX_GROUP_DEPTH:
                    raise Malformed("a key nested too deeply")
            else:
                raw = data[s_start:pos]
        else:
            pos = skip_field(data, pos, end, number, wire)
    # wandb sends a top-level key as `key` (older clients) or a one-element `nested_key`;
    # nested dicts as the path, shown by W&B joined with dots.
    name = key or b".".join(nested)
    return (name or None), raw


def _number(raw: bytes) -> float | None:
    """A JSON number (NaN and ±Infinity included) -> float, else None."""
    if len(raw) > MAX_NUMBER_BYTES:
        return None
    try:
        return float(raw)
    except ValueError:
        return None  # a string, a bool, null, a list or a dict: not a point


def _integer(raw: bytes) -> int | None:
    if len(raw) > MAX_NUMBER_BYTES:
        return None
    try:
        value = int(raw)
    except ValueError:
        number = _number(raw)  # "3.0" from a float step counter
        if number is None or not number.is_integer():
            return None
        value = int(number)
    return value if _INT64_RANGE[0] <= value <= _INT64_RANGE[1] else None


def _strings(data: bytes, start: int, end: int, wanted: dict[int, str]) -> dict[str, bytes]:
    """The string fields `wanted` (number -> name) of a message; others skipped."""
    out: dict[str, bytes] = {}
    pos = start
    while pos < end:
        number, wire, pos = field_key(data, pos, end)
        if wire == 2 and number in wanted:
            s_start, pos = delimited(data, pos, end)
            out[wanted[number]] = data[s_start:pos]
        else:
            pos = skip_field(data, pos, end, number, wire)
    return out


def _run_info(data: bytes, start: int, end: int, state: _RunState) -> None:
    fields = _strings(data, start, end, {1: "run_id", 3: "project", 4: "config", 8: "name"})
    if fields.get("run_id"):
        state.run_id = _clean(fields["run_id"])
    if fields.get("name"):
        state.name = _clean(fields["name"])
    if fields.get("project"):
        state.project = _clean(fields["project"])
    if "config" in fields:
        config = fields["config"]
        _config(config, 0, len(config), state)


def _config(data: bytes, start: int, end: int, state: _RunState) -> None:
    """`ConfigRecord.update` items -> `hparams` (values that are short JSON)."""
    pos = start
    while pos < end:
        number, wire, pos = field_key(data, pos, end)
        if number == 1 and wire == 2:
            i_start, pos = delimited(data, pos, end)
            name, raw = _history_item(data, i_start, pos)  # same layout as a HistoryItem
            if name is None or name.startswith(b"_wandb"):
                continue
            if len(state.hparams) >= MAX_CONFIG_ITEMS or len(raw) > MAX_CONFIG_VALUE_BYTES:
                continue
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            state.hparams[_clean(name)] = value
        else:
            pos = skip_field(data, pos, end, number, wire)


def _exit(data: bytes, start: int, end: int, state: _RunState) -> None:
    """`RunExitRecord.exit_code`, an int32, if this part of the record sets it."""
    raw = last_varint(data, start, end, 1)
    if raw is not None:
        code = raw & 0xFFFFFFFF
        state.exit_code = code - (1 << 32) if code >= 1 << 31 else code
