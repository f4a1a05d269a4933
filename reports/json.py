"""The JSON report: the machine-readable contract (see design.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from diag import __version__
from diag.model import Finding, Result


def to_dict(result: Result) -> dict[str, Any]:
    meta = dict(result.metadata)
    inputs = meta.pop("inputs", [])
    return {
        "diag_version": __version__,
        "inputs": inputs,
        "findings": [finding_dict(f) for f in result.findings],
        "skipped": [{"rule": s.rule, "reason": s.reason} for s in result.skipped],
        "errors": [{"rule": e.rule, "message": e.message} for e in result.errors],
        "summary": result.summary(),
        "metadata": meta,
    }


def finding_dict(f: Finding) -> dict[str, Any]:
    out = {
        "rule": f.rule,
        "group": f.group,
        "severity": f.severity.label if f.severity else None,
        "message": f.message,
        "location": f.location.to_dict(),
        "evidence": {k: plain(v) for k, v in f.evidence.items()},
        "fingerprint": f.fingerprint,
    }
    if f.known:
        out["known"] = True  # in the --baseline: shown, not failing
    return out


def plain(value: Any) -> Any:
    """Evidence as JSON: numpy scalars as numbers; NaN and infinities as strings, since
    JSON has none and `allow_nan=False` refuses to emit invalid JSON."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, list | tuple):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def render(result: Result, run: Any = None) -> str:
    return json.dumps(to_dict(result), indent=2, sort_keys=False, allow_nan=False) + "\n"
