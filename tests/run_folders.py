"""Real run folders, written by the real training libraries, for `diag check RUN_DIR`.

Each builder trains for a few seconds on the CPU and leaves exactly what the library leaves
(nothing is edited afterwards), then returns a `RunFolder` saying what was planted where.
The Hugging Face runs train lm_support's tiny GPT-2 on standard-library docstrings; the
Lightning and numbered-checkpoint runs train diag.demo's digits models.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_support import build_tokenizer, docstring_texts, lm_batches, tiny_gpt2_config

BLOCK = 64  # tokens per row; tiny_gpt2_config has 128 positions, so rows 64+ of wpe never train
EVAL_ROWS = 16
DOCSTRING_CHARS = 120_000


@dataclass(frozen=True)
class RunFolder:
    """What a builder wrote: the folder to check, its checkpoints in step order, the fault."""

    root: Path
    kind: str  # "hf-trainer", "peft-lora", "lightning", "numbered"
    checkpoints: tuple[Path, ...]
    steps: tuple[int, ...]
    planted: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class LmData:
    """The tokenizer and the token rows every Hugging Face run trains and evaluates on."""

    tokenizer: Any
    train: Any  # (N, BLOCK) int64
    eval: Any


def lm_data(folder: Path, vocab_size: int = 512) -> LmData:
    """A BPE trained on docstrings (saved to `folder`) and the docstrings as token rows."""
    tokenizer = build_tokenizer(folder, vocab_size=vocab_size)
    rows = lm_batches(tokenizer, docstring_texts(DOCSTRING_CHARS), block=BLOCK)
    return LmData(tokenizer, rows[EVAL_ROWS:], rows[:EVAL_ROWS])


def _dataset(rows: Any) -> Any:
    import torch

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": rows[i], "labels": rows[i]}

    return Rows()


def _arguments(out: Path, *, seed: int, max_steps: int, save_steps: int, **overrides: Any) -> Any:
    from transformers import TrainingArguments

    settings: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=EVAL_ROWS,
        max_steps=max_steps,
        save_steps=save_steps,
        eval_strategy="steps",
        eval_steps=save_steps,
        logging_steps=1,
        learning_rate=2e-3,
        warmup_steps=2,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def _quiet(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout


def _checkpoints(out: Path) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    found = sorted(
        (int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if p.name[11:].isdigit()
    )
    return tuple(p for _, p in found), tuple(s for s, _ in found)


def _nan_planter(tensor: str, row: int, after_step: int) -> Any:
    from transformers import TrainerCallback

    class PlantNaN(TrainerCallback):
        """Writes one NaN into a weight once `after_step` steps are done.

        The NaN goes into a position-embedding row the 64-token rows never reach, so it
        gets no gradient and stays where it was put: the checkpoints before hold finite
        weights, every one from the next save on holds exactly this NaN.
        """

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any):
            if state.global_step == after_step:
                import torch

                with torch.no_grad():
                    model.get_parameter(tensor)[row, 0] = math.nan

    return PlantNaN()


def hf_trainer_run(
    out: Path,
    data: LmData,
    *,
    seed: int = 0,
    report_to: str = "none",
    nan_after: int | None = None,
    final: str | None = None,
    max_steps: int = 20,
    save_steps: int = 4,
    learning_rate: float = 1e-2,
) -> RunFolder:
    """transformers.Trainer on the tiny GPT-2: `checkpoint-N/` every `save_steps` steps.

    `nan_after=k` plants a NaN in `transformer.wpe.weight` after step k; `final` saves the
    trained model into `out` as "sharded" (safetensors shards of at most 100 kB and their
    index) or "bin" (`pytorch_model.bin`, the pre-safetensors name).
    """
    import torch
    from transformers import GPT2LMHeadModel, Trainer

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(len(data.tokenizer)))
    args = _arguments(
        out,
        seed=seed,
        max_steps=max_steps,
        save_steps=save_steps,
        report_to=report_to,
        learning_rate=learning_rate,
        warmup_steps=0,  # a warm-up this short run would spend flat looks like a plateau
    )
    planted: dict[str, Any] = {}
    callbacks = []
    if nan_after is not None:
        tensor, row = "transformer.wpe.weight", BLOCK + 3
        callbacks.append(_nan_planter(tensor, row, nan_after))
        first = next(s for s in range(save_steps, max_steps + 1, save_steps) if s >= nan_after)
        planted["nan"] = {"tensor": tensor, "after_step": nan_after, "first_checkpoint_step": first}
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_dataset(data.train),
        eval_dataset=_dataset(data.eval),
        callbacks=callbacks,
    )
    _quiet(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    extra = {}
    if final == "sharded":
        model.save_pretrained(out, max_shard_size="100KB")
        extra["index"] = out / "model.safetensors.index.json"
    elif final == "bin":
        # transformers 5 writes only safetensors; the legacy name is torch.save of the
        # state dict, as transformers 4 wrote it with save_safetensors=False.
        model.config.save_pretrained(out)
        torch.save(model.state_dict(), out / "pytorch_model.bin")
        extra["bin"] = out / "pytorch_model.bin"
    checkpoints, steps = _checkpoints(out)
    return RunFolder(out, "hf-trainer", checkpoints, steps, planted, seconds, extra)


def lora_run(
    out: Path,
    data: LmData,
    *,
    seed: int = 0,
    stuck_layers: tuple[int, ...] = (),
    max_steps: int = 8,
    save_steps: int = 2,
    learning_rate: float = 2e-3,
    target_modules: tuple[str, ...] = ("c_attn",),
    slow_layers: tuple[int, ...] = (),
    full_state: bool = False,
    base: Path | None = None,
) -> RunFolder:
    """PEFT LoRA (r 4, alpha 8, on `target_modules`) over the tiny GPT-2, with the Trainer.

    The base model is saved first to `out/../<name>-base/` and loaded from there, so the
    adapter's config names a real local base folder; the fresh adapter is saved with
    `save_pretrained` to `out/../<name>-initial/` before training.
    `stuck_layers` freezes the `lora_B` of those blocks by mistake (`requires_grad_(False)`):
    B stays at its zero init, and since B is zero the gradient of that block's A is zero
    too, so neither moves. `slow_layers` gives the adapter of those blocks' `c_attn` a
    learning rate 10,000 times smaller (a parameter group set up wrong). `full_state` also
    writes `torch.save(model.state_dict())` of the trained peft model (base and adapter
    tensors together) to `out/../<name>-full.pt`.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel, Trainer

    base_dir = base or out.parent / f"{out.name}-base"
    if base is None:
        torch.manual_seed(seed + 1000)  # the base differs from the adapter's own draws
        GPT2LMHeadModel(tiny_gpt2_config(len(data.tokenizer))).save_pretrained(base_dir)
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    initial = out.parent / f"{out.name}-initial"
    model.save_pretrained(initial)  # the adapter before any step: B is all zeros
    stuck, slow, rest = [], [], []
    for name, param in model.named_parameters():
        block = re.search(r"\.h\.(\d+)\.", name)
        layer = int(block.group(1)) if block else None
        if "lora_B" in name and layer in stuck_layers:
            param.requires_grad_(False)
            stuck.append(name.removeprefix("base_model.model.").split(".lora_B")[0])
        elif param.requires_grad:
            (slow if "c_attn.lora" in name and layer in slow_layers else rest).append(param)
    optimizer = None
    if slow:
        groups = [{"params": rest}, {"params": slow, "lr": learning_rate * 1e-4}]
        optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=0.0)
    args = _arguments(
        out,
        seed=seed,
        max_steps=max_steps,
        save_steps=save_steps,
        learning_rate=learning_rate,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_dataset(data.train),
        eval_dataset=_dataset(data.eval),
        optimizers=(optimizer, None),
    )
    _quiet(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    extra = {"base": base_dir, "initial": initial}
    if full_state:
        extra["full"] = out.parent / f"{out.name}-full.pt"
        torch.save(model.state_dict(), extra["full"])
    checkpoints, steps = _checkpoints(out)
    planted: dict[str, Any] = {"frozen_lora_B": stuck} if stuck else {}
    if slow_layers:
        planted["slow_layers"] = [f"transformer.h.{i}.attn.c_attn" for i in slow_layers]
    return RunFolder(out, "peft-lora", checkpoints, steps, planted, seconds, extra)


def _mlp() -> Any:
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            return self.out(nn.functional.relu(self.fc2(nn.functional.relu(self.fc1(x)))))

    return Mlp()


def _mlp_with_head() -> Any:
    """The same MLP with its last layer named `head`: peft matches `modules_to_save` by the
    end of a module's name, and "out" would also match peft's own `lora_dropout`."""
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            return self.head(nn.functional.relu(self.fc2(nn.functional.relu(self.fc1(x)))))

    return Mlp()


def _with_lora(mlp: Any, lora: str) -> Any:
    """peft LoRA on fc1 and fc2, the head trained in full; "frozen_b" freezes every lora_B."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], modules_to_save=["head"])
    model = get_peft_model(mlp, config)
    if lora == "frozen_b":
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.requires_grad_(False)
    return model


def _digits_module(frozen: str | None, nan_epoch: int | None, lora: str | None, seed: int) -> Any:
    import lightning as L
    import torch
    from torch import nn

    class DigitsMLP(L.LightningModule):
        """A small MLP on the 8x8 digits; `frozen` names a layer frozen by mistake."""

        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(
                {"lr": 0.05, "frozen": frozen, "nan_epoch": nan_epoch, "lora": lora}
            )
            torch.manual_seed(seed)
            if lora:
                self.net = _with_lora(_mlp_with_head(), lora)
            else:
                mlp = _mlp()
                self.fc1, self.fc2, self.out = mlp.fc1, mlp.fc2, mlp.out
            if frozen:
                self.get_submodule(frozen).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if lora:
                return self.net(x.flatten(1))
            x = torch.relu(self.fc1(x.flatten(1)))
            return self.out(torch.relu(self.fc2(x)))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            logits = self(batch[0])
            self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
            self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())

        def on_train_epoch_end(self) -> None:
            # A NaN that reaches the loss spreads to every weight at the next step.
            if nan_epoch is not None and self.current_epoch == nan_epoch:
                with torch.no_grad():
                    self.fc2.weight[0, 0] = math.nan

        def configure_optimizers(self) -> Any:
            # Every parameter goes to the optimizer, frozen or not: the usual code.
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return DigitsMLP()


def lightning_run(
    out: Path,
    *,
    seed: int = 0,
    epochs: int = 4,
    frozen: str | None = None,
    nan_epoch: int | None = None,
    lora: str | None = None,
) -> RunFolder:
    """lightning.Trainer on the digits with its TensorBoard logger and a CSVLogger, both in
    `lightning_logs/version_0/`, and a `.ckpt` after every epoch.

    `frozen="fc1"` freezes that layer by mistake (it stays in the optimizer, which keeps
    no state for it); `nan_epoch=k` writes a NaN into `fc2.weight` at the end of epoch k.
    `lora="healthy"` trains a peft LoRA (r 4) on fc1 and fc2 of the MLP, now `self.net`,
    with the head in full; `lora="frozen_b"` freezes every `lora_B` by mistake.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from diag.demo import digits

    x, y, xv, yv = digits(seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(xv, yv), batch_size=512)
    loggers = [
        TensorBoardLogger(out, name="lightning_logs", version=0),
        CSVLogger(out, name="lightning_logs", version=0),
    ]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[ModelCheckpoint(every_n_epochs=1, save_top_k=-1)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        deterministic=True,
    )
    model = _digits_module(frozen, nan_epoch, lora, seed)
    start = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - start
    folder = out / "lightning_logs" / "version_0" / "checkpoints"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: int(re.search(r"step=(\d+)", p.name)[1]))
    steps = tuple(int(re.search(r"step=(\d+)", p.name)[1]) for p in found)
    planted: dict[str, Any] = {}
    if frozen:
        planted["frozen"] = f"{frozen}.weight"
    if lora == "frozen_b":
        planted["frozen_lora_B"] = ["fc1", "fc2"]
    if nan_epoch is not None:
        planted["nan"] = {
            "tensor": "fc2.weight",
            "epoch": nan_epoch,
            "first_checkpoint_step": steps[nan_epoch],
        }
    return RunFolder(out, "lightning", tuple(found), steps, planted, seconds)


NUMBERED_STYLES = {
    # style: the file name of a checkpoint, from (epoch from 1, step, validation loss)
    "step": lambda epoch, step, loss: f"ckpt_{step:06d}.pt",
    "epoch": lambda epoch, step, loss: f"epoch={epoch:02d}.pt",
    "keras": lambda epoch, step, loss: f"weights.{epoch:02d}-{loss:.2f}.safetensors",
}


def numbered_run(
    out: Path, *, style: str = "step", seed: int = 0, epochs: int = 4, detach_conv1: bool = False
) -> RunFolder:
    """diag.demo's digits CNN, saved after every epoch into one flat folder of numbered files.

    "step" and "epoch" files are `torch.save` of {"model", "optimizer", "step", "epoch"}
    (a step-0 file holds the initial weights); "keras" files are safetensors of the weights
    alone, named as Keras' ModelCheckpoint names them. `detach_conv1` cuts conv1 from the
    graph, so the optimizer never gets a gradient for it.
    """
    import torch
    from safetensors.torch import save_file
    from torch.nn.functional import cross_entropy

    from diag.demo import Faults, build_model, digits

    name_of = NUMBERED_STYLES[style]
    out.mkdir(parents=True, exist_ok=True)
    x, y, xv, yv = digits(seed)
    model = build_model(Faults(detach_conv1=detach_conv1), seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    saved, steps, step = [], [], 0
    start = time.perf_counter()

    def save(epoch: int, loss: float) -> None:
        path = out / name_of(epoch, step, loss)
        if style == "keras":
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        else:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "step": step, "epoch": epoch}, path)
        saved.append(path)
        steps.append(step)

    if style == "step":
        save(0, math.nan)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(64):
            optimizer.zero_grad()
            cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            step += 1
        model.eval()
        with torch.no_grad():
            save(epoch, float(cross_entropy(model(xv), yv)))
    seconds = time.perf_counter() - start
    planted = {"stuck": "conv1.weight"} if detach_conv1 else {}
    return RunFolder(out, "numbered", tuple(saved), tuple(steps), planted, seconds)
