"""`diag check RUN_DIR`: what a run folder holds, in what order, read how.

The layouts are written here file by file with the real writers (torch.save, safetensors)
so each rule of discovery can be pinned down; whole runs written by transformers,
Lightning and PEFT are checked end to end in test_run_folders.py.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diag.loaders.discover import discover


def _model(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(16, 8, generator=gen) * 0.3,
        "fc1.bias": torch.zeros(16),
        "fc2.weight": torch.randn(4, 16, generator=gen) * 0.3,
        "fc2.bias": torch.zeros(4),
    }


def _trajectory(n: int, nan_from: int | None = None) -> list[dict[str, torch.Tensor]]:
    """n states of one small model, each a step away from the previous one."""
    states = [_model(0)]
    gen = torch.Generator().manual_seed(1)
    for i in range(1, n):
        state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in states[-1].items()}
        if nan_from is not None and i >= nan_from:
            state["fc2.weight"][1, 2] = math.nan
        states.append(state)
    return states


def _diag(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diag", "check", *map(str, args), "-q", "--isolated"],
        capture_output=True,
        text=True,
    )


def _json(*args: str | Path) -> dict:
    proc = _diag(*args, "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


class Payload:
    """Unpickling this would create the marker file: proof that a file was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _hf_run(root: Path, states: list[dict[str, torch.Tensor]], every: int, marker: Path) -> None:
    history = []
    for i, state in enumerate(states[1:], 1):
        folder = root / f"checkpoint-{i * every}"
        folder.mkdir(parents=True)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text('{"model_type": "mlp"}')
        history.append({"step": i * every, "loss": 2.0 / i})
        state_json = {"global_step": i * every, "log_history": list(history)}
        (folder / "trainer_state.json").write_text(json.dumps(state_json))
        for name in ("training_args.bin", "rng_state.pth"):
            (folder / name).write_bytes(pickle.dumps(Payload(marker)))


def test_hf_trainer_folder_in_step_order_with_its_newest_history(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _hf_run(tmp_path / "out", _trajectory(12), every=5, marker=marker)
    found = discover(tmp_path / "out")
    assert found.layout == "Hugging Face Trainer"
    # checkpoint-10 comes after checkpoint-5, not before checkpoint-15 as text sorts it
    assert [e.step for e in found.checkpoints] == [5 * i for i in range(1, 12)]
    assert found.logs == [tmp_path / "out" / "checkpoint-55" / "trainer_state.json"]
    roles = {f.path: f.role for f in found.files}
    assert roles["checkpoint-10/training_args.bin"] == "not read"
    assert roles["checkpoint-10/rng_state.pth"] == "not read"

    report = _json(tmp_path / "out")
    assert not marker.exists(), "a pickle of the run folder was unpickled"
    run = report["metadata"]["run"]
    assert run["reference"] == "checkpoint-5" and run["reference_is_init"] is False
    assert [c["label"] for c in run["checkpoints"]][-1] == "checkpoint-55"
    assert any(i["role"] == "logs" for i in report["inputs"])


def test_a_nan_is_dated_to_the_first_checkpoint_that_holds_it(tmp_path: Path) -> None:
    _hf_run(tmp_path / "out", _trajectory(6, nan_from=3), every=100, marker=tmp_path / "m")
    report = _json(tmp_path / "out")
    nan = [f for f in report["findings"] if f["rule"] == "nonfinite-parameter"]
    assert [f["location"]["object"] for f in nan] == ["fc2.weight"]
    assert nan[0]["evidence"]["first_seen"] == "checkpoint-300"
    assert nan[0]["evidence"]["last_clean"] == "checkpoint-200"
    assert "first seen at checkpoint-300, checkpoint-200 is the last clean one" in nan[0]["message"]


def test_a_fault_present_from_the_start_has_no_clean_checkpoint(tmp_path: Path) -> None:
    _hf_run(tmp_path / "out", _trajectory(4, nan_from=1), every=10, marker=tmp_path / "m")
    (nan,) = [f for f in _json(tmp_path / "out")["findings"] if f["rule"] == "nonfinite-parameter"]
    assert nan["evidence"]["first_seen"] == "checkpoint-10"
    assert "last_clean" not in nan["evidence"]


def test_final_model_copied_from_the_last_checkpoint_is_read_once(tmp_path: Path) -> None:
    states = _trajectory(4)
    _hf_run(tmp_path / "out", states, every=10, marker=tmp_path / "m")
    last = tmp_path / "out" / "checkpoint-30" / "model.safetensors"
    (tmp_path / "out" / "model.safetensors").write_bytes(last.read_bytes())
    assert [e.label for e in discover(tmp_path / "out").checkpoints][-1] == "checkpoint-30"
    # A different final model (load_best_model_at_end, or trained further) is read last.
    save_file(states[1], tmp_path / "out" / "model.safetensors")
    assert [e.label for e in discover(tmp_path / "out").checkpoints][-1] == "final model"


def test_trajectories_measure_each_interval(tmp_path: Path) -> None:
    """The update per interval in the run equals |W_i - W_(i-1)| / |W_(i-1)| computed here."""
    from diag.api import CheckOptions, check

    states = _trajectory(5)
    _hf_run(tmp_path / "out", states, every=10, marker=tmp_path / "m")
    _, run = check(CheckOptions(checkpoint=str(tmp_path / "out"), select=["params"]))
    path = run.trajectories.tensors["fc1.weight"]
    expected = [
        float((b["fc1.weight"] - a["fc1.weight"]).norm() / a["fc1.weight"].norm())
        for a, b in itertools.pairwise(states[1:])
    ]
    assert path.ratios == pytest.approx(expected, rel=1e-5)
    assert path.norms[0] == pytest.approx(float(states[1]["fc1.weight"].norm()), rel=1e-6)
    assert run.trajectories.labels[0] == "checkpoint-10"
    # movement since the reference, for stuck-parameter and update-ratio
    whole = states[-1]["fc1.weight"] - states[1]["fc1.weight"]
    assert run.updates["fc1.weight"].delta_norm == pytest.approx(float(whole.norm()), rel=1e-5)


def test_explicit_flags_override_what_is_found(tmp_path: Path) -> None:
    states = _trajectory(4)
    _hf_run(tmp_path / "out", states, every=10, marker=tmp_path / "m")
    torch.save(states[0], tmp_path / "init.pt")
    report = _json(tmp_path / "out", "--init", tmp_path / "init.pt")
    run = report["metadata"]["run"]
    assert run["reference_is_init"] is True and run["reference"].endswith("init.pt")
    assert "init-scale" not in {s["rule"] for s in report["skipped"]}
    # without --init the reference is a trained checkpoint: init-scale does not judge it
    assert "init-scale" in {s["rule"] for s in _json(tmp_path / "out")["skipped"]}


def test_lightning_reads_the_newest_version_and_one_log(tmp_path: Path) -> None:
    root = tmp_path / "lit"
    states = _trajectory(4)
    for version in (0, 1):
        folder = root / "lightning_logs" / f"version_{version}"
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "hparams.yaml").write_text("lr: 0.1\n")
        (folder / "metrics.csv").write_text("epoch,step,train_loss\n0,9,2.0\n1,19,1.5\n")
        (folder / "events.out.tfevents.1.host").write_bytes(b"")
        for epoch, state in enumerate(states[1:]):
            name = f"epoch={epoch}-step={10 * (epoch + 1) - 1}.ckpt"
            torch.save(
                {"state_dict": state, "global_step": 10 * (epoch + 1)},
                folder / "checkpoints" / name,
            )
    newest = root / "lightning_logs" / "version_1"
    (newest / "checkpoints" / "last.ckpt").write_bytes(
        (newest / "checkpoints" / "epoch=2-step=29.ckpt").read_bytes()
    )
    found = discover(root)
    assert found.layout == "Lightning"
    assert [e.label for e in found.checkpoints] == [
        "epoch=0-step=9.ckpt", "epoch=1-step=19.ckpt", "epoch=2-step=29.ckpt",
    ]  # fmt: skip
    assert found.logs == [newest / "metrics.csv"]
    roles = {f.path: (f.role, f.note) for f in found.files}
    assert roles["lightning_logs/version_0"][0] == "not read"
    assert (
        "copy of epoch=2-step=29.ckpt" in roles["lightning_logs/version_1/checkpoints/last.ckpt"][1]
    )


@pytest.mark.parametrize(
    ("names", "order"),
    [
        (["weights.10-0.31.pt", "weights.02-0.90.pt", "weights.05-0.42.pt"], [2, 5, 10]),
        (["ckpt_000100.pt", "ckpt_000020.pt", "ckpt_001000.pt"], [20, 100, 1000]),
        (["model_step=300.pt", "model_step=40.pt", "model_step=1200.pt"], [40, 300, 1200]),
    ],
)
def test_numbered_checkpoints_in_training_order(
    tmp_path: Path, names: list[str], order: list[int]
) -> None:
    for name, state in zip(names, _trajectory(len(names)), strict=True):
        torch.save(state, tmp_path / name)
    found = discover(tmp_path)
    assert found.layout == "numbered checkpoints"
    got = [e.step or e.epoch or e.index for e in found.checkpoints]
    assert got == order


def test_a_single_saved_model_folder_is_one_checkpoint_as_before(tmp_path: Path) -> None:
    save_file(_model(0), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    report = _json(tmp_path)
    assert "run" not in report["metadata"]
    assert [i["role"] for i in report["inputs"]] == ["checkpoint"]


def test_links_out_of_the_run_folder_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.save(_model(3), outside / "ckpt_000900.pt")
    run = tmp_path / "run"
    run.mkdir()
    for name, state in zip(["ckpt_000100.pt", "ckpt_000200.pt"], _trajectory(2), strict=True):
        torch.save(state, run / name)
    (run / "ckpt_000900.pt").symlink_to(outside / "ckpt_000900.pt")
    assert [e.label for e in discover(run).checkpoints] == ["ckpt_000100.pt", "ckpt_000200.pt"]


def test_a_folder_with_nothing_to_check_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    proc = _diag(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"diag: error: {tmp_path}")
    assert "no checkpoints or training logs found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_checkpoints_further_down_as_lightning_writes_them_with_wandb(tmp_path: Path) -> None:
    """WandbLogger puts checkpoints in PROJECT/RUN_ID/checkpoints/: the newest run is read."""
    import os

    for i, run_id in enumerate(("old1", "new2")):
        folder = tmp_path / "project" / run_id / "checkpoints"
        folder.mkdir(parents=True)
        for epoch, state in enumerate(_trajectory(2)):
            torch.save(state, folder / f"epoch={epoch}-step={epoch * 10 + 9}.ckpt")
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    found = discover(tmp_path)
    assert [e.path.parent.parent.name for e in found.checkpoints] == ["new2", "new2"]
    assert {f.path: f.role for f in found.files}["project/old1/checkpoints"] == "not read"


def test_a_layer_frozen_part_way_through_the_run(tmp_path: Path) -> None:
    """stuck-parameter judges the whole run: fc1 moves, then stops at the third checkpoint."""
    states = _trajectory(6)
    for state in states[3:]:
        state["fc1.weight"] = states[2]["fc1.weight"].clone()
    for i, state in enumerate(states):
        torch.save(state, tmp_path / f"ckpt_{i * 100:06d}.pt")
    report = _json(tmp_path, "--select", "stuck-parameter")
    (stuck,) = report["findings"]
    assert stuck["location"]["object"] == "fc1.weight"
    assert stuck["evidence"]["stopped_at"] == "ckpt_000200.pt"
    assert stuck["evidence"]["unchanged_intervals"] == 3
    # the same run with every layer moving to the end: nothing
    for i, state in enumerate(_trajectory(6)):
        torch.save(state, tmp_path / f"ckpt_{i * 100:06d}.pt")
    assert _json(tmp_path, "--select", "stuck-parameter")["findings"] == []


def test_the_html_report_shows_the_run_and_each_layer_trajectory(tmp_path: Path) -> None:
    import re

    _hf_run(tmp_path / "out", _trajectory(5, nan_from=3), every=10, marker=tmp_path / "m")
    html = tmp_path / "report.html"
    _diag(tmp_path / "out", "--html", html)
    page = html.read_text()
    run = page.split('<section id="run"', 1)[1].split("</section>", 1)[0]
    assert all(f"checkpoint-{s}" in run for s in (10, 20, 30, 40))
    assert "the earliest checkpoint: no --init was given" in run
    assert "training_args.bin" in run  # every file found, with its role
    figures = re.findall(r'<figure class="evidence" id="trajectory-\d">.*?</figure>', run, re.S)
    assert len(figures) == 2
    for figure in figures:  # the layer with the NaN is drawn in colour, named on hover
        flagged = re.findall(r'<polyline class="flagged" points="[^"]+"><title>([^<]+)', figure)
        assert "fc2.weight" in flagged
        assert re.search(r'<polyline class="layer" points="[^"]+"><title>fc1.weight<', figure)
