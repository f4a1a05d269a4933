"""The cost of N checkpoints against one: `diag check RUN_DIR` on a folder of N numbered
safetensors checkpoints of one model (about 100 MB each), N = 1, 2, 5, 10.

Prints wall time, time per checkpoint and peak RSS of the whole process. Reading N
checkpoints should cost N reads (time grows linearly) and not N times the memory (the
tensors stream a block of rows of each checkpoint at a time, side by side).

    .venv/bin/python bench/bench_history.py [--mb 100] [--counts 1,2,5,10]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_run(folder: Path, count: int, mb: int) -> None:
    import torch
    from safetensors.torch import save_file

    width = 768
    # Linear layers of a transformer block's shapes until the model is about `mb` MB.
    shapes = [(width * 4, width), (width, width * 4), (width * 3, width), (width, width)]
    per_block = sum(a * b for a, b in shapes) * 4
    blocks = max(1, mb * 2**20 // per_block)
    gen = torch.Generator().manual_seed(0)
    state = {
        f"h.{b}.w{i}": torch.randn(shape, generator=gen) * shape[1] ** -0.5
        for b in range(blocks)
        for i, shape in enumerate(shapes)
    }
    folder.mkdir(parents=True)
    for k in range(count):
        if k:
            state = {n: t + 1e-3 * torch.randn(t.shape, generator=gen) for n, t in state.items()}
        save_file(state, folder / f"ckpt_{(k + 1) * 100:06d}.safetensors")


def measure(folder: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one `diag check` process (page cache
    warm). CPU time is the steadier number on a shared machine."""
    cmd = [sys.executable, "-m", "diag", "check", str(folder), "-q", "--isolated",
           "--select", "params", "--format", "json", "-o", os.devnull]  # fmt: skip
    subprocess.run(cmd, check=False, capture_output=True)  # warm the page cache
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu
    return seconds, cpu, max(usage.ru_maxrss, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--counts", default="1,2,5,10")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"diag check RUN_DIR, --select params, checkpoints of about {args.mb} MB each")
    print(f"{'checkpoints':>11} {'wall s':>8} {'CPU s':>7} {'CPU s/ckpt':>11} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory(prefix="diag-bench-history-") as tmp:
        for count in counts:
            folder = Path(tmp) / f"run{count}"
            write_run(folder, count, args.mb)
            seconds, cpu, peak = measure(folder)
            print(f"{count:>11} {seconds:>8.2f} {cpu:>7.2f} {cpu / count:>11.2f} {peak:>12.0f}")
            for f in folder.iterdir():
                f.unlink()
    print("peak RSS is of the largest run so far (RUSAGE_CHILDREN keeps the maximum)")


if __name__ == "__main__":
    main()
