"""The MLflow loader on real stores written by MLflow, and on hostile ones.

The fixtures come from `tests/data/logs/make_mlflow_fixtures.py` (MLflow 3.17.2); `LOGGED`
below is a copy of what that script logs, so a change to one must go with the other.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diag.errors import InputError
from diag.loaders.logs import mlflow as loader
from diag.loaders.logs.mlflow import is_mlflow, read_mlflow
from diag.loaders.logs.series import LogRun

DATA = Path(__file__).parent / "data" / "logs" / "mlflow"
MLRUNS = DATA / "mlruns"
DB = DATA / "mlflow.db"
T0 = 1_700_000_000_000

LOGGED = {
    "resnet-lr0.1": {
        "params": {"lr": "0.1", "batch_size": "32", "optimizer": "sgd"},
        "metrics": [
            ("train_loss", 0, 2.5),
            ("train_loss", 1, 2.0),
            ("train_loss", 2, 1.5),
            ("val_loss", 2, 1.75),
            ("val/acc", 2, 0.25),
            ("train_loss", 3, 1.25),
            ("train_loss", 4, 1.0),
            ("train_loss", 5, 0.875),
            ("val_loss", 5, math.nan),
            ("val/acc", 5, 0.5),
            ("train_loss", 4, 1.125),
            ("train_loss", 5, 0.75),
            ("train_loss", 6, 0.5),
            ("val_loss", 6, 0.625),
            ("val/acc", 6, 0.75),
        ],
    },
    "tiny-lr0.01": {
        "params": {"lr": "0.01"},
        "metrics": [
            ("train_loss", 0, 3.0),
            ("train_loss", 1, math.inf),
            ("train_loss", 2, -math.inf),
        ],
    },
}


def expected_points(name: str, key: str, *, by_step: bool) -> list[tuple[int, float, float]]:
    """(step, value, wall time) as logged; the SQLite reader sorts by step, keeping repeats
    of a step in the order logged (the fixture's timestamps grow with the log order)."""
    points = [
        (step, value, (T0 + 1000 * i) / 1000.0)
        for i, (k, step, value) in enumerate(LOGGED[name]["metrics"])
        if k == key
    ]
    return sorted(points, key=lambda p: p[0]) if by_step else points


def by_name(runs: list[LogRun]) -> dict[str, LogRun]:
    out = {}
    for run in runs:
        match = re.fullmatch(r"(.+) \(([0-9a-f]{8})\)", run.run)
        assert match, run.run
        assert run.meta["run_id"].startswith(match[2])
        out[match[1]] = run
    return out


def assert_points(run: LogRun, key: str, expected: list[tuple[int, float, float]]) -> None:
    series = run.series[key]
    assert series.name == key
    assert series.steps.dtype == np.int64
    assert series.steps.tolist() == [p[0] for p in expected]
    np.testing.assert_array_equal(series.values, [p[1] for p in expected])  # NaN == NaN here
    np.testing.assert_array_equal(series.wall_times, [p[2] for p in expected])


# ------------------------------------------------------------------ real MLflow stores


@pytest.mark.parametrize(
    ("path", "fmt", "by_step"), [(MLRUNS, "mlflow", False), (DB, "mlflow-sqlite", True)]
)
def test_reads_exactly_what_mlflow_logged(path: Path, fmt: str, by_step: bool) -> None:
    runs = by_name(read_mlflow(path))
    # the deleted run and the run of the deleted experiment are left out
    assert sorted(runs) == ["resnet-lr0.1", "tiny-lr0.01"]
    for name, logged in LOGGED.items():
        run = runs[name]
        assert run.format == fmt
        assert run.notes == ()
        assert run.meta["hparams"] == logged["params"]
        assert run.meta["experiment"] == "diag-fixture"
        keys = {key for key, _, _ in logged["metrics"]}
        assert set(run.series) == keys
        for key in keys:
            assert_points(run, key, expected_points(name, key, by_step=by_step))


def test_sources_are_run_folders_or_the_database() -> None:
    for run in read_mlflow(MLRUNS):
        assert run.source.parent.parent == MLRUNS
        assert f"run_id: {run.meta['run_id']}" in (run.source / "meta.yaml").read_text()
    assert [run.source for run in read_mlflow(DB)] == [DB, DB]


def test_file_store_keeps_the_order_written_with_the_resumed_steps() -> None:
    run = by_name(read_mlflow(MLRUNS))["resnet-lr0.1"]
    assert run.series["train_loss"].steps.tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6]
    # `val/acc` sits in metrics/val/acc: the key is the relative path
    assert (run.source / "metrics" / "val" / "acc").is_file()


def test_sqlite_orders_by_step_then_time_keeping_repeats() -> None:
    run = by_name(read_mlflow(DB))["resnet-lr0.1"]
    train = run.series["train_loss"]
    assert train.steps.tolist() == [0, 1, 2, 3, 4, 4, 5, 5, 6]
    assert train.values.tolist() == [2.5, 2.0, 1.5, 1.25, 1.0, 1.125, 0.875, 0.75, 0.5]


def test_sqlite_inf_comes_back_as_inf() -> None:
    # MLflow stores ±inf as ±DBL_MAX in SQL; read back they must be non-finite again
    raw = sqlite3.connect(f"file:{DB}?mode=ro&immutable=1", uri=True)
    stored = [v for (v,) in raw.execute("SELECT value FROM metrics WHERE abs(value) > 1e300")]
    raw.close()
    assert sorted(stored) == [-1.7976931348623157e308, 1.7976931348623157e308]
    run = by_name(read_mlflow(DB))["tiny-lr0.01"]
    assert run.series["train_loss"].values.tolist() == [3.0, math.inf, -math.inf]


def test_experiment_and_run_folders_read_alone() -> None:
    everything = by_name(read_mlflow(MLRUNS))
    resnet = everything["resnet-lr0.1"]
    experiment = resnet.source.parent
    assert sorted(by_name(read_mlflow(experiment))) == ["resnet-lr0.1", "tiny-lr0.01"]
    (alone,) = read_mlflow(resnet.source)
    assert alone.run == resnet.run
    assert alone.meta == resnet.meta
    assert alone.series["val_loss"].values[1] != alone.series["val_loss"].values[1]  # NaN


def test_deleted_run_and_experiment_folders_are_refused_when_named() -> None:
    deleted_runs = [
        meta.parent
        for meta in MLRUNS.glob("*/*/meta.yaml")
        if "lifecycle_stage: deleted" in meta.read_text()
    ]
    assert len(deleted_runs) == 2  # the deleted run, and the run inside .trash
    for run in deleted_runs:
        with pytest.raises(InputError, match="deleted"):
            read_mlflow(run)
    (trashed,) = (MLRUNS / ".trash").iterdir()
    with pytest.raises(InputError, match="deleted"):
        read_mlflow(trashed)


def test_is_mlflow_detects_stores_and_nothing_else(tmp_path: Path) -> None:
    run = read_mlflow(MLRUNS)[0].source
    for path in (MLRUNS, run.parent, run, DB):
        assert is_mlflow(path), path
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    for path in (tmp_path / "empty", tmp_path / "notes.txt", plain, tmp_path / "missing"):
        assert not is_mlflow(path), path
    assert not is_mlflow(run / "metrics")


# ------------------------------------------------------------------ hostile SQLite files


def copy_db(tmp_path: Path) -> Path:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(DB, path)
    return path


def edit_db(path: Path, *sql: str) -> None:
    con = sqlite3.connect(path)
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()


def test_truncated_database(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    data = DB.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"corrupt|cannot read") as err:
        read_mlflow(path)
    assert err.value.path == str(path)


def test_random_bytes_named_mlflow_db(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(InputError, match="not an MLflow database"):
        read_mlflow(path)
    assert not is_mlflow(path)


def test_sqlite_without_mlflow_tables(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    edit_db(path, "CREATE TABLE things (a, b)", "INSERT INTO things VALUES (1, 2)")
    with pytest.raises(InputError, match=r"not an MLflow database \(no metrics table\)"):
        read_mlflow(path)


def test_metrics_as_a_view_is_refused(tmp_path: Path) -> None:
    path = copy_db(tmp_path)
    edit_db(
        path,
        "DROP TABLE metrics",
        "CREATE VIEW metrics AS SELECT name AS key, 1.0 AS value, 0 AS timestamp, "
        "run_uuid, 0 AS step, 0 AS is_nan FROM runs",
    )
    with pytest.raises(InputError, match="refused: 'metrics' is a view"):
        read_mlflow(path)
    assert not is_mlflow(path)


def test_metrics_as_a_virtual_table_is_refused(tmp_path: Path) -> None:
    path = copy_db(tmp_path)
    edit_db(path, "DROP TABLE metrics")
    try:
        edit_db(path, "CREATE VIRTUAL TABLE metrics USING fts5(key, value, run_uuid)")
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no fts5")
    with pytest.raises(InputError, match="refused"):
        read_mlflow(path)


def test_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    edit_db(path, "CREATE TABLE metrics (key, value)", "CREATE TABLE runs (run_uuid)")
    with pytest.raises(InputError, match=r"metrics lacks run_uuid, step, timestamp"):
        read_mlflow(path)


def test_opening_writes_nothing_beside_the_database(tmp_path: Path) -> None:
    # a WAL-mode file read with plain mode=ro makes -wal and -shm files appear
    path = copy_db(tmp_path)
    edit_db(path, "PRAGMA journal_mode = WAL")
    assert path.read_bytes()[18:20] == b"\x02\x02"  # the header says WAL
    before = sorted(os.listdir(tmp_path))
    mtime = path.stat().st_mtime_ns
    assert len(read_mlflow(path)) == 2
    assert is_mlflow(path)
    assert sorted(os.listdir(tmp_path)) == before == ["mlflow.db"]
    assert path.stat().st_mtime_ns == mtime


def test_absurd_number_of_rows_stays_within_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_db(tmp_path)
    edit_db(
        path,
        "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) "
        "SELECT 'flood', i * 0.5, i, (SELECT run_uuid FROM runs WHERE name = 'tiny-lr0.01'), i, 0 "
        "FROM n",
    )
    monkeypatch.setattr(loader, "MAX_POINTS", 50_000)
    runs = by_name(read_mlflow(path))
    total = sum(len(s) for run in runs.values() for s in run.series.values())
    assert total == 50_000
    tiny = runs["tiny-lr0.01"]
    assert any("point cap" in note for note in tiny.notes)
    flood = tiny.series["flood"]
    # the first points by step, exactly; nothing read past the cap
    assert flood.steps[:3].tolist() == [1, 2, 3]
    assert flood.values[:3].tolist() == [0.5, 1.0, 1.5]


def test_run_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_db(tmp_path)
    edit_db(
        path,
        *(
            f"INSERT INTO runs (run_uuid, name, lifecycle_stage, experiment_id) "
            f"VALUES ('{i:032x}', 'extra{i}', 'active', 1)"
            for i in range(5)
        ),
    )
    monkeypatch.setattr(loader, "MAX_RUNS", 3)
    runs = read_mlflow(path)
    assert len(runs) == 3
    assert all("only the first 3 runs" in " ".join(run.notes) for run in runs)


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path = copy_db(tmp_path)
    run_uuid = "(SELECT run_uuid FROM runs WHERE name = 'tiny-lr0.01')"
    edit_db(
        path,
        # SQLite's typing is per value: a crafted file can put text where MLflow puts numbers
        f"INSERT INTO metrics VALUES ('train_loss', 'abc', {T0 + 5000}, {run_uuid}, 3, 0)",
        f"INSERT INTO metrics VALUES ('train_loss', 1.0, {T0 + 6000}, {run_uuid}, 'x', 0)",
        f"INSERT INTO metrics VALUES ('train_loss', 4.0, {T0 + 7000}, {run_uuid}, 4, 0)",
    )
    tiny = by_name(read_mlflow(path))["tiny-lr0.01"]
    assert tiny.series["train_loss"].steps.tolist() == [0, 1, 2, 4]
    assert tiny.notes == ("skipped 2 metric row(s) whose step, time or value is not a number",)


def test_a_huge_string_is_refused_not_loaded(tmp_path: Path) -> None:
    path = copy_db(tmp_path)
    edit_db(
        path,
        "INSERT INTO metrics SELECT zeroblob(3000000) || 'x', 1.0, 0, run_uuid, 0, 0 "
        "FROM runs WHERE name = 'tiny-lr0.01'",
    )
    with pytest.raises(InputError, match="too big"):
        read_mlflow(path)


def test_old_schema_without_is_nan(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    edit_db(
        path,
        "CREATE TABLE runs (run_uuid, name, lifecycle_stage, experiment_id)",
        "CREATE TABLE metrics (key, value, timestamp, run_uuid, step)",
        "INSERT INTO runs VALUES ('abcdef0123456789', 'old', 'active', 0)",
        "INSERT INTO metrics VALUES ('loss', 1.5, 1000, 'abcdef0123456789', 0)",
        "INSERT INTO metrics VALUES ('loss', NULL, 2000, 'abcdef0123456789', 1)",
    )
    (run,) = read_mlflow(path)
    assert run.run == "old (abcdef01)"
    assert run.meta == {"hparams": {}, "experiment": "0", "run_id": "abcdef0123456789"}
    np.testing.assert_array_equal(run.series["loss"].values, [1.5, math.nan])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=4096), st.binary(max_size=4096).map(b"SQLite format 3\x00".__add__)
    )
)
def test_arbitrary_bytes_as_mlflow_db(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "mlflow.db"
    path.write_bytes(data)
    with contextlib.suppress(InputError):  # any other exception fails the test
        read_mlflow(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.integers(0, 180_000), st.integers(0, 255)), max_size=8))
def test_damaged_real_database(tmp_path: Path, damage: list[tuple[int, int]]) -> None:
    # random bytes rarely get past the header; a real file with a few bytes changed does
    data = bytearray(DB.read_bytes())
    for offset, byte in damage:
        data[offset % len(data)] = byte
    path = tmp_path / "mlflow.db"
    path.write_bytes(bytes(data))
    with contextlib.suppress(InputError):  # any other exception fails the test
        read_mlflow(path)


# ------------------------------------------------------------------ hostile file stores


def make_run(root: Path, metrics: dict[str, bytes], meta: str | None = None) -> Path:
    """A minimal run folder in an experiment folder, laid out as MLflow does."""
    exp = root / "mlruns" / "7"
    run = exp / "0123456789abcdef0123456789abcdef"
    (run / "metrics").mkdir(parents=True, exist_ok=True)
    (exp / "meta.yaml").write_text("experiment_id: '7'\nlifecycle_stage: active\nname: exp\n")
    (run / "meta.yaml").write_text(
        meta
        or "experiment_id: '7'\nlifecycle_stage: active\nrun_id: "
        "0123456789abcdef0123456789abcdef\nrun_name: handmade\n"
    )
    for key, data in metrics.items():
        (run / "metrics" / key).parent.mkdir(parents=True, exist_ok=True)
        (run / "metrics" / key).write_bytes(data)
    return run


def test_garbage_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = [
        "1000 0.5 1",  # good
        "not a line at all",
        "1000 0.5",  # legacy: step 0
        "1000 0.5 1 extra",  # 4 fields: MLflow knows 2, 3 or 5
        "2000 nan 2",  # good
        "1_000 0.5 3",  # int() would take the underscore
        "\u0661\u0662 0.5 3",  # and Arabic-Indic digits
        "3000 -inf 3 dataset digest",  # good: 5 fields carry a dataset
        "4000 0x10 4",
        "",
        "5000 1e5 99999999999999999999",  # step beyond int64
        "6000 1.25 6\r",  # good: a Windows line end
        "7000 0.75 7",  # good, cut short: no final newline
    ]
    run = make_run(tmp_path, {"loss": "\n".join(lines).encode()})
    (read,) = read_mlflow(run)
    assert read.run == "handmade (01234567)"
    assert read.meta["experiment"] == "exp"
    loss = read.series["loss"]
    assert loss.steps.tolist() == [1, 0, 2, 3, 6, 7]
    np.testing.assert_array_equal(loss.values, [0.5, 0.5, math.nan, -math.inf, 1.25, 0.75])
    assert loss.wall_times.tolist() == [1.0, 1.0, 2.0, 3.0, 6.0, 7.0]
    assert read.notes == (
        "metric 'loss': skipped 6 line(s) that are not '<timestamp> <value> <step>' "
        "(first: line 2)",
    )


def test_5000_digit_numbers_do_not_crash(tmp_path: Path) -> None:
    huge = "9" * 5000
    lines = [
        f"{huge} 1.0 1",
        f"1000 {huge} 2",
        f"1000 1.0 {huge}",
        f"1000 0.{huge} 3",
        "1000 2.0 4",
    ]
    run = make_run(tmp_path, {"loss": "\n".join(lines).encode()})
    (read,) = read_mlflow(run)
    assert read.series["loss"].steps.tolist() == [4]
    assert "skipped 4 line(s)" in read.notes[0]


def test_metric_file_without_a_valid_line_is_a_note(tmp_path: Path) -> None:
    run = make_run(
        tmp_path, {"loss": b"1 2 3\n", "junk": b"\xff\xfe garbage\n\x00\x00", "empty": b""}
    )
    (read,) = read_mlflow(run)
    assert list(read.series) == ["loss"]
    assert "metric 'empty': no valid line, not read" in read.notes
    assert "metric 'junk': no valid line, not read" in read.notes


def test_nested_keys_and_params(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"loss/train/deep": b"1000 1.0 0\n"})
    (run / "params" / "optim").mkdir(parents=True)
    (run / "params" / "optim" / "lr").write_text("0.1")
    (run / "params" / "seed").write_text("3")
    (run / "tags").mkdir()
    (run / "tags" / "mlflow.runName").write_text("from-the-tag")
    (read,) = read_mlflow(run)
    assert list(read.series) == ["loss/train/deep"]
    assert read.meta["hparams"] == {"optim/lr": "0.1", "seed": "3"}
    assert read.run == "from-the-tag (01234567)"


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_text("1000 42.0 0\n")
    (outside / "dir" / "x").write_text("1000 43.0 0\n")
    run = make_run(tmp_path, {"loss": b"1000 1.0 0\n"})
    (run / "metrics" / "leak").symlink_to(outside / "secret")
    (run / "metrics" / "leakdir").symlink_to(outside / "dir", target_is_directory=True)
    (run / "params").mkdir()
    (run / "params" / "p").symlink_to(outside / "secret")
    (run / "tags").mkdir()
    (run / "tags" / "mlflow.runName").symlink_to(outside / "secret")
    # a whole experiment linked into the store root
    outside_exp = shutil.copytree(run.parent, outside / "exp")
    (run.parent.parent / "8").symlink_to(outside_exp, target_is_directory=True)
    runs = read_mlflow(run.parent.parent)
    assert len(runs) == 1
    (read,) = runs
    assert list(read.series) == ["loss"]
    assert read.meta["hparams"] == {}
    assert read.run == "handmade (01234567)"
    assert "metrics/: 2 symlink(s) not followed" in read.notes
    assert "params/: 1 symlink(s) not followed" in read.notes


def test_a_fifo_does_not_block(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"loss": b"1000 1.0 0\n"})
    os.mkfifo(run / "metrics" / "pipe")
    os.mkfifo(run / "params")
    (read,) = read_mlflow(run)
    assert list(read.series) == ["loss"]


def test_metric_file_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, {"loss": b"".join(b"1000 1.5 %d\n" % i for i in range(1000))})
    monkeypatch.setattr(loader, "MAX_METRIC_FILE_BYTES", 100)  # 9 lines and part of a 10th
    (read,) = read_mlflow(run)
    assert read.series["loss"].steps.tolist() == list(range(9))
    assert any("only the first" in note for note in read.notes)
    assert not any("skipped" in note for note in read.notes)  # the cut line is not "bad"


def test_metric_file_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, {f"m{i:02d}": b"1000 1.0 0\n" for i in range(20)})
    monkeypatch.setattr(loader, "MAX_METRIC_FILES", 5)
    (read,) = read_mlflow(run)
    assert list(read.series) == ["m00", "m01", "m02", "m03", "m04"]
    assert "metrics/: more than 5 files, only 5 read" in read.notes


def test_quoted_and_folded_meta_yaml(tmp_path: Path) -> None:
    meta = (
        "experiment_id: '7'\nlifecycle_stage: active\n"
        "run_id: 0123456789abcdef0123456789abcdef\n"
        "run_name: 'it''s: a very long run name that yaml folds onto\n  a second line'\n"
    )
    run = make_run(tmp_path, {"loss": b"1000 1.0 0\n"}, meta=meta)
    (read,) = read_mlflow(run)
    assert read.run == "it's: a very long run name that yaml folds onto a second line (01234567)"


def test_names_are_made_printable(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"loss": b"1000 1.0 0\n"})
    (run / "tags").mkdir()
    (run / "tags" / "mlflow.runName").write_text("evil\n\x1b[31mred\x1b[0m  name")
    (read,) = read_mlflow(run)
    assert read.run == "evil [31mred [0m name (01234567)"


def test_same_short_id_twice_stays_unique(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"loss": b"1000 1.0 0\n"})
    twin = run.parent / "01234567ffffffffffffffffffffffff"
    shutil.copytree(run, twin)
    meta = (twin / "meta.yaml").read_text().replace(run.name, twin.name)
    (twin / "meta.yaml").write_text(meta)
    labels = sorted(r.run for r in read_mlflow(run.parent))
    assert labels == [f"handmade ({run.name})", f"handmade ({twin.name})"]


@pytest.mark.parametrize("make", ["missing", "empty dir", "text file", "foreign meta.yaml"])
def test_not_mlflow_is_an_input_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "empty dir":
        path.mkdir()
    elif make == "text file":
        path.write_text("step,loss\n1,2\n")
    elif make == "foreign meta.yaml":
        path.mkdir()
        (path / "meta.yaml").write_text("title: my notes\n")
    with pytest.raises(InputError) as err:
        read_mlflow(path)
    assert err.value.path == str(path)
    assert "\n" not in err.value.cause


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=2000) | st.binary(max_size=2000).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_as_a_metric_file(tmp_path: Path, text: str) -> None:
    run = make_run(tmp_path / "h", {})
    (run / "metrics" / "loss").write_bytes(text.encode("utf-8", errors="surrogatepass"))
    (read,) = read_mlflow(run)  # a metric file never fails the run, whatever it holds
    if "loss" in read.series:
        series = read.series["loss"]
        assert len(series.steps) == len(series.values) == len(series.wall_times) > 0
