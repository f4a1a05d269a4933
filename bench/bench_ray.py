"""The data rules on a local Ray cluster: 1 and 2 workers, throughput and memory per worker.

    .venv/bin/python bench/bench_ray.py [--train 1000000] [--eval 10000] [--workers 1,2]
        [--out /tmp/diag-contamination] [--target-hours 1,24]

The splits are bench_contamination.py's (real standard-library docstrings, 100 evaluation
documents planted into training; written once, reused). Each configuration runs in a
fresh interpreter: the splits are opened on the driver as `diag check` opens them, then
the stage runs on a cluster started with `ray.init(num_cpus=W)` (W workers), or in process
for the baseline:
- eval-contamination: the training split scanned by the workers (JSON Lines byte ranges
  of 64 MiB, `map_batches`), the hits merged on the driver, candidates verified;
- near duplicates of text (split-overlap-near): MinHash digests of every document of both
  splits in the workers, the join of the pair in one task.

Per worker: documents per second and peak RSS (VmHWM of each Ray worker process, read
from /proc at the end: Ray keeps its workers alive, so their high-water mark covers the
run). Driver: its peak RSS. The projection for 1B training documents against a
10k-document benchmark follows from the measured per-worker rate; its arithmetic is
printed line by line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb(pid: str = "self", field: str = "VmHWM") -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ray_workers() -> list[int]:
    """The pids of this cluster's worker processes (they rename themselves `ray::...`)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if cmd.startswith("ray::") or "default_worker.py" in cmd:
            found.append(proc.info["pid"])
    return found


def child(stage: str, workers: int, train_path: str, eval_path: str) -> dict:
    from diag.data_engines import engine_for, load_splits

    paths = {"train": train_path, "test": eval_path}
    engine = engine_for("ray" if workers else "local", paths, None, None)
    if workers:
        import ray

        ray.init(
            num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
    t0 = time.perf_counter()
    splits = load_splits(paths, None, None, engine)
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    if stage == "contamination":
        from diag.contamination import ContaminationCheck

        reports = ContaminationCheck(splits, engine=engine if workers else None).reports()
        found = len(reports[0].documents)
        extra = {"hit_mib": reports[0].hit_bytes / 2**20}
    else:
        pair = engine.analyse(splits).comparisons[("train", "test")]
        found = len(list(pair.pairs()))
        extra = {}
    took = time.perf_counter() - t0
    per_worker = [rss_mb(str(pid)) for pid in ray_workers()] if workers else []
    return {
        "stage": stage,
        "workers": workers,
        "open_s": opened,
        "stage_s": took,
        "docs": len(splits["train"]) + (len(splits["test"]) if stage == "near" else 0),
        "found": found,
        "driver_mib": rss_mb(),
        "worker_mib": max(per_worker, default=float("nan")),
        **extra,
    }


def run(stage: str, workers: int, train: Path, evaluation: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, __file__, "--child", stage, "--workers", str(workers)]
    command += ["--paths", str(train), str(evaluation)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=10_000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--stages", default="contamination,near")
    ap.add_argument("--out", type=Path, default=Path("/tmp/diag-contamination"))
    ap.add_argument("--target-hours", default="1,24")
    ap.add_argument("--web-doc-bytes", type=int, default=4000)
    ap.add_argument("--child")
    ap.add_argument("--paths", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, int(args.workers), *args.paths)))
        return

    from bench_contamination import write_splits

    train, evaluation, _, _ = write_splits(args.out, args.train, args.eval)
    size = train.stat().st_size
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    print(f"training split: {args.train:,} documents, {size / 2**20:,.0f} MiB of JSON Lines")
    header = ("stage", "workers", "open s", "stage s", "docs/s", "docs/s/worker", "speed-up",
              "worker peak MiB", "driver peak MiB", "found")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rates: dict[tuple[str, int], float] = {}
    measured: dict[tuple[str, int], dict] = {}
    for stage in args.stages.split(","):
        for workers in [0, *(int(w) for w in args.workers.split(","))]:
            r = run(stage, workers, train, evaluation)
            measured[stage, workers] = r
            rate = r["docs"] / r["stage_s"]
            rates[stage, workers] = rate
            speed = rate / rates[stage, 1] if (stage, 1) in rates and workers > 1 else 1.0
            cells = (
                stage,
                str(workers) if workers else "in process",
                f"{r['open_s']:.1f}",
                f"{r['stage_s']:.1f}",
                f"{rate:,.0f}",
                f"{rate / max(workers, 1):,.0f}",
                f"{speed:.2f}x" if workers > 1 else "",
                f"{r['worker_mib']:,.0f}" if workers else "",
                f"{r['driver_mib']:,.0f}",
                str(r["found"]),
            )
            print("| " + " | ".join(cells) + " |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if ("contamination", 2) in rates:
        project(rates, measured, args, size)


def project(rates: dict, measured: dict, args: argparse.Namespace, size: int) -> None:
    """1B training documents against a 10k-document benchmark, from the 2-worker run."""
    target = 1_000_000_000
    two = measured["contamination", 2]
    per_worker = rates["contamination", 2] / 2  # the 2-worker rate: contention included
    bytes_per_doc = size / args.train
    print(f"\nProjection: {target:,} training documents against {args.eval:,} evaluation ones")
    print(f"- per-worker rate, from the 2-worker run: {per_worker:,.0f} documents/s")
    worker_hours = target / per_worker / 3600
    print(f"- worker time: {target:,} / {per_worker:,.0f} / 3600 = {worker_hours:,.1f} h")
    for hours in (float(h) for h in args.target_hours.split(",")):
        needed = math.ceil(worker_hours / hours)
        print(f"- in {hours:g} h: {worker_hours:,.1f} / {hours:g} = {needed:,} workers (cores)")
    data_tb = target * bytes_per_doc / 1e12
    per_byte = per_worker * bytes_per_doc
    print(
        f"- data read: {target:,} x {bytes_per_doc:,.0f} bytes = {data_tb:,.1f} TB; "
        f"per worker {per_byte / 2**20:,.1f} MiB/s"
    )
    # The scan's cost is per token, not per document: a crawl's documents are longer.
    web = args.web_doc_bytes
    web_hours = target * web / per_byte / 3600
    print(
        f"- with {web:,}-byte documents (a web crawl's): {target:,} x {web:,} / "
        f"{per_byte / 2**20:,.1f} MiB/s / 3600 = {web_hours:,.0f} worker-hours; "
        f"{math.ceil(web_hours):,} workers for 1 h, {math.ceil(web_hours / 24):,} for 24 h"
    )
    print(
        f"- worker memory does not grow with the training split (a 64 MiB shard at a time "
        f"and the evaluation index): {two['worker_mib']:,.0f} MiB measured"
    )
    hits = two.get("hit_mib", float("nan"))
    print(
        f"- driver: the merged hits ({hits:.1f} MiB here) are bounded by the evaluation "
        f"index (each of its n-grams keeps at most KEEP_DOCS training ids), not by the "
        f"training split; what does grow is the split's per-document ids the driver "
        f"keeps (JSON Lines offsets or line numbers, 8 bytes each): "
        f"{target * 8 / 1e9:,.0f} GB at 1B documents"
    )


if __name__ == "__main__":
    main()
