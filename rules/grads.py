"""[grads] rules: what running the model on a batch says about backprop and the units.

Every rule works on copies of the probe's model, in eval mode with fixed seeds, so
BatchNorm uses its running statistics and dropout is off: no false alarm comes from
randomness. The numerical work lives in `diag.gradients` and `diag.activations`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from diag.model import Finding, Location, Severity
from diag.probe import Probe
from diag.registry import rule


@dataclass(frozen=True)
class Cost:
    """The most passes of the model a rule makes on the batch, whatever the model's size.

    Passes are counted on the model, in the precision named; a float64 pass costs about
    two float32 ones on a CPU. `samples` caps the batch rows a pass sees (None: all of them).
    """

    forward: int
    backward: int
    precision: str = "float32"
    samples: int | None = None
    tokens: int | None = None  # positions per sample, for a causal language model


OVERFIT_STEPS = 50
OVERFIT_SAMPLES = 8
# Fan-in up to which a weight takes overfit-one-batch's full step: with the full step on
# every layer an untrained 12-block, 768-wide GPT-2 was still at 21% after 50 steps; 64
# brings it under 5% in about 26, and the calibration models stay as fast.
OVERFIT_WIDTH = 64
# Tokens per sample a causal language model is overfitted on: a GPT-2-small shape spends
# most of a pass in its 50,257-way output layer, so the cost is linear in tokens, and 32
# positions of a few samples are as easy to memorise as 64 (measured: 2 x 32 tokens
# reach the target in fewer steps than 2 x 64). The first positions of a causal model
# depend only on each other, so the cut leaves the task what it was.
OVERFIT_TOKENS = 32
MIXING_SAMPLES = 2  # diag.gradients.batch_mixing's default
# What each probe rule costs at its default options; its docs say the same in words, and
# tests/test_probe_budgets.py counts the passes on real models. The activation recording
# that saturated-activations and dead-units share is one forward pass, made once.
COSTS = {
    "init-loss": Cost(forward=1, backward=0),
    "input-independence": Cost(forward=4, backward=0, precision="float64"),
    "batch-mixing": Cost(forward=1, backward=3 * MIXING_SAMPLES, precision="float64"),
    "overfit-one-batch": Cost(
        forward=OVERFIT_STEPS + 1,
        backward=OVERFIT_STEPS,
        samples=OVERFIT_SAMPLES,
        tokens=OVERFIT_TOKENS,
    ),
    "probe: activations": Cost(forward=1, backward=0),
}


def _where(probe: Probe, obj: str, **details: Any) -> Location:
    return Location(probe.source, obj, details)


# ------------------------------------------------------------------ init-loss


@rule(name="init-loss", group="grads", severity=Severity.WARNING, needs=("probe_init",))
def init_loss(probe_init: Probe, *, tolerance: float = 0.5) -> Iterator[Finding]:
    """The loss of the initial model far from what the task implies.

    ## What it does
    Loads the `--init` weights into a copy of the model and computes the loss on the
    batch. For cross-entropy over C classes an untrained network should predict about
    uniformly, giving a loss near ln(C); the rule fires when the initial loss is more
    than `tolerance` x ln(C) away from it. For a language model C is the vocabulary and
    the loss is the next-token cross-entropy over the batch's tokens.

    ## Cost
    One forward pass without gradients, on a copy made straight from the `--init` weights
    (the trained weights are not copied): memory is the model plus one copy.

    ## Why is this bad?
    An initial loss far above ln(C) means the network starts confidently wrong: logits
    too large (weights initialised too big, a missing normalisation, a final layer with
    a large bias). The first steps are spent undoing that, gradients are large, and
    training may diverge or saturate units for good. A loss far below ln(C) at step 0
    is suspicious in another way: the labels may leak into the inputs.

    ## How to fix
    Use the framework's default (fan-in scaled) initialisation, initialise the last
    layer small (or to zero) and its bias to the log class frequencies, and normalise
    the inputs.
    """
    import torch

    from diag.probe import main_output

    targets = probe_init.targets
    if targets is None or targets.is_floating_point() or probe_init.loss_fn is None:
        return  # only classification has a known starting loss
    if "cross_entropy" not in probe_init.loss_name:
        return
    try:
        model = probe_init.copy_model(weights=probe_init.initial or {})
    except RuntimeError:
        return  # the probe loader already checked; a mismatch here is not this rule's
    torch.manual_seed(0)
    with torch.no_grad():
        output = probe_init.forward(model)
        # the probe's own cross-entropy: it reads `logits` and flattens per-token layouts
        loss = float(probe_init.loss_fn(output, targets))
    classes = int(main_output(output).shape[-1])
    if classes < 2:
        return
    expected = math.log(classes)
    if math.isfinite(loss) and abs(loss - expected) <= tolerance * expected:
        return
    yield Finding(
        message=(
            f"the initial model's loss on the batch is {loss:.4g}; with {classes} classes an "
            f"untrained model should be near ln({classes}) = {expected:.3f}"
        ),
        location=_where(probe_init, "loss", batch=probe_init.batch_path),
        evidence={"initial_loss": loss, "expected": expected, "classes": classes},
    )


# ------------------------------------------------------------------ input-independence


@rule(name="input-independence", group="grads", severity=Severity.ERROR, needs=("probe",))
def input_independence(probe: Probe, *, rtol: float = 1e-4) -> Iterator[Finding]:
    """A model whose output barely changes when its input is zeroed or shuffled.

    ## What it does
    Runs the model on the batch, on the batch with every input zeroed, and with the
    samples of the batch shuffled. It fires when the outputs are (relative to their own
    size) the same in all three: the model's prediction does not depend on its input.
    Token ids are zeroed where they first become numbers: the output of the embedding
    that reads them (id 0 is a real token); masks are kept.

    ## Cost
    Three forward passes without gradients on a float64 copy (four when integer inputs
    reach no embedding and are zeroed as they are); no backward pass. Memory: the model
    plus its float64 copy.

    ## Why is this bad?
    A network that ignores its input can still lower its loss by learning the label
    prior, so training looks like it works. The usual causes: the input is overwritten
    or detached on the way in, a layer multiplies it by zero, a wrong variable is fed
    forward, or every unit of an early layer is dead.

    ## How to fix
    Follow the input through `forward`: print the activations' spread layer by layer for
    two different samples, look for a constant tensor used in place of the input, and
    check the first layers for dead units (`dead-units`).
    """
    out, zeroed, shuffled = _perturbed_outputs(probe)
    scale = float(out.abs().max()) or 1.0
    spread = float((out - out.mean(0, keepdim=True)).abs().max()) / scale
    to_zero = float((out - zeroed).abs().max()) / scale
    to_shuffled = float((out - shuffled).abs().max()) / scale
    if not all(map(math.isfinite, (spread, to_zero))) or max(spread, to_zero) > rtol:
        return
    yield Finding(
        message=(
            "the model's output does not depend on its input: the same for every sample of "
            f"the batch (spread {spread:.1e} of its size), for zeroed inputs ({to_zero:.1e}) "
            f"and for shuffled ones ({to_shuffled:.1e})"
        ),
        location=_where(probe, "inputs", batch=probe.batch_path),
        evidence={
            "spread": spread,
            "change_when_zeroed": to_zero,
            "change_when_shuffled": to_shuffled,
        },
    )


def _perturbed_outputs(probe: Probe) -> tuple[Any, Any, Any]:
    """The main output on the batch, on the zeroed batch, and on the shuffled batch."""
    import torch

    from diag.embeddings import embedding_tap, token_tensors

    model = probe.copy_model(torch.float64)
    inputs = probe.cast_inputs(torch.float64)
    batch = probe.batch_size
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(0))

    def mapped(fn: Any, keep: Any = lambda name, v: False) -> Any:
        def one(name: Any, v: torch.Tensor) -> torch.Tensor:
            if v.ndim == 0 or v.shape[0] != batch or keep(name, v):
                return v
            return fn(v)

        if isinstance(inputs, dict):
            return {k: one(k, v) for k, v in inputs.items()}
        return tuple(one(i, v) for i, v in enumerate(inputs))

    def integer(name: Any, v: torch.Tensor) -> bool:
        return not v.is_floating_point()

    def mask(name: Any, v: torch.Tensor) -> bool:
        return "mask" in str(name)  # an all-zero attention mask hides every token

    with torch.no_grad(), embedding_tap(model) as tap:
        out = probe.logits(model, inputs)
        tap.arm("zero", token_tensors(inputs, batch))
        zeroed = probe.logits(model, mapped(torch.zeros_like, keep=integer))
        if not tap.hits and token_tensors(inputs, batch):
            # integers no embedding reads (indices, one-hot positions): zeroed as they are
            tap.arm("off", [])
            zeroed = probe.logits(model, mapped(torch.zeros_like, keep=mask))
        tap.arm("off", [])
        shuffled = probe.logits(model, mapped(lambda v: v[perm]))[torch.argsort(perm)]
    return out, zeroed, shuffled


# ------------------------------------------------------------------ overfit-one-batch


@rule(name="overfit-one-batch", group="grads", severity=Severity.WARNING, needs=("probe",))
def overfit_one_batch(
    probe: Probe,
    *,
    steps: int = OVERFIT_STEPS,
    samples: int = OVERFIT_SAMPLES,
    tokens: int = OVERFIT_TOKENS,
    lr: float = 3e-3,
    target: float = 0.05,
) -> Iterator[Finding]:
    """A model that cannot drive its loss close to zero on a single batch.

    ## What it does
    Trains a copy of the model on the first `samples` samples of the batch alone (for a
    causal language model, their first `tokens` positions; eval mode, so dropout and
    BatchNorm's batch statistics do not get in the way) for up to `steps` steps of sign
    descent: each weight moves by `lr` against the sign of its gradient (Adam's first
    step, without the moment estimates that would cost two more copies of the model), a
    layer with more than 64 inputs per unit by `lr` x 64 / fan-in (n coherent steps add
    up n-fold in each output). It judges the trend: it
    fires when the loss never falls below `target` times its starting value and is no
    longer falling fast (over the last fifth of the steps it did not halve). A set-up
    that works reaches the target in tens of steps on a few samples, at any width; one
    that cannot learn levels off well above it. The finding says how far it got.

    ## Cost
    At most `steps` + 1 forward and `steps` backward passes (51 and 50 by default) on at
    most `samples` (8) samples of the batch, and for a causal language model on their
    first `tokens` (32) positions, in float32, stopping as soon as the target is reached;
    whatever the model's size. Memory: the model plus one copy; each gradient
    is kept only as its sign (one byte a weight) from the moment it is complete.

    ## Why is this bad?
    Any network big enough to be worth training can memorise a few samples. If it
    cannot, something between the data and the update is broken: labels that do not
    match the inputs, a loss applied to the wrong thing (a softmax before
    `cross_entropy`, which caps how low the loss can go), a graph cut that leaves most
    parameters without gradient, or an optimisation set-up that cannot move.

    ## How to fix
    Check the loss against its inputs (logits, not probabilities, for `cross_entropy`),
    the labels against the samples, and the other [grads] findings (disconnected
    parameters, wrong gradients). Karpathy's recipe: overfit one batch before anything
    else.
    """
    import torch

    if probe.targets is None or probe.loss_fn is None:
        return
    inputs, targets = _first_samples(probe, samples, tokens)
    torch.manual_seed(0)
    model = probe.copy_model()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    signs = _SignDescent(params)
    losses: list[float] = []
    try:
        # The loss before each step: the first is the start, no extra pass is needed for it.
        while len(losses) < steps:
            loss = probe.loss_fn(probe.forward(model, inputs), targets)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]) or losses[-1] <= target * losses[0]:
                break
            loss.backward()
            del loss
            signs.step(lr)
        else:
            with torch.no_grad():
                losses.append(float(probe.loss_fn(probe.forward(model, inputs), targets)))
    finally:
        signs.close()
    del model, params, signs
    start = losses[0]
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite) if finite else math.inf
    if math.isfinite(best) and best <= target * start:
        return
    recent = max(2, len(losses) // 5)
    fall = _fall(losses[-recent - 1 :])
    if math.isfinite(best) and fall >= 2.0:
        return  # still halving every few steps: slow, not stuck
    yield Finding(
        message=(
            f"trained on {_rows(inputs)} sample(s) of this batch alone for {len(losses) - 1} "
            f"steps, the loss only went from {start:.4g} to {best:.4g} ({best / start:.0%} "
            f"of the start; a working set-up gets below {target:.0%}) and has levelled off"
        ),
        location=_where(probe, "loss", batch=probe.batch_path, loss=probe.loss_name),
        evidence={
            "start": start,
            "best": best,
            "steps": len(losses) - 1,
            "samples": _rows(inputs),
            "ratio": best / start if start else math.inf,
            "recent_fall": fall,
        },
    )


class _SignDescent:
    """Each gradient is reduced to its sign (int8) as soon as autograd has accumulated it,
    and freed; the weights move after the backward pass, since a weight changed during it
    would spoil a node that still holds it (a weight used once detached, once not)."""

    def __init__(self, params: list[Any]) -> None:
        import torch

        self.pending: dict[int, tuple[Any, Any]] = {}

        def keep_sign(param: Any) -> None:
            self.pending[id(param)] = (param, param.grad.sign().to(torch.int8))
            param.grad = None

        self.hooks = [p.register_post_accumulate_grad_hook(keep_sign) for p in params]

    def step(self, lr: float) -> None:
        import torch

        with torch.no_grad():
            for param, sign in self.pending.values():
                fan_in = param.numel() // param.shape[0] if param.ndim >= 2 else 1
                scale = min(1.0, OVERFIT_WIDTH / fan_in)
                param.sub_(sign.to(param.dtype), alpha=lr * scale)
        self.pending.clear()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.pending.clear()


def _fall(losses: list[float]) -> float:
    """How many times over the loss fell across `losses` (1.0: flat or rising)."""
    first, low = losses[0], min(losses)
    if not (math.isfinite(first) and math.isfinite(low)) or low <= 0:
        return math.inf if math.isfinite(first) and low <= 0 < first else 1.0
    return max(first / low, 1.0)


def _first_samples(probe: Probe, samples: int, tokens: int | None = None) -> tuple[Any, Any]:
    """The batch cut to its first `samples` samples (inputs and targets alike), and for a
    causal language model to its first `tokens` positions.

    Only tensors whose first dimension is the batch are cut; when the targets are not laid
    out by sample the batch is kept whole, since they could not be matched to a slice.
    Positions are cut only when the targets and every input that has more than the batch
    dimension are (batch, positions) alike: a 4-D attention mask is left whole, and so
    then is everything.
    """
    batch = probe.batch_size
    targets = probe.targets
    if targets is None or targets.ndim == 0 or targets.shape[0] != batch:
        return probe.inputs, targets
    values = list(probe.inputs.values()) if isinstance(probe.inputs, dict) else list(probe.inputs)
    rows = min(batch, samples)
    width = targets.shape[1] if targets.ndim == 2 else None
    shaped = [getattr(v, "ndim", 0) < 2 or tuple(v.shape) == (batch, width) for v in values]
    keep = width if not (probe.causal and tokens and width and all(shaped)) else min(width, tokens)

    def cut(v: Any) -> Any:
        if not (getattr(v, "ndim", 0) and v.shape[0] == batch):
            return v
        return v[:rows, :keep] if v.ndim == 2 and keep != width else v[:rows]

    if rows == batch and keep == width:
        return probe.inputs, targets
    if isinstance(probe.inputs, dict):
        inputs: Any = {k: cut(v) for k, v in probe.inputs.items()}
    else:
        inputs = tuple(cut(v) for v in probe.inputs)
    return inputs, cut(targets)


def _rows(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs[0]
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


# ------------------------------------------------------------------ saturated-activations


@rule(
    name="saturated-activations",
    group="grads",
    severity=Severity.WARNING,
    needs=("activations",),
    uses=("probe",),
)
def saturated_activations(
    activations: Any, probe: Probe | None = None, *, max_fraction: float = 0.5
) -> Iterator[Finding]:
    """tanh or sigmoid units saturated on the batch.

    ## What it does
    Runs the batch through the model and, for every tanh and sigmoid (module or
    functional call), measures the fraction of outputs in the flat tails (|tanh| > 0.99,
    sigmoid below 0.01 or above 0.99). It fires when more than `max_fraction` of them are.

    ## Cost
    One forward pass without gradients on a copy, shared with `dead-units` (the probe's
    activation recording, timed as `probe: activations`); each output is reduced to
    counts as it is produced, so memory is the model plus one copy.

    ## Why is this bad?
    A saturated tanh or sigmoid has a derivative near zero: gradients through it vanish,
    the layers before it stop learning, and the unit's output carries one bit instead of
    a value. It usually means inputs or weights far too large (missing normalisation, an
    initialisation for ReLU networks used with tanh), or a learning rate that pushed the
    pre-activations out.

    ## How to fix
    Normalise the inputs, use Xavier/Glorot initialisation for tanh and sigmoid layers,
    add normalisation before the activation, lower the learning rate, or switch to an
    activation that does not saturate.
    """
    source = probe.source if probe is not None else "model"
    for site in activations.saturations:
        fraction = site.fraction
        if fraction <= max_fraction:
            continue
        yield Finding(
            message=(
                f"{fraction:.0%} of the {site.function} outputs at {site.name} are saturated on "
                f"the batch ({site.saturated} of {site.observations})"
            ),
            location=Location(source, site.name, {"function": site.function}),
            evidence={
                "fraction": fraction,
                "saturated": site.saturated,
                "observations": site.observations,
                "function": site.function,
            },
        )


# ------------------------------------------------------------------ gradient checks


@rule(
    name="gradient-mismatch",
    group="grads",
    severity=Severity.ERROR,
    needs=("gradients",),
    uses=("probe",),
)
def gradient_mismatch(
    gradients: list[Any], probe: Probe | None = None, *, rtol: float = 1e-2
) -> Iterator[Finding]:
    """Autograd gradients that disagree with numerical differentiation.

    ## What it does
    On a float64 copy of the model in eval mode, compares the gradient autograd computes
    with central finite differences of the loss. First over groups of tensors: the
    derivative along a random direction that moves every tensor at once (autograd's g·v
    against the loss's difference quotient), for two independent directions; a group
    that disagrees beyond float64's rounding is halved until the tensors at fault stand
    alone. Those get probes of their own: a few random directions and single coordinates
    (the largest-gradient one and a random one). ReLU and max-pool kinks are handled by
    checking two step sizes and redrawing a probe whose step crosses a kink, so healthy
    models agree to about 1e-5. A tensor whose worst relative error exceeds `rtol` is
    reported; tied tensors (one parameter under two names) under both names.

    ## Cost
    In float64 passes of the model: one forward and backward, one forward for the
    baseline, then 2 forwards per direction (4 when a kink needs the finer step), so 6 to
    10 on a healthy model of any size (a 124M-parameter GPT-2 shape, a ResNet-18: 6).
    Each tensor at fault adds 2 per halving (log2 of the tensor count) and 4 to 16 for
    its own probes: one probe that is clear of kinks and ten times past `rtol` settles
    it, nearer the threshold every probe is made (32 passes in all for one wrong layer of
    that GPT-2). Memory: the
    float64 copy of the model, its gradient in float32 and one sign byte per parameter.

    ## Why is this bad?
    A wrong backward (a custom `autograd.Function` missing a factor, with a wrong sign or
    a transposed gradient, or one that ignores `grad_output`) does not crash: the model
    trains on a wrong gradient and ends up worse, or silently does not learn a layer.

    ## How to fix
    Check the custom `backward` of the layers named against the math of their forward,
    with `torch.autograd.gradcheck` on that layer alone in float64; prefer composing
    differentiable torch operations over hand-written backwards.
    """
    source = probe.source if probe is not None else "model"
    for g in gradients:
        if g.verdict != "mismatch":
            continue
        yield Finding(
            message=(
                f"autograd's gradient of {g.name} disagrees with numerical differentiation: "
                f"relative error {g.relative_error:.2g} (autograd {g.autograd[0]:.4g}, "
                f"numerical {g.numerical[0]:.4g} along the first probe); a wrong backward"
                + (f" (the same tensor as {', '.join(g.tied)})" if g.tied else "")
            ),
            location=Location(source, g.name, {}),
            evidence={
                "relative_error": g.relative_error,
                "autograd": list(g.autograd),
                "numerical": list(g.numerical),
                "shape": list(g.shape),
            },
        )


@rule(
    name="gradient-disconnected",
    group="grads",
    severity=Severity.ERROR,
    needs=("gradients",),
    uses=("probe", "checkpoint"),
)
def gradient_disconnected(
    gradients: list[Any], probe: Probe | None = None, checkpoint: Any = None
) -> Iterator[Finding]:
    """Parameters the loss depends on that get no gradient, or are frozen but were trained.

    ## What it does
    Reports parameters whose autograd gradient is None or zero while the loss changes
    numerically when they move: the graph is cut between them and the loss (a
    `.detach()`, `.data`, a round trip through numpy, an integer cast or `round`). The
    tensors without gradient are moved together (a small random step, then a large one
    for a loss that is piecewise constant in them) and halved while the loss moves, down
    to the tensors it depends on. It also reports parameters with `requires_grad=False`
    that the checkpoint's optimizer state says were being trained.

    ## Cost
    Nothing beyond `gradient-mismatch`'s backward pass when every tensor has a gradient.
    Otherwise 2 to 4 float64 forward passes for all the tensors without one together,
    4 more per halving towards each cut tensor, and its own probes (8 to 18).

    ## Why is this bad?
    A cut graph does not crash: the parameters upstream of the cut keep their initial
    values (or drift under weight decay) while the rest of the network compensates.
    The model trains, just worse, and nothing says why.

    ## How to fix
    Follow the named parameters forward to the first operation that leaves autograd:
    `.detach()`, `.data`, `.numpy()`, `.item()`, integer casts, in-place writes to
    `.data`. Keep the computation in torch operations; for a frozen parameter, decide
    whether it should train and set `requires_grad` to match the optimizer.
    """
    source = probe.source if probe is not None else "model"
    trained = _optimizer_trained(checkpoint)
    for g in gradients:
        if g.verdict == "disconnected":
            why = "None" if g.grad_none else "zero"
            yield Finding(
                message=(
                    f"{g.name} gets a {why} gradient, yet the loss changes when it moves: "
                    "the graph is cut between it and the loss"
                ),
                location=Location(source, g.name, {}),
                evidence={"grad_none": g.grad_none, "grad_zero": g.grad_zero, "depends": True},
            )
        elif g.verdict == "frozen" and any(
            n == g.name or n.endswith("." + g.name) for n in trained
        ):
            yield Finding(
                message=(
                    f"{g.name} has requires_grad=False, but the checkpoint's optimizer state "
                    "shows it being trained"
                ),
                location=Location(source, g.name, {}),
                evidence={"frozen": True, "optimizer_state": True},
            )


def _same_param(checkpoint_name: str, model_name: str) -> bool:
    # Lightning and DDP prefix the model's names ("model.", "module.")
    return checkpoint_name == model_name or checkpoint_name.endswith("." + model_name)


def _optimizer_trained(checkpoint: Any) -> set[str]:
    optimizer = getattr(checkpoint, "optimizer", None)
    if optimizer is None or not optimizer.mapped:
        return set()
    return {name for name, state in optimizer.params.items() if state.has_state}


@rule(name="batch-mixing", group="grads", severity=Severity.ERROR, needs=("probe",))
def batch_mixing(probe: Probe) -> Iterator[Finding]:
    """The output for one sample depends on the inputs of other samples (or on the future).

    ## What it does
    In eval mode, backpropagates (a random projection of) one sample's output to the
    whole input batch, for a couple of samples. Every gradient on another sample's input
    must be zero: in eval mode nothing should carry information across the batch. Token
    ids are differentiated at the output of the embedding that reads them. For a causal
    language model (next-token targets) the same check runs across positions: the output
    at the first and the middle position must have no gradient on any later token. When
    the check cannot apply (a batch of one, no input to differentiate) an info finding
    says why.

    ## Cost
    One forward pass with gradients on a float64 copy, then one backward pass per checked
    sample (2), and for a causal model one more per sample and position (2 x 2): at most 6
    backward passes, all through the one graph. Memory: the model plus its float64 copy
    and the graph of one forward pass.

    ## Why is this bad?
    A `view`/`reshape` or `permute` that moves the batch dimension, a normalisation over
    the batch computed even in eval mode, or `x - x.mean(0)` lets samples see each
    other. Training then learns from mixed samples, and predictions depend on what else
    is in the batch: a model evaluated one sample at a time behaves differently. A
    language model whose attention sees later tokens learns to copy the next token: its
    training loss falls far below what it can do when generating, where no future exists.

    ## How to fix
    Check every reshape after the first layer keeps dimension 0 as the batch
    (`x.flatten(1)`, not `x.view(-1, ...)` across it), and that batch statistics are only
    used in training mode. For a language model seeing the future, check the attention
    mask: `is_causal=True` or a lower-triangular mask applied before the softmax, and a
    padding mask combined with it rather than replacing it.
    """
    from diag.gradients import batch_mixing as measure

    result = measure(probe)
    if not result.checked:
        yield _not_applicable(probe, result.reason)
        return
    if result.mixed:
        yield _mixing_finding(probe, result)
    if result.sees_future:
        yield _future_finding(probe, result)
    elif probe.causal and not result.positions_checked:
        yield _not_applicable(probe, f"positions not checked: {result.position_reason}")


def _not_applicable(probe: Probe, reason: str) -> Finding:
    return Finding(
        message=f"batch mixing was not checked: {reason}",
        location=_where(probe, "batch dimension", batch=probe.batch_path),
        evidence={"checked": False, "reason": reason},
        severity=Severity.INFO,
    )


def _mixing_finding(probe: Probe, result: Any) -> Finding:
    pairs = [[leak.output_sample, leak.input_sample, leak.ratio] for leak in result.leaks[:20]]
    worst = max(result.leaks, key=lambda leak: leak.ratio)
    return Finding(
        message=(
            f"the output of sample {worst.output_sample} depends on the input of sample "
            f"{worst.input_sample} (gradient {worst.ratio:.2g} of its own); "
            f"{len(result.leaks)} such pair(s) in the batch"
        ),
        location=_where(probe, "batch dimension", batch=probe.batch_path),
        evidence={
            "worst_ratio": result.worst_ratio,
            "pairs": pairs,
            "threshold": result.threshold,
            "via": result.via,
        },
    )


def _future_finding(probe: Probe, result: Any) -> Finding:
    worst = max(result.future, key=lambda leak: leak.ratio)
    return Finding(
        message=(
            f"the output at position {worst.position} of sample {worst.sample} depends on "
            f"later tokens (gradient {worst.ratio:.2g} of that on the tokens up to it): the "
            "causal mask lets tokens see the future"
        ),
        location=_where(probe, "sequence positions", batch=probe.batch_path),
        evidence={
            "worst_ratio": result.worst_future,
            "positions": [[f.sample, f.position, f.ratio] for f in result.future],
            "threshold": result.threshold,
            "via": result.via,
        },
    )
