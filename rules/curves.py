"""[curves] rules: what a run's training and validation curves say went wrong.

Every threshold here was calibrated on real runs trained on scikit-learn's digits (see
tests/test_curves_calibration.py): healthy runs with and without early stopping, a run
overfitting a 64-sample subset, runs whose learning rate is too high (a blow-up, NaN),
one whose learning rate is far too low, and one validated on copies of its training data.
They were then checked against the logs of other people's public runs in
tests/data/public_logs/ (classifiers, seq2seq, Whisper, LLM and LoRA fine-tunes,
pre-training; four log formats), each read by a person first (tests/test_public_logs.py);
each rule's docstring gives the margins measured there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from diag.loaders.logs.curves import (
    TRAIN_LOSS,
    VAL_LOSS,
    Curve,
    TrainingLog,
    is_loss,
    split_of,
    tokens,
)
from diag.model import Finding, Location, Severity
from diag.registry import rule

_MONITOR = re.compile(r"""['"]monitor['"]\s*:\s*['"]([^'"]+)['"]""")


def _where(log: TrainingLog, series: str, **details: Any) -> Location:
    return Location(
        str(log.source), series, {"run": log.run.run, **details} if log.run.run else details
    )


def _epoch(curve: Curve, index: int) -> float | None:
    return curve.epoch_at(index)


def _at(curve: Curve, index: int) -> str:
    """ "step 120 (epoch 4)", for messages."""
    epoch = _epoch(curve, index)
    where = f"step {int(curve.steps[index])}"
    return f"{where}, epoch {epoch:g}" if epoch is not None else where


def _finite(curve: Curve) -> Curve:
    ok = np.isfinite(curve.values)
    if ok.all():
        return curve
    epochs = None if curve.epochs is None else curve.epochs[ok]
    return Curve(curve.name, curve.steps[ok], curve.values[ok], epochs)


def _running_median(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Centred running median: one bad evaluation neither makes nor hides a minimum."""
    if len(values) < width:
        return values.copy()
    half = width // 2
    padded = np.concatenate([values[:1].repeat(half), values, values[-1:].repeat(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


def _train_at(train: Curve, steps: np.ndarray) -> np.ndarray:
    """The training loss over the stretch that ends at each step (an epoch's mean).

    Per-step training losses are noisy; what compares with an evaluation at step s is
    the average since the previous evaluation (or, with no training point in between, the
    last one before s). Both curves' steps increase, so one cumulative sum and a binary
    search per evaluation do it: linear in the log's length, not evaluations x steps.
    """
    hi = np.searchsorted(train.steps, steps, side="right")  # training points at or before s
    lo = np.concatenate([[0], hi[:-1]])  # ... and at or before the previous evaluation
    total = np.concatenate([[0.0], np.cumsum(train.values, dtype=np.float64)])
    out = np.full(len(steps), np.nan)
    between = hi > lo
    out[between] = (total[hi[between]] - total[lo[between]]) / (hi - lo)[between]
    last = ~between & (hi > 0)
    out[last] = train.values[hi[last] - 1]
    return out


def _window_means(curve: Curve, steps: np.ndarray) -> np.ndarray:
    """The mean of `curve` over each window (previous step, step]; NaN where it has none.

    Unlike `_train_at`, a window with no point of its own stays empty: a stale value
    from an earlier, higher stretch of a falling loss is not a measurement of this one.
    """
    hi = np.searchsorted(curve.steps, steps, side="right")
    lo = np.concatenate([[0], hi[:-1]])
    total = np.concatenate([[0.0], np.cumsum(curve.values, dtype=np.float64)])
    out = np.full(len(steps), np.nan)
    some = hi > lo
    out[some] = (total[hi[some]] - total[lo[some]]) / (hi - lo)[some]
    return out


def _paired(train: Curve, val: Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, validation, training) compared over the same stretches of the run.

    The sparser of the two curves sets the stretches and the denser one is averaged
    over each: a training loss logged every 500 steps as a 500-step mean is compared
    with the mean of the evaluations in those 500 steps, not with the last of them.
    """
    if len(train) >= len(val):
        t, v, steps = _window_means(train, val.steps), val.values, val.steps
    else:
        t, v, steps = train.values, _window_means(val, train.steps), train.steps
    ok = np.isfinite(t) & np.isfinite(v)
    return steps[ok], v[ok], t[ok]


def _initial_loss(train: Curve, val: Curve | None = None) -> float:
    """About the loss before training moved it: the largest of the first few points.

    A per-epoch log's first training point is an epoch's mean and already includes the
    fast early drop, so the first evaluation (often made before much training) counts too.
    """
    first = [float(np.max(train.values[:3]))] if len(train) else []
    if val is not None and len(val):
        first.append(float(val.values[0]))
    return max(first, default=0.0)


def _trailing_median(x: np.ndarray, window: int, block: int = 65_536) -> np.ndarray:
    """Median of the `window` points before each point (NaN for the first `window`).

    Computed in blocks so that a million-step log never materialises all its windows.
    """
    out = np.full(len(x), np.nan)
    for start in range(window, len(x), block):
        stop = min(len(x), start + block)
        views = np.lib.stride_tricks.sliding_window_view(x[start - window : stop - 1], window)
        out[start:stop] = np.median(views, axis=1)
    return out


# ------------------------------------------------------------------ loss-nonfinite


@rule(name="loss-nonfinite", group="curves", severity=Severity.ERROR, needs=("logs",))
def loss_nonfinite(logs: list[TrainingLog]) -> Iterator[Finding]:
    """A loss that became NaN or infinite.

    ## What it does
    Looks at every loss series in the logs (training, validation, test) for NaN or
    infinite values and reports where the first one appeared and how many followed.
    There is no threshold: one non-finite loss is enough. None of the 46 public logs in
    tests/data/public_logs/ has one, and near-zero losses (down to 1e-5) are finite
    values like any other.

    ## Why is this bad?
    Once a loss is NaN, every update after it is NaN too: the weights are destroyed and
    the rest of the run is wasted. A few infinite values followed by recovery usually
    mean an overflow (fp16 without loss scaling, a log of zero) that also corrupted
    updates silently.

    ## How to fix
    Lower the learning rate or add warm-up, clip gradients, check for `log(0)` and
    division by zero in custom losses, use a loss scaler with fp16, and make the training
    script stop (or skip the step) when the loss stops being finite.
    """
    for log in logs:
        for name, curve in log.curves.items():
            if not is_loss(name) or len(curve) == 0:
                continue
            bad = ~np.isfinite(curve.values)
            if not bad.any():
                continue
            first = int(np.argmax(bad))
            after = int(bad[first:].sum())
            kind = "NaN" if np.isnan(curve.values[first]) else "infinite"
            recovered = bool(np.isfinite(curve.values[-1]))
            tail = "and recovered later" if recovered else "and stayed non-finite to the end"
            yield Finding(
                message=(
                    f"{name} became {kind} at {_at(curve, first)}: {after} of the "
                    f"{len(curve) - first} points from there are non-finite {tail}"
                ),
                location=_where(log, name, step=int(curve.steps[first])),
                evidence={
                    "first_step": int(curve.steps[first]),
                    "first_epoch": _epoch(curve, first),
                    "nonfinite_points": after,
                    "points": len(curve),
                    "nan": bool(np.isnan(curve.values[first])),
                    "recovered": recovered,
                },
            )


# ------------------------------------------------------------------ train-val-divergence


def _sustained_minimum(
    val: Curve, patience: int, min_rise: float, min_rise_of_start: float
) -> tuple[int, int, float, float] | None:
    """(smoothed best, actual best index, best, end) when the loss rose and stayed up."""
    smooth = _running_median(val.values)
    best = int(np.argmin(smooth))
    if len(val) - 1 - best < patience:
        return None
    best_value, end_value = float(smooth[best]), float(smooth[-1])
    threshold = max(abs(best_value) * min_rise, abs(float(val.values[0])) * min_rise_of_start)
    if end_value - best_value < threshold:
        return None
    # Sustained: the last `patience` evaluations all stay above half the threshold.
    if np.any(smooth[-patience:] - best_value < threshold / 2):
        return None
    # Report the checkpoint to keep: the lowest actual evaluation beside the smoothed one.
    lo = max(0, best - 1)
    return best, lo + int(np.argmin(val.values[lo : best + 2])), best_value, end_value


def _steady_rise(
    val: Curve, min_rise: float, min_rise_of_start: float
) -> tuple[int, int, float, float] | None:
    """(best, best, best value, end) when every evaluation after the best was higher.

    The strong form of the evidence, enough with as few as three evaluations: the best
    is in the first half of the run and the loss then rose at each of at least two
    evaluations in a row, by `min_rise` in all.
    """
    x = val.values
    best = int(np.argmin(x))
    after = len(x) - 1 - best
    if after < 2 or best > (len(x) - 1) / 2 or np.any(np.diff(x[best:]) <= 0):
        return None
    best_value, end_value = float(x[best]), float(x[-1])
    threshold = max(abs(best_value) * min_rise, abs(float(x[0])) * min_rise_of_start)
    if end_value - best_value < threshold:
        return None
    return best, best, best_value, end_value


@rule(name="train-val-divergence", group="curves", severity=Severity.WARNING, needs=("logs",))
def train_val_divergence(
    logs: list[TrainingLog],
    *,
    patience: int = 5,
    min_rise: float = 0.08,
    min_rise_of_start: float = 0.02,
    min_train_drop: float = 0.10,
    min_evaluations: int = 5,
) -> Iterator[Finding]:
    """Validation loss rising after its minimum while the training loss keeps falling.

    ## What it does
    Finds the validation loss minimum (after a running median over three evaluations,
    so one lucky or unlucky evaluation does not decide it), then checks that for at least
    `patience` (5) evaluations after it (3 when the run has only 5, 4 when it has 6) the
    validation loss stayed clearly above that minimum: at the end `min_rise` (8%)
    relative and `min_rise_of_start` (2%) of the starting validation loss higher, and
    every one of those evaluations at least half that much higher. With fewer
    evaluations (down to three) it needs the strong form of the evidence: the best
    evaluation in the first half of the run and a rise at every evaluation after it,
    by the same amounts. Either way the training loss must have fallen by at least
    `min_train_drop` (10%) over the same stretch, or it is not overfitting. It reports
    the best step and epoch (where early stopping should have stopped), how much the
    validation loss rose, and the train/validation gap at the end.

    The margins, measured on the public logs in tests/data/public_logs/: the mildest
    overfitting a reader sees there rose 9.2% (smoothed) above its best (a classifier
    going from 1.33 to 1.49 over its last six epochs); among healthy runs with enough
    evaluations after their best, the largest rise is 0.9% (a continued pre-training
    run levelling off at 0.49). Healthy runs that rose more did so over too few
    evaluations: 18% over the last 2 of 5 (0.071, 0.048, 0.049, 0.048, 0.057, not a
    steady rise) and 11% over the last 3 of 15. The standard Whisper fine-tuning recipe
    evaluates 5 times: two such runs whose evaluation loss rose at every one of them
    (0.31 -> 0.47 and 0.32 -> 0.42) while the training loss fell to 2e-4 are caught.

    ## Why is this bad?
    This is overfitting: the model is memorising the training set at the expense of
    new data. A checkpoint taken at the end of the run is worse than the one at the
    minimum, and more epochs only make it worse.

    ## How to fix
    Use early stopping on the validation loss (or keep the best checkpoint), add
    regularisation (weight decay, dropout, augmentation), get more data, or use a
    smaller model. If the training set is tiny, check that it is the set you meant.
    """
    for log in logs:
        val, train = log.curve(VAL_LOSS), log.curve(TRAIN_LOSS)
        if val is None or train is None:
            continue
        val, train = _finite(val), _finite(train)
        if len(val) < 3 or len(train) < 2:
            continue
        found = None
        if len(val) >= min_evaluations:
            wait = min(patience, len(val) - 2)
            found = _sustained_minimum(val, wait, min_rise, min_rise_of_start)
        found = found or _steady_rise(val, min_rise, min_rise_of_start)
        if found is None:
            continue
        anchor, best, best_value, end_value = found
        after = len(val) - 1 - best
        train_at = _train_at(train, val.steps)
        # The training loss is compared from where the smoothed minimum is, like the rise:
        # from one lucky evaluation a neighbour away it would include an extra epoch of
        # training that the validation loss did not react to.
        t_best, t_end = float(train_at[anchor]), float(train_at[-1])
        if not (np.isfinite(t_best) and np.isfinite(t_end)) or t_best <= 0:
            continue
        drop = (t_best - t_end) / abs(t_best)
        if drop < min_train_drop:
            continue
        rise = (end_value - best_value) / abs(best_value) if best_value else float("inf")
        yield Finding(
            message=(
                f"{val.name} was lowest at {_at(val, best)} ({best_value:.4g}), then rose "
                f"{rise:.0%} over {after} evaluations while {train.name} fell {drop:.0%}: "
                "overfitting; early stopping should have kept that checkpoint"
            ),
            location=_where(log, val.name, train=train.name),
            evidence={
                "best_step": int(val.steps[best]),
                "best_epoch": _epoch(val, best),
                "best_value": best_value,
                "end_step": int(val.steps[-1]),
                "end_value": end_value,
                "rise": rise,
                "evaluations_after_best": after,
                "train_drop": drop,
                "gap_at_end": float(val.values[-1]) - t_end,
                "train_series": train.name,
                "val_series": val.name,
            },
        )


# ------------------------------------------------------------------ loss-not-decreasing


def _bin_medians(values: np.ndarray, bins: int) -> np.ndarray:
    return np.array([float(np.median(part)) for part in np.array_split(values, bins)])


def start_and_end(x: np.ndarray) -> tuple[float, float]:
    """A training loss's level at the start (its first points) and over its last tenth."""
    # Three points resist one odd batch, but in a short log they are a third of the run.
    start = float(np.median(x[: 3 if len(x) >= 20 else 1]))
    end = float(np.median(x[-max(1, len(x) // 10) :]))
    return start, end


@rule(name="loss-not-decreasing", group="curves", severity=Severity.WARNING, needs=("logs",))
def loss_not_decreasing(
    logs: list[TrainingLog],
    *,
    min_drop: float = 0.10,
    plateau_fraction: float = 0.4,
    min_points: int = 5,
) -> Iterator[Finding]:
    """A training loss that does not fall, or stays flat for a long stretch at the start.

    ## What it does
    Takes the loss at the start of training (the median of the first three points, or
    of the first point alone when the log has fewer than twenty) and the median over the
    last tenth of the run. It fires when the end is less than `min_drop` (10%) below the
    start: the loss never really fell, or rose. It also fires when the loss stayed
    within `min_drop` of its start for at least `plateau_fraction` (40%) of the run
    before it started to fall, judged on a hundred stretches of the run (a running
    median over three of them), so that a fast drop in the first few percent of the run
    counts as the drop it is. It needs five points.

    The start is the first points, not the first tenth: a fine-tune often loses a third
    of its loss in its first 50 steps and then creeps down, and the median of its first
    tenth already sits at the bottom of that drop. On the public logs in
    tests/data/public_logs/ the smallest fall among runs a reader calls learning is 22%
    (a sentiment classifier, 1.50 to 1.17); the caught cases fell 7.2% or less (a T5
    fine-tune, 1.91 to 1.77 over 215k steps; a Falcon LoRA, 3.26 to 3.02) or rose (a
    resumed pre-training run; a Whisper run whose 500-step means went 1.24 -> 2.16 ->
    1.79).

    ## Why is this bad?
    A network that is learning lowers its training loss quickly at first. A loss that
    stays at its initial value means no useful gradient reaches the weights: a learning
    rate far too low or so high it blew the model into a dead state, dead or saturated
    units, symmetric initialisation, frozen parameters, a detached graph, or labels
    that do not match the inputs. A long plateau at the start is the same problem,
    eventually escaped by luck. A fine-tune whose loss barely moves learned little: the
    model already knew the task, or the adapter and learning rate are too small to
    change it.

    ## How to fix
    Check the learning rate (a range test helps), that the optimizer holds the model's
    parameters, that no parameter is frozen or detached by mistake, the initialisation,
    and that inputs and labels line up (try to overfit a single batch).
    """
    for log in logs:
        curve = log.curve(TRAIN_LOSS)
        if curve is None:
            continue
        curve = _finite(curve)
        n = len(curve)
        if n < min_points:
            continue
        x = curve.values
        start, end = start_and_end(x)
        if start <= 0:
            continue
        drop = (start - end) / start
        evidence = {"start_value": start, "end_value": end, "drop": float(drop)}
        if drop < min_drop:
            yield Finding(
                message=(
                    f"{curve.name} did not fall: {start:.4g} at the start of the run, "
                    f"{end:.4g} over its last tenth ({-drop:+.0%})"
                ),
                location=_where(log, curve.name),
                evidence={
                    **evidence,
                    "kind": "stalled",
                    "first_step": int(curve.steps[0]),
                    "last_step": int(curve.steps[-1]),
                },
            )
            continue
        parts = np.array_split(np.arange(n), min(n, 100))
        level = _running_median(_bin_medians(x, len(parts)))
        below = np.nonzero(level < start * (1 - min_drop))[0]
        flat = int(below[0]) if below.size else len(parts)
        if flat / len(parts) >= plateau_fraction:
            until = int(curve.steps[parts[flat - 1][-1]])
            yield Finding(
                message=(
                    f"{curve.name} stayed at its initial value ({start:.4g}) for the first "
                    f"{flat / len(parts):.0%} of the run (until step {until}) before it fell"
                ),
                location=_where(log, curve.name),
                evidence={
                    **evidence,
                    "kind": "plateau",
                    "first_step": int(curve.steps[0]),
                    "last_step": until,
                },
            )


# ------------------------------------------------------------------ loss-spikes


def _learning_rate(log: TrainingLog) -> Curve | None:
    """The logged learning rate (HF `learning_rate`, Lightning `lr-Adam`, Keras `lr`)."""
    for name, curve in log.curves.items():
        words = tokens(name)
        if len(curve) and ("lr" in words or ("learning" in words and "rate" in words)):
            return _finite(curve)
    return None


def _lr_raised(lr: Curve, steps: np.ndarray, window: int, factor: float = 1.5) -> np.ndarray:
    """Loss points at which the learning rate is `factor` above where it was `window` back.

    Warm-up and the restarts of a cyclic or warm-restart schedule raise the learning
    rate on purpose, and the loss answers with a rise: that is the schedule working.
    """
    if not len(lr):
        return np.zeros(len(steps), dtype=bool)
    at = np.clip(np.searchsorted(lr.steps, steps, side="right") - 1, 0, len(lr) - 1)
    rate = lr.values[at]
    before = rate[np.maximum(np.arange(len(rate)) - window, 0)]
    return rate > before * factor


@rule(name="loss-spikes", group="curves", severity=Severity.WARNING, needs=("logs",))
def loss_spikes(
    logs: list[TrainingLog],
    *,
    factor: float = 3.0,
    min_jump_of_start: float = 0.3,
    oscillation: float = 0.25,
    min_points: int = 20,
) -> Iterator[Finding]:
    """Sudden jumps of the training loss, or a loss that keeps oscillating.

    ## What it does
    Compares every training-loss point with the median of the points just before it
    (5 to 50 of them, a twentieth of the log). A spike is a point at least `factor` (3x)
    that median and higher by at least `min_jump_of_start` (0.3) of the loss at the
    start of training (so a hard batch late in training, when the loss is near zero, is
    not a spike). A rise while the logged learning rate is 1.5x or more what it was
    that many points before is not a spike either: warm-up and the restarts of a cyclic
    or warm-restart schedule raise the loss on purpose. Consecutive spike points are one
    event; the finding gives the largest, the count, and whether the loss came back
    down: to nearer (geometrically) the level before than the peak, or to within
    `min_jump_of_start` of the level before. It also fires when, over the second half
    of the run, the training loss averaged over twentieths of the run keeps swinging up
    and down by more than `oscillation` (in log terms, about 28%) between neighbouring
    stretches, by at least a tenth of the starting loss.

    On the public logs in tests/data/public_logs/ no run a reader calls healthy gets a
    warning; four get an info note for single hard batches (up to 727x a per-step loss
    of 0.0004, and 51x on MNIST), all of which the loss shrugged off. Per-step losses
    near zero are heavy-tailed: a ViT fine-tune went from 0.010 to 0.073 and settled at
    0.03, which the geometric test alone called "did not recover"; 0.02 above the level
    before is well inside the 0.044 (0.3 of its starting 0.146) a jump must reach.

    ## Why is this bad?
    A spike means one update threw the weights far from where they were: the learning
    rate is too high for that stretch of the loss surface, a batch was corrupt, or the
    gradient exploded. If the loss does not come back, the run is effectively over (often
    at the loss of a constant prediction); a spike the loss recovers from is reported at
    `info` severity. Sustained oscillation means the optimizer
    bounces across a valley instead of descending it.

    ## How to fix
    Lower the learning rate or add warm-up, clip the gradient norm, check the batches
    around the spike for bad data, and for Adam consider a larger epsilon. Resume from a
    checkpoint before the spike rather than training on from a broken state.
    """
    for log in logs:
        curve = log.curve(TRAIN_LOSS)
        if curve is None:
            continue
        curve = _finite(curve)
        n = len(curve)
        if n < min_points:
            continue
        x = curve.values
        window = max(5, min(50, n // 20))
        scale = abs(float(np.median(x[:3])))  # about the loss before training moved it
        if scale == 0:
            continue
        base = _trailing_median(x, window)
        with np.errstate(invalid="ignore"):
            spike = (x > base * factor) & (x - base > min_jump_of_start * scale) & (base > 0)
        lr = _learning_rate(log)
        if lr is not None:
            spike &= ~_lr_raised(lr, curve.steps, window)
        idx = np.nonzero(spike)[0]
        if idx.size:
            events = np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1)
            top = int(idx[np.argmax(x[idx] / base[idx])])
            later = x[top + 1 : top + 1 + window]
            # Back nearer (geometrically) to the level before the spike than to its peak, or
            # back within a jump too small to count: near zero, a loss that goes from 0.01 to
            # 0.07 and settles at 0.03 is batch noise, not a model knocked off its path.
            settled = float(np.median(later)) if later.size else float("inf")
            recovered = bool(
                settled**2 <= x[top] * base[top] or settled - base[top] <= min_jump_of_start * scale
            )
            outcome = "and came back down" if recovered else "and did not recover"
            # A hard batch that the run shrugs off is worth knowing, not a warning.
            yield Finding(
                severity=Severity.INFO if recovered else None,
                message=(
                    f"{curve.name} spiked {len(events)} time(s); the largest at "
                    f"{_at(curve, top)}: {x[top]:.4g}, {x[top] / base[top]:.1f}x the "
                    f"{base[top]:.4g} just before, {outcome}"
                ),
                location=_where(log, curve.name, step=int(curve.steps[top])),
                evidence={
                    "kind": "spike",
                    "spikes": len(events),
                    "step": int(curve.steps[top]),
                    "epoch": _epoch(curve, top),
                    "value": float(x[top]),
                    "before": float(base[top]),
                    "ratio": float(x[top] / base[top]),
                    "recovered": recovered,
                    "spike_steps": [int(curve.steps[e[0]]) for e in events[:20]],
                },
            )
            continue
        half = x[n // 2 :]
        if half.size >= 20 and np.all(half > 0):
            means = np.array([float(np.mean(p)) for p in np.array_split(half, 10)])
            steps_log = np.diff(np.log(means))
            swings = float(np.mean(np.abs(steps_log)))
            alternating = float(np.mean(np.sign(steps_log[1:]) != np.sign(steps_log[:-1])))
            # Relative swings of a loss near zero are rounding-level noise: they must also be
            # a visible fraction of the starting loss.
            visible = float(np.mean(np.abs(np.diff(means)))) >= 0.1 * scale
            if swings >= oscillation and alternating >= 0.6 and visible:
                yield Finding(
                    message=(
                        f"{curve.name} oscillates over the second half of the run: "
                        f"neighbouring stretches differ by {np.expm1(swings):.0%} on average, "
                        f"up and down"
                    ),
                    location=_where(log, curve.name),
                    evidence={
                        "kind": "oscillation",
                        "mean_swing": swings,
                        "alternation": alternating,
                        "first_step": int(curve.steps[n // 2]),
                        "last_step": int(curve.steps[-1]),
                    },
                )


# ------------------------------------------------------------------ val-better-than-train


@rule(name="val-better-than-train", group="curves", severity=Severity.WARNING, needs=("logs",))
def val_better_than_train(
    logs: list[TrainingLog],
    *,
    margin: float = 0.2,
    min_gap_of_start: float = 0.02,
    share: float = 0.8,
    min_evaluations: int = 4,
) -> Iterator[Finding]:
    """Validation loss consistently and clearly lower than the training loss.

    ## What it does
    Compares the validation and training losses over the same stretches of the run (the
    mean of the denser curve over each interval of the sparser one) and, over the second
    half of the run, fires when the validation loss is lower than the training loss in
    at least `share` (80%) of the comparisons, each time both by more than `margin`
    (20%) of the training loss and by at least `min_gap_of_start` (2%) of the initial
    loss (the largest of the first three training points and the first evaluation). It
    needs eight comparisons.

    The absolute floor is what keeps near-zero losses quiet: a classifier at 0.002
    against 0.003 is "33% lower", but a gap of 0.001 on a loss that started at 0.7 is
    rounding and dropout noise. On the public logs in tests/data/public_logs/, among
    healthy runs whose validation loss is 20% or more below the training loss, the
    largest gap is 0.15% of the initial loss (a Keras CNN with dropout, 0.009 against
    0.015, started at 3.6); the smallest caught is 4.8%
    (a Whisper fine-tune whose evaluation loss sat at 0.29x the training loss, 0.53 below
    it, on an initial loss of 11). Comparing like with like matters as much: a training
    loss logged every 500 steps as a 500-step mean, set against the last evaluation of
    those 500 steps while the loss falls fast, looks 2x higher for no reason.

    ## Why is this bad?
    A model should not do better on data it has not seen. The usual explanations, in
    order of how bad they are: validation samples that also occur in the training set
    (leakage), a validation set much easier than the training set, or training-time
    effects that inflate the training loss (dropout, heavy augmentation, label
    smoothing, a training loss averaged over an epoch in which the model improved). The
    last ones are harmless, but should be known rather than assumed.

    ## How to fix
    Check the splits for overlap (`diag check --split ...`), compare the training loss
    measured in eval mode on un-augmented training data, and make sure the validation
    set is drawn from the same distribution as the test data.
    """
    for log in logs:
        val, train = log.curve(VAL_LOSS), log.curve(TRAIN_LOSS)
        if val is None or train is None:
            continue
        val, train = _finite(val), _finite(train)
        if not len(val) or not len(train):
            continue
        steps, v, t = _paired(train, val)
        if len(v) < 2 * min_evaluations:
            continue
        half = slice(len(v) // 2, None)
        steps, v, t = steps[half], v[half], t[half]
        ok = t > 0
        if ok.sum() < min_evaluations:
            continue
        v, t = v[ok], t[ok]
        floor = min_gap_of_start * _initial_loss(train, val)
        better = float(np.mean((v < t * (1 - margin)) & (t - v >= floor)))
        if better < share:
            continue
        median = float(np.median(v / t))
        yield Finding(
            message=(
                f"{val.name} is below {train.name} in {better:.0%} of the comparisons of the "
                f"second half of the run (median {median:.2f}x, {float(np.median(t - v)):.3g} "
                "lower): leakage between the splits, or dropout/augmentation inflating the "
                "training loss; double-check"
            ),
            location=_where(log, val.name, train=train.name),
            evidence={
                "median_ratio": median,
                "median_gap": float(np.median(t - v)),
                "gap_floor": floor,
                "share_better": better,
                "evaluations": int(ok.sum()),
                "first_step": int(steps[0]),
                "last_step": int(steps[-1]),
                "train_series": train.name,
                "val_series": val.name,
            },
        )


# ------------------------------------------------------------------ test-set-selection


def _monitors(meta: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, metric) pairs for every monitor a checkpoint or log records."""
    callbacks = meta.get("callbacks")
    if isinstance(callbacks, dict):
        for key, state in callbacks.items():
            name = str(key).split("{", 1)[0] or "callback"
            monitor = state.get("monitor") if isinstance(state, dict) else None
            if not isinstance(monitor, str):
                found = _MONITOR.search(str(key))
                monitor = found[1] if found else None
            if monitor:
                yield name, monitor
    hparams = meta.get("hyper_parameters") or meta.get("hparams")
    if isinstance(hparams, dict):
        for key in ("monitor", "metric_for_best_model", "early_stopping_monitor"):
            value = hparams.get(key)
            if isinstance(value, str):
                yield f"hyperparameter {key}", value
    if isinstance(meta.get("monitor"), str):
        yield "monitor", meta["monitor"]


@rule(
    name="test-set-selection",
    group="curves",
    severity=Severity.WARNING,
    needs=("logs|checkpoint",),
)
def test_set_selection(logs: list[TrainingLog] | None, checkpoint: Any) -> Iterator[Finding]:
    """Checkpoints or hyperparameters chosen on the test set.

    ## What it does
    Fires when a test metric was logged at several points during training (so it was
    there to be looked at while choosing), and when a checkpoint, early stopping or a
    logger records that it monitored a test metric (a Lightning `.ckpt` keeps each
    `ModelCheckpoint` and `EarlyStopping` monitor; MLflow and Lightning logs keep
    hyperparameters such as `monitor`). A test metric logged once, at the end, is the
    right practice and stays silent: one of the public logs in tests/data/public_logs/
    (a Lightning MNIST run) does exactly that.

    ## Why is this bad?
    A test score is an unbiased estimate only if nothing was chosen by looking at it.
    Picking the epoch, the checkpoint or the hyperparameters by test performance fits
    them to the test set, and the reported score is optimistic by an unknown amount.

    ## How to fix
    Monitor a validation metric for checkpointing and early stopping, evaluate the test
    set once at the end, and keep test metrics out of the per-epoch logs.
    """
    for log in logs or ():
        for name in log.tests:
            curve = log.curves[name]
            if len(curve) < 2:
                continue
            yield Finding(
                message=(
                    f"{name} was logged at {len(curve)} points during training (steps "
                    f"{int(curve.steps[0])} to {int(curve.steps[-1])}): the test set was "
                    "watched while the run was being tuned"
                ),
                location=_where(log, name),
                evidence={
                    "points": len(curve),
                    "first_step": int(curve.steps[0]),
                    "last_step": int(curve.steps[-1]),
                    "source": "logs",
                },
            )
        for where, metric in _monitors(log.meta):
            if split_of(metric) == "test":
                yield Finding(
                    message=f"{where} monitors {metric!r}, a test-set metric",
                    location=_where(log, where, monitor=metric),
                    evidence={"monitor": metric, "source": "logs"},
                )
    if checkpoint is not None:
        for where, metric in _monitors(checkpoint.meta.extra):
            if split_of(metric) == "test":
                yield Finding(
                    message=(
                        f"{where} in the checkpoint monitors {metric!r}, a test-set metric: "
                        "this checkpoint was chosen on the test set"
                    ),
                    location=Location(checkpoint.path, where, {"monitor": metric}),
                    evidence={"monitor": metric, "source": "checkpoint"},
                )
