"""The terminal report: what was read, findings by severity (one line each), and what
was not checked, summarised in one line as ruff and pytest do (`verbose` lists it all)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from diag.model import Result, Severity

_ROLE_WORDS = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "val_metric": "validation metric",
}


def render(result: Result, run: Any = None, verbose: bool = False) -> str:
    lines: list[str] = _run_lines(result.metadata.get("run"), verbose)
    for severity in sorted(Severity, reverse=True):
        found = [f for f in result.findings if f.severity == severity]
        if not found:
            continue
        lines.append(f"{severity.label.upper()} ({len(found)})")
        for f in found:
            known = " (known, in the baseline)" if f.known else ""
            lines.append(
                f"  {f.location.artifact}:{f.location.object}: {f.rule}: {f.message}{known}"
            )
        lines.append("")
    if result.errors:
        lines.append(f"RULE ERRORS ({len(result.errors)})")
        lines.extend(f"  {e.rule}: {e.message}" for e in result.errors)
        lines.append("")
    logs = [i for i in result.metadata.get("inputs", []) if i.get("role") == "logs"]
    if logs:
        lines.append(f"LOGS ({len(logs)})")
        for item in logs:
            where = f"{item['path']}:{item['run']}" if item.get("run") else item["path"]
            roles = item.get("roles") or {}
            used = ", ".join(f"{_ROLE_WORDS.get(r, r)} = {n}" for r, n in roles.items())
            lines.append(f"  {where} [{item.get('format', '')}]: {used or 'no loss series found'}")
            lines.extend(f"    note: {note}" for note in item.get("notes", []))
        lines.append("")
    if result.skipped and verbose:
        lines.append(f"SKIPPED ({len(result.skipped)})")
        lines.extend(f"  {s.rule}: {s.reason}" for s in result.skipped)
        lines.append("")
    elif result.skipped:
        lines.append(skipped_summary(result.skipped))
    counts = result.summary()
    ran = result.metadata.get("rules_run")
    parts = [
        f"{n} {label}{'s' if n != 1 and label != 'info' else ''}" for label, n in counts.items()
    ]
    tail = f" from {ran} rules" if ran is not None else ""
    baseline = result.metadata.get("baseline")
    if baseline:
        tail += f"; {baseline['known']} known from the baseline, {baseline['new']} new"
    lines.append(f"Found {', '.join(parts)}{tail}.")
    return "\n".join(lines) + "\n"


def skipped_summary(skipped: Any) -> str:
    """`20 rules need inputs you did not give: --logs 5, --split 6 (-v lists them)`."""
    by_flag = Counter(_flag(s) for s in skipped)
    parts = ", ".join(f"{flag} {n}" for flag, n in by_flag.most_common())
    rules = "rule needs" if len(skipped) == 1 else "rules need"
    return f"{len(skipped)} {rules} inputs you did not give: {parts} (-v lists them)"


def _flag(skipped: Any) -> str:
    if getattr(skipped, "flag", ""):
        return str(skipped.flag)
    match = re.search(r"needs (--[a-z-]+)", skipped.reason)
    return match[1] if match else "other"


def _run_lines(run: dict[str, Any] | None, verbose: bool) -> list[str]:
    """What a run folder held and how it was read."""
    if not run:
        return []
    lines = [f"RUN {run['path']} ({run['layout']})"]
    checkpoints = run.get("checkpoints", [])
    if checkpoints:
        span = checkpoints[0]["label"]
        if len(checkpoints) > 1:
            span += f" .. {checkpoints[-1]['label']}"
        count = f"{len(checkpoints)} checkpoint{'s' if len(checkpoints) != 1 else ''}"
        lines.append(f"  {count}: {span}")
    if run.get("reference") and not run.get("reference_is_init"):
        lines.append(f"  reference: {run['reference']}, the earliest checkpoint (no --init given)")
    elif run.get("reference"):
        lines.append(f"  reference: {run['reference']} (--init)")
    lines.append(f"  logs: {', '.join(run.get('logs', [])) or 'none found'}")
    files = run.get("files", [])
    if verbose:
        for f in files:
            note = f": {f['note']}" if f.get("note") else ""
            lines.append(f"    {f['path']} [{f['role']}]{note}")
    elif files:
        lines.append(f"  ({len(files)} files with their roles: -v lists them)")
    lines.append("")
    return lines
