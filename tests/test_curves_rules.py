"""Each [curves] rule on hand-built curves: the pathology it names fires, its twin is silent.

The real-run calibration is in test_curves_calibration.py; these cases pin the edges
(noise, recovery, too little data) with curves whose shape is known exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from diag.api import CheckOptions, check
from diag.registry import load_rules

RNG = np.random.default_rng(0)
EPOCHS = 40
STEPS_PER_EPOCH = 20


def decay(n: int, start: float = 2.3, end: float = 0.2, rate: float = 5.0) -> np.ndarray:
    t = np.linspace(0, 1, n)
    return end + (start - end) * np.exp(-rate * t)


def noisy(x: np.ndarray, rel: float = 0.1) -> np.ndarray:
    return x * np.exp(rel * RNG.standard_normal(len(x)))


def history(train_steps: np.ndarray, val: np.ndarray | None = None, **extra) -> list[dict]:
    """JSONL records: a training loss every step, validation values every epoch."""
    records = [{"step": i + 1, "train_loss": float(v)} for i, v in enumerate(train_steps)]
    for e in range(len(val) if val is not None else 0):
        step = (e + 1) * STEPS_PER_EPOCH
        row = {"step": step, "epoch": e, "val_loss": float(val[e])}
        row.update({k: float(v[e]) for k, v in extra.items()})
        records.append(row)
    return records


def healthy_train() -> np.ndarray:
    return noisy(decay(EPOCHS * STEPS_PER_EPOCH))


def healthy_val() -> np.ndarray:
    return noisy(decay(EPOCHS, 2.3, 0.3), 0.03)


def overfit_val() -> np.ndarray:
    v = decay(EPOCHS, 2.3, 0.3, rate=12)
    v[15:] = v[15] + np.linspace(0, 0.6, EPOCHS - 15)
    return v


def with_spike(x: np.ndarray, at: int, factor: float, recover: bool) -> np.ndarray:
    x = x.copy()
    if recover:
        x[at] *= factor
    else:
        x[at:] = x[at] * factor
    return x


def oscillating() -> np.ndarray:
    n = EPOCHS * STEPS_PER_EPOCH
    level = decay(n, 2.3, 1.0)
    swing = np.where((np.arange(n) // (n // 20)) % 2 == 0, 1.6, 0.6)
    swing[: n // 2] = 1.0
    return level * swing


def early_drop_then_creep() -> np.ndarray:
    """A LoRA fine-tune's loss: 1.53 -> 1.06 in its first 5 of 100 points, then creeping down."""
    return np.r_[np.linspace(1.53, 1.06, 5), noisy(np.linspace(1.06, 0.93, 95), 0.01)]


def near_zero_train() -> np.ndarray:
    return noisy(decay(EPOCHS * STEPS_PER_EPOCH, 0.7, 0.003, rate=20))


def warm_restarts(
    n: int = EPOCHS * STEPS_PER_EPOCH, cycles: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(loss, learning rate) of a cosine schedule with warm restarts: the loss jumps at each."""
    t = np.linspace(0, 1, n // cycles)
    lr = np.tile(1e-3 * (1 + np.cos(np.pi * t)) / 2 + 1e-6, cycles)
    level = np.repeat(np.linspace(2.3, 1.8, cycles), n // cycles)
    loss = noisy(level * (0.05 + 0.95 * np.tile(np.exp(-8 * t), cycles)) + 0.05, 0.03)
    return loss, lr


@dataclass
class Case:
    id: str
    rule: str
    records: Callable[[], list[dict]]
    fires: bool
    severity: str = ""


CASES = [
    Case("inf-then-recovers", "loss-nonfinite",
         lambda: history(np.r_[healthy_train()[:100], np.inf, healthy_train()[101:]]), True, "error"),
    Case("nan-in-accuracy-only", "loss-nonfinite",
         lambda: history(healthy_train(), healthy_val(), val_acc=np.r_[np.nan, np.ones(EPOCHS - 1)]), False),
    Case("finite", "loss-nonfinite", lambda: history(healthy_train(), healthy_val()), False),
    Case("v-shaped-val", "train-val-divergence",
         lambda: history(healthy_train(), overfit_val()), True, "warning"),
    Case("val-flat-and-noisy", "train-val-divergence",
         lambda: history(healthy_train(), noisy(np.full(EPOCHS, 0.5), 0.1)), False),
    Case("both-rising", "train-val-divergence",
         lambda: history(healthy_train()[::-1].copy(), overfit_val()), False),
    Case("too-few-evaluations", "train-val-divergence",
         lambda: history(healthy_train()[:80], overfit_val()[12:16]), False),
    Case("val-comes-back", "train-val-divergence",
         lambda: history(healthy_train(), np.r_[overfit_val()[:30], np.full(10, overfit_val()[15])]), False),
    Case("five-evaluations-rising", "train-val-divergence",
         lambda: history(healthy_train()[:100], np.array([0.31, 0.36, 0.42, 0.45, 0.47])), True, "warning"),
    Case("three-evaluations-rising", "train-val-divergence",
         lambda: history(healthy_train()[:60], np.array([0.32, 0.33, 0.44])), True, "warning"),
    Case("five-evaluations-levelling-off", "train-val-divergence",
         lambda: history(healthy_train()[:100], np.array([0.071, 0.048, 0.049, 0.048, 0.057])), False),
    Case("three-evaluations-late-best", "train-val-divergence",
         lambda: history(healthy_train()[:60], np.array([0.40, 0.32, 0.44])), False),
    Case("flat", "loss-not-decreasing", lambda: history(noisy(np.full(800, 2.3), 0.05)), True, "warning"),
    Case("long-plateau-then-drop", "loss-not-decreasing",
         lambda: history(np.r_[noisy(np.full(500, 2.3), 0.02), decay(300)]), True, "warning"),
    Case("normal-decay", "loss-not-decreasing", lambda: history(healthy_train()), False),
    Case("early-fast-drop", "loss-not-decreasing", lambda: history(early_drop_then_creep()), False),
    Case("rises-over-five-points", "loss-not-decreasing",
         lambda: history(np.array([1.24, 2.03, 2.16, 1.98, 1.79])), True, "warning"),
    Case("one-spike-recovered", "loss-spikes",
         lambda: history(with_spike(healthy_train(), 500, 8.0, recover=True)), True, "info"),
    Case("blow-up", "loss-spikes",
         lambda: history(with_spike(healthy_train(), 500, 10.0, recover=False)), True, "warning"),
    Case("oscillation", "loss-spikes", lambda: history(oscillating()), True, "warning"),
    Case("near-zero-jitter", "loss-spikes",
         lambda: history(np.r_[decay(400), noisy(np.full(400, 1e-4), 1.0)]), False),
    Case("plain-noise", "loss-spikes", lambda: history(healthy_train()), False),
    Case("val-half-of-train", "val-better-than-train",
         lambda: history(healthy_train(), healthy_val()[::1] * 0.4), True, "warning"),
    Case("near-zero-val-below-train", "val-better-than-train",
         lambda: history(near_zero_train(), near_zero_train()[STEPS_PER_EPOCH - 1 :: STEPS_PER_EPOCH] * 0.6), False),
    Case("val-above-train", "val-better-than-train",
         lambda: history(healthy_train(), healthy_val() * 1.1), False),
    Case("test-every-epoch", "test-set-selection",
         lambda: history(healthy_train(), healthy_val(), test_acc=np.linspace(0.5, 0.9, EPOCHS)), True, "warning"),
    Case("test-once-at-the-end", "test-set-selection",
         lambda: [*history(healthy_train(), healthy_val()), {"step": 800, "test_acc": 0.9}], False),
    Case("latest-is-not-test", "test-set-selection",
         lambda: history(healthy_train(), healthy_val(), latest_loss=healthy_val()), False),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}:{c.id}")
def test_curves_case(case: Case, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in case.records()) + "\n", encoding="utf-8")
    result, _ = check(CheckOptions(logs=[str(path)], select=[case.rule]))
    assert not result.errors
    assert bool(result.findings) == case.fires, [f.message for f in result.findings]
    if case.fires:
        assert {f.severity.label for f in result.findings} == {case.severity}  # type: ignore[union-attr]


def test_every_curves_rule_has_a_firing_and_a_silent_case():
    names = {s.name for s in load_rules() if s.group == "curves"}
    assert names == {c.rule for c in CASES if c.fires} == {c.rule for c in CASES if not c.fires}


def test_divergence_reports_the_best_evaluation_and_the_rise(tmp_path):
    path = tmp_path / "log.jsonl"
    records = history(healthy_train(), overfit_val())
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    result, _ = check(CheckOptions(logs=[str(path)], select=["train-val-divergence"]))
    (finding,) = result.findings
    assert abs(finding.evidence["best_epoch"] - 15) <= 2
    assert finding.evidence["rise"] == pytest.approx(0.6 / overfit_val()[15], rel=0.2)
    assert finding.location.object == "val_loss"


def _records_with_lr(loss: np.ndarray, lr: np.ndarray | None) -> list[dict]:
    rows = [{"step": i + 1, "train_loss": float(v)} for i, v in enumerate(loss)]
    if lr is not None:
        for row, rate in zip(rows, lr, strict=True):
            row["lr"] = float(rate)
    return rows


@pytest.mark.parametrize("with_lr", [True, False])
def test_a_warm_restart_is_no_spike_when_the_learning_rate_shows_it(tmp_path, with_lr):
    loss, lr = warm_restarts()
    path = tmp_path / "log.jsonl"
    records = _records_with_lr(loss, lr if with_lr else None)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    result, _ = check(CheckOptions(logs=[str(path)], select=["loss-spikes"]))
    assert not result.errors
    # Without the learning rate to explain it, the same jump is reported.
    assert bool(result.findings) != with_lr, [f.message for f in result.findings]
