"""One measurement in a fresh interpreter, so its peak RSS is its own. Prints one JSON line.

Usage: python bench/_run_one.py MODE [PATH] [--init PATH]
  baseline          import torch, safetensors and diag's check stack; measure nothing else
  diag              diag.api.check(CheckOptions(checkpoint=PATH, init=..., quiet=True))
  breakdown         Run.prepare's loop by hand: seconds in read / compute_stats / compute_update
  torch-load        torch.load(PATH, weights_only=True) of the whole file
  safetensors-load  safetensors.torch.load_file(PATH) of the whole file (mmap-backed tensors)
  safetensors-load-touch  the same, then sum every tensor so all its pages are resident

Every mode pays the same imports before its clock starts; `seconds` excludes interpreter
start and imports. Memory comes from /proc/self/status, not getrusage: `ru_maxrss` of a
child started by fork+exec starts at the parent's RSS at fork time, so it overstates a
small child's peak. Reported: `hwm_kib` (VmHWM, the process's peak RSS including imports),
`imports_kib` (VmRSS once imports are done), `work_hwm_kib` (VmHWM after resetting it via
/proc/self/clear_refs once imports are done: the peak during the measured work; None if the
reset is not permitted) and `ru_maxrss_kib` for reference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

STACK = (
    "torch", "safetensors.torch", "diag.api", "diag.engine", "diag.run", "diag.stats",
    "diag.loaders.checkpoint", "diag.loaders.safetensors_table", "diag.loaders.torchzip",
)  # fmt: skip


def import_stack() -> None:
    """What any diag check imports anyway; done before timing in every mode."""
    for module in STACK:
        importlib.import_module(module)
    from diag.registry import load_rules

    load_rules()


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    return {}


def run_diag(args: argparse.Namespace) -> dict[str, Any]:
    from diag.api import CheckOptions, check

    result, _run = check(CheckOptions(checkpoint=args.path, init=args.init, quiet=True))
    return {"findings": len(result.findings), "errors": len(result.errors)}


def run_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    from diag.loaders.checkpoint import open_checkpoint
    from diag.stats import compute_stats, compute_update

    ckpt = open_checkpoint(args.path)
    init = open_checkpoint(args.init) if args.init else None
    spent = {"read_s": 0.0, "stats_s": 0.0, "update_s": 0.0}
    for info in ckpt.infos():
        tensors = [_timed(spent, "read_s", ckpt.table.read, info.name)]
        if init is not None:
            tensors.append(_timed(spent, "read_s", init.table.read, info.name))
        for tensor in tensors:
            _timed(spent, "stats_s", compute_stats, info, tensor)
        if len(tensors) == 2:
            _timed(spent, "update_s", compute_update, info.name, tensors[1], tensors[0])
        del tensors
    return spent


def _timed(spent: dict[str, float], key: str, func: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    out = func(*args)
    spent[key] += time.perf_counter() - start
    return out


def run_safetensors_load_touch(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = load_file(args.path)
    checksum = sum(float(t.sum()) for t in state.values())
    return {"tensors": len(state), "checksum": checksum}


def run_torch_load(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    state = torch.load(args.path, weights_only=True, map_location="cpu")
    return {"tensors": len(state)}


def run_safetensors_load(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = load_file(args.path)
    return {"tensors": len(state)}


MODES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "baseline": run_baseline,
    "diag": run_diag,
    "breakdown": run_breakdown,
    "torch-load": run_torch_load,
    "safetensors-load": run_safetensors_load,
    "safetensors-load-touch": run_safetensors_load_touch,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("path", nargs="?")
    parser.add_argument("--init")
    args = parser.parse_args(argv)
    import_stack()
    imports_kib = status_kib("VmRSS")
    imports_hwm_kib = status_kib("VmHWM")
    hwm_reset = reset_hwm()
    start = time.perf_counter()
    extra = MODES[args.mode](args)
    seconds = time.perf_counter() - start
    memory = {
        "hwm_kib": max(status_kib("VmHWM"), imports_hwm_kib),
        "imports_kib": imports_kib,
        "work_hwm_kib": status_kib("VmHWM") if hwm_reset else None,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps({"seconds": seconds, **memory, **extra}))
    return 0


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
