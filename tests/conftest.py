"""Real tiny training runs on scikit-learn's digits, trained once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from diag.demo import HEALTHY, PLANTED, Faults, save_run, train

# Modules that train real runs and calibrate rules on them. A CPU run's trajectory depends
# on the SIMD kernels torch picks, so .ci/run runs these again (`-m calibration`) under a
# second ATEN_CPU_CAPABILITY: a margin that holds on one CPU only fails there.
CALIBRATION_MODULES = {
    "test_activations.py",
    "test_adapters.py",
    "test_calibration.py",
    "test_curves_calibration.py",
    "test_data_calibration.py",
    "test_demo.py",
    "test_gradients.py",
    "test_gradient_search.py",
    "test_grads_rules.py",
    "test_integrations.py",
    "test_live.py",
    "test_probe_budgets.py",
    "test_probe_lm.py",
    "test_probe_lm_cli.py",
    "test_run_folders.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    present = {path.name for path in Path(__file__).parent.glob("test_*.py")}
    if missing := CALIBRATION_MODULES - present:  # a rename must not drop them silently
        raise pytest.UsageError(f"conftest.CALIBRATION_MODULES lists missing {sorted(missing)}")
    for item in items:
        if item.path.name in CALIBRATION_MODULES:
            item.add_marker(pytest.mark.calibration)


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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module: two cores shared by several processes make two
    threads each thrash (a probe measured 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
