"""The framework callbacks on real training: Lightning on the digits, the HF Trainer on text.

Each run is a real tiny model on real data (scikit-learn's digits for a Lightning CNN, a
2-layer byte-level GPT-2 on the docstrings of Python's standard library for the Hugging
Face Trainer), trained once per module, healthy or with one fault planted at a known
step. Checks run every 20 steps (`budget=1.0`: these models are so fast that the budget
would otherwise skip them).

Measured on the healthy runs: the Lightning CNN (weight decay 0.01) ends with no finding
on seeds 0-2 under the default and AVX2 kernels. With weight decay 1e-4 the same 184 steps
leave seed 0's conv1 at a median autocorrelation of 0.05 (p = 0.05), and `noisy-kernels`
says so; with the demo's 0.1, up to 7 of conv1's 16 filters die (never positive on any of
the 1,797 digits), and one sampled batch showed 9 silent: `dead-units` says so. Both are
short runs' facts, not false alarms.
The GPT-2 ends with no finding (train loss 5.4 -> 3.0, eval loss 3.5 -> 2.9 in 150 steps).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from live_runs import gradient_margins
from torch.nn.functional import cross_entropy

import diag.live
from diag.demo import Faults, build_model, digits
from diag.live import LiveSession

pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")

from diag.integrations.lightning import DiagCallback as LightningCallback  # noqa: E402
from diag.integrations.transformers import DiagCallback as HFCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

EVERY = 20
OPTIONS = {"budget": 1.0, "echo": lambda line: None}
REPORTS = ("diag.json", "diag.sarif", "diag.junit.xml", "diag.html")
ERRORS = {"loss-nonfinite", "nonfinite-parameter", "exploding-gradients"}


@dataclass(frozen=True)
class Fault:
    nan_at: int | None = None  # a NaN in the batch from this step on
    lr_jump_at: int | None = None  # the learning rate multiplied by 300 at this step
    detach: bool = False  # a layer's weight used through .detach(): never trained
    checkpoints: bool = False
    raises: bool = False  # a check that raises (see the tests)


def _rules(findings: Any) -> set[str]:
    return {f.rule for f in findings}


def _loud(result: Any) -> list[str]:
    return [f"{f.rule} {f.location.object}" for f in result.findings if f.severity.label != "info"]


# --------------------------------------------------------------------- Lightning


class Digits(pl.LightningModule):
    """The demo's digits CNN; `training_step` calls `self(x)`, as Lightning code does."""

    def __init__(self, fault: Fault, seed: int = 0) -> None:
        super().__init__()
        self.net = build_model(Faults(detach_conv1=fault.detach), seed)
        self.fault = fault
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        step = self.global_step + 1
        if self.fault.nan_at is not None and step >= self.fault.nan_at:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        if self.fault.lr_jump_at == step and batch_idx % self.trainer.accumulate_grad_batches == 0:
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] *= 300.0
        loss = cross_entropy(self(x), y)
        self.losses.append(float(loss))
        self.log("train_loss", loss)  # the user's own logging shares the name: no clash
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        # With 1e-4, 184 steps can leave conv1 noisy (module docs). The demo's 0.1 kills up
        # to 7 of conv1's 16 filters (measured over all 1,797 digits, seeds 0-2, default and
        # AVX2 kernels), and one sampled batch then saw 9 of 16 silent: a dead-units warning
        # that is the truth of that model. With 0.01: 0-1 dead, validation accuracy 98-99%.
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


@dataclass
class LightningRun:
    trainer: Any
    callback: Any
    module: Digits
    folder: Path


class DigitsCallingNet(Digits):
    """A `training_step` that calls the inner network, never the module's own forward."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return cross_entropy(self.net(x), y)


def fit_lightning(
    folder: Path,
    fault: Fault = Fault(),
    *,
    epochs: int = 8,
    accumulate: int = 1,
    seed: int = 0,
    module_class: type = Digits,
    **options: Any,
) -> LightningRun:
    from torch.utils.data import DataLoader, TensorDataset

    x, y, xv, yv = digits(seed)
    module = module_class(fault, seed)
    callbacks: list[Any] = [
        LightningCallback(every_n_steps=EVERY, **{"output": folder / "diag", **OPTIONS, **options})
    ]
    if fault.checkpoints:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=folder / "ckpt", every_n_train_steps=EVERY, save_top_k=-1
            )
        )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=fault.checkpoints,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        default_root_dir=folder,
    )
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)
    trainer.fit(module, train, DataLoader(TensorDataset(xv, yv), batch_size=512))
    return LightningRun(trainer, callbacks[0], module, folder)


@pytest.fixture(scope="module")
def lightning_runs(
    one_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, LightningRun]:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("lightning")
    faults = {
        "healthy": Fault(),
        "nan": Fault(nan_at=50, checkpoints=True),
        "detach": Fault(detach=True),
        "lr": Fault(lr_jump_at=50),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = {name: fit_lightning(root / name, fault) for name, fault in faults.items()}
        # The default folder: the trainer's log_dir, here (no logger) its default_root_dir.
        runs["default_output"] = fit_lightning(root / "default", epochs=1, output=None)
    return runs


@pytest.mark.calibration
def test_lightning_healthy_run_is_never_stopped_and_ends_clean(lightning_runs) -> None:
    run = lightning_runs["healthy"]
    assert run.callback.stopped_at is None and not run.trainer.should_stop
    assert run.trainer.global_step == 8 * 23
    assert _loud(run.callback.result) == []
    live = run.callback.result.metadata["live"]
    assert live["checks"] >= run.trainer.global_step // EVERY and live["stopped_at"] is None
    # The step loss is the one training_step returned (the session's own series).
    losses = run.callback.session.series["train_loss"]
    assert losses.steps == list(range(1, 185))
    assert losses.values == pytest.approx(run.module.losses, rel=1e-6)
    assert {"val_loss", "val_acc"} <= set(run.callback.session.series)
    assert losses.epochs[-1] == pytest.approx(8.0)


def test_lightning_nan_loss_stops_the_run_at_its_step(lightning_runs) -> None:
    run = lightning_runs["nan"]
    callback = run.callback
    assert callback.stopped_at == 50 and run.trainer.global_step == 50
    stop = callback.session.stop
    assert stop.step == 50 and "stopping at step 50: loss-nonfinite train_loss" in stop.message
    # Checks at 20 and 40 were clean; ModelCheckpoint saved at both.
    assert stop.last_clean is not None and stop.last_clean.endswith("step=40.ckpt")
    assert "last clean checkpoint:" in stop.message
    result = callback.result
    assert (
        "loss-nonfinite" in _rules(result.findings) and result.metadata["live"]["stopped_at"] == 50
    )
    written = json.loads((run.folder / "diag" / "diag.json").read_text())
    assert "loss-nonfinite" in {f["rule"] for f in written["findings"]}
    assert all((run.folder / "diag" / name).stat().st_size > 0 for name in REPORTS)


def test_lightning_frozen_layer_stops_at_the_first_check(lightning_runs) -> None:
    run = lightning_runs["detach"]
    assert run.callback.stopped_at == EVERY and run.trainer.global_step == EVERY
    stop = run.callback.session.stop
    assert "no-gradient net.conv1.weight" in stop.message
    no_gradient = [f for f in run.callback.result.findings if f.rule == "no-gradient"]
    assert [f.location.object for f in no_gradient] == ["net.conv1.weight"]
    assert all((run.folder / "diag" / name).exists() for name in REPORTS)


@pytest.mark.calibration
def test_lightning_learning_rate_blow_up_stops_within_one_interval(lightning_runs) -> None:
    run = lightning_runs["lr"]
    assert run.callback.stopped_at is not None and 50 <= run.callback.stopped_at <= 50 + EVERY
    stop = run.callback.session.stop
    assert _rules(stop.findings) & ERRORS and stop.findings[0].rule in stop.message
    assert _rules(stop.findings) <= _rules(run.callback.result.findings)
    assert (run.folder / "diag" / "diag.sarif").exists()


def test_lightning_reports_go_to_the_trainer_folder_by_default(lightning_runs) -> None:
    run = lightning_runs["default_output"]
    assert run.callback.folder == run.folder
    assert all((run.folder / name).exists() for name in REPORTS)


def test_lightning_gradient_accumulation_gives_one_loss_per_optimizer_step(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = fit_lightning(tmp_path, epochs=1, accumulate=2, output=None, formats=())
    series = run.callback.session.series["train_loss"]
    steps = run.trainer.global_step
    assert series.steps == list(range(1, steps + 1)) and steps == 12  # 23 batches, by 2
    pairs = [run.module.losses[i : i + 2] for i in range(0, 23, 2)]
    assert series.values == pytest.approx([sum(p) / len(p) for p in pairs][:steps], rel=1e-5)
    assert run.callback.session.gradients.steps == [2 * k for k in range(1, 7)]


def test_lightning_a_check_that_raises_is_reported_once_and_training_goes_on(
    tmp_path, monkeypatch
) -> None:
    def broken(self: LiveSession, run: Any, final: bool) -> None:
        raise RuntimeError("statistics failed")

    monkeypatch.setattr(LiveSession, "_live_checkpoint", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = fit_lightning(tmp_path, epochs=2, stop_on="warning")
    assert run.callback.stopped_at is None and run.trainer.global_step == 46
    errors = run.callback.result.errors
    assert [e.rule for e in errors] == ["live check", "final check"]
    assert "RuntimeError: statistics failed" in errors[0].message
    written = json.loads((tmp_path / "diag" / "diag.json").read_text())
    assert [e["rule"] for e in written["errors"]] == ["live check", "final check"]


# ------------------------------------------------------------ Hugging Face Trainer


def stdlib_text() -> bytes:
    """Real English prose and code: the docstrings of a few standard-library modules."""
    import argparse
    import collections
    import dataclasses as dc
    import functools
    import inspect
    import pathlib
    import random
    import re
    import string
    import textwrap
    import typing

    parts = []
    modules = (json, collections, functools, textwrap, argparse, pathlib, inspect, random, re)
    for module in (*modules, string, dc, typing, logging):
        for _, obj in sorted(vars(module).items()):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                parts.append(doc)
    return "\n\n".join(parts).encode("utf-8", "replace")


class Chunks(torch.utils.data.Dataset):
    """Byte-level language modelling: fixed windows of 64 bytes, labels = inputs."""

    def __init__(self, data: bytes, length: int = 64) -> None:
        ids = torch.tensor(list(data), dtype=torch.long)
        self.x = ids[: len(ids) // length * length].view(-1, length)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class LearningRateJump(transformers.TrainerCallback):
    """A scheduler bug: the learning rate becomes 300 times larger at one step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if state.global_step + 1 == self.at:
            for group in optimizer.param_groups:
                group["lr"] *= 300.0
            lr_scheduler.base_lrs = [lr * 300.0 for lr in lr_scheduler.base_lrs]


class LogRecorder(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({"step": state.global_step, **(logs or {})})


def plant(model: Any, fault: Fault) -> None:
    if fault.nan_at is not None:
        passes = [0]

        def overflow(module: Any, args: Any, output: Any) -> None:
            # A training forward pass from step nan_at on overflows in the first block.
            if module.training:
                passes[0] += 1
                if passes[0] >= fault.nan_at:
                    (output[0] if isinstance(output, tuple) else output)[0, 0, 0] = float("nan")

        model.transformer.h[0].register_forward_hook(overflow)
    if fault.detach:
        layer = model.transformer.h[1].mlp.c_fc

        def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
            weight = self.weight.detach()  # the mistake: this layer never trains
            out = torch.addmm(self.bias, x.view(-1, x.size(-1)), weight)
            return out.view(*x.size()[:-1], self.nf)

        layer.forward = types.MethodType(forward, layer)


@dataclass
class HFRun:
    trainer: Any
    callback: Any
    folder: Path
    logs: LogRecorder


def train_gpt2(
    folder: Path,
    fault: Fault = Fault(),
    *,
    steps: int = 150,
    accumulate: int = 1,
    save_steps: int = 0,
    seed: int = 0,
    **options: Any,
) -> HFRun:
    data = stdlib_text()
    cut = int(len(data) * 0.9)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    plant(model, fault)
    args = transformers.TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=16 // accumulate,
        gradient_accumulation_steps=accumulate,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1 if accumulate > 1 else 10,
        eval_strategy="steps",
        eval_steps=50,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )
    logs = LogRecorder()
    callback = HFCallback(every_n_steps=EVERY, **{**OPTIONS, **options})
    extra = [LearningRateJump(fault.lr_jump_at)] if fault.lr_jump_at else []
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Chunks(data[:cut]),
        eval_dataset=Chunks(data[cut:]),
        callbacks=[callback, logs, *extra],
    )
    trainer.train()
    return HFRun(trainer, callback, folder, logs)


@pytest.fixture(scope="module")
def hf_runs(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, HFRun]:
    transformers.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "healthy": train_gpt2(root / "healthy", output=root / "healthy" / "diag"),
            "nan": train_gpt2(root / "nan", Fault(nan_at=50), save_steps=EVERY),
            "detach": train_gpt2(root / "detach", Fault(detach=True)),
            # AdamW and the Trainer's clipping at 1.0 keep the loss finite: what shows is
            # the growth of the gradients, in a quarter of the tensors at once (an error:
            # rules/live.py), so the default stop_on="error" stops it.
            "lr": train_gpt2(root / "lr", Fault(lr_jump_at=50)),
        }


@pytest.mark.calibration
def test_hf_healthy_run_is_never_stopped_and_ends_clean(hf_runs) -> None:
    run = hf_runs["healthy"]
    assert run.callback.stopped_at is None and run.trainer.state.global_step == 150
    assert _loud(run.callback.result) == []
    series = run.callback.session.series
    losses = series["train_loss"]
    assert losses.steps == list(range(1, 151))
    assert losses.values[-1] < 0.7 * losses.values[0]  # it learned
    assert series["eval_loss"].steps == [50, 100, 150]
    assert not any(name.endswith(("_runtime", "_per_second")) for name in series)
    assert all((run.folder / "diag" / name).exists() for name in REPORTS)


def test_hf_nan_loss_stops_the_run_at_its_step(hf_runs) -> None:
    run = hf_runs["nan"]
    assert run.callback.stopped_at == 50 and run.trainer.state.global_step == 50
    stop = run.callback.session.stop
    assert "stopping at step 50: loss-nonfinite train_loss" in stop.message
    # The Trainer logs the NaN away (logging_nan_inf_filter); the forward hook saw it.
    assert all(entry.get("loss", 0) == entry.get("loss", 0) for entry in run.logs.logs)
    assert stop.last_clean == str(run.folder / "checkpoint-40")
    assert "loss-nonfinite" in _rules(run.callback.result.findings)
    written = json.loads((run.folder / "diag.json").read_text())  # default: output_dir
    assert written["summary"]["error"] >= 1
    assert all((run.folder / name).exists() for name in REPORTS)


def test_hf_frozen_layer_stops_at_the_first_check(hf_runs) -> None:
    run = hf_runs["detach"]
    assert run.callback.stopped_at == EVERY and run.trainer.state.global_step == EVERY
    name = "transformer.h.1.mlp.c_fc.weight"
    assert f"no-gradient {name}" in run.callback.session.stop.message
    found = [f.location.object for f in run.callback.result.findings if f.rule == "no-gradient"]
    assert found == [name]


@pytest.mark.calibration
def test_hf_learning_rate_blow_up_stops_within_one_interval(hf_runs) -> None:
    run = hf_runs["lr"]
    assert run.callback.stopped_at is not None and 50 <= run.callback.stopped_at <= 50 + EVERY
    stop = run.callback.session.stop
    assert "exploding-gradients" in _rules(stop.findings)
    assert stop.findings[0].rule in stop.message
    grown = [f for f in run.callback.result.findings if f.rule == "exploding-gradients"]
    assert grown and min(f.evidence["growth"] for f in grown) > 100
    assert all(f.severity.label == "error" for f in grown)
    # Model-wide: 14-29% of the tensors (seeds 0-2, default and AVX2 kernels), against
    # the 5% that escalates.
    assert len(grown) >= 0.1 * grown[0].evidence["judged_tensors"]


def test_hf_gradient_accumulation_loss_matches_the_trainers(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_gpt2(tmp_path, steps=10, accumulate=2, formats=())
    logged = {e["step"]: e["loss"] for e in run.logs.logs if "loss" in e and "train_loss" not in e}
    series = run.callback.session.series["train_loss"]
    assert series.steps == list(range(1, 11))
    assert dict(zip(series.steps, series.values, strict=True)) == pytest.approx(logged, rel=1e-3)


class LogitsOnly(transformers.Trainer):
    """A Trainer whose own compute_loss takes the labels: the model returns no loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        loss = cross_entropy(logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1))
        return (loss, logits) if return_outputs else loss


def test_hf_without_a_loss_in_the_output_the_logged_loss_is_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(transformers, "Trainer", LogitsOnly)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_gpt2(tmp_path, steps=30, formats=())
    series = run.callback.session.series["train_loss"]
    assert series.steps == [10, 20, 30]  # logging_steps
    logged = [e["loss"] for e in run.logs.logs if "loss" in e and "train_loss" not in e]
    assert series.values == pytest.approx(logged)


def test_hf_a_rule_that_raises_is_reported_once_and_training_goes_on(tmp_path, monkeypatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise ZeroDivisionError("planted")

    original = diag.live._live_specs

    def specs(select: list[str], ignore: list[str]) -> list[Any]:
        return [
            dataclasses.replace(s, func=boom) if s.name == "exploding-gradients" else s
            for s in original(select, ignore)
        ]

    monkeypatch.setattr(diag.live, "_live_specs", specs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_gpt2(tmp_path, steps=60, stop_on="warning")
    assert run.callback.stopped_at is None and run.trainer.state.global_step == 60
    errors = run.callback.result.errors
    assert [e.rule for e in errors] == ["exploding-gradients"]
    assert "ZeroDivisionError: planted" in errors[0].message


# ------------------------------------------------------------------------------ both


@pytest.fixture(scope="module")
def more_seeds(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    root = tmp_path_factory.mktemp("seeds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs: dict[Any, Any] = {}
        for seed in (1, 2):
            runs["lightning", seed] = fit_lightning(root / f"pl{seed}", seed=seed, formats=())
            runs["hf", seed] = train_gpt2(root / f"hf{seed}", seed=seed, formats=())
    return runs


@pytest.mark.calibration
@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_healthy_runs_over_seeds_stay_clean_and_far_from_the_gradient_thresholds(
    framework, lightning_runs, hf_runs, more_seeds
) -> None:
    """Measured (seeds 0-2, default and AVX2 kernels): the Lightning CNN's gradients grew at
    most 6.7x over their own history, the GPT-2's 29.6x (transformer.h.0.ln_2.bias: a
    LayerNorm's gradient starts near 2e-4 and grows as the blocks start to matter, while
    the loss falls 5.4 -> 2.9); exploding-gradients fires at 100x, and the learning rate
    raised 300-fold grows them 112x-730x under the Trainer's clipping. No tensor fell
    more than 0.80 decades further than the median one (vanishing-gradients: 3)."""
    first = (lightning_runs if framework == "lightning" else hf_runs)["healthy"]
    runs = [first, more_seeds[framework, 1], more_seeds[framework, 2]]
    growth_bound = 10 if framework == "lightning" else 50
    for run in runs:
        assert run.callback.stopped_at is None and _loud(run.callback.result) == []
        margins = gradient_margins(run.callback.session.gradients)
        assert margins["growth"] < growth_bound and margins["lag_decades"] < 1.5


def test_import_diag_loads_neither_framework() -> None:
    code = (
        "import sys, diag; diag.Monitor; import diag.integrations; "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lightning_samples_activations_when_training_step_skips_forward(tmp_path) -> None:
    """The sampled step is bracketed from batch start to backward, so the activations are
    recorded whichever module `training_step` calls; dead-units and saturated-activations
    then read them at every check."""
    run = fit_lightning(tmp_path, epochs=2, module_class=DigitsCallingNet, formats=())
    session = run.callback.session
    assert session._activations is not None
    layers = {layer.name for layer in session._activations.layers}
    assert {"net.conv1", "net.fc1", "net.fc2"} <= layers
    timings = run.callback.result.metadata["timings"]
    assert {"dead-units", "saturated-activations"} <= set(timings)
    assert _loud(run.callback.result) == []
