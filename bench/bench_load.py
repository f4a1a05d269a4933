"""The load run of issue 7: time and peak memory of one `diag check` over 10,000 tensors,
1,000,000 log steps and 1,000,000 + 100,000 split rows, and of each input alone.

    .venv/bin/python bench/bench_load.py [--out bench/out/load]

Inputs come from tests/load_inputs.py (the same as tests/test_load.py). Each run is a
fresh `diag check` process in the test sandbox (tests/hostile_sandbox.py), whose peak RSS
is the process's VmHWM, imports included. Targets (issues 2 and 4): the tensor pass at most
the largest tensor + 300 MB above imports; the leakage engine bounded by its hashes and
sketches; the whole run under 1 GiB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import hostile_sandbox as hs  # noqa: E402
import load_inputs as li  # noqa: E402

RUNS = {
    "checkpoint (10,000 tensors)": ["model.pt"],
    "logs (1,000,000 steps)": ["--logs", "metrics.csv"],
    "splits (1,000,000 + 100,000 rows)": ["--split", "train=train.npz", "--split", "val=val.npz"],
    "all three, with the HTML report": [
        "model.pt", "--logs", "metrics.csv", "--split", "train=train.npz",
        "--split", "val=val.npz", "--html", "report.html",
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "load")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "val.npz").exists():
        started = time.monotonic()
        tensor_bytes = li.write_checkpoint(out / "model.pt")
        li.write_log(out / "metrics.csv")
        li.write_splits(out)
        print(f"inputs written in {time.monotonic() - started:.1f} s "
              f"({tensor_bytes / 1e6:.0f} MB of tensors)")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f} (other work on the 2 cores inflates times)")
    print(f"{'run':<36} {'seconds':>8} {'peak RSS':>9} {'exit':>5}")
    for name, options in RUNS.items():
        outcome = hs.run_diag([*options, "-q", "--format", "json", "-o", "report.json"], out, 1800)
        peak = "?" if outcome.peak_rss_mb is None else f"{outcome.peak_rss_mb:.0f} MB"
        print(f"{name:<36} {outcome.seconds:>8.1f} {peak:>9} {outcome.returncode:>5}")


if __name__ == "__main__":
    main()
