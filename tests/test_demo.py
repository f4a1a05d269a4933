"""`diag demo`, the README's first command: it trains, plants, checks and reports for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diag.cli import cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(cli, ["demo", str(folder)])
    assert result.exit_code == 0, result.output
    return folder, result.output


def _check(folder: Path, run: str) -> dict:
    base = folder / run
    args = [
        "check", str(base / "final.ckpt"), "--init", str(base / "init.pt"),
        "--logs", str(base / "lightning_logs"), "--split", f"train={base / 'data/train.npz'}",
        "--split", f"val={base / 'data/val.npz'}", "--model", f"{base / 'model.py'}:build",
        "--batch", str(base / "batch.pt"), "--format", "json", "--quiet",
    ]  # fmt: skip
    return json.loads(CliRunner().invoke(cli, args).output)


def _found(report: dict) -> set[tuple[str, str]]:
    return {
        (f["rule"], f["location"]["object"])
        for f in report["findings"]
        if f["severity"] in ("warning", "error")
    }


def test_the_demo_writes_a_report_per_run_and_says_where(demo):
    folder, output = demo
    for run in ("healthy", "broken", "overfit"):
        page = folder / f"{run}-report.html"
        assert page.is_file() and f"HTML report: {page}" in output


def test_the_healthy_demo_run_has_no_warning(demo):
    assert _found(_check(demo[0], "healthy")) == set()


def test_the_broken_demo_run_shows_every_planted_fault(demo):
    report = _check(demo[0], "broken")
    found = _found(report)
    assert {
        ("constant-parameter", "fc1.weight"),
        ("stuck-parameter", "conv1.weight"),
        ("noisy-kernels", "conv1.weight"),
        ("split-overlap-exact", "train/val"),
        ("split-overlap-near", "train/val"),
        ("gradient-mismatch", "fc2.weight"),
        ("gradient-disconnected", "conv1.weight"),
    } == found
    counts = {
        f["rule"]: f["evidence"]["pair_count"]
        for f in report["findings"]
        if "pairs" in f["evidence"]
    }
    assert counts == {"split-overlap-exact": 6, "split-overlap-near": 6}
    page = (demo[0] / "broken-report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 * 12  # every leaked pair, side by side
    assert page.count('class="verdict-mismatch"') == 1  # fc2 in the gradient table


def test_the_overfit_demo_run_shows_the_divergence_plot(demo):
    assert ("train-val-divergence", "val_loss") in _found(_check(demo[0], "overfit"))
    page = (demo[0] / "overfit-report.html").read_text(encoding="utf-8")
    assert '<line class="mark-best"' in page and 'class="band-diverging"' in page
