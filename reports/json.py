"""The JSON report: the machine-readable contract (see design.md)."""

from __future__ import annotations

import json
import math
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
        "evidence": {k: _plain(v) for k, v in f.evidence.items()},
        "fingerprint": f.fingerprint,
    }
    if f.known:
        out["known"] = True  # in the --baseline: shown, not failing
    return out


def _plain(value: Any) -> Any:
    # JSON has no NaN/inf: spell them as strings rather than emit invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def render(result: Result, run: Any = None) -> str:
    return json.dumps(to_dict(result), indent=2, sort_keys=False, allow_nan=False) + "\n"
