"""The load run: one `diag check` over 10,000 tensors, 1,000,000 log steps and 1,000,000 +
100,000 split rows, through the CLI in the audited sandbox (memory cap, wall-time cap,
nothing read outside the inputs). Its time and peak memory are printed by
bench/bench_load.py; here it must finish, within the cap, with the right findings.
"""

from __future__ import annotations

import json
from pathlib import Path

import hostile_sandbox as hs
import load_inputs as li
import pytest

# Measured 945 MB peak RSS (imports included) on the 2-core machine: see bench/README.md.
LOAD_RSS_CAP_MB = 1280


@pytest.fixture(scope="module")
def load_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("load")
    li.write_checkpoint(folder / "model.pt")
    li.write_log(folder / "metrics.csv")
    li.write_splits(folder)
    return folder


def test_load_run_completes_within_the_memory_cap(load_folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ["model.pt", "--logs", "metrics.csv", "--split", "train=train.npz"]
    args += ["--split", "val=val.npz", "-q", "--format", "json", "-o", str(report)]
    outcome = hs.run_diag([*args, "--html", str(tmp_path / "report.html")], load_folder, 900)
    hs.check_invariants(outcome, allowed=[load_folder, tmp_path], rss_cap_mb=LOAD_RSS_CAP_MB)
    print(f"load run: {outcome.seconds:.1f} s, peak RSS {outcome.peak_rss_mb:.0f} MB")

    assert outcome.returncode == 1, outcome.shown()  # the planted copies are an error
    result = json.loads(report.read_text())
    inputs = {i.get("name", i["role"]): i for i in result["inputs"]}
    assert inputs["checkpoint"]["tensors"] == li.TENSORS
    assert inputs["logs"]["points"] == li.STEPS  # a train or a val loss at every step
    assert inputs["train"]["samples"] == li.ROWS and inputs["val"]["samples"] == li.ROWS // 10
    assert result["errors"] == []
    (overlap,) = [f for f in result["findings"] if f["rule"] == "split-overlap-exact"]
    assert overlap["message"].startswith(f"{li.PLANTED} val sample(s)")
    # A healthy decay: none of the curve rules fire on a million steps of it.
    assert not [f for f in result["findings"] if f["group"] == "curves"]
