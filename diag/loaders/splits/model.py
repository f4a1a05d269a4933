"""What every split loader produces: one dataset split, its labels and groups, and lazy
access to the samples' content.

Content is read in chunks (`SampleSource.chunks`) so a split of a million samples never
has to be in memory at once; the leakage engine keeps only hashes and small sketches, and
fetches the few samples it must show or double-check by index (`SampleSource.take`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

# What a split's samples are, which decides how they are compared.
IMAGE = "image"  # 2-D (H, W) or 3-D (H, W, C) arrays, possibly of different sizes
TABLE = "table"  # rows of numeric features (float64, NaN for missing) plus optional text cells
TEXT = "text"  # one string per sample


@dataclass(frozen=True, eq=False)
class TableChunk:
    """Rows of a table: numeric features, and the non-numeric feature cells joined as text."""

    numeric: np.ndarray  # (rows, n_numeric) float64
    text: Sequence[str] | None = None  # one string per row (categorical cells), or None


class SampleSource(Protocol):
    """Lazy, read-only access to a split's samples, in file order.

    - IMAGE: a chunk is a sequence of arrays (H, W) or (H, W, C), uint8 or float; channels
      last. Sizes may differ between images (image folders).
    - TABLE: a chunk is a `TableChunk`.
    - TEXT: a chunk is a sequence of str.
    """

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        """(index of the first sample, chunk) pairs covering every sample once, in order."""
        ...

    def take(self, indices: Sequence[int]) -> list[object]:
        """The given samples, one element each (an image array, a table row as a
        `TableChunk` of one row, or a string), for display and verification."""
        ...


@dataclass(frozen=True, eq=False)
class Split:
    """One named split (`--split NAME=PATH`).

    `ids` are what a person would use to find a sample: the file path inside an image
    folder, the row number of a table ("row 17"), or the array index ("#17"). `labels` and
    `groups` are 1-D arrays with one entry per sample (any dtype), or None. `columns` are
    the feature columns compared, for tables.
    """

    name: str
    source: Path
    kind: str
    samples: SampleSource
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None
    ids: Sequence[str] | None = None
    columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        if self.ids is not None:
            return str(self.ids[index])
        return f"#{index}"
