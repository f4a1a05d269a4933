"""What a diag process costs before and around its work, against Python importing torch.

Measures, as separate processes: `python -c "import torch"` (the floor any tool that runs a
model pays), `diag --help`, `diag rules`, `diag check` on a tiny checkpoint (weights only),
and the same checkpoint with `--model/--batch` (the probe: torch imported, every grads rule
run). Prints the median of several runs of each and its difference to the torch import;
the goal is that a small check stays within 1 s of it. Uses hyperfine when installed,
else its own loop. Run from the repository: `.venv/bin/python bench/bench_startup.py [RUNS]`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_PY = """
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
"""


def tiny_run(folder: Path) -> tuple[Path, Path, Path]:
    """A 212-parameter MLP's checkpoint, its factory and a batch of 16."""
    import torch

    (folder / "model.py").write_text(MODEL_PY, encoding="utf-8")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.save(model.state_dict(), folder / "tiny.pt")
    batch = {"inputs": torch.randn(16, 8), "targets": torch.randint(0, 4, (16,))}
    torch.save(batch, folder / "batch.pt")
    return folder / "tiny.pt", folder / "model.py", folder / "batch.pt"


def commands(folder: Path) -> dict[str, list[str]]:
    checkpoint, model, batch = tiny_run(folder)
    python = sys.executable
    diag = [python, "-m", "diag"]
    return {
        'python -c "import torch"': [python, "-c", "import torch"],
        "diag --help": [*diag, "--help"],
        "diag rules": [*diag, "rules"],
        "diag check tiny.pt": [*diag, "check", str(checkpoint), "--quiet", "--fail-on", "never"],
        "diag check tiny.pt --model --batch": [
            *diag, "check", str(checkpoint), "--model", f"{model}:build",
            "--batch", str(batch), "--quiet", "--fail-on", "never",
        ],
    }  # fmt: skip


def with_hyperfine(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    import shlex

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                "hyperfine", "--runs", str(runs), "--warmup", "1", "--style", "none",
                "--export-json", out.name,
                *(shlex.join(cmd) for cmd in cmds.values()),
            ],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        results = json.loads(Path(out.name).read_text())["results"]
    return {name: r["median"] for name, r in zip(cmds, results, strict=True)}


def with_loop(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    medians = {}
    for name, cmd in cmds.items():
        subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    return medians


def installed_like(cache: Path) -> None:
    """Let the children keep compiled bytecode, as an installed package has, but in a folder
    of our own: with PYTHONDONTWRITEBYTECODE set (as in some CI images) every run would
    compile diag's sources again, which an installed diag never does."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with tempfile.TemporaryDirectory() as tmp:
        installed_like(Path(tmp) / "pycache")
        cmds = commands(Path(tmp))
        tool = "hyperfine" if shutil.which("hyperfine") else "own loop"
        medians = (with_hyperfine if tool == "hyperfine" else with_loop)(cmds, runs)
    floor = medians['python -c "import torch"']
    print(f"median of {runs} runs ({tool}); goal: a small check within 1 s of importing torch")
    print(f"{'command':40} {'median s':>9} {'vs import torch':>16}")
    for name, seconds in medians.items():
        print(f"{name:40} {seconds:9.3f} {seconds - floor:+15.3f}s")


if __name__ == "__main__":
    main()
