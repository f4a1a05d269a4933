"""`diag demo`: train tiny real CNNs on scikit-learn's digits, plant faults, check them.

The same training code builds the real runs the test-suite calibrates the rules on, so
the demo shows exactly what the tests measure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.errors import DiagError

Echo = Callable[..., Any]


@dataclass(frozen=True)
class Faults:
    """Faults a run can be trained with; all off is a healthy run."""

    detach_conv1: bool = False  # a graph cut: conv1 is used through .detach()
    constant_fc1: bool = False  # fc1 starts from a constant 0.01 (a bad init, silently survivable)
    constant_all: bool = False  # every weight starts from a constant: symmetry is never broken
    eval_mode: bool = False  # trained under model.eval(): BatchNorm statistics never update
    init_std: float | None = None  # override every weight's init with N(0, init_std)
    lr: float = 0.05
    weight_decay: float = 0.1
    train_subset: int | None = None  # train on only this many samples (to overfit)
    early_stopping: int | None = None  # stop after this many epochs without a better val loss
    log_test: bool = False  # evaluate the test split every epoch (selection on the test set)
    val_from_train: bool = False  # the validation split is copies of training samples (leakage)
    input_noise: float = 0.0  # Gaussian noise added to training inputs (augmentation)
    leak_val: int = 0  # replace this many validation digits by copies of training digits
    broken_backward: bool = False  # fc2 runs through a custom Function whose backward halves dW
    # From this epoch on, labels are shuffled apart from their inputs, afresh every epoch (a
    # loader that shuffles images and labels with different orders): the loss jumps from near
    # zero to chance and stays there, on every seed and CPU. A learning rate on the edge of
    # stability is no such fault: whether it blows up, and how (a spike, a slow collapse,
    # NaN), depends on the seed and on the SIMD kernels torch picks.
    labels_shuffled_from: int | None = None


HEALTHY = Faults()
PLANTED = Faults(detach_conv1=True, constant_fc1=True)


def digits(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """scikit-learn's 1,797 real 8x8 digits as (x_train, y_train, x_val, y_val) tensors."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DiagError("the demo needs scikit-learn: pip install 'diag[demo]'") from None
    import numpy as np
    import torch

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


_HALF_GRAD: Any = None


def _half_grad_linear() -> Any:
    """`F.linear` as a custom autograd Function whose backward forgets a factor 2 on the
    weight gradient: training still works (a smaller step), so nothing looks wrong."""
    global _HALF_GRAD
    if _HALF_GRAD is None:
        import torch

        class HalfGradLinear(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, x: Any, weight: Any, bias: Any) -> Any:
                ctx.save_for_backward(x, weight)
                return x @ weight.t() + bias

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                x, weight = ctx.saved_tensors
                return grad @ weight, 0.5 * grad.t() @ x, grad.sum(0)

        _HALF_GRAD = HalfGradLinear.apply
    return _HALF_GRAD


def build_model(faults: Faults = HEALTHY, seed: int = 0) -> Any:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.fc1 = nn.Linear(16 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 32)
            self.out = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.conv1.weight.detach() if faults.detach_conv1 else self.conv1.weight
            x = torch.relu(nn.functional.conv2d(x, w, self.conv1.bias, padding=2))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = nn.functional.max_pool2d(x, 2).flatten(1)
            x = torch.relu(self.fc1(x))
            if faults.broken_backward:
                x = torch.relu(_half_grad_linear()(x, self.fc2.weight, self.fc2.bias))
            else:
                x = torch.relu(self.fc2(x))
            return self.out(x)

    torch.manual_seed(seed)
    model = DigitsCNN()
    with torch.no_grad():
        if faults.init_std is not None:
            for module in (model.conv1, model.conv2, model.fc1, model.fc2, model.out):
                module.weight.normal_(0.0, faults.init_std)
        if faults.constant_fc1:
            model.fc1.weight.fill_(0.01)
        if faults.constant_all:
            for module in (model.conv1, model.conv2, model.fc1, model.fc2, model.out):
                module.weight.fill_(0.01)
    return model


def _leak(x: Any, y: Any, xv: Any, yv: Any, count: int) -> tuple[Any, Any]:
    """The first `count` validation digits become copies of training digits: half exact,
    half shifted one pixel to the right (what a careless augmentation-then-split makes)."""
    import torch

    xv, yv = xv.clone(), yv.clone()
    for k in range(count):
        src = 7 * k + 3
        copy = x[src].clone()
        if k % 2:
            copy = torch.roll(copy, 1, dims=-1)
            copy[..., 0] = 0.0
        xv[k], yv[k] = copy, y[src]
    return xv, yv


@dataclass
class History:
    """What a training loop logs: per-step training loss, per-epoch evaluations."""

    step_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch, step, train/val/test


@dataclass
class Trained:
    model: Any
    optimizer: Any
    init_state: dict
    steps: int
    epochs: int
    val_accuracy: float
    seconds: float
    history: History = field(default_factory=History)
    data: tuple[Any, ...] = ()  # (x_train, y_train, x_val, y_val) as trained and validated


def train(faults: Faults = HEALTHY, seed: int = 0, epochs: int = 30) -> Trained:
    """SGD with momentum and weight decay; keep the epoch with the best validation accuracy.

    Plain SGD keeps the spatial smoothness of the gradients (Adam's per-coordinate scaling
    does not), and weight decay wears the initial noise away: the first layer ends with
    the smooth kernels a healthy CNN is expected to have (median autocorrelation ~0.45).
    Losses are recorded as a training script would log them (`Trained.history`).
    """
    import copy

    import torch
    from torch.nn.functional import cross_entropy

    x, y, xv, yv = digits(seed)
    if faults.log_test:  # half of the held-out data becomes a test split
        xv, yv, xt, yt = (
            xv[: len(yv) // 2],
            yv[: len(yv) // 2],
            xv[len(yv) // 2 :],
            yv[len(yv) // 2 :],
        )
    if faults.train_subset is not None:
        x, y = x[: faults.train_subset], y[: faults.train_subset]
    if faults.val_from_train:
        xv, yv = x[: len(yv)].clone(), y[: len(yv)].clone()
    if faults.leak_val:
        xv, yv = _leak(x, y, xv, yv, faults.leak_val)
    model = build_model(faults, seed)
    init_state = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=faults.lr, momentum=0.9, weight_decay=faults.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    label_gen = torch.Generator().manual_seed(seed + 1)  # its own: the batch order stays put
    start, steps, best = time.perf_counter(), 0, -1.0
    best_state = None
    history = History()
    best_loss, since_best, done = float("inf"), 0, 0
    for epoch in range(epochs):
        labels = y
        if faults.labels_shuffled_from is not None and epoch >= faults.labels_shuffled_from:
            labels = y[torch.randperm(len(y), generator=label_gen)]
        model.eval() if faults.eval_mode else model.train()
        losses = []
        for idx in torch.randperm(len(y), generator=gen).split(64):
            optimizer.zero_grad()
            inputs = x[idx]
            if faults.input_noise:
                inputs = inputs + faults.input_noise * torch.randn(inputs.shape, generator=gen)
            loss = cross_entropy(model(inputs), labels[idx])
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(float(loss.detach()))
            history.step_loss.append((steps, losses[-1]))
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            acc = float((logits.argmax(1) == yv).float().mean())
            record = {
                "epoch": epoch,
                "step": steps,
                "train_loss": sum(losses) / len(losses),
                "val_loss": float(cross_entropy(logits, yv)),
                "val_acc": acc,
            }
            if faults.log_test:
                record["test_acc"] = float((model(xt).argmax(1) == yt).float().mean())
        history.epochs.append(record)
        done = epoch + 1
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
        if record["val_loss"] < best_loss:
            best_loss, since_best = record["val_loss"], 0
        else:
            since_best += 1
        if faults.early_stopping is not None and since_best >= faults.early_stopping:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    data = (x, y, xv, yv)
    return Trained(model, optimizer, init_state, steps, done, best, seconds, history, data)


def write_lightning_csv(history: History, folder: Path, log_every: int = 5) -> Path:
    """The run's history as Lightning's CSVLogger writes it: version_0/metrics.csv.

    Step rows carry `train_loss_step`, epoch-end rows `train_loss_epoch` and the
    validation (and test) values, each row with `epoch` and `step`, cells left empty
    where a key was not logged: the sparse layout Lightning produces.
    """
    import csv

    path = folder / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    eval_keys = (
        [k for k in history.epochs[0] if k not in ("epoch", "step")] if history.epochs else []
    )
    columns = [
        "epoch",
        "step",
        "train_loss_step",
        *(k.replace("train_loss", "train_loss_epoch") for k in eval_keys),
    ]
    epoch_of = {}
    for record in history.epochs:
        epoch_of[int(record["step"])] = int(record["epoch"])
    rows = []
    epoch = 0
    for step, loss in history.step_loss:
        if step % log_every == 0:
            rows.append({"epoch": epoch, "step": step - 1, "train_loss_step": loss})
        if step in epoch_of:
            record = history.epochs[epoch]
            row = {"epoch": epoch, "step": step - 1}
            for key in eval_keys:
                row[key.replace("train_loss", "train_loss_epoch")] = record[key]
            rows.append(row)
            epoch += 1
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_run(
    run: Trained,
    folder: Path,
    *,
    onnx: bool = False,
    safetensors: bool = False,
    monitor: str = "val_acc",
) -> dict:
    """Write init.pt and a Lightning-style final.ckpt (plus optional copies); return paths."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"init": folder / "init.pt", "final": folder / "final.ckpt"}
    torch.save(run.init_state, paths["init"])
    torch.save(
        {
            "state_dict": run.model.state_dict(),
            "optimizer_states": [run.optimizer.state_dict()],
            "epoch": run.epochs - 1,
            "global_step": run.steps,
            "pytorch-lightning_version": "2.5.0",
            "hyper_parameters": {"lr": 0.05, "weight_decay": 0.1, "data": Path("digits")},
            "callbacks": {
                f"ModelCheckpoint{{'monitor': '{monitor}', 'mode': 'max'}}": {
                    "monitor": monitor,
                    "best_model_score": torch.tensor(run.val_accuracy),
                }
            },
        },
        paths["final"],
    )
    if safetensors:
        from safetensors.torch import save_file

        paths["safetensors"] = folder / "model.safetensors"
        state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
        save_file(state, str(paths["safetensors"]))
    if onnx:
        paths["onnx"] = folder / "model.onnx"
        export_onnx(run.model, paths["onnx"])
    return paths


def write_splits(trained: Trained, folder: Path) -> dict[str, Path]:
    """The digits the run trained and validated on, as train.npz and val.npz (8x8 images)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    x, y, xv, yv = trained.data
    out = {}
    for name, (images, labels) in {"train": (x, y), "val": (xv, yv)}.items():
        out[name] = folder / f"{name}.npz"
        np.savez(out[name], x=images.squeeze(1).numpy(), y=labels.numpy())
    return out


def write_probe(faults: Faults, trained: Trained, folder: Path) -> dict[str, Path]:
    """model.py (a `build()` factory for this run's architecture) and batch.pt (32
    validation digits and their labels), for `--model` and `--batch`."""
    import torch

    model = folder / "model.py"
    model.write_text(
        '"""The demo CNN of this run, for `diag check --model model.py:build`."""\n\n'
        "from diag.demo import Faults, build_model\n\n\n"
        "def build():\n"
        f"    return build_model({faults!r})\n",
        encoding="utf-8",
    )
    batch = folder / "batch.pt"
    _, _, xv, yv = trained.data
    torch.save({"inputs": xv[32:64].clone(), "targets": yv[32:64].clone()}, batch)
    return {"model": model, "batch": batch}


def export_onnx(model: Any, path: Path) -> None:
    import warnings

    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, still works
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["pixels"]
        )


DEMO_RUNS = (
    ("healthy", HEALTHY, 30),
    (
        "broken",
        Faults(detach_conv1=True, constant_fc1=True, leak_val=12, broken_backward=True),
        30,
    ),
    # 64 training samples, no weight decay, 150 epochs: memorises, then validation loss climbs
    ("overfit", Faults(train_subset=64, weight_decay=0.0), 150),
)
PLANTED_NOTES = {
    "broken": (
        "conv1 cut from the graph (.detach()), fc1 constant-initialised, fc2 run through a "
        "custom backward that halves its weight gradient, and 12 validation digits that are "
        "copies of training digits (6 exact, 6 shifted by a pixel)"
    ),
    "overfit": "trained on 64 samples without weight decay for 150 epochs",
}


def run_demo(directory: Path, echo: Echo = print) -> int:
    from diag.api import CheckOptions, check, write_atomic
    from diag.reports import render

    echo(f"Training three tiny CNNs on scikit-learn's digits into {directory}/ ...")
    runs = {}
    for name, faults, epochs in DEMO_RUNS:
        trained = train(faults, epochs=epochs)
        runs[name] = save_run(trained, directory / name)
        runs[name]["logs"] = write_lightning_csv(trained.history, directory / name).parent
        runs[name].update(write_splits(trained, directory / name / "data"))
        runs[name].update(write_probe(faults, trained, directory / name))
        echo(
            f"  {name:8s} {trained.steps} steps in {trained.seconds:.1f}s, "
            f"validation accuracy {trained.val_accuracy:.1%}"
        )
    for name, note in PLANTED_NOTES.items():
        echo(f"Planted in '{name}': {note}.")
    found_all = True
    for name, paths in runs.items():
        splits = {"train": str(paths["train"]), "val": str(paths["val"])}
        options = CheckOptions(
            checkpoint=str(paths["final"]),
            init=str(paths["init"]),
            logs=[str(paths["logs"])],
            splits=splits,
            model=f"{paths['model']}:build",
            batch=str(paths["batch"]),
        )
        result, run = check(options)
        report = directory / f"{name}-report.html"
        write_atomic(report, render("html", result, run))
        echo(
            f"\n== diag check {paths['final']} --init {paths['init']} --logs {paths['logs']} "
            f"--split train={paths['train']} --split val={paths['val']} "
            f"--model {paths['model']}:build --batch {paths['batch']}"
        )
        echo(render("text", result, run), nl=False)
        echo(f"HTML report: {report}")
        if name in PLANTED_NOTES and result.worst() is None:
            found_all = False
    return 0 if found_all else 1
