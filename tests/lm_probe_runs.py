"""Trained tiny GPT-2s and their planted faults, as files `diag check --model --batch` reads.

One model is trained per seed; every fault is a factory in `gpt_faults.py` that builds the
same architecture and plants its fault with hooks (so the checkpoint's names still fit),
or an init file (`bad_init`). `measure` computes, per variant, the numbers the [grads]
rules compare with their thresholds, which is what the calibration asserts on.
"""

from __future__ import annotations

import functools
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_support import build_tokenizer, docstring_texts, lm_batches, tiny_gpt2_config

SEEDS = (0, 1, 2)
TRAIN_STEPS = 200
TRAIN_BATCH = 16
BLOCK = 64
PROBE_BATCH = (4, 32)  # sequences x tokens of the probe batch, held out of training

FAULTS_PY = textwrap.dedent(
    '''
    """GPT-2 factories for `diag check --model gpt_faults.py:NAME`: healthy and faulty."""
    import json
    from pathlib import Path

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel


    def healthy():
        config = json.loads((Path(__file__).parent / "gpt_config.json").read_text())
        return GPT2LMHeadModel(GPT2Config(**config))


    class _HalfBackward(torch.autograd.Function):
        """Identity forward, half the gradient backward: a custom backward missing a factor."""

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 0.5


    def _half_backward(module, args, output):
        return _HalfBackward.apply(output)


    def wrong_backward():
        model = healthy()
        model.transformer.h[1].mlp.register_forward_hook(_half_backward)
        return model


    def _detach_first(module, args, output):
        return (output[0].detach(), *output[1:])


    def detached():
        model = healthy()
        model.transformer.h[0].attn.register_forward_hook(_detach_first)
        return model


    def sees_future():
        model = healthy()
        # No mask reaches SDPA on an unpadded batch: the module's flag is the causal mask.
        model.transformer.h[0].attn.is_causal = False
        return model


    def _zero_ids(module, args, kwargs):
        if args:
            return (torch.zeros_like(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "input_ids": torch.zeros_like(kwargs["input_ids"])}


    def ignores_input():
        model = healthy()
        model.register_forward_pre_hook(_zero_ids, with_kwargs=True)
        return model
    '''
)
FAULTS = ("wrong_backward", "detached", "sees_future", "ignores_input", "bad_init")


@dataclass(frozen=True)
class LmRun:
    """One seed's files: the factories, the trained weights, the inits, the probe batch."""

    folder: Path
    factories: Path
    checkpoint: Path
    init: Path
    bad_init: Path
    batch: Path
    hf_folder: Path
    final_loss: float


def shared_run(base: Path, seed: int) -> LmRun:
    """The run of `seed` under a session's base folder: trained once, by whichever test asks."""
    folder = base / "lm_runs" / f"seed{seed}"
    done = folder / "done.json"
    if not done.is_file():
        tokenizer, blocks = corpus(base / "lm_runs")
        run = train_run(folder, seed, tokenizer, blocks)
        done.write_text(json.dumps({"final_loss": run.final_loss}))
    return _run_in(folder, json.loads(done.read_text())["final_loss"])


def _run_in(folder: Path, loss: float) -> LmRun:
    return LmRun(
        folder,
        folder / "gpt_faults.py",
        folder / "model.pt",
        folder / "init.pt",
        folder / "bad_init.pt",
        folder / "batch.pt",
        folder / "hf",
        loss,
    )


@functools.cache
def corpus(folder: Path) -> tuple[Any, torch.Tensor]:
    tokenizer = build_tokenizer(folder / "tokenizer")
    return tokenizer, lm_batches(tokenizer, docstring_texts(), block=BLOCK)


def train_run(folder: Path, seed: int, tokenizer: Any, blocks: torch.Tensor) -> LmRun:
    """A GPT-2 trained on the docstrings (all but the probe rows), saved every way diag reads."""
    from transformers import GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_gpt2_config(len(tokenizer))
    (folder / "gpt_config.json").write_text(json.dumps(config.to_diff_dict()))
    (folder / "gpt_faults.py").write_text(FAULTS_PY)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    torch.save(model.state_dict(), folder / "init.pt")
    torch.save(_big_init(model.state_dict(), seed), folder / "bad_init.pt")
    rows, tokens = PROBE_BATCH
    torch.save(blocks[-rows:, :tokens].clone(), folder / "batch.pt")
    loss = _train(model, blocks[:-rows], seed)
    torch.save(model.state_dict(), folder / "model.pt")
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    return _run_in(folder, loss)


def _big_init(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """N(0, 1) token embeddings (tied to the output layer): logits ~8 wide at step 0."""
    gen = torch.Generator().manual_seed(seed)
    bad = {k: v.clone() for k, v in state.items()}
    wte = torch.randn(bad["transformer.wte.weight"].shape, generator=gen)
    bad["transformer.wte.weight"] = wte
    bad["lm_head.weight"] = wte  # tied: one tensor under both names
    return bad


def _train(model: torch.nn.Module, blocks: torch.Tensor, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(math.nan)
    for _ in range(TRAIN_STEPS):
        rows = blocks[torch.randint(len(blocks), (TRAIN_BATCH,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def open_variant(run: LmRun, variant: str) -> Any:
    """The probe of one variant, opened as `diag check` opens it."""
    from diag.loaders.checkpoint import open_checkpoint
    from diag.loaders.probe_inputs import open_probe

    factory = "healthy" if variant in ("healthy", "bad_init") else variant
    init = run.bad_init if variant == "bad_init" else run.init
    return open_probe(
        f"{run.factories}:{factory}",
        str(run.batch),
        checkpoint=open_checkpoint(run.checkpoint),
        init=open_checkpoint(init),
    )


def measure(probe: Any, which: tuple[str, ...]) -> dict[str, float]:
    """The statistics each [grads] rule thresholds, for the rules in `which`."""
    from diag.activations import record_activations
    from diag.gradients import batch_mixing, check_gradients
    from diag.rules import grads

    out: dict[str, float] = {}
    if "gradients" in which:
        checked = check_gradients(probe)
        live = [g for g in checked if not (g.grad_none or g.grad_zero)]
        out["mismatch_error"] = max(g.relative_error for g in live)
        out["mismatched"] = sum(g.verdict == "mismatch" for g in checked)
        out["disconnected"] = sum(g.verdict == "disconnected" for g in checked)
    if "mixing" in which:
        mixing = batch_mixing(probe)
        out["mixing_ratio"] = mixing.worst_ratio if mixing.checked else math.nan
        out["future_ratio"] = mixing.worst_future if mixing.positions_checked else math.nan
    if "independence" in which:
        out.update(_independence(probe))
    if "overfit" in which:
        found = list(grads.overfit_one_batch(probe))
        out["overfit_ratio"] = found[0].evidence["ratio"] if found else 0.0
        out["overfit_fired"] = float(bool(found))
    if "init" in which:
        out.update(_init_loss(probe))
    if "activations" in which:
        acts = record_activations(probe)
        out["saturated"] = max((s.fraction for s in acts.saturations), default=0.0)
        relu = [a for a in acts.layers if a.consumer == "relu" and a.n_units]
        out["dead_fraction"] = max((a.n_dead / a.n_units for a in relu), default=0.0)
    return out


def _independence(probe: Any) -> dict[str, float]:
    from diag.rules.grads import _perturbed_outputs

    out, zeroed, _shuffled = _perturbed_outputs(probe)
    scale = float(out.abs().max()) or 1.0
    spread = float((out - out.mean(0, keepdim=True)).abs().max()) / scale
    return {"input_dependence": max(spread, float((out - zeroed).abs().max()) / scale)}


def _init_loss(probe: Any) -> dict[str, float]:
    model = probe.copy_model()
    model.load_state_dict(dict(probe.initial), strict=True)
    with torch.no_grad():
        loss = float(probe.loss(model))
    vocab = int(probe.logits(model).shape[-1])
    return {"init_loss_deviation": abs(loss - math.log(vocab)) / math.log(vocab)}
