"""Text training logs: Lightning and Keras CSV, plain CSV/TSV, JSON Lines, HF `trainer_state.json`.

Every reader returns one `LogRun`, whose series hold only the rows where the metric has a
value, in file order. The rules shared by all of them:

- A file with no metric value (empty, header only, only text) raises
  `InputError("no metrics: ...")`; no reader returns an empty `LogRun`. A log that says
  nothing is a wrong `--logs` argument, not a healthy run.
- Cells that are not numbers are skipped and counted in `LogRun.notes`; a column where
  they outnumber the numbers is text (a phase name, a file path), not a metric. Empty
  cells and `NA`, `N/A`, `null`, `None` are missing values, not bad ones.
- `inf`, `-inf`, `nan`, `NaN`, `Infinity` are kept as floats: rules need to see them.
- A number too large for a float (a 5000-digit integer) becomes +-inf, like `float()`
  makes it. A step must be a finite whole number below 2**53; a row whose step is not is
  skipped and counted. No string is ever given to `int()`, so Python's 4300-digit limit
  cannot fire.
- Files must be UTF-8 (a BOM is allowed) and at most `MAX_TEXT_LOG_BYTES`
  (`MAX_JSON_DOC_BYTES` for `trainer_state.json`, which is parsed whole).
- Errors are `InputError(path, cause)` with a one-line cause, nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import InputError
from diag.loaders.logs.series import LogRun, Series

# CSV and JSONL are streamed, so memory follows the number of values, not the file size;
# the cap bounds the run time on a wrong argument (a dataset dump passed as a log).
MAX_TEXT_LOG_BYTES = 2 * 1024**3
# trainer_state.json is parsed whole, and Python objects take about 10x the JSON text.
MAX_JSON_DOC_BYTES = 512 * 1024**2
# More distinct metrics than this is a dump of something else; the rest are ignored.
MAX_METRICS = 10_000
# Nested JSONL objects deeper than this are not flattened (their leaves are ignored).
MAX_FLATTEN_DEPTH = 32
# Beyond 2**53 a float no longer holds every integer, so a step there is not trusted.
MAX_STEP = 2**53

FORMATS = ("lightning-csv", "keras-csv", "csv", "jsonl", "hf-trainer")
STEP_NAMES = ("step", "global_step", "iteration", "iter", "it")
EPOCH_NAME = "epoch"

_CHUNK_ROWS = 65_536  # rows converted to arrays at a time: bounds the strings held at once
# Paths whose unfinished last line was left unread, while `complete_lines_only` is on.
_HELD_BACK: ContextVar[list[Path] | None] = ContextVar("diag_held_back", default=None)
_MISSING = frozenset({"", "NA", "N/A", "n/a", "na", "null", "None", "none"})
_DELIMITERS = (",", "\t", ";")
_SNIFF_BYTES = 64 * 1024
_HPARAMS_MAX_BYTES = 1024 * 1024
_HPARAMS_MAX_KEYS = 1000
_VERSION_DIR = re.compile(r"^version_\w+$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")


# --- public readers ---------------------------------------------------------------------


def read_csv_log(path: Path) -> list[LogRun]:
    """A Lightning `metrics.csv`, a Keras `CSVLogger` file, or any CSV/TSV with a header."""
    path = Path(path)
    _check_file(path, MAX_TEXT_LOG_BYTES)
    try:
        with _open_log(path, newline="") as f:
            return [_read_csv_stream(path, f)]
    except UnicodeDecodeError as e:
        raise InputError(path, _decode_cause(path, e)) from None
    except csv.Error as e:
        raise InputError(path, f"malformed CSV: {_one_line(e)}") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or _one_line(e)}") from None


def read_jsonl(path: Path) -> list[LogRun]:
    """JSON Lines, one object per line; nested objects are flattened with `/`."""
    path = Path(path)
    _check_file(path, MAX_TEXT_LOG_BYTES)
    table = _Table()
    bad_lines = 0
    try:
        with _open_log(path) as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                obj = _loads_or_none(text)
                if not isinstance(obj, dict):
                    bad_lines += 1
                    continue
                table.add_record(_flatten(obj))
    except UnicodeDecodeError as e:
        raise InputError(path, _decode_cause(path, e)) from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or _one_line(e)}") from None
    if table.n_rows == 0:
        if bad_lines:
            raise InputError(path, f"no metrics: none of its {bad_lines} lines is a JSON object")
        raise InputError(path, "no metrics: the file is empty")
    notes = [f"{bad_lines} lines that are not JSON objects skipped"] if bad_lines else []
    step = _pick_step_name(table.columns)
    epoch = _pick_name(table.columns, (EPOCH_NAME,))
    series, more = _assemble(table, step, epoch)
    return [_finish(path, "jsonl", series, "", {}, notes + more)]


def read_trainer_state(path: Path) -> list[LogRun]:
    """A Hugging Face `trainer_state.json`: its `log_history`, without the final summary."""
    path = Path(path)
    _check_file(path, MAX_JSON_DOC_BYTES)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, _decode_cause(path, e)) from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or _one_line(e)}") from None
    doc = _loads_document(path, text)
    if not isinstance(doc, dict):
        raise InputError(path, f"not a trainer_state.json: the top level is {_json_kind(doc)}")
    history = doc.get("log_history")
    if not isinstance(history, list):
        raise InputError(path, "not a trainer_state.json: it has no log_history list")
    table = _Table()
    bad = 0
    for entry in history:
        if not isinstance(entry, dict):
            bad += 1
        elif "train_runtime" not in entry:  # the end-of-training summary is not a point
            table.add_record(_flatten(entry))
    if table.n_rows == 0:
        raise InputError(path, "no metrics: log_history has no logged step")
    notes = [f"{bad} log_history entries that are not objects skipped"] if bad else []
    series, more = _assemble(table, "step", "epoch")
    run = path.parent.name if _CHECKPOINT_DIR.match(path.parent.name) else ""
    return [_finish(path, "hf-trainer", series, run, _trainer_meta(doc), notes + more)]


@contextmanager
def complete_lines_only() -> Iterator[list[Path]]:
    """Read CSV and JSON Lines logs only up to their last newline, and list the files whose
    last line was left out.

    For `diag watch`, which reads logs another process is still writing: a last line without
    its newline is a row cut mid-write, and read as it stands it gives a wrong number (a
    loss of `1.5e-05` cut to `1.5` is a spike). It is left for the next poll. `diag check`
    never turns this on: a finished log whose last row lacks a newline is read whole.
    """
    held_back: list[Path] = []
    token = _HELD_BACK.set(held_back)
    try:
        yield held_back
    finally:
        _HELD_BACK.reset(token)


def _open_log(path: Path, newline: str | None = None) -> io.TextIOWrapper:
    held_back = _HELD_BACK.get()
    if held_back is None:
        return open(path, encoding="utf-8-sig", newline=newline)
    raw = open(path, "rb")  # noqa: SIM115
    try:
        end = _complete_length(raw)
    except BaseException:
        raw.close()
        raise
    if end < raw.seek(0, io.SEEK_END):
        held_back.append(path)
    raw.seek(0)
    head = io.BufferedReader(_Head(raw, end))
    return io.TextIOWrapper(head, encoding="utf-8-sig", newline=newline)


def _complete_length(raw: io.BufferedReader) -> int:
    """The length of the file up to and including its last newline."""
    end = raw.seek(0, io.SEEK_END)
    while end > 0:
        start = max(0, end - _SNIFF_BYTES)
        raw.seek(start)
        chunk = raw.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


class _Head(io.RawIOBase):
    """The first `end` bytes of an open file."""

    def __init__(self, raw: io.BufferedReader, end: int) -> None:
        self._raw = raw
        self._left = end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def sniff_text_log(path: Path) -> str | None:
    """Which text log `path` is, from its name and first bytes; None when it is none of them.

    One of `FORMATS`. Never raises: an unreadable file is None, and the reader called on it
    then says why.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    if not head or b"\x00" in head:
        return None
    text = head.decode("utf-8-sig", errors="replace")
    name = path.name.lower()
    stripped = text.lstrip()
    if stripped.startswith("{"):
        if name == "trainer_state.json" or '"log_history"' in text:
            return "hf-trainer"
        return "jsonl" if _looks_like_jsonl(name, stripped) else None
    if name.endswith((".json", ".jsonl", ".ndjson")) or stripped.startswith("["):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    delimiter = _sniff_delimiter(lines[0])
    header = _split_line(lines[0], delimiter)
    if not name.endswith((".csv", ".tsv")) and not _looks_like_table(lines, delimiter):
        return None
    return _classify(path, [c.strip() for c in header])


def read_text_log(path: Path) -> list[LogRun]:
    """Sniff `path` and read it with the matching reader."""
    path = Path(path)
    kind = sniff_text_log(path)
    if kind == "hf-trainer":
        return read_trainer_state(path)
    if kind == "jsonl":
        return read_jsonl(path)
    if kind is not None:
        return read_csv_log(path)
    _check_file(path, MAX_TEXT_LOG_BYTES)  # a clearer cause for a missing or huge file
    raise InputError(path, "not a CSV, JSON Lines or trainer_state.json log")


# --- the column store all readers fill ----------------------------------------------------


@dataclass
class _Column:
    """The numbers of one column and the row each came from, plus how many cells were bad."""

    row_blocks: list[np.ndarray] = field(default_factory=list)
    value_blocks: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # one-at-a-time appends (JSON)
    values: list[float] = field(default_factory=list)
    bad: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rows = [*self.row_blocks, np.asarray(self.rows, dtype=np.int64)]
        values = [*self.value_blocks, np.asarray(self.values, dtype=np.float64)]
        return np.concatenate(rows), np.concatenate(values)


class _Table:
    """Columns by name, in first-seen order, with a row counter shared by all of them."""

    def __init__(self) -> None:
        self.columns: dict[str, _Column] = {}
        self.n_rows = 0
        self.ignored_names = 0

    def column(self, name: str) -> _Column | None:
        col = self.columns.get(name)
        if col is None:
            if len(self.columns) >= MAX_METRICS:
                self.ignored_names += 1
                return None
            col = self.columns[name] = _Column()
        return col

    def add_record(self, record: dict[str, Any]) -> None:
        """One JSON object: each numeric leaf is a cell of this row."""
        row = self.n_rows
        self.n_rows += 1
        for name, raw in record.items():
            value = _json_value(raw)
            if value is _ABSENT:
                continue
            col = self.column(name)
            if col is None:
                continue
            if value is _BAD:
                col.bad += 1
            else:
                col.rows.append(row)
                col.values.append(value)  # type: ignore[arg-type]

    def add_block(self, names: list[str], rows: list[list[str]]) -> None:
        """A block of CSV rows, all as wide as `names`, converted a column at a time."""
        base = self.n_rows
        self.n_rows += len(rows)
        for name, cells in zip(names, zip(*rows, strict=True), strict=False):
            col = self.column(name)
            if col is None:
                continue
            where, values, bad = _parse_cells(cells)
            col.bad += bad
            if len(values):
                where = np.arange(len(cells)) if where is None else where
                col.row_blocks.append(where + base)
                col.value_blocks.append(values)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_BAD = _Marker("BAD")  # a cell that holds something other than a number
_ABSENT = _Marker("ABSENT")  # an empty cell, or a JSON null


def _parse_cells(cells: tuple[str, ...]) -> tuple[np.ndarray | None, np.ndarray, int]:
    """Numbers in one column: (their positions, None meaning all; the values; bad count).

    `map(float, ...)` runs in C, so the common cases (a dense column, a sparse one) stay
    fast; only a block holding text falls back to a cell-by-cell loop.
    """
    if "" not in cells:
        try:
            return None, np.fromiter(map(float, cells), np.float64, len(cells)), 0
        except ValueError:
            pass
    where = [i for i, s in enumerate(cells) if s not in _MISSING]
    try:
        values = np.fromiter(map(float, [cells[i] for i in where]), np.float64, len(where))
        return np.asarray(where, dtype=np.int64), values, 0
    except ValueError:
        pass
    keep: list[int] = []
    kept: list[float] = []
    bad = 0
    for i in where:
        try:
            kept.append(float(cells[i]))
        except ValueError:
            bad += cells[i].strip() not in _MISSING
            continue
        keep.append(i)
    return np.asarray(keep, dtype=np.int64), np.asarray(kept, dtype=np.float64), bad


def _json_value(raw: object) -> float | _Marker:
    if raw is None:
        return _ABSENT
    if isinstance(raw, bool):  # an int subclass, but a flag is not a metric value
        return _BAD
    if isinstance(raw, float):
        return raw
    if isinstance(raw, int):
        try:
            return float(raw)
        except OverflowError:  # a few hundred digits: out of float range
            return math.inf if raw > 0 else -math.inf
    if isinstance(raw, str):
        if raw.strip() in _MISSING:
            return _ABSENT
        try:
            return float(raw)
        except ValueError:
            return _BAD
    return _BAD  # lists and the like


# --- from columns to series -------------------------------------------------------------


def _assemble(
    table: _Table, step_name: str | None, epoch_name: str | None
) -> tuple[dict[str, Series], list[str]]:
    """Series for every metric column, indexed by the step column; plus notes."""
    n = table.n_rows
    notes: list[str] = []
    epochs = _full_column(table, epoch_name, n)
    steps, ok, step_used = _resolve_steps(table, step_name, epoch_name, n, notes)
    skipped_rows = n - int(ok.sum())
    if skipped_rows:
        notes.append(f"{skipped_rows} rows without a usable {step_used!r} skipped")
    series: dict[str, Series] = {}
    text_columns: list[str] = []
    for name, col in table.columns.items():
        if name in (step_used, epoch_name):
            if name == epoch_name and col.bad:
                notes.append(f"{name}: {col.bad} cells that are not numbers skipped")
            continue
        rows, values = col.arrays()
        if col.bad > len(values):
            text_columns.append(name)
            continue
        if col.bad:
            notes.append(f"{name}: {col.bad} cells that are not numbers skipped")
        keep = ok[rows]
        rows, values = rows[keep], values[keep]
        if len(values):
            point_epochs = None if epochs is None else epochs[rows]
            series[name] = Series(name, steps[rows], values, point_epochs)
    if text_columns:
        shown = ", ".join(repr(c) for c in text_columns[:5])
        more = f" and {len(text_columns) - 5} more" if len(text_columns) > 5 else ""
        notes.append(f"text columns, not read as metrics: {shown}{more}")
    if table.ignored_names:
        notes.append(f"more than {MAX_METRICS} metric names: {table.ignored_names} ignored")
    return series, notes


def _full_column(table: _Table, name: str | None, n: int) -> np.ndarray | None:
    """One float per row, NaN where the column has no number."""
    if name is None or name not in table.columns:
        return None
    rows, values = table.columns[name].arrays()
    full = np.full(n, np.nan)
    full[rows] = values
    return full


def _resolve_steps(
    table: _Table, step_name: str | None, epoch_name: str | None, n: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(step per row as int64, which rows have one, the column it came from or None).

    The step column if there is one; else the epoch column when it holds whole numbers
    (Keras counts epochs only); else the row number.
    """
    full = _full_column(table, step_name, n)
    if full is not None:
        ok = _valid_steps(full)
        if ok.any():
            return _as_steps(full, ok), ok, step_name
        notes.append(f"column {step_name!r} holds no usable step: row numbers used instead")
    epochs = _full_column(table, epoch_name, n)
    if full is None and epochs is not None:
        present = ~np.isnan(epochs)
        ok = _valid_steps(epochs)
        if ok.any() and np.array_equal(ok, present):
            return _as_steps(epochs, ok), ok, epoch_name
    return np.arange(n, dtype=np.int64), np.ones(n, dtype=bool), None


def _valid_steps(full: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(full) & (np.abs(full) < MAX_STEP) & (full == np.floor(full))


def _as_steps(full: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok, full, 0).astype(np.int64)


def _pick_name(columns: Iterable[str], wanted: tuple[str, ...]) -> str | None:
    """The first of `wanted` among the column names, compared without case."""
    by_lower: dict[str, str] = {}
    for name in columns:
        by_lower.setdefault(name.lower(), name)
    for want in wanted:
        if want in by_lower:
            return by_lower[want]
    return None


def _pick_step_name(columns: Iterable[str]) -> str | None:
    return _pick_name(columns, STEP_NAMES)


def _finish(
    path: Path,
    fmt: str,
    series: dict[str, Series],
    run: str,
    meta: dict[str, Any],
    notes: list[str],
) -> LogRun:
    if not series:
        raise InputError(path, "no metrics: no column holds a number")
    return LogRun(path, fmt, series, run, meta, tuple(notes))


# --- CSV ----------------------------------------------------------------------------------


def _read_csv_stream(path: Path, f: io.TextIOBase) -> LogRun:
    first = f.readline()
    if not first.strip():
        raise InputError(path, "no metrics: the file is empty")
    delimiter = _sniff_delimiter(first)
    reader = csv.reader(chain([first], f), delimiter=delimiter)
    header = [c.strip() for c in next(reader)]
    if all(_is_number(c) for c in header):
        raise InputError(path, "no header row: the first line holds numbers, not names")
    fmt = _classify(path, header)
    names, renamed = _unique_names(header)
    notes = [f"duplicated column name {old!r} read as {new!r}" for old, new in renamed]
    table = _Table()
    width = len(header)
    ragged = 0
    while True:
        block = list(islice(reader, _CHUNK_ROWS))
        if not block:
            break
        rows = [r for r in block if r]  # csv yields [] for a blank line
        if set(map(len, rows)) - {width}:
            ragged += sum(len(r) != width for r in rows)
            rows = [_fit(r, width) for r in rows]
        if rows:
            table.add_block(names, rows)
    if table.n_rows == 0:
        raise InputError(path, "no metrics: a header but no rows")
    if ragged:
        notes.append(f"{ragged} rows with more or fewer cells than the header")
    if fmt == "lightning-csv":
        step, epoch = "step", _pick_name(names, (EPOCH_NAME,))
    elif fmt == "keras-csv":
        step, epoch = None, _pick_name(names, (EPOCH_NAME,))
    else:
        step, epoch = _pick_step_name(names), _pick_name(names, (EPOCH_NAME,))
    series, more = _assemble(table, step, epoch)
    run, meta = "", {}
    if fmt == "lightning-csv":
        run = path.parent.name if _VERSION_DIR.match(path.parent.name) else ""
        hparams, note = _read_hparams(path.parent / "hparams.yaml")
        if hparams:
            meta["hparams"] = hparams
        if note:
            notes.append(note)
    return _finish(path, fmt, series, run, meta, notes + more)


def _fit(row: list[str], width: int) -> list[str]:
    if len(row) < width:
        return row + [""] * (width - len(row))
    return row[:width]


def _unique_names(header: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Column names made unique (`loss`, `loss.1`); blank ones become `column_N`."""
    names: list[str] = []
    seen: set[str] = set()
    renamed = []
    for i, name in enumerate(header):
        base = name or f"column_{i + 1}"
        new, k = base, 0
        while new in seen:
            k += 1
            new = f"{base}.{k}"
        if name and new != name:
            renamed.append((name, new))
        seen.add(new)
        names.append(new)
    return names, renamed


def _classify(path: Path, header: list[str]) -> str:
    """lightning-csv, keras-csv or csv, from the header and where the file sits."""
    lower = [c.lower() for c in header]
    in_version_dir = bool(_VERSION_DIR.match(path.parent.name))
    if "step" in lower and (path.name == "metrics.csv" or in_version_dir):
        return "lightning-csv"
    # Keras writes `epoch` then its keys through sorted(); nothing else names a step.
    rest = header[1:]
    keras_like = lower[:1] == [EPOCH_NAME] and rest and rest == sorted(rest)
    if keras_like and not any(c in STEP_NAMES for c in lower):
        return "keras-csv"
    return "csv"


def _sniff_delimiter(line: str) -> str:
    # The header decides: the most frequent of , TAB ; (a tie keeps the earlier one).
    counts = [line.count(d) for d in _DELIMITERS]
    return _DELIMITERS[counts.index(max(counts))] if max(counts) else ","


def _split_line(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return line.split(delimiter)


def _looks_like_table(lines: list[str], delimiter: str) -> bool:
    """For a .txt/.log name: a header of short names, then a row as wide with a number."""
    header = _split_line(lines[0], delimiter)
    if len(header) < 2 or len(lines) < 2:
        return False
    if any(not c.strip() or len(c) > 100 for c in header):
        return False
    row = _split_line(lines[1], delimiter)
    return len(row) == len(header) and any(_is_number(c) for c in row)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- Lightning hparams.yaml ----------------------------------------------------------------


_SKIP = _Marker("SKIP")
_YAML_INT = re.compile(r"[-+]?[0-9]{1,30}")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_YAML_SPECIAL = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
_YAML_CONST = {"null": None, "~": None, "true": True, "false": False}


def _read_hparams(path: Path) -> tuple[dict[str, Any], str | None]:
    """Top-level `key: scalar` lines of Lightning's hparams.yaml, and a note if unreadable.

    Deliberately not a YAML parser: Lightning may dump arbitrary objects there with tags,
    and a log loader must never construct objects. Nested mappings, lists, anchors, tags
    and block scalars are skipped.
    """
    if not path.is_file():
        return {}, None
    try:
        with open(path, "rb") as f:
            text = f.read(_HPARAMS_MAX_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}, "hparams.yaml next to it could not be read as UTF-8 text"
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line[0] in " \t#-[{%.?&*!|>'\"":
            continue
        key, sep, raw = line.partition(":")
        key = key.strip()
        if not sep or not key or (raw and raw[0] not in " \t"):
            continue
        value = _yaml_scalar(raw.strip())
        if value is not _SKIP:
            out[key] = value
            if len(out) >= _HPARAMS_MAX_KEYS:
                break
    return out, None


def _yaml_scalar(raw: str) -> object:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        if len(raw) < 2 or raw[-1] != quote or (quote == '"' and "\\" in raw):
            return _SKIP
        inner = raw[1:-1]
        return inner.replace("''", "'") if quote == "'" else inner
    raw = raw.split(" #", 1)[0].strip()
    if not raw or raw[0] in "!&*[{|>@`%":
        return _SKIP  # a nested block, a tag, an anchor, a flow collection, a block scalar
    low = raw.lower()
    if low in _YAML_CONST:
        return _YAML_CONST[low]
    if low in _YAML_SPECIAL:
        return _YAML_SPECIAL[low]
    if _YAML_INT.fullmatch(raw):
        return int(raw)  # at most 30 digits: far below the int() digit limit
    if _YAML_FLOAT.fullmatch(raw):
        return float(raw)
    return raw if len(raw) <= 1000 else _SKIP


# --- JSON ----------------------------------------------------------------------------------


def _json_int(text: str) -> int | float:
    # Only used on a retry, after json refused an integer of more than 4300 digits.
    return int(text) if len(text) <= 300 else float(text)


def _loads_or_none(text: str) -> object:
    """One JSON value, or None when the text is not JSON (or is nested beyond recursion)."""
    try:
        return json.loads(text)
    except RecursionError:
        return None
    except ValueError:
        try:  # the integer digit limit is a ValueError too: read such integers as floats
            return json.loads(text, parse_int=_json_int)
        except (ValueError, RecursionError):
            return None


def _loads_document(path: Path, text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to read") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not JSON: {e.msg} (line {e.lineno})") from None
    except ValueError:
        pass
    try:
        return json.loads(text, parse_int=_json_int)
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to read") from None
    except ValueError as e:
        raise InputError(path, f"not JSON: {_one_line(e)}") from None


def _flatten(obj: dict[Any, Any]) -> dict[str, Any]:
    """`{"val": {"loss": 1}}` -> `{"val/loss": 1}`, to MAX_FLATTEN_DEPTH levels."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, dict[Any, Any], int]] = [("", obj, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        for key, value in node.items():
            name = prefix + _clean_name(str(key))
            if isinstance(value, dict):
                if depth < MAX_FLATTEN_DEPTH:
                    stack.append((name + "/", value, depth + 1))
            else:
                out[name] = value
    return out


def _clean_name(name: str) -> str:
    # JSON can carry lone surrogates ("\ud800"); they would break every UTF-8 report later.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "replace").decode("utf-8")
    return name


def _looks_like_jsonl(name: str, stripped: str) -> bool:
    if name.endswith((".jsonl", ".ndjson")):
        return True
    lines = [line for line in stripped.splitlines() if line.strip()]
    if not isinstance(_loads_or_none(lines[0].strip()), dict):
        return False
    # One object in a .json file is a document (a config, a summary), not a log.
    return not name.endswith(".json") or len(lines) > 1


def _json_kind(value: object) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _trainer_meta(doc: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    best = doc.get("best_metric")
    if isinstance(best, int | float) and not isinstance(best, bool):
        meta["best_metric"] = float(best)
    checkpoint = doc.get("best_model_checkpoint")
    if isinstance(checkpoint, str):
        meta["best_model_checkpoint"] = checkpoint
    step = doc.get("best_global_step")
    if isinstance(step, int) and not isinstance(step, bool):
        meta["best_global_step"] = step
        meta["best_step"] = step  # the key rules read, whatever the format
    return meta


# --- files ------------------------------------------------------------------------------


def _check_file(path: Path, cap: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or _one_line(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, "not a regular file")
    if st.st_size > cap:
        raise InputError(path, f"{st.st_size:,} bytes, over the {cap:,}-byte cap for this log")


def _decode_cause(path: Path, e: UnicodeDecodeError) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if head in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 text: save it as UTF-8"
    bad = e.object[e.start : e.start + 1].hex()
    return f"not UTF-8 text (byte 0x{bad} cannot be decoded)"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__
