"""What every log loader produces: the metrics of one training run as named series.

Loaders return points exactly as the log holds them, in the order written: a resumed run's
repeated steps, NaN and infinite values are kept. Making a curve out of them (deciding
which write of a repeated step wins, which series is the training loss) is done once,
for every format, in `diag.loaders.logs.curves`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Series:
    """One metric as logged.

    `steps` are the logger's global step per point (int64); a log that only counts epochs
    uses the epoch number as the step. `epochs` (float64) is there when the log records
    the epoch of each point. `wall_times` (float64, seconds since the epoch) when it
    records time. All arrays have one entry per point.
    """

    name: str
    steps: np.ndarray
    values: np.ndarray
    epochs: np.ndarray | None = None
    wall_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.values)
        for arr in (self.steps, self.epochs, self.wall_times):
            if arr is not None and len(arr) != n:
                raise ValueError(f"series {self.name!r}: arrays of different lengths")

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, eq=False)
class LogRun:
    """The series of one training run, read from one source.

    `source` is the file (or run folder) read, shown as the artifact of findings. `run`
    tells runs of one source apart ("" when the source holds a single run): a Lightning
    `version_N`, an MLflow run id or name, a TensorBoard sub-folder. `meta` holds what the
    log says beyond the numbers that rules can use, with these keys when known:
    `monitor` (metric a checkpoint or early stopping watched), `hparams` (dict),
    `best_metric`, `best_step`. `notes` are non-fatal oddities worth telling the user
    (a final record cut short by a live writer, cells that were not numbers).
    """

    source: Path
    format: str
    series: dict[str, Series]
    run: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.source}:{self.run}" if self.run else str(self.source)
