"""One worker process per SIMD capability: how the calibration benches see several CPUs.

torch picks its CPU kernels once, at import, from `ATEN_CPU_CAPABILITY`, so a run under
another capability needs its own process. A worker prints its result as JSON on the last
line of its stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CAPABILITIES = ("default", "avx2", "avx512")


def supported() -> list[str]:
    """The capabilities this CPU can run: torch silently falls back from one it cannot."""
    import torch

    own = torch.backends.cpu.get_cpu_capability().lower()
    if own not in CAPABILITIES:
        return [own]
    return list(CAPABILITIES[: CAPABILITIES.index(own) + 1])


def run_workers(script: Path, args: list[str], capabilities: list[str]) -> list[Any]:
    """Run `script --worker ARGS` under each capability side by side; their JSON results."""
    procs = []
    for capability in capabilities:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        command = [sys.executable, str(script), "--worker", *args]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for capability, proc in zip(capabilities, procs, strict=True):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the {capability} worker failed (exit {proc.returncode})")
        results.append(json.loads(out.splitlines()[-1]))
    return results
