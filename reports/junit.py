"""The JUnit XML report, in the subset Jenkins, GitLab and pytest all read.

One `<testcase>` per rule (classname `diag.<group>`, name the rule) with one `<failure>` listing
the rule's warning and error findings; info and baseline-known findings go to `<system-out>`
(they do not fail the check, so they must not fail the test); `<skipped>` for a rule whose
inputs were absent, `<error>` for a rule that crashed. Built with ElementTree, so escaping is
never hand-written.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from diag.model import Finding, Result, Severity
from diag.registry import RuleSpec

# XML 1.0 cannot hold these at all, not even as character references: ElementTree would write
# them raw and produce a file every parser rejects.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _seconds(value: float) -> str:
    return f"{value:.6f}"


def _evidence(evidence: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in evidence.items())


def finding_text(f: Finding) -> str:
    lines = [
        f"{f.severity.label if f.severity else 'warning'}: {f.message}",
        f"artifact: {f.location.artifact}",
        f"object: {f.location.object}",
    ]
    lines += [f"{k}: {v}" for k, v in f.location.details.items()]
    if f.evidence:
        lines.append(f"evidence: {_evidence(f.evidence)}")
    lines.append(f"fingerprint: {f.fingerprint}")
    return "\n".join(lines)


def _failure_message(failing: list[Finding]) -> str:
    if len(failing) == 1:
        return failing[0].message
    return f"{len(failing)} findings; first: {failing[0].location.object}: {failing[0].message}"


def _fails(f: Finding) -> bool:
    return not f.known and (f.severity or Severity.WARNING) >= Severity.WARNING


def _info_line(f: Finding) -> str:
    label = (f.severity or Severity.INFO).label
    known = " (known, in the baseline)" if f.known else ""
    where = f"{f.location.artifact}: {f.location.object}"
    tail = f" [{_evidence(f.evidence)}]" if f.evidence else ""
    return f"{label}: {where}: {f.message}{known}{tail}"


def _rule_names(result: Result, groups: Mapping[str, str]) -> list[str]:
    """Every rule the run touched, in catalogue order (group, then name): deterministic."""
    timings = result.metadata.get("timings") or {}
    # Shared probe work ("probe: gradients") is timed like a rule but is not one: it counts
    # in the suite's time, not as a testcase.
    ruled = {n for n in timings if not n.startswith("probe: ")}
    names = {*ruled, *(f.rule for f in result.findings), *(e.rule for e in result.errors)}
    names |= {s.rule for s in result.skipped}
    return sorted(names, key=lambda n: (groups.get(n, ""), n))


def to_element(result: Result, rules: Sequence[RuleSpec]) -> ET.Element:
    groups = {spec.name: spec.group for spec in rules}
    groups.update({f.rule: f.group for f in result.findings if f.group})
    timings: Mapping[str, float] = result.metadata.get("timings") or {}
    skipped = {s.rule: s.reason for s in result.skipped}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suite = ET.Element("testsuite", name="diag")
    for name in _rule_names(result, groups):
        group = groups.get(name)
        # An empty classname breaks Jenkins ingestion; an unknown rule still gets one.
        case = ET.SubElement(
            suite, "testcase", classname=f"diag.{group}" if group else "diag", name=xml_text(name)
        )
        if name in timings:
            case.set("time", _seconds(timings[name]))
        counts["tests"] += 1
        found = [f for f in result.findings if f.rule == name]
        failing = [f for f in found if _fails(f)]
        if failing:
            # One <failure> holding every finding of the rule: Jenkins reads only the first
            # <failure> of a testcase, and one per testcase keeps `failures` the same whether
            # a consumer counts failed tests (Ant, Jenkins) or <failure> elements (junitparser).
            worst = max(f.severity or Severity.WARNING for f in failing)
            failure = ET.SubElement(
                case, "failure", message=xml_text(_failure_message(failing)), type=worst.label
            )
            failure.text = xml_text("\n\n".join(finding_text(f) for f in failing))
        errors = [e for e in result.errors if e.rule == name]
        for e in errors:
            error = ET.SubElement(case, "error", message=xml_text(e.message), type="rule-error")
            error.text = xml_text(e.message)
        if name in skipped:
            ET.SubElement(case, "skipped", message=xml_text(skipped[name]))
        quiet = [f for f in found if not _fails(f)]
        if quiet:
            ET.SubElement(case, "system-out").text = xml_text(
                "\n".join(_info_line(f) for f in quiet)
            )
        counts["failures"] += bool(failing)
        counts["errors"] += bool(errors)
        counts["skipped"] += name in skipped
    total = sum(timings.values())
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", _seconds(total))
    generated = result.metadata.get("generated")
    if isinstance(generated, str) and generated:
        suite.set("timestamp", xml_text(generated))
    root = ET.Element("testsuites", name="diag")
    for key, value in counts.items():
        root.set(key, str(value))
    root.set("time", _seconds(total))
    root.append(suite)
    return root


def render(result: Result, run: Any = None, *, rules: Sequence[RuleSpec] | None = None) -> str:
    """JUnit XML for `result`; `rules` (default: the registry) give skipped rules their group."""
    if rules is None:
        from diag.registry import load_rules

        rules = load_rules()
    root = to_element(result, rules)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
