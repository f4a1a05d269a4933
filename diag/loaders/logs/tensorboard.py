"""TensorBoard event files -> `LogRun`s, read without TensorBoard, TensorFlow or protobuf.

Why our own reader: TensorBoard's `EventAccumulator` keeps a random 10,000 points per tag
unless told otherwise, checks CRCs in pure Python when TensorFlow is absent (seconds per
million points), and purges points after a restart. Rules need every point exactly as
written, fast.

An event file is a sequence of records:

    u64 length (LE) · u32 masked crc32c(length bytes) · data · u32 masked crc32c(data)

and each record's data is a serialized `Event` protobuf. We decode the few fields scalars
live in by hand and skip everything else by its wire type:

    Event        wall_time=1 double, step=2 int64, summary=5 Summary (oneof with 3,4,6..9)
    Summary      value=1 repeated Value
    Value        tag=1 string, metadata=9 SummaryMetadata, oneof {simple_value=2 float,
                 image=4, histo=5, audio=6, tensor=8 TensorProto, ...}
    TensorProto  dtype=1, tensor_shape=2, tensor_content=4, float_val=5, double_val=6,
                 half_val=13

Scalars come in two encodings: the legacy `simple_value`, and a single-element float
tensor (plugin "scalars", or no plugin) written by TF2 and `add_scalar(new_style=True)`.

Speed: nearly every record of a training log is "wall time, step, one scalar of a tag seen
before", and such records differ from each other only in the wall time, the step and the
four (or eight) bytes of the value. The first record of each layout goes through the
general decoder, which also says where the value's bytes lie; the layout (the record's
bytes after the step, with the value cut out) then becomes a dictionary key, and later
records of that layout are recognised with one slice and one lookup. The records are
still framed and CRC-checked one by one.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

from diag.errors import InputError
from diag.loaders.logs import is_folder
from diag.loaders.logs.protowire import (
    Malformed,
    delimited,
    field_key,
    last_varint,
    signed64,
    skip_field,
    varint,
)
from diag.loaders.logs.series import LogRun, Series

EVENT_FILE_MARKER = "events.out.tfevents."

# A sanity bound on one record. Scalar records are tens of bytes; images, audio and the
# graphs of big models run to a few MB, which a 16 MiB bound would come close to refusing.
# A length above this is reported as corruption even when its checksum holds.
MAX_RECORD_BYTES = 64 * 1024 * 1024

# Folder walking limits: `--logs ~/` must fail fast instead of crawling a home directory.
MAX_DEPTH = 8  # folder levels below the given folder that are searched
MAX_EVENT_FILES = 10_000
MAX_FOLDERS = 20_000

# Distinct record layouts remembered for the fast path, per run. A log has a few per tag;
# a hostile file with a new layout in every record must not grow memory without bound.
MAX_LAYOUTS = 20_000

# Verified record headers remembered (real logs have a few hundred distinct lengths).
_MAX_GOOD_HEADERS = 10_000

_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

_HEADER = struct.Struct("<QI")  # record length, masked CRC of the length's 8 bytes
_U32_LE = struct.Struct("<I")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_F16 = struct.Struct("<e")

# TensorFlow DataType values of the float types a scalar can be written in.
_DT_FLOAT, _DT_DOUBLE, _DT_BFLOAT16, _DT_HALF = 1, 2, 14, 19
# Event fields that share the `what` oneof with `summary`: setting one clears the summary.
_EVENT_ONEOF_OTHERS = frozenset({3, 4, 6, 7, 8, 9})
# Value fields that share the `value` oneof with `tensor` (simple_value=2 handled apart).
_VALUE_ONEOF_OTHERS = frozenset({3, 4, 5, 6})


def is_event_file(path: Path) -> bool:
    """A TensorBoard event file, by name: `events.out.tfevents.<time>.<host>...`."""
    return path.name.startswith(EVENT_FILE_MARKER)


def read_tensorboard(path: Path) -> list[LogRun]:
    """Read the scalars of an event file, or of every event file under a folder.

    A folder gives one `LogRun` per folder that holds event files (`run` is that folder
    relative to `path`, "" for `path` itself). Several files in one folder are one run
    restarted; their points are concatenated in file-name (= creation time) order.
    A last record cut short (a writer still running) is noted in `LogRun.notes`; any other
    damage raises `InputError` naming the file.
    """
    path = Path(path)
    is_dir = is_folder(path)
    if not is_dir:
        return [_read_run(path, [path], run="")]
    groups = _find_event_files(path)
    if not groups:
        raise InputError(path, f"no TensorBoard event files ({EVENT_FILE_MARKER}*) in this folder")
    return [
        _read_run(folder, files, run=folder.relative_to(path).as_posix() if folder != path else "")
        for folder, files in sorted(groups.items(), key=lambda item: item[0].relative_to(path))
    ]


def _find_event_files(root: Path) -> dict[Path, list[Path]]:
    """Event files under `root`, grouped by folder, each group sorted by name.

    Symlinks are not followed (neither to folders nor to files), so nothing outside `root`
    is read and a link loop cannot trap the walk.
    """
    groups: dict[Path, list[Path]] = {}
    pending: list[tuple[Path, int]] = [(root, 0)]
    folders = files = 0
    while pending:
        folder, depth = pending.pop()
        folders += 1
        if folders > MAX_FOLDERS:
            raise InputError(root, f"more than {MAX_FOLDERS} folders to search; point at a run")
        try:
            with os.scandir(folder) as entries:
                listing = list(entries)
        except OSError as exc:
            raise InputError(folder, f"cannot list folder: {exc.strerror or exc}") from exc
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH:
                    pending.append((Path(entry.path), depth + 1))
            elif entry.is_file(follow_symlinks=False) and entry.name.startswith(EVENT_FILE_MARKER):
                files += 1
                if files > MAX_EVENT_FILES:
                    raise InputError(
                        root, f"more than {MAX_EVENT_FILES} event files; point at one run"
                    )
                groups.setdefault(folder, []).append(Path(entry.path))
    for found in groups.values():
        found.sort(key=_name_order)
    return groups


def _name_order(path: Path) -> tuple[str | int, ...]:
    """File-name order with numbers compared as numbers.

    Names are `events.out.tfevents.<seconds>.<host>.<pid>.<counter>`: two writers opened
    in the same second differ only in the counter, and counter 10 comes after 9.
    """
    parts = re.split(r"(\d+)", path.name)
    # Odd positions are always digit runs, so every position compares like with like.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


@dataclass
class _Points:
    """The points of one tag, appended in file order."""

    steps: array = field(default_factory=lambda: array("q"))
    walls: array = field(default_factory=lambda: array("d"))
    values: array = field(default_factory=lambda: array("d"))

    def add(self, step: int, wall: float, value: float) -> None:
        self.steps.append(step)
        self.walls.append(wall)
        self.values.append(value)


# What a known layout leads to: the tag's three `append`s and the value's unpacker.
_Sink = tuple[Callable[[int], None], Callable[[float], None], Callable[[float], None], Callable]


@dataclass
class _RunReader:
    """State shared by the files of one run: the points per tag and the known layouts."""

    points: dict[str, _Points] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Record headers (length, masked length CRC) already verified: lengths repeat a lot.
    good_headers: set[tuple[int, int]] = field(default_factory=set)
    # (offset of the value from the record's end, value width) -> layout -> sink. A layout
    # is the record's bytes after the step with the value's bytes cut out.
    layouts: dict[tuple[int, int], dict[bytes, _Sink]] = field(default_factory=dict)
    n_layouts: int = 0

    def tag_points(self, tag: str) -> _Points:
        found = self.points.get(tag)
        if found is None:
            found = self.points[tag] = _Points()
        return found


def _read_run(source: Path, files: list[Path], run: str) -> LogRun:
    reader = _RunReader()
    for file in files:
        _read_file(file, reader)
    series = {
        tag: Series(
            name=tag,
            steps=np.frombuffer(pts.steps, dtype=np.int64).copy(),
            values=np.frombuffer(pts.values, dtype=np.float64).copy(),
            wall_times=np.frombuffer(pts.walls, dtype=np.float64).copy(),
        )
        for tag, pts in reader.points.items()
    }
    return LogRun(
        source=source, format="tensorboard", series=series, run=run, notes=tuple(reader.notes)
    )


def _read_file(file: Path, reader: _RunReader) -> None:
    """Append the scalars of one event file to `reader`.

    The file is memory-mapped: event files with images can be large, and only the
    scalar records need to become Python objects. Writers only ever append, so the size
    seen at open time is a consistent snapshot even while training is still running.
    (A file truncated by another process while it is mapped would fault the reader;
    TensorBoard writers never truncate, so this risk is taken for the memory saved.)
    """
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return
            buf = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(file, f"cannot read: {cause}") from exc
    try:
        _scan(file, buf, size, reader)
    finally:
        buf.close()


def _scan(file: Path, buf: mmap.mmap, size: int, reader: _RunReader) -> None:
    """Frame, check and decode every record of one mapped file.

    The loop is written for speed: locals instead of attribute lookups, the common
    "one scalar of a known layout" record handled inline, everything else handed to
    `_decode_record`.
    """
    unpack_header = _HEADER.unpack_from
    unpack_u32 = _U32_LE.unpack_from
    unpack_f64 = _F64.unpack_from
    unpack_f32 = _F32.unpack_from
    crc = google_crc32c.value
    good_headers = reader.good_headers
    layouts = reader.layouts
    legacy = layouts.setdefault((4, 4), {})  # simple_value: the value is the last 4 bytes
    legacy_get = legacy.get
    pos = 0
    while pos < size:
        if size - pos < 12:
            _note_cut(file, reader, pos, size)
            return
        header = unpack_header(buf, pos)
        length = header[0]
        if header not in good_headers:
            _check_header(file, buf, pos, header)
            if len(good_headers) < _MAX_GOOD_HEADERS:
                good_headers.add(header)
        start = pos + 12
        end = start + length
        if end + 4 > size:
            _note_cut(file, reader, pos, size)
            return
        c = crc(buf[start:end])  # the C CRC takes bytes only: a slice copy
        if (((c >> 15) | (c << 17)) + _CRC_MASK_DELTA) & _U32 != unpack_u32(buf, end)[0]:
            raise InputError(file, f"corrupt event file: CRC mismatch in record at byte {pos}")
        pos = end + 4

        # Fast path: `09 <wall:8> [10 <step varint>] <known layout with the value inside>`.
        if length > 12 and buf[start] == 0x09:
            p = start + 9
            if buf[p] == 0x10:
                b = buf[p + 1]
                if b < 0x80:
                    step = b
                    p += 2
                elif p + 4 <= end and buf[p + 2] < 0x80:
                    step = (b & 0x7F) | (buf[p + 2] << 7)
                    p += 3
                elif p + 5 <= end and buf[p + 3] < 0x80:
                    step = (b & 0x7F) | ((buf[p + 2] & 0x7F) << 7) | (buf[p + 3] << 14)
                    p += 4
                else:  # a step of 2**21 or more, or negative
                    try:
                        raw, p = varint(buf, p + 1, end)
                    except Malformed:
                        p = -1  # the general decoder will say what is wrong
                    step = signed64(raw) if p > 0 else 0
            else:
                step = 0  # proto3 leaves out a zero step
            if p > 0:
                sink = legacy_get(buf[p : end - 4])
                if sink is None:
                    for (back, width), known in layouts.items():
                        if known is legacy or back > end - p:
                            continue
                        hole = end - back
                        sink = known.get(buf[p:hole] + buf[hole + width : end])
                        if sink is not None:
                            sink[0](step)
                            sink[1](unpack_f64(buf, start + 1)[0])
                            sink[2](sink[3](buf, hole)[0])
                            break
                    if sink is not None:
                        continue
                else:
                    add_step, add_wall, add_value, _ = sink
                    add_step(step)
                    add_wall(unpack_f64(buf, start + 1)[0])
                    add_value(unpack_f32(buf, end - 4)[0])
                    continue
        _decode_record(file, buf, start, end, reader)


def _check_header(file: Path, buf: mmap.mmap, pos: int, header: tuple[int, int]) -> None:
    length, stored = header
    c = google_crc32c.value(buf[pos : pos + 8])
    if (((c >> 15) | (c << 17)) + _CRC_MASK_DELTA) & _U32 != stored:
        hint = " (not a TensorBoard event file?)" if pos == 0 else ""
        raise InputError(file, f"corrupt event file: CRC mismatch in record at byte {pos}{hint}")
    if length > MAX_RECORD_BYTES:
        raise InputError(
            file,
            f"corrupt event file: record at byte {pos} claims {length} bytes "
            f"(limit {MAX_RECORD_BYTES})",
        )


def _note_cut(file: Path, reader: _RunReader, pos: int, size: int) -> None:
    reader.notes.append(
        f"{file}: last record (at byte {pos}) cut short at byte {size} (still being written?)"
    )


def _decode_record(file: Path, buf: mmap.mmap, start: int, end: int, reader: _RunReader) -> None:
    """The general path: decode one Event and keep its scalars; learn its layout."""
    try:
        event = _decode_event(buf, start, end)
    except Malformed as exc:
        raise InputError(
            file, f"corrupt event file: malformed record at byte {start - 12} ({exc})"
        ) from None
    for tag, value, _slot in event.scalars:
        reader.tag_points(tag).add(event.step, event.wall_time, value)
    if event.layout_start is not None and len(event.scalars) == 1:
        tag, _value, slot = event.scalars[0]
        if slot is not None and reader.n_layouts < MAX_LAYOUTS:
            offset, width = slot
            back = end - offset
            key = buf[event.layout_start : offset] + buf[offset + width : end]
            pts = reader.tag_points(tag)
            unpack = (_F32 if width == 4 else _F64).unpack_from
            known = reader.layouts.setdefault((back, width), {})
            if key not in known:
                known[key] = (pts.steps.append, pts.walls.append, pts.values.append, unpack)
                reader.n_layouts += 1


@dataclass
class _Event:
    wall_time: float = 0.0
    step: int = 0
    # (tag, value, where the value's bytes lie as (offset, width) or None)
    scalars: list[tuple[str, float, tuple[int, int] | None]] = field(default_factory=list)
    # Where the layout starts when the record has the common shape `wall, [step], summary`.
    layout_start: int | None = None


def _decode_event(buf: mmap.mmap, start: int, end: int) -> _Event:
    event = _Event()
    summaries: list[tuple[int, int]] = []
    shape: list[tuple[int, int]] = []  # (number, wire type) of each field, in order
    layout_start = None
    pos = start
    while pos < end:
        number, wire, pos = field_key(buf, pos, end)
        shape.append((number, wire))
        if number == 1 and wire == 1:
            if pos + 8 > end:
                raise Malformed("wall_time past the end of the event")
            event.wall_time = _F64.unpack_from(buf, pos)[0]
            pos += 8
        elif number == 2 and wire == 0:
            raw, pos = varint(buf, pos, end)
            event.step = signed64(raw)
            layout_start = pos
        elif number == 5 and wire == 2:
            span = delimited(buf, pos, end)
            summaries.append(span)
            pos = span[1]
        else:
            if wire == 2 and number in _EVENT_ONEOF_OTHERS:
                summaries.clear()  # another member of the oneof replaces the summary
            pos = skip_field(buf, pos, end, number, wire)
    values: list[tuple[int, int]] = []
    for s_start, s_end in summaries:
        pos = s_start
        while pos < s_end:
            number, wire, pos = field_key(buf, pos, s_end)
            if number == 1 and wire == 2:
                span = delimited(buf, pos, s_end)
                values.append(span)
                pos = span[1]
            else:
                pos = skip_field(buf, pos, s_end, number, wire)
    for v_start, v_end in values:
        scalar = _decode_value(buf, v_start, v_end)
        if scalar is not None:
            event.scalars.append(scalar)
    # The shape the fast path reads: `09 <wall>` (a one-byte key, as the fast path assumes),
    # an optional step, one summary and nothing else. The layout key then holds every other
    # byte of the record, so a record matching it decodes exactly as this one did.
    if buf[start] == 0x09:
        if shape == [(1, 1), (2, 0), (5, 2)]:
            event.layout_start = layout_start
        elif shape == [(1, 1), (5, 2)]:
            event.layout_start = start + 9
    return event


def _decode_value(
    buf: mmap.mmap, start: int, end: int
) -> tuple[str, float, tuple[int, int] | None] | None:
    """A `Summary.Value` -> (tag, value, value's bytes) if it is a scalar, else None."""
    tag = b""
    kind = 0  # the member of the `value` oneof set last (2 simple, 8 tensor, ...)
    simple: tuple[float, int] | None = None
    tensors: list[tuple[int, int]] = []
    metadata: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        number, wire, pos = field_key(buf, pos, end)
        if number == 1 and wire == 2:
            t_start, pos = delimited(buf, pos, end)
            tag = buf[t_start:pos]
        elif number == 2 and wire == 5:
            if pos + 4 > end:
                raise Malformed("simple_value past the end of its value")
            simple = (_F32.unpack_from(buf, pos)[0], pos)
            kind = 2
            tensors.clear()
            pos += 4
        elif number == 8 and wire == 2:
            span = delimited(buf, pos, end)
            tensors.append(span)
            kind = 8
            pos = span[1]
        elif number == 9 and wire == 2:
            span = delimited(buf, pos, end)
            metadata.append(span)
            pos = span[1]
        else:
            if wire == 2 and number in _VALUE_ONEOF_OTHERS:
                kind = number
                tensors.clear()
            pos = skip_field(buf, pos, end, number, wire)
    # Tags are UTF-8 by the protobuf spec; a broken one is shown, not fatal.
    name = tag.decode("utf-8", errors="replace")
    if kind == 2 and simple is not None:
        return name, simple[0], (simple[1], 4)
    if kind == 8 and _plugin_name(buf, metadata) in ("", "scalars"):
        found = _tensor_scalar(buf, tensors)
        if found is not None:
            return name, found[0], found[1]
    return None


def _plugin_name(buf: mmap.mmap, spans: list[tuple[int, int]]) -> str:
    """`SummaryMetadata.plugin_data.plugin_name` ("" if absent); the last one set wins."""
    name = b""
    for m_start, m_end in spans:
        pos = m_start
        while pos < m_end:
            number, wire, pos = field_key(buf, pos, m_end)
            if number == 1 and wire == 2:
                d_start, d_end = delimited(buf, pos, m_end)
                inner = d_start
                while inner < d_end:
                    i_number, i_wire, inner = field_key(buf, inner, d_end)
                    if i_number == 1 and i_wire == 2:
                        n_start, inner = delimited(buf, inner, d_end)
                        name = buf[n_start:inner]
                    else:
                        inner = skip_field(buf, inner, d_end, i_number, i_wire)
                pos = d_end
            else:
                pos = skip_field(buf, pos, m_end, number, wire)
    return name.decode("utf-8", errors="replace")


@dataclass
class _Tensor:
    """The parts of a TensorProto a scalar needs; repeated fields keep (offset, width, raw)."""

    dtype: int = 0
    dims: list[int] = field(default_factory=list)
    unknown_rank: bool = False
    content: tuple[int, int] | None = None  # (start, stop) of tensor_content
    floats: list[int] = field(default_factory=list)  # offsets of float_val entries
    doubles: list[int] = field(default_factory=list)  # offsets of double_val entries
    halves: list[int] = field(default_factory=list)  # raw half_val entries


def _tensor_scalar(
    buf: mmap.mmap, spans: list[tuple[int, int]]
) -> tuple[float, tuple[int, int] | None] | None:
    """The value of a one-element float tensor -> (value, its bytes), else None.

    Several `tensor` fields in one value merge, as protobuf merges repeated message
    fields: later scalars win, repeated entries concatenate.
    """
    t = _Tensor()
    for t_start, t_end in spans:
        _merge_tensor(buf, t_start, t_end, t)
    if t.unknown_rank or any(d != 1 for d in t.dims):
        return None  # not a single element (or a shape we cannot know)
    width = {_DT_FLOAT: 4, _DT_DOUBLE: 8, _DT_HALF: 2, _DT_BFLOAT16: 2}.get(t.dtype)
    if width is None:
        return None
    if t.content is not None and t.content[1] > t.content[0]:
        c_start, c_end = t.content
        if c_end - c_start != width:
            return None
        if t.dtype == _DT_FLOAT:
            return _F32.unpack_from(buf, c_start)[0], (c_start, 4)
        if t.dtype == _DT_DOUBLE:
            return _F64.unpack_from(buf, c_start)[0], (c_start, 8)
        return _from_16_bits(t.dtype, int.from_bytes(buf[c_start:c_end], "little")), None
    if t.dtype == _DT_FLOAT:
        entries, unpack = t.floats, _F32.unpack_from
    elif t.dtype == _DT_DOUBLE:
        entries, unpack = t.doubles, _F64.unpack_from
    else:
        if len(t.halves) != 1:
            return None
        return _from_16_bits(t.dtype, t.halves[0]), None
    # Exactly one value. A tensor with none is not read as 0.0: TensorBoard refuses it too.
    if len(entries) != 1:
        return None
    return unpack(buf, entries[0])[0], (entries[0], width)


def _from_16_bits(dtype: int, raw: int) -> float:
    raw &= 0xFFFF
    if dtype == _DT_HALF:
        return _F16.unpack(raw.to_bytes(2, "little"))[0]
    return _F32.unpack((raw << 16).to_bytes(4, "little"))[0]  # bfloat16: the top half


def _merge_tensor(buf: mmap.mmap, start: int, end: int, t: _Tensor) -> None:
    pos = start
    while pos < end:
        number, wire, pos = field_key(buf, pos, end)
        if number == 1 and wire == 0:
            raw, pos = varint(buf, pos, end)
            t.dtype = signed64(raw)
        elif number == 2 and wire == 2:
            s_start, pos = delimited(buf, pos, end)
            _merge_shape(buf, s_start, pos, t)
        elif number == 4 and wire == 2:
            t.content = delimited(buf, pos, end)
            pos = t.content[1]
        elif number == 5 and wire in (2, 5):
            pos = _fixed_entries(buf, pos, end, wire, 4, t.floats)
        elif number == 6 and wire in (2, 1):
            pos = _fixed_entries(buf, pos, end, wire, 8, t.doubles)
        elif number == 13 and wire in (2, 0):
            if wire == 0:
                raw, pos = varint(buf, pos, end)
                t.halves.append(raw)
            else:
                p_start, pos = delimited(buf, pos, end)
                inner = p_start
                while inner < pos:
                    raw, inner = varint(buf, inner, pos)
                    t.halves.append(raw)
        else:
            pos = skip_field(buf, pos, end, number, wire)


def _fixed_entries(
    buf: mmap.mmap, pos: int, end: int, wire: int, width: int, into: list[int]
) -> int:
    """Record the offsets of a packed or unpacked fixed-width repeated field's entries."""
    if wire == 2:
        p_start, p_end = delimited(buf, pos, end)
        if (p_end - p_start) % width:
            raise Malformed("packed field of a length that is not a multiple of its type")
        into.extend(range(p_start, p_end, width))
        return p_end
    if pos + width > end:
        raise Malformed("fixed-width field past the end of its message")
    into.append(pos)
    return pos + width


def _merge_shape(buf: mmap.mmap, start: int, end: int, t: _Tensor) -> None:
    """TensorShapeProto{dim=2 repeated Dim{size=1 int64}, unknown_rank=3 bool}."""
    pos = start
    while pos < end:
        number, wire, pos = field_key(buf, pos, end)
        if number == 2 and wire == 2:
            d_start, pos = delimited(buf, pos, end)
            size = last_varint(buf, d_start, pos, 1)  # Dim.size
            t.dims.append(0 if size is None else signed64(size))
        elif number == 3 and wire == 0:
            raw, pos = varint(buf, pos, end)
            t.unknown_rank = raw != 0
        else:
            pos = skip_field(buf, pos, end, number, wire)
