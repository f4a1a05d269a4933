"""The params rules' calibration table: worst healthy value and mildest caught fault per rule.

    .venv/bin/python bench/calibration.py [--seeds 3] [--capabilities default,avx2,avx512]
        [--json out.json]

Sources of evidence, pooled into one distribution per rule:
- the zoo: every real pretrained model in tests/zoo/manifest.json (healthy), and the same
  models with planted faults (tests/zoo/plant.py);
- our digits CNNs (diag.demo.train): healthy and broken variants, several seeds, each
  trained in a subprocess under every `ATEN_CPU_CAPABILITY` the CPU supports, since a
  run's trajectory depends on the SIMD kernels torch picks.
Each rule is reduced to the one number it thresholds; the table prints, per rule, the
threshold, the worst value on healthy weights (closest to firing) and the mildest value on
a fault (closest to being missed), with where each came from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from capabilities import run_workers, supported  # noqa: E402


@dataclass
class Sample:
    rule: str
    value: float
    healthy: bool
    where: str


# (rule, threshold, what the number is, whether larger values are healthier)
RULES = {
    "nonfinite-parameter": (0.0, "non-finite values in a learned tensor (fires > 0)", False),
    "constant-parameter": (0.0, "relative spread (max-min)/max|w| of a weight (fires = 0)", True),
    "symmetric-units": (1e-4, "closest pair of units / unit norm, hidden layers (fires <)", True),
    "symmetric-units/share": (
        0.25,
        "share of a layer's units in near-copy groups (fires >=)",
        False,
    ),
    "dead-units": (0.1, "share of a layer's units with zero weights (warns >=)", False),
    "noisy-kernels": (0.05, "permutation p-value of the stem's smoothness (fires >=)", False),
    "stuck-parameter": (1e-5, "max |final-init| / max |w| of a tensor (fires <=)", True),
    "init-scale": (3.0, "initial std / He's sqrt(2/fan_in) (warns >)", False),
    "update-ratio": (2.0, "decades of |dW|/|W| from the median layer (warns >=)", False),
}


def tensor_samples(path: Path, where: str, healthy: bool) -> list[Sample]:
    """Every params number of one checkpoint, read the way `diag check` reads it."""
    import torch

    from diag.loaders.checkpoint import open_checkpoint
    from diag.rules.kernels import kernel_noise
    from diag.rules.params import (
        PRUNED_LAYERS,
        _infinite_constant,
        first_layer_convs,
        output_heads,
    )
    from diag.stats import compute_stats

    out: list[Sample] = []
    ckpt = open_checkpoint(str(path))
    stats = {i.name: compute_stats(i, ckpt.table.read(i.name)) for i in ckpt.table.infos()}
    heads = output_heads(stats, graph=ckpt.format == "onnx")
    zero_layers = sum(1 for s in stats.values() if s.is_weight and s.n_zero_units)
    pruned = zero_layers >= PRUNED_LAYERS
    for s in stats.values():
        if (s.nan or s.inf) and not _infinite_constant(s, graph=ckpt.format == "onnx"):
            out.append(Sample("nonfinite-parameter", s.nan + s.inf, healthy, f"{where}:{s.name}"))
        if not s.is_weight or s.nan or s.inf:
            continue
        top = max(abs(s.min), abs(s.max))
        if top > 0:
            spread = (s.max - s.min) / top
            out.append(Sample("constant-parameter", spread, healthy, f"{where}:{s.name}"))
        if s.n_units and not pruned:
            out.append(
                Sample("dead-units", s.n_zero_units / s.n_units, healthy, f"{where}:{s.name}")
            )
        if s.name not in heads and s.n_units >= 2 and s.fan_in >= 2:
            w = ckpt.table.read(s.name).double()
            d = _closest_pair(w.movedim(s.info.units_axis, 0).reshape(s.n_units, -1), torch)
            if d is not None:
                out.append(Sample("symmetric-units", d, healthy, f"{where}:{s.name}"))
            share = sum(s.duplicate_sizes) / s.n_units
            out.append(Sample("symmetric-units/share", share, healthy, f"{where}:{s.name}"))
    for s in first_layer_convs(stats):
        if s.kernels is not None and not s.all_equal:
            test = kernel_noise(s.kernels)
            if test is not None:
                out.append(Sample("noisy-kernels", test.p_value, healthy, f"{where}:{s.name}"))
    return out


def _closest_pair(units: Any, torch: Any) -> float | None:
    """Smallest distance between two live units, relative to their norm (exact, chunked)."""
    norms = torch.linalg.vector_norm(units, dim=1)
    typical = float(norms[norms > 0].median()) if bool((norms > 0).any()) else 0.0
    live = units[norms > 0.05 * typical]
    if len(live) < 2 or len(live) > 40_000:
        return None
    live_norms = torch.linalg.vector_norm(live, dim=1)
    best = math.inf
    for start in range(0, len(live), 2048):
        block = torch.cdist(live[start : start + 2048], live)
        idx = torch.arange(start, min(start + 2048, len(live)))
        block[idx - start, idx] = math.inf
        rel = block / torch.maximum(live_norms[start : start + 2048, None], live_norms[None, :])
        best = min(best, float(rel.min()))
    return best


def zoo_samples() -> list[Sample]:
    from zoo.fetch import fetch, load_manifest
    from zoo.plant import choose_targets, planted, read_tensors, write_like

    out = []
    models = {m.id: m for m in load_manifest()}
    for model_id, path in fetch().items():
        try:
            out += tensor_samples(path, f"zoo/{model_id}", True)
        except Exception as exc:  # a model diag refuses is reported, not fatal to the table
            print(f"  {model_id}: not measured ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        if models[model_id].format == "onnx":
            continue
        tensors = read_tensors(path)
        targets = choose_targets(tensors, None)
        faults = {
            targets.nan: "nonfinite-parameter",
            targets.constant: "constant-parameter",
            targets.duplicate: "symmetric-units",
        }
        edits = planted(targets)
        with tempfile.TemporaryDirectory() as tmp:
            for name, rule in faults.items():
                if name is None:
                    continue
                changed = dict(tensors, **{name: edits[name](tensors[name])})
                target = Path(tmp) / f"fault{path.suffix}"
                write_like(models[model_id].format, changed, target)
                where = f"zoo/{model_id}+{rule}"
                out += _faults(tensor_samples(target, where, True), rule, {name})
    return out


def runs_samples(seeds: int) -> list[Sample]:
    """Our digits runs, trained in this process (its ATEN_CPU_CAPABILITY applies)."""
    import torch

    from diag.demo import HEALTHY, PLANTED, Faults, save_run, train

    capability = torch.backends.cpu.get_cpu_capability()
    variants = {
        "healthy": HEALTHY,
        "planted": PLANTED,
        "constant_all": Faults(constant_all=True),
        "big_init": Faults(init_std=1.0),
    }
    out = []
    for seed in range(seeds):
        for name, faults in variants.items():
            trained = train(faults, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                paths = save_run(trained, Path(tmp) / name)
                where = f"run/{name}/seed{seed}/{capability}"
                samples = tensor_samples(paths["final"], where, True)
                if name == "healthy":
                    out += samples + _movement(paths, where, True) + _scales(paths, where)
                elif name == "planted":  # conv1 cut from the graph: random and unmoved
                    out += _faults(samples, "noisy-kernels", {"conv1.weight"})
                    out += _movement(paths, where, False)
                elif name == "big_init":  # N(0, 1) init everywhere: every weight too large
                    out += [
                        Sample(x.rule, x.value, False, x.where)
                        for x in _scales(paths, where)
                        if x.rule == "init-scale"
                    ]
                else:  # every weight started at 0.01: the copies are the fault
                    weights = {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
                    out += _faults(samples, "symmetric-units", weights)
    return out


def _faults(samples: list[Sample], rule: str, names: set[str]) -> list[Sample]:
    """The samples of `rule` on the faulty tensors, marked as faults."""
    picked = [
        s for s in samples if s.rule.split("/")[0] == rule and s.where.rsplit(":", 1)[1] in names
    ]
    for s in picked:
        s.healthy = False
    return picked


def _scales(paths: dict, where: str) -> list[Sample]:
    """init-scale's and update-ratio's numbers for every Linear/Conv weight of a run."""
    import statistics

    from diag.loaders.checkpoint import open_checkpoint
    from diag.stats import compute_stats, compute_update

    init, final = open_checkpoint(str(paths["init"])), open_checkpoint(str(paths["final"]))
    out, ratios = [], {}
    for info in init.table.infos():
        s = compute_stats(info, init.table.read(info.name))
        expected = s.expected_std_range()
        if expected is None or s.std == 0:
            continue
        out.append(Sample("init-scale", s.std / expected[1], True, f"{where}:{info.name}"))
        u = compute_update(info.name, init.table.read(info.name), final.table.read(info.name))
        if u is not None and u.init_norm > 0 and u.ratio > 0:
            ratios[info.name] = u.ratio
    if len(ratios) >= 3:
        median = statistics.median(ratios.values())
        for name, r in ratios.items():
            decades = abs(math.log10(r / median))
            out.append(Sample("update-ratio", decades, True, f"{where}:{name}"))
    return out


def _movement(paths: dict, where: str, healthy: bool) -> list[Sample]:
    from diag.loaders.checkpoint import open_checkpoint

    init, final = open_checkpoint(str(paths["init"])), open_checkpoint(str(paths["final"]))
    out = []
    for info in final.table.infos():
        if not info.is_float or info.name.endswith(("running_mean", "running_var")):
            continue
        a, b = init.table.read(info.name).double(), final.table.read(info.name).double()
        top = float(b.abs().max())
        if top > 0:
            moved = float((b - a).abs().max()) / top
            # The planted run's conv1 is cut from the graph: that one tensor is the fault.
            fault = not healthy and info.name == "conv1.weight" and "/planted/" in where
            if healthy or fault:
                out.append(Sample("stuck-parameter", moved, not fault, f"{where}:{info.name}"))
    return out


def table(samples: list[Sample]) -> list[dict]:
    rows = []
    for rule, (threshold, what, larger_healthy) in RULES.items():
        healthy = [s for s in samples if s.rule == rule and s.healthy]
        faults = [s for s in samples if s.rule == rule and not s.healthy]
        pick_h = min if larger_healthy else max
        pick_f = max if larger_healthy else min
        worst = pick_h(healthy, key=lambda s: s.value) if healthy else None
        mildest = pick_f(faults, key=lambda s: s.value) if faults else None
        rows.append(
            {
                "rule": rule,
                "what": what,
                "threshold": threshold,
                "worst_healthy": asdict(worst) if worst else None,
                "mildest_fault": asdict(mildest) if mildest else None,
                "n_healthy": len(healthy),
                "n_faults": len(faults),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'rule':<22}{'threshold':>10}  {'worst healthy':>14}  {'mildest fault':>14}  where")
    for r in rows:
        h, f = r["worst_healthy"], r["mildest_fault"]
        hv = f"{h['value']:.3g}" if h else "-"
        fv = f"{f['value']:.3g}" if f else "-"
        print(f"{r['rule']:<22}{r['threshold']:>10.3g}  {hv:>14}  {fv:>14}  {r['what']}")
        print(f"{'':<22}{'':>10}  n={r['n_healthy']:<12}  n={r['n_faults']:<12}")
        if h:
            print(f"{'':<24}healthy: {h['where']}")
        if f:
            print(f"{'':<24}fault:   {f['where']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--capabilities", default=None, help="default: all the CPU supports")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # one capability, in a child process: samples as JSON on stdout
        print(json.dumps([asdict(s) for s in runs_samples(args.seeds)]))
        return 0
    samples = zoo_samples()
    caps = args.capabilities.split(",") if args.capabilities else supported()
    for found in run_workers(Path(__file__), ["--seeds", str(args.seeds)], caps):
        samples += [Sample(**s) for s in found]
    print(f"  runs under {', '.join(caps)}: {args.seeds} seeds each", file=sys.stderr)
    rows = table(samples)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
