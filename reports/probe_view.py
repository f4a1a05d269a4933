"""What the model probe measured, as plain rows for the HTML report: the gradient check per
tensor and the share of dead units per layer (drawn as bars by the template)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_ROWS = 400
BAR_WIDTH = 240  # px of a 100% bar


@dataclass(frozen=True)
class GradientRow:
    name: str
    shape: str
    autograd: str
    numerical: str
    error: str
    verdict: str  # ok, mismatch, disconnected, unused, frozen


@dataclass(frozen=True)
class DeadBar:
    name: str
    consumer: str
    label: str  # "10 of 32"
    width: int  # px
    flagged: bool


@dataclass(frozen=True)
class ProbeView:
    source: str
    loss: str
    gradients: tuple[GradientRow, ...]
    gradients_total: int
    dead: tuple[DeadBar, ...]


def probe_view(run: Any, dead_fraction: float = 0.5) -> ProbeView | None:
    probe = getattr(run, "probe", None)
    if probe is None:
        return None
    grads = getattr(run, "_gradients", None) or []  # only if a rule paid for it
    rows = tuple(_gradient_row(g) for g in grads[:MAX_ROWS])
    activations = run.activations
    bars = []
    for layer in activations.layers if activations is not None else ():
        if not layer.n_units:
            continue
        fraction = layer.n_dead / layer.n_units
        bars.append(
            DeadBar(
                name=layer.name,
                consumer=layer.consumer,
                label=f"{layer.n_dead} of {layer.n_units}",
                width=round(fraction * BAR_WIDTH),
                flagged=layer.consumer == "relu" and fraction >= dead_fraction,
            )
        )
    return ProbeView(probe.source, probe.loss_name, rows, len(grads), tuple(bars))


def _gradient_row(g: Any) -> GradientRow:
    return GradientRow(
        name=g.name,
        shape="×".join(str(d) for d in g.shape) or "scalar",
        autograd=_num(g.autograd[0]) if g.autograd else "",
        numerical=_num(g.numerical[0]) if g.numerical else "",
        error=_num(g.relative_error),
        verdict=g.verdict,
    )


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"
