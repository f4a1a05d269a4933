"""A lazy table of named tensors: shapes up front, one tensor's bytes at a time on demand."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from diag.loaders.rawfile import FileSpan

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4,
    "uint64": 8, "bool": 1, "complex64": 8, "complex128": 16,
}  # fmt: skip
FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
     "float8_e4m3fnuz", "float8_e5m2fnuz"}
)  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a tensor without reading its data.

    `units_axis` is the axis that indexes output units (rows of a Linear weight, filters of
    a conv): 0 for PyTorch layouts, 1 where a graph stores a weight transposed (ONNX MatMul).
    `op` is a hint from a graph about the layer that uses the tensor ("conv", "linear",
    "embedding", "norm"), when the format knows it. `position` is where a graph says the
    layer sits: "input" (the first weighted layer the input reaches) or "output" (the last
    one before a graph output); None when the format has no graph.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    units_axis: int = 0
    op: str | None = None
    position: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 4)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


class ParamTable(Protocol):
    """The seam between a checkpoint format and everything that reads tensors."""

    path: Path
    format: str

    def infos(self) -> list[TensorInfo]:
        """Every tensor, in the file's order, without reading data."""
        ...

    def read(self, name: str) -> torch.Tensor:
        """One tensor, freshly read into memory (CPU, contiguous, its stored dtype)."""
        ...

    def close(self) -> None: ...


def iter_tensors(table: ParamTable) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
    for info in table.infos():
        yield info, table.read(info.name)


def table_span(table: ParamTable, name: str) -> FileSpan | None:
    """Where a tensor lies in its file, for tables that can say (others read whole)."""
    span = getattr(table, "span", None)
    return span(name) if span is not None else None
