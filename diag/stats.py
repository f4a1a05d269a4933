"""One fused statistics pass per tensor: everything the params rules and reports need.

Reading a big checkpoint is the slow part, so every number a rule may want is computed in
a single visit to each tensor (a few vectorised torch passes), then the tensor is dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from diag.loaders.table import TensorInfo

if TYPE_CHECKING:
    import torch

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_EMBED = re.compile(r"(embed|wte|wpe|tok_emb|pos_emb|lookup|\bemb\b|shared\.weight$)", re.I)
_NORM = re.compile(r"(norm|bn|ln_|\.ln\d*\.|layernorm|batchnorm|groupnorm|rmsnorm)", re.I)
# First-layer kernels are small; keeping them (not deeper ones) bounds memory.
MAX_KEPT_KERNEL_NUMEL = 1 << 18
PROJECTIONS = 16
# Units closer than this fraction of their own norm are "identical". Random or trained
# units of one layer are ~sqrt(2) norms apart; copies that drifted only through float
# rounding stay well inside 1%.
DUPLICATE_RTOL = 1e-2
MAX_LISTED = 64
SMALL_UNIT = 0.05


@dataclass(frozen=True)
class TensorStats:
    info: TensorInfo
    kind: str  # conv, linear, embedding, norm, bias, vector, bn_buffer, buffer
    numel: int
    nan: int = 0
    inf: int = 0
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    zeros: int = 0
    norm: float = 0.0
    n_units: int = 0
    fan_in: int = 0
    zero_units: tuple[int, ...] = ()
    n_zero_units: int = 0
    duplicate_groups: tuple[tuple[int, ...], ...] = ()
    n_duplicate_units: int = 0
    scalar: float | None = None
    kernels: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def is_weight(self) -> bool:
        """A matrix or kernel of a Linear/Conv-like layer (not embeddings, norms, biases)."""
        return self.kind in ("conv", "linear")

    @property
    def all_equal(self) -> bool:
        return self.numel > 1 and self.nan == 0 and self.inf == 0 and self.min == self.max

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def expected_std_range(self) -> tuple[float, float] | None:
        """(PyTorch default, He) std for this layer's fan-in, or None if not a weight."""
        if not self.is_weight or self.fan_in <= 0:
            return None
        return 1.0 / math.sqrt(3.0 * self.fan_in), math.sqrt(2.0 / self.fan_in)


@dataclass(frozen=True)
class UpdateStats:
    """How a tensor moved between the initial and the final checkpoint."""

    name: str
    init_norm: float
    final_norm: float
    delta_norm: float
    max_abs_delta: float
    identical: bool

    @property
    def ratio(self) -> float:
        if self.init_norm > 0:
            return self.delta_norm / self.init_norm
        return math.inf if self.delta_norm > 0 else 0.0


def classify(info: TensorInfo) -> str:
    base = info.name.rsplit(".", 1)[-1]
    if base in BN_BUFFERS:
        return "bn_buffer"
    if not info.is_float:
        return "buffer"
    if info.op in ("conv", "linear", "embedding", "norm"):
        return info.op
    ndim = len(info.shape)
    if ndim >= 3:
        return "embedding" if _EMBED.search(info.name) else "conv"
    if ndim == 2:
        return "embedding" if _EMBED.search(info.name) else "linear"
    if ndim == 1 and _NORM.search(info.name):
        return "norm"
    if base == "bias" or base.endswith("_bias"):
        return "bias"
    return "vector"


def compute_stats(info: TensorInfo, tensor: torch.Tensor) -> TensorStats:
    import torch

    kind = classify(info)
    numel = tensor.numel()
    if numel == 0:
        return TensorStats(info, kind, 0)
    if not (tensor.is_floating_point() or tensor.dtype == torch.bool):
        x = tensor.reshape(-1)
        scalar = float(x[0]) if numel == 1 else None
        mn, mx = torch.aminmax(x)
        mean = float(x.double().mean())
        return TensorStats(
            info, kind, numel, mean=mean, min=float(mn), max=float(mx), scalar=scalar
        )
    x = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    flat = x.reshape(-1)
    nan = inf = 0
    total = float(flat.sum())
    if not math.isfinite(total):
        finite = torch.isfinite(flat)
        nan = int(torch.isnan(flat).sum())
        inf = int(numel - nan - int(finite.sum()))
        flat = flat[finite]
        x = None  # unit statistics on a tensor with holes would mislead
        total = float(flat.sum())
    n = flat.numel()
    if n == 0:
        return TensorStats(info, kind, numel, nan=nan, inf=inf)
    sumsq = float(torch.dot(flat, flat))
    mean = total / n
    var = max(sumsq / n - mean * mean, 0.0)
    mn, mx = torch.aminmax(flat)
    zeros = n - int(torch.count_nonzero(flat))
    stats = dict(
        nan=nan, inf=inf, mean=mean, std=math.sqrt(var), min=float(mn), max=float(mx),
        zeros=zeros, norm=math.sqrt(sumsq),
    )  # fmt: skip
    if kind in ("conv", "linear", "embedding") and x is not None and x.dim() >= 2:
        stats.update(_unit_stats(info, x))
        spatial = kind == "conv" and x.dim() == 4 and min(x.shape[2:]) >= 3
        if spatial and x.numel() <= MAX_KEPT_KERNEL_NUMEL:
            stats["kernels"] = x.detach().to(torch.float32).numpy().copy()
    return TensorStats(info, kind, numel, **stats)


def _unit_stats(info: TensorInfo, x: torch.Tensor) -> dict:
    import torch

    axis = info.units_axis if info.units_axis < x.dim() else 0
    units = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    n_units, fan_in = units.shape
    out: dict = {"n_units": n_units, "fan_in": fan_in}
    if n_units < 2 or fan_in == 0:
        return out
    row_norm = torch.linalg.vector_norm(units, dim=1)
    top = float(row_norm.max())
    if top == 0.0:
        return out  # an all-zero tensor: constant-parameter's business, not per-unit
    zero = (row_norm <= top * 1e-7).nonzero().flatten()
    out["n_zero_units"] = int(zero.numel())
    out["zero_units"] = tuple(int(i) for i in zero[:MAX_LISTED])
    groups = _duplicate_units(units, row_norm, top)
    out["duplicate_groups"] = tuple(g[:MAX_LISTED] for g in groups)
    out["n_duplicate_units"] = sum(len(g) - 1 for g in groups)
    return out


def _duplicate_units(units: torch.Tensor, row_norm: torch.Tensor, top: float) -> list[tuple]:
    """Groups of units with (nearly) identical incoming weights, via random projections.

    Identical rows land in the same grid cell of a 16-d random projection; the cell size is
    a small fraction of the typical row norm, so distinct rows almost never share a cell.
    Candidates are then confirmed on the full rows. Linear in the tensor size.
    """
    import torch

    # Units that shrank to a few percent of the typical norm are dying (weight decay on a
    # unit without gradient), and such remnants can coincide: that is dead-units' business.
    typical = float(row_norm[row_norm > top * 1e-7].median())
    live = (row_norm > max(top * 1e-7, SMALL_UNIT * typical)).nonzero().flatten()
    if live.numel() < 2:
        return []
    # Indexing copies the whole matrix; skip it in the usual case where every unit is live.
    sub = units if live.numel() == units.shape[0] else units[live]
    proj = sub @ _projection(sub.shape[1], sub.dtype)
    cell = 4 * DUPLICATE_RTOL * typical
    keys = torch.round(proj / cell).to(torch.int64).numpy()
    buckets: dict[bytes, list[int]] = {}
    for i, row in enumerate(keys):
        buckets.setdefault(row.tobytes(), []).append(i)
    groups = []
    for members in buckets.values():
        if len(members) < 2:
            continue
        idx = torch.tensor(members)
        dist = torch.linalg.vector_norm(sub[idx] - sub[idx[0]], dim=1)
        own = torch.maximum(row_norm[live][idx], row_norm[live][idx[0]])
        same = idx[dist <= DUPLICATE_RTOL * own]
        if same.numel() >= 2:
            groups.append(tuple(int(live[i]) for i in same))
    return sorted(groups, key=len, reverse=True)


@lru_cache(maxsize=64)
def _projection_np(fan_in: int) -> np.ndarray:
    # Seeded by size so a re-run groups the same units the same way.
    return np.random.default_rng(fan_in).standard_normal((fan_in, PROJECTIONS))


def _projection(fan_in: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.from_numpy(_projection_np(fan_in)).to(dtype)


def compute_update(name: str, init: torch.Tensor, final: torch.Tensor) -> UpdateStats | None:
    """Movement of one tensor; None when shapes differ or the tensor is not floating point."""
    import torch

    if init.shape != final.shape or not final.is_floating_point() or not init.is_floating_point():
        return None
    a = init.reshape(-1).to(torch.float32)
    b = final.reshape(-1).to(torch.float32)
    delta = b - a
    delta_norm = float(torch.linalg.vector_norm(delta))
    return UpdateStats(
        name=name,
        init_norm=float(torch.linalg.vector_norm(a)),
        final_norm=float(torch.linalg.vector_norm(b)),
        delta_norm=delta_norm,
        max_abs_delta=float(delta.abs_().max()) if delta.numel() else 0.0,
        # Only a zero delta can be equality (NaN deltas are not); confirm it exactly.
        identical=delta_norm == 0.0 and bool(torch.equal(init, final)),
    )
