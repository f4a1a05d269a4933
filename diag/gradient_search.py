"""Which parameter tensors need a look: a search whose passes grow with the suspects.

The directional derivative of the loss along a direction v that moves many tensors at
once is the sum of theirs. Autograd gives g·v for any group of tensors from the one
backward pass already made; the central difference of the loss along v restricted to a
group costs two forward passes, whatever the group's size. `find_mismatches` compares
the two over every tensor, for a couple of independent directions. A group that
disagrees is split in halves: the first half is measured, the second half's numbers are
the group's minus the first's (both sides are linear in v, up to the step's O(h²)), and
so on down to single tensors, which `diag.gradients` then examines one by one. A healthy
model costs 2 to 4 forward passes per direction; one wrong tensor adds 2 per halving,
log2(tensors) of them.

`find_dependent` asks the same of the tensors autograd gave no gradient: does moving
them change the loss at all? Moved together, then halved while the answer is yes.

The error model (float64, the check's precision): rounding makes the loss uncertain by
a few units in its last place (measured on a GPT-2-small-shaped model: 0.3 ulp of the
loss), so a central difference at step h is uncertain by about eps·|L|/h; truncation is
O(h²). `ROUNDING` is a wide margin over the first, `SCREEN_RTOL` over both, and both
are far below what a wrong gradient does even diluted among every tensor of a model.
In float32 the same quotient is off by 1e-3 at best on that model (its loss is
uncertain by ~1e-7 relative, and the steps that drown that bend the loss): too coarse to
see one tensor among a hundred, which is why the check runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from diag.gradients import JUMP, MIN_SCALE, NOISE_RTOL, SHRINK, STEP

# A group's move: every coordinate by SCREEN_STEP x its tensor's rms. Far below the
# per-tensor probes' STEP, because a move of every tensor at once crosses every ReLU and
# max-pool kink close to it (a ResNet-18 at 1e-5 met kinks in most screens); float64
# still resolves it (the quotient's rounding error is 2.5e-8 of the derivative at 1e-7
# on a GPT-2-small shape).
SCREEN_STEP = 1e-7

# A group agrees when |autograd - central| is within SCREEN_RTOL of the size of its
# directional derivative (at least the root sum of squares of its tensors' parts, so a
# sum that cancels is not held to a tighter bound) plus the rounding noise. Measured on
# healthy models (worst group): 1.0e-7 on a GPT-2-small shape, 6.9e-8 on a ResNet-18, 1.1e-7
# on the digits CNNs over 3 seeds x 3 kernel sets; wrong gradients give 1e-3 and more.
SCREEN_RTOL = 1e-6
ROUNDING = 64  # float64 rounding of the loss, in units of eps x |loss| (measured 0.3)
FLOAT64_EPS = 2.220446049250313e-16


@dataclass(eq=False)
class Unit:
    """One parameter storage: the names it goes by (tied weights have several), the
    float64 working tensor, the user's tensor it is restored from, autograd's gradient."""

    names: tuple[str, ...]
    index: int  # position of its first name among the model's named parameters
    param: Any
    origin: Any
    grad: Any = None  # None when autograd gave none
    scale: float = MIN_SCALE
    parts: dict[int, float] = field(default_factory=dict)  # direction k -> g·v_k

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            self.param.copy_(self.origin)


@dataclass(frozen=True)
class Cleared:
    """Tensors whose group agreed: `error` is that group's relative error."""

    units: tuple[Unit, ...]
    error: float


@dataclass
class Search:
    """What a search found: single tensors to examine, groups cleared, passes spent."""

    suspects: list[Unit] = field(default_factory=list)
    cleared: list[Cleared] = field(default_factory=list)
    passes: int = 0


@dataclass(frozen=True)
class _Numbers:
    """A group's directional derivative: autograd's, and the central quotient per step."""

    auto: float
    central: dict[float, float]
    spread: float  # root sum of squares of its tensors' g·v


class _Mover:
    """Moves groups of tensors along one direction and measures the loss there.

    The direction is random signs times each tensor's rms: every coordinate moves by
    exactly `step` x its tensor's scale, and the signs take one byte per parameter (an
    eighth of a float64 copy); g·v and the moves use exactly these values.
    """

    def __init__(self, objective: Any, units: list[Unit], k: int, seed: int) -> None:
        import torch

        self.objective, self.k, self.step = objective, k, SCREEN_STEP
        self.signs: dict[int, Any] = {}
        for unit in units:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (k + 1) + unit.index)
            signs = torch.randint(0, 2, unit.param.shape, generator=gen, dtype=torch.int8)
            self.signs[id(unit)] = signs.mul_(2).sub_(1)
            if unit.grad is not None:
                dot = (unit.grad.double() * self.signs[id(unit)]).sum()
                unit.parts[k] = float(dot) * unit.scale

    def loss_at(self, units: list[Unit], step: float) -> float:
        import torch

        with torch.no_grad():
            for unit in units:
                move = self.signs[id(unit)]
                unit.param.copy_(unit.origin).add_(move, alpha=step * unit.scale)
        try:
            return self.objective.value()
        finally:
            for unit in units:
                unit.restore()

    def central(self, units: list[Unit], step: float) -> float:
        return (self.loss_at(units, step) - self.loss_at(units, -step)) / (2 * step)

    def numbers(self, units: list[Unit], steps: tuple[float, ...]) -> _Numbers:
        parts = [unit.parts[self.k] for unit in units]
        central = {s: self.central(units, s) for s in steps}
        return _Numbers(sum(parts), central, math.sqrt(sum(p * p for p in parts)))


def _error(numbers: _Numbers, loss: float) -> tuple[float, bool]:
    """The group's smallest relative error over its steps, and whether it agrees.

    It agrees when the gap is within SCREEN_RTOL of the derivative's size plus the
    quotient's rounding noise, ROUNDING x eps x |loss| / step.
    """
    best, agrees = math.inf, False
    for step, central in numbers.central.items():
        if not math.isfinite(central):
            continue
        size = max(abs(numbers.auto), abs(central), numbers.spread, 1e-300)
        gap = abs(numbers.auto - central)
        noise = ROUNDING * FLOAT64_EPS * max(abs(loss), 1e-30) / step
        best = min(best, gap / size)
        agrees = agrees or gap <= SCREEN_RTOL * size + noise
    return best, agrees


def _measure(
    mover: _Mover, units: list[Unit], loss: float, *, finer: bool = True
) -> tuple[_Numbers, float, bool]:
    """Coarse step first; the finer one only when the coarse disagrees (a kink, a bend).

    Inside a halving the finer step is skipped: a half that disagrees is halved again
    anyway, and a kink that fooled the coarse step ends at the per-tensor probes, which
    step around kinks; at 1e-7 that is rare, and every level of a wrong tensor saves 2.
    """
    numbers = mover.numbers(units, (mover.step,))
    error, agrees = _error(numbers, loss)
    if not agrees and finer:
        fine = mover.step / SHRINK
        both = {**numbers.central, fine: mover.central(units, fine)}
        numbers = _Numbers(numbers.auto, both, numbers.spread)
        error, agrees = _error(numbers, loss)
    return numbers, error, agrees


def _rest(whole: _Numbers, part: _Numbers, units: list[Unit], k: int) -> _Numbers:
    """The other half's numbers: the group's minus the measured half's."""
    central = {s: whole.central[s] - part.central[s] for s in whole.central if s in part.central}
    parts = [unit.parts[k] for unit in units]
    return _Numbers(whole.auto - part.auto, central, math.sqrt(sum(p * p for p in parts)))


def _bisect(
    mover: _Mover, units: list[Unit], numbers: _Numbers, loss: float, found: Search
) -> None:
    """`units` disagree as a group: split until every disagreeing tensor stands alone."""
    if len(units) == 1:
        found.suspects.append(units[0])
        return
    half = len(units) // 2
    first, second = units[:half], units[half:]
    first_numbers, first_error, first_agrees = _measure(mover, first, loss, finer=False)
    second_numbers = _rest(numbers, first_numbers, second, mover.k)
    second_error, second_agrees = _error(second_numbers, loss)
    for part, part_numbers, error, agrees in (
        (first, first_numbers, first_error, first_agrees),
        (second, second_numbers, second_error, second_agrees),
    ):
        if agrees:
            found.cleared.append(Cleared(tuple(part), error))
        else:
            _bisect(mover, part, part_numbers, loss, found)


def _screen_then_bisect(mover: _Mover, units: list[Unit], loss: float, found: Search) -> None:
    numbers, error, agrees = _measure(mover, units, loss)
    if agrees:
        found.cleared.append(Cleared(tuple(units), error))
    else:
        _bisect(mover, units, numbers, loss, found)


def find_mismatches(
    objective: Any, units: list[Unit], loss: float, *, directions: int, seed: int
) -> Search:
    """Tensors (with a gradient) whose autograd derivative may disagree with the loss's.

    Each direction screens the tensors not yet suspected; an independent second
    direction catches what the first happened to miss (a wrong gradient nearly
    orthogonal to it). Later directions re-clear tensors: a tensor's `error` is the worst
    over the groups that cleared it.
    """
    found = Search()
    start = objective.passes
    remaining = list(units)
    for k in range(max(directions, 1)):
        if not remaining:
            break
        mover = _Mover(objective, remaining, k, seed)
        before = len(found.suspects)
        _screen_then_bisect(mover, remaining, loss, found)
        named = {id(u) for u in found.suspects[before:]}
        remaining = [u for u in remaining if id(u) not in named]
        del mover  # its direction is as large as the model in float32
    found.passes = objective.passes - start
    return found


def _moves_loss(objective: Any, units: list[Unit], loss: float, seed: int) -> bool:
    """Does moving these tensors change the loss: a small random step, then a large one?"""
    floor = NOISE_RTOL * max(abs(loss), 1e-30)
    mover = _Mover(objective, units, -1, seed)
    # A loss piecewise constant in them (an integer cast, round) shows nothing at a small
    # step: every coordinate by +-JUMP x its tensor's rms reveals it.
    for step in (STEP, -STEP, JUMP, -JUMP):
        moved = mover.loss_at(units, step)
        if not math.isfinite(moved) or abs(moved - loss) > floor:
            return True
    return False


def find_dependent(objective: Any, units: list[Unit], loss: float, *, seed: int) -> Search:
    """Tensors without gradient that the loss may depend on, halved down to single ones."""
    found = Search()
    start = objective.passes

    def search(group: list[Unit]) -> None:
        if not _moves_loss(objective, group, loss, seed):
            found.cleared.append(Cleared(tuple(group), 0.0))
        elif len(group) == 1:
            found.suspects.append(group[0])
        else:
            search(group[: len(group) // 2])
            search(group[len(group) // 2 :])

    if units:
        search(list(units))
    found.passes = objective.passes - start
    return found
