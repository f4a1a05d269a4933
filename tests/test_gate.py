"""diag as a CI gate: configuration, per-rule options, per-object ignores, baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diag.cli import cli


def _linear(out: int, fan_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(out, fan_in, generator=g) * 2 - 1) / fan_in**0.5


def _state(seed: int = 0, zero: tuple[str, ...] = ("fc1.weight",)) -> dict[str, torch.Tensor]:
    state = {
        "fc1.weight": _linear(32, 64, seed),
        "fc2.weight": _linear(16, 32, seed + 1),
        "fc3.weight": _linear(10, 16, seed + 2),
    }
    for name in zero:
        state[name] = torch.zeros_like(state[name])
    return state


def _run(*args: str, cwd: Path | None = None) -> tuple[int, dict]:
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(cli, ["check", *args, "--format", "json", "--quiet"])
    finally:
        os.chdir(old)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_a_baseline_accepts_known_findings_and_fails_only_on_new_ones(tmp_path):
    torch.save(_state(0), tmp_path / "run.pt")
    baseline = tmp_path / "baseline.json"
    code, _ = _run(str(tmp_path / "run.pt"), "--write-baseline", str(baseline))
    assert code == 0 and json.loads(baseline.read_text())["diag_baseline"] == 1
    # a re-run of the same training: other values, same fault
    torch.save(_state(7), tmp_path / "run.pt")
    code, report = _run(str(tmp_path / "run.pt"), "--baseline", str(baseline))
    assert code == 0
    assert [(f["rule"], f.get("known")) for f in report["findings"]] == [
        ("constant-parameter", True)
    ]
    assert report["metadata"]["baseline"]["new"] == 0
    # a new fault fails the gate; the known one is still shown, still known
    torch.save(_state(7, zero=("fc1.weight", "fc2.weight")), tmp_path / "run.pt")
    code, report = _run(str(tmp_path / "run.pt"), "--baseline", str(baseline))
    assert code == 1
    known = {f["location"]["object"]: f.get("known", False) for f in report["findings"]}
    assert known == {"fc1.weight": True, "fc2.weight": False}


def test_a_broken_baseline_is_an_input_error(tmp_path):
    torch.save(_state(0), tmp_path / "run.pt")
    (tmp_path / "b.json").write_text("{not json", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["check", str(tmp_path / "run.pt"), "--baseline", str(tmp_path / "b.json")]
    )
    assert result.exit_code == 2 and "not a diag baseline" in result.output


def _project(tmp_path: Path, table: str, name: str = "pyproject.toml") -> Path:
    torch.save(_state(0, zero=("fc1.weight", "fc2.weight")), tmp_path / "run.pt")
    (tmp_path / name).write_text(table, encoding="utf-8")
    return tmp_path


def test_no_arguments_in_a_configured_repository_runs_the_whole_check(tmp_path):
    root = _project(tmp_path, '[tool.diag]\ncheckpoint = "run.pt"\n')
    code, report = _run(cwd=root)
    assert code == 1 and len(report["findings"]) == 2
    assert report["metadata"]["config_path"] == "pyproject.toml"


def test_per_object_ignores_drop_matching_findings(tmp_path):
    root = _project(
        tmp_path,
        '[tool.diag]\ncheckpoint = "run.pt"\n'
        '[tool.diag.per-object-ignores]\nconstant-parameter = ["fc2.*"]\n',
    )
    _, report = _run(cwd=root)
    assert [f["location"]["object"] for f in report["findings"]] == ["fc1.weight"]
    assert report["metadata"]["ignored_by_config"] == 1


def test_diag_toml_and_extend_select(tmp_path):
    root = _project(
        tmp_path,
        'checkpoint = "run.pt"\nselect = ["dead-units"]\nextend-select = ["constant-parameter"]\n',
        name="diag.toml",
    )
    _, report = _run(cwd=root)
    assert {f["rule"] for f in report["findings"]} == {"constant-parameter"}
    assert report["metadata"]["rules_run"] == 2


def test_rule_options_change_thresholds_and_are_validated(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.normal(size=(400, 4)))
    np.savez(tmp_path / "val.npz", x=rng.normal(size=(300, 4)))
    table = (
        '[tool.diag]\nsplits = { train = "train.npz", val = "val.npz" }\n'
        'select = ["validation-set-size"]\n'
    )
    root = _project(tmp_path, table)
    _, report = _run(cwd=root)
    assert [f["rule"] for f in report["findings"]] == ["validation-set-size"]
    (root / "pyproject.toml").write_text(
        table + "[tool.diag.rules.validation-set-size]\nmax_interval_points = 10\n",
        encoding="utf-8",
    )
    _, report = _run(cwd=root)
    assert report["findings"] == []
    for bad, message in [
        ("[tool.diag.rules.no-such-rule]\nx = 1\n", "unknown rule 'no-such-rule'"),
        ("[tool.diag.rules.validation-set-size]\nnope = 1\n", "unknown option 'nope'"),
        ('[tool.diag.rules.validation-set-size]\nmax_interval_points = "wide"\n', "must be a"),
    ]:
        (root / "pyproject.toml").write_text(table + bad, encoding="utf-8")
        old = Path.cwd()
        os.chdir(root)
        try:
            result = CliRunner().invoke(cli, ["check"])
        finally:
            os.chdir(old)
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("name", ["pyproject.toml", "diag.toml"])
def test_diag_config_prints_the_merged_config(tmp_path, name):
    body = 'checkpoint = "run.pt"\nfail-on = "warning"\n'
    root = _project(tmp_path, ("[tool.diag]\n" if name == "pyproject.toml" else "") + body, name)
    result = CliRunner().invoke(cli, ["config", "--config", str(root / name)])
    assert result.exit_code == 0
    assert f"# from {root / name}" in result.output
    assert f'checkpoint = "{root / "run.pt"}"' in result.output
    assert 'fail-on = "warning"' in result.output


def test_the_python_api_returns_the_result(tmp_path):
    import diag

    torch.save(_state(0), tmp_path / "run.pt")
    result = diag.check(str(tmp_path / "run.pt"), select=["params"])
    assert [(f.rule, f.location.object) for f in result.findings] == [
        ("constant-parameter", "fc1.weight")
    ]
    assert callable(diag.check)  # importing diag.api does not shadow the function
