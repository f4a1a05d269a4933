"""[live] Gradient health, seen only while a model trains (`diag.Monitor`, the callbacks).

A finished run leaves weights and curves behind, not gradients: these rules read the
per-tensor gradient norms the live monitor records every few steps
(`diag.live.GradientHistory`) and judge each tensor against its own history, so no
absolute scale has to fit every model. `diag check` skips them ("needs a live run").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from diag.live_history import GradientHistory
from diag.model import Finding, Location, Severity
from diag.registry import rule

GROUP = "live"


def _where(history: GradientHistory, name: str, step: int) -> Location:
    return Location(history.source, name, {"step": step})


def growths(gradients_live: GradientHistory, history: int = 5) -> dict[str, tuple[float, float]]:
    """Per tensor with at least `history` earlier records: (recent, earlier) gradient norms,
    the median of its last three records and of those before."""
    found: dict[str, tuple[float, float]] = {}
    for name, norms in gradients_live.norms.items():
        seen = [v for v in norms if v is not None and math.isfinite(v)]
        if len(seen) >= history + 3:
            found[name] = (statistics.median(seen[-3:]), statistics.median(seen[:-3]))
    return found


def falls(gradients_live: GradientHistory, history: int = 5) -> tuple[dict[str, float], list[str]]:
    """Per tensor: how many decades its gradient fell from its first three records to its
    last three; and the tensors whose last three records are exactly zero."""
    out: dict[str, float] = {}
    zeroed: list[str] = []
    for name, norms in gradients_live.norms.items():
        seen = [v for v in norms if v is not None and math.isfinite(v)]
        if len(seen) < max(history, 6):
            continue
        early, late = statistics.median(seen[:3]), statistics.median(seen[-3:])
        if early > 0 and all(v == 0 for v in seen[-3:]):
            zeroed.append(name)
        elif early > 0 and late > 0:
            out[name] = math.log10(late / early)
    return out, zeroed


@rule(name="exploding-gradients", group=GROUP, severity=Severity.WARNING, needs=("gradients_live",))
def exploding_gradients(
    gradients_live: GradientHistory,
    *,
    factor: float = 100.0,
    history: int = 5,
    error_share: float = 0.05,
) -> Iterator[Finding]:
    """Gradients that turned non-finite, or grew far beyond the tensor's own history.

    ## What it does
    Reads the gradient norm of every trainable tensor, recorded every few steps while
    the model trains. A non-finite norm (NaN or infinity) is an error, named at the first
    record that showed it. A tensor whose last three records (their median, so one spike
    is not enough) are `factor` (100) times the median of its earlier records, with at
    least `history` (5) of them, is a warning. When tensors of two modules or more (a
    weight and its bias are one module's), and at least `error_share` (5%) of the tensors
    with that much history, grew so at once, the update scale of the model blew up: each
    is an error.

    Measured (tests/test_live.py, tests/test_integrations.py; seeds 0-2, default and AVX2
    kernels, at every check of each run): on healthy runs no tensor grew more than 6.7x
    (a digits CNN with SGD or Adam in a plain loop, and under Lightning) or 29.6x (a tiny
    GPT-2 under the Hugging Face Trainer: one LayerNorm bias whose gradient grows as the
    blocks start to matter). A learning rate raised 300-fold mid-run gives non-finite
    values within a few steps, or, under the Trainer's AdamW with gradient clipping, which
    keeps the loss finite (it jumps from 3.6 to 6-24, above its untrained 5.0), growth of
    430x to 2,200x in the most-grown tensor, and past 100x in 14-29% of the tensors (the
    LayerNorms of 2 to 4 modules) at the first check after it.

    ## Why is this bad?
    Gradients that grow by orders of magnitude mean the updates do too: the weights
    jump out of the region the run was learning in, the loss spikes, and a few steps
    later it is NaN. Non-finite gradients poison every weight the optimizer touches.

    ## How to fix
    Lower the learning rate (or check the scheduler did not raise it), add warm-up and
    gradient clipping (`clip_grad_norm_`), and look for a loss that can overflow (a log
    of zero, an unclamped exponential, float16 without a loss scaler).
    """
    if not gradients_live.steps:
        return
    broken = set()
    for name, norms in gradients_live.norms.items():
        bad = next((i for i, v in enumerate(norms) if v is not None and not math.isfinite(v)), None)
        if bad is not None:
            broken.add(name)
            step = gradients_live.steps[bad]
            yield Finding(
                f"gradient norm is {norms[bad]} at step {step}",
                _where(gradients_live, name, step),
                {"first_step": step, "norm": norms[bad]},
                severity=Severity.ERROR,
            )
    step = gradients_live.steps[-1]
    judged = {n: g for n, g in growths(gradients_live, history).items() if n not in broken}
    grown = {n: (r, e) for n, (r, e) in judged.items() if e > 0 and r > factor * e}
    modules = {name.rpartition(".")[0] for name in grown}
    together = len(modules) >= 2 and len(grown) >= error_share * len(judged)
    for name, (recent, earlier) in grown.items():
        share = (
            f"; {len(grown)} of {len(judged)} tensors, in {len(modules)} modules, grew so at once"
            if together
            else ""
        )
        yield Finding(
            f"gradient norm grew {recent / earlier:.3g}x over its own history "
            f"(recent median {recent:.3g}, earlier {earlier:.3g}) by step {step}{share}",
            _where(gradients_live, name, step),
            {
                "recent": recent,
                "earlier": earlier,
                "growth": recent / earlier,
                "grown_tensors": len(grown),
                "judged_tensors": len(judged),
            },
            severity=Severity.ERROR if together else None,
        )


@rule(name="vanishing-gradients", group=GROUP, severity=Severity.WARNING, needs=("gradients_live",))
def vanishing_gradients(
    gradients_live: GradientHistory, *, decades: float = 3.0, history: int = 5
) -> Iterator[Finding]:
    """A tensor whose gradient died away while the rest of the model's did not.

    ## What it does
    For each trainable tensor with at least `history` (5) records, compares the median of
    its last three gradient norms with the median of its first three: the fall in
    decades. A tensor whose gradient fell to exactly zero, or `decades` (3) further than
    the median tensor's fell, is reported. Gradients shrink as a model fits, but they
    shrink together; one layer left behind by three orders of magnitude is not fitting.

    Measured (the same runs): on healthy ones no tensor fell more than 1.19 decades
    further than the median tensor; fc1's units all killed mid-run (its bias at -100)
    stops every gradient up to it exactly.

    ## Why is this bad?
    A layer whose gradient vanished stops learning while the rest of the network trains
    around it: saturated tanh or sigmoid units in front of it, ReLUs that all died, a
    normalisation that divides by a huge value, or a scale so small that its updates
    underflow.

    ## How to fix
    Look at the activations in front of the layer (`dead-units`,
    `saturated-activations`), its initialisation (`init-scale`), and normalisation or
    residual connections around it.
    """
    fell, zeroed = falls(gradients_live, history)
    step = gradients_live.steps[-1] if gradients_live.steps else 0
    for name in zeroed:
        yield Finding(
            f"gradient is exactly zero over the last 3 records (to step {step}) after being "
            "non-zero: the layer stopped learning",
            _where(gradients_live, name, step),
            {"fall_decades": -math.inf},
        )
    if len(fell) < 3:
        return
    median = statistics.median(fell.values())
    for name, fall in fell.items():
        if fall <= median - decades:
            yield Finding(
                f"gradient fell {-fall:.1f} decades from its first records by step {step}, "
                f"{median - fall:.1f} decades more than the median tensor's",
                _where(gradients_live, name, step),
                {"fall_decades": fall, "median_fall_decades": median},
            )


@rule(name="no-gradient", group=GROUP, severity=Severity.ERROR, needs=("gradients_live",))
def no_gradient(gradients_live: GradientHistory, *, records: int = 2) -> Iterator[Finding]:
    """A trainable parameter that never receives a gradient while others do.

    ## What it does
    A parameter with `requires_grad=True` (held by the optimizer, when the monitor was
    given one) whose gradient was `None` at every record, at least `records` (2) of them,
    while other parameters had gradients. Parameters frozen on purpose
    (`requires_grad=False`) are not judged.

    ## Why is this bad?
    The optimizer skips a parameter without a gradient: it keeps its initial value for
    the whole run. The graph is cut between it and the loss: `.detach()`, `.data`,
    `torch.no_grad()`, a round trip through numpy, or a layer that is built but never
    called in `forward`.

    ## How to fix
    Follow the parameter from the loss back to where it is used and remove the cut; if
    the layer is unused, delete it; if it is frozen on purpose, set
    `requires_grad=False`.
    """
    if len(gradients_live.steps) < records:
        return
    others = any(any(v is not None for v in n) for n in gradients_live.norms.values())
    if not others:
        return  # no gradient anywhere: the monitor is called after zero_grad, not a cut graph
    step = gradients_live.steps[-1]
    for name, norms in gradients_live.norms.items():
        if name in gradients_live.held and all(v is None for v in norms):
            yield Finding(
                f"no gradient in any of {len(norms)} records up to step {step}, while other "
                "parameters had one: the graph is cut before it",
                _where(gradients_live, name, step),
                {"records": len(norms), "last_step": step},
            )
