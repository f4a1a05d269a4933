"""From logged series to the curves rules read: one point per step, and a role for each.

Every log format goes through here, so resumed runs and metric roles are handled the
same way whatever wrote the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import UsageError
from diag.loaders.logs.series import LogRun, Series

# Roles a rule can ask for.
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_METRIC = "val_metric"
ROLE_TITLES = {
    TRAIN_LOSS: "training loss",
    VAL_LOSS: "validation loss",
    VAL_METRIC: "validation metric",
}

_SPLIT = re.compile(r"[/._\-\s:]+")
_TRAIN = {"train", "training", "tr", "trn"}
_VAL = {"val", "valid", "validation", "eval", "evaluation", "dev", "holdout"}
_TEST = {"test", "testing"}
_LOSS = {"loss", "nll", "ce", "xent", "objective"}
# Quantities that are logged beside losses but are neither losses nor quality metrics.
_NOT_METRIC = {
    "lr", "learning", "rate", "grad", "norm", "epoch", "step", "runtime", "time", "samples",
    "per", "second", "steps", "flos", "memory", "mem", "throughput", "momentum", "wd", "batch",
    "seconds", "tokens", "speed", "gpu", "cpu",
}  # fmt: skip
_METRIC_PREFERENCE = ("acc", "accuracy", "top1", "f1", "auc", "auroc", "map", "iou", "dice")
_LOWER_IS_BETTER = {"loss", "err", "error", "mae", "mse", "rmse", "ppl", "perplexity", "wer"}


def tokens(name: str) -> list[str]:
    # camelCase counts as separate words ("valLoss")
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return [t for t in _SPLIT.split(spaced.lower()) if t]


def split_of(name: str) -> str | None:
    """ "train", "val" or "test" from a metric's name, or None."""
    words = set(tokens(name))
    if words & _TEST:
        return "test"
    if words & _VAL or any(t.startswith("val") and t[3:] in _LOSS for t in words):
        return "val"
    if words & _TRAIN:
        return "train"
    return None


def is_loss(name: str) -> bool:
    words = tokens(name)
    return any(w in _LOSS or w.endswith("loss") for w in words)


def lower_is_better(name: str) -> bool:
    return any(w in _LOWER_IS_BETTER or w.endswith("loss") for w in tokens(name))


def is_quality_metric(name: str) -> bool:
    words = set(tokens(name))
    return not (words & _NOT_METRIC) and not is_loss(name)


@dataclass(frozen=True, eq=False)
class Curve:
    """A series with one point per step, steps increasing.

    When a step was logged more than once (a run resumed from an earlier checkpoint
    logs its steps again), the last write wins, as in TensorBoard. `restarts` are the
    steps the counter went back to.
    """

    name: str
    steps: np.ndarray
    values: np.ndarray
    epochs: np.ndarray | None = None
    restarts: tuple[int, ...] = ()
    replaced: int = 0  # points overwritten by a later write of the same step

    def __len__(self) -> int:
        return len(self.values)

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.name)

    def epoch_at(self, index: int) -> float | None:
        if self.epochs is None:
            return None
        value = float(self.epochs[index])
        return value if np.isfinite(value) else None


def make_curve(series: Series) -> Curve:
    steps = np.asarray(series.steps, dtype=np.int64)
    values = np.asarray(series.values, dtype=np.float64)
    epochs = None if series.epochs is None else np.asarray(series.epochs, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Curve(series.name, steps, values, epochs)
    back = np.nonzero(np.diff(steps) < 0)[0]
    restarts = tuple(int(steps[i + 1]) for i in back)
    # Stable order by step, then by write order; keep each step's last write.
    order = np.lexsort((np.arange(n), steps))
    sorted_steps = steps[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = sorted_steps[1:] != sorted_steps[:-1]
    keep = order[last]
    return Curve(
        series.name,
        steps[keep],
        values[keep],
        None if epochs is None else epochs[keep],
        restarts,
        int(n - keep.size),
    )


@dataclass(frozen=True, eq=False)
class TrainingLog:
    """One run's curves, with the series chosen for each role and why."""

    run: LogRun
    curves: dict[str, Curve]
    roles: dict[str, str]  # role -> curve name
    tests: tuple[str, ...]  # curves measured on a test split
    notes: tuple[str, ...] = ()
    chosen_by: dict[str, str] = field(default_factory=dict)  # role -> "name" or "option"

    @property
    def source(self) -> Path:
        return self.run.source

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def meta(self) -> dict[str, Any]:
        return self.run.meta

    def curve(self, role: str) -> Curve | None:
        name = self.roles.get(role)
        return self.curves.get(name) if name else None


def _pick(candidates: list[Curve]) -> Curve | None:
    """Among series of one role, the most detailed (most points), then the shortest name."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (len(c), -len(c.name)))


def infer_roles(curves: dict[str, Curve]) -> tuple[dict[str, str], tuple[str, ...]]:
    train_loss, val_loss, val_metric, tests = [], [], [], []
    for curve in curves.values():
        split = split_of(curve.name)
        loss = is_loss(curve.name)
        if split == "test":
            tests.append(curve.name)
        elif split == "val" and loss:
            val_loss.append(curve)
        elif split == "val" and is_quality_metric(curve.name):
            val_metric.append(curve)
        elif loss and split in ("train", None) and set(tokens(curve.name)) <= {
            *_TRAIN, *_LOSS, "epoch", "step", "loss", "avg", "mean", "total",
        }:  # fmt: skip
            # Unqualified "loss" is the training loss in Keras and the HF Trainer.
            train_loss.append(curve)
    roles = {}
    for role, found in ((TRAIN_LOSS, train_loss), (VAL_LOSS, val_loss)):
        picked = _pick(found)
        if picked is not None:
            roles[role] = picked.name
    if val_metric:

        def rank(c: Curve) -> tuple[int, int]:
            words = tokens(c.name)
            pref = next(
                (i for i, p in enumerate(_METRIC_PREFERENCE) if p in words),
                len(_METRIC_PREFERENCE),
            )
            return pref, -len(c)

        roles[VAL_METRIC] = min(val_metric, key=rank).name
    return roles, tuple(sorted(tests))


def training_log(
    run: LogRun, train_metric: str | None = None, val_metric: str | None = None
) -> TrainingLog:
    curves = {name: make_curve(s) for name, s in run.series.items() if len(s)}
    roles, tests = infer_roles(curves)
    chosen_by = dict.fromkeys(roles, "name")
    for option, wanted, role in (
        ("--train-metric", train_metric, TRAIN_LOSS),
        ("--val-metric", val_metric, VAL_LOSS),
    ):
        if wanted is None:
            continue
        if wanted not in curves:
            have = ", ".join(sorted(curves)) or "none"
            raise UsageError(f"{option} {wanted!r}: no such series in {run.label} (has: {have})")
        if role == VAL_LOSS and not is_loss(wanted):
            role = VAL_METRIC
        roles[role] = wanted
        chosen_by[role] = "option"
    notes = list(run.notes)
    for curve in curves.values():
        if curve.restarts:
            steps = ", ".join(str(s) for s in curve.restarts[:3])
            notes.append(
                f"{curve.name}: the step counter went back (to {steps}): a resumed run; "
                f"{curve.replaced} earlier point(s) replaced by the later ones"
            )
    return TrainingLog(run, curves, roles, tests, tuple(notes), chosen_by)
