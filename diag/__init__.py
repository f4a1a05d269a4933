"""diag: a training-diagnostics linter for deep learning.

    >>> import diag
    >>> result = diag.check("final.ckpt", init="init.pt", logs=["lightning_logs"])
    >>> [f.rule for f in result.findings]

Heavy libraries load only when `check` runs, so importing diag stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from diag.live import TrainingStopped
    from diag.model import Result
    from diag.monitor import Monitor

__all__ = ["Monitor", "TrainingStopped", "check"]


def __getattr__(name: str) -> object:
    # The live monitor needs torch: imported on first use, so `import diag` stays cheap.
    if name == "Monitor":
        from diag.monitor import Monitor

        return Monitor
    if name == "TrainingStopped":
        from diag.live import TrainingStopped

        return TrainingStopped
    raise AttributeError(f"module 'diag' has no attribute {name!r}")


def check(
    checkpoint: str | None = None,
    *,
    init: str | None = None,
    logs: Iterable[str] = (),
    splits: Mapping[str, str] | None = None,
    model: str | None = None,
    batch: str | None = None,
    loss: str | None = None,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    rule_options: Mapping[str, Mapping[str, object]] | None = None,
    baseline: str | None = None,
) -> Result:
    """Check a run's artifacts and return the `Result` (findings, skipped rules, errors).

    The arguments mirror `diag check`'s options; `rule_options` maps a rule name to its
    thresholds (as `[tool.diag.rules.NAME]` does). Bad input raises `diag.errors.DiagError`.
    """
    from diag.api import CheckOptions
    from diag.api import check as run

    options = CheckOptions(
        checkpoint=checkpoint,
        init=init,
        logs=list(logs),
        splits=dict(splits or {}),
        model=model,
        batch=batch,
        loss=loss,
        select=list(select),
        ignore=list(ignore),
        rule_options={k: dict(v) for k, v in (rule_options or {}).items()},
        baseline=baseline,
    )
    return run(options)[0]
