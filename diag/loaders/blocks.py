"""A tensor as a sequence of row blocks, so statistics never need the whole of it in memory.

A block is a run of leading-axis rows (output units, for PyTorch layouts) small enough to
stay in the CPU cache while several reductions pass over it. Tensors whose bytes are one
row-major run of a file are read block by block into one reused buffer; any other tensor
(an ONNX weight stored transposed, a strided view, a format without offsets) is read whole
and handed over as a single block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from diag.loaders.crc import crc32, crc_error
from diag.loaders.table import ITEMSIZE, ParamTable, TensorInfo, table_span

if TYPE_CHECKING:
    import numpy as np
    import torch

# Half of a core's L2 here: several passes over a block then cost little more than one.
BLOCK_BYTES = 2 * 1024 * 1024


class TensorSource:
    """One tensor of a table, read in blocks of rows (see `blocks`) or by unit rows."""

    def __init__(self, table: ParamTable, info: TensorInfo) -> None:
        self.table = table
        self.info = info
        span = table_span(table, info.name) if info.shape else None
        self._span = span if span is not None and span.nbytes == info.nbytes else None
        self._whole: torch.Tensor | None = None

    @property
    def blockable(self) -> bool:
        """Whether blocks can be read one by one (else the tensor comes as one block)."""
        return self._span is not None and self.info.units_axis == 0

    @property
    def n_rows(self) -> int:
        return self.info.shape[0] if self.info.shape else 1

    @property
    def row_numel(self) -> int:
        return math.prod(self.info.shape[1:]) if self.info.shape else 1

    def default_rows_per_block(self) -> int:
        # Sized for float32 so that a pair of sources of different dtypes can share it.
        return max(1, BLOCK_BYTES // (4 * max(self.row_numel, 1)))

    def blocks(self, rows_per_block: int, buffer: Buffer) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, block) pairs covering the tensor in order.

        A block aliases `buffer` and is only valid until the next one is produced.
        """
        if not self.blockable or rows_per_block >= self.n_rows:
            if self._span is not None and self.info.units_axis == 0:
                block = self._read_rows(0, self.n_rows, buffer)
                if self._span.crc32 is not None:
                    self._check_crc(crc32(buffer.last))
                yield 0, block
                return
            yield 0, self.whole()
            return
        crc = 0
        for first in range(0, self.n_rows, rows_per_block):
            count = min(rows_per_block, self.n_rows - first)
            block = self._read_rows(first, count, buffer)
            if self._span.crc32 is not None:  # on bytes already in the cache, ~11 GB/s
                crc = crc32(buffer.last, crc)
            yield first, block
        self._check_crc(crc)

    def _check_crc(self, crc: int) -> None:
        """A torch zip records each storage's CRC-32: a tensor read whole is checked."""
        if self._span is not None and self._span.crc32 is not None and crc != self._span.crc32:
            from diag.errors import InputError

            raise InputError(self._span.file.path, crc_error(self.info.name))

    def whole(self) -> torch.Tensor:
        if self._whole is None:
            self._whole = self.table.read(self.info.name)
        return self._whole

    def units(self, index: list[int]) -> torch.Tensor:
        """The given output units as rows of a (len(index), fan_in) tensor (a fresh copy)."""
        import torch

        if self._whole is None and self.blockable:
            rows = [self._read_rows(i, 1, Buffer()).clone() for i in index]
            return torch.cat(rows).reshape(len(index), -1)
        x = self.whole()
        axis = self.info.units_axis if self.info.units_axis < x.dim() else 0
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)[torch.tensor(index)]

    def _read_rows(self, first: int, count: int, buffer: Buffer) -> torch.Tensor:
        import torch

        assert self._span is not None
        itemsize = ITEMSIZE[self.info.dtype]
        row_bytes = self.row_numel * itemsize
        nbytes = count * row_bytes
        view = buffer.view(nbytes)
        self._span.file.readinto(
            self._span.offset + first * row_bytes, view, f"tensor {self.info.name!r}"
        )
        dtype = getattr(torch, self.info.dtype)
        flat = torch.frombuffer(view, dtype=dtype, count=count * self.row_numel)
        return flat.view(count, *self.info.shape[1:])

    def release(self) -> None:
        self._whole = None


class Buffer:
    """A reusable byte buffer: reading into it avoids faulting in fresh pages per block."""

    def __init__(self) -> None:
        self._data: np.ndarray | None = None
        self.last = memoryview(b"")  # the bytes of the latest view handed out

    def view(self, nbytes: int) -> memoryview:
        import numpy as np

        if self._data is None or self._data.nbytes < nbytes:
            # A new array, not a resize: blocks handed out earlier may still alias the old one.
            self._data = np.empty(max(nbytes, 1), dtype=np.uint8)
        self.last = memoryview(self._data)[:nbytes]
        return self.last
