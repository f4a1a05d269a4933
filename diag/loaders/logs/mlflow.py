"""MLflow runs, from a file store (`mlruns/`) or the SQLite store (`mlflow.db`).

MLflow >= 3.7 logs to `sqlite:///mlflow.db` by default; older setups and `MLFLOW_ALLOW_FILE_STORE`
keep the `mlruns/` folder layout. Both are read without MLflow, and both are treated as hostile
input: the file store is walked without following symlinks, the database is opened read-only
without side files and queried with fixed SQL on tables checked to be real tables, and every
count (runs, metric files, bytes, points) has a cap.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import urllib.parse
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diag.errors import InputError
from diag.loaders.logs.series import LogRun, Series

MAX_RUNS = 1000  # per call; a linter reads runs, not a whole tracking server
MAX_METRIC_FILES = 2000  # per run (file store)
MAX_METRIC_FILE_BYTES = 64 << 20  # ~2M points at MLflow's ~30 bytes a line
MAX_POINTS = 5_000_000  # per call, both stores: ~120 MB of arrays, ~15 s from a big database
MAX_SMALL_FILE_BYTES = 64 << 10  # meta.yaml (~1 kB), params/<key> (MLflow caps at 6-8 kB), tags
MAX_FOLDERS = 20 * MAX_RUNS  # experiment and run folders examined per call, deleted ones too
MAX_PARAMS = 2000  # per run
MAX_TREE_DEPTH = 32  # metric keys with `/` nest folders; deeper is not a real key
MAX_DIR_ENTRIES = 100_000  # per folder listed
MAX_SQL_TEXT_BYTES = 1 << 20  # longest string or blob SQLite may hand us
# SQLite VM instructions per connection, then give up: reading a point through MLflow's index
# takes ~32 (measured), so 5M points need ~0.2e9; the rest is for crafted files without it
MAX_SQL_VM_STEPS = 1_000_000_000
SHORT_ID = 8

SQLITE_MAGIC = b"SQLite format 3\x00"
RUN_NAME_TAG = "mlflow.runName"
# MLflow's SQL store cannot keep inf in its FLOAT column and writes ±DBL_MAX instead
# (`SqlAlchemyStore.sanitize_metric_value`); no real loss is exactly DBL_MAX, so we undo it.
DBL_MAX = 1.7976931348623157e308

_INT = re.compile(r"[-+]?[0-9]{1,19}", re.ASCII)
_FLOAT = re.compile(
    r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?|nan|inf|infinity)",
    re.ASCII | re.IGNORECASE,
)
_MAX_FLOAT_TOKEN = 64  # repr() of a float is ~25 chars; a 5000-digit "value" is garbage
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class _Budget:
    """What is left of the per-call caps, shared by all runs of one call."""

    # read at call time, not import time, so a cap can be lowered (tests do)
    points: int = field(default_factory=lambda: MAX_POINTS)
    folders: int = field(default_factory=lambda: MAX_FOLDERS)


@dataclass
class _Points:
    """One metric's points while they are being collected, in typed arrays: 8 bytes a
    number where Python lists would hold a ~32-byte object each."""

    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    times: array = field(default_factory=lambda: array("d"))

    def add(self, step: int, value: float, time: float) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.times.append(time)

    def series(self, name: str) -> Series:
        return Series(
            name=name,
            steps=np.array(self.steps, dtype=np.int64),
            values=np.array(self.values, dtype=np.float64),
            wall_times=np.array(self.times, dtype=np.float64),
        )


@dataclass
class _RunInfo:
    """What one run contributes before it becomes a `LogRun`."""

    source: Path
    run_id: str
    name: str
    experiment: str
    hparams: dict[str, str]
    series: dict[str, Series]
    notes: list[str]


# ---------------------------------------------------------------------------- public API


def is_mlflow(path: Path) -> bool:
    """Cheap check: an MLflow run, experiment or `mlruns/` folder, or an MLflow SQLite file."""
    try:
        if path.is_dir():
            return _folder_kind(path) is not None
        if path.is_file():
            return _has_sqlite_magic(path) and _sqlite_has_mlflow_tables(path)
    except (OSError, ValueError, InputError, sqlite3.Error):
        pass
    return False


def read_mlflow(path: Path) -> list[LogRun]:
    """Every live run under `path` (store root, experiment, run folder or SQLite file).

    Raises `InputError` for anything that is not a readable MLflow store.
    """
    path = Path(path)
    try:
        if path.is_dir():
            infos, fmt = _read_file_store(path), "mlflow"
        elif path.is_file():
            infos, fmt = _read_sqlite(path), "mlflow-sqlite"
        else:
            raise InputError(path, "no such file or folder")
    except sqlite3.Error as exc:
        raise InputError(path, _sqlite_cause(exc)) from None
    except (OSError, ValueError, OverflowError, UnicodeError, RecursionError) as exc:
        raise InputError(path, f"cannot read MLflow data: {_one_line(exc)}") from None
    return _to_log_runs(infos, fmt)


def _to_log_runs(infos: list[_RunInfo], fmt: str) -> list[LogRun]:
    labels = _unique_labels([(_clean(info.name), _clean(info.run_id)) for info in infos])
    return [
        LogRun(
            source=info.source,
            format=fmt,
            series=info.series,
            run=label,
            meta={
                "hparams": info.hparams,
                "experiment": _clean(info.experiment),
                "run_id": _clean(info.run_id),
            },
            notes=tuple(info.notes),
        )
        for info, label in zip(infos, labels, strict=True)
    ]


def _unique_labels(runs: list[tuple[str, str]]) -> list[str]:
    """`name (short id)`; the full id where two short ids collide, `#n` if even those do."""

    def label(name: str, run_id: str) -> str:
        return f"{name} ({run_id})" if name else run_id

    first = [label(name, run_id[:SHORT_ID]) for name, run_id in runs]
    counts: dict[str, int] = {}
    for text in first:
        counts[text] = counts.get(text, 0) + 1
    out: list[str] = []
    seen: set[str] = set()
    for text, (name, run_id) in zip(first, runs, strict=True):
        candidate = text if counts[text] == 1 else label(name, run_id)
        n = 1
        while candidate in seen:  # the same run id twice: only a copied or crafted store
            n += 1
            candidate = f"{label(name, run_id)} #{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _clean(text: str, limit: int = 200) -> str:
    """A name fit for a one-line report: names come from files anyone can write, and a
    newline or terminal escape in a run name would otherwise reach the output."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 2])
    return " ".join(printable.split())[:limit]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------- file store


def _read_file_store(path: Path) -> list[_RunInfo]:
    kind = _folder_kind(path)
    if kind is None:
        raise InputError(path, "not an MLflow folder (no run, experiment or mlruns/ layout)")
    budget = _Budget()
    if kind == "run":
        meta = _read_meta(path)
        if meta.get("lifecycle_stage") == "deleted":
            raise InputError(path, "this MLflow run is deleted (lifecycle_stage: deleted)")
        return [_read_run_folder(path, meta, _experiment_of_run(path, meta), budget)]
    if kind == "experiment":
        if _read_meta(path).get("lifecycle_stage") == "deleted":
            raise InputError(path, "this MLflow experiment is deleted (lifecycle_stage: deleted)")
        experiments = [path]
    else:  # `.trash` holds deleted experiments
        experiments = [p for p in _subfolders(path) if not p.name.startswith(".")]
    infos: list[_RunInfo] = []
    capped = _read_experiments(experiments, budget, infos)
    if capped:
        for info in infos:
            info.notes.append(f"only part of the store was read ({capped})")
    return infos


def _read_experiments(experiments: list[Path], budget: _Budget, infos: list[_RunInfo]) -> str:
    """Append the live runs of `experiments` to `infos`; return which cap stopped it, or ""."""
    for exp in experiments:
        budget.folders -= 1
        if budget.folders < 0:
            return f"{MAX_FOLDERS} folders examined"
        exp_meta = _read_meta(exp)
        if "experiment_id" not in exp_meta or exp_meta.get("lifecycle_stage") == "deleted":
            continue
        exp_name = exp_meta.get("name") or exp_meta["experiment_id"]
        for folder in _subfolders(exp):
            budget.folders -= 1
            if budget.folders < 0:
                return f"{MAX_FOLDERS} folders examined"
            meta = _read_meta(folder)
            if not _is_run_meta(meta) or meta.get("lifecycle_stage") == "deleted":
                continue
            if len(infos) == MAX_RUNS:
                return f"{MAX_RUNS} runs"
            infos.append(_read_run_folder(folder, meta, exp_name, budget))
    return ""


def _folder_kind(path: Path) -> str | None:
    """ "run", "experiment" or "root" by the meta.yaml files MLflow writes; None otherwise."""
    meta = _read_meta(path)
    if _is_run_meta(meta):
        return "run"
    if "experiment_id" in meta:
        return "experiment"
    if meta:
        return None
    if (path / ".trash").is_dir() and not (path / ".trash").is_symlink():
        return "root"
    for i, child in enumerate(_subfolders(path)):
        child_meta = _read_meta(child)
        if "experiment_id" in child_meta and not _is_run_meta(child_meta):
            return "root"
        if i >= 50:  # detection stays cheap in a big unrelated folder
            break
    return None


def _is_run_meta(meta: dict[str, str]) -> bool:
    return "run_id" in meta or "run_uuid" in meta


def _experiment_of_run(run: Path, meta: dict[str, str]) -> str:
    """The experiment's name from the parent's meta.yaml when it is this run's experiment."""
    exp_id = meta.get("experiment_id", "")
    parent = _read_meta(run.absolute().parent)
    if exp_id and parent.get("experiment_id") == exp_id and parent.get("name"):
        return parent["name"]
    return exp_id


def _read_run_folder(
    folder: Path, meta: dict[str, str], experiment: str, budget: _Budget
) -> _RunInfo:
    notes: list[str] = []
    run_id = meta.get("run_id") or meta.get("run_uuid") or folder.name
    tag = _read_small(folder / "tags" / RUN_NAME_TAG)
    name = (tag if tag is not None else meta.get("run_name", "")).strip()
    params = _tree_files(folder / "params", MAX_PARAMS, notes)
    hparams = {key: _read_small(file) or "" for key, file in params}
    series: dict[str, Series] = {}
    for key, file in _tree_files(folder / "metrics", MAX_METRIC_FILES, notes):
        points = _read_metric_file(file, key, budget, notes)
        if points is not None:
            series[key] = points.series(key)
    return _RunInfo(folder, run_id, name, experiment, hparams, series, notes)


def _tree_files(top: Path, limit: int, notes: list[str]) -> list[tuple[str, Path]]:
    """Files under `top` as (key, path); a key is the `/`-joined relative path, as MLflow
    turns a key with slashes into nested folders. Symlinks are never followed: MLflow makes
    none, and one could point anywhere on the machine."""
    found: list[tuple[str, Path]] = []
    skipped_links = 0
    stack: list[tuple[Path, str, int]] = [(top, "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        for entry in _scandir(folder):
            if entry.is_symlink():
                skipped_links += 1
            elif entry.is_dir(follow_symlinks=False):
                if depth < MAX_TREE_DEPTH:
                    stack.append((Path(entry.path), f"{prefix}{entry.name}/", depth + 1))
            elif entry.is_file(follow_symlinks=False):
                found.append((prefix + entry.name, Path(entry.path)))
        if len(found) > limit:
            notes.append(f"{top.name}/: more than {limit} files, only {limit} read")
            break
    if skipped_links:
        notes.append(f"{top.name}/: {skipped_links} symlink(s) not followed")
    return sorted(found)[:limit]


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            entries = []
            for entry in it:
                entries.append(entry)
                if len(entries) >= MAX_DIR_ENTRIES:
                    break
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(entries, key=lambda e: e.name)


def _subfolders(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _scandir(folder) if e.is_dir(follow_symlinks=False)]


def _open_regular(path: Path) -> int | None:
    """A descriptor for `path` only if it is a regular file reached without a final symlink
    (O_NOFOLLOW) and without blocking on a FIFO (O_NONBLOCK)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _read_bytes(path: Path, limit: int) -> tuple[bytes, bool] | None:
    """Up to `limit` bytes of a regular file and whether there was more; None if unreadable."""
    fd = _open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit], len(data) > limit


def _read_small(path: Path) -> str | None:
    got = _read_bytes(path, MAX_SMALL_FILE_BYTES)
    return None if got is None else got[0].decode("utf-8", errors="replace")


def _read_meta(folder: Path) -> dict[str, str]:
    text = _read_small(folder / "meta.yaml")
    return {} if text is None else _parse_meta(text)


def _parse_meta(text: str) -> dict[str, str]:
    """The top-level `key: value` pairs of an MLflow meta.yaml, without a YAML library.

    MLflow writes it with `yaml.safe_dump`: flat keys, scalars quoted when YAML needs it,
    and long scalars folded onto indented continuation lines, which are joined back here.
    """
    raw: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            raw[last] = f"{raw[last]} {line.strip()}".strip()
        elif ":" in line and not line.startswith(("#", "-")):
            key, _, value = line.partition(":")
            last = key.strip()
            raw[last] = value.strip()
        else:
            last = None
    return {key: _yaml_scalar(value) for key, value in raw.items()}


def _yaml_scalar(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)  # YAML's double-quoted escapes are JSON's, mostly
        except ValueError:
            return value[1:-1]
        return decoded if isinstance(decoded, str) else value[1:-1]
    return "" if value in ("null", "~") else value


def _read_metric_file(file: Path, key: str, budget: _Budget, notes: list[str]) -> _Points | None:
    got = _read_bytes(file, MAX_METRIC_FILE_BYTES)
    if got is None:
        notes.append(f"metric {key!r}: not a regular file, not read")
        return None
    data, more = got
    if more:
        data = data[: data.rfind(b"\n") + 1]  # the cut-off line would read as a bad line
        notes.append(f"metric {key!r}: only the first {MAX_METRIC_FILE_BYTES >> 20} MB read")
    points, bad, first_bad, capped = _parse_metric_lines(data, budget)
    if capped:
        notes.append(f"metric {key!r}: point cap ({MAX_POINTS}) reached, the rest not read")
    if bad:
        notes.append(
            f"metric {key!r}: skipped {bad} line(s) that are not "
            f"'<timestamp> <value> <step>' (first: line {first_bad})"
        )
    if not points.values:
        notes.append(f"metric {key!r}: no valid line, not read")
        return None
    return points


def _parse_metric_lines(data: bytes, budget: _Budget) -> tuple[_Points, int, int, bool]:
    """Points of a metric file, the number of bad lines, the first bad line number and
    whether the point budget ran out before the end."""
    points = _Points()
    bad = first_bad = 0
    # split on "\n" only, as MLflow writes: line numbers then match what an editor shows
    for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        fields = line.split()
        if not fields:
            continue
        parsed = _parse_metric_line(fields)
        if parsed is None:
            bad += 1
            first_bad = first_bad or number
            continue
        if budget.points <= 0:
            return points, bad, first_bad, True
        budget.points -= 1
        points.add(*parsed)
    return points, bad, first_bad, False


def _parse_metric_line(fields: list[str]) -> tuple[int, float, float] | None:
    """(step, value, wall time in s) of `<ts_ms> <value> [<step> [<dataset> <digest>]]`.

    MLflow writes 3 fields, 5 when a dataset is attached, and wrote 2 before it had steps
    (step 0). Tokens are matched as ASCII numbers first: `int()`/`float()` would also take
    `1_000`, non-ASCII digits and, for `int`, refuse 5000 digits with an exception."""
    if len(fields) not in (2, 3, 5):
        return None
    ts = _int64(fields[0])
    step = _int64(fields[2]) if len(fields) > 2 else 0
    token = fields[1]
    if ts is None or step is None or len(token) > _MAX_FLOAT_TOKEN or not _FLOAT.fullmatch(token):
        return None
    return step, float(token), ts / 1000.0


def _int64(token: str) -> int | None:
    if not _INT.fullmatch(token):
        return None
    value = int(token)
    return value if _INT64[0] <= value <= _INT64[1] else None


# ---------------------------------------------------------------------------- SQLite store

# Fixed SQL only. `main.` pins the file's own schema. Tables are checked to be real tables first.
_SQL_SCHEMA = (
    "SELECT type, name, sql FROM main.sqlite_master "
    "WHERE lower(name) IN ('metrics', 'runs', 'params', 'tags', 'experiments')"
)
_SQL_COLUMNS = {
    "metrics": "PRAGMA main.table_info(metrics)",
    "runs": "PRAGMA main.table_info(runs)",
    "params": "PRAGMA main.table_info(params)",
    "tags": "PRAGMA main.table_info(tags)",
    "experiments": "PRAGMA main.table_info(experiments)",
}
_NEEDED_COLUMNS = {
    "metrics": {"key", "value", "timestamp", "step", "run_uuid"},
    "runs": {"run_uuid", "name", "lifecycle_stage", "experiment_id"},
    "params": {"key", "value", "run_uuid"},
    "tags": {"key", "value", "run_uuid"},
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
}
_SQL_RUNS = (
    "SELECT run_uuid, name, experiment_id FROM main.runs "
    "WHERE lifecycle_stage IS NOT 'deleted' ORDER BY rowid LIMIT ?"
)
_SQL_EXPERIMENTS = "SELECT experiment_id, name, lifecycle_stage FROM main.experiments LIMIT ?"
_SQL_RUN_NAME = "SELECT value FROM main.tags WHERE run_uuid = ? AND key = 'mlflow.runName' LIMIT 1"
_SQL_PARAMS = "SELECT key, value FROM main.params WHERE run_uuid = ? ORDER BY key LIMIT ?"
# Steps, then time, then rowid: rowid is the insertion order, so repeated steps (a resumed
# run) stay separate points in the order they were logged. MLflow indexes (run_uuid, key, step).
_SQL_METRICS = (
    "SELECT key, step, timestamp, value, is_nan FROM main.metrics "
    "WHERE run_uuid = ? ORDER BY key, step, timestamp, rowid LIMIT ?"
)
_SQL_METRICS_NO_NAN_COLUMN = (  # MLflow before the is_nan migration (1.x) stored NaN as NULL
    "SELECT key, step, timestamp, value, 0 FROM main.metrics "
    "WHERE run_uuid = ? ORDER BY key, step, timestamp, rowid LIMIT ?"
)
_READABLE_TABLES = frozenset({"sqlite_master", *_NEEDED_COLUMNS})
_ALLOWED_PRAGMAS = frozenset({"table_info"})  # the others are set before the authorizer


def _has_sqlite_magic(path: Path) -> bool:
    got = _read_bytes(path, len(SQLITE_MAGIC))
    return got is not None and got[0] == SQLITE_MAGIC


def _sqlite_has_mlflow_tables(path: Path) -> bool:
    with _connect(path) as con:
        tables = _checked_tables(con, path)
    return {"metrics", "runs"} <= tables


class _Connection:
    """A read-only connection closed on exit (sqlite3's own context manager only commits)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()


def _connect(path: Path) -> _Connection:
    """Open strictly read-only. `immutable=1` makes SQLite skip locks, the -wal and the hot
    -journal: plain `mode=ro` on a WAL-mode file creates -wal and -shm beside it (measured),
    which is a write into the user's folder. The price: points still in a live writer's -wal
    are not seen (noted by the caller)."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro&immutable=1"
    con = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
    try:
        con.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
        # a crafted row could hold a 1 GB string: SQLite refuses longer values instead
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_SQL_TEXT_BYTES)
        con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        con.execute("PRAGMA trusted_schema = OFF")  # no functions run from schema objects
        con.execute("PRAGMA query_only = ON")
        con.execute("PRAGMA cell_size_check = ON")  # corrupt pages fail early, not oddly
        con.set_authorizer(_authorize)
        steps = [0]

        def over_budget() -> int:  # called every 10k VM steps; nonzero interrupts the query
            steps[0] += 10_000
            return int(steps[0] > MAX_SQL_VM_STEPS)

        con.set_progress_handler(over_budget, 10_000)
    except BaseException:
        con.close()
        raise
    return _Connection(con)


def _authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    """Allow reading the MLflow tables and nothing else, whatever SQL the file may hold."""
    if action == sqlite3.SQLITE_SELECT:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ:
        return (
            sqlite3.SQLITE_OK if (arg1 or "").lower() in _READABLE_TABLES else sqlite3.SQLITE_DENY
        )
    if action == sqlite3.SQLITE_PRAGMA:
        return (
            sqlite3.SQLITE_OK if (arg1 or "").lower() in _ALLOWED_PRAGMAS else sqlite3.SQLITE_DENY
        )
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_OK if (arg2 or "").lower() == "lower" else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


def _checked_tables(con: sqlite3.Connection, path: Path) -> set[str]:
    """The MLflow tables present, each verified to be a plain table; views, virtual tables
    and the like are refused since reading them could run whatever the file defines."""
    found: set[str] = set()
    for kind, name, sql in con.execute(_SQL_SCHEMA).fetchmany(64):
        if not isinstance(name, str) or kind in ("index", "trigger"):
            continue  # these do not stand in for a table in a FROM clause
        lowered = name.lower()
        if kind != "table" or not isinstance(sql, str) or not _is_create_table(sql):
            raise InputError(path, f"refused: {lowered!r} is a {kind}, not a plain table")
        found.add(lowered)
    return found


def _is_create_table(sql: str) -> bool:
    return re.match(r"\s*CREATE\s+TABLE\s", sql, re.IGNORECASE | re.ASCII) is not None


def _read_sqlite(path: Path) -> list[_RunInfo]:
    if not _has_sqlite_magic(path):
        raise InputError(path, "not an MLflow database (not an SQLite file)")
    with _connect(path) as con:
        tables = _checked_tables(con, path)
        for needed in ("metrics", "runs"):
            if needed not in tables:
                raise InputError(path, f"not an MLflow database (no {needed} table)")
        # in _NEEDED_COLUMNS order, so the error names the same table every time
        columns = {table: _columns(con, table) for table in _NEEDED_COLUMNS if table in tables}
        for table, cols in columns.items():
            missing = _NEEDED_COLUMNS[table] - cols
            if missing:
                raise InputError(
                    path, f"not an MLflow database ({table} lacks {', '.join(sorted(missing))})"
                )
        infos = list(_sqlite_runs(con, path, tables, "is_nan" in columns["metrics"]))
    if Path(f"{path}-wal").exists():
        for info in infos:
            info.notes.append(
                f"{path.name}-wal exists (a live writer?): points not yet checkpointed are not read"
            )
    return infos


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {
        row[1].lower()
        for row in con.execute(_SQL_COLUMNS[table]).fetchmany(1000)
        if isinstance(row[1], str)
    }


def _sqlite_runs(
    con: sqlite3.Connection, path: Path, tables: set[str], has_is_nan: bool
) -> Iterator[_RunInfo]:
    experiments = _sqlite_experiments(con) if "experiments" in tables else {}
    rows = con.execute(_SQL_RUNS, (MAX_RUNS + 1,)).fetchall()
    budget = _Budget()
    capped = len(rows) > MAX_RUNS
    for run_id, runs_name, exp_id in rows[:MAX_RUNS]:
        if not isinstance(run_id, str):
            continue
        exp_name, exp_deleted = experiments.get(str(exp_id), (str(exp_id), False))
        if exp_deleted:
            continue
        notes: list[str] = []
        if capped:
            notes.append(f"only the first {MAX_RUNS} runs of the database were read")
        name = _sqlite_run_name(con, run_id, runs_name) if "tags" in tables else runs_name
        hparams = _sqlite_params(con, run_id, notes) if "params" in tables else {}
        series = _sqlite_series(con, run_id, has_is_nan, budget, notes)
        yield _RunInfo(path, run_id, str(name or "").strip(), exp_name, hparams, series, notes)


def _sqlite_experiments(con: sqlite3.Connection) -> dict[str, tuple[str, bool]]:
    rows = con.execute(_SQL_EXPERIMENTS, (100_000,)).fetchall()
    return {str(eid): (str(name or eid), stage == "deleted") for eid, name, stage in rows}


def _sqlite_run_name(con: sqlite3.Connection, run_id: str, fallback: object) -> str:
    row = con.execute(_SQL_RUN_NAME, (run_id,)).fetchone()
    name = row[0] if row is not None and isinstance(row[0], str) else fallback
    return name if isinstance(name, str) else ""


def _sqlite_params(con: sqlite3.Connection, run_id: str, notes: list[str]) -> dict[str, str]:
    rows = con.execute(_SQL_PARAMS, (run_id, MAX_PARAMS + 1)).fetchall()
    if len(rows) > MAX_PARAMS:
        notes.append(f"only the first {MAX_PARAMS} params were read")
    return {str(key): str(value) for key, value in rows[:MAX_PARAMS]}


def _sqlite_series(
    con: sqlite3.Connection, run_id: str, has_is_nan: bool, budget: _Budget, notes: list[str]
) -> dict[str, Series]:
    sql = _SQL_METRICS if has_is_nan else _SQL_METRICS_NO_NAN_COLUMN
    # one row past the budget only tells that there is more
    cursor = con.execute(sql, (run_id, budget.points + 1))
    collected: dict[str, _Points] = {}
    bad = 0
    for key, step, timestamp, value, is_nan in _fetch_in_chunks(cursor):
        if budget.points <= 0:
            notes.append(f"point cap ({MAX_POINTS}) reached, the rest of the metrics not read")
            break
        budget.points -= 1
        point = _sqlite_point(step, timestamp, value, is_nan)
        if not isinstance(key, str) or point is None:
            bad += 1
            continue
        points = collected.get(key)
        if points is None:
            points = collected[key] = _Points()
        points.add(*point)
    if bad:
        notes.append(f"skipped {bad} metric row(s) whose step, time or value is not a number")
    return {key: points.series(key) for key, points in collected.items() if points.values}


def _fetch_in_chunks(cursor: sqlite3.Cursor) -> Iterator[tuple]:
    while rows := cursor.fetchmany(10_000):
        yield from rows


def _sqlite_point(
    step: object, timestamp: object, value: object, is_nan: object
) -> tuple[int, float, float] | None:
    """(step, value, wall time in s) of one metrics row, None if a column has the wrong type."""
    if not isinstance(step, int) or not isinstance(timestamp, int | None):
        return None
    if is_nan not in (0, 1):
        return None
    if is_nan or value is None:  # SQLite stores NaN as NULL; MLflow stores 0 + is_nan
        number = float("nan")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if abs(number) == DBL_MAX:
            number = float("inf") if number > 0 else float("-inf")
    else:
        return None
    wall = float("nan") if timestamp is None else timestamp / 1000.0
    return step, number, wall


def _sqlite_cause(exc: sqlite3.Error) -> str:
    text = _one_line(exc)
    lowered = text.lower()
    if "not a database" in lowered:
        return "not an MLflow database (not an SQLite file)"
    if "malformed" in lowered or "corrupt" in lowered:
        return f"corrupt database ({text})"
    if "interrupted" in lowered:
        return "database too large to read within the work cap"
    if "not authorized" in lowered:
        return f"refused: the database needs more than reading MLflow tables ({text})"
    return f"cannot read the database ({text})"
