"""diag under torch.distributed: 2 CPU processes (gloo) stop together, rank 0 reports.

Each test runs this file as a script in a fresh interpreter, which starts two ranks
with `torch.multiprocessing.spawn` (a process group in the pytest process would outlive
the test). The ranks train the demo's digits CNN under DistributedDataParallel on halves
of each batch; each writes what it saw to `rank<N>.json` in the run folder.

- plain loop (`diag.Monitor`): a NaN in rank 1's batch only, from step 30: rank 1 votes
  to stop, rank 0 names the NaN loss, and both stop at step 30; conv1 cut from the
  gradient (a finding only rank 0 makes, at its check at step 20): both stop at 20.
- Lightning (`strategy="ddp"`, `devices=2`; Lightning starts rank 1 by running this
  script again): the same NaN on rank 1 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EVERY = 20
REPORTS = ("diag.json", "diag.sarif", "diag.junit.xml", "diag.html")


# ------------------------------------------------------------------ in the ranks


def _join(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two ranks on two shared cores
    dist.init_process_group("gloo", rank=rank, world_size=world)


def plain_ranks(rank: int, world: int, port: int, cases: list[str], folder: str) -> None:
    """Each case in turn, in one process group (one spawn for all: it takes seconds)."""
    import torch.distributed as dist

    _join(rank, world, port)
    for case in cases:
        plain_rank(rank, world, case, Path(folder) / case)
    dist.destroy_process_group()


def plain_rank(rank: int, world: int, case: str, out: Path) -> None:
    """A plain DDP loop watched by diag.Monitor; writes what this rank saw."""
    import torch
    from torch.nn.functional import cross_entropy
    from torch.nn.parallel import DistributedDataParallel

    from diag import Monitor, TrainingStopped
    from diag.demo import Faults, build_model, digits

    x, y, _, _ = digits(0)
    detach = case == "detach"
    # DDP refuses a parameter without gradient unless told to look for them: a user with
    # a layer cut by mistake has set this flag to get past DDP's error.
    model = DistributedDataParallel(
        build_model(Faults(detach_conv1=detach), 0), find_unused_parameters=detach
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    out.mkdir(parents=True, exist_ok=True)
    monitor = Monitor(
        model,
        optimizer,
        every_n_steps=EVERY,
        output=out / f"reports{rank}",
        budget=1.0,
        echo=_quiet,
    )
    gen = torch.Generator().manual_seed(0)  # the same order on every rank
    step, stopped = 0, None
    try:
        for _ in range(2):
            for idx in torch.randperm(len(y), generator=gen).split(64):
                step += 1
                mine = idx[rank::world]
                inputs = x[mine]
                if case == "nan_rank1" and rank == 1 and step >= 30:
                    inputs = inputs.clone()
                    inputs[0, 0, 0, 0] = float("nan")
                optimizer.zero_grad()
                loss = cross_entropy(model(inputs), y[mine])
                loss.backward()
                optimizer.step()
                monitor.step(loss)
    except TrainingStopped as exc:
        stopped = {"step": step, "message": str(exc), "findings": [f.rule for f in exc.findings]}
    result = monitor.close()
    seen = {
        "rank": rank,
        "steps": step,
        "stopped": stopped,
        "findings": sorted({f.rule for f in result.findings}),
        "notes": result.metadata.get("live", {}).get("notes", []),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def _quiet(line: str) -> None:
    """The callback's echo: nothing on the terminal."""


try:  # the plain-loop tests run without Lightning
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - lightning is a dev dependency
    pl = None

if pl is not None:

    class NanOnRank1(pl.LightningModule):
        """The digits CNN; from step 30 on, rank 1's batch holds a NaN pixel."""

        def __init__(self) -> None:
            from diag.demo import build_model

            super().__init__()
            self.net = build_model(seed=0)

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            from torch.nn.functional import cross_entropy

            x, y = batch
            if self.global_rank == 1 and self.global_step + 1 >= 30:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            return cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            import torch

            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)

    class Record(pl.Callback):
        """Writes what the DiagCallback of this rank saw, as the ranks end."""

        def __init__(self, folder: str) -> None:
            self.folder = folder

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            from diag.integrations.lightning import DiagCallback

            diag_cb = next(c for c in trainer.callbacks if isinstance(c, DiagCallback))
            stop = diag_cb.session.stop
            seen = {
                "rank": trainer.global_rank,
                "steps": trainer.global_step,
                "stopped_at": diag_cb.stopped_at,
                "message": stop.message if stop else None,
                "findings": sorted({f.rule for f in diag_cb.result.findings}),
            }
            Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))


def lightning_main(folder: str) -> None:
    """Lightning's own DDP with the callback; rank 1's batch turns NaN at step 30."""
    import logging
    import warnings

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from diag.demo import digits
    from diag.integrations.lightning import DiagCallback

    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    x, y, _, _ = digits(0)
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        callbacks=[
            DiagCallback(every_n_steps=EVERY, budget=1.0, echo=_quiet),
            Record(folder),
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    # Lightning's DistributedSampler gives each rank half of each epoch.
    trainer.fit(NanOnRank1(), DataLoader(TensorDataset(x, y), batch_size=32))


def hf_rank(rank: int, world: int, port: int, folder: str) -> None:
    """The Hugging Face Trainer on 2 CPU ranks (the environment torchrun would set)."""
    import warnings

    import torch
    import transformers
    from test_integrations import Chunks, Fault, plant, stdlib_text

    from diag.integrations.transformers import DiagCallback

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world}
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    data = stdlib_text()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    if rank == 1:
        plant(model, Fault(nan_at=30))  # an overflow in rank 1's first block from step 30
    args = transformers.TrainingArguments(
        output_dir=folder,
        max_steps=60,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = DiagCallback(every_n_steps=EVERY, budget=1.0, echo=_quiet)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Chunks(data), callbacks=[callback]
    )
    trainer.train()
    stop = callback.session.stop
    seen = {
        "rank": rank,
        "world": callback._world,
        "steps": trainer.state.global_step,
        "stopped_at": callback.stopped_at,
        "message": stop.message if stop else None,
        "findings": sorted({f.rule for f in callback.result.findings}),
    }
    Path(folder, f"rank{rank}.json").write_text(json.dumps(seen))
    # The Trainer leaves its process group open; one torn down at interpreter exit, with
    # the model still alive, can abort gloo ("terminate called without an active
    # exception"). A script that ends a DDP run ends it so.
    import torch.distributed as dist

    del trainer, model, callback
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    import torch.multiprocessing as mp

    kind, folder, port = argv
    if kind == "plain":
        cases = ["nan_rank1", "detach"]
        mp.spawn(plain_ranks, args=(2, int(port), cases, folder), nprocs=2, join=True)
    elif kind == "hf":
        mp.spawn(hf_rank, args=(2, int(port), folder), nprocs=2, join=True)
    else:
        lightning_main(folder)


# ----------------------------------------------------------------- in pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(kind: str, folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, __file__, kind, str(folder), str(_free_port())]
    done = subprocess.run(args, capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _ranks(folder: Path) -> list[dict[str, Any]]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plain_ddp")
    _launch("plain", folder)
    return folder


def test_nan_on_rank_1_only_stops_both_ranks_at_that_step(plain: Path) -> None:
    tmp_path = plain / "nan_rank1"
    zero, one = _ranks(tmp_path)
    assert zero["stopped"]["step"] == one["stopped"]["step"] == 30
    assert zero["steps"] == one["steps"] == 30
    for seen in (zero, one):  # rank 0's reason, on both ranks
        assert "stopping at step 30: loss-nonfinite train_loss" in seen["stopped"]["message"]
        assert seen["stopped"]["findings"] == ["loss-nonfinite"]
    assert "loss-nonfinite" in zero["findings"] and one["findings"] == []
    assert zero["notes"] == ["the non-finite loss at step 30 was seen on another rank"]
    assert all((tmp_path / "reports0" / name).exists() for name in REPORTS)
    assert not (tmp_path / "reports1").exists()  # only rank 0 writes


def test_a_finding_of_rank_0_stops_both_ranks_at_its_check(plain: Path) -> None:
    tmp_path = plain / "detach"
    zero, one = _ranks(tmp_path)
    assert zero["stopped"]["step"] == one["stopped"]["step"] == EVERY
    for seen in (zero, one):
        assert "no-gradient module.conv1.weight" in seen["stopped"]["message"]
    assert "no-gradient" in zero["findings"]
    written = json.loads((tmp_path / "reports0" / "diag.json").read_text())
    assert "no-gradient" in {f["rule"] for f in written["findings"]}
    assert not (tmp_path / "reports1").exists()


def test_lightning_ddp_stops_both_ranks_on_a_nan_of_rank_1(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    _launch("lightning", tmp_path)
    zero, one = _ranks(tmp_path)
    assert zero["stopped_at"] == one["stopped_at"] == 30
    assert zero["steps"] == one["steps"] == 30
    assert "stopping at step 30: loss-nonfinite train_loss" in zero["message"]
    assert "loss-nonfinite" in zero["findings"]
    assert one["message"] is None and one["findings"] == []  # rank 1 does not check
    assert all((tmp_path / name).exists() for name in REPORTS)  # default_root_dir


def test_hf_trainer_ddp_stops_both_ranks_on_a_nan_of_rank_1(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    _launch("hf", tmp_path)
    zero, one = _ranks(tmp_path)
    assert zero["world"] == one["world"] == 2
    assert zero["stopped_at"] == one["stopped_at"] == 30
    assert zero["steps"] == one["steps"] == 30
    assert "stopping at step 30: loss-nonfinite train_loss" in zero["message"]
    assert one["message"] is None and one["findings"] == []
    assert all((tmp_path / name).exists() for name in REPORTS)  # output_dir, rank 0 only


if __name__ == "__main__":
    main(sys.argv[1:])
