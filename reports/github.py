"""GitHub Actions workflow commands: one annotation per finding, then a summary notice.

`::error file=PATH,title=diag RULE::MESSAGE`. Annotations need a file in the repository, so they
are pinned like SARIF results: the config file that names the artifact, else the artifact.
"""

from __future__ import annotations

from typing import Any

from diag.model import Finding, Result, Severity
from diag.reports.sarif import Anchors, located_message, shown_path

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    """The message after `::`: GitHub decodes only these three (as @actions/core encodes)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A `key=value` property: `:` and `,` would end the value early, so they are encoded too."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties: str | int | None) -> str:
    props = ",".join(
        f"{key}={escape_property(str(value))}"
        for key, value in properties.items()
        if value is not None
    )
    head = f"{name} {props}" if props else name
    return f"::{head}::{escape_data(message)}"


def annotation(finding: Finding, anchors: Anchors) -> str:
    anchor = anchors(finding)
    known = " (known, in the baseline)" if finding.known else ""
    return command(
        COMMANDS[finding.severity or Severity.WARNING],
        located_message(finding) + known,
        file=shown_path(anchor.path),
        line=anchor.line,
        title=f"diag {finding.rule}",
    )


def summary(result: Result) -> str:
    counts = result.summary()
    parts = [
        f"{n} {label}{'s' if n != 1 and label != 'info' else ''}" for label, n in counts.items()
    ]
    text = f"Found {', '.join(parts)}"
    ran = result.metadata.get("rules_run")
    if ran is not None:
        text += f" from {ran} rules"
    if result.skipped:
        # Name a few; a run with only a checkpoint skips most of the catalogue.
        names = [s.rule for s in result.skipped]
        shown = f" ({', '.join(names)})" if len(names) <= 5 else " (see the text or JSON report)"
        text += f"; {len(names)} skipped{shown}"
    if result.errors:
        crashed = ", ".join(e.rule for e in result.errors)
        text += f"; {len(result.errors)} rule error{'s' if len(result.errors) != 1 else ''} "
        text += f"({crashed})"
    return text + "."


def render(result: Result, run: Any = None) -> str:
    anchors = Anchors(result.metadata)
    lines = [annotation(f, anchors) for f in result.findings]
    lines.append(command("notice", summary(result), title="diag"))
    return "\n".join(lines) + "\n"
