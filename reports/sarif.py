"""The SARIF 2.1.0 report, shaped for GitHub code scanning.

The rule catalogue (`tool.driver.rules`) comes from the registry, so a rule that found nothing
is still documented. Findings live in binary artifacts that code scanning cannot preview, so
each result is anchored on a committed text file that names the artifact (see `Anchors`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from diag import __version__
from diag.model import Finding, Result, Severity
from diag.registry import DOC_SECTIONS, RuleSpec
from diag.reports.json import plain

SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
FINGERPRINT_KEY = "diagFingerprint/v1"
SRCROOT = "%SRCROOT%"
# GitHub code scanning caps fullDescription.text at 1000 characters.
FULL_DESCRIPTION_MAX = 1000
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# What the object inside an artifact is, per rule group, in SARIF's logical-location kinds.
LOGICAL_KINDS = {"params": "member", "grads": "member", "curves": "resource", "data": "resource"}
# `--model file.py:factory` is the probe's artifact: the file is the part before the colon.
_MODEL_SPEC = re.compile(r"^(?P<file>.+\.py):[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Anchor:
    """The text file (and line) a finding is pinned to for code scanning and annotations."""

    path: str
    line: int | None  # known only when the config file names the artifact


class Anchors:
    """Pin findings to a committed text file: the config that names the artifact when there
    is one, else the artifact itself (a text log or split file, or `file.py` of `--model`;
    a binary checkpoint is still a valid location, code scanning only cannot preview it).
    The config is read once per report, and only if it exists, so rendering stays cheap
    and never fails on a missing file."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.config: str | None = metadata.get("config_path") or None
        self._lines: list[str] = []
        if self.config and os.path.isfile(self.config):
            try:
                self._lines = Path(self.config).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                self._lines = []  # unreadable: anchor on line 1 rather than fail the report

    def __call__(self, finding: Finding) -> Anchor:
        artifact = artifact_file(finding.location.artifact)
        if self.config:
            return Anchor(self.config, self._line_naming(artifact))
        return Anchor(artifact, None)

    def _line_naming(self, artifact: str) -> int | None:
        name = PurePath(artifact.replace("\\", "/")).name
        if not name:
            return None
        return next((i for i, line in enumerate(self._lines, 1) if name in line), None)


def artifact_file(artifact: str) -> str:
    """The file behind an artifact name (the probe's is `file.py:factory`)."""
    match = _MODEL_SPEC.match(artifact)
    return match["file"] if match else artifact


def shown_path(path: str) -> str:
    """Posix path relative to the working directory when inside it, else absolute.

    Uses `abspath` (no symlink resolution) so the answer depends on the path text only."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path(os.path.abspath(os.curdir))).as_posix()
    except ValueError:
        return absolute.as_posix()


def artifact_location(path: str) -> dict[str, str]:
    shown = shown_path(path)
    if PurePath(shown).is_absolute():
        return {"uri": Path(shown).as_uri()}
    # Quote everything but "/": a bare `pkg.mod:factory` would otherwise parse as a URI scheme.
    return {"uri": quote(shown, safe="/"), "uriBaseId": SRCROOT}


def camel_case(rule_id: str) -> str:
    return "".join(part.capitalize() for part in rule_id.split("-"))


def rule_descriptor(spec: RuleSpec) -> dict[str, Any]:
    sections = spec.sections()
    summary = spec.summary or spec.name
    what = sections.get("What it does") or summary
    if len(what) > FULL_DESCRIPTION_MAX:
        what = what[: FULL_DESCRIPTION_MAX - 1].rstrip() + "…"
    headings = [h for h in (*DOC_SECTIONS, "References") if sections.get(h)]
    help_text = "\n\n".join(f"{h}\n{sections[h]}" for h in headings) or spec.doc or summary
    help_md = "\n\n".join(f"## {h}\n\n{sections[h]}" for h in headings) or help_text
    return {
        "id": spec.name,
        "name": camel_case(spec.name),
        "shortDescription": {"text": summary},
        "fullDescription": {"text": what},
        "help": {"text": help_text, "markdown": help_md},
        "defaultConfiguration": {"level": LEVELS[spec.severity]},
        "properties": {"tags": [spec.group]},
    }


def _unknown_rule(name: str, group: str) -> dict[str, Any]:
    # A finding from a rule no longer registered (e.g. a plugin uninstalled between the run
    # and the report) still needs a descriptor for its ruleIndex to point at.
    return {
        "id": name,
        "name": camel_case(name),
        "shortDescription": {"text": name},
        "fullDescription": {"text": name},
        "help": {"text": name},
        "properties": {"tags": [group] if group else []},
    }


def located_message(finding: Finding) -> str:
    """The message with what it is about: the anchor may be a config file, not the artifact."""
    loc = finding.location
    return f"{loc.artifact}: {loc.object}: {finding.message}"


def sarif_result(
    finding: Finding,
    index: int,
    anchor: Anchor,
    baseline: bool,
) -> dict[str, Any]:
    loc = finding.location
    severity = finding.severity or Severity.WARNING
    out: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": index,
        "level": LEVELS[severity],
        "message": {"text": located_message(finding)},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": artifact_location(anchor.path),
                    "region": {"startLine": anchor.line or 1},
                },
                "logicalLocations": [
                    {
                        "name": loc.object,
                        "fullyQualifiedName": f"{loc.artifact}::{loc.object}",
                        "kind": LOGICAL_KINDS.get(finding.group, "object"),
                    }
                ],
            }
        ],
        "partialFingerprints": {FINGERPRINT_KEY: finding.fingerprint},
        "properties": {
            "group": finding.group,
            "severity": severity.label,
            "artifact": loc.artifact,
            "object": loc.object,
            "details": plain(dict(loc.details)),
            "evidence": plain(dict(finding.evidence)),
        },
    }
    if baseline:
        # Only when --baseline was used: otherwise "new" would be a claim we did not check.
        out["baselineState"] = "unchanged" if finding.known else "new"
    return out


def invocation(result: Result, index_of: Callable[[str], int | None]) -> dict[str, Any]:
    def about(rule: str) -> dict[str, Any]:
        ref: dict[str, Any] = {"id": rule}
        index = index_of(rule)
        if index is not None:
            ref["index"] = index
        return ref

    notes = [
        {
            "level": "error",
            "message": {"text": f"rule {e.rule} crashed: {e.message}"},
            "associatedRule": about(e.rule),
        }
        for e in result.errors
    ]
    notes += [
        {
            "level": "note",
            "message": {"text": f"rule {s.rule} skipped: {s.reason}"},
            "associatedRule": about(s.rule),
        }
        for s in result.skipped
    ]
    # A crashed rule means the analysis is incomplete, even though the other rules ran.
    out: dict[str, Any] = {"executionSuccessful": not result.errors}
    if notes:
        out["toolExecutionNotifications"] = notes
    generated = result.metadata.get("generated")
    if isinstance(generated, str) and generated:
        out["startTimeUtc"] = generated.replace("+00:00", "Z")
    return out


def to_sarif(result: Result, rules: Sequence[RuleSpec]) -> dict[str, Any]:
    descriptors = [rule_descriptor(spec) for spec in rules]
    indices = {spec.name: i for i, spec in enumerate(rules)}
    for f in result.findings:
        if f.rule not in indices:
            indices[f.rule] = len(descriptors)
            descriptors.append(_unknown_rule(f.rule, f.group))
    anchors = Anchors(result.metadata)
    baseline = bool(result.metadata.get("baseline"))
    driver: dict[str, Any] = {
        "name": "diag",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": descriptors,
    }
    uri = information_uri()
    if uri:
        driver["informationUri"] = uri
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": driver},
                "invocations": [invocation(result, indices.get)],
                "results": [
                    sarif_result(f, indices[f.rule], anchors(f), baseline) for f in result.findings
                ],
            }
        ],
    }


def information_uri() -> str | None:
    """The project's home page from the installed metadata (`[project.urls]`), if declared.

    Read from metadata rather than hard-coded so the SARIF never points at a made-up URL."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("diag")
    except PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in {"homepage", "home", "repository", "source"}:
            return url.strip()
    return meta.get("Home-page") or None


def render(result: Result, run: Any = None, *, rules: Sequence[RuleSpec] | None = None) -> str:
    """SARIF for `result`; `rules` defaults to the registry (tests pass a fixed catalogue)."""
    if rules is None:
        from diag.registry import load_rules

        rules = load_rules()
    return json.dumps(to_sarif(result, rules), indent=2, allow_nan=False) + "\n"
