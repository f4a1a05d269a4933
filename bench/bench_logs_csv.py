"""Time `read_csv_log` on big CSV logs against the standard library's csv module (and pandas).

    .venv/bin/python bench/bench_logs_csv.py [--rows 1000000] [--repeats 3] [--dir DIR] [--keep]

Writes two files of `--rows` data rows each:
- a Lightning-style sparse `lightning_logs/version_0/metrics.csv`: columns epoch, step,
  train_loss, lr-AdamW, val_loss, val_acc; nine train rows then one validation row, with
  the other cells empty, as `CSVLogger` writes them;
- a dense plain CSV: step, loss, accuracy, grad_norm, lr, every cell filled.

For each file it prints the best of `--repeats` wall times of
- `csv.reader` just reading every row into a list (the floor of any csv-module reader),
- `diag.loaders.logs.tables.read_csv_log` (rows to typed series),
- `pandas.read_csv`, when pandas happens to be importable.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from diag.loaders.logs.tables import read_csv_log


def write_lightning(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train_loss", "lr-AdamW", "val_loss", "val_acc"])
        step = 0
        for i in range(rows):
            epoch = i // 1000
            if i % 10 == 9:
                w.writerow([epoch, step, "", "", rng.random(), rng.random()])
            else:
                w.writerow([epoch, step, 2.0 / (1 + step) + rng.random() * 0.1, 1e-3, "", ""])
                step += 1


def write_dense(path: Path, rows: int) -> None:
    rng = random.Random(1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "accuracy", "grad_norm", "lr"])
        for i in range(rows):
            w.writerow([i, rng.random(), rng.random(), rng.random() * 5, 1e-3])


def stdlib_rows(path: Path) -> int:
    with open(path, newline="") as f:
        return len(list(csv.reader(f))) - 1


def diag_read(path: Path) -> int:
    run = read_csv_log(path)[0]
    return max(len(s) for s in run.series.values())


def best_of(fn: Callable[[Path], object], path: Path, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="diag-bench-logs-", dir=args.dir))
    readers: list[tuple[str, Callable[[Path], object]]] = [
        ("csv.reader (rows only)", stdlib_rows),
        ("diag read_csv_log", diag_read),
    ]
    try:
        import pandas

        readers.append((f"pandas.read_csv {pandas.__version__}", pandas.read_csv))
    except ImportError:
        pass
    try:
        files = {
            "lightning sparse": root / "lightning_logs" / "version_0" / "metrics.csv",
            "plain dense": root / "dense.csv",
        }
        t0 = time.perf_counter()
        write_lightning(files["lightning sparse"], args.rows)
        write_dense(files["plain dense"], args.rows)
        print(f"wrote 2 x {args.rows:,} rows in {time.perf_counter() - t0:.1f} s to {root}")
        # On a shared 2-core machine other jobs slow every reader alike; the load says how much.
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        print(f"\n| file | MB | reader | seconds (best of {args.repeats}) | rows/s |")
        print("|---|---:|---|---:|---:|")
        for label, path in files.items():
            mb = path.stat().st_size / 1e6
            for name, fn in readers:
                sec = best_of(fn, path, args.repeats)
                print(f"| {label} | {mb:.0f} | {name} | {sec:.2f} | {args.rows / sec:,.0f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
