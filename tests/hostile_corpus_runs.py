"""Hostile run folders (`diag check RUN_DIR`): pickles that only a resume would load, and
links that lead out of the folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from hostile_corpus import Case, _payload, _secret, case


def _checkpoint(folder: Path, step: int, scale: float) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(step)
    save_file({"fc.weight": torch.randn(8, 4, generator=gen) * scale}, folder / "model.safetensors")
    state = {"global_step": step, "log_history": [{"step": step, "loss": 1.0 / step}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))


@case
def run_folder_resume_pickles(inp: Path, outside: Path, marker: Path) -> Case:
    """training_args.bin, rng_state.pth, optimizer.pt and scheduler.pt hold pickles that only
    resuming a run loads: listed, never opened."""
    run = inp / "out"
    for step in (10, 20, 30):
        folder = run / f"checkpoint-{step}"
        _checkpoint(folder, step, 0.3)
        for name in ("training_args.bin", "rng_state.pth", "optimizer.pt", "scheduler.pt"):
            (folder / name).write_bytes(pickle.dumps(_payload(marker)))
    return Case(["out"])


@case
def run_folder_links_outside(inp: Path, outside: Path, marker: Path) -> Case:
    """A checkpoint folder, a model file and a log that are links out of the run folder."""
    run = inp / "out"
    _checkpoint(run / "checkpoint-10", 10, 0.3)
    _checkpoint(run / "checkpoint-20", 20, 0.3)
    secret = _secret(outside, "model.safetensors")
    _checkpoint(outside / "checkpoint-99", 99, 0.3)
    (run / "checkpoint-30").symlink_to(outside / "checkpoint-99")
    (run / "checkpoint-20" / "model.safetensors").unlink()
    (run / "checkpoint-20" / "model.safetensors").symlink_to(secret)
    (run / "trainer_state.json").symlink_to(outside / "checkpoint-99" / "trainer_state.json")
    return Case(["out"])
