"""The [curves] rules on training logs of other people's public runs.

Each log in tests/data/public_logs/ was copied unmodified from a public repository
(manifest.json names the repository, commit and path) and read by a person, whose verdict
is written next to it: the rules that should fire at warning or error level, the ones
that may add an info note, and for overfitting where the best evaluation is. diag must
reach the same verdict, through its own format detection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.api import CheckOptions, check

DATA = Path(__file__).parent / "data" / "public_logs"
MANIFEST = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))["logs"]


def test_the_manifest_describes_every_log_folder_and_nothing_else():
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert folders == {entry["id"] for entry in MANIFEST}
    for entry in MANIFEST:
        assert (DATA / entry["id"] / entry["file"]).is_file(), entry["id"]
        assert len(entry["commit"]) == 40 and entry["reason"], entry["id"]


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["id"])
def test_diag_agrees_with_the_written_verdict(entry):
    path = DATA / entry["id"] / entry["file"]
    result, _ = check(CheckOptions(logs=[str(path)], select=["curves"]))
    assert not result.errors, result.errors
    raised = {f.rule for f in result.findings if f.severity.label in ("warning", "error")}
    notes = {f.rule for f in result.findings if f.severity.label == "info"}
    messages = [f"{f.rule} ({f.severity.label}): {f.message}" for f in result.findings]
    assert raised == set(entry["expected"]), messages
    assert notes <= set(entry.get("allowed_info", ())), messages
    if "best_step" in entry:
        lo, hi = entry["best_step"]
        (divergence,) = [f for f in result.findings if f.rule == "train-val-divergence"]
        assert lo <= divergence.evidence["best_step"] <= hi, messages
