"""The W&B run-file reader, against files the real `wandb` wrote offline, and broken ones.

One subprocess (so wandb's service process and global state stay out of pytest) writes
every run once per session with `wandb.init(mode="offline")` + `wandb.log`, and records
what it logged; the reader must give back exactly that. Lightning's `WandbLogger` is
checked against a `CSVLogger` attached to the same trainer.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import hostile_sandbox as hs
import numpy as np
import pytest
import wandb_writer as ww
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diag.errors import InputError
from diag.loaders.logs import open_logs
from diag.loaders.logs.curves import TRAIN_LOSS, VAL_LOSS, training_log
from diag.loaders.logs.wandb import find_wandb_files, read_wandb

NAN_STEP = 120
FUZZ = settings(
    max_examples=int(os.environ.get("DIAG_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

WRITE_RUNS = r"""
import json, sys
import wandb

root, nan_step = sys.argv[1], int(sys.argv[2])
logged = {}


def run(name, rows, **settings):
    r = wandb.init(mode="offline", dir=f"{root}/{name}", project="diag-tests", name=name,
                   config={"lr": 0.1, "layers": [4, 2], "run": name},
                   settings=wandb.Settings(**settings))
    for row in rows:
        wandb.log(row)
    logged[name] = {"id": r.id, "rows": rows}
    r.finish()


def losses(i, diverge=False):
    row = {"train/loss": 2.0 * 0.98 ** i + 0.05, "train/learning_rate": 1e-3 * (1 - i / 400)}
    if i % 20 == 19:
        row["eval/loss"] = 2.2 * 0.98 ** i + 0.1 + (0.02 * max(0, i - 80) if diverge else 0)
    return row


run("healthy", [losses(i) for i in range(200)])
nan = [losses(i) for i in range(200)]
for i in range(nan_step, 200):
    nan[i]["train/loss"] = float("nan")
nan[nan_step + 5]["train/loss"] = float("inf")
run("nan", nan)
run("diverge", [losses(i, diverge=True) for i in range(200)])
# One row larger than a 32 KiB block (FIRST, MIDDLE, LAST records), then nested keys,
# strings and bools (kept out of the series) around ordinary points.
run("wide", [{f"w/{i}": i / 7 for i in range(3000)}, {"loss": 1.5, "nested": {"a": 0.25},
             "note": "text", "flag": True}, {"loss": 1.25}])
# wandb 0.31 can write each value twice: as JSON and in typed fields beside it.
run("typed", [{"loss": 1 / (i + 1), "n": i, "big": 2 ** 70, "nan": float("nan"), "s": "x"}
              for i in range(5)], x_history_value_encoding="json,typed")
# A run resumed offline: a second run folder with the same id, its _step from 0 again.
for part in range(2):
    r = wandb.init(mode="offline", dir=f"{root}/resumed", project="diag-tests", id="resumed1",
                   resume="allow")
    for i in range(4):
        wandb.log({"train/loss": 1.0 / (i + 1) - part / 2})
    r.finish()
json.dump(logged, open(f"{root}/logged.json", "w"))
"""

WRITE_LIGHTNING = r"""
import sys
import torch
import lightning as L
from lightning.pytorch.loggers import CSVLogger, WandbLogger

root = sys.argv[1]


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


torch.manual_seed(0)
x = torch.randn(64, 4)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)),
                                   batch_size=8)
loggers = [WandbLogger(project="diag-tests", save_dir=root, offline=True, name="lit"),
           CSVLogger(root, name="csv")]
trainer = L.Trainer(max_epochs=3, logger=loggers, log_every_n_steps=2, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Model(), data, data)
"""


def _write(script: str, root: Path, *args: str) -> None:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    # wandb keeps settings and caches under the home folder: keep them in the test's folder
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[var] = str(root / ".wandb-home")
    subprocess.run(
        [sys.executable, "-c", script, str(root), *args],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="session")
def wandb_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("wandb")
    _write(WRITE_RUNS, root, str(NAN_STEP))
    return root, json.loads((root / "logged.json").read_text())


@pytest.fixture(scope="session")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb-lightning")
    _write(WRITE_LIGHTNING, root)
    return root


def the_file(folder: Path) -> Path:
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    return path


def logged_points(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """What `wandb.log` was given, as name -> (steps, values): wandb's `_step` counts calls."""
    points: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, step: int, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}.{key}", step, inner)
        elif isinstance(value, float | int) and not isinstance(value, bool):
            steps, values = points.setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value))

    for step, row in enumerate(rows):
        for name, value in row.items():
            add(name, step, value)
    return points


# ---------------------------------------------------------------- real runs


@pytest.mark.parametrize("name", ["healthy", "nan", "diverge", "wide", "typed"])
def test_points_are_what_was_logged(wandb_runs, name: str) -> None:
    root, logged = wandb_runs
    (run,) = read_wandb(the_file(root / name))
    expected = logged_points(logged[name]["rows"])
    assert sorted(run.series) == sorted(expected)
    for metric, (steps, values) in expected.items():
        series = run.series[metric]
        assert series.steps.tolist() == steps, metric
        np.testing.assert_array_equal(series.values, np.array(values), err_msg=metric)
        assert np.all(np.diff(series.wall_times) >= 0) and series.wall_times[0] > 1.6e9
    assert run.run == f"{name} ({logged[name]['id']})"
    assert run.meta["hparams"] == {"lr": 0.1, "layers": [4, 2], "run": name}
    assert run.meta["project"] == "diag-tests"
    assert run.notes == ()


def test_the_runs_are_real_multi_block_files(wandb_runs) -> None:
    """The fixtures reach the framing's corners: block trailers and split records."""
    root, _ = wandb_runs
    blob = the_file(root / "wide").read_bytes()
    kinds = {blob[off + 6] for off in ww.record_offsets(blob)}
    assert {1, 2, 3, 4} <= kinds
    assert the_file(root / "healthy").stat().st_size > 2 * ww.BLOCK


def test_nonfinite_values_survive(wandb_runs) -> None:
    root, _ = wandb_runs
    (run,) = read_wandb(the_file(root / "nan"))
    loss = run.series["train/loss"]
    assert np.isfinite(loss.values[:NAN_STEP]).all()
    assert math.isnan(loss.values[NAN_STEP]) and loss.steps[NAN_STEP] == NAN_STEP
    assert loss.values[NAN_STEP + 5] == math.inf


def check_cli(folder: Path) -> dict:
    outcome = hs.run_diag(["--logs", str(folder), "--format", "json", "--quiet"], cwd=folder)
    hs.check_invariants(outcome, allowed=[folder])
    assert outcome.returncode in (0, 1), outcome.shown()
    return json.loads(outcome.stdout)


def test_cli_findings(wandb_runs) -> None:
    root, logged = wandb_runs
    healthy = check_cli(root / "healthy")
    (inp,) = healthy["inputs"]
    assert inp["format"] == "wandb"
    assert inp["roles"] == {"train_loss": "train/loss", "val_loss": "eval/loss"}
    assert healthy["findings"] == []

    nan = check_cli(root / "nan")
    assert [f["rule"] for f in nan["findings"]] == ["loss-nonfinite"]
    location = nan["findings"][0]["location"]
    assert (location["object"], location["step"]) == ("train/loss", NAN_STEP)
    assert location["run"] == f"nan ({logged['nan']['id']})"

    diverge = check_cli(root / "diverge")
    assert "train-val-divergence" in {f["rule"] for f in diverge["findings"]}
    assert "loss-nonfinite" not in {f["rule"] for f in diverge["findings"]}


def test_a_wandb_folder_is_one_run_per_run_not_per_link(wandb_runs) -> None:
    root, logged = wandb_runs
    wandb_dir = root / "healthy" / "wandb"
    assert (wandb_dir / "latest-run").is_symlink()
    assert find_wandb_files(wandb_dir) == [the_file(root / "healthy")]
    # wandb's own JSON-lines debug logs in the run folder are not read as metrics
    runs = open_logs(root)
    expected = [f"{n} ({v['id']})" for n, v in logged.items()] + ["resumed1"]  # unnamed
    assert sorted(r.run for r in runs) == sorted(expected)
    assert {r.format for r in runs} == {"wandb"}


def test_a_resumed_run_is_one_run_in_time_order(wandb_runs) -> None:
    root, _ = wandb_runs
    folders = sorted((root / "resumed" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    (run,) = open_logs(root / "resumed")
    loss = run.series["train/loss"]
    assert loss.steps.tolist() == [0, 1, 2, 3] * 2
    assert loss.values.tolist() == [1.0 / (i + 1) - part / 2 for part in (0, 1) for i in range(4)]
    assert run.source.parent == folders[-1] and run.meta["run_id"] == "resumed1"
    assert training_log(run).curves["train/loss"].restarts == (0,)


def test_lightning_wandb_logger(lightning_run) -> None:
    (run,) = open_logs(lightning_run / "wandb")
    (metrics_csv,) = lightning_run.glob("csv/version_*/metrics.csv")
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    for name in ("train_loss", "val_loss"):
        expected = [(int(r["step"]), float(r[name])) for r in rows if r[name]]
        got = list(
            zip(run.series[name].steps.tolist(), run.series[name].values.tolist(), strict=True)
        )
        assert got == expected, name
    log = training_log(run)
    assert log.roles[TRAIN_LOSS] == "train_loss" and log.roles[VAL_LOSS] == "val_loss"
    epochs = run.series["val_loss"].epochs
    assert epochs is not None and epochs.tolist() == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------- hand-made and broken files


def test_names_from_every_writer_get_their_roles(tmp_path: Path) -> None:
    """HF Trainer names, with its global step as the step; old clients' `key` field."""
    rows = [
        ww.history(
            {"train/loss": str(2.0 / (i + 1)), "train/learning_rate": "0.001",
             "train/epoch": str(i / 10), "train/global_step": str(10 * i)},
            step=i, old_style=i % 2 == 1,
        )
        for i in range(8)
    ]  # fmt: skip
    rows.append(ww.history({"eval/loss": "0.9", "train/global_step": "70"}, step=8))
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(ww.frame([ww.run_record("abc", "hf"), *rows, ww.exit_record(0)]))
    (run,) = read_wandb(path)
    assert run.series["train/loss"].steps.tolist() == [10 * i for i in range(8)]
    assert run.series["train/loss"].epochs.tolist() == [i / 10 for i in range(8)]
    assert run.series["eval/loss"].steps.tolist() == [70]
    log = training_log(run)
    assert log.roles == {TRAIN_LOSS: "train/loss", VAL_LOSS: "eval/loss"}
    assert run.run == "hf (abc)" and run.notes == ()


def test_a_run_still_being_written(wandb_runs, tmp_path: Path) -> None:
    """Cut anywhere after the header: read up to the cut, with a note; never an error."""
    root, _ = wandb_runs
    source = the_file(root / "healthy")
    blob = source.read_bytes()
    (full,) = read_wandb(source)
    cut_file = tmp_path / source.name
    for cut in sorted({*range(7, len(blob), 997), *ww.record_offsets(blob)[-3:], len(blob) - 1}):
        cut_file.write_bytes(blob[:cut])
        (run,) = read_wandb(cut_file)
        assert any("no exit record" in n or "cut short" in n for n in run.notes), cut
        for name, series in run.series.items():
            n = len(series)
            assert series.steps.tolist() == full.series[name].steps[:n].tolist()


def test_a_crc_flipped_mid_file_names_the_file(wandb_runs, tmp_path: Path) -> None:
    root, _ = wandb_runs
    blob = bytearray(the_file(root / "healthy").read_bytes())
    offsets = ww.record_offsets(bytes(blob))
    blob[offsets[len(offsets) // 2] + 20] ^= 0x01
    broken = tmp_path / "run-x.wandb"
    broken.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="CRC mismatch") as err:
        read_wandb(broken)
    assert err.value.path == str(broken)


@pytest.mark.parametrize(
    ("blob", "cause"),
    [
        (b"PK\x03\x04" + bytes(40), "no :W&B header"),
        (ww.HEADER[:6] + b"\x07" + bytes(20), "version 7"),
        (ww.HEADER[:4], "cut short in its 7-byte header"),
        (ww.frame([b"\x12\x06\x0a\x80\x80\x80\x80\x08"]), "2147483648 bytes past the end"),
        (ww.frame([b"\x12\x0b" + b"\x0a\x09" + b"\x80" * 9]), "truncated varint"),
        (ww.frame([b"\x08" + b"\xff" * 10 + b"\x01"]), "longer than 10 bytes"),
        (ww.frame([b"\x1b" * 200]), "nested too deeply"),
        (ww.HEADER + ww.frame_record(2, b"x") + ww.frame_record(1, b"y"), "inside a split"),
        (ww.HEADER + ww.frame_record(4, b"x"), "without its start"),
        (ww.HEADER + ww.frame_record(9, b"x"), "unknown record type 9"),
    ],
)
def test_broken_files_are_one_input_error(tmp_path: Path, blob: bytes, cause: str) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(blob)
    with pytest.raises(InputError, match=cause):
        read_wandb(path)


def test_points_that_are_not_numbers_are_not_points(tmp_path: Path) -> None:
    huge = '"' + "x" * 100_000 + '"'
    deep = "[" * 50_000 + "]" * 50_000
    rows = [ww.history({"loss": v, "ok": "1"}, step=i) for i, v in enumerate([huge, deep, "1e5"])]
    path = tmp_path / "run-x.wandb"
    path.write_bytes(ww.frame(rows))
    (run,) = read_wandb(path)
    assert run.series["loss"].steps.tolist() == [2] and run.series["loss"].values.tolist() == [1e5]
    assert run.series["ok"].steps.tolist() == [0, 1, 2]


def test_a_record_after_exactly_a_header_of_room_starts_empty(tmp_path: Path) -> None:
    """Seven bytes left in a block: LevelDB writes an empty FIRST there, the rest after."""
    filler_length = ww.BLOCK - 3 * ww.FRAME  # file header, filler frame, 7 bytes left
    body = bytes(filler_length - 5)  # an unknown field 30: key f2 01, a 3-byte length
    n = len(body)
    filler = b"\xf2\x01" + bytes([n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14]) + body
    assert len(filler) == filler_length
    blob = ww.frame([filler, ww.history({"loss": "0.5"}, step=3)])
    assert blob[ww.BLOCK - ww.FRAME + 6] == 2  # an empty FIRST fills the block
    path = tmp_path / "run-x.wandb"
    path.write_bytes(blob)
    (run,) = read_wandb(path)
    assert run.series["loss"].steps.tolist() == [3] and run.series["loss"].values.tolist() == [0.5]


# ---------------------------------------------------------------- protobuf as the oracle

# Names the reader gives a role (the step, the time, the epoch) are tested by name above.
SPECIAL = {"_step", "_runtime", "_timestamp", "epoch", "train/epoch"}
SPECIAL |= {"train/global_step", "trainer/global_step"}
NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda name: name not in SPECIAL
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


def value_json(value: object) -> str:
    """As wandb writes values: JSON with NaN and ±Infinity bare."""
    return json.dumps(value)


@FUZZ
@given(
    rows=st.lists(st.dictionaries(NAMES, VALUES, max_size=6), min_size=1, max_size=12),
    old_style=st.booleans(),
    garbage=st.binary(max_size=40),
)
def test_decoded_as_protobuf_decodes_it(tmp_path: Path, rows, old_style, garbage) -> None:
    """Rows serialised by wandb's protobuf classes; the expectation comes from parsing the
    same bytes back with protobuf, so field order, unknown fields and escapes are its call."""
    from wandb.proto import wandb_internal_pb2 as pb

    payloads = [ww.history({k: value_json(v) for k, v in row.items()}, i, old_style)
                for i, row in enumerate(rows)]  # fmt: skip
    payloads.insert(len(payloads) // 2, b"\xfa\x01" + bytes([len(garbage)]) + garbage)
    path = tmp_path / "run-h.wandb"
    path.write_bytes(ww.frame(payloads))
    expected: dict[str, tuple[list[int], list[float]]] = {}
    for payload in payloads:
        record = pb.Record.FromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            name = item.key or ".".join(item.nested_key)
            if name in SPECIAL:
                continue
            try:
                number = float(item.value_json)
            except ValueError:
                continue
            steps, values = expected.setdefault(name, ([], []))
            steps.append(record.history.step.num)
            values.append(number)
    (run,) = read_wandb(path)
    got = {n: (s.steps.tolist(), s.values.tolist()) for n, s in run.series.items()}
    assert got.keys() == expected.keys()
    for name, (steps, values) in expected.items():
        assert got[name][0] == steps
        np.testing.assert_array_equal(np.array(got[name][1]), np.array(values))


def test_the_config_is_read_as_hyperparameters(tmp_path: Path) -> None:
    """The HF Trainer puts its TrainingArguments in the W&B config: choosing the best
    checkpoint on a test metric is then visible to test-set-selection."""
    from wandb.proto import wandb_internal_pb2 as pb

    from diag.api import CheckOptions, check

    record = pb.Record()
    record.run.run_id = "cfg"
    item = record.run.config.update.add()
    item.key, item.value_json = "metric_for_best_model", '"test_accuracy"'
    rows = [
        ww.history({"train/loss": str(1 / (i + 1)), "eval/loss": str(1.1 / (i + 1)),
                    "eval/accuracy": str(0.5 + i / 40)}, step=i)
        for i in range(12)
    ]  # fmt: skip
    path = tmp_path / "run-cfg.wandb"
    path.write_bytes(ww.frame([record.SerializeToString(), *rows, ww.exit_record()]))
    (run,) = read_wandb(path)
    assert run.meta["hparams"] == {"metric_for_best_model": "test_accuracy"}
    result, _ = check(CheckOptions(quiet=True, logs=[str(path)], select=["test-set-selection"]))
    found = [(f.rule, f.location.object, f.evidence["monitor"]) for f in result.findings]
    assert found == [
        ("test-set-selection", "hyperparameter metric_for_best_model", "test_accuracy")
    ]


def test_the_run_folder_alone_is_enough(wandb_runs) -> None:
    """`diag check FOLDER` with no flag finds the W&B run in it and the same finding."""
    root, _ = wandb_runs
    folder = root / "nan"
    outcome = hs.run_diag([str(folder), "--format", "json", "--quiet"], cwd=folder)
    hs.check_invariants(outcome, allowed=[folder])
    report = json.loads(outcome.stdout)
    assert report["metadata"]["run"]["layout"] == "W&B"
    assert [f["rule"] for f in report["findings"]] == ["loss-nonfinite"]
    assert report["findings"][0]["location"]["step"] == NAN_STEP
    healthy = root / "healthy"
    outcome = hs.run_diag([str(healthy), "--format", "json", "--quiet"], cwd=healthy)
    assert outcome.returncode == 0 and json.loads(outcome.stdout)["findings"] == []
