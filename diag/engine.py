"""Run the selected rules over a Run and collect a Result."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from diag.errors import DiagError
from diag.model import Finding, Result, RuleError, Skipped
from diag.probe import threads_for
from diag.progress import Progress
from diag.registry import RuleSpec
from diag.run import MISSING_FLAGS, MISSING_REASONS, Run


def run_rules(
    run: Run,
    specs: Iterable[RuleSpec],
    metadata: dict[str, Any] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> Result:
    """Run each rule whose inputs exist; `options` are per-rule keyword thresholds."""
    findings: list[Finding] = []
    skipped: list[Skipped] = []
    errors: list[RuleError] = []
    timings: dict[str, float] = {}
    specs = list(specs)
    # Rules that run the model or compare splits can take a while on big inputs.
    slow = getattr(run, "probe", None) is not None or bool(getattr(run, "splits", None))
    quiet = getattr(run, "quiet", True) or not slow
    bar = Progress(quiet, len(specs), "running rules", "rules")
    shared = getattr(run, "work_timings", None)
    work: dict[str, float] = shared if shared is not None else {}
    total = len(specs)

    def on_work(label: str) -> None:
        # Shared probe work starts inside the first rule that needs it: a step of its own.
        nonlocal total
        total += 1
        bar.describe(label, total)

    with bar as advance, threads_for(getattr(run, "probe", None)):
        if hasattr(run, "on_work"):
            run.on_work = on_work
        try:
            for done, spec in enumerate(specs, 1):
                bar.describe(spec.name)
                seen = set(work)
                _run_one(run, spec, options, findings, skipped, errors, timings)
                _place_work(timings, spec.name, {k: v for k, v in work.items() if k not in seen})
                if advance is not None:
                    advance(done + len(work), total)
        finally:
            if hasattr(run, "on_work"):
                run.on_work = None
    findings.sort(key=lambda f: (-f.severity, f.rule, f.location.artifact, f.location.object))  # type: ignore[operator]
    meta = dict(metadata or {})
    meta["timings"] = timings
    return Result(tuple(findings), tuple(skipped), tuple(errors), meta)


def _run_one(
    run: Run,
    spec: RuleSpec,
    options: dict[str, dict[str, Any]] | None,
    findings: list[Finding],
    skipped: list[Skipped],
    errors: list[RuleError],
    timings: dict[str, float],
) -> None:
    try:
        missing = [n for n in spec.needs if not run.available(n)]
    except DiagError:
        raise
    except Exception as exc:  # computing an input failed: this rule cannot run
        errors.append(
            RuleError(spec.name, f"preparing its input failed: {type(exc).__name__}: {exc}")
        )
        return
    if missing:
        reason = MISSING_REASONS.get(missing[0], f"needs {missing[0]}")
        skipped.append(Skipped(spec.name, reason, MISSING_FLAGS.get(missing[0], missing[0])))
        return
    # `a|b` needs either input; the rule gets both, one of them possibly None.
    kwargs = {n: run.artifact(n) for need in (*spec.needs, *spec.uses) for n in need.split("|")}
    kwargs.update((options or {}).get(spec.name, {}))
    start = time.perf_counter()
    try:
        for found in spec.func(**kwargs):
            severity = found.severity or spec.severity
            findings.append(
                dataclasses.replace(found, rule=spec.name, group=spec.group, severity=severity)
            )
    except DiagError:
        raise  # an input found unreadable while a rule reads it (a CRC): the input's fault
    except Exception as exc:  # a broken rule is reported, and the other rules still run
        errors.append(RuleError(spec.name, f"{type(exc).__name__}: {exc}"))
    timings[spec.name] = round(time.perf_counter() - start, 6)


def _place_work(timings: dict[str, float], rule: str, new: dict[str, float]) -> None:
    """Put shared work that ran during `rule` just before the rule's own entry: it ran first,
    and the timings read in the order things happened."""
    if not new:
        return
    own = timings.pop(rule, None)
    timings.update(new)
    if own is not None:
        timings[rule] = own
