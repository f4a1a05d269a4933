"""Plain training loops on the real digits, watched by `diag.Monitor`, healthy and broken.

The faults are planted at a known step so a test can say how soon the run was stopped:
- `nan_at`: from that step on, a batch holds a NaN pixel (a corrupt sample), so the loss
  and every gradient after it are NaN;
- `lr_jump_at`: the learning rate is multiplied by `lr_factor` at that step (a scheduler
  bug), which blows the weights up;
- `dead_at`: fc1's bias is set to -100 at that step, so every fc1 unit is dead from
  then on and nothing before it gets a gradient again (dying ReLUs);
- `detach`: conv1's weight is used through `.detach()` from the start (a layer frozen by
  mistake: it is in the optimizer, and never gets a gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.functional import cross_entropy

from diag import Monitor, TrainingStopped
from diag.demo import HEALTHY, Faults, build_model, digits


@dataclass(frozen=True)
class LiveFault:
    nan_at: int | None = None
    lr_jump_at: int | None = None
    lr_factor: float = 300.0
    detach: bool = False
    dead_at: int | None = None  # fc1's bias set to -100 at that step: every unit dies
    optimizer: str = "sgd"  # or "adam"


@dataclass
class LiveRun:
    monitor: Monitor
    steps: int  # steps trained (the last one included)
    stopped: TrainingStopped | None
    losses: list[float] = field(default_factory=list)


def train_live(
    fault: LiveFault = LiveFault(),
    *,
    seed: int = 0,
    epochs: int = 8,
    every_n_steps: int = 20,
    output: Any = None,
    **options: Any,
) -> LiveRun:
    faults = Faults(detach_conv1=fault.detach) if fault.detach else HEALTHY
    x, y, xv, yv = digits(seed)
    model = build_model(faults, seed)
    if fault.optimizer == "adam":
        optimizer: Any = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    monitor = Monitor(model, optimizer, every_n_steps=every_n_steps, output=output, **options)
    gen = torch.Generator().manual_seed(seed)
    step, losses, stopped = 0, [], None
    try:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(y), generator=gen).split(64):
                step += 1
                inputs = x[idx]
                if fault.nan_at is not None and step >= fault.nan_at:
                    inputs = inputs.clone()
                    inputs[0, 0, 0, 0] = float("nan")
                if fault.lr_jump_at is not None and step == fault.lr_jump_at:
                    for group in optimizer.param_groups:
                        group["lr"] *= fault.lr_factor
                if fault.dead_at is not None and step == fault.dead_at:
                    with torch.no_grad():
                        model.fc1.bias.fill_(-100.0)
                optimizer.zero_grad()
                loss = cross_entropy(model(inputs), y[idx])
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                monitor.step(loss)
            model.eval()
            with torch.no_grad():
                logits = model(xv)
                monitor.eval(
                    {
                        "val_loss": float(cross_entropy(logits, yv)),
                        "val_acc": float((logits.argmax(1) == yv).float().mean()),
                    }
                )
    except TrainingStopped as exc:
        stopped = exc
    monitor.close()
    return LiveRun(monitor, step, stopped, losses)


def gradient_margins(history: Any, every: int = 10) -> dict[str, float]:
    """What the [live] gradient rules threshold, at every check of the run (each prefix of
    `every` records), computed as the rules compute it: the largest growth of a tensor's
    recent gradient norm over its own earlier median, and the furthest a tensor's fall went
    below the median tensor's."""
    import statistics

    from diag.live_history import GradientHistory
    from diag.rules.live import falls, growths

    growth, lag = 0.0, 0.0
    for end in range(every, len(history.steps) + 1, every):
        prefix = GradientHistory(
            history.source, history.steps[:end], {k: v[:end] for k, v in history.norms.items()}
        )
        for recent, earlier in growths(prefix).values():
            if earlier > 0:
                growth = max(growth, recent / earlier)
        fell, _ = falls(prefix)
        if len(fell) >= 3:
            lag = max(lag, statistics.median(fell.values()) - min(fell.values()))
    return {"growth": growth, "lag_decades": lag}
