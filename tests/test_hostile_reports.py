"""Markup from inputs never reaches a report raw, and a failed run never leaves a partial one.

Every string a user's files can put in a report is made hostile at once: tensor names, metric
names, split names, labels, and the folder the files sit in. Each report format must keep it
inert: escaped HTML under the same CSP, XML that parses, SARIF that validates, escaped
workflow commands.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diag.cli import cli

PAYLOAD = "</script><img src=x onerror=alert(1)>"
SPLIT = "<img src:x onerror:alert(3)>"  # a split name cannot hold "=" (NAME=PATH)
RAW = ("<img src=x", "<img src:x", "<script", "onerror=alert(1)>")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile") / "run <svg onload=alert(2)>"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    state = {
        f"{PAYLOAD}.weight": torch.zeros(16, 8),  # constant-parameter fires on it
        "fc.weight": torch.randn(8, 8, generator=g) / 8**0.5,
    }
    torch.save(state, root / "final.pt")
    with (root / "metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", f"{PAYLOAD}_loss", "val_loss"])
        for step in range(1, 40):
            w.writerow([step, "nan" if step > 30 else 2.0 / step, 2.1 / step])
    rng = np.random.default_rng(0)
    for name, labels in (("train", ["a", "b"]), ("val", ["a", PAYLOAD])):
        with (root / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["f1", "f2", "label"])
            for _ in range(200):
                w.writerow([*rng.normal(size=2).round(6), labels[int(rng.integers(0, 2))]])
    return {
        "checkpoint": str(root / "final.pt"),
        "logs": str(root / "metrics.csv"),
        "train": str(root / "train.csv"),
        "val": str(root / "val.csv"),
    }


def _render(hostile: dict[str, str], fmt: str) -> tuple[int, str]:
    args = [
        "check", hostile["checkpoint"], "--logs", hostile["logs"],
        "--split", f"train={hostile['train']}", "--split", f"{SPLIT}={hostile['val']}",
        "--format", fmt, "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, result.stdout


def test_the_hostile_run_really_produces_findings_on_the_hostile_names(hostile):
    _, out = _render(hostile, "json")
    report = json.loads(out)
    objects = {f["location"]["object"] for f in report["findings"]}
    assert f"{PAYLOAD}.weight" in objects  # constant-parameter
    assert f"{PAYLOAD}_loss" in objects  # loss-nonfinite
    assert any(PAYLOAD in json.dumps(f["evidence"]) for f in report["findings"])  # the label


def test_html_keeps_every_input_string_inert(hostile):
    _, page = _render(hostile, "html")
    for raw in RAW:
        assert raw not in page
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<svg onload" not in page
    assert page.count('http-equiv="Content-Security-Policy"') == 1
    assert "script-src" not in page.split("Content-Security-Policy", 1)[1].split(">", 1)[0]


def test_xml_and_sarif_stay_well_formed(hostile):
    from jsonschema import Draft4Validator

    _, junit = _render(hostile, "junit")
    root = ET.fromstring(junit)  # parses: markup arrived as text, not elements
    assert not root.findall(".//img") and PAYLOAD in ET.tostring(root, encoding="unicode").replace(
        "&lt;", "<"
    ).replace("&gt;", ">")
    _, sarif = _render(hostile, "sarif")
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    Draft4Validator(schema).validate(json.loads(sarif))


def test_workflow_commands_cannot_be_forged_by_a_name(hostile):
    _, lines = _render(hostile, "github")
    for line in lines.splitlines():
        assert line.startswith(("::error ", "::warning ", "::notice "))
        body = line.split("::", 2)[2]
        assert "\n" not in body and "::" not in body.replace("%3A%3A", "")


def test_a_failed_run_leaves_older_reports_intact_and_no_partial_file(tmp_path, monkeypatch):
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    out.write_text("old json", encoding="utf-8")
    html.write_text("old html", encoding="utf-8")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    result = CliRunner().invoke(
        cli, ["check", str(broken), "-o", str(out), "--html", str(html), "--format", "json"]
    )
    assert result.exit_code == 2
    assert out.read_text() == "old json" and html.read_text() == "old html"
    # a renderer that dies half-way leaves the old file too, and no temporary file
    import diag.reports.html as html_report

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("renderer died")

    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(4, 4)}, good)
    monkeypatch.setattr(html_report, "render", boom)
    result = CliRunner().invoke(cli, ["check", str(good), "--html", str(html), "-q"])
    assert result.exit_code != 0
    assert html.read_text() == "old html"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.pt", "good.pt", "report.html", "report.json"
    ]  # fmt: skip
