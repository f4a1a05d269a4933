"""Benchmark: diag's TensorBoard reader against TensorBoard's own EventAccumulator.

    .venv/bin/python bench/bench_tensorboard.py [--points 1000000] [--repeats 2]
        [--dir /tmp/diag-bench-tb] [--keep]

Writes one real event file with `torch.utils.tensorboard.SummaryWriter` (a run with three
scalars logged every step and two validation scalars every 50 steps), then times:

- `read_tensorboard(folder)` (diag),
- `EventAccumulator(folder, size_guidance={"scalars": 0}).Reload()`: TensorBoard keeping
  every point, which is what a linter needs,
- for information, the default `EventAccumulator` (keeps a random 10,000 points per tag).

Both keep-all readers must return the same points; the target is a 5x speed-up.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TARGET_SPEEDUP = 5.0
VAL_EVERY = 50


def write_run(folder: Path, points: int) -> Path:
    """An event file of about `points` scalars, written the way a training loop writes it."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder), max_queue=1000, flush_secs=3600)
    written = step = 0
    loss = 2.5
    while written < points:
        loss = loss * 0.99999 + 0.01 * math.sin(step)
        row = {
            "train/loss": loss,
            "train/lr": 1e-3 * (1 + math.cos(step / 1000)) / 2,
            "train/grad_norm": 1.0 + abs(math.sin(step / 7)),
        }
        if step % VAL_EVERY == 0:
            row |= {"val/loss": loss * 1.1, "val/acc": 1 - loss / 3}
        for tag, value in list(row.items())[: points - written]:
            writer.add_scalar(tag, value, step)
        written += min(len(row), points - written)
        step += 1
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for every reader")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/diag-bench-tb"))
    parser.add_argument("--keep", action="store_true", help="keep the event file afterwards")
    args = parser.parse_args(argv)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diag.loaders.logs.tensorboard import read_tensorboard

    folder = args.dir / "run"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        start = time.perf_counter()
        path = write_run(folder, args.points)
        size_mb = path.stat().st_size / 1e6
        took = time.perf_counter() - start
        print(f"wrote {args.points:,} scalars, {size_mb:.1f} MB, in {took:.1f} s")

        def accumulate(**guidance: int) -> EventAccumulator:
            acc = EventAccumulator(str(folder), **guidance)
            acc.Reload()
            return acc

        ours_s, runs = best_time(lambda: read_tensorboard(folder), args.repeats)
        all_s, keep_all = best_time(lambda: accumulate(size_guidance={"scalars": 0}), args.repeats)
        default_s, default = best_time(accumulate, args.repeats)

        (run,) = runs
        ours_n = sum(len(s) for s in run.series.values())
        all_n = sum(len(keep_all.Scalars(t)) for t in keep_all.Tags()["scalars"])
        default_n = sum(len(default.Scalars(t)) for t in default.Tags()["scalars"])
        same = ours_n == all_n == args.points and set(run.series) == set(keep_all.Tags()["scalars"])
        for tag, series in run.series.items():
            events = keep_all.Scalars(tag)
            same = same and np.array_equal(series.steps, [e.step for e in events])
            same = same and np.array_equal(series.values, [e.value for e in events])
            same = same and np.array_equal(series.wall_times, [e.wall_time for e in events])

        rows = [
            ("diag read_tensorboard", ours_s, ours_n),
            ('EventAccumulator {"scalars": 0}', all_s, all_n),
            ("EventAccumulator default (info)", default_s, default_n),
        ]
        print()
        print("| reader | seconds | points | points/s | MB/s | speed-up of diag |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, seconds, n in rows:
            print(
                f"| {name} | {seconds:.3f} | {n:,} | {n / seconds:,.0f} | "
                f"{size_mb / seconds:.1f} | {seconds / ours_s:.1f}x |"
            )
        speedup = all_s / ours_s
        verdict = "PASS" if speedup >= TARGET_SPEEDUP else "MISS"
        print()
        print(f"same points as the keep-all EventAccumulator: {'yes' if same else 'NO'}")
        target = f">= {TARGET_SPEEDUP:.0f}x the keep-all EventAccumulator"
        print(f"target: {target}: {speedup:.1f}x {verdict}")
        return 0 if same and verdict == "PASS" else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
