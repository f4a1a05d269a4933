"""Real tiny training runs on scikit-learn's digits, trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diag.demo import HEALTHY, PLANTED, Faults, save_run, train

VARIANTS = {
    "healthy": HEALTHY,
    "planted": PLANTED,  # conv1 detached + fc1 constant-initialised
    "constant_all": Faults(constant_all=True),  # every weight starts at 0.01
    "eval_mode": Faults(eval_mode=True),  # trained under model.eval()
    "big_init": Faults(init_std=1.0),  # N(0, 1) init everywhere
}


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, faults in VARIANTS.items():
        trained = train(faults)
        paths = save_run(
            trained, root / name, onnx=name == "healthy", safetensors=name == "healthy"
        )
        paths["accuracy"] = trained.val_accuracy  # type: ignore[assignment]
        out[name] = paths
    return out


@pytest.fixture
def preadv_offsets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file offsets of every os.preadv call from now on: proves what is read, when."""
    offsets: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list, offset: int) -> int:
        offsets.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    return offsets
