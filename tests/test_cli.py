"""The command line contract: exit codes, formats, selection, config, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_support import GOLDEN, canonical_result

DIAG = [sys.executable, "-m", "diag"]


def diag(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DIAG, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    good = {"fc1.weight": torch.rand(16, 32) - 0.5, "fc2.weight": torch.rand(4, 16) - 0.5}
    bad = dict(good, **{"fc1.weight": torch.zeros(16, 32)})
    warn = dict(good, **{"fc1.weight": good["fc1.weight"].index_fill(0, torch.tensor([2, 9]), 0.0)})
    paths = {}
    for name, state in (("good", good), ("bad", bad), ("warn", warn)):
        paths[name] = root / f"{name}.pt"
        torch.save(state, paths[name])
    return paths


def test_exit_0_when_clean(ckpts):
    proc = diag("check", str(ckpts["good"]))
    assert proc.returncode == 0, proc.stderr
    assert "Found 0 errors, 0 warnings, 0 info" in proc.stdout


def test_exit_1_on_error_finding(ckpts):
    proc = diag("check", str(ckpts["bad"]))
    assert proc.returncode == 1
    assert "fc1.weight: constant-parameter:" in proc.stdout


def test_fail_on_moves_the_threshold(ckpts):
    assert diag("check", str(ckpts["warn"])).returncode == 0
    assert diag("check", str(ckpts["warn"]), "--fail-on", "warning").returncode == 1
    assert diag("check", str(ckpts["bad"]), "--fail-on", "never").returncode == 0


def test_select_and_ignore_by_rule_and_group(ckpts):
    proc = diag("check", str(ckpts["bad"]), "--ignore", "constant-parameter", "--format", "json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["findings"] == []
    proc = diag(
        "check", str(ckpts["bad"]), "--select", "params", "--ignore", "dead-units,init-scale"
    )
    assert proc.returncode == 1


@pytest.mark.parametrize("flag", ["--select", "--ignore"])
def test_unknown_rule_name_is_a_usage_error(ckpts, flag):
    proc = diag("check", str(ckpts["good"]), flag, "no-such-rule")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "diag: error: unknown rule or group: no-such-rule (see `diag rules` for the catalogue)"
    ]


def test_bad_flag_is_one_line_exit_2(ckpts):
    proc = diag("check", str(ckpts["good"]), "--format", "yaml")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("diag: error: ")


def test_missing_file_is_exit_2_naming_it(tmp_path):
    proc = diag("check", str(tmp_path / "nope.pt"))
    assert proc.returncode == 2
    assert proc.stderr == f"diag: error: {tmp_path / 'nope.pt'}: no such file or folder\n"


def test_no_checkpoint_is_a_usage_error(tmp_path):
    proc = diag("check", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nothing to check" in proc.stderr


def test_json_contract(ckpts):
    proc = diag("check", str(ckpts["bad"]), "--format", "json")
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"diag_version", "inputs", "findings", "skipped", "errors", "summary"}
    assert doc["summary"] == {"error": 1, "warning": 0, "info": 0}
    finding = doc["findings"][0]
    assert finding["rule"] == "constant-parameter" and finding["group"] == "params"
    assert finding["location"] == {"artifact": str(ckpts["bad"]), "object": "fc1.weight"}
    assert finding["evidence"]["value"] == 0.0
    # (the curves, data and grads rules wait for --logs, --split and --model)
    skipped = {
        s["rule"]
        for s in doc["skipped"]
        if not s["reason"].startswith(("needs --logs", "needs --split", "needs --model"))
    }
    assert skipped == {"init-scale", "update-ratio"}
    assert doc["inputs"][0]["role"] == "checkpoint" and doc["inputs"][0]["tensors"] == 2


def test_output_and_html_files(ckpts, tmp_path):
    out, html = tmp_path / "r.json", tmp_path / "sub" / "r.html"
    proc = diag("check", str(ckpts["bad"]), "--format", "json", "-o", str(out), "--html", str(html))
    assert proc.returncode == 1 and proc.stdout == ""
    assert json.loads(out.read_text())["summary"]["error"] == 1
    assert "Content-Security-Policy" in html.read_text()


def test_failed_run_leaves_no_partial_output(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("previous report")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = diag("check", str(bad), "--format", "json", "-o", str(out))
    assert proc.returncode == 2
    assert out.read_text() == "previous report"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.json")]


def test_config_in_pyproject(ckpts, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.diag]\ncheckpoint = "{ckpts["warn"]}"\n'
        'fail-on = "warning"\nselect = ["dead-units"]\n'
    )
    proc = diag("check", cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        "dead-units" in proc.stdout
        and "Found 0 errors, 1 warning, 0 info from 1 rules." in proc.stdout
    )
    assert diag("check", "--fail-on", "error", cwd=tmp_path).returncode == 0


def test_isolated_ignores_the_config(ckpts, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.diag]\ncheckpoint = "{ckpts["warn"]}"\nfail-on = "warning"\n'
        'select = ["dead-units"]\n'
    )
    proc = diag("check", "--isolated", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to check" in proc.stderr
    proc = diag("check", str(ckpts["warn"]), "--isolated", "--select", "dead-units", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # fail-on from the config no longer applies
    assert "1 warning" in proc.stdout
    proc = diag("check", "--isolated", "--config", "pyproject.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot go with --config" in proc.stderr


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.diag]\ncheckpont = "x.pt"\n')
    proc = diag("check", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown [tool.diag] key(s): checkpont" in proc.stderr


def test_rules_lists_and_explains():
    proc = diag("rules")
    assert proc.returncode == 0
    assert "[params]" in proc.stdout and "noisy-kernels" in proc.stdout
    proc = diag("rules", "stuck-parameter")
    assert proc.returncode == 0
    for heading in ("## What it does", "## Why is this bad?", "## How to fix"):
        assert heading in proc.stdout
    assert diag("rules", "nope").returncode == 2


def test_help_does_not_import_torch():
    code = "import sys; from diag.cli import cli; assert 'torch' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr
    code = (
        "import sys, runpy; sys.argv = ['diag', '--help']\n"
        "try:\n    runpy.run_module('diag', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'jinja2' not in sys.modules, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_golden_json_of_the_canonical_result():
    from diag.reports import render

    rendered = render("json", canonical_result())
    assert rendered == (GOLDEN / "canonical.json").read_text()


def test_golden_text_of_the_canonical_result():
    from diag.reports import render

    assert render("text", canonical_result()) == (GOLDEN / "canonical.txt").read_text()


def test_golden_text_verbose_lists_every_skipped_rule():
    from diag.reports import render

    rendered = render("text", canonical_result(), verbose=True)
    assert rendered == (GOLDEN / "canonical-verbose.txt").read_text()
    assert "update-ratio: needs --init" in rendered


def test_skipped_rules_are_one_line_grouped_by_the_flag_they_need(tmp_path, runs):
    """A plain `diag check model.pt` names what was not checked in one line, not twenty."""
    proc = subprocess.run(
        [sys.executable, "-m", "diag", "check", str(runs["healthy"]["final"]), "-q"],
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.splitlines()
    summary = [line for line in lines if "inputs you did not give" in line]
    assert len(summary) == 1, proc.stdout
    counts = dict(re.findall(r"(--[a-z/-]+|CHECKPOINT) (\d+)", summary[0]))
    assert counts["--logs"] == "5" and counts["--split"] == "7", summary[0]
    assert counts["--model/--batch"] == "7", summary[0]
    assert not any(line.startswith("SKIPPED") for line in lines)
    verbose = subprocess.run(
        [sys.executable, "-m", "diag", "check", str(runs["healthy"]["final"]), "-q", "-v"],
        capture_output=True,
        text=True,
    )
    total = int(summary[0].split()[0])
    listed = verbose.stdout.split("SKIPPED (", 1)[1].splitlines()[1 : 1 + total]
    assert len(listed) == total and all(": needs" in line for line in listed)
