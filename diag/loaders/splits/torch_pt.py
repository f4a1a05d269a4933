"""`.pt` / `.pth` holding one tensor or a dict of tensors, in either torch.save layout (zip,
or legacy pre-1.6), read with diag's restricted unpickler (`TorchZip`, `LegacyTorch`);
contiguous tensors are memory-mapped."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.arrays import Member, array_split
from diag.loaders.splits.common import short
from diag.loaders.splits.model import Split

# numpy dtypes for torch dtypes that numpy has; others (bfloat16, float8) are widened.
_TORCH_TO_NUMPY = frozenset(
    {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16",
     "uint32", "uint64", "bool", "complex64", "complex128"}
)  # fmt: skip


def open_torch(
    name: str,
    path: Path,
    label_column: str | None,
    group_column: str | None,
    *,
    legacy: bool = False,
) -> Split:
    from diag.loaders.legacy_torch import LegacyTorch
    from diag.loaders.torchzip import TorchZip

    # Restricted unpickler either way: raises InputError, never runs code. Both read
    # tensors by the same code, so the bounds and expansion checks are the same.
    archive = LegacyTorch(path) if legacy else TorchZip(path)
    try:
        members = _torch_members(path, archive)
        # Every array is mapped or read by now, so the archive's file can be closed.
        return array_split(name, path, members, label_column, group_column)
    finally:
        archive.close()


def _torch_members(path: Path, archive: Any) -> dict[str, Member]:
    """The tensors of a `.pt` holding one tensor or a flat dict of tensors, and nothing else."""
    from diag.loaders.safe_pickle import Opaque, TensorRef

    root = archive.root
    if isinstance(root, TensorRef):
        return {"x": _tensor_member(path, archive, "x", root)}
    if not isinstance(root, Mapping) or isinstance(root, Opaque):
        raise InputError(
            path, f"holds {_describe(root)}; a split .pt must hold a tensor or a dict of tensors"
        )
    if not root:
        raise InputError(path, "holds an empty dict: no tensors")
    for key, value in root.items():
        if not isinstance(key, str) or not isinstance(value, TensorRef):
            raise InputError(
                path,
                f"holds {_describe(value)} under key {short(key)}, not a tensor; a split .pt "
                "must hold only tensors",
            )
    return {key: _tensor_member(path, archive, key, ref) for key, ref in root.items()}


def _describe(value: object) -> str:
    from diag.loaders.safe_pickle import Opaque

    if isinstance(value, Opaque):
        return f"an object of class {value.global_name}"
    return f"a {type(value).__name__}"


def _tensor_member(path: Path, archive: Any, key: str, ref: Any) -> Member:
    shape = tuple(ref.size)
    if ref.dtype in _TORCH_TO_NUMPY:
        dtype = np.dtype(ref.dtype)
    elif ref.dtype.startswith(("bfloat16", "float8")):
        dtype = np.dtype("float32")  # numpy has no such dtype: widened on read
    else:
        raise InputError(path, f"tensor {key!r} has dtype {ref.dtype}, which diag cannot read")

    def load() -> np.ndarray:
        span = archive.span(ref, key) if ref.dtype in _TORCH_TO_NUMPY else None
        if span is not None:  # contiguous: map the bytes where they lie in the file
            return np.memmap(path, dtype=dtype, mode="r", offset=span.offset, shape=shape)
        tensor = archive.read(ref, key)
        return tensor.numpy() if ref.dtype in _TORCH_TO_NUMPY else tensor.float().numpy()

    return Member(key, shape, dtype, load)
