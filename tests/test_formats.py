"""The CI reporters: SARIF 2.1.0, JUnit XML and GitHub Actions workflow commands.

Golden files: each format renders the canonical Result (tests_support.py) and is compared with
tests/golden/canonical.{sarif.json,junit.xml,github.txt}. After an intended change, regenerate
them with

    DIAG_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_formats.py

and review the diff. SARIF and JUnit goldens render with the small fixed rule catalogue below
rather than the registry, so editing a rule's docstring does not churn them; the tests on real
results use the real registry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from tests_support import GOLDEN, canonical_result

from diag.api import CheckOptions, check
from diag.model import Finding, Location, Result, RuleError, Severity, Skipped
from diag.registry import RuleSpec, load_rules
from diag.reports import FORMATS, junit, render, sarif

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
UPDATE = os.environ.get("DIAG_UPDATE_GOLDEN") == "1"
HOSTILE = "a <b> & \"c\" 'd' ]]> 100% done,\r\nnext: line\x00\x01\x1b\ufffe end"


# --- a fixed catalogue for the goldens -------------------------------------------------------


def _documented(doc: str) -> Callable[..., Any]:
    def func() -> list[Finding]:
        return []

    func.__doc__ = doc
    return func


def _spec(name: str, group: str, severity: Severity, what: str) -> RuleSpec:
    doc = (
        f"{what.split('.')[0]}.\n\n## What it does\n{what}\n\n## Why is this bad?\n"
        f"Because {name} hides a silent failure.\n\n## How to fix\nFix the {name} cause.\n"
    )
    return RuleSpec(name, group, severity, ("checkpoint",), (), _documented(doc))


CATALOGUE = [
    _spec("constant-parameter", "params", Severity.ERROR, "Finds tensors with one value."),
    _spec("dead-units", "params", Severity.WARNING, "Finds units with zero incoming weights."),
    _spec("noisy-kernels", "params", Severity.WARNING, "Finds kernels that look like noise."),
    _spec("stuck-parameter", "params", Severity.WARNING, "Finds parameters that never moved."),
    _spec("update-ratio", "params", Severity.WARNING, "Compares update and weight scale."),
    _spec("loss-spikes", "curves", Severity.WARNING, "Finds spikes. " + "x" * 1200),
]


def _golden(name: str, rendered: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(rendered)
    assert rendered == path.read_text(), f"{name} changed; see the module docstring"


def test_golden_sarif_of_the_canonical_result():
    _golden("canonical.sarif.json", sarif.render(canonical_result(), rules=CATALOGUE))


def test_golden_junit_of_the_canonical_result():
    _golden("canonical.junit.xml", junit.render(canonical_result(), rules=CATALOGUE))


def test_golden_github_of_the_canonical_result():
    _golden("canonical.github.txt", render("github", canonical_result()))


def test_formats_are_registered():
    for name in ("sarif", "junit", "github"):
        assert name in FORMATS
        assert isinstance(render(name, canonical_result()), str)


# --- SARIF -------------------------------------------------------------------------------------


def validate_sarif(text: str) -> dict[str, Any]:
    log = json.loads(text)
    validator_cls = jsonschema.validators.validator_for(SCHEMA)
    validator_cls(SCHEMA, format_checker=validator_cls.FORMAT_CHECKER).validate(log)
    return log


def check_github_requirements(log: dict[str, Any]) -> None:
    """What code scanning needs beyond the schema (see gradients-logs-ci.md section 3)."""
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for rule in rules:
        assert rule["shortDescription"]["text"]
        assert 0 < len(rule["fullDescription"]["text"]) <= 1000
        assert rule["help"]["text"]
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"]
        physical = res["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"]["uri"]
        assert physical["region"]["startLine"] >= 1
        assert res["partialFingerprints"]["diagFingerprint/v1"]


def test_canonical_sarif_is_valid_and_complete():
    log = validate_sarif(sarif.render(canonical_result(), rules=CATALOGUE))
    check_github_requirements(log)
    run = log["runs"][0]
    assert [r["ruleId"] for r in run["results"]] == [
        "stuck-parameter",
        "dead-units",
        "constant-parameter",
    ]
    assert [r["level"] for r in run["results"]] == ["error", "warning", "note"]
    loss_spikes = run["tool"]["driver"]["rules"][-1]
    assert loss_spikes["name"] == "LossSpikes"
    assert len(loss_spikes["fullDescription"]["text"]) == 1000  # truncated, not rejected
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [(n["level"], n["associatedRule"]["id"]) for n in notes] == [
        ("error", "noisy-kernels"),
        ("note", "update-ratio"),
    ]
    assert run["invocations"][0]["executionSuccessful"] is False


def test_the_schema_rejects_what_code_scanning_rejects():
    # The validator must be able to fail, or the validity tests above prove nothing.
    log = json.loads(sarif.render(canonical_result(), rules=CATALOGUE))
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(json.dumps(log))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint with a planted fault: an all-zero Linear weight."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.zero_()
    path = tmp_path_factory.mktemp("planted") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def real_result(path: Path) -> Result:
    result, _ = check(CheckOptions(checkpoint=str(path)))
    return result


def test_real_result_sarif_has_every_rule_and_valid_results(planted):
    result = real_result(planted)
    assert result.findings, "the planted all-zero weight must be found"
    log = validate_sarif(render("sarif", result))
    check_github_requirements(log)
    driver = log["runs"][0]["tool"]["driver"]
    registered = load_rules()
    assert [r["id"] for r in driver["rules"]] == [s.name for s in registered]
    for rule, spec in zip(driver["rules"], registered, strict=True):
        assert rule["shortDescription"]["text"] == spec.summary
        for heading in ("What it does", "Why is this bad?", "How to fix"):
            assert f"## {heading}" in rule["help"]["markdown"]
        assert rule["properties"]["tags"] == [spec.group]
    results = log["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"constant-parameter"}
    zero = next(
        r for r in results if r["locations"][0]["logicalLocations"][0]["name"] == "0.weight"
    )
    assert zero["properties"]["artifact"] == str(planted)
    # Outside the working directory: an absolute file URI, not a %SRCROOT%-relative one.
    location = zero["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"].startswith("file://") and "uriBaseId" not in location


def test_empty_result_sarif_is_valid():
    log = validate_sarif(render("sarif", Result(findings=())))
    run = log["runs"][0]
    assert run["results"] == []
    assert len(run["tool"]["driver"]["rules"]) == len(load_rules())
    assert run["invocations"][0]["executionSuccessful"] is True


def _fingerprints(result: Result) -> list[str]:
    log = json.loads(render("sarif", result))
    return [r["partialFingerprints"]["diagFingerprint/v1"] for r in log["runs"][0]["results"]]


def test_fingerprints_are_stable_across_runs_and_values(planted, tmp_path):
    first = real_result(planted)
    assert _fingerprints(first) == _fingerprints(real_result(planted))
    # The same checkpoint in another folder, with other numbers: the same findings.
    moved = tmp_path / planted.name
    moved.write_bytes(planted.read_bytes())
    changed = Result(
        tuple(
            dataclasses.replace(
                dataclasses.replace(
                    f, location=dataclasses.replace(f.location, artifact=str(moved))
                ),
                evidence={k: 12345 for k in f.evidence},
                message=f.message + " (other values)",
            )
            for f in first.findings
        )
    )
    assert _fingerprints(changed) == _fingerprints(first)
    # ...but another object is another finding.
    other = dataclasses.replace(
        first.findings[0], location=dataclasses.replace(first.findings[0].location, object="x")
    )
    assert _fingerprints(Result((other,)))[0] != _fingerprints(first)[0]


def _one(finding: Finding, **metadata: Any) -> dict[str, Any]:
    log = validate_sarif(sarif.render(Result((finding,), metadata=metadata), rules=CATALOGUE))
    return log["runs"][0]["results"][0]


def _finding(artifact: str, obj: str = "fc1.weight", message: str = "zeros") -> Finding:
    return Finding(message, Location(artifact, obj), {}, Severity.ERROR, "dead-units", "params")


def test_sarif_anchors_on_the_config_line_that_names_the_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.diag]\ncheckpoint = "runs/final.pt"\n'
    )
    res = _one(_finding(str(tmp_path / "runs" / "final.pt")), config_path="pyproject.toml")
    physical = res["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "pyproject.toml", "uriBaseId": "%SRCROOT%"}
    assert physical["region"]["startLine"] == 5
    # The artifact still names itself, as a path relative to the working directory.
    assert res["message"]["text"].startswith(str(tmp_path / "runs" / "final.pt"))
    assert res["locations"][0]["logicalLocations"][0]["fullyQualifiedName"].endswith("::fc1.weight")
    # A config that does not name the artifact, or does not exist: line 1, never a crash.
    res = _one(_finding("other.pt"), config_path="pyproject.toml")
    assert res["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
    res = _one(_finding("other.pt"), config_path="missing.toml")
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "missing.toml"


def test_sarif_anchors_on_the_artifact_without_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _one(_finding(str(tmp_path / "logs" / "metrics.csv")))
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "logs/metrics.csv"
    # The probe's artifact is `file.py:factory`: anchor on the file.
    res = _one(_finding("models/net.py:build"))
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/net.py"
    # A module spec is not a file path; its colon must not read as a URI scheme.
    res = _one(_finding("pkg.models:build"))
    assert (
        res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "pkg.models%3Abuild"
    )
    res = _one(_finding("runs/a b%.pt"))
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "runs/a%20b%25.pt"


def test_sarif_hostile_and_nonfinite_values_stay_valid_json():
    finding = dataclasses.replace(
        _finding("runs/x.pt", obj=HOSTILE, message=HOSTILE),
        evidence={"nan": float("nan"), "inf": float("-inf"), "arr": torch.tensor(2.5)},
    )
    res = _one(finding)
    assert HOSTILE in res["message"]["text"]
    assert res["properties"]["evidence"] == {"nan": "nan", "inf": "-inf", "arr": 2.5}


def test_sarif_unknown_rule_still_gets_a_descriptor():
    finding = dataclasses.replace(_finding("x.pt"), rule="plugin-rule", group="extra")
    log = validate_sarif(sarif.render(Result((finding,)), rules=CATALOGUE))
    run = log["runs"][0]
    check_github_requirements(log)
    assert run["tool"]["driver"]["rules"][run["results"][0]["ruleIndex"]]["id"] == "plugin-rule"


def test_sarif_baseline_state_only_with_a_baseline():
    known = dataclasses.replace(_finding("x.pt"), known=True)
    assert "baselineState" not in _one(known)
    assert _one(known, baseline={"known": 1, "new": 0})["baselineState"] == "unchanged"
    assert _one(_finding("x.pt"), baseline={"known": 0, "new": 1})["baselineState"] == "new"


# --- JUnit -------------------------------------------------------------------------------------


def _cases(root: ET.Element) -> list[ET.Element]:
    return root.findall("./testsuite/testcase")


def _assert_counts_match(root: ET.Element) -> None:
    cases = _cases(root)
    expected = {
        "tests": len(cases),
        "failures": sum(c.find("failure") is not None for c in cases),
        "errors": sum(c.find("error") is not None for c in cases),
        "skipped": sum(c.find("skipped") is not None for c in cases),
    }
    for element in (root, root.find("testsuite")):
        assert element is not None
        assert {k: int(element.get(k, "-1")) for k in expected} == expected


def test_canonical_junit_parses_and_counts_match():
    text = junit.render(canonical_result(), rules=CATALOGUE)
    root = ET.fromstring(text.encode())
    _assert_counts_match(root)
    cases = {c.get("name"): c for c in _cases(root)}
    assert list(cases) == [
        "constant-parameter",
        "dead-units",
        "noisy-kernels",
        "stuck-parameter",
        "update-ratio",
    ]
    assert all(c.get("classname") == "diag.params" for c in cases.values())
    assert cases["dead-units"].get("time") == "0.001000"
    failure = cases["stuck-parameter"].find("failure")
    assert failure is not None and failure.get("type") == "error"
    assert "conv1.weight" in (failure.text or "")
    # Info findings do not fail: they are reported in system-out.
    assert cases["constant-parameter"].find("failure") is None
    assert "lora.B" in (cases["constant-parameter"].findtext("system-out") or "")
    skipped = cases["update-ratio"].find("skipped")
    assert skipped is not None and skipped.get("message", "").startswith("needs --init")
    assert cases["noisy-kernels"].find("error") is not None
    assert (root.get("tests"), root.get("failures")) == ("5", "2")


def test_junit_real_result_has_one_testcase_per_rule_that_ran(planted):
    result = real_result(planted)
    root = ET.fromstring(render("junit", result).encode())
    _assert_counts_match(root)
    ran = set(result.metadata["timings"])
    names = [c.get("name") for c in _cases(root)]
    assert len(names) == len(set(names)), "GitLab drops duplicate classname+name pairs"
    assert set(names) == ran | {s.rule for s in result.skipped}
    assert int(root.get("failures", "0")) >= 1


def test_junit_escapes_hostile_text():
    findings = (
        _finding(HOSTILE, obj=HOSTILE, message=HOSTILE),
        dataclasses.replace(_finding("x.pt", message=HOSTILE), severity=Severity.INFO),
    )
    result = Result(
        findings,
        skipped=(Skipped("update-ratio", HOSTILE),),
        errors=(RuleError("noisy-kernels", HOSTILE),),
    )
    text = junit.render(result, rules=CATALOGUE)
    root = ET.fromstring(text.encode())  # a raw control character would make this raise
    _assert_counts_match(root)
    # What XML can hold survives; what it cannot is replaced, not dropped silently.
    readable = "a <b> & \"c\" 'd' ]]> 100% done,"
    failure = root.find(".//failure")
    assert failure is not None
    assert failure.get("message", "").startswith(readable)
    assert "\ufffd\ufffd\ufffd" in failure.get("message", "")
    assert readable in (failure.text or "")
    assert readable in (root.findtext(".//system-out") or "")
    assert root.find(".//skipped").get("message", "").startswith(readable)  # type: ignore[union-attr]
    assert "\x00" not in text and "]]>" not in text


def test_junit_one_failure_per_rule_lists_every_finding():
    # Jenkins reads only a testcase's first <failure>: every finding must be inside it.
    two = (
        _finding("x.pt", obj="a"),
        dataclasses.replace(_finding("x.pt", obj="b"), severity=Severity.WARNING),
    )
    root = ET.fromstring(junit.render(Result(two), rules=CATALOGUE).encode())
    _assert_counts_match(root)
    assert (root.get("tests"), root.get("failures")) == ("1", "1")
    failures = root.findall(".//failure")
    assert len(failures) == 1 and failures[0].get("type") == "error"
    assert failures[0].get("message") == "2 findings; first: a: zeros"
    assert "object: a" in (failures[0].text or "") and "object: b" in (failures[0].text or "")


def test_junit_known_findings_do_not_fail():
    known = dataclasses.replace(_finding("x.pt"), known=True)
    root = ET.fromstring(junit.render(Result((known,)), rules=CATALOGUE).encode())
    assert root.get("failures") == "0"
    assert "known, in the baseline" in (root.findtext(".//system-out") or "")


def test_junit_empty_result():
    root = ET.fromstring(junit.render(Result(findings=()), rules=CATALOGUE).encode())
    assert root.get("tests") == "0" and root.find("testsuite") is not None


def test_junit_reads_with_junitparser(planted):
    import junitparser  # a dev dependency: missing, the check must fail, not skip

    for result in (canonical_result(), real_result(planted)):
        text = junit.render(result)
        xml = junitparser.JUnitXml.fromstring(text)
        declared = [(s.tests, s.failures, s.errors, s.skipped) for s in xml]
        xml.update_statistics()  # recount from the testcases and their results
        assert [(s.tests, s.failures, s.errors, s.skipped) for s in xml] == declared
        assert (xml.tests, xml.failures) == declared[0][:2]


# --- GitHub workflow commands ------------------------------------------------------------------


def test_github_one_line_per_finding_and_levels():
    lines = render("github", canonical_result()).splitlines()
    assert len(lines) == len(canonical_result().findings) + 1
    assert [line.split(" ", 1)[0] for line in lines] == [
        "::error",
        "::warning",
        "::notice",
        "::notice",
    ]
    assert lines[0].startswith("::error file=runs/final.ckpt,title=diag stuck-parameter::")
    assert lines[-1].startswith("::notice title=diag::Found 1 error, 1 warning, 1 info")


def test_github_escapes_properties_and_data():
    finding = _finding("runs/a,b:c%d\ne.pt", message="50% bad\r\nnext, line: here")
    text = render("github", Result((finding,)))
    first = text.splitlines()[0]
    assert len(text.splitlines()) == 2  # the newlines did not leak into extra lines
    props, _, data = first[len("::error ") :].partition("::")
    assert props == "file=runs/a%2Cb%3Ac%25d%0Ae.pt,title=diag dead-units"
    # Data keeps `:` and `,` (GitHub does not decode them there) but encodes %, CR and LF.
    assert data == "runs/a,b:c%25d%0Ae.pt: fc1.weight: 50%25 bad%0D%0Anext, line: here"


def test_github_anchors_on_the_config_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("diag.toml").write_text('logs = ["l.csv"]\ncheckpoint = "ckpt/final.pt"\n')
    result = Result((_finding("ckpt/final.pt"),), metadata={"config_path": "diag.toml"})
    first = render("github", result).splitlines()[0]
    assert first.startswith("::error file=diag.toml,line=2,title=diag dead-units::ckpt/final.pt:")


# --- through the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["sarif", "junit", "github"])
def test_cli_check_writes_the_format(planted, fmt, tmp_path):
    from diag import cli

    # a format the CLI does not offer is a failure, never an expected one
    assert fmt in cli.FORMATS, f"diag/cli.py FORMATS does not offer {fmt!r}"
    proc = subprocess.run(
        [sys.executable, "-m", "diag", "check", str(planted), "--format", fmt],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # away from the repo's pyproject.toml and its [tool.diag]
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # the planted error finding fails the check
    if fmt == "sarif":
        check_github_requirements(validate_sarif(proc.stdout))
    elif fmt == "junit":
        _assert_counts_match(ET.fromstring(proc.stdout.encode()))
    else:
        assert proc.stdout.splitlines()[0].startswith("::error file=")


@pytest.mark.parametrize("fmt", ["sarif", "junit", "github"])
def test_run_check_writes_the_format(planted, fmt, tmp_path):
    # The path the CLI takes once it has parsed its options, independent of click's Choice.
    from diag.api import run_check

    out = tmp_path / f"report.{fmt}"
    code = run_check(CheckOptions(checkpoint=str(planted), fmt=fmt, output=str(out)))
    assert code == 1
    text = out.read_text()
    if fmt == "sarif":
        check_github_requirements(validate_sarif(text))
    elif fmt == "junit":
        _assert_counts_match(ET.fromstring(text.encode()))
    else:
        assert text.splitlines()[-1].startswith("::notice title=diag::Found 1 error")


def test_junit_counts_shared_probe_work_in_time_not_as_a_testcase():
    result = canonical_result()
    timings = {**result.metadata.get("timings", {}), "probe: gradients": 2.5}
    meta = {**result.metadata, "timings": timings}
    suite = ET.fromstring(render("junit", dataclasses.replace(result, metadata=meta)))
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    names = [case.get("name") for case in suite.iter("testcase")]
    assert "probe: gradients" not in names and names
    assert float(suite.get("time")) >= 2.5
