"""WebDataset splits: `.tar` shards (one shard, a brace or glob pattern such as
`shards/train-{000000..000003}.tar`, or a folder of shards) whose members are grouped into
samples by key (the member path without its extensions, `__key__` in webdataset).

A sample is an image member (.png/.jpg/.jpeg/.webp/...) with an optional label member
(.cls/.label/.txt holding an integer, or .json with a label field), or a .txt text sample.
Shards are streamed once with `tarfile` in stream mode, never extracted: nothing is written,
member names are never used as paths, links and devices are skipped, member sizes and
counts are capped. The pass records where each sample's data lies in its shard, so chunks
and `take` read those bytes directly.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import (
    LazyIds,
    check_indices,
    check_size,
    one_line,
    typed_values,
)
from diag.loaders.splits.images import decode_image
from diag.loaders.splits.model import IMAGE, TEXT, Split

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif")
LABEL_EXTS = ("cls", "label", "txt")
MAX_SHARDS = 100_000
MAX_MEMBERS = 50_000_000
MAX_MEMBER_BYTES = 256 * 1024**2
MAX_LABEL_BYTES = 1024**2
# After the last member a tar holds only zero blocks (the end marker, the record padding).
MAX_TRAILER_BYTES = 1024**2
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")
_KEY = re.compile(r"((?:.*/)?[^./]+)\.([^/]+)")


def is_pattern(text: str) -> bool:
    return _BRACE.search(text) is not None or any(c in text for c in "*?[")


def shard_paths(pattern: str) -> list[Path]:
    """The shards a brace (`{000..003}`, `{a,b}`) or glob pattern names, in order."""
    names = expand_braces(pattern)
    shards: list[Path] = []
    for name in names:
        if any(c in name for c in "*?["):
            found = sorted(glob.glob(name))
            if not found:
                raise InputError(name, "no shard matches this pattern")
            shards.extend(Path(f) for f in found)
        else:
            shards.append(Path(name))
        if len(shards) > MAX_SHARDS:
            raise InputError(pattern, f"more than {MAX_SHARDS} shards")
    return shards


def expand_braces(pattern: str) -> list[str]:
    out = [pattern]
    while (m := _BRACE.search(out[0])) is not None:
        inner = m.group(1)
        rng = _RANGE.fullmatch(inner)
        if rng:
            lo, hi = int(rng[1]), int(rng[2])
            if hi < lo or hi - lo >= MAX_SHARDS:
                raise InputError(pattern, f"bad shard range {{{inner}}}")
            width = len(rng[1])
            options = [str(i).zfill(width) for i in range(lo, hi + 1)]
        else:
            options = inner.split(",")
        out = [s[: m.start()] + o + s[m.end() :] for s in out for o in options]
        if len(out) > MAX_SHARDS:
            raise InputError(pattern, f"more than {MAX_SHARDS} shards")
    return out


def folder_shards(path: Path) -> list[Path]:
    """The .tar files directly in a folder, sorted (symlinks are not followed)."""
    try:
        entries = sorted(e.name for e in os.scandir(path) if e.is_file(follow_symlinks=False))
    except OSError as exc:
        raise InputError(path, f"cannot list the folder ({exc.strerror or exc})") from None
    return [path / n for n in entries if n.lower().endswith(".tar") and not n.startswith(".")]


@dataclass
class _Index:
    """Where each sample's content lies: shard, byte offset and size; plus labels."""

    kind: str | None = None
    shards: array = field(default_factory=lambda: array("i"))
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))
    keys: list[str] = field(default_factory=list)
    exts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    members: int = 0

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def open_webdataset(
    name: str,
    shards: Sequence[Path],
    label_column: str | None,
    group_column: str | None,
    source: Path,
) -> Split:
    if not shards:
        raise InputError(source, "no .tar shards")
    index = _Index()
    for k, shard in enumerate(shards):
        _index_shard(shard, k, index, label_column, group_column)
    if not index.keys:
        raise InputError(source, "no samples (no image or .txt members)")
    labelled = any(index.labels)
    labels = typed_values(index.labels) if labelled else None
    grouped = group_column is not None and any(index.groups)
    groups = typed_values(index.groups) if grouped else None
    ids = _SampleIds([s.name for s in shards], index)
    notes = tuple(f"{n} {why}" for why, n in sorted(index.skipped.items()))
    samples = _TarSamples(list(shards), index)
    return Split(name, source, str(index.kind), samples, labels, groups, ids, (), notes)


def _index_shard(
    shard: Path, k: int, index: _Index, label_column: str | None, group_column: str | None
) -> None:
    end = 0
    try:
        with shard.open("rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
            sample: dict[str, tuple[int, int, bytes | None]] = {}
            key = None
            while (member := tf.next()) is not None:
                tf.members.clear()  # stream mode keeps every header otherwise
                index.members += 1
                if index.members > MAX_MEMBERS:
                    raise InputError(shard, f"more than {MAX_MEMBERS} tar members")
                end = member.offset_data + _blocks(member.size)
                parts = _member_parts(shard, member, index)
                if parts is None:
                    continue
                if parts[0] != key and sample:
                    _add_sample(shard, k, str(key), sample, index, label_column, group_column)
                    sample = {}
                key, ext = parts
                small = ext in (*LABEL_EXTS, "json") and member.size <= MAX_LABEL_BYTES
                data = _read_member(tf, member) if small else None
                sample[ext] = (member.offset_data, member.size, data)
            if sample:
                _add_sample(shard, k, str(key), sample, index, label_column, group_column)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(shard, "no such file") from None
    except OSError as exc:
        raise InputError(shard, f"cannot read ({exc.strerror or exc})") from None
    # tarfile raises ReadError, EOFError, ValueError, UnicodeError... on hostile headers.
    except Exception as exc:
        raise InputError(shard, f"corrupt or truncated tar ({one_line(exc)})") from None
    _check_trailer(shard, end)


def _member_parts(shard: Path, member: tarfile.TarInfo, index: _Index) -> tuple[str, str] | None:
    """(key, extension) of a member that can be part of a sample; None to skip it."""
    if not member.isreg() or member.issparse():
        if not member.isdir():
            index.skip("links, devices or sparse members skipped")
        return None
    if member.size > MAX_MEMBER_BYTES:
        raise InputError(
            shard,
            f"member {member.name[:200]!r} claims {member.size} bytes (cap {MAX_MEMBER_BYTES})",
        )
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        index.skip("members with absolute or '..' paths skipped")
        return None
    m = _KEY.fullmatch(name)
    if m is None:
        index.skip("members without an extension skipped")
        return None
    return m[1], m[2].lower()


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(member)
    if fh is None:
        return b""
    data = fh.read(member.size)
    if len(data) != member.size:
        raise EOFError(f"member {member.name!r} ends early")
    return data


def _add_sample(
    shard: Path,
    k: int,
    key: str,
    members: dict[str, tuple[int, int, bytes | None]],
    index: _Index,
    label_column: str | None,
    group_column: str | None,
) -> None:
    image = next((e for e in IMAGE_EXTS if e in members), None)
    has_text = "txt" in members and members["txt"][2] is not None
    kind = IMAGE if image else TEXT if has_text else None
    if index.kind is None and kind is not None:
        index.kind = kind
    if kind is None or kind != index.kind:
        index.skip(f"samples without {'an image' if index.kind == IMAGE else 'a .txt'} skipped")
        return
    main = image if image else "txt"
    offset, size, _ = members[main]
    label_exts = LABEL_EXTS if kind == IMAGE else LABEL_EXTS[:2]
    label, group = _label(shard, key, members, label_exts, label_column, group_column)
    index.shards.append(k)
    index.offsets.append(offset)
    index.sizes.append(size)
    index.keys.append(key)
    index.exts.append(main)
    index.labels.append(label)
    index.groups.append(group)


def _label(
    shard: Path,
    key: str,
    members: dict[str, tuple[int, int, bytes | None]],
    exts: Sequence[str],
    label_column: str | None,
    group_column: str | None,
) -> tuple[str, str]:
    label, group = "", ""
    for ext in exts:
        data = members.get(ext, (0, 0, None))[2]
        if data is not None:
            text = _text(shard, f"{key}.{ext}", data).strip()
            # An image's .txt is a label only when it is a class number; else a caption.
            if ext != "txt" or re.fullmatch(r"[+-]?\d{1,18}", text):
                label = text
                break
    meta = members.get("json", (0, 0, None))[2]
    if meta is not None:
        try:
            record = json.loads(_text(shard, f"{key}.json", meta))
        except (ValueError, RecursionError) as exc:
            raise InputError(shard, f"{key}.json: invalid JSON ({one_line(exc)})") from None
        if isinstance(record, dict):
            wanted = label_column or next((c for c in ("label", "cls", "class") if c in record), "")
            if not label and wanted in record:
                label = str(record[wanted])
            if group_column and group_column in record:
                group = str(record[group_column])
    return label, group


def _text(shard: Path, member: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(shard, f"{member}: not UTF-8 text") from None


def _blocks(size: int) -> int:
    return (size + 511) // 512 * 512


def _check_trailer(shard: Path, end: int) -> None:
    """tarfile stops quietly at a bad or cut header past the first: whatever follows the
    last member must be the zero blocks that end an archive."""
    try:
        total = shard.stat().st_size
        if total - end > MAX_TRAILER_BYTES:
            raise InputError(shard, f"corrupt tar: unreadable header at byte {end}")
        with shard.open("rb") as fh:
            fh.seek(end)
            rest = fh.read(MAX_TRAILER_BYTES)
    except OSError as exc:
        raise InputError(shard, f"cannot read ({exc.strerror or exc})") from None
    if rest.strip(b"\0"):
        raise InputError(shard, f"corrupt or truncated tar: unreadable header at byte {end}")


class _SampleIds(LazyIds):
    """'train-000001.tar:sample000123', built when asked (keys are already held once)."""

    def __init__(self, names: list[str], index: _Index) -> None:
        self._names, self._index = names, index

    def __len__(self) -> int:
        return len(self._index.keys)

    def _id_of(self, index: int) -> str:
        return f"{self._names[self._index.shards[index]]}:{self._index.keys[index]}"


class _TarSamples:
    """Sample contents read straight from the recorded (shard, offset, size)."""

    def __init__(self, shards: list[Path], index: _Index) -> None:
        self._shards, self._index = shards, index

    def __len__(self) -> int:
        return len(self._index.keys)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        with _Reader(self._shards) as reader:
            for start in range(0, len(self), size):
                stop = min(start + size, len(self))
                yield start, [self._read(reader, i) for i in range(start, stop)]

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        with _Reader(self._shards) as reader:
            return [self._read(reader, i) for i in wanted.tolist()]

    def _read(self, reader: _Reader, i: int) -> object:
        index = self._index
        shard = self._shards[index.shards[i]]
        member = f"{index.keys[i]}.{index.exts[i]}"
        data = reader.read(index.shards[i], index.offsets[i], index.sizes[i])
        if index.kind == TEXT:
            return _text(shard, member, data)
        image: np.ndarray = decode_image(Path(f"{shard}:{member}"), io.BytesIO(data))
        return image


class _Reader:
    """One open shard at a time (samples are read in shard order)."""

    def __init__(self, shards: list[Path]) -> None:
        self._shards = shards
        self._fd, self._k = -1, -1

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def read(self, k: int, offset: int, size: int) -> bytes:
        shard = self._shards[k]
        try:
            if k != self._k:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
                self._fd, self._k = os.open(shard, os.O_RDONLY), k
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise InputError(shard, f"cannot read ({exc.strerror or exc})") from None
        if len(data) != size:
            raise InputError(shard, "the file changed while it was being read")
        return data


__all__ = ["expand_braces", "folder_shards", "is_pattern", "open_webdataset", "shard_paths"]
