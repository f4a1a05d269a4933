"""Each params rule on hand-built checkpoints: the fault it names fires, the healthy twin is silent.

Cases are data (one row per rule and situation), run by one parametrised test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from diag.api import CheckOptions, check
from diag.registry import DOC_SECTIONS, load_rules


def linear(out: int, fan_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(fan_in)
    return (torch.rand(out, fan_in, generator=g) * 2 - 1) * bound


def conv(out: int, cin: int, k: int, seed: int = 0) -> torch.Tensor:
    return linear(out, cin * k * k, seed).reshape(out, cin, k, k)


def smooth_conv(out: int, k: int = 5) -> torch.Tensor:
    """Oriented gradients and blobs: what a trained first layer looks like."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, k), torch.linspace(-1, 1, k), indexing="ij")
    kernels = []
    for i in range(out):
        angle = math.pi * i / out
        edge = math.cos(angle) * xs + math.sin(angle) * ys
        kernels.append(edge * torch.exp(-(xs**2 + ys**2)) * (0.3 + 0.05 * i))
    return torch.stack(kernels).unsqueeze(1)


def healthy() -> dict[str, torch.Tensor]:
    return {
        "conv1.weight": smooth_conv(8),
        "conv1.bias": torch.zeros(8),
        "fc1.weight": linear(32, 64, 1),
        "fc1.bias": torch.zeros(32),
        "fc2.weight": linear(10, 32, 2),
    }


def moved(state: dict[str, torch.Tensor], scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        k: v + scale * v.std().clamp(min=0.01) * torch.randn(v.shape, generator=g)
        for k, v in state.items()
    }


def with_(state: dict, **changes: torch.Tensor) -> dict:
    out = dict(state)
    out.update({k.replace("__", "."): v for k, v in changes.items()})
    return out


def lora() -> dict[str, torch.Tensor]:
    """A trained LoRA adapter file (peft's names) on three modules: every B has moved."""
    out = {}
    for i in range(3):
        module = f"base_model.model.h.{i}.attn.c_attn"
        out[f"{module}.lora_A.weight"] = linear(4, 64, 10 + i)
        out[f"{module}.lora_B.weight"] = linear(192, 4, 20 + i) * 0.01
    return out


def lora_b_zero(state: dict) -> dict:
    return {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in state.items()}


LORA_B1 = "base_model.model.h.1.attn.c_attn.lora_B.weight"


@dataclass
class Case:
    id: str
    rule: str
    final: Callable[[], dict]
    init: Callable[[], dict] | None = None
    fires_on: frozenset[str] = frozenset()


CASES = [
    Case("nan-weight", "nonfinite-parameter",
         lambda: with_(healthy(), fc1__weight=linear(32, 64).index_fill(1, torch.tensor([3]), float("nan"))),
         fires_on=frozenset({"fc1.weight"})),
    Case("inf-bias", "nonfinite-parameter",
         lambda: with_(healthy(), fc1__bias=torch.full((32,), float("inf"))), fires_on=frozenset({"fc1.bias"})),
    Case("finite", "nonfinite-parameter", healthy),
    Case("zero-matrix", "constant-parameter",
         lambda: with_(healthy(), fc1__weight=torch.zeros(32, 64)), fires_on=frozenset({"fc1.weight"})),
    Case("filled-matrix", "constant-parameter",
         lambda: with_(healthy(), fc2__weight=torch.full((10, 32), 0.1)), fires_on=frozenset({"fc2.weight"})),
    Case("zero-bias-is-fine", "constant-parameter", healthy),
    Case("constant-init", "constant-parameter", healthy,
         init=lambda: with_(healthy(), fc1__weight=torch.full((32, 64), 0.05)), fires_on=frozenset({"fc1.weight"})),
    Case("copied-rows", "symmetric-units",
         lambda: with_(healthy(), fc1__weight=linear(1, 64).repeat(32, 1)), fires_on=frozenset({"fc1.weight"})),
    Case("two-copies-among-random", "symmetric-units",
         lambda: with_(healthy(), fc1__weight=torch.cat([linear(30, 64), linear(1, 64, 5).repeat(2, 1)])),
         fires_on=frozenset({"fc1.weight"})),
    Case("random-rows", "symmetric-units", healthy),
    Case("zero-rows", "dead-units",
         lambda: with_(healthy(), fc1__weight=linear(32, 64).index_fill(0, torch.tensor([0, 5, 9]), 0.0)),
         fires_on=frozenset({"fc1.weight"})),
    Case("live-rows", "dead-units", healthy),
    Case("unit-normal-init", "init-scale", healthy,
         init=lambda: with_(healthy(), fc1__weight=torch.randn(32, 64, generator=torch.Generator().manual_seed(3)) * 2),
         fires_on=frozenset({"fc1.weight"})),
    Case("tiny-init", "init-scale", healthy,
         init=lambda: with_(healthy(), fc1__weight=linear(32, 64) * 1e-3), fires_on=frozenset({"fc1.weight"})),
    Case("gpt-style-0.02-init", "init-scale", healthy,
         init=lambda: with_(healthy(), fc1__weight=torch.randn(32, 64, generator=torch.Generator().manual_seed(4)) * 0.02)),
    Case("default-init", "init-scale", healthy, init=healthy),
    Case("frozen-layer", "stuck-parameter", lambda: with_(moved(healthy()), fc1__weight=healthy()["fc1.weight"]),
         init=healthy, fires_on=frozenset({"fc1.weight"})),
    Case("all-moved", "stuck-parameter", lambda: moved(healthy()), init=healthy),
    Case("one-layer-barely-moved", "update-ratio",
         lambda: with_(moved(healthy()), fc1__weight=healthy()["fc1.weight"] * (1 + 1e-5)),
         init=healthy, fires_on=frozenset({"fc1.weight"})),
    Case("one-layer-exploded", "update-ratio",
         lambda: with_(moved(healthy()), fc2__weight=healthy()["fc2.weight"] * 400), init=healthy,
         fires_on=frozenset({"fc2.weight"})),
    Case("even-updates", "update-ratio", lambda: moved(healthy()), init=healthy),
    Case("random-first-layer", "noisy-kernels", lambda: with_(healthy(), conv1__weight=conv(8, 1, 5)),
         fires_on=frozenset({"conv1.weight"})),
    Case("smooth-first-layer", "noisy-kernels", healthy),
    Case("deep-random-layer-not-judged", "noisy-kernels",
         lambda: with_(healthy(), conv2__weight=conv(16, 32, 3, 3))),
    Case("one-b-still-zero", "lora-stuck",
         lambda: with_(lora(), base_model__model__h__1__attn__c_attn__lora_B__weight=torch.zeros(192, 4)),
         fires_on=frozenset({LORA_B1})),
    Case("every-b-zero-at-step-10", "lora-stuck",
         lambda: {"state_dict": lora_b_zero(lora()), "global_step": 10}, fires_on=frozenset({"lora_B"})),
    Case("fresh-adapter-b-zero", "lora-stuck", lambda: lora_b_zero(lora())),
    Case("trained-adapter", "lora-stuck", lora),
    Case("one-module-far-behind", "lora-update-scale",
         lambda: with_(lora(), base_model__model__h__1__attn__c_attn__lora_B__weight=linear(192, 4, 21) * 1e-6),
         fires_on=frozenset({LORA_B1})),
    Case("even-modules", "lora-update-scale", lora),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}:{c.id}")
def test_rule_case(case: Case, tmp_path):
    final = tmp_path / "final.pt"
    torch.save(case.final(), final)
    init = None
    if case.init is not None:
        init = tmp_path / "init.pt"
        torch.save(case.init(), init)
    result, _ = check(CheckOptions(str(final), str(init) if init else None, select=[case.rule]))
    assert not result.errors
    assert {f.location.object for f in result.findings} == set(case.fires_on)


def test_every_params_rule_has_a_firing_and_a_silent_case():
    names = {s.name for s in load_rules() if s.group == "params"}
    firing = {c.rule for c in CASES if c.fires_on}
    silent = {c.rule for c in CASES if not c.fires_on}
    assert names == firing == silent


def test_every_rule_documents_itself():
    for spec in load_rules():
        sections = spec.sections()
        for heading in DOC_SECTIONS:
            assert sections.get(heading), f"{spec.name} lacks '## {heading}'"
        assert spec.summary and spec.summary.endswith(".")


def test_step_zero_checkpoint_is_treated_as_initial(tmp_path):
    path = tmp_path / "step0.ckpt"
    state = with_(healthy(), fc1__weight=torch.randn(32, 64) * 3)
    torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, path)
    result, _ = check(CheckOptions(str(path), select=["init-scale"]))
    assert [f.location.object for f in result.findings] == ["fc1.weight"]
    result, _ = check(CheckOptions(str(path), select=["update-ratio"]))
    assert [s.rule for s in result.skipped] == ["update-ratio"]


def test_a_crashing_rule_is_an_error_entry_and_the_run_goes_on(tmp_path, monkeypatch):
    import dataclasses

    from diag.rules import params

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    broken = dataclasses.replace(params.dead_units.__diag_rule__, func=boom)
    monkeypatch.setattr(params.dead_units, "__diag_rule__", broken)
    path = tmp_path / "m.pt"
    torch.save(with_(healthy(), fc1__weight=torch.zeros(32, 64)), path)
    result, _ = check(CheckOptions(str(path)))
    assert [(e.rule, e.message) for e in result.errors] == [("dead-units", "RuntimeError: kaboom")]
    assert {f.rule for f in result.findings} == {"constant-parameter"}


def test_zero_gradients_and_missing_gradients_from_adam_state(tmp_path):
    """A real model trained with Adam: one layer multiplied by zero, one never used."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "used": torch.nn.Linear(8, 4),
            "zeroed": torch.nn.Linear(8, 4),
            "unused": torch.nn.Linear(8, 4),
        }
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(5):
        optimizer.zero_grad()
        out = model["used"](x) + 0.0 * model["zeroed"](x)
        torch.nn.functional.mse_loss(out, y).backward()
        optimizer.step()
    path = tmp_path / "adam.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 5}, path)
    result, _ = check(CheckOptions(str(path), select=["stuck-parameter"]))
    found = {f.location.object: f for f in result.findings}
    assert set(found) == {"zeroed.weight", "zeroed.bias", "unused.weight", "unused.bias"}
    assert "only zero gradients" in found["zeroed.weight"].message
    assert "never received a gradient" in found["unused.weight"].message
    assert {f.severity.label for f in found.values()} == {"error"}


def test_a_failing_lazy_input_is_an_error_of_each_rule_not_a_skip(monkeypatch) -> None:
    """An AttributeError deep in the leakage analysis once made the three leakage rules
    "skipped: needs --split" in silence (getattr with a default swallowed it)."""
    import diag.run as run_module
    from diag.engine import run_rules
    from diag.registry import select_rules

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise AttributeError("deep inside the analysis")

    monkeypatch.setattr(run_module, "analyse_splits", broken)
    run = run_module.Run(splits={"train": object()})
    specs = [s for s in select_rules(load_rules(), ["data"], []) if "leakage" in s.needs]
    result = run_rules(run, specs)
    assert sorted(e.rule for e in result.errors) == sorted(s.name for s in specs)
    assert all("AttributeError: deep inside" in e.message for e in result.errors)
    assert result.skipped == ()
    assert calls == [1]  # computed once, its failure shared
