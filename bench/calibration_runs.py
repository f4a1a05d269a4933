"""The distributions behind the [curves] and [grads] calibration tests, over seeds and CPUs.

    .venv/bin/python bench/calibration_runs.py [--seeds 3] [--capabilities default,avx2,avx512]
        [--parts curves,grads] [--json out.json]

A CPU training run is not reproducible across machines: torch picks its SIMD kernels per
CPU (`ATEN_CPU_CAPABILITY` forces a choice), and a chaotic run (a learning rate on the edge
of stability) goes one way with AVX2 and another with AVX-512. So every run of
tests/test_curves_calibration.py and every model of tests/test_gradients.py is trained on
several seeds, each capability in its own subprocess, and the table prints per rule the
threshold, the worst healthy value (closest to firing) and the mildest caught fault
(closest to being missed). The test modules quote these numbers in their docstrings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from capabilities import run_workers, supported  # noqa: E402


def _spike_strength(losses: list[float], factor: float = 3.0, jump: float = 0.3) -> float:
    """How close the loss came to a `loss-spikes` spike: >= 1 is a spike.

    The rule needs a point `factor` x the trailing median and `jump` x the starting loss
    above it; the strength is the smaller of the two ratios, at the point where it is
    largest. Only finite points count, as in the rule.
    """
    import numpy as np

    from diag.rules.curves import _trailing_median

    x = np.array([v for v in losses if np.isfinite(v)], dtype=float)
    if len(x) < 20:
        return 0.0
    window = max(5, min(50, len(x) // 20))
    scale = abs(float(np.median(x[:3])))
    base = _trailing_median(x, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        strength = np.minimum(x / base / factor, (x - base) / (jump * scale))
    strength = strength[np.isfinite(strength) & (base > 0)]
    return float(strength.max()) if strength.size else 0.0


def _drop(losses: list[float]) -> float:
    """`loss-not-decreasing`'s number, measured by the rule's own code."""
    import numpy as np

    from diag.rules.curves import start_and_end

    start, end = start_and_end(np.array([v for v in losses if np.isfinite(v)], dtype=float))
    return (start - end) / start


def _curves(seeds: list[int], only: set[str]) -> list[dict[str, Any]]:
    import math

    from curve_writers import WRITERS
    from test_curves_calibration import RUNS, curve_findings

    from diag.demo import train

    rows = []
    for name, (faults, epochs, expected) in RUNS.items():
        if only and name not in only:
            continue
        for seed in seeds:
            history = train(faults, seed=seed, epochs=epochs).history
            losses = [loss for _, loss in history.step_loss]
            found = {}
            with tempfile.TemporaryDirectory() as tmp:
                for fmt, write in WRITERS.items():
                    found[fmt] = sorted(curve_findings(write(history, Path(tmp) / fmt)))
            rows.append(
                {
                    "part": "curves",
                    "run": name,
                    "seed": seed,
                    "expected": sorted(expected),
                    "found": found,
                    "spike_strength": _spike_strength(losses[4::5]),  # as Lightning logs it
                    "nonfinite": any(not math.isfinite(v) for v in losses),
                    "drop": _drop(losses[4::5]),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _grads(seeds: list[int]) -> list[dict[str, Any]]:
    from test_gradients import BACKWARD_BUGS, probe_for, train_digits_net

    from diag.gradients import check_gradients

    rows = []
    for seed in seeds:
        trained = train_digits_net(seed)
        for fault in ("healthy", *sorted(BACKWARD_BUGS)):
            results = check_gradients(probe_for(trained, fault, offset=32 * seed), seed=seed)
            expected = BACKWARD_BUGS[fault][1] if fault in BACKWARD_BUGS else set()
            rows.append(
                {
                    "part": "grads",
                    "run": fault,
                    "seed": seed,
                    "accuracy": trained["accuracy"],
                    "worst_clean": max(
                        (r.relative_error for r in results if r.name not in expected), default=0
                    ),
                    "mildest_fault": min(
                        (r.relative_error for r in results if r.name in expected), default=None
                    ),
                    "verdicts": sorted({r.verdict for r in results}),
                    "max_passes_per_probe": max(
                        r.forward_passes / max(len(r.autograd), 1) for r in results
                    ),
                    "kinks": sum(r.kinks for r in results),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def worker(seeds: list[int], parts: list[str], only: set[str]) -> dict[str, Any]:
    import torch

    # One thread: the capabilities run side by side, and a thread pool changes nothing
    # in what is measured (the kernels are picked per capability, not per thread count).
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    if "curves" in parts:
        rows += _curves(seeds, only)
    if "grads" in parts:
        rows += _grads(seeds)
    return {"capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}


def _table(results: list[dict[str, Any]]) -> None:
    rows = [dict(r, capability=res["capability"]) for res in results for r in res["rows"]]
    print("\n[curves] per run: findings over every format, seed and capability")
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in (r for r in rows if r["part"] == "curves"):
        by_run.setdefault(r["run"], []).append(r)
    for run, rs in by_run.items():
        outcomes = {tuple(f) for r in rs for f in r["found"].values()}
        ok = outcomes == {tuple(rs[0]["expected"])}
        strengths = [r["spike_strength"] for r in rs]
        print(
            f"  {run:20s} {'ok ' if ok else 'BAD'} expected {rs[0]['expected']} "
            f"seen {sorted(outcomes)}  spike strength {min(strengths):.2f}..{max(strengths):.2f}"
            f"  drop {min(r['drop'] for r in rs):.2f}..{max(r['drop'] for r in rs):.2f}"
            f"  nonfinite {sum(r['nonfinite'] for r in rs)}/{len(rs)}"
        )
    curves = [r for r in rows if r["part"] == "curves"]
    if curves:
        print("\n[curves] per rule: the worst run that must stay silent, the mildest caught")
        for rule, key, fires_above, threshold in (
            ("loss-spikes", "spike_strength", True, 1.0),
            ("loss-not-decreasing", "drop", False, 0.10),
        ):
            silent = [r for r in curves if rule not in r["expected"] and not r["nonfinite"]]
            caught = [r for r in curves if rule in r["expected"] and not r["nonfinite"]]
            pick = max if fires_above else min
            worst = pick(silent, key=lambda r: r[key], default=None)
            mildest = (min if fires_above else max)(caught, key=lambda r: r[key], default=None)
            for label, r in (("worst silent", worst), ("mildest caught", mildest)):
                if r is not None:
                    print(
                        f"  {rule:20s} {label:15s} {r[key]:8.3f} ({r['run']}, seed {r['seed']}, "
                        f"{r['capability']}); fires {'at or above' if fires_above else 'below'} "
                        f"{threshold}"
                    )
    grads = [r for r in rows if r["part"] == "grads"]
    if grads:
        healthy = [r for r in grads if r["run"] == "healthy"]
        faulty = [r for r in grads if r["run"] != "healthy"]
        print("\n[grads] gradient-mismatch (relative error, threshold 1e-2)")
        print(f"  worst healthy tensor    {max(r['worst_clean'] for r in healthy):.3g}")
        print(f"  worst clean tensor      {max(r['worst_clean'] for r in grads):.3g} (any model)")
        print(f"  mildest planted fault   {min(r['mildest_fault'] for r in faulty):.3g}")
        print(f"  forward passes / probe  {max(r['max_passes_per_probe'] for r in grads):.3g}")
        print(f"  trained accuracy        {min(r['accuracy'] for r in healthy):.3f} (lowest)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--capabilities", default=None, help="default: all the CPU supports")
    parser.add_argument("--parts", default="curves,grads")
    parser.add_argument("--runs", default="", help="only these curves runs (comma list)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds, parts = list(range(args.seeds)), args.parts.split(",")
    only = set(filter(None, args.runs.split(",")))
    if args.worker:
        print(json.dumps(worker(seeds, parts, only)))
        return
    capabilities = args.capabilities.split(",") if args.capabilities else supported()
    worker_args = ["--seeds", str(args.seeds), "--parts", args.parts, "--runs", args.runs]
    results = run_workers(Path(__file__), worker_args, capabilities)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    _table(results)


if __name__ == "__main__":
    main()
