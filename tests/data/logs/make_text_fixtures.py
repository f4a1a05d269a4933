"""Regenerate the text-log fixtures of `tests/test_logs_tables.py` with the real writers.

Not run by CI: it needs torch, keras, lightning, transformers and accelerate, which the
project does not depend on. Run it from a scratch venv outside the repo:

    python3.11 -m venv /tmp/fixvenv
    /tmp/fixvenv/bin/pip install torch==2.13.0        # first: any other spec pulls CUDA
    /tmp/fixvenv/bin/pip install keras lightning transformers accelerate
    /tmp/fixvenv/bin/python tests/data/logs/make_text_fixtures.py

Each writer's folder gets `expected.json`: what our code handed to the writer, recorded
in-process (the values passed to `self.log`, the `logs` a Keras or HF callback received),
never read back from the file. The tests compare the loaders' output with it, so they check
the loaders against the writer's input, not against themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in names}


def make_keras(out: Path) -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], dtype="float32"))[:, None]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])

    seen: list[dict[str, float]] = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})

    out.mkdir(parents=True, exist_ok=True)
    model.fit(
        x[:24],
        y[:24],
        validation_data=(x[24:], y[24:]),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[Recorder(), keras.callbacks.CSVLogger(str(out / "training.csv"))],
    )
    _dump(out / "expected.json", {"writer": _versions("keras", "torch"), "epochs": seen})


def make_lightning(out: Path) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(0, verbose=False)
    train_seen: list[dict[str, float]] = []
    val_seen: list[dict[str, float]] = []

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.1, hidden: int = 4, name: str = "tiny") -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            train_seen.append(
                {"global_step": self.global_step, "epoch": self.current_epoch, "value": loss.item()}
            )
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), on_epoch=True)

        def on_validation_epoch_end(self) -> None:
            # The epoch mean Lightning computed and hands to the logger.
            value = self.trainer.callback_metrics["val_loss"].item()
            val_seen.append(
                {"global_step": self.global_step, "epoch": self.current_epoch, "value": value}
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8)
    val = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_epochs=2,
            logger=CSVLogger(save_dir=tmp, name="lightning_logs"),
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(Tiny(), train, val)
        version = Path(tmp) / "lightning_logs" / "version_0"
        dest = out / "lightning_logs" / "version_0"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "hparams.yaml"):
            shutil.copyfile(version / name, dest / name)
    _dump(
        out / "expected.json",
        {
            "writer": _versions("lightning", "torch"),
            "train_loss": train_seen,
            "val_loss": val_seen,
            "hparams": {"lr": 0.1, "hidden": 4, "name": "tiny"},
        },
    )


def make_hf(out: Path) -> None:
    import numpy as np
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.ids = torch.randint(0, 32, (n, 6), generator=g)
            self.labels = (self.ids[:, 0] % 2).long()

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {
                "input_ids": self.ids[i],
                "attention_mask": torch.ones(6, dtype=torch.long),
                "labels": self.labels[i],
            }

    seen: list[dict[str, object]] = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append({"global_step": state.global_step, "logs": dict(logs or {})})

    def accuracy(pred) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Rows(16),
            eval_dataset=Rows(8),
            compute_metrics=accuracy,
            callbacks=[Recorder()],
        )
        trainer.train()
        trainer.save_state()  # output_dir/trainer_state.json, with the final summary entry
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "trainer_state.json", out / "trainer_state.json")
        last = max(Path(tmp).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        (out / last.name).mkdir(exist_ok=True)
        shutil.copyfile(last / "trainer_state.json", out / last.name / "trainer_state.json")
    _dump(
        out / "expected.json",
        {"writer": _versions("transformers", "accelerate", "torch"), "on_log": seen},
    )


def main() -> None:
    which = sys.argv[1:] or ["keras", "lightning", "hf"]
    makers = {"keras": make_keras, "lightning": make_lightning, "hf": make_hf}
    for name in which:
        target = HERE / name
        shutil.rmtree(target, ignore_errors=True)
        makers[name](target)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
