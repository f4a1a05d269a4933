"""Training curves as inline SVG geometry, with the curves findings marked on them.

Only numbers and fixed class names leave this module: the template draws them, and any
text that came from the logs (series names, run labels) goes through autoescaping there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.model import Finding

if TYPE_CHECKING:
    from diag.loaders.logs.curves import Curve, TrainingLog

WIDTH, HEIGHT = 900, 300
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 14, 34
MAX_POINTS = 600  # per drawn series: enough for the eye, bounded file size
MAX_FIGURES = 12
MAX_SPIKE_MARKS = 20


@dataclass(frozen=True)
class Line:
    name: str
    css: str  # "train" or "val"
    segments: tuple[str, ...]  # SVG polyline `points` strings, split where values are not finite
    dots: tuple[tuple[float, float], ...]  # drawn for sparse series (evaluations)


@dataclass(frozen=True)
class Mark:
    css: str  # "best", "nonfinite", "spike"
    x: float
    y: float | None
    label: str


@dataclass(frozen=True)
class Band:
    css: str  # "diverging", "stalled", "better"
    x0: float
    x1: float
    label: str


@dataclass(frozen=True)
class CurveFigure:
    title: str
    roles: str
    width: int
    height: int
    plot: tuple[float, float, float, float]  # x, y, width, height of the plotting area
    log_scale: bool
    lines: tuple[Line, ...]
    marks: tuple[Mark, ...]
    bands: tuple[Band, ...]
    xticks: tuple[tuple[float, str], ...]
    yticks: tuple[tuple[float, str], ...]
    notes: tuple[str, ...]


def curve_figures(logs: Iterable[TrainingLog], findings: Iterable[Finding]) -> list[CurveFigure]:
    """One figure per run that has a training or validation loss."""
    from diag.loaders.logs.curves import ROLE_TITLES, TRAIN_LOSS, VAL_LOSS

    findings = list(findings)
    figures = []
    for log in logs:
        train, val = log.curve(TRAIN_LOSS), log.curve(VAL_LOSS)
        drawn = [(c, css) for c, css in ((train, "train"), (val, "val")) if c is not None]
        if not drawn:
            continue
        mine = [
            f
            for f in findings
            if f.group == "curves" and f.location.artifact == str(log.source)
            and f.location.details.get("run", "") == log.run.run
        ]  # fmt: skip
        roles = "; ".join(
            f"{ROLE_TITLES[role]}: {name}"
            for role, name in log.roles.items()
            if role in ROLE_TITLES
        )
        figures.append(_figure(log.label, roles, drawn, mine, log.notes))
        if len(figures) >= MAX_FIGURES:
            break
    return figures


def _figure(
    title: str,
    roles: str,
    drawn: list[tuple[Curve, str]],
    findings: list[Finding],
    notes: tuple[str, ...],
) -> CurveFigure:
    steps = np.concatenate([c.steps for c, _ in drawn]).astype(np.float64)
    values = np.concatenate([c.values for c, _ in drawn])
    finite = values[np.isfinite(values)]
    x_lo, x_hi = (float(steps.min()), float(steps.max())) if steps.size else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    log_scale = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 30)
    ys = np.log10(finite) if log_scale else finite
    y_lo, y_hi = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
    pad = (y_hi - y_lo) * 0.06 or max(abs(y_hi) * 0.1, 0.1)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(step: float) -> float:
        return round(LEFT + (step - x_lo) / (x_hi - x_lo) * pw, 1)

    def sy(value: float) -> float:
        v = math.log10(value) if log_scale else value
        v = min(max(v, y_lo), y_hi)
        return round(TOP + (y_hi - v) / (y_hi - y_lo) * ph, 1)

    lines = tuple(_line(c, css, sx, sy, log_scale) for c, css in drawn)
    marks, bands = _annotations(findings, drawn, sx, sy, log_scale)
    return CurveFigure(
        title=title,
        roles=roles,
        width=WIDTH,
        height=HEIGHT,
        plot=(LEFT, TOP, pw, ph),
        log_scale=log_scale,
        lines=lines,
        marks=marks,
        bands=bands,
        xticks=tuple((sx(t), _tick(t)) for t in _nice_ticks(x_lo, x_hi)),
        yticks=_yticks(y_lo, y_hi, log_scale, sy),
        notes=notes[:5],
    )


def _line(curve: Curve, css: str, sx: Any, sy: Any, log_scale: bool) -> Line:
    steps, values = _thin(curve.steps.astype(np.float64), curve.values)
    ok = np.isfinite(values) & ((values > 0) if log_scale else True)
    segments = polyline_segments(zip(steps, values, ok, strict=True), sx, sy)
    sparse = len(curve) <= 120
    dots = tuple((sx(s), sy(v)) for s, v, g in zip(steps, values, ok, strict=True) if g)
    return Line(curve.name, css, segments, dots if sparse else ())


def polyline_segments(points: Iterable[tuple[Any, Any, Any]], sx: Any, sy: Any) -> tuple[str, ...]:
    """SVG polyline `points` strings from (x, y, drawable) triples, split at the points
    that cannot be drawn (NaN, or not positive on a log scale)."""
    segments: list[str] = []
    current: list[str] = []
    for x, y, good in points:
        if good:
            current.append(f"{sx(x)},{sy(y)}")
        elif current:
            segments.append(" ".join(current))
            current = []
    if current:
        segments.append(" ".join(current))
    return tuple(segments)


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points: bucket means, keeping non-finite buckets as gaps."""
    n = len(values)
    if n <= MAX_POINTS:
        return steps, values
    parts = np.array_split(np.arange(n), MAX_POINTS)
    xs = np.array([steps[p].mean() for p in parts])
    with np.errstate(invalid="ignore"):
        ys = np.array([values[p].mean() for p in parts])
    return xs, ys


def _annotations(
    findings: list[Finding], drawn: list[tuple[Curve, str]], sx: Any, sy: Any, log_scale: bool
) -> tuple[tuple[Mark, ...], tuple[Band, ...]]:
    marks: list[Mark] = []
    bands: list[Band] = []
    by_name = {c.name: c for c, _ in drawn}
    for f in findings:
        ev = f.evidence
        if f.rule == "train-val-divergence":
            bands.append(Band("diverging", sx(ev["best_step"]), sx(ev["end_step"]), "val rising"))
            epoch = ev.get("best_epoch")
            label = f"best: step {ev['best_step']}" + (
                f", epoch {epoch:g}" if epoch is not None else ""
            )
            y = sy(ev["best_value"]) if ev["best_value"] > 0 or not log_scale else None
            marks.append(Mark("best", sx(ev["best_step"]), y, label))
        elif f.rule == "loss-nonfinite" and f.location.object in by_name:
            marks.append(
                Mark(
                    "nonfinite", sx(ev["first_step"]), None, f"first non-finite {f.location.object}"
                )
            )
        elif f.rule == "loss-spikes" and ev.get("kind") == "spike":
            curve = by_name.get(f.location.object)
            for step in ev.get("spike_steps", [])[:MAX_SPIKE_MARKS]:
                y = _value_at(curve, step) if curve is not None else None
                ok = y is not None and math.isfinite(y) and (y > 0 or not log_scale)
                marks.append(
                    Mark("spike", sx(step), sy(y) if ok else None, f"spike at step {step}")
                )
        elif (
            "first_step" in ev
            and "last_step" in ev
            and f.rule != "test-set-selection"
            and ev.get("kind") != "stalled"  # the whole run: a band would say nothing
        ):
            css = "better" if f.rule == "val-better-than-train" else "stalled"
            bands.append(Band(css, sx(ev["first_step"]), sx(ev["last_step"]), f.rule))
    return tuple(marks), tuple(bands)


def _value_at(curve: Curve, step: int) -> float | None:
    idx = np.nonzero(curve.steps == step)[0]
    return float(curve.values[idx[0]]) if idx.size else None


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * abs(step) and len(ticks) < 12:
        ticks.append(t)
        t += step
    return ticks


def _yticks(lo: float, hi: float, log_scale: bool, sy: Any) -> tuple[tuple[float, str], ...]:
    if not log_scale:
        return tuple((sy(t), _tick(t)) for t in _nice_ticks(lo, hi))
    out = []
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        out.append((sy(10.0**e), _tick(10.0**e)))
    return tuple(out)


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:.4g}"
