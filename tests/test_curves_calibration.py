"""The [curves] rules on real training runs: silent on healthy ones, each fault found.

Every run is a real CNN trained on scikit-learn's digits once per session; its history is
written in every log format diag reads and checked through `diag check --logs`.

A calibration is a distribution, not a trajectory. bench/calibration_runs.py trains every
run below from seeds 0-2 under ATEN_CPU_CAPABILITY=default, avx2 and avx512 (9 runs each)
and checks each history in all 7 formats: every run gave exactly its expected findings in
all 63 (the nan run: loss-nonfinite in every format, and only it as Lightning logs it).
Per rule, the number it thresholds:

    rule                 statistic (fires at)          worst silent run   mildest caught
    loss-spikes          spike strength (>= 1)*        0.66 (leak)        3.92 (broken_labels)
    loss-not-decreasing  drop over the run (< 0.10)    0.55 (early stop)  0.05 (low_lr)
    loss-nonfinite       a NaN/inf loss                on no other run    9/9 (nan)
    train-val-divergence, val-better-than-train, test-set-selection: their one run fired and
                         no other run did, on every seed, capability and format

* min(loss / trailing median / 3, (loss - trailing median) / (0.3 x starting loss)) at its
  largest, on the loss as Lightning logs it (every 5th step).

The "blowup" run these tests used before (a constant lr of 0.2, on the edge of stability)
is no calibration: over the same 9 trainings it gave six different sets of findings, from
none to a spike with a divergence, and with AVX-512 or torch's default kernels it missed
the spike it was expected to show. broken_labels is a deterministic fault instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from curve_writers import WRITERS

from diag.cli import cli
from diag.demo import Faults, History, save_run, train

CURVES = {
    "loss-nonfinite",
    "train-val-divergence",
    "loss-not-decreasing",
    "loss-spikes",
    "val-better-than-train",
    "test-set-selection",
}
# name: (faults, epochs, the [curves] rules that must fire - and no other)
RUNS: dict[str, tuple[Faults, int, set[str]]] = {
    "healthy": (Faults(), 30, set()),
    "healthy_early_stop": (Faults(early_stopping=5), 30, set()),
    "healthy_low_wd": (Faults(lr=0.1, weight_decay=1e-4), 30, set()),
    "overfit": (Faults(train_subset=64, weight_decay=0.0), 150, {"train-val-divergence"}),
    # learns, then from epoch 10 its labels are shuffled apart from the images: the loss
    # jumps from near zero to chance and stays there
    "broken_labels": (
        Faults(lr=0.1, weight_decay=1e-4, labels_shuffled_from=10),
        30,
        {"loss-spikes", "loss-not-decreasing"},
    ),
    "nan": (Faults(lr=10.0), 8, {"loss-nonfinite"}),
    "low_lr": (Faults(lr=1e-4), 30, {"loss-not-decreasing"}),
    # validated on copies of training samples, trained on noisy (augmented) inputs
    "leak": (
        Faults(val_from_train=True, input_noise=0.3, weight_decay=1e-3),
        30,
        {"val-better-than-train"},
    ),
    "test_logged": (Faults(log_test=True), 30, {"test-set-selection"}),
}


# A CPU run's trajectory depends on the seed and on the SIMD kernels torch picks: these runs
# are checked on three seeds here (and .ci/run repeats the module under a second
# ATEN_CPU_CAPABILITY); the others' verdicts held on every seed and capability measured
# (table above), so the tests train them once.
SEEDS = (0, 1, 2)
SEEDED = ("healthy", "overfit", "broken_labels", "nan")
CASES = [(name, seed) for name in RUNS for seed in (SEEDS if name in SEEDED else SEEDS[:1])]


@pytest.fixture(scope="session")
def histories() -> dict[str, History]:
    """Every run, trained from seed 0."""
    out = {}
    for name, (faults, epochs, _) in RUNS.items():
        out[name] = train(faults, epochs=epochs).history
    return out


@pytest.fixture(scope="session")
def seeded(histories) -> dict[tuple[str, int], History]:
    """(run, seed) -> history for every case, seed 0 shared with `histories`."""
    out = {(name, 0): history for name, history in histories.items()}
    for name, seed in CASES:
        if seed:
            faults, epochs, _ = RUNS[name]
            out[name, seed] = train(faults, seed=seed, epochs=epochs).history
    return out


def _check(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["check", *args, "--format", "json", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def curve_findings(logs: Path) -> set[str]:
    """The [curves] rules that warn or err on these logs (the calibration bench's view)."""
    return _curve_rules(_check("--logs", str(logs))[1])


def _curve_rules(report: dict) -> set[str]:
    """[curves] rules with a warning or error finding (info notes are allowed on healthy runs)."""
    return {
        f["rule"]
        for f in report["findings"]
        if f["group"] == "curves" and f["severity"] in ("warning", "error")
    }


@pytest.mark.parametrize(("name", "seed"), CASES)
def test_each_real_run_gives_exactly_its_findings(seeded, tmp_path, name, seed):
    folder = WRITERS["lightning-csv"](seeded[name, seed], tmp_path / name)
    _, report = _check("--logs", str(folder))
    assert _curve_rules(report) == RUNS[name][2]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_finds_the_planted_divergence_at_the_right_epoch(histories, tmp_path, fmt):
    history = histories["overfit"]
    path = WRITERS[fmt](history, tmp_path / fmt)
    code, report = _check("--logs", str(path), "--fail-on", "warning")
    found = [f for f in report["findings"] if f["rule"] == "train-val-divergence"]
    assert len(found) == 1 and code == 1
    val = np.array([r["val_loss"] for r in history.epochs])
    true_best = int(np.argmin(val))
    best_step = found[0]["evidence"]["best_step"]
    steps = [int(r["step"]) for r in history.epochs]
    if fmt in ("keras-csv", "jsonl"):  # these count epochs, not steps
        steps = list(range(len(steps))) if fmt == "keras-csv" else steps
    assert abs(steps.index(best_step) - true_best) <= 2
    assert found[0]["evidence"]["rise"] > 0.3
    assert found[0]["evidence"]["train_drop"] > 0.9
    # and the report says which series it used
    logs = [i for i in report["inputs"] if i["role"] == "logs"]
    assert logs and {"train_loss", "val_loss"} <= set(logs[0]["roles"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_is_silent_on_the_healthy_run(seeded, tmp_path, fmt, seed):
    path = WRITERS[fmt](seeded["healthy", seed], tmp_path / fmt)
    code, report = _check("--logs", str(path), "--fail-on", "warning")
    assert _curve_rules(report) == set() and code == 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_finds_the_broken_run_and_the_nan(seeded, tmp_path, fmt, seed):
    broken = WRITERS[fmt](seeded["broken_labels", seed], tmp_path / "broken")
    assert _curve_rules(_check("--logs", str(broken))[1]) == {"loss-spikes", "loss-not-decreasing"}
    nan = WRITERS[fmt](seeded["nan", seed], tmp_path / "nan")
    code, report = _check("--logs", str(nan))
    assert "loss-nonfinite" in _curve_rules(report) and code == 1  # an error by default


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_finds_the_test_set_watched_during_training(histories, tmp_path, fmt):
    path = WRITERS[fmt](histories["test_logged"], tmp_path / fmt)
    _, report = _check("--logs", str(path))
    assert _curve_rules(report) == {"test-set-selection"}


def test_test_selection_from_the_checkpoint_alone(tmp_path):
    trained = train(Faults(log_test=True), epochs=2)
    paths = save_run(trained, tmp_path, monitor="test_acc")
    _, report = _check(str(paths["final"]), "--select", "test-set-selection")
    found = [f for f in report["findings"] if f["rule"] == "test-set-selection"]
    assert len(found) == 1
    assert found[0]["evidence"] == {"monitor": "test_acc", "source": "checkpoint"}
    healthy = save_run(trained, tmp_path / "ok")
    _, report = _check(str(healthy["final"]), "--select", "test-set-selection")
    assert report["findings"] == [] and report["skipped"] == []


def test_test_selection_from_logs_and_checkpoint_together(histories, tmp_path):
    trained = train(Faults(log_test=True), epochs=2)
    paths = save_run(trained, tmp_path / "ckpt", monitor="test_acc")
    logs = WRITERS["tensorboard"](histories["test_logged"], tmp_path / "tb")
    _, report = _check(str(paths["final"]), "--logs", str(logs), "--select", "curves")
    sources = sorted(
        f["evidence"]["source"] for f in report["findings"] if f["rule"] == "test-set-selection"
    )
    assert sources == ["checkpoint", "logs"]


def test_curves_rules_are_skipped_with_a_reason_without_logs(tmp_path):
    trained = train(Faults(), epochs=1)
    paths = save_run(trained, tmp_path)
    _, report = _check(str(paths["final"]))
    skipped = {s["rule"]: s["reason"] for s in report["skipped"]}
    assert skipped["train-val-divergence"] == "needs --logs (the run's training logs)"
    assert "test-set-selection" not in skipped  # the checkpoint alone is enough for it


def test_metric_options_override_the_inferred_roles(histories, tmp_path):
    folder = WRITERS["lightning-csv"](histories["overfit"], tmp_path / "run")
    _, report = _check("--logs", str(folder), "--train-metric", "train_loss_epoch")
    logs = next(i for i in report["inputs"] if i["role"] == "logs")
    assert logs["roles"]["train_loss"] == "train_loss_epoch"
    assert "train-val-divergence" in _curve_rules(report)
    result = CliRunner().invoke(cli, ["check", "--logs", str(folder), "--val-metric", "nope"])
    assert result.exit_code == 2
    assert "--val-metric 'nope': no such series" in result.output


def test_logs_without_any_run_are_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["check", "--logs", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no training logs found" in result.output
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01binary")
    result = CliRunner().invoke(cli, ["check", "--logs", str(tmp_path / "notes.bin")])
    assert result.exit_code == 2 and "not a training log" in result.output


def test_a_resumed_run_is_one_curve_and_says_so(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = ["step,train_loss,val_loss"]
    rows += [f"{s},{2.0 - s * 0.01},{2.1 - s * 0.01}" for s in range(0, 100)]
    rows += [f"{s},{1.5 - s * 0.01},{1.6 - s * 0.01}" for s in range(50, 150)]  # resumed at 50
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    _, report = _check("--logs", str(path))
    logs = next(i for i in report["inputs"] if i["role"] == "logs")
    assert any("resumed run" in n and "50 earlier point(s) replaced" in n for n in logs["notes"])


def test_several_runs_in_one_folder_are_checked_separately(histories, tmp_path):
    WRITERS["lightning-csv"](histories["overfit"], tmp_path / "a")
    WRITERS["lightning-csv"](histories["healthy"], tmp_path / "b")
    _, report = _check("--logs", str(tmp_path))
    logs = [i for i in report["inputs"] if i["role"] == "logs"]
    assert len(logs) == 2
    found = [f for f in report["findings"] if f["rule"] == "train-val-divergence"]
    assert len(found) == 1 and "/a/" in found[0]["location"]["artifact"]


def test_config_reads_logs_and_metric_names(histories, tmp_path):
    WRITERS["lightning-csv"](histories["overfit"], tmp_path / "run")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.diag]\nlogs = ["run"]\ntrain-metric = "train_loss_epoch"\n', encoding="utf-8"
    )
    result = CliRunner().invoke(
        cli, ["check", "--config", str(tmp_path / "pyproject.toml"), "--format", "json", "-q"]
    )
    report = json.loads(result.output)
    assert next(i for i in report["inputs"] if i["role"] == "logs")["roles"]["train_loss"] == (
        "train_loss_epoch"
    )
    assert "train-val-divergence" in _curve_rules(report)


def test_paths_in_findings_are_the_log_files(histories, tmp_path):
    folder = WRITERS["lightning-csv"](histories["overfit"], tmp_path / "run")
    _, report = _check("--logs", str(folder))
    artifact = Path(report["findings"][0]["location"]["artifact"])
    assert artifact.name == "metrics.csv" and artifact.is_file()


def _html(*args: str, tmp_path: Path) -> str:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["check", *args, "--html", str(out), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    return out.read_text(encoding="utf-8")


def test_html_plots_the_divergence_with_its_best_epoch(histories, tmp_path):
    import re

    folder = WRITERS["lightning-csv"](histories["overfit"], tmp_path / "run")
    page = _html("--logs", str(folder), tmp_path=tmp_path)
    section = page[page.index('<section id="curves"') :]
    section = section[: section.index("</section>")]
    assert section.count('<polyline class="train"') >= 1
    assert section.count('<polyline class="val"') >= 1
    assert 'class="band-diverging"' in section
    best = re.search(r'<line class="mark-best" x1="([\d.]+)"', section)
    assert best is not None
    # the marker sits where the best step is on the x axis of the plotted steps
    val = np.array([r["val_loss"] for r in histories["overfit"].epochs])
    points = re.search(r'<polyline class="val" points="([^"]+)"', section)
    assert points is not None
    xs = [float(p.split(",")[0]) for p in points[1].split()]
    assert len(xs) == len(val)
    assert abs(xs.index(min(xs, key=lambda x: abs(x - float(best[1])))) - int(np.argmin(val))) <= 2
    assert "best: step" in section


def test_html_curves_escape_series_names_and_notes(tmp_path):
    hostile = "<img src=x onerror=alert(1)>_loss"
    lines = [json.dumps({"step": s, "train_loss": 2.0 / s, hostile: 1.0 / s}) for s in range(1, 30)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    page = _html(
        "--logs", str(tmp_path / "log.jsonl"), "--train-metric", hostile, tmp_path=tmp_path
    )
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;_loss" in page


def test_html_marks_the_first_nan(histories, tmp_path):
    folder = WRITERS["tensorboard"](histories["nan"], tmp_path / "tb")
    page = _html("--logs", str(folder), tmp_path=tmp_path)
    assert '<line class="mark-nonfinite"' in page
