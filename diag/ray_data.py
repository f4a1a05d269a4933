"""The training split read on Ray Data, from paths, globs and object-store URLs.

A split is cut on the driver into shard descriptors without reading its records: Parquet
by row groups (from each file's footer), JSON Lines by byte ranges (from the file sizes;
a record belongs to the range its first byte is in), any other format by sample ranges
read with diag's own loader (`read_range`). `ray.data.from_items` over the descriptors and
`map_batches` then run a stage on every shard in the workers, which open the files
themselves through pyarrow filesystems (local, `file://`, `s3://`, `gs://`, `hdfs://`; any
other fsspec protocol through fsspec). What comes back is one small result per shard and
its record count: the driver turns shard-local document ids into the split's ids (the
records before a shard are the counts of the shards before it), which are the ids the
in-process loaders give, since both count records in file order.

What scales: reading and the per-shard stage (workers x shards), and the driver's memory,
which holds the stage's merged output (for eval-contamination, the hits: the size of the
evaluation index) and one count per shard. What does not: the evaluation split is read and
indexed on the driver (it is small by nature, a benchmark); verification re-reads the
candidate training documents from their shards (a few per evaluation document); and a
split opened on the driver by URL or glob (`open_remote`) keeps what every split keeps
there: per sample its label, group and, for JSON Lines, line number (the ids a finding
shows); for Parquet the driver also reads the footers, the label and group columns, and
the first batch of each text column (whether it is an id column, as in process).
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.errors import InputError, UsageError

if TYPE_CHECKING:
    from diag.loaders.splits.model import Split

SHARD_ROWS = 100_000  # Parquet rows per shard (whole row groups)
SHARD_BYTES = 64 * 1024**2  # JSON Lines bytes per shard
# A split smaller than SHARD_* x workers is cut finer, into about this many shards per
# worker (so no worker idles while another reads the only shard, and the last shards
# balance), but never below these floors, where a shard's start-up would dominate.
SHARDS_PER_WORKER = 4
MIN_SHARD_ROWS = 2_000
MIN_SHARD_BYTES = 1024**2
CHUNK = 2048  # documents handed to a stage at once inside a shard, as in process
MAX_LINE_BYTES = 16 * 1024**2  # as the in-process JSON Lines loader
URL_RETRY_SECONDS = 10  # how long an object store that does not answer is retried

PARQUET, JSONL, SPLIT = "parquet", "jsonl", "split"
_SUFFIXES = {
    ".parquet": PARQUET, ".pq": PARQUET, ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL,
}  # fmt: skip
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB = re.compile(r"[*?\[]")


def is_url(path: str) -> bool:
    """Whether `path` names an object store or another filesystem by URL (`s3://...`)."""
    return _URL.match(path) is not None


def is_glob(path: str) -> bool:
    return _GLOB.search(path) is not None


# ------------------------------------------------------------------ filesystems


def filesystem(location: str) -> tuple[Any, str]:
    """The pyarrow filesystem that holds `location` (a URL or a local path) and the path
    inside it. Credentials and endpoints come from the environment, as pyarrow and fsspec
    read them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""
    import pyarrow.fs as pafs

    if not is_url(location):
        return pafs.LocalFileSystem(), location
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except Exception as exc:  # a scheme pyarrow has no native filesystem for
        native_error = exc
    else:
        if fs.type_name == "gcs":
            # pyarrow's GCS client retries for 15 minutes by default (an unreachable
            # service, missing credentials): a check must fail in seconds, on one line.
            from datetime import timedelta

            fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=URL_RETRY_SECONDS))
        return fs, path
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
    except Exception:
        raise InputError(
            location, f"no filesystem for this URL ({_one_line(native_error)})"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _one_line(exc: BaseException) -> str:
    from diag.loaders.splits.common import one_line

    return one_line(exc)


def _join(location: str, path: str) -> str:
    """The URL (or local path) of `path`, a path inside the filesystem of `location`."""
    if not is_url(location):
        return path
    scheme = location.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}" if scheme != "file" else f"file://{path}"


def resolve(location: str) -> list[str]:
    """The files `location` names (a file, or a glob over files), sorted, as URLs or local
    paths: only names and sizes are read."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    try:
        if not is_glob(path):
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                return [location]
            why = "no such object" if is_url(location) else "no such file"
            raise InputError(location, why if info.type == pafs.FileType.NotFound else "not a file")
        parts = path.split("/")
        fixed = next(i for i, p in enumerate(parts) if is_glob(p))
        base = "/".join(parts[:fixed]) or "/"
        selector = pafs.FileSelector(base, recursive=len(parts) - fixed > 1, allow_not_found=True)
        found = sorted(
            info.path
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.path.count("/") == path.count("/")
            and fnmatch.fnmatchcase(info.path, path)
        )
    except InputError:
        raise
    except Exception as exc:  # a missing bucket, no permission, no network
        raise InputError(location, f"cannot list ({_one_line(exc)})") from None
    if not found:
        raise InputError(location, "no file matches this pattern")
    return [_join(location, p) for p in found]


def file_format(locations: Sequence[str]) -> str | None:
    """PARQUET or JSONL when every file has that extension, else None."""
    kinds = {_SUFFIXES.get("." + loc.rsplit(".", 1)[-1].lower()) for loc in locations}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


# ------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """Part of a split a worker reads on its own: row groups [lo, hi) of a Parquet file,
    records starting in bytes [lo, hi) of a JSON Lines file, or samples [lo, hi) of a
    split opened with diag's loader (`spec`, a data_engines.SplitSpec)."""

    fmt: str
    location: str
    lo: int
    hi: int
    field: str = ""  # the text column (Parquet) or record layout (JSON Lines)
    spec: Any = None


def shard_size(total: int, largest: int, floor: int, workers: int) -> int:
    """Units per shard: `largest` at most, else enough shards for every worker."""
    wanted = -(-total // max(1, SHARDS_PER_WORKER * workers))
    return max(1, min(largest, max(floor, wanted)))


def cluster_workers() -> int:
    """The CPUs of the Ray cluster this process is connected to (1 if it is not)."""
    import ray

    if not ray.is_initialized():
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def plan(
    locations: Sequence[str],
    fmt: str | None,
    field: str,
    spec: Any,
    samples: int,
    workers: int = 1,
) -> list[Shard]:
    """The shards of a text split, in order: by row groups or bytes when its files are
    Parquet or JSON Lines, else by sample ranges of its loader; cut finer when the split
    is small for the `workers` that will read it."""
    if fmt == PARQUET:
        return [s for loc in locations for s in _parquet_shards(loc, field, samples, workers)]
    if fmt == JSONL:
        size = sum(_file_size(loc) for loc in locations)
        step = shard_size(size, SHARD_BYTES, MIN_SHARD_BYTES, workers)
        return [s for loc in locations for s in _jsonl_shards(loc, field, step)]
    step = shard_size(samples, SHARD_ROWS, MIN_SHARD_ROWS, workers)
    return [
        Shard(SPLIT, spec.path, lo, min(lo + step, samples), "", spec)
        for lo in range(0, samples, step)
    ]


def _parquet_shards(location: str, column: str, total: int = 0, workers: int = 1) -> list[Shard]:
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    try:
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh).metadata
            rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except Exception as exc:
        raise InputError(location, f"unreadable Parquet file ({_one_line(exc)})") from None
    step = shard_size(total or sum(rows), SHARD_ROWS, MIN_SHARD_ROWS, workers)
    shards, lo, held = [], 0, 0
    for g, count in enumerate(rows):
        held += count
        if held >= step or g == len(rows) - 1:
            shards.append(Shard(PARQUET, location, lo, g + 1, column))
            lo, held = g + 1, 0
    return shards


def _file_size(location: str) -> int:
    fs, path = filesystem(location)
    return fs.get_file_info(path).size or 0


def _jsonl_shards(location: str, layout: str, step: int = SHARD_BYTES) -> list[Shard]:
    size = _file_size(location)
    step = max(1, step)
    return [Shard(JSONL, location, lo, min(lo + step, size), layout) for lo in range(0, size, step)]


def shard_texts(shard: Shard, size: int = CHUNK) -> Iterator[list[str]]:
    """The shard's documents, `size` at a time, as the in-process loaders give them."""
    if shard.fmt == PARQUET:
        yield from _parquet_texts(shard, size)
    elif shard.fmt == JSONL:
        batch: list[str] = []
        for text in _jsonl_texts(shard):
            batch.append(text)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
    else:
        from diag.data_engines import _open
        from diag.loaders.splits.common import read_range

        split = _open(shard.spec)
        for _, chunk in read_range(split.samples, shard.lo, shard.hi, size):
            yield [str(t) for t in chunk]  # type: ignore[attr-defined]


def _parquet_texts(shard: Shard, size: int) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    fs, path = filesystem(shard.location)
    try:
        with fs.open_input_file(path) as fh:
            batches = pq.ParquetFile(fh).iter_batches(
                batch_size=size, row_groups=list(range(shard.lo, shard.hi)), columns=[shard.field]
            )
            for batch in batches:
                # As arrow_chunk reads a text column: a null is an empty document.
                yield ["" if v is None else str(v) for v in batch.column(0).to_pylist()]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(shard.location, f"unreadable Parquet file ({_one_line(exc)})") from None


def _jsonl_texts(shard: Shard) -> Iterator[str]:
    from diag.loaders.splits.text_records import RecordError, record_text

    for offset, record in _jsonl_records(shard):
        try:
            yield record_text(record, shard.field)
        except RecordError as exc:
            raise InputError(shard.location, f"record at byte {offset}: {exc}") from None


def _jsonl_records(shard: Shard, lines: list[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(byte offset, object) of the shard's records; `lines`, when given, gets each
    record's line number counted from the shard's first line, then the lines it spans."""
    count = 0
    for offset, raw in _jsonl_lines(shard):
        count += 1
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            record = json.loads(text.removeprefix("\ufeff") if offset == 0 else text)
        except (ValueError, RecursionError) as exc:
            raise InputError(shard.location, f"record at byte {offset}: {_one_line(exc)}") from None
        if not isinstance(record, dict):
            raise InputError(shard.location, f"record at byte {offset} is not a JSON object")
        if lines is not None:
            lines.append(count)
        yield offset, record
    if lines is not None:
        lines.append(count)


def _jsonl_lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of every line that starts in bytes [lo, hi) of the file."""
    fs, path = filesystem(shard.location)
    try:
        raw_file = fs.open_input_file(path)
    except Exception as exc:
        raise InputError(shard.location, f"cannot read ({_one_line(exc)})") from None
    with io.BufferedReader(raw_file, buffer_size=1024**2) as fh:
        pos = shard.lo
        if pos > 0:  # the line holding byte lo-1 belongs to the shard before
            fh.seek(pos - 1)
            pos += len(fh.readline(MAX_LINE_BYTES + 1)) - 1
        while pos < shard.hi:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise InputError(shard.location, f"a line longer than {MAX_LINE_BYTES} bytes")
            yield pos, raw
            pos += len(raw)


# ------------------------------------------------------------------ the stage on Ray Data


def data_context(progress_bars: bool = False) -> Any:
    """Ray Data's context for diag's stages: its own logging at errors only, its progress
    bars only when asked (diag draws its own where it can count)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress_bars
    return context


def run_stage(
    shards: Sequence[Shard],
    stage: Callable[[Any, Iterator[tuple[int, list[str]]]], Any],
    state: Any,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, Any]]:
    """`stage(state, chunks)` on every shard in the workers, `chunks` being its documents
    as (shard-local id of the first, texts); returns each shard's (record count, stage
    result) in shard order. `state` (the evaluation index) goes to the object store once."""
    import ray
    import ray.data

    data_context()
    # In a list, the references reach the workers as references: each fetches them once.
    shared = [ray.put(tuple(shards)), ray.put(state), stage]
    items = [{"shard": i} for i in range(len(shards))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(shards)))
    done = ds.map_batches(
        _shard_batch, fn_kwargs={"shared": shared}, batch_size=1, batch_format="numpy"
    )
    out: dict[int, tuple[int, Any]] = {}
    try:
        for row in done.iter_rows():
            # Our own workers' results, through the object store Ray itself unpickles from.
            out[int(row["shard"])] = (int(row["records"]), pickle.loads(row["result"]))  # noqa: S301
            if progress is not None:
                progress(int(row["records"]))
    except Exception as exc:
        raise _cause(exc) from None
    return [out[i] for i in range(len(shards))]


class WorkerInputError(InputError):
    """An InputError raised in a worker. InputError's two arguments do not survive the trip
    back to the driver (an exception is rebuilt from its message alone), this one's do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerInputError, (self.path, self.cause))


@contextmanager
def carried() -> Iterator[None]:
    """Around work done in a worker: its input errors reach the driver as one line."""
    try:
        yield
    except WorkerInputError:
        raise
    except InputError as exc:
        raise WorkerInputError(exc.path, exc.cause) from None


def _cause(exc: BaseException) -> BaseException:
    """The DiagError a worker raised (a one-line error for the CLI), else `exc` itself."""
    from diag.errors import DiagError

    seen = exc
    while seen is not None:
        # Ray's wrapper of a worker's error is an instance of the error's class too, with
        # the whole remote traceback as its text: the original is its `cause`.
        for candidate in (getattr(seen, "cause", None), seen):
            if isinstance(candidate, DiagError):
                return candidate
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return exc


def _shard_batch(batch: dict[str, np.ndarray], shared: list[Any]) -> dict[str, np.ndarray]:
    shards_ref, state_ref, stage = shared
    shards, state = _cached(shards_ref), _cached(state_ref)
    index = int(batch["shard"][0])
    counted = _Counted(shard_texts(shards[index]))
    with carried():
        result = stage(state, iter(counted))
    return {
        "shard": np.array([index]),
        "records": np.array([counted.total]),
        "result": np.array([pickle.dumps(result)], dtype=object),
    }


class _Counted:
    """Chunks of texts as (id of the first in the shard, texts), counting them."""

    def __init__(self, chunks: Iterator[list[str]]) -> None:
        self._chunks, self.total = chunks, 0

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        for texts in self._chunks:
            yield self.total, texts
            self.total += len(texts)


_CACHE: dict[str, Any] = {}


def _cached(ref: Any) -> Any:
    """An object-store value fetched once per worker process, not once per shard."""
    import ray

    key = ref.hex()
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = ray.get(ref)
    return _CACHE[key]


# ------------------------------------------------------------------ re-reading documents


class ShardSamples:
    """A split's samples as its shards give them. `take` (verification, the documents a
    finding shows) re-reads only the shards holding wanted documents, in the workers when
    `parallel` (only those documents come back), else in this process."""

    def __init__(
        self, shards: Sequence[Shard], counts: Sequence[int], parallel: bool = True
    ) -> None:
        self._shards, self._parallel = list(shards), parallel
        self._first = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=self._first[1:])

    def __len__(self) -> int:
        return int(self._first[-1])

    def first_ids(self) -> np.ndarray:
        return self._first[:-1]

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        return self.range_chunks(0, len(self), size)

    def range_chunks(self, start: int, stop: int, size: int) -> Iterator[tuple[int, object]]:
        """Samples start..stop-1, `size` at a time, reading only the shards that hold them."""
        from diag.loaders.splits.common import check_size

        check_size(size)
        batch: list[str] = []
        first = start
        for k in range(
            int(np.searchsorted(self._first, start, side="right")) - 1, len(self._shards)
        ):
            at = int(self._first[k])
            if at >= stop:
                break
            for texts in shard_texts(self._shards[k], size):
                lo, hi = max(start - at, 0), min(stop - at, len(texts))
                batch.extend(texts[lo:hi])
                at += len(texts)
                while len(batch) >= size:
                    yield first, batch[:size]
                    first, batch = first + size, batch[size:]
                if at >= stop:
                    break
        if batch:
            yield first, batch

    def take(self, indices: Sequence[int]) -> list[object]:
        from diag.loaders.splits.common import check_indices

        wanted = check_indices(indices, len(self))
        owner = np.searchsorted(self._first, wanted, side="right") - 1
        jobs = [
            (self._shards[k], sorted(set((wanted[owner == k] - self._first[k]).tolist())))
            for k in np.unique(owner).tolist()
        ]
        found: dict[int, str] = {}
        for k, texts in zip(
            np.unique(owner).tolist(), _map(_take_from_shard, jobs, self._parallel), strict=True
        ):
            for local, text in texts.items():
                found[int(self._first[k]) + local] = text
        return [found[i] for i in wanted.tolist()]


def _take_from_shard(shard: Shard, local: list[int]) -> dict[int, str]:
    wanted, found, at = set(local), {}, 0
    with carried():
        for texts in shard_texts(shard):
            for text in texts:
                if at in wanted:
                    found[at] = text
                at += 1
            if len(found) == len(wanted):
                break
    return found


# ------------------------------------------------------------------ splits by URL or glob


def open_remote(
    name: str,
    location: str,
    label_column: str | None = None,
    group_column: str | None = None,
    *,
    parallel: bool = True,
) -> Split:
    """A `Split` of Parquet or JSON Lines files named by a URL or a glob, without reading
    its records on the driver: Parquet gives its row counts in the footers (labels and
    groups are read, a column each); JSON Lines files are scanned by the workers shard by
    shard (`parallel`; else in this process), which send back per record only its line
    number, label and group."""
    from diag.loaders.splits.model import TEXT, Split

    locations = resolve(location)
    fmt = file_format(locations)
    if fmt == PARQUET:
        parts = [_open_parquet(name, loc, label_column, group_column) for loc in locations]
        return parts[0] if len(parts) == 1 else _concat(name, location, parts)
    if fmt != JSONL:
        raise InputError(
            location, "a split read from a URL or a glob must be Parquet or JSON Lines files"
        )
    layout, label, group = _jsonl_fields(locations[0], label_column, group_column)
    shards = [s for loc in locations for s in _jsonl_shards(loc, layout)]
    scans = _map(_scan_shard, [(shard, label, group) for shard in shards], parallel)
    samples = ShardSamples(shards, [len(lines) for lines, _, _, _ in scans], parallel)
    if not len(samples):
        raise InputError(location, "no JSON records (empty files?)")
    names, files, lines = [], [], []
    line_base, previous = 0, None
    for shard, (shard_lines, _, _, newlines) in zip(shards, scans, strict=True):
        if shard.location != previous:
            names.append(shard.location.rsplit("/", 1)[-1])
            line_base, previous = 0, shard.location
        files.append(np.full(len(shard_lines), len(names) - 1, dtype=np.int32))
        lines.append(np.asarray(shard_lines, dtype=np.int64) + line_base)
        line_base += newlines
    labels = _typed([v for _, ls, _, _ in scans for v in ls]) if label else None
    groups = _typed([v for _, _, gs, _ in scans for v in gs]) if group else None
    ids = _LineIds(names if len(names) > 1 else None, np.concatenate(files), np.concatenate(lines))
    note = f"text from the {layout!r} field" + ("s" if layout == "messages" else "")
    return Split(name, location, TEXT, samples, labels, groups, ids, (layout,), (note,))  # type: ignore[arg-type]


def _open_parquet(name: str, location: str, label: str | None, group: str | None) -> Any:
    from dataclasses import replace

    from diag.loaders.splits.parquet import open_parquet

    fs, path = filesystem(location)
    try:
        fh = fs.open_input_file(path)
    except Exception as exc:
        raise InputError(location, f"cannot read ({_one_line(exc)})") from None
    split = open_parquet(name, fh, label, group)
    return replace(split, source=location)


def _jsonl_fields(
    location: str, label_column: str | None, group_column: str | None
) -> tuple[str, str | None, str | None]:
    """The text layout, label and group fields, from the first record (as open_jsonl)."""
    from diag.loaders.splits.common import GROUP_COLUMNS, LABEL_COLUMNS, names_list
    from diag.loaders.splits.jsonl import _role
    from diag.loaders.splits.text_records import text_layout

    fs, path = filesystem(location)
    whole = Shard(JSONL, location, 0, fs.get_file_info(path).size or 0)
    first = next(_jsonl_records(whole), None)
    if first is None:
        raise InputError(location, "no JSON records (an empty file?)")
    keys = list(first[1])
    layout = text_layout(keys)
    if layout is None:
        raise InputError(location, f"no text field (found {names_list(keys)})")
    label = _role(location, 1, keys, label_column, LABEL_COLUMNS, "label")  # type: ignore[arg-type]
    group = _role(location, 1, keys, group_column, GROUP_COLUMNS, "group")  # type: ignore[arg-type]
    return layout, label, group


def _scan_shard(
    shard: Shard, label: str | None, group: str | None
) -> tuple[list[int], list[str], list[str], int]:
    """A JSON Lines shard's records: line numbers (from the shard's first line, counted
    from 1), labels and groups as text, and the lines the shard spans."""
    from diag.loaders.splits.jsonl import _cell
    from diag.loaders.splits.text_records import RecordError, record_text

    lines: list[int] = []
    labels, groups = [], []
    with carried():
        for offset, record in _jsonl_records(shard, lines):
            try:
                record_text(record, shard.field)  # a record without its text fails here too
            except RecordError as exc:
                raise InputError(shard.location, f"record at byte {offset}: {exc}") from None
            if label is not None:
                labels.append(_cell(record.get(label)))
            if group is not None:
                groups.append(_cell(record.get(group)))
    return lines[:-1], labels, groups, lines[-1]


def _map(fn: Callable[..., Any], args: list[tuple[Any, ...]], parallel: bool) -> list[Any]:
    if not parallel:
        return [fn(*a) for a in args]
    import ray

    task = ray.remote(fn)
    try:
        return ray.get([task.remote(*a) for a in args])
    except Exception as exc:
        raise _cause(exc) from None


def _typed(values: list[str]) -> np.ndarray:
    from diag.loaders.splits.common import typed_values

    return typed_values(values)


class _LineIds:
    """'line 17', or 'train-00001.jsonl line 17' across files, as open_jsonl names them."""

    def __init__(self, names: list[str] | None, files: np.ndarray, lines: np.ndarray) -> None:
        self._names, self._files, self._lines = names, files, lines

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> str:
        line = f"line {int(self._lines[index])}"
        return line if self._names is None else f"{self._names[int(self._files[index])]} {line}"


def _concat(name: str, location: str, parts: list[Any]) -> Any:
    """One split of several files' splits, in order (a glob of Parquet files)."""
    from diag.loaders.splits.model import Split

    kinds = {(p.kind, p.columns) for p in parts}
    if len(kinds) != 1:
        raise InputError(location, "the files do not have the same columns")
    names = [p.source.rsplit("/", 1)[-1] for p in parts]
    sizes = [len(p) for p in parts]
    ids = [
        f"{n} {p.sample_id(i)}" for n, p in zip(names, parts, strict=True) for i in range(len(p))
    ]
    labels = _joined([p.labels for p in parts])
    groups = _joined([p.groups for p in parts])
    first = parts[0]
    return Split(
        name, location, first.kind, _Concat([p.samples for p in parts], sizes), labels, groups,
        ids, first.columns, first.notes,
    )  # fmt: skip


def _joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    if any(a is None for a in arrays):
        return None
    return np.concatenate(arrays)  # type: ignore[arg-type]


class _Concat:
    """Samples of several sources one after another."""

    def __init__(self, sources: list[Any], sizes: list[int]) -> None:
        self._sources = sources
        self._first = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._first[1:])

    def __len__(self) -> int:
        return int(self._first[-1])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        for k, source in enumerate(self._sources):
            for start, chunk in source.chunks(size):
                yield int(self._first[k]) + start, chunk

    def take(self, indices: Sequence[int]) -> list[object]:
        from diag.loaders.splits.common import check_indices

        wanted = check_indices(indices, len(self))
        owner = np.searchsorted(self._first, wanted, side="right") - 1
        found: dict[int, object] = {}
        for k in np.unique(owner).tolist():
            mine = sorted(set(wanted[owner == k].tolist()))
            local = [i - int(self._first[k]) for i in mine]
            found.update(zip(mine, self._sources[k].take(local), strict=True))
        return [found[i] for i in wanted.tolist()]


def needs_ray(locations: Sequence[str]) -> None:
    """In process, a split named by a URL is refused with the way to read it."""
    remote = [loc for loc in locations if is_url(loc)]
    if remote:
        raise UsageError(f"{remote[0]}: a split read from a URL needs --engine ray")
