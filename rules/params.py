"""[params] Parameter health: what the weights themselves say about how training went."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from typing import Any

from diag.history import intervals_unchanged
from diag.loaders.adapters import lora_name
from diag.loaders.checkpoint import Checkpoint
from diag.loaders.onnx_graph import INPUT, OUTPUT
from diag.model import Finding, Location, Severity
from diag.registry import rule
from diag.rules.kernels import kernel_noise
from diag.stats import TensorStats, UpdateStats

GROUP = "params"
# Below this share of identical rows, an output head's copies are classes without data.
HEAD_COLLAPSE_FRACTION = 0.5
# Units this close (relative to their norm) are copies to float rounding; farther ones,
# up to diag.stats.DUPLICATE_RTOL, count only when they are SYMMETRIC_SHARE of the layer.
EXACT_COPY_RTOL = 1e-4
SYMMETRIC_SHARE = 0.25
# Zero units in this many layers or more are pruning, not training failure (see dead-units).
PRUNED_LAYERS = 3
MAX_NAMED_LAYERS = 32
TRAINABLE_KINDS = ("conv", "linear", "embedding", "norm", "bias", "vector")
# Standard deviations in this band are the GPT/BERT-style N(0, 0.02) init: never "too small".
TRANSFORMER_STD_BAND = (0.015, 0.025)


def _at(ckpt: Checkpoint, name: str, **details: object) -> Location:
    return Location(ckpt.path, name, details)


@rule(
    name="nonfinite-parameter",
    group=GROUP,
    severity=Severity.ERROR,
    needs=("checkpoint",),
    uses=("init",),
)
def nonfinite_parameter(checkpoint: Checkpoint, init: Checkpoint | None) -> Iterator[Finding]:
    """Parameters or buffers that contain NaN or infinity.

    ## What it does
    Counts NaN and ±inf values in every floating-point tensor of the checkpoint (and of
    `--init`, when given).

    ## Why is this bad?
    One non-finite weight poisons every activation downstream: the model outputs NaN for
    every input. It usually means the loss diverged (learning rate too high, a log or
    division of zero, fp16 overflow) and the run kept saving.

    ## How to fix
    Go back to the last checkpoint with finite weights; lower the learning rate, add
    gradient clipping, use bf16 or loss scaling instead of raw fp16, and guard `log`/`sqrt`
    and divisions with an epsilon. The `loss-nonfinite` rule finds the step where it started.

    ## What it does not count
    Infinities that are constants of the computation, not learned values: in an exported
    graph, a tensor with no NaN whose finite values (if any) are all one number and that no
    Conv/Gemm/MatMul/Gather/normalisation uses as its weight (a `-inf` fill value for masked
    logits, a clip bound); in any format, an attention-style mask (one finite value, say 0,
    and infinities, no NaN). A diverged weight is neither: its finite values vary and NaN
    follows the first infinity within a step. Measured on the zoo: magika's exported
    file-type classifier holds a scalar `-inf` constant, the only non-finite value in 16
    production models; every planted NaN or infinity in a weight is still found.
    """
    for ckpt in (checkpoint, init):
        if ckpt is None:
            continue
        for s in ckpt.stats.values():
            if (s.nan or s.inf) and not _infinite_constant(s, graph=ckpt.format == "onnx"):
                yield Finding(
                    f"{s.nan} NaN and {s.inf} infinite values out of {s.numel}",
                    _at(ckpt, s.name),
                    {"nan": s.nan, "inf": s.inf, "numel": s.numel},
                )


@rule(
    name="constant-parameter",
    group=GROUP,
    severity=Severity.ERROR,
    needs=("checkpoint",),
    uses=("init",),
)
def constant_parameter(checkpoint: Checkpoint, init: Checkpoint | None) -> Iterator[Finding]:
    """Weight matrices or kernels whose values are all zero or all equal.

    ## What it does
    Checks every Linear/Conv-like weight (two or more dimensions, not norms or biases) for
    a single repeated value. In the trained checkpoint any constant weight, or embedding
    table, is an error (a trained table has one row per token; a constant one never
    learned). In `--init`, a non-zero constant is an error, and an all-zero weight is a
    warning, since zero is a deliberate choice for a few layers (LoRA `B`, zero-initialised
    residual or output projections) and a bug for the rest.

    Measured (`bench/calibration.py`): none of the 648 weight tensors of the zoo and of our
    runs over 3 seeds and 3 SIMD capabilities comes near: the smallest relative spread
    `(max - min) / max|w|` is 1.0. Every planted constant is found.

    ## Why is this bad?
    Units that start with identical weights receive identical gradients, so they stay
    identical: the layer behaves like a single unit however wide it is. An all-zero weight
    in a trained model means the layer never learned, or was overwritten.

    ## How to fix
    Initialise with random values scaled to the fan-in (`nn.init.kaiming_uniform_`, the
    PyTorch default, or `kaiming_normal_` for ReLU). Look for `nn.init.constant_`,
    `zeros_`, `fill_` or `weight.data[:] = ...` on this layer.

    ## LoRA adapters
    A LoRA `B` factor (peft's `lora_B`) starts at zero by design, so that the adapted
    model starts as the base model; whether it is still zero after training is
    `lora-stuck`'s question, answered with the run's progress. This rule leaves LoRA
    factors alone.
    """
    for s in checkpoint.stats.values():
        if (s.is_weight or s.kind == "embedding") and s.all_equal and not _lora(s):
            yield Finding(
                f"all {s.numel} values are {_value(s.min)} in the trained weights",
                _at(checkpoint, s.name),
                {"value": s.min, "numel": s.numel, "shape": list(s.shape)},
            )
    if init is None:
        return
    for s in init.stats.values():
        if not (s.is_weight and s.all_equal) or _lora(s):
            continue
        if s.min != 0.0:
            yield Finding(
                f"initialised to the constant {_value(s.min)}: every unit starts identical "
                "and symmetry is never broken",
                _at(init, s.name),
                {"value": s.min, "numel": s.numel, "shape": list(s.shape)},
            )
        else:
            yield Finding(
                "initialised to all zeros: fine for a LoRA B matrix or a zero-initialised "
                "residual/output projection, a bug anywhere else",
                _at(init, s.name),
                {"value": 0.0, "numel": s.numel, "shape": list(s.shape)},
                severity=Severity.WARNING,
            )


def _lora(s: TensorStats) -> bool:
    """A LoRA factor: its init and training follow the adapter's rules (rules/adapters.py)."""
    return lora_name(s.name) is not None


def _infinite_constant(s: TensorStats, *, graph: bool) -> bool:
    """Infinities used as constants (masks, fill values, bounds), not as learned weights."""
    if s.nan or not s.inf or s.info.op is not None:
        return False
    finite = s.numel - s.inf
    if finite == 0:
        return graph  # a state dict's all-inf tensor is as likely a blown-up bias
    # Outside a graph only a mask's shape (2-D or more) tells a constant from a bias that
    # was all zeros until one value overflowed.
    return s.min == s.max and (graph or len(s.shape) >= 2)


def _value(x: float) -> str:
    return "zero" if x == 0 else f"{x:.6g}"


@rule(
    name="symmetric-units",
    group=GROUP,
    severity=Severity.ERROR,
    needs=("checkpoint",),
    uses=("init",),
)
def symmetric_units(checkpoint: Checkpoint, init: Checkpoint | None = None) -> Iterator[Finding]:
    """Units of a layer with identical (or nearly identical) incoming weights.

    ## What it does
    Groups the output units of every Linear/Conv weight (rows, or filters) whose weight
    vectors agree to within 0.1% of the layer's typical unit norm, using random projections
    so that it stays linear in the size of the layer. All-zero units are left to
    `dead-units`.

    ## Why is this bad?
    Two units with the same weights compute the same feature and get the same gradient
    forever: the symmetry that random initialisation exists to break was never broken.
    A layer whose units are all copies has the capacity of one unit. The usual cause is a
    constant initialisation (`nn.init.constant_`, `fill_`), or a layer built by repeating
    one tensor.

    ## How to fix
    Initialise the layer randomly (PyTorch's default, or `nn.init.kaiming_normal_`), and
    check that weights are not copied from one unit to the others. Retrain: the copies
    will not separate by themselves.

    ## How close is a copy
    Exact copies (closer than 1e-4 of their norm) are an error however few: training
    never makes two units agree to float rounding. Near copies (up to 1% apart) count
    only when they make up at least a quarter of the layer, because healthy training
    does produce the odd near pair: a digits CNN with weight decay 0.1 ended with two of
    its 64 hidden units 0.30% apart (seed 1, AVX-512), while a network grown from a
    constant init left copies up to 0.83% apart that fill every layer. Distance alone
    cannot separate those two (0.30% < 0.83%); the share of the layer can.

    ## Output heads
    Rows of an output layer (units = classes or tokens) are different: each gets its own
    gradient from its own targets, so symmetry cannot persist there, and rows that do
    coincide belong to outputs that never occurred in the training data. Softmax pushes
    all of them down by the same amount and weight decay erases their random start, so
    they converge to one vector. The zoo's Paddle OCR recogniser has 125 of its 6,625
    character rows in such groups, at relative distances of 2e-8 (float32 rounding): as
    identical as planted copies, so distance cannot tell them apart; position can. In the
    head (the layer that feeds a graph output, or the last weight in module order) copies
    of fewer than half the rows are reported as info; a head that is mostly copies is
    still an error. A wholly constant tensor is left to `constant-parameter`, so one cause
    gives one finding.
    """
    heads = output_heads(checkpoint.stats, graph=checkpoint.format == "onnx")
    for s in checkpoint.stats.values():
        # A constant tensor is all copies of one unit, and copies grown from a constant
        # init are that init's doing: constant-parameter names the cause, once.
        if not s.is_weight or not s.n_duplicate_units or s.all_equal or _lora_b(s):
            continue
        start = init.stats.get(s.name) if init is not None else None
        if start is not None and start.is_weight and start.all_equal:
            continue
        if not _symmetry_evidence(s):
            continue
        groups = s.duplicate_groups
        biggest = s.duplicate_sizes[0] if s.duplicate_sizes else len(groups[0])
        copies = s.n_duplicate_units + len(groups)
        fraction = copies / s.n_units
        evidence = {
            "n_units": s.n_units,
            "redundant_units": s.n_duplicate_units,
            "groups": len(groups),
            "largest_group": biggest,
            "fraction": fraction,
        }
        if s.name in heads and fraction < HEAD_COLLAPSE_FRACTION:
            yield Finding(
                f"{copies} of {s.n_units} output units share their weights with another "
                f"({len(groups)} group(s), the largest has {biggest}): outputs (classes, "
                "tokens) that never occurred in the training data collapse to one row",
                _at(checkpoint, s.name, units=list(groups[0][:16])),
                {**evidence, "output_head": True},
                severity=Severity.INFO,
            )
            continue
        yield Finding(
            f"{copies} of {s.n_units} units share their weights with "
            f"another unit ({len(groups)} group(s), the largest has {biggest} identical units)",
            _at(checkpoint, s.name, units=list(groups[0][:16])),
            evidence,
        )


def _lora_b(s: TensorStats) -> bool:
    # Every row of a LoRA B starts at zero, identical by design: only the gradient tells
    # them apart, and a few Adam steps of equal size can leave rows equal.
    lora = lora_name(s.name)
    return lora is not None and lora.part == "B"


def _symmetry_evidence(s: TensorStats) -> bool:
    """Exact copies, or near copies across a good share of the layer (see the docs)."""
    spreads = s.duplicate_spread or (math.nan,) * len(s.duplicate_groups)
    sizes = s.duplicate_sizes or tuple(len(g) for g in s.duplicate_groups)
    if any(not spread > EXACT_COPY_RTOL for spread in spreads):  # NaN: unconfirmed, trusted
        return True
    return sum(sizes) >= SYMMETRIC_SHARE * s.n_units


@rule(
    name="dead-units",
    group=GROUP,
    severity=Severity.WARNING,
    needs=("checkpoint|activations",),
    uses=("probe",),
)
def dead_units(
    checkpoint: Checkpoint | None,
    activations: Any,
    probe: Any = None,
    *,
    min_dead_fraction: float = 0.5,
    min_zero_fraction: float = 0.1,
) -> Iterator[Finding]:
    """Units whose incoming weights are all zero, or that never fire on real inputs.

    ## What it does
    Finds output units (rows of a Linear weight, filters of a conv) whose weight vector is
    zero (below 1e-7 of the largest unit of the same layer). At least `min_zero_fraction`
    (10%) of a layer is a warning; fewer is info, since a few dead filters are common in
    healthy trained networks (EasyOCR's CRAFT detector, a VGG16-BN backbone, has 1 of 128
    in two layers; no zoo model that was not pruned has more than 1%). A wholly zero
    weight is `constant-parameter`'s finding. With `--model` and `--batch`, it also
    runs the batch through the model and reports Linear/Conv layers feeding a ReLU whose
    pre-activation is never positive on the batch for at least `min_dead_fraction` of
    their units (every unit: an error), whether the ReLU is a module or a functional call.
    (A healthy CNN trained on digits leaves up to a third of a hidden layer's units silent
    on a 32-sample batch: class-specific units that the batch's classes do not excite.)

    ## Why is this bad?
    A unit with zero incoming weights outputs a constant: it carries no information about
    the input, and after a ReLU it usually gets no gradient to recover. A ReLU unit that
    is negative on every input is dead the same way: it outputs zero and gets no
    gradient, so it never comes back. Many such units mean wasted capacity; they come
    from dying ReLUs (a learning rate or weight decay too high, a large negative bias),
    or from masking and pruning applied by mistake.

    ## Cost
    From the weights: none beyond the one read of the checkpoint. The activation half
    shares one forward pass with `saturated-activations`, timed as `probe: activations`.

    ## How to fix
    Lower the learning rate or weight decay, initialise biases at zero or slightly
    positive, use a leaky activation, or check masks and pruning code. If the units were
    pruned on purpose, ignore this rule for that layer.

    ## Pruned models
    Training does not zero a unit's weights exactly: a unit that stops getting gradient
    only decays under weight decay, geometrically and never to 0.0 in float. Exact-zero
    rows come from a mask: structured pruning, or BatchNorm channels whose scale was driven
    to zero (network slimming) and folded into the convolution at export. When
    `PRUNED_LAYERS` (3) or more layers have zero units, that is one decision applied
    across the network, so it is reported once, as info, naming the layers. On the zoo,
    Paddle's OCR detector has zero units in 4 layers and its recogniser in 12 (up to 45%
    of a layer), with no loss of accuracy; no unpruned model has any. One or two layers
    with zero units are still a warning, each.
    """
    if checkpoint is not None:
        yield from _zero_units(checkpoint, min_zero_fraction)
    # Live runs record activations from the training itself, with no probe files.
    source = probe.source if probe is not None else checkpoint.path if checkpoint else "model"
    for layer in activations.layers if activations is not None else ():
        if layer.consumer != "relu" or not layer.n_units:
            continue
        fraction = layer.n_dead / layer.n_units
        if fraction < min_dead_fraction:
            continue
        through = f" (after {layer.through})" if getattr(layer, "through", None) else ""
        yield Finding(
            f"{layer.n_dead} of {layer.n_units} units never fire on the batch: their "
            f"pre-activation{through} is never positive over {layer.observations} observations",
            Location(source, f"{layer.name}.weight", {"units": list(layer.dead[:16])}),
            {
                "n_units": layer.n_units,
                "dead": layer.n_dead,
                "fraction": fraction,
                "observations": layer.observations,
                "source": "activations",
            },
            severity=Severity.ERROR if layer.n_dead == layer.n_units else Severity.WARNING,
        )


def _zero_units(checkpoint: Checkpoint, min_zero_fraction: float) -> Iterator[Finding]:
    layers = [
        s for s in checkpoint.stats.values() if s.is_weight and s.n_zero_units and not _lora_b(s)
    ]
    if len(layers) >= PRUNED_LAYERS:
        units = sum(s.n_zero_units for s in layers)
        total = sum(s.n_units for s in layers)
        yield Finding(
            f"{units} units in {len(layers)} layers have zero incoming weights: the "
            "pattern of structured pruning (or of channels switched off and folded away at "
            "export), not of units that died in training",
            _at(checkpoint, layers[0].name, layers=[s.name for s in layers[:MAX_NAMED_LAYERS]]),
            {"layers": len(layers), "dead": units, "n_units": total, "pruned": True},
            severity=Severity.INFO,
        )
        return
    for s in layers:
        fraction = s.n_zero_units / s.n_units
        severity = Severity.WARNING if fraction >= min_zero_fraction else Severity.INFO
        yield Finding(
            f"{s.n_zero_units} of {s.n_units} units have all-zero incoming weights",
            _at(checkpoint, s.name, units=list(s.zero_units[:16])),
            {"n_units": s.n_units, "dead": s.n_zero_units, "fraction": s.n_zero_units / s.n_units},
            severity=severity,
        )


@rule(name="init-scale", group=GROUP, severity=Severity.WARNING, needs=("initial",))
def init_scale(
    initial: Checkpoint, *, too_small: float = 10.0, too_large: float = 3.0
) -> Iterator[Finding]:
    """Initial weights whose spread is far outside what their fan-in calls for.

    ## What it does
    For the untrained weights (`--init`, or a checkpoint saved at step 0), compares each
    Linear/Conv weight's standard deviation with the range fan-in theory gives: from
    PyTorch's default `1/sqrt(3·fan_in)` up to He's `sqrt(2/fan_in)`. It warns when the std is
    more than `too_small` (10×) below the default or `too_large` (3×) above He. The
    GPT/BERT convention N(0, 0.02) is accepted as it is.

    Measured (`bench/calibration.py`): PyTorch's default init on our runs gives at most
    0.42x He's std (3 seeds, 3 SIMD capabilities); N(0, 1) everywhere gives at least 3.49x,
    on conv1, whose fan-in of 25 makes He's std 0.28: a thin margin that no threshold
    can widen, since N(0, 1) on so small a fan-in is only 3.5x too large.

    ## Why is this bad?
    Too small, and activations and gradients shrink layer after layer (vanishing signal,
    a flat loss at the start); too large, and they grow until units saturate or the loss
    explodes. Either way training is slow or fails, with no error message.

    ## How to fix
    Use PyTorch's default initialisation, or `nn.init.kaiming_normal_(w, nonlinearity="relu")`
    for ReLU networks, `xavier_uniform_` for tanh. Look for `normal_(w)` with the default
    std of 1, or a hand-picked std that ignores the layer's width.
    """
    for s in initial.stats.values():
        expected = s.expected_std_range()
        # peft draws LoRA factors by its own recipe (B zero, A Kaiming or N(0, 1/r)).
        if expected is None or s.all_equal or s.std == 0 or s.nan or s.inf or _lora(s):
            continue
        low, high = expected
        in_band = TRANSFORMER_STD_BAND[0] <= s.std <= TRANSFORMER_STD_BAND[1]
        if s.std < low / too_small and not in_band:
            direction, factor = "below PyTorch's default", low / s.std
        elif s.std > high * too_large:
            direction, factor = "above He initialisation", s.std / high
        else:
            continue
        yield Finding(
            f"initial std {s.std:.3g} is {factor:.1f}x {direction} for fan-in {s.fan_in} "
            f"(expected {low:.3g} to {high:.3g})",
            _at(initial, s.name),
            {
                "std": s.std,
                "expected_low": low,
                "expected_high": high,
                "fan_in": s.fan_in,
                "factor": factor,
            },
        )


@rule(
    name="stuck-parameter", group=GROUP, severity=Severity.WARNING,
    needs=("checkpoint",), uses=("updates", "trajectories", "init"),
)  # fmt: skip
def stuck_parameter(
    checkpoint: Checkpoint,
    updates: dict[str, UpdateStats] | None,
    trajectories: Any = None,
    init: Checkpoint | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> Iterator[Finding]:
    """Parameters that never moved, never got a gradient, or buffers never updated.

    ## What it does
    Three kinds of evidence, whichever the inputs allow:
    - with `--init`: a parameter equal to its initial value (within `rtol`/`atol`, as
      `np.allclose`) while training happened;
    - from the optimizer state saved in the checkpoint (Adam/AdamW, SGD with momentum): a
      parameter the optimizer holds but has no state for (it never received a gradient),
      or whose second-moment estimate is all zero (only zero gradients);
    - BatchNorm running statistics still at their initial 0 and 1 after training;
    - over a run folder of three or more checkpoints: a parameter that moved, then stayed
      bit for bit the same over the last two or more checkpoints while most of the model
      kept moving (frozen part-way through the run).
    Without `--init`, a run folder's first checkpoint is the reference.
    A parameter the optimizer was given but never updated is an error; one that is merely
    unchanged since `--init` is a warning, since layers are sometimes frozen on purpose.

    Measured (`bench/calibration.py`): on our healthy runs over 3 seeds and 3 SIMD
    capabilities the least-moved tensor still moved 0.78 of its largest value, five decades
    above `rtol`; the layer cut from the gradient moved exactly 0. On the zoo, with all
    but one tensor moved by a small random step, only the unmoved one is reported, and
    empty tensors (an exported graph's unused Resize roi) are never "stuck".

    ## Why is this bad?
    A layer that does not train is a silent bug: `.detach()` or `.data` in the forward
    pass, a `requires_grad=False` left over from fine-tuning, a parameter created outside
    the module so the optimizer never sees it, or a branch of the graph that never feeds the
    loss. BatchNorm statistics at 0/1 mean the model was trained in `eval()` mode, so it
    will normalise with the wrong statistics at inference.

    ## How to fix
    Follow the parameter from the loss back to where it is used: look for `.detach()`,
    `.data`, `torch.no_grad()`, numpy round trips and integer casts. Check that it is in
    `model.parameters()` when the optimizer is created, and call `model.train()` before the
    training loop. If the layer is frozen on purpose, ignore the rule for it.

    ## Adapters
    In a peft model (a checkpoint holding LoRA factors) the base weights are frozen by
    design, and an optimizer built from `model.parameters()` holds them without state:
    only the `modules_to_save` copies are judged here, and the LoRA factors are left to
    `lora-stuck`. Measured on a Lightning run of a peft LoRA: the six frozen base tensors
    were all reported as "never received a gradient" before this exemption.
    """
    trained = _training_happened(checkpoint, updates)
    peft = _adapted(checkpoint.stats)
    found: dict[str, tuple[str, dict, Severity]] = {}
    if updates and trained:
        for name, u in updates.items():
            s = checkpoint.stats.get(name)
            # An empty tensor (a graph's unused Resize roi) has nothing that could move.
            if s is None or s.kind not in TRAINABLE_KINDS or s.numel == 0:
                continue
            if not _trained_by_design(name, peft):
                continue
            if u.identical or u.max_abs_delta <= atol + rtol * max(abs(s.min), abs(s.max)):
                # Without --init, the movement was measured from the run's first checkpoint.
                since = "--init" if init is not None else "the run's first checkpoint"
                if init is None and trajectories is not None:
                    since = f"{trajectories.labels[0]}, the run's first checkpoint"
                found[name] = (
                    f"unchanged since {since} although other parameters moved",
                    {"max_abs_delta": u.max_abs_delta, "init_norm": u.init_norm},
                    Severity.WARNING,
                )
    if trajectories is not None:
        for name, why in stopped_moving(trajectories, checkpoint.stats).items():
            found.setdefault(name, (why[0], why[1], Severity.WARNING))
    opt = checkpoint.optimizer
    if opt is not None and opt.mapped and any(p.has_state for p in opt.params.values()):
        for name, p in opt.params.items():
            if not _trained_by_design(name, peft):
                continue
            evidence = dict(found.get(name, ("", {}, Severity.WARNING))[1])
            if not p.has_state:
                evidence["optimizer_state"] = False
                found[name] = (
                    f"never received a gradient: the {opt.kind} optimizer holds it "
                    "but has no state for it",
                    evidence,
                    Severity.ERROR,
                )
            elif p.exp_avg_sq is not None and opt.read is not None:
                sq = opt.read(p.exp_avg_sq, f"{name} (optimizer exp_avg_sq)")
                if sq.numel() and float(sq.abs().max()) == 0.0:
                    evidence["exp_avg_sq_max"] = 0.0
                    found[name] = (
                        "received only zero gradients (Adam's second moment is all zero)",
                        evidence,
                        Severity.ERROR,
                    )
    for name, (message, evidence, severity) in found.items():
        yield Finding(message, _at(checkpoint, name), evidence, severity=severity)
    yield from _stale_batchnorm(checkpoint, trained)


def stopped_moving(
    trajectories: Any, stats: dict[str, TensorStats], min_intervals: int = 2
) -> dict[str, tuple[str, dict]]:
    """Parameters that moved early in the run, then stayed bit for bit the same over its
    last `min_intervals` or more intervals while most other parameters kept moving (frozen
    part-way: an optimizer rebuilt without them, `requires_grad` switched off by a callback)."""
    paths = trajectories.tensors
    if not paths:
        return {}
    last_moved = [not p.unchanged[-1] for p in paths.values() if p.unchanged]
    if sum(last_moved) < 0.5 * len(last_moved):
        return {}  # most of the model stood still at the end: nothing to compare with
    out = {}
    peft = _adapted(stats)
    for name, path in paths.items():
        s = stats.get(name)
        if s is None or s.kind not in TRAINABLE_KINDS or s.numel == 0:
            continue
        if not _trained_by_design(name, peft):
            continue
        still = intervals_unchanged(path)
        if still < min_intervals or still == len(path.unchanged):
            continue  # never moved at all: the comparison with the reference says so
        since = trajectories.labels[path.members[-still - 1]]
        out[name] = (
            f"stopped moving at {since}: bit for bit the same over the last {still} "
            "checkpoints while other parameters kept moving",
            {"stopped_at": since, "unchanged_intervals": still},
        )
    return out


def _adapted(stats: dict[str, TensorStats]) -> bool:
    """Whether the checkpoint is a peft model: it holds LoRA factors."""
    return any(lora_name(name) is not None for name in stats)


def _trained_by_design(name: str, peft: bool) -> bool:
    """Whether a parameter is meant to move. LoRA factors are `lora-stuck`'s to judge; in a
    peft model everything else is frozen on purpose (the base weights, the `original_module`
    copy of a head), except the `modules_to_save` copies, which train in full."""
    if lora_name(name) is not None:
        return False
    return not peft or ".modules_to_save." in name


def _training_happened(checkpoint: Checkpoint, updates: dict[str, UpdateStats] | None) -> bool:
    if checkpoint.meta.global_step:
        return True
    if updates and any(not u.identical for u in updates.values()):
        return True
    opt = checkpoint.optimizer
    return bool(opt and any(p.has_state for p in opt.params.values()))


def _stale_batchnorm(checkpoint: Checkpoint, trained: bool) -> Iterator[Finding]:
    if not trained:
        return
    stats = checkpoint.stats
    for name, s in stats.items():
        if not name.endswith("running_mean"):
            continue
        prefix = name[: -len("running_mean")]
        var = stats.get(prefix + "running_var")
        if var is None or not (s.min == s.max == 0.0 and var.min == var.max == 1.0):
            continue
        tracked = stats.get(prefix + "num_batches_tracked")
        batches = tracked.scalar if tracked is not None else None
        yield Finding(
            "BatchNorm running statistics are still at their initial 0 and 1 after training "
            "(trained in eval mode, or the layer never ran in training)",
            _at(checkpoint, prefix.rstrip(".") or name),
            {"num_batches_tracked": batches, "numel": s.numel},
            severity=Severity.ERROR,
        )


@rule(name="update-ratio", group=GROUP, severity=Severity.WARNING, needs=("checkpoint", "updates"))
def update_ratio(
    checkpoint: Checkpoint,
    updates: dict[str, UpdateStats],
    *,
    low: float = 1e-3,
    high: float = 10.0,
    peer_decades: float = 2.0,
) -> Iterator[Finding]:
    """Weights that moved far less or far more than the other layers during training.

    ## What it does
    For every Linear/Conv/embedding weight, computes `|final - init| / |init|` (Frobenius
    norms) between `--init` and the checkpoint. It warns when a layer's ratio is more than
    `peer_decades` (2) orders of magnitude from the median of its peers **and** outside the
    usual range `low`..`high` (1e-3 to 10). Layers that did not move at all are left to
    `stuck-parameter`.

    Measured (`bench/calibration.py`): on our healthy runs over 3 seeds and 3 SIMD
    capabilities no layer is more than 0.10 decades from the median layer, against the
    2-decade threshold.

    ## Why is this bad?
    Layers of one network trained with one optimizer move by comparable relative amounts.
    A layer that barely moved is nearly frozen (a tiny per-layer learning rate, a gradient
    that vanishes before it, a huge init); one that moved 10× its own size is being pushed
    by a learning rate that is too high for it, or exploding gradients.

    ## How to fix
    For a layer that barely moved: check its learning rate (parameter groups, schedulers),
    its gradient norm, and normalisation in front of it. For one that moved too much: lower
    the learning rate or add warm-up and gradient clipping; check its init scale.
    """
    ratios = {}
    for name, u in updates.items():
        s = checkpoint.stats.get(name)
        trainable = s and s.kind in ("conv", "linear", "embedding") and not _lora(s)
        if trainable and u.init_norm > 0 and not u.identical:
            ratios[name] = u.ratio
    if len(ratios) < 3:
        return
    median = statistics.median(ratios.values())
    for name, r in ratios.items():
        decades = math.log10(r / median) if r > 0 and median > 0 else 0.0
        if r < low and decades <= -peer_decades:
            what = "barely moved"
        elif r > high and decades >= peer_decades:
            what = "moved far more than its own size"
        else:
            continue
        yield Finding(
            f"{what}: |final-init|/|init| = {r:.3g}, {abs(decades):.1f} decades from the "
            f"median layer ({median:.3g})",
            _at(checkpoint, name),
            {"ratio": r, "median_ratio": median, "decades_from_median": decades},
        )


def first_layer_convs(stats: dict[str, TensorStats]) -> list[TensorStats]:
    """The convolutions whose kernels see the input: from the graph when the format has one,
    else the first convolution in module order."""
    convs = [s for s in stats.values() if s.kind == "conv" and len(s.shape) == 4]
    if any(s.info.position is not None for s in stats.values()):
        chosen = [s for s in convs if s.info.position == INPUT]
    else:
        # Module order puts the stem first; a depthwise or grouped conv (one input channel
        # per kernel) is never the first layer of a network, so it is never chosen.
        chosen = convs[:1]
    return [s for s in chosen if s.kernels is not None and min(s.shape[2:]) >= 3]


def output_heads(stats: dict[str, TensorStats], *, graph: bool = False) -> set[str]:
    """The weighted layers whose units are the model's outputs (classes, tokens).

    A graph says; a state dict is in module order, so its last weight is the head. A graph
    whose layers could not be placed (weights inside functions or branches) names none:
    its tensor order means nothing, and no head is safer than a wrong one.
    """
    if any(s.info.position is not None for s in stats.values()):
        return {s.name for s in stats.values() if s.info.position == OUTPUT}
    weights = [s for s in stats.values() if s.is_weight]
    return {weights[-1].name} if weights and not graph else set()


@rule(name="noisy-kernels", group=GROUP, severity=Severity.WARNING, needs=("checkpoint",))
def noisy_kernels(checkpoint: Checkpoint, *, alpha: float = 0.05) -> Iterator[Finding]:
    """First-layer convolution kernels that still look like random noise.

    ## What it does
    For the convolutions that see the input pixels, with kernels of 3×3 or larger, measures
    each kernel's lag-1 spatial
    autocorrelation and tests the layer against a permutation null: the same kernels with
    their pixels shuffled. It fires when the layer is no smoother than shuffled noise
    (probability ≥ `alpha` under the null). Deeper layers are not judged on smoothness.

    The level `alpha` is 5%: a layer is called noise only when shuffling its pixels makes
    it at least as smooth in 5% or more of 200 rounds. A layer of pure noise escapes with
    probability 5%; a trained one is rarely that close to noise. Measured: trained first
    layers on the zoo give p ≤ 0.01 (the rough one is EasyOCR's 3×3 grayscale stem, median
    -0.02 against a null of -0.11, p = 0.01) and our digits CNNs p < 0.01 on every seed;
    the faults caught give p = 0.11 (a 64-sample overfit run) to 0.42 (a stem cut from the
    gradient). (At 1% the EasyOCR stem was a false alarm.)

    Which layer sees the input is read from structure, not guessed from shapes: in an ONNX
    graph, the convolutions that a path from a graph input reaches without crossing another
    Conv/Gemm/MatMul; in a state dict, the first convolution in module order. A depthwise
    convolution deep in a mobile network also has one input channel per kernel, but its
    kernels filter feature maps, and trained ones are legitimately rough or even
    anti-smooth: in the zoo's three Paddle OCR models, 6 of 41 depthwise 3×3/5×5 layers
    are "noise" by this test (median autocorrelation -0.29 to 0.01, p 0.01 to 1.0), while
    their stem convolutions, the ones the graph feeds the image, are clearly smooth
    (0.13, 0.23, 0.30; p < 0.005).

    ## Why is this bad?
    A trained first layer learns smooth, structured filters (edges, blobs, colour
    contrasts): a well-trained small CNN has a median autocorrelation around 0.5, random
    initialisation about 0. Filters that still look like noise mean the layer barely
    trained: a learning rate too low for it, too few steps, no regularisation, or a layer
    cut from the gradient.

    ## How to fix
    Check that the layer receives gradients (see `stuck-parameter`), train longer or with
    a higher learning rate, and add weight decay. Look at the kernel grid in the HTML
    report.
    """
    for s in first_layer_convs(checkpoint.stats):
        if s.all_equal or s.nan or s.inf:
            continue
        test = kernel_noise(s.kernels)  # type: ignore[arg-type]
        if test is None or test.p_value < alpha:
            continue
        yield Finding(
            f"{test.n_noisy} of {test.n_kernels} kernels look like noise: median spatial "
            f"autocorrelation {test.median_autocorr:.2f}, shuffled kernels give "
            f"{test.null_median:.2f} (p = {test.p_value:.2f})",
            _at(checkpoint, s.name),
            {
                "n_kernels": test.n_kernels,
                "noisy_kernels": test.n_noisy,
                "median_autocorr": test.median_autocorr,
                "null_median": test.null_median,
                "null_q99": test.null_q99,
                "p_value": test.p_value,
            },
        )
