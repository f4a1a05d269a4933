"""The terminal report: findings by severity, one line each, then what was skipped."""

from __future__ import annotations

from typing import Any

from diag.model import Result, Severity


def render(result: Result, run: Any = None) -> str:
    lines: list[str] = []
    for severity in sorted(Severity, reverse=True):
        found = [f for f in result.findings if f.severity == severity]
        if not found:
            continue
        lines.append(f"{severity.label.upper()} ({len(found)})")
        for f in found:
            lines.append(f"  {f.location.artifact}:{f.location.object}: {f.rule}: {f.message}")
        lines.append("")
    if result.errors:
        lines.append(f"RULE ERRORS ({len(result.errors)})")
        lines.extend(f"  {e.rule}: {e.message}" for e in result.errors)
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
    lines.append(f"Found {', '.join(parts)}{tail}.")
    return "\n".join(lines) + "\n"
