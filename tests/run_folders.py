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


def lm_data(folder: Path) -> LmData:
    """A BPE trained on docstrings (saved to `folder`) and the docstrings as token rows."""
    tokenizer = build_tokenizer(folder, vocab_size=512)
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
    max_steps: int = 10,
    save_steps: int = 2,
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
        out, seed=seed, max_steps=max_steps, save_steps=save_steps, report_to=report_to
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
) -> RunFolder:
    """PEFT LoRA (r 4, alpha 8, on every `c_attn`) over the tiny GPT-2, with the Trainer.

    The base model is saved first to `out/../<name>-base/` and loaded from there, so the
    adapter's config names a real local base folder. `stuck_layers` freezes the `lora_B`
    of those blocks by mistake (`requires_grad_(False)`): B stays at its zero init, and
    since B is zero the gradient of that block's A is zero too, so neither moves.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel, Trainer

    base_dir = out.parent / f"{out.name}-base"
    torch.manual_seed(seed + 1000)  # the base differs from the adapter's own draws
    GPT2LMHeadModel(tiny_gpt2_config(len(data.tokenizer))).save_pretrained(base_dir)
    base = GPT2LMHeadModel.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    stuck = []
    for name, param in model.named_parameters():
        block = re.search(r"\.h\.(\d+)\.", name)
        if "lora_B" in name and block and int(block.group(1)) in stuck_layers:
            param.requires_grad_(False)
            stuck.append(name)
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
    )
    _quiet(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    checkpoints, steps = _checkpoints(out)
    planted = {"frozen_lora_B": stuck} if stuck else {}
    return RunFolder(out, "peft-lora", checkpoints, steps, planted, seconds, {"base": base_dir})
