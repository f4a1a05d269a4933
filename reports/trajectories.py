"""Per-layer trajectories across a run's checkpoints as inline SVG geometry.

Two figures: each layer's weight norm relative to the reference checkpoint, and the
relative update of each interval (`|W_i - W_{i-1}| / |W_{i-1}|`, log scale). Layers with
a finding are drawn in colour and named; the others are thin grey lines, named on hover.
Only numbers and fixed class names leave this module; names go through autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from diag.model import Finding
from diag.reports.plots import polyline_segments

WIDTH, HEIGHT = 900, 280
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 14, 40
MAX_LAYERS = 80  # lines per figure: the flagged ones always, then the largest layers
WEIGHT_KINDS = ("conv", "linear", "embedding")


@dataclass(frozen=True)
class Path:
    name: str
    css: str  # "flagged" or "layer"
    segments: tuple[str, ...]


@dataclass(frozen=True)
class TrajectoryFigure:
    title: str
    note: str
    width: int
    height: int
    plot: tuple[float, float, float, float]
    paths: tuple[Path, ...]
    xticks: tuple[tuple[float, str], ...]
    yticks: tuple[tuple[float, str], ...]


def trajectory_figures(run: Any, findings: Iterable[Finding]) -> list[TrajectoryFigure]:
    paths = getattr(run, "trajectories", None)
    if paths is None or not paths.tensors:
        return []
    checkpoint = run.checkpoint
    flagged = {f.location.object for f in findings if f.group == "params"}
    chosen = _layers(paths.tensors, checkpoint.stats, flagged)
    if not chosen:
        return []
    labels = [_short(label, step) for label, step in zip(paths.labels, paths.steps, strict=True)]
    norms = {
        t.name: [(m, n / t.norms[0]) for m, n in zip(t.members, t.norms, strict=True)]
        for t in chosen
        if t.norms[0] > 0
    }
    steps = {
        t.name: [(m - 0.5, r) for m, r in zip(t.members[1:], t.ratios, strict=True) if r > 0]
        for t in chosen
    }
    skipped = len(paths.tensors) - len(chosen)
    more = f"; {skipped} more tensors not drawn" if skipped > 0 else ""
    return [
        _figure(
            "Weight norm, relative to the reference checkpoint",
            f"|W| / |W at {labels[0]}| for {len(norms)} layers{more}",
            norms,
            flagged,
            labels,
            log_scale=False,
        ),
        _figure(
            "Update per interval",
            "|W_i − W_(i−1)| / |W_(i−1)| between consecutive checkpoints, log scale"
            "; a layer that stops moving drops out of the plot",
            steps,
            flagged,
            labels,
            log_scale=True,
        ),
    ]


def _layers(tensors: dict[str, Any], stats: dict[str, Any], flagged: set[str]) -> list[Any]:
    weights = [
        t for name, t in tensors.items() if name in stats and stats[name].kind in WEIGHT_KINDS
    ]
    weights.sort(key=lambda t: (t.name not in flagged, -stats[t.name].numel))
    return weights[:MAX_LAYERS]


def _short(label: str, step: int | None) -> str:
    return f"{step}" if step is not None else label


def _figure(
    title: str,
    note: str,
    series: dict[str, list[tuple[float, float]]],
    flagged: set[str],
    labels: Sequence[str],
    log_scale: bool,
) -> TrajectoryFigure:
    values = [v for points in series.values() for _, v in points if math.isfinite(v)]
    if log_scale:
        values = [math.log10(v) for v in values if v > 0]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 0.1)
    lo, hi = lo - pad, hi + pad
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    last = max(len(labels) - 1, 1)

    def sx(x: float) -> float:
        return round(LEFT + x / last * pw, 1)

    def sy(v: float) -> float:
        v = math.log10(v) if log_scale else v
        return round(TOP + (hi - min(max(v, lo), hi)) / (hi - lo) * ph, 1)

    drawn = []
    for name, points in series.items():
        drawable = ((x, v, math.isfinite(v) and (v > 0 or not log_scale)) for x, v in points)
        segments = polyline_segments(drawable, sx, sy)
        drawn.append(Path(name, "flagged" if name in flagged else "layer", segments))
    drawn.sort(key=lambda p: p.css == "flagged")  # flagged lines drawn last, on top
    every = max(1, math.ceil(len(labels) / 10))
    xticks = tuple((sx(i), labels[i]) for i in range(0, len(labels), every))
    return TrajectoryFigure(
        title, note, WIDTH, HEIGHT, (LEFT, TOP, pw, ph), tuple(drawn), xticks,
        _yticks(lo, hi, log_scale, sy),
    )  # fmt: skip


def _yticks(lo: float, hi: float, log_scale: bool, sy: Any) -> tuple[tuple[float, str], ...]:
    if log_scale:
        return tuple((sy(10.0**e), f"1e{e}") for e in range(math.ceil(lo), math.floor(hi) + 1))[:12]
    step = (hi - lo) / 4
    return tuple((sy(lo + k * step), f"{lo + k * step:.3g}") for k in range(5))
