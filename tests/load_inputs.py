"""The load run's inputs (issue 7): 10,000 tensors, 1,000,000 log steps, 1,000,000 split rows.

Shared by tests/test_load.py (which runs it in CI and checks it completes under the
memory cap with the right findings) and bench/bench_load.py (which prints its time and
peak memory). Everything is generated in chunks, so the writer's memory stays small.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TENSORS = 10_000
STEPS = 1_000_000
ROWS = 1_000_000
VAL_EVERY = 1_000
PLANTED = 100  # validation rows copied from training


def write_checkpoint(path: Path, tensors: int = TENSORS, seed: int = 0) -> int:
    """A state dict of `tensors` tensors shaped like a deep residual net's (conv, norm,
    linear), with He-scaled random weights; returns the number of bytes of tensor data."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    block = 0
    while len(state) < tensors:
        c = (16, 32, 64)[block % 3]
        prefix = f"stage{block // 100}.block{block % 100}"
        conv = torch.randn(c, c, 3, 3, generator=g) * math.sqrt(2 / (c * 9))
        state[f"{prefix}.conv.weight"] = conv
        state[f"{prefix}.bn.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{prefix}.bn.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{prefix}.bn.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{prefix}.bn.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        state[f"{prefix}.fc.weight"] = torch.randn(c, c, generator=g) * math.sqrt(2 / c)
        state[f"{prefix}.fc.bias"] = 0.01 * torch.randn(c, generator=g)
        block += 1
    state = dict(list(state.items())[:tensors])
    torch.save(state, path)
    return sum(t.numel() * t.element_size() for t in state.values())


def write_log(path: Path, steps: int = STEPS, val_every: int = VAL_EVERY, seed: int = 0) -> None:
    """A Lightning-style metrics.csv: train_loss every step, val_loss every `val_every`,
    a healthy decay with noise."""
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        out.write("step,epoch,train_loss,val_loss\n")
        for start in range(0, steps, 100_000):
            s = np.arange(start, min(steps, start + 100_000))
            train = 0.2 + 2.0 * np.exp(-s / (steps / 5)) + 0.05 * rng.standard_normal(len(s))
            lines = [f"{i},{i // val_every},{v:.5f}," for i, v in zip(s, train, strict=True)]
            for k in np.flatnonzero((s + 1) % val_every == 0):
                i = int(s[k])
                val = 0.25 + 2.0 * math.exp(-i / (steps / 5))
                lines[k] = f"{i},{i // val_every},,{val:.5f}"
            out.write("\n".join(lines) + "\n")


def write_splits(folder: Path, rows: int = ROWS, seed: int = 0) -> tuple[Path, Path]:
    """train.npz of `rows` x 16 features and val.npz of a tenth of that, with PLANTED
    validation rows copied from training; returns both paths."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 16), dtype=np.float32)
    y = rng.integers(0, 10, rows)
    n_val = rows // 10
    xv = rng.standard_normal((n_val, 16), dtype=np.float32)
    yv = rng.integers(0, 10, n_val)
    src = rng.choice(rows, PLANTED, replace=False)
    xv[:PLANTED], yv[:PLANTED] = x[src], y[src]
    train, val = folder / "train.npz", folder / "val.npz"
    np.savez(train, x=x, y=y)
    np.savez(val, x=xv, y=yv)
    return train, val
