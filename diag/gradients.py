"""Numerical gradient checks on a `Probe`: the evidence behind the [grads] rules.

`check_gradients` compares autograd's gradient of the loss with central finite
differences on a float64 copy of the model in eval mode. One backward pass gives every
gradient; `diag.gradient_search` compares directional derivatives over groups of tensors
and halves the groups that disagree, so a healthy model costs a handful of forward
passes whatever its size. The tensors it singles out get the per-tensor probes here: a
few random unit directions (autograd's g·v against the difference quotient of the loss
along v) and a few single coordinates, instead of gradcheck's two passes per element. A
wrong backward shows as a relative error near 1; float noise and ReLU/max-pool kinks
stay orders of magnitude below (see the margins in tests/test_gradients.py).

`batch_mixing` backpropagates one sample's output to the whole input batch: in eval
mode nothing else may receive a gradient, or the model mixes samples. For a causal
language model it also backpropagates the output at one position to the whole sequence:
nothing after that position may receive a gradient, or the model sees the future. Token
ids are differentiated at their embedding's output (`diag.embeddings`).

Both are pure functions of the probe: they never modify the user's model, print, or
leave the global RNG changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from diag.probe import main_output

if TYPE_CHECKING:
    import torch

    from diag.probe import Probe

# Above 1e-2 a gradient is wrong (CS231n's scale). Measured: healthy models stay below 1e-4
# (trained digits CNNs <= 2.7e-6 over 3 seeds x 3 SIMD capabilities, a ResNet-18 1.3e-5,
# ReLUs sitting on their kink 7e-5); the planted wrong backwards give 0.034 (half of an
# input gradient zeroed, seen upstream), 0.5 (a lost factor 2) and more.
MISMATCH_RTOL = 1e-2
# Each coordinate moves by at most STEP x the tensor's rms: small enough to rarely cross a
# ReLU kink (1e-3 crossed kinks all the time on digits), large enough that float64
# round-off in the loss stays ~1e-7 of the signal.
STEP = 1e-5
SHRINK = 4  # the second, finer step (h / 4) used when the first disagrees
# Agreement within this is accepted at once; two central differences (h, h/4) further apart
# than this mean a kink lies inside the step, so the probe is redrawn rather than trusted.
KINK_RTOL = 1e-4
KINK_RETRIES = 3
# A probe that met no kink and is this far past MISMATCH_RTOL settles a suspect: the
# verdict is the worst reading, so more probes could not take it back. On a 124M-parameter
# model each further probe is 4 float64 forward passes (3 F). Nearer the threshold every
# probe in the plan is made, so the mild faults keep their full evidence.
SETTLED_RTOL = 10 * MISMATCH_RTOL
# Loss changes below this fraction of |loss| count as zero: float64 forward noise is
# ~1e-15 relative, so this floor is far above it yet far below any real dependence.
NOISE_RTOL = 1e-11
MIN_SCALE = 1e-3  # step base for an all-zero tensor (a zero-initialised bias)
# A cut tensor whose loss is piecewise constant (an integer cast, round) shows no change at
# STEP; moving each coordinate by half the tensor's scale reveals the dependence.
JUMP = 0.5
# In eval mode another sample's input gradient is exactly zero unless samples mix; the
# planted mixers give ratios of 1e-2 and more.
LEAK_RTOL = 1e-6

VERDICTS = ("ok", "mismatch", "disconnected", "unused", "frozen")


@dataclass(frozen=True)
class TensorGradient:
    """What the check found for one parameter tensor.

    `autograd[i]` and `numerical[i]` are the derivative of the loss along probe i (random
    unit directions first, then single coordinates: the largest-|grad| one, then random
    ones). `relative_error` is the worst probe's |auto - num| / max(|auto|, |num|, floor).
    `kinks` counts probes redrawn because the two step sizes disagreed.

    Most tensors are never probed alone: `group` > 0 says the tensor was cleared inside a
    group of that many (the smallest such group) whose directional derivatives agreed, or
    whose move left the loss unchanged; `relative_error` is then the worst of those
    groups', `autograd`/`numerical` are empty, and the passes are counted on the report.
    `group` = 0: the search singled the tensor out and these are its own probes. `tied`
    names the other names of the same parameter (GPT-2's `wte` and `lm_head`).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    autograd: tuple[float, ...]
    numerical: tuple[float, ...]
    relative_error: float
    grad_none: bool
    grad_zero: bool
    depends: bool
    verdict: str
    kinks: int = 0
    forward_passes: int = 0
    group: int = 0
    tied: tuple[str, ...] = ()


@dataclass(frozen=True)
class Leak:
    """Sample `output_sample`'s output has a gradient on sample `input_sample`'s input."""

    output_sample: int
    input_sample: int
    ratio: float  # that gradient's norm over the norm of the gradient on its own input


@dataclass(frozen=True)
class FutureLeak:
    """The output at `position` of sample `sample` has a gradient on a later position."""

    sample: int
    position: int
    ratio: float  # the gradient's norm on later positions over its norm on positions <= it


@dataclass(frozen=True)
class BatchMixing:
    """Whether outputs depend on other samples' inputs (eval mode), and on later positions.

    `checked` is False when the check cannot apply, and `reason` says why (a batch of one,
    an output without batch dimension, no input to differentiate). `via` says where the
    inputs were differentiated: "inputs", or "embedding" for token ids. For a causal model
    `positions_checked` says whether the sequence check applied (`position_reason` why
    not), `future` lists outputs that depend on later tokens.
    """

    checked: bool
    reason: str
    samples: tuple[int, ...]
    worst_ratio: float
    leaks: tuple[Leak, ...]
    threshold: float = LEAK_RTOL
    via: str = "inputs"
    positions_checked: bool = False
    position_reason: str = ""
    positions: tuple[int, ...] = ()
    worst_future: float = 0.0
    future: tuple[FutureLeak, ...] = ()

    @property
    def mixed(self) -> bool:
        return bool(self.leaks)

    @property
    def sees_future(self) -> bool:
        return bool(self.future)


# ---------------------------------------------------------------------------- plumbing


class _Objective:
    """The probe's loss on a float64 eval copy, re-seeded before every forward pass."""

    def __init__(self, probe: Probe, seed: int) -> None:
        import torch

        if probe.loss_fn is None or probe.targets is None:
            raise ValueError("the gradient check needs a batch with targets and a loss")
        self.probe, self.seed = probe, seed
        self.model = probe.copy_model(torch.float64)
        self.inputs = probe.cast_inputs(torch.float64)
        targets = probe.targets
        self.targets = targets.double() if targets.is_floating_point() else targets
        self.passes = 0

    def loss(self) -> torch.Tensor:
        import torch

        torch.manual_seed(self.seed)  # any randomness left in eval mode repeats exactly
        self.passes += 1
        output = self.probe.forward(self.model, self.inputs)
        assert self.probe.loss_fn is not None
        return self.probe.loss_fn(output, self.targets)

    def value(self) -> float:
        import torch

        with torch.no_grad():
            return float(self.loss())


@contextmanager
def _private_rng() -> Iterator[None]:
    """Seeding inside the check must not change the caller's random stream."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


def _relative(a: float, b: float, floor: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), floor)


def _loss_at(objective: _Objective, param: Any, point: Any) -> float:
    import torch

    with torch.no_grad():
        param.copy_(point)
    return objective.value()


@dataclass(frozen=True)
class _Quotients:
    central: float  # (L(p + hv) - L(p - hv)) / 2h
    right: float  # (L(p + hv) - L(p)) / h
    left: float  # (L(p) - L(p - hv)) / h


def _quotients(
    objective: _Objective, param: Any, origin: Any, v: Any, step: float, loss: float
) -> _Quotients:
    """Difference quotients of the loss along v, leaving `param` back at `origin`."""
    up = _loss_at(objective, param, origin + step * v)
    down = _loss_at(objective, param, origin - step * v)
    _restore(param, origin)
    return _Quotients((up - down) / (2 * step), (up - loss) / step, (loss - down) / step)


def _outside(value: float, a: float, b: float, floor: float) -> float:
    """Relative distance of `value` from the interval between a and b (0 inside it)."""
    lo, hi = min(a, b), max(a, b)
    return max(lo - value, value - hi, 0.0) / max(abs(value), abs(lo), abs(hi), floor)


def _restore(param: Any, origin: Any) -> None:
    import torch

    with torch.no_grad():
        param.copy_(origin)


# ---------------------------------------------------------------------- gradient check


@dataclass(frozen=True)
class _Reading:
    auto: float  # g·v
    numerical: float  # the central quotient closer to it (step h or h/4)
    error: float
    redraw: bool  # the step straddled a kink: the probe says nothing
    on_kink: bool  # the point sits on a kink: judged against the one-sided quotients
    depends: bool  # the loss moved clearly above float noise


def _draw(kind: str, grad: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A unit probe: a random direction, the largest-|grad| coordinate, or a random one."""
    import torch

    if kind == "direction":
        v = torch.randn(grad.shape, generator=gen, dtype=grad.dtype)
        return v / v.norm()
    v = torch.zeros(grad.shape, dtype=grad.dtype)  # contiguous, whatever grad's strides
    if kind == "largest" and bool(grad.any()):
        index = int(grad.abs().argmax())
    else:
        index = int(torch.randint(grad.numel(), (1,), generator=gen))
    v.view(-1)[index] = 1.0
    return v


def _measure(
    objective: _Objective, param: Any, origin: Any, grad: Any, v: Any, move: float, loss: float
) -> _Reading:
    """Autograd's g·v against the loss's difference quotients along v.

    Agreement with the central quotient at step h or h/4 is accepted: a kink crossed at h
    is usually not crossed at h/4. When both disagree with autograd
    - and with each other, a kink lies inside even the finer step: redraw the probe;
    - but agree with each other, autograd is wrong unless it lies between the one-sided
      quotients. On a smooth piece they are h * curvature apart, so this changes nothing;
      when the point sits exactly on a kink (a ReLU at 0: a zero image region through a
      bias-free conv and a fresh BatchNorm) they differ, and autograd may return any slope
      between them (`on_kink`).
    """
    step = move / float(v.abs().max())  # no coordinate moves by more than `move`
    floor = NOISE_RTOL * max(abs(loss), 1e-30) / step  # below this the loss moved by noise only
    auto = float((grad * v).sum())
    coarse = _quotients(objective, param, origin, v, step, loss)
    error = _relative(auto, coarse.central, floor)
    if error <= KINK_RTOL:
        return _Reading(auto, coarse.central, error, False, False, abs(coarse.central) > floor)
    fine = _quotients(objective, param, origin, v, step / SHRINK, loss)
    depends = max(abs(coarse.central), abs(fine.central)) > floor
    fine_error = _relative(auto, fine.central, floor)
    if fine_error < error:
        error, numerical = fine_error, fine.central
    else:
        numerical = coarse.central
    if error <= KINK_RTOL:
        return _Reading(auto, numerical, error, False, False, depends)
    if _relative(coarse.central, fine.central, floor) > KINK_RTOL:
        # Kinks inside the step: the central quotients mix slopes, so their distance from
        # autograd is no evidence (measured up to 7e-3 on a healthy CNN). Autograd's slope
        # is one of the one-sided slopes at the point, so only its distance from them
        # counts; the probe is redrawn, and this is what stays if every redraw meets kinks.
        error = min(error, _outside(auto, fine.left, fine.right, floor))
        return _Reading(auto, numerical, error, True, False, depends)
    on_kink = _relative(fine.left, fine.right, floor) > KINK_RTOL
    error = min(error, _outside(auto, fine.left, fine.right, floor))
    return _Reading(auto, numerical, error, False, on_kink, depends)


def _moves_loss(
    objective: _Objective, param: Any, origin: Any, gen: Any, move: float, loss: float
) -> bool:
    """Does a large move (every coordinate by +-move) change the loss at all?

    Only asked of tensors without gradient whose small steps showed nothing: a loss that
    is piecewise constant in them (an integer cast, `round`) still depends on them.
    """
    import torch

    signs = torch.randint(0, 2, origin.shape, generator=gen, dtype=origin.dtype) * 2 - 1
    try:
        for sign in (1.0, -1.0):
            moved = _loss_at(objective, param, origin + sign * move * signs)
            if not math.isfinite(moved) or abs(moved - loss) > NOISE_RTOL * max(abs(loss), 1e-30):
                return True
        return False
    finally:
        _restore(param, origin)


def _plan(directions: int, spot_checks: int) -> list[str]:
    spots = ["largest", *["random"] * (spot_checks - 1)] if spot_checks > 0 else []
    return ["direction"] * directions + spots


def _verdict(grad_none: bool, grad_zero: bool, depends: bool, error: float) -> str:
    if grad_none or grad_zero:
        return "disconnected" if depends else "unused"
    return "mismatch" if error > MISMATCH_RTOL else "ok"


def _probe(
    objective: _Objective,
    param: Any,
    origin: Any,
    grad: Any,
    kind: str,
    move: float,
    loss: float,
    gen: Any,
) -> tuple[_Reading, int]:
    """One probe of `kind`, redrawn while kinks make it inconclusive; also the kinks met.

    A step straddling a kink is redrawn in the same way (a largest-|grad| coordinate by a
    random one). On a kink, a random direction mixes units that switch on at +h with
    units that switch on at -h, so autograd's slope need not lie between the one-sided
    ones; along a single coordinate it does, so such a probe is redrawn as a coordinate.
    """
    met = 0
    for _ in range(KINK_RETRIES + 1):
        reading = _measure(objective, param, origin, grad, _draw(kind, grad, gen), move, loss)
        met += reading.redraw or reading.on_kink
        if not (reading.redraw or (reading.on_kink and reading.error > KINK_RTOL)):
            break
        kind = "random" if reading.on_kink or kind == "largest" else kind
    return reading, met


def _check_tensor(
    objective: _Objective,
    name: str,
    param: Any,
    grad: Any,
    loss: float,
    plan: list[str],
    gen: Any,
) -> TensorGradient:
    import torch

    start = objective.passes
    origin = param.detach().clone()
    g = torch.zeros_like(origin) if grad is None else grad.detach()
    grad_zero = grad is not None and not bool(g.any())
    tensor_scale = max(float(origin.pow(2).mean().sqrt()), MIN_SCALE)
    move = STEP * tensor_scale
    readings, kinks = [], 0
    for kind in plan:
        reading, met = _probe(objective, param, origin, g, kind, move, loss, gen)
        readings.append(reading)
        kinks += met
        if not (reading.redraw or reading.on_kink) and reading.error > SETTLED_RTOL:
            break
    depends = any(r.depends for r in readings)
    if (grad is None or grad_zero) and not depends:
        depends = _moves_loss(objective, param, origin, gen, JUMP * tensor_scale, loss)
    error = max((r.error for r in readings), default=0.0)
    return TensorGradient(
        name=name,
        shape=tuple(origin.shape),
        numel=origin.numel(),
        autograd=tuple(r.auto for r in readings),
        numerical=tuple(r.numerical for r in readings),
        relative_error=error,
        grad_none=grad is None,
        grad_zero=grad_zero,
        depends=depends,
        verdict=_verdict(grad is None, grad_zero, depends, error),
        kinks=kinks,
        forward_passes=objective.passes - start,
    )


def _frozen(name: str, param: Any) -> TensorGradient:
    return TensorGradient(
        name=name,
        shape=tuple(param.shape),
        numel=param.numel(),
        autograd=(),
        numerical=(),
        relative_error=0.0,
        grad_none=True,
        grad_zero=False,
        depends=False,
        verdict="frozen",
    )


def _autograd(objective: _Objective, units: list[Any]) -> float:
    """The loss, and every unit's gradient from a single backward pass (on `unit.grad`).

    Each gradient is stored (compactly, `_keep`) the moment autograd has summed it, and
    dropped from the float64 copy: the full float64 gradient never exists at once.
    """
    import torch

    with torch.enable_grad():
        loss = objective.loss()
    if loss.numel() != 1:
        raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ValueError(f"the loss is not finite on the batch ({value})")
    if not loss.requires_grad or not units:  # every path from the parameters is cut
        return value

    def keeper(unit: Any) -> Any:
        def hook(param: Any) -> None:
            _keep(unit, param.grad)
            param.grad = None

        return hook

    handles = [u.param.register_post_accumulate_grad_hook(keeper(u)) for u in units]
    try:
        loss.reshape(()).backward(inputs=[u.param for u in units])
    finally:
        for handle in handles:
            handle.remove()
    return value


@dataclass(frozen=True)
class GradientReport:
    """Every tensor's verdict, and what the check cost: passes of the float64 copy.

    `suspects` counts the tensors the search singled out for per-tensor probes.
    """

    tensors: list[TensorGradient]
    forward_passes: int
    backward_passes: int
    suspects: int


def check_gradients(
    probe: Probe, *, directions: int = 2, spot_checks: int = 2, seed: int = 0
) -> list[TensorGradient]:
    """Autograd against finite differences for every parameter tensor of the probe.

    Runs on a float64 copy in eval mode with fixed seeds; the user's model is not
    touched. Tensors with `requires_grad=False` are listed with verdict "frozen"; tied
    tensors (one parameter under several names) are checked once and listed under each
    name. Raises ValueError when the probe has no loss or its loss is not a finite scalar.
    """
    return gradient_report(probe, directions=directions, spot_checks=spot_checks, seed=seed).tensors


def gradient_report(
    probe: Probe, *, directions: int = 2, spot_checks: int = 2, seed: int = 0
) -> GradientReport:
    """`check_gradients` with its cost.

    One backward pass gives every gradient; `diag.gradient_search` then compares
    directional derivatives over groups of tensors (`directions` independent ones) and
    halves the groups that disagree, and only the tensors it singles out get the
    per-tensor probes (`directions` random directions and `spot_checks` coordinates).
    """
    from diag.gradient_search import find_dependent, find_mismatches

    with _private_rng():
        objective = _Objective(probe, seed)
        units, frozen = _units(objective, probe)
        _autograd(objective, units)
        loss = objective.value()  # the no-grad baseline every quotient starts from
        live = [unit for unit in units if unit.grad is not None and bool(unit.grad.any())]
        dead = [unit for unit in units if unit not in live]
        mismatches = find_mismatches(objective, live, loss, directions=directions, seed=seed)
        dependent = find_dependent(objective, dead, loss, seed=seed)
        suspects = {id(u) for u in mismatches.suspects + dependent.suspects}
        cleared = _cleared_errors(mismatches.cleared + dependent.cleared)
        plan = _plan(directions, spot_checks)
        results = {name: _frozen(name, param) for name, param in frozen}
        for unit in units:
            if id(unit) in suspects:
                found = _examine(objective, unit, loss, plan, seed)
            else:
                found = _cleared(unit, *cleared[id(unit)])
            for name in unit.names:
                tied = tuple(n for n in unit.names if n != name)
                results[name] = replace(found, name=name, tied=tied)
    order = [name for name, _ in probe.model.named_parameters(remove_duplicate=False)]
    return GradientReport([results[n] for n in order], objective.passes, 1, len(suspects))


def _units(objective: _Objective, probe: Probe) -> tuple[list[Any], list[tuple[str, Any]]]:
    """One unit per trainable parameter object (tied names together), and the frozen ones."""
    from diag.gradient_search import Unit

    originals = dict(probe.model.named_parameters(remove_duplicate=False))
    units: dict[int, Unit] = {}
    frozen, seen = [], {}
    for name, param in objective.model.named_parameters(remove_duplicate=False):
        # the index a tensor had before tied names were listed: its probes' seed
        index = seen.setdefault(id(param), len(seen))
        if not param.requires_grad:
            frozen.append((name, param))
        elif id(param) in units:
            unit = units[id(param)]
            unit.names = (*unit.names, name)
        else:
            scale = max(float(param.detach().pow(2).mean().sqrt()), MIN_SCALE)
            units[id(param)] = Unit((name,), index, param, originals[name].detach(), scale=scale)
    return list(units.values()), frozen


def _keep(unit: Any, grad: Any) -> None:
    """Store autograd's gradient on the unit, compactly.

    float32 halves the memory of a float32 model's gradients; its rounding (6e-8) is far
    below every tolerance. A gradient float32 would flush to zero or overflow stays float64.
    """
    import torch

    if grad is None:
        return
    grad = grad.detach()
    nonzero = bool(grad.any())
    if unit.origin.dtype != torch.float64:
        small = grad.to(torch.float32)
        if bool(small.any()) == nonzero and bool(
            small.isfinite().all() or not grad.isfinite().all()
        ):
            grad = small
    unit.grad = grad


def _cleared_errors(groups: list[Any]) -> dict[int, tuple[float, int]]:
    """Per unit: the worst error over the groups that cleared it, and the smallest group."""
    out: dict[int, tuple[float, int]] = {}
    for group in groups:
        for unit in group.units:
            error, size = out.get(id(unit), (0.0, len(group.units)))
            out[id(unit)] = (max(error, group.error), min(size, len(group.units)))
    return out


def _examine(objective: _Objective, unit: Any, loss: float, plan: list[str], seed: int) -> Any:
    """The per-tensor probes of one suspect (a generator per tensor, as it always had)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + unit.index)
    grad = None if unit.grad is None else unit.grad.to(unit.param.dtype)
    return _check_tensor(objective, unit.names[0], unit.param, grad, loss, plan, gen)


def _cleared(unit: Any, error: float, group: int) -> TensorGradient:
    """A tensor whose group agreed (with a gradient) or left the loss unchanged (without)."""
    grad_none = unit.grad is None
    grad_zero = not grad_none and not bool(unit.grad.any())
    return TensorGradient(
        name=unit.names[0],
        shape=tuple(unit.param.shape),
        numel=unit.param.numel(),
        autograd=(),
        numerical=(),
        relative_error=error,
        grad_none=grad_none,
        grad_zero=grad_zero,
        depends=not (grad_none or grad_zero),
        verdict=_verdict(grad_none, grad_zero, False, error),
        group=group,
    )


# ------------------------------------------------------------------------ batch mixing


def _not_checked(reason: str) -> BatchMixing:
    return BatchMixing(checked=False, reason=reason, samples=(), worst_ratio=0.0, leaks=())


def _leaf_inputs(probe: Probe, batch: int) -> tuple[Any, list[Any]]:
    """The inputs in float64, those with a batch dimension made differentiable leaves."""
    import torch

    def leaf(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.ndim > 0 and t.shape[0] == batch:
            return t.detach().clone().requires_grad_()
        return t

    cast = probe.cast_inputs(torch.float64)
    inputs = (
        {k: leaf(v) for k, v in cast.items()} if isinstance(cast, dict) else tuple(map(leaf, cast))
    )
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return inputs, [t for t in values if t.requires_grad]


def _input_gradients(output: Any, index: Any, leaves: list[Any], gen: Any) -> list[Any]:
    """Gradients of a random projection of output[index] on every leaf (zeros if unused)."""
    import torch

    # A random projection rather than a plain sum: an output that sums to a constant
    # (softmax probabilities) would otherwise have no gradient at all.
    picked = output[index]
    weights = torch.randn(picked.shape, generator=gen, dtype=output.dtype)
    grads = torch.autograd.grad(
        (picked * weights).sum(), leaves, retain_graph=True, allow_unused=True
    )
    return [
        torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, leaves, strict=True)
    ]


def _per_sample_norms(grads: list[Any], batch: int) -> Any:
    import torch

    total = torch.zeros(batch, dtype=torch.float64)
    for g in grads:
        total += g.reshape(batch, -1).pow(2).sum(1)
    return total.sqrt()


def _leaks_from(k: int, norms: Any) -> list[Leak]:
    own = float(norms[k])
    found = []
    for j, other in enumerate(norms.tolist()):
        if j != k and other > 0:
            found.append(Leak(k, j, other / own if own > 0 else math.inf))
    return found


def _sequence_leaves(output: Any, leaves: list[Any]) -> tuple[list[Any], str]:
    """The leaves laid out (batch, positions, ...) like the output, or why there are none."""
    if output.ndim < 3:
        return [], f"the output has no positions (shape {tuple(output.shape)})"
    length = output.shape[1]
    chosen = [x for x in leaves if x.ndim >= 2 and x.shape[1] == length]
    if not chosen:
        return [], f"no input has the output's {length} positions"
    return chosen, ""


def _future_leak(output: Any, k: int, t: int, leaves: list[Any], gen: Any) -> float:
    """How much output[k, t] depends on positions after t, relative to those up to t."""
    grads = _input_gradients(output, (k, t), leaves, gen)
    past = sum(float(g[k, : t + 1].pow(2).sum()) for g in grads)
    future = sum(float(g[k, t + 1 :].pow(2).sum()) for g in grads)
    if future == 0:
        return 0.0
    return math.sqrt(future / past) if past > 0 else math.inf


def _differentiable_output(probe: Probe, model: Any, batch: int) -> tuple[Any, list[Any], str]:
    """The main output with grad, the leaves it was differentiated on, and where they are."""
    import torch

    from diag.embeddings import embedding_tap, token_tensors

    inputs, leaves = _leaf_inputs(probe, batch)
    with embedding_tap(model) as tap:
        if not leaves:
            tap.arm("leaf", token_tensors(inputs, batch))
        with torch.enable_grad():
            output = main_output(probe.forward(model, inputs))
    if leaves:
        return output, leaves, "inputs"
    return output, [x for x in tap.leaves if x.ndim > 0 and x.shape[0] == batch], "embedding"


def batch_mixing(probe: Probe, *, samples: int = 2, seed: int = 0) -> BatchMixing:
    """Do outputs depend on other samples' inputs (or, causal models, on later tokens)?

    Checked in eval mode, in float64. For a few samples k, the gradient of (a random
    projection of) output[k] is taken with respect to every input in the batch; any other
    sample's share above `LEAK_RTOL` of sample k's own is a leak. For a causal model the
    gradient of output[k, t] (t = the first position and the middle one) on positions
    after t must be zero the same way.
    """
    import torch

    batch = probe.batch_size
    if batch < 2 and not probe.causal:
        return _not_checked("a batch of one sample cannot mix")
    with _private_rng():
        torch.manual_seed(seed)
        model = probe.copy_model(torch.float64)
        output, leaves, via = _differentiable_output(probe, model, batch)
        if not leaves:
            return _not_checked(
                "no floating-point input with a batch dimension, and no embedding reads "
                "the integer inputs"
            )
        if output is None or output.ndim == 0 or output.shape[0] != batch:
            shape = None if output is None else tuple(output.shape)
            return _not_checked(f"the output has no batch dimension (shape {shape})")
        if not output.requires_grad:
            return _not_checked(f"the output does not depend on the {via} it was given")
        gen = torch.Generator().manual_seed(seed)
        chosen = sorted(torch.randperm(batch, generator=gen)[:samples].tolist())
        seen = [
            leak
            for k in chosen
            for leak in _leaks_from(
                k, _per_sample_norms(_input_gradients(output, k, leaves, gen), batch)
            )
        ]
        sequence = _sequence_check(probe, output, leaves, chosen, gen)
    worst = max((leak.ratio for leak in seen), default=0.0)
    leaks = tuple(leak for leak in seen if leak.ratio > LEAK_RTOL)
    return BatchMixing(True, "", tuple(chosen), worst, leaks, via=via, **sequence)


def _sequence_check(
    probe: Probe, output: Any, leaves: list[Any], chosen: list[int], gen: Any
) -> dict[str, Any]:
    """The causal half of `batch_mixing`: BatchMixing's position fields."""
    if not probe.causal:
        return {}
    sequence, reason = _sequence_leaves(output, leaves)
    if not sequence:
        return {"position_reason": reason}
    length = output.shape[1]
    positions = tuple(sorted({0, (length - 1) // 2})) if length > 1 else ()
    ratios = [
        FutureLeak(k, t, _future_leak(output, k, t, sequence, gen))
        for k in chosen
        for t in positions
    ]
    return {
        "positions_checked": bool(positions),
        "position_reason": "" if positions else "a sequence of one position",
        "positions": positions,
        "worst_future": max((r.ratio for r in ratios), default=0.0),
        "future": tuple(r for r in ratios if r.ratio > LEAK_RTOL),
    }
