"""Hugging Face `datasets` folders as splits.

- `save_to_disk` output: `state.json` names the `data-0000x-of-0000N.arrow` files (Arrow IPC
  streams), read memory-mapped, one record batch at a time, each fully validated first;
- a `DatasetDict` folder (`dataset_dict.json` and one sub-folder per split): the split of
  the same name as `--split NAME=...`, or the only one; else the error lists them;
- the data files of a Hub dataset repository: a folder of Parquet or JSONL shards is one
  split, and a repository's `data/` folder holds `<split>-00000-of-0000N.parquet` files.

Columns: text-like ones (`messages`, `prompt`/`completion`, `text`, `content`) make TEXT
samples; an `image` column (datasets' Image feature: a struct of `bytes` and `path`) makes
IMAGE samples, decoded under the pixel cap, with a `path` followed only inside the folder;
otherwise numeric columns make a TABLE, as for Parquet. Labels come from `label`/`labels`.
"""

from __future__ import annotations

import bisect
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import (
    IdTracker,
    Layout,
    LazyIds,
    check_indices,
    check_size,
    column_roles,
    id_by_name,
    inside,
    make_layout,
    one_line,
    split_chunk,
)
from diag.loaders.splits.images import decode_image
from diag.loaders.splits.jsonl import open_jsonl
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, Split
from diag.loaders.splits.parquet import arrow_chunk, arrow_type, arrow_values, import_parquet
from diag.loaders.splits.text_records import RecordError, record_text, text_layout

MAX_DATA_FILES = 100_000
MAX_META_BYTES = 1024**2
_SHARD_EXTS = (".parquet", ".jsonl", ".ndjson")


def is_datasets_folder(path: Path) -> bool:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    return bool(_shards(path)) or (
        not (path / "data").is_symlink() and bool(_shards(path / "data"))
    )


def open_datasets_folder(
    name: str, path: Path, label_column: str | None, group_column: str | None
) -> Split:
    if (path / "dataset_dict.json").is_file():
        splits = _dict_splits(path)
        chosen = name if name in splits else splits[0] if len(splits) == 1 else None
        if chosen is None:
            listed = ", ".join(splits)
            raise InputError(
                path,
                f"a DatasetDict holding the splits {listed}: pass one, e.g. "
                f"--split {splits[0]}={path / splits[0]}",
            )
        return open_datasets_folder(name, path / chosen, label_column, group_column)
    if (path / "state.json").is_file():
        files = _state_files(path)
        return _open_tables(name, path, _ArrowStreams(files), label_column, group_column)
    files = _shards(path)
    if not files and not (path / "data").is_symlink():
        files = _hub_split(name, path / "data")
    if files[0].suffix == ".parquet":
        return _open_tables(name, path, _ParquetShards(files), label_column, group_column)
    return open_jsonl(name, files, label_column, group_column, source=path)


def _read_json(path: Path) -> Any:
    if not inside(os.path.realpath(path), os.path.realpath(path.parent)):
        raise InputError(path, "a symlink out of the folder: not followed")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_META_BYTES + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_META_BYTES:
        raise InputError(path, f"larger than {MAX_META_BYTES} bytes: not datasets metadata")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(path, f"invalid JSON ({one_line(exc)})") from None


def _plain_name(meta: Path, value: object, what: str) -> str:
    """A file or folder name from metadata: never a path that could leave the folder."""
    if (
        not isinstance(value, str)
        or not value
        or "/" in value
        or "\\" in value
        or value.startswith(".")
        or "\0" in value
    ):
        raise InputError(meta, f"{what} {str(value)[:80]!r} is not a plain name in this folder")
    return value


def _dict_splits(path: Path) -> list[str]:
    meta = path / "dataset_dict.json"
    data = _read_json(meta)
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, list) or not splits:
        raise InputError(meta, "no 'splits' list")
    names = [_plain_name(meta, s, "split") for s in splits[:MAX_DATA_FILES]]
    for split in names:
        if not (path / split).is_dir() or (path / split).is_symlink():
            raise InputError(meta, f"split {split!r} has no folder here")
    return names


def _state_files(path: Path) -> list[Path]:
    meta = path / "state.json"
    state = _read_json(meta)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(meta, "no '_data_files' list")
    if len(entries) > MAX_DATA_FILES:
        raise InputError(meta, f"more than {MAX_DATA_FILES} data files")
    root = os.path.realpath(path)
    files = []
    for entry in entries:
        filename = entry.get("filename") if isinstance(entry, dict) else None
        file = path / _plain_name(meta, filename, "data file")
        if not inside(os.path.realpath(file), root) or not file.is_file():
            raise InputError(meta, f"data file {file.name!r} is not a file in this folder")
        files.append(file)
    return files


def _shards(folder: Path) -> list[Path]:
    """Parquet or JSONL files directly in `folder`, sorted; symlinks are not followed."""
    try:
        entries = sorted(e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    except OSError:
        return []
    found = [folder / n for n in entries if n.lower().endswith(_SHARD_EXTS) and n[0] != "."]
    if len({p.suffix.lower() for p in found}) > 1:
        raise InputError(folder, "holds both Parquet and JSONL files: pass one kind")
    if len(found) > MAX_DATA_FILES:
        raise InputError(folder, f"more than {MAX_DATA_FILES} data files")
    return found


def _hub_split(name: str, data: Path) -> list[Path]:
    """The shards of one split in a Hub repository's `data/` (`train-00000-of-00002...`)."""
    by_split: dict[str, list[Path]] = {}
    for file in _shards(data):
        by_split.setdefault(file.name.split("-", 1)[0].split(".", 1)[0], []).append(file)
    if name in by_split:
        return by_split[name]
    if len(by_split) == 1:
        return next(iter(by_split.values()))
    raise InputError(
        data.parent,
        f"a dataset repository holding the splits {', '.join(sorted(by_split))}: name the "
        "split the same (--split train=...) or pass its files",
    )


# ---------------------------------------------------------------- record batches


@contextmanager
def _arrow_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    # pyarrow raises ArrowInvalid, ArrowIOError, OSError, ... on hostile bytes.
    except Exception as exc:
        raise InputError(path, f"unreadable Arrow data ({one_line(exc)})") from None


class _ArrowStreams:
    """`save_to_disk` files: every record batch, memory-mapped and validated once."""

    def __init__(self, files: list[Path]) -> None:
        import pyarrow as pa

        self.files = files
        self.pieces: list[tuple[int, Any]] = []
        self.schema, self.names = None, []
        for k, file in enumerate(files):
            with _arrow_errors(file):
                reader = pa.ipc.open_stream(pa.memory_map(str(file)))
                names = list(reader.schema.names)  # decoded here: bad UTF-8 fails here
                if self.schema is None:
                    self.schema, self.names = reader.schema, names
                elif not reader.schema.equals(self.schema):
                    raise InputError(file, "its columns differ from the first data file's")
                for batch in reader:
                    # Offsets and lengths are checked against the buffers before any read.
                    batch.validate(full=True)
                    self.pieces.append((k, batch))

    def rows(self) -> list[int]:
        return [b.num_rows for _, b in self.pieces]

    def read(self, j: int, columns: list[str]) -> Any:
        import pyarrow as pa

        k, batch = self.pieces[j]
        with _arrow_errors(self.files[k]):
            return pa.Table.from_batches([batch]).select(columns)

    def file_of(self, j: int) -> int:
        return self.pieces[j][0]


class _ParquetShards:
    """Parquet shards: row groups are the pieces; only their sizes are read up front."""

    def __init__(self, files: list[Path]) -> None:
        pq = import_parquet(files[0])
        self.files = files
        self._handles: list[Any] = []
        self._pieces: list[tuple[int, int, int]] = []
        self.schema, self.names = None, []
        for k, file in enumerate(files):
            with _arrow_errors(file):
                pf = pq.ParquetFile(file)
                names = list(pf.schema_arrow.names)  # decoded here: bad UTF-8 fails here
                if self.schema is None:
                    self.schema, self.names = pf.schema_arrow, names
                elif not pf.schema_arrow.equals(self.schema):
                    raise InputError(file, "its columns differ from the first shard's")
                for g in range(pf.metadata.num_row_groups):
                    self._pieces.append((k, g, pf.metadata.row_group(g).num_rows))
            self._handles.append(pf)

    def rows(self) -> list[int]:
        return [n for _, _, n in self._pieces]

    def read(self, j: int, columns: list[str]) -> Any:
        k, g, _ = self._pieces[j]
        with _arrow_errors(self.files[k]):
            return self._handles[k].read_row_group(g, columns=columns)

    def file_of(self, j: int) -> int:
        return self._pieces[j][0]


# ---------------------------------------------------------------- columns -> samples


def _open_tables(
    name: str, path: Path, files: Any, label_column: str | None, group_column: str | None
) -> Split:
    names = files.names
    if len(set(names)) != len(names):
        raise InputError(files.files[0], "duplicate column names")
    rows = files.rows()
    if not sum(rows):
        raise InputError(files.files[0], "no rows")
    roles = column_roles(files.files[0], names, label_column, group_column)
    free = [n for i, n in enumerate(names) if i not in roles]
    layout = text_layout(free)
    notes: list[str] = []
    if layout is not None:
        kind, columns = TEXT, _text_columns(layout)
        convert = _text_converter(files.files, layout)
        notes.append(f"text from the {'/'.join(columns)} column(s)")
    elif "image" in free and _is_image_struct(files.schema.field("image").type):
        kind, columns = IMAGE, ["image"]
        convert = _image_converter(path, files.files)
    else:
        table_layout = _table_layout(files, names, roles)
        kind, columns = table_layout.kind, [table_layout.names[i] for i in (
            *table_layout.numeric, *table_layout.text)]  # fmt: skip
        notes.extend(table_layout.notes)

        def convert(table: Any, _first: int, _file: int) -> object:
            return arrow_chunk(files.files[0], table_layout, table)

    labels = _column(files, names[roles[0]]) if roles[0] is not None else None
    groups = _column(files, names[roles[1]]) if roles[1] is not None else None
    samples = _PieceSamples(files, rows, columns, convert, kind)
    ids = _FileRowIds(files, rows)
    return Split(name, path, kind, samples, labels, groups, ids, tuple(columns), tuple(notes))


def _table_layout(files: Any, names: list[str], roles: tuple[int | None, int | None]) -> Layout:
    """Columns typed as for Parquet, text columns of distinct ids or paths excluded."""
    types = [arrow_type(files.schema.field(i).type) for i in range(len(names))]
    trackers = {
        i: IdTracker()
        for i, kind in enumerate(types)
        if kind == "text" and i not in roles and not id_by_name(names[i])
    }
    for j in range(len(files.rows()) if trackers else 0):
        if not any(t.alive for t in trackers.values()):
            break
        table = files.read(j, [names[i] for i in trackers])
        with _arrow_errors(files.files[files.file_of(j)]):
            for i, tracker in trackers.items():
                for value in table.column(names[i]).to_pylist() if tracker.alive else ():
                    if value is None:
                        tracker.alive = False
                        break
                    tracker.add(str(value))
    rows = sum(files.rows())
    id_values = [i in trackers and trackers[i].all_distinct(rows) for i in range(len(names))]
    return make_layout(files.files[0], names, roles, types, id_values, ())


def _text_columns(layout: str) -> list[str]:
    return ["prompt", "completion"] if layout == "prompt" else [layout]


def _is_image_struct(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def _column(files: Any, column: str) -> np.ndarray:
    import pyarrow as pa

    tables = [files.read(j, [column]).column(0) for j in range(len(files.rows()))]
    with _arrow_errors(files.files[0]):
        values = pa.chunked_array([c for t in tables for c in t.chunks], type=tables[0].type)
    return arrow_values(files.files[0], values)


Convert = Callable[[Any, int, int], object]


def _text_converter(files: list[Path], layout: str) -> Convert:
    def convert(table: Any, first: int, file: int) -> object:
        out = []
        for i, record in enumerate(table.to_pylist()):
            try:
                out.append(record_text(record, layout))
            except RecordError as exc:
                raise InputError(files[file], f"row {first + i}: {exc}") from None
        return out

    return convert


def _image_converter(path: Path, files: list[Path]) -> Convert:
    root = os.path.realpath(path)

    def convert(table: Any, first: int, file: int) -> object:
        out = []
        for i, cell in enumerate(table.column("image").to_pylist()):
            shown = Path(f"{files[file]} row {first + i}")
            out.append(decode_image(shown, io.BytesIO(_image_bytes(shown, root, cell))))
        return out

    return convert


def _image_bytes(shown: Path, root: str, cell: object) -> bytes:
    if not isinstance(cell, dict):
        raise InputError(shown, "no image (a null cell)")
    if cell.get("bytes"):
        return bytes(cell["bytes"])
    rel = cell.get("path")
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise InputError(shown, "the image has no bytes and no relative path in the folder")
    full = os.path.realpath(os.path.join(root, rel))
    if not inside(full, root):
        raise InputError(shown, f"image path {rel[:120]!r} points outside the folder: not followed")
    try:
        with open(full, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(shown, f"cannot read image {rel[:120]!r} ({exc.strerror})") from None


class _PieceSamples:
    """Samples converted one piece (record batch or row group) at a time."""

    def __init__(
        self, files: Any, rows: list[int], columns: list[str], convert: Convert, kind: str
    ) -> None:
        self._files, self._columns, self._convert, self._kind = files, columns, convert, kind
        self._starts = np.cumsum([0, *rows])
        self._file_starts = _file_starts(files, rows)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        done, pending = 0, []
        for j in range(len(self._starts) - 1):
            pending.extend(split_chunk(self._piece(j), int(self._starts[j + 1] - self._starts[j])))
            while len(pending) >= size:
                yield done, self._merge(pending[:size])
                done, pending = done + size, pending[size:]
        if pending:
            yield done, self._merge(pending)

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        pieces = np.searchsorted(self._starts, wanted, side="right") - 1
        found: dict[int, object] = {}
        for j in sorted(set(pieces.tolist())):
            rows = split_chunk(self._piece(j), int(self._starts[j + 1] - self._starts[j]))
            for i in sorted(set(wanted[pieces == j].tolist())):
                found[i] = rows[i - int(self._starts[j])]
        return [found[i] for i in wanted.tolist()]

    def _piece(self, j: int) -> object:
        file = self._files.file_of(j)
        first = int(self._starts[j]) - self._file_starts[file]
        table = self._files.read(j, self._columns)
        with _arrow_errors(self._files.files[file]):  # to_pylist decodes on the way
            return self._convert(table, first, file)

    def _merge(self, items: list[object]) -> object:
        if self._kind != TABLE:
            return items
        from diag.loaders.splits.model import TableChunk

        numeric = np.concatenate([t.numeric for t in items])  # type: ignore[attr-defined]
        texts = [t.text for t in items]  # type: ignore[attr-defined]
        joined = None if texts[0] is None else [s for t in texts for s in t]
        return TableChunk(numeric, joined)


def _file_starts(files: Any, rows: list[int]) -> list[int]:
    """The first sample index of each file (pieces come in file order)."""
    per_file = [0] * len(files.files)
    for j, n in enumerate(rows):
        per_file[files.file_of(j)] += n
    return [int(s) for s in np.cumsum([0, *per_file[:-1]])]


class _FileRowIds(LazyIds):
    """'data-00001-of-00002.arrow row 5' (row counted from 0 in that file, as `ds[5]`)."""

    def __init__(self, files: Any, rows: list[int]) -> None:
        self._names = [f.name for f in files.files]
        self._starts = _file_starts(files, rows)
        self._n = sum(rows)

    def __len__(self) -> int:
        return self._n

    def _id_of(self, index: int) -> str:
        k = bisect.bisect_right(self._starts, index) - 1
        return f"{self._names[k]} row {index - self._starts[k]}"


__all__ = ["is_datasets_folder", "open_datasets_folder"]
