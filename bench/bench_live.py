"""What `diag.Monitor` costs a training run: step-time overhead, worst check, extra memory.

    .venv/bin/python bench/bench_live.py [--steps 600] [--cnn-steps 4000] [--every 100]
        [--models cnn,gpt] [--rounds 3]

Two real models train on CPU (one thread each, as a data-loader-bound job would leave
them): the digits CNN of `diag demo` (batch 64, a 1.5 ms step, and batch 256) and a small
GPT (4 blocks, width 128, byte vocabulary, 16 x 64 tokens) on the standard library's
docstrings; and, for memory, an MLP with two 4096 x 4096 layers. Each runs in a
fresh process twice, without and with the monitor at the default cadence
(`every_n_steps=100`: the loss every step, gradient norms every 10, the parameter,
gradient and activation checks every 100), in alternating order, three rounds; the table
reports medians. Overhead = (step time with - without) / without, which the processes'
own jitter blurs by a few percent on a 1.5 ms step; "in monitor" is the share of the
monitored run's time spent inside `monitor.step` (the checks included, the model hooks
of the sampled forward pass not). "worst check" is the
slowest single check; "extra peak" the difference of the processes' peak RSS (both load
diag's rules, so it is what checking holds), against the largest tensor of the model
(the goal: at most one copy of it).

SageMaker Debugger's documentation gives no overhead figure for its hooks; it says that
saving tensors "can" slow training and advises saving fewer collections less often. Its
hooks write every collection it saves to disk at each `save_interval` (default every 500
steps) for rules that run in a separate container, so its cost is the file writes; diag's
is the in-process check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cnn_job(seed: int = 0, batch: int = 64) -> tuple[Any, Any, Any]:
    import torch
    from torch.nn.functional import cross_entropy

    from diag.demo import HEALTHY, build_model, digits

    x, y, _, _ = digits(seed)
    model = build_model(HEALTHY, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            for idx in torch.randperm(len(y), generator=gen).split(batch):
                if len(idx) == batch:
                    yield x[idx], y[idx]

    def loss_of(batch):
        inputs, targets = batch
        return cross_entropy(model(inputs), targets)

    return model, optimizer, (batches(), loss_of)


def gpt_job(seed: int = 0) -> tuple[Any, Any, Any]:
    import pydoc

    import torch
    from torch import nn
    from torch.nn.functional import cross_entropy

    text = "\n".join(
        pydoc.getdoc(m) or "" for m in (str, list, dict, set, int, float, bytes, os, json)
    )
    data = torch.tensor(list(text.encode()[:200_000]), dtype=torch.long)

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
            self.fc, self.proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.proj(torch.relu(self.fc(self.ln2(x))))

    class TinyGPT(nn.Module):
        def __init__(self, width: int = 128, layers: int = 4) -> None:
            super().__init__()
            self.embed, self.pos = nn.Embedding(256, width), nn.Embedding(64, width)
            self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
            self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, 256)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    torch.manual_seed(seed)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            starts = torch.randint(0, len(data) - 65, (16,), generator=gen)
            chunk = torch.stack([data[s : s + 65] for s in starts.tolist()])
            yield chunk[:, :-1], chunk[:, 1:]

    def loss_of(batch):
        ids, targets = batch
        return cross_entropy(model(ids).reshape(-1, 256), targets.reshape(-1))

    return model, optimizer, (batches(), loss_of)


def wide_job(seed: int = 0) -> tuple[Any, Any, Any]:
    """Two 4096 x 4096 layers (64 MiB each): a model whose largest tensor dwarfs diag's own
    objects, so the extra peak says whether checking copies more than one tensor."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                          nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            yield torch.randn(32, 256, generator=gen), torch.randint(0, 10, (32,), generator=gen)

    def loss_of(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    return model, optimizer, (batches(), loss_of)


JOBS = {"cnn": cnn_job, "cnn256": lambda: cnn_job(batch=256), "gpt": gpt_job, "wide": wide_job}


def child(job: str, monitored: bool, steps: int, every: int) -> None:
    import torch

    torch.set_num_threads(1)
    model, optimizer, (batches, loss_of) = JOBS[job]()
    monitor = None
    # Both variants load diag's code, so the peak difference is what checking holds.
    from diag.live import _live_specs

    _live_specs([], [])
    if monitored:
        from diag import Monitor

        monitor = Monitor(model, optimizer, every_n_steps=every, echo=lambda line: None)
    warm = 20
    times, inside = [], 0.0
    for step in range(steps + warm):
        start = time.perf_counter()
        batch = next(batches)
        optimizer.zero_grad()
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        if monitor is not None:
            entered = time.perf_counter()
            monitor.step(loss)
            if step >= warm:
                inside += time.perf_counter() - entered
        if step >= warm:
            times.append(time.perf_counter() - start)
    checks = []
    if monitor is not None:
        checks = monitor.session.check_seconds
        monitor.close()
    largest = max(p.numel() * p.element_size() for p in model.state_dict().values())
    print(
        json.dumps(
            {
                "step_s": sum(times) / len(times),
                "inside_share": inside / sum(times),
                "worst_check_s": max(checks, default=0.0),
                "checks": len(checks),
                "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "largest_kib": largest / 1024,
                "skipped": monitor.session.skipped_checks if monitor else 0,
            }
        )
    )


def paired(job: str, steps: int, every: int) -> None:
    """One process, blocks of `every` steps taking turns without and with the monitor.

    Separate processes differ by more than the overhead on a 1.5 ms step (a few percent,
    either way, from where the allocator and the caches land); in one process the two
    kinds of block share all of that, and a drift of the machine's load hits both. The
    monitor only sees its own blocks: it counts its steps there, and its budget clock is
    moved on by each plain block, so it spends what it would on a run of its blocks alone.
    """
    import torch

    torch.set_num_threads(1)
    model, optimizer, (batches, loss_of) = JOBS[job]()
    from diag import Monitor

    monitor = Monitor(model, optimizer, every_n_steps=every, echo=lambda line: None)
    for _ in range(20):  # warm-up, unmonitored
        batch = next(batches)
        optimizer.zero_grad()
        loss_of(batch).backward()
        optimizer.step()
    ratios, last_plain, inside, watched = [], 1.0, 0.0, 0.0
    for block in range(2 * max(1, steps // (2 * every))):
        monitored = block % 2 == 1
        began = time.perf_counter()
        for _ in range(every):
            batch = next(batches)
            optimizer.zero_grad()
            loss = loss_of(batch)
            loss.backward()
            optimizer.step()
            if monitored:
                entered = time.perf_counter()
                monitor.step(loss)
                inside += time.perf_counter() - entered
        took = time.perf_counter() - began
        if monitored:
            ratios.append(took / last_plain)
            watched += took
        else:
            monitor.session._train_clock += took
            last_plain = took
    monitor.close()
    # Each monitored block holds one check (or its skip) and its gradient records, so the
    # blocks are alike: the median of the pairs' ratios is the overhead, and a burst of
    # load from elsewhere that hits one block moves only its own pair.
    share = inside / watched
    out = {"paired_overhead": statistics.median(ratios) - 1, "paired_inside": share}
    print(json.dumps({**out, "checks": len(monitor.session.check_seconds)}))


def measure(
    job: str, monitored: bool, args: argparse.Namespace, mode: str = "--child"
) -> dict[str, float]:
    steps = args.cnn_steps if job.startswith("cnn") else args.steps
    command = [sys.executable, __file__, mode, job, "--steps", str(steps)]
    command += ["--every", str(args.every)] + (["--monitored"] if monitored else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    # The CNN's step is ~1.5 ms: enough steps that the first check (~10 ms) is amortised
    # as over any real run.
    parser.add_argument("--cnn-steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--models", default="cnn,cnn256,gpt,wide")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--paired")
    parser.add_argument("--monitored", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.monitored, args.steps, args.every)
        return
    if args.paired:
        paired(args.paired, args.steps, args.every)
        return
    print(
        f"load average before: {os.getloadavg()[0]:.2f}; {args.steps} steps "
        f"(CNN {args.cnn_steps}), checks every {args.every}"
    )
    header = ("model", "step ms", "with ms", "overhead", "paired", "in monitor", "checks",
              "worst check ms", "extra peak MiB", "largest tensor MiB")  # fmt: skip
    print("  ".join(f"{h:>16}" for h in header))
    for job in args.models.split(","):
        plain, watched, pairs = [], [], []
        for round_ in range(args.rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for monitored in order:
                (watched if monitored else plain).append(measure(job, monitored, args))
            if job != "wide":  # memory only: its steps are too few for blocks
                pairs.append(measure(job, True, args, "--paired")["paired_overhead"])
        base = statistics.median(r["step_s"] for r in plain)
        with_ = statistics.median(r["step_s"] for r in watched)
        extra = statistics.median(w["peak_kib"] for w in watched) - statistics.median(
            p["peak_kib"] for p in plain
        )
        row = (
            job,
            f"{base * 1e3:.2f}",
            f"{with_ * 1e3:.2f}",
            f"{(with_ - base) / base:+.2%}",
            f"{statistics.median(pairs):+.2%}" if pairs else "-",
            f"{statistics.median(r['inside_share'] for r in watched):.2%}",
            f"{watched[0]['checks']}",
            f"{max(r['worst_check_s'] for r in watched) * 1e3:.1f}",
            f"{extra / 1024:.1f}",
            f"{watched[0]['largest_kib'] / 1024:.2f}",
        )
        print("  ".join(f"{c:>16}" for c in row))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
