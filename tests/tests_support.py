"""One canonical Result, rendered by every reporter and compared with golden files."""

from __future__ import annotations

from pathlib import Path

from diag.model import Finding, Location, Result, RuleError, Severity, Skipped

GOLDEN = Path(__file__).parent / "golden"


def canonical_result() -> Result:
    return Result(
        findings=(
            Finding(
                "never received a gradient: the adam optimizer holds it but has no state for it",
                Location("runs/final.ckpt", "conv1.weight"),
                {"optimizer_state": False, "max_abs_delta": 0.0},
                Severity.ERROR,
                "stuck-parameter",
                "params",
            ),
            Finding(
                "3 of 64 units have all-zero incoming weights",
                Location("runs/final.ckpt", "fc1.weight", {"units": [0, 5, 9]}),
                {"n_units": 64, "dead": 3, "fraction": 3 / 64},
                Severity.WARNING,
                "dead-units",
                "params",
            ),
            Finding(
                "initialised to all zeros: fine for a LoRA B matrix, a bug anywhere else",
                Location("runs/init.pt", "lora.B"),
                {"value": 0.0, "numel": 512, "ratio": float("inf")},
                Severity.INFO,
                "constant-parameter",
                "params",
            ),
        ),
        skipped=(Skipped("update-ratio", "needs --init (the checkpoint saved before training)"),),
        errors=(RuleError("noisy-kernels", "ValueError: example"),),
        metadata={
            "inputs": [{"role": "checkpoint", "path": "runs/final.ckpt", "format": "torch"}],
            "generated": "2026-01-01T00:00:00+00:00",
            "rules_run": 8,
            "timings": {"dead-units": 0.001},
        },
    )
