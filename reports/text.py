"""The terminal report: findings by severity, one line each, then what was skipped."""

from __future__ import annotations

from typing import Any

from diag.model import Result, Severity

_ROLE_WORDS = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "val_metric": "validation metric",
}


def render(result: Result, run: Any = None) -> str:
    lines: list[str] = []
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
    if result.skipped:
        lines.append(f"SKIPPED ({len(result.skipped)})")
        lines.extend(f"  {s.rule}: {s.reason}" for s in result.skipped)
        lines.append("")
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
