"""[params] LoRA adapters: factors that never trained, and updates out of scale.

A LoRA adapter adds `scale * B @ A` to a frozen weight, with `B` initialised to zero so
that training starts from the base model exactly. A `B` of zeros is therefore correct in
a fresh adapter and the sign of an adapter that never trained in a later one; the params
rules leave LoRA factors to the rules here (see `diag.loaders.adapters.lora_name`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from diag.errors import InputError
from diag.loaders.adapters import AdapterConfig, lora_name, parse_adapter_config
from diag.loaders.checkpoint import Checkpoint
from diag.model import Finding, Location, Severity
from diag.registry import rule
from diag.stats import TensorStats, UpdateStats

GROUP = "params"
MAX_NAMED_MODULES = 16


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its two factors and, when the file holds it, the base weight."""

    module: str
    a: TensorStats
    b: TensorStats
    base: TensorStats | None = None


def lora_modules(stats: Mapping[str, TensorStats]) -> list[LoraModule]:
    """The adapted modules of a checkpoint, in file order, each with both factors."""
    parts: dict[tuple[str, str | None], dict[str, TensorStats]] = {}
    shown_as: dict[str, str] = {}
    for name, s in stats.items():
        lora = lora_name(name)
        if lora is not None:
            parts.setdefault((lora.prefix, lora.adapter), {})[lora.part] = s
            shown_as[lora.prefix] = lora.module
    out = []
    for (prefix, adapter), factors in parts.items():
        if "A" not in factors or "B" not in factors:
            continue
        base = stats.get(f"{prefix}.base_layer.weight")
        shown = shown_as[prefix]
        if adapter is not None and adapter != "default":
            shown = f"{shown} [{adapter}]"
        out.append(LoraModule(shown, factors["A"], factors["B"], base))
    return out


def adapter_config(checkpoint: Checkpoint) -> AdapterConfig | None:
    """The adapter_config.json the run folder had beside this checkpoint, if any."""
    value = checkpoint.meta.extra.get("adapter")
    if isinstance(value, AdapterConfig):
        return value
    if isinstance(value, Mapping):
        try:
            return parse_adapter_config(value, checkpoint.path)
        except InputError:
            return None
    return None


def _at(ckpt: Checkpoint, name: str, **details: object) -> Location:
    return Location(ckpt.path, name, details)


def _largest(s: TensorStats) -> float:
    return max(abs(s.min), abs(s.max))


@rule(
    name="lora-stuck", group=GROUP, severity=Severity.ERROR,
    needs=("checkpoint",), uses=("init", "updates"),
)  # fmt: skip
def lora_stuck(
    checkpoint: Checkpoint,
    init: Checkpoint | None = None,
    updates: Mapping[str, UpdateStats] | None = None,
    *,
    atol: float = 1e-10,
) -> Iterator[Finding]:
    """LoRA adapters whose `B` factor never left its zero initialisation.

    ## What it does
    Pairs the `lora_A`/`lora_B` factors of every adapted module (peft's names, in adapter
    files and in full state dicts) and reports the modules whose `B` is still zero (no
    value above `atol`, 1e-10), or bit for bit what it was at an earlier checkpoint of the
    run, once the checkpoint shows that training happened: a global step above 0 (the
    Trainer's `checkpoint-N`, a Lightning `global_step`), a later step than the run's
    earliest checkpoint, optimizer state, or other adapted modules whose `B` moved. A
    fresh adapter (step 0, or nothing saying it trained) is correct as it is and is not
    reported. When every module is stuck, one finding names them; otherwise each stuck
    module is its own finding.

    Measured (tests/test_adapters.py: a tiny GPT-2 with LoRA trained by the Trainer, 3
    seeds under `ATEN_CPU_CAPABILITY` default and avx2): a `B` frozen by mistake stays
    exactly 0 at every checkpoint; in healthy runs the largest |B| of a module is at least
    1.0e-3 from the first checkpoint on (after one Adam step at 1e-3), 7 decades above
    `atol`. A module trained at a learning rate 10,000 times too small reaches 1.0e-7 in
    that step: not "stuck", but far behind its peers, which is `lora-update-scale`'s
    finding.

    ## Why is this bad?
    PeFT starts `B` at zero so that the adapted model equals the base model at step 0.
    A `B` that is still zero after training means the adapter changes nothing: the
    fine-tune silently trained nothing there. And since the gradient of `A` is `B`
    times the incoming gradient, a zero `B` also keeps `A` at its random initialisation.
    The usual causes: `B` frozen by mistake (a `requires_grad_(False)` loop that matched
    `lora_B`), a learning rate of 0 for its parameter group, a target module whose output
    never reaches the loss, or an optimizer built before the adapter was added.

    ## How to fix
    Print `model.print_trainable_parameters()` and check that every `lora_B` has
    `requires_grad=True` and is in the optimizer with a non-zero learning rate; check that
    `target_modules` names modules the forward pass uses. Build the optimizer after
    `get_peft_model`.

    ## References
    - Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021), section 4.1:
      `B` is initialised to zero.
    - peft's `LoraConfig(init_lora_weights=...)` documentation.
    """
    modules = lora_modules(checkpoint.stats)
    if not modules:
        return
    step = checkpoint.meta.global_step
    stuck = [m for m in modules if _never_moved(m.b, updates, atol)]
    if not stuck:
        return
    moved = [m for m in modules if m not in stuck]
    if not (moved or _trained(checkpoint, init, updates)):
        return
    evidence_base = {"global_step": step, "modules": len(modules), "stuck_modules": len(stuck)}
    if not moved and len(stuck) > 1:
        names = [m.module for m in stuck]
        yield Finding(
            f"every one of the {len(stuck)} LoRA B matrices is still at its zero init"
            f"{_after(step)}: the adapter never trained (e.g. {', '.join(names[:3])})",
            _at(checkpoint, "lora_B", modules=names[:MAX_NAMED_MODULES]),
            {**evidence_base, "max_abs_b": max(_largest(m.b) for m in stuck)},
        )
        return
    for m in stuck:
        yield Finding(
            f"LoRA B of {m.module} is still at its zero init{_after(step)} while "
            f"{len(moved)} of {len(modules)} adapted modules trained: this one got no update",
            _at(checkpoint, m.b.name, module=m.module),
            {**evidence_base, "max_abs_b": _largest(m.b)},
        )


def _never_moved(b: TensorStats, updates: Mapping[str, UpdateStats] | None, atol: float) -> bool:
    if b.nan or b.inf:
        return False  # nonfinite-parameter's finding
    if _largest(b) <= atol:
        return True
    # A B initialised away from zero (PiSSA, LoftQ) is stuck when it never changed.
    update = updates.get(b.name) if updates else None
    return update is not None and update.identical


def _trained(
    checkpoint: Checkpoint, init: Checkpoint | None, updates: Mapping[str, UpdateStats] | None
) -> bool:
    step = checkpoint.meta.global_step or 0
    start = (init.meta.global_step or 0) if init is not None else 0
    if step > start:
        return True
    if updates and any(not u.identical for u in updates.values()):
        return True
    opt = checkpoint.optimizer
    return bool(opt and any(p.has_state for p in opt.params.values()))


def _after(step: int | None) -> str:
    return f" after {step:,} steps" if step else " after training"


@rule(name="lora-update-scale", group=GROUP, severity=Severity.WARNING, needs=("checkpoint",))
def lora_update_scale(
    checkpoint: Checkpoint, *, high: float = 1.0, peer_decades: float = 2.0
) -> Iterator[Finding]:
    """LoRA updates larger than the weights they adapt, or far smaller than their peers'.

    ## What it does
    For every adapted module computes the update the adapter adds to the base weight,
    `|scale · B @ A|` (Frobenius norm, `scale = lora_alpha / r` from the run's
    `adapter_config.json`, `lora_alpha / sqrt(r)` with rsLoRA). When the checkpoint holds
    the base weight too (a full state dict of a peft model, `...base_layer.weight`), it
    warns when the update is larger than `high` (1.0) times the base weight's norm. Always,
    it compares each module's update with the median over the adapter's modules and warns
    about a module `peer_decades` (2) orders of magnitude away from it (one scale cancels
    out of that comparison, so it needs no config). Modules whose `B` is zero are left to
    `lora-stuck`.

    An adapter file alone (`adapter_model.safetensors`) does not hold the base weights, so
    the first comparison needs the full state dict; the peer comparison works on both.

    Measured (tests/test_adapters.py: a tiny GPT-2 with LoRA trained by the Trainer for 8
    steps, checkpoints every 2, 3 seeds under `ATEN_CPU_CAPABILITY` default and avx2):
    healthy updates are at most 0.15 of the base weight and within 0.27 decades of their
    median; a learning rate of 0.3 (150 times the healthy 2e-3) gives at least 1.5 times
    the base weight from the first checkpoint on (36 times by the last); a module whose
    parameter group got a learning rate 10,000 times smaller sits at least 3.75 decades
    below the median.

    ## Why is this bad?
    LoRA is meant to nudge a pretrained weight: an update as large as the weight itself
    has replaced what the base model knew (catastrophic forgetting), usually from a
    learning rate or `lora_alpha` far too high for the rank. One module whose update is
    orders of magnitude smaller than the others' barely trained: its own learning rate
    (parameter groups), a vanishing gradient in front of it, or a scale misconfigured
    for it (`alpha_pattern`, `rank_pattern`).

    ## How to fix
    Lower the learning rate (LoRA typically uses 1e-4 to 3e-4 with Adam) or `lora_alpha`
    (commonly `r` to `2r`), or use rsLoRA (`use_rslora=True`) for large ranks. For one lagging
    module, check its parameter group's learning rate and `alpha_pattern`/`rank_pattern`.

    ## References
    - Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021), section 4.1.
    - Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA" (2023).
    """
    config = adapter_config(checkpoint)
    scale = config.scale if config is not None else None
    sizes: dict[str, tuple[LoraModule, float]] = {}
    for m in lora_modules(checkpoint.stats):
        if m.a.nan or m.a.inf or m.b.nan or m.b.inf or _largest(m.b) == 0.0:
            continue
        product = _product_norm(checkpoint, m)
        if product > 0:
            sizes[m.module] = (m, product)
    for m, product in sizes.values():
        if scale is None or m.base is None or not m.base.norm > 0:
            continue
        ratio = scale * product / m.base.norm
        if ratio > high:
            yield Finding(
                f"the adapter's update is {ratio:.3g}x the norm of the weight it adapts: the "
                "fine-tune replaced the base weight instead of adjusting it",
                _at(checkpoint, m.b.name, module=m.module),
                {"update_norm": scale * product, "base_norm": m.base.norm, "ratio": ratio},
            )
    yield from _peer_outliers(checkpoint, sizes, peer_decades)


def _peer_outliers(
    checkpoint: Checkpoint, sizes: dict[str, tuple[LoraModule, float]], peer_decades: float
) -> Iterator[Finding]:
    if len(sizes) < 3:
        return  # with two modules neither is the odd one out
    median = statistics.median(p for _, p in sizes.values())
    for m, product in sizes.values():
        decades = math.log10(product / median)
        if abs(decades) < peer_decades:
            continue
        what = "far smaller" if decades < 0 else "far larger"
        yield Finding(
            f"the adapter's update here is {what} than in the other adapted modules: "
            f"{abs(decades):.1f} decades from their median",
            _at(checkpoint, m.b.name, module=m.module),
            {"update_norm_unscaled": product, "median": median, "decades_from_median": decades},
        )


def _product_norm(checkpoint: Checkpoint, m: LoraModule) -> float:
    """|B @ A| (Frobenius): the factors are rank-r thin, so both fit in memory at once."""
    import torch

    a = checkpoint.table.read(m.a.name).to(torch.float64)
    b = checkpoint.table.read(m.b.name).to(torch.float64)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        return 0.0
    # |B A|^2 = trace(A A^T B^T B): r x r products instead of the full out x in matrix.
    gram = (a @ a.T) * (b.T @ b)
    return float(gram.sum().clamp(min=0.0).sqrt())
