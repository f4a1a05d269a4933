"""One fused statistics pass per tensor: everything the params rules and reports need.

Reading a big checkpoint is the slow part, so every number a rule may want is computed in
a single visit to each tensor (a few vectorised torch passes), then the tensor is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
# Fixed signal-processing bases (STFT, DFT/DCT, mel and constant-Q filterbanks, windows)
# are computed, not learned: their sine rows at 0 and Nyquist are zero by construction,
# so rules about what training did to units do not apply to them.
_FIXED_TRANSFORM = re.compile(
    r"(stft|[^a-z]fft|\bdft|\bdct|basis|filterbank|filter_bank|mel_?fb|melscale|window_buffer|cqt|cq_t)",
    re.I,
)
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
    # Per group: the largest distance of a member from the group's first unit, relative
    # to their norms (0 for exact copies). Unconfirmed groups carry NaN.
    duplicate_spread: tuple[float, ...] = ()
    duplicate_sizes: tuple[int, ...] = ()
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
    if _FIXED_TRANSFORM.search(info.name):
        return "transform"
    if info.op in ("conv", "linear", "embedding", "norm"):
        return info.op
    if info.op is None and sum(d > 1 for d in info.shape) <= 1:
        # A graph's per-channel constant stored broadcastable, (C, 1, 1): a vector whose
        # "units" would be single numbers, and equal numbers are not copied units.
        return "vector"
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


class StatsAccumulator:
    """The statistics of one tensor, fed block by block (runs of leading-axis rows).

    Every reduction is a sum, an extreme or a per-row value, so blocks can be folded in as
    they are read. Unit statistics keep two small numbers per output unit (its norm and a
    16-d random projection); duplicate candidates are confirmed at the end on the units
    themselves, fetched again through `units`.
    """

    def __init__(self, info: TensorInfo) -> None:
        self.info = info
        self.kind = classify(info)
        self.numel = info.numel
        self.nan = self.inf = self.zeros = self.count = 0
        self.total = self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.float_path: bool | None = None  # decided by the first block's dtype
        self.scalar: float | None = None
        self.holes = False
        ndim = len(info.shape)
        self.unit_axis = info.units_axis if info.units_axis < ndim else 0
        self.wants_units = self.kind in ("conv", "linear", "embedding") and ndim >= 2
        self.keep_kernels = (
            self.kind == "conv"
            and ndim == 4
            and min(info.shape[2:]) >= 3
            and self.numel <= MAX_KEPT_KERNEL_NUMEL
        )
        self._row_norms: list[torch.Tensor] = []
        self._proj: list[torch.Tensor] = []
        self._kernels: list[np.ndarray] = []

    def add(self, block: torch.Tensor) -> None:
        """Fold in the next block: rows of the leading axis, or the whole tensor."""
        import torch

        if block.numel() == 0:
            return
        if self.float_path is None:
            self.float_path = block.is_floating_point() or block.dtype == torch.bool
        if not self.float_path:
            x = block.reshape(-1)
            if self.numel == 1:
                self.scalar = float(x[0])
            mn, mx = torch.aminmax(x)
            self.min, self.max = min(self.min, float(mn)), max(self.max, float(mx))
            self.total += float(x.double().sum())
            self.count += x.numel()
            return
        x = block if block.dtype in (torch.float32, torch.float64) else block.float()
        flat = x.reshape(-1)
        part = float(flat.sum())
        if not math.isfinite(part):
            finite = torch.isfinite(flat)
            nan = int(torch.isnan(flat).sum())
            self.nan += nan
            self.inf += int(flat.numel() - nan - int(finite.sum()))
            flat = flat[finite]
            self.holes = True  # unit statistics on a tensor with holes would mislead
            part = float(flat.sum())
        if flat.numel() == 0:
            return
        self.count += flat.numel()
        self.total += part
        units = None
        if self.wants_units and not self.holes:
            # Only the whole tensor can be laid out with units on another axis (ONNX).
            whole = tuple(block.shape) == self.info.shape
            axis = self.unit_axis if whole else 0
            units = x.movedim(axis, 0).reshape(x.shape[axis], -1)
            norms = torch.linalg.vector_norm(units, dim=1)
            self._row_norms.append(norms.double())
            self._proj.append(units @ _projection(units.shape[1], units.dtype))
            self.sumsq += float(norms.double().square().sum())
        else:
            self.sumsq += float(torch.dot(flat, flat))
        mn, mx = torch.aminmax(flat)
        self.min, self.max = min(self.min, float(mn)), max(self.max, float(mx))
        self.zeros += flat.numel() - int(torch.count_nonzero(flat))
        if self.keep_kernels:
            self._kernels.append(x.detach().to(torch.float32).numpy().copy())

    def finish(self, units: Callable[[list[int]], torch.Tensor] | None = None) -> TensorStats:
        """The TensorStats; `units(index)` fetches unit rows to confirm duplicates."""
        info, kind, numel = self.info, self.kind, self.numel
        if numel == 0 or self.float_path is None:
            return TensorStats(info, kind, numel)
        if not self.float_path:
            mean = self.total / self.count if self.count else 0.0
            return TensorStats(
                info, kind, numel, mean=mean, min=self.min, max=self.max, scalar=self.scalar
            )
        n = self.count
        if n == 0:
            return TensorStats(info, kind, numel, nan=self.nan, inf=self.inf)
        mean = self.total / n
        var = max(self.sumsq / n - mean * mean, 0.0)
        stats: dict = dict(
            nan=self.nan, inf=self.inf, mean=mean, std=math.sqrt(var), min=self.min,
            max=self.max, zeros=self.zeros, norm=math.sqrt(self.sumsq),
        )  # fmt: skip
        if self.wants_units and not self.holes and self._row_norms:
            stats.update(self._unit_stats(units))
            if self.keep_kernels:
                stats["kernels"] = np.concatenate(self._kernels)
        return TensorStats(info, kind, numel, **stats)

    def _unit_stats(self, fetch: Callable[[list[int]], torch.Tensor] | None) -> dict:
        import torch

        row_norm = torch.cat(self._row_norms)
        n_units = row_norm.numel()
        fan_in = self.numel // n_units if n_units else 0
        out: dict = {"n_units": n_units, "fan_in": fan_in}
        if n_units < 2 or fan_in == 0:
            return out
        top = float(row_norm.max())
        if top == 0.0:
            return out  # an all-zero tensor: constant-parameter's business, not per-unit
        zero = (row_norm <= top * 1e-7).nonzero().flatten()
        out["n_zero_units"] = int(zero.numel())
        out["zero_units"] = tuple(int(i) for i in zero[:MAX_LISTED])
        found = _duplicate_units(torch.cat(self._proj), row_norm, top, fetch)
        out["duplicate_groups"] = tuple(g[:MAX_LISTED] for g, _ in found)
        out["n_duplicate_units"] = sum(len(g) - 1 for g, _ in found)
        out["duplicate_spread"] = tuple(spread for _, spread in found)
        out["duplicate_sizes"] = tuple(len(g) for g, _ in found)
        return out


# Candidate units confirmed per fetch: bounds the memory a huge duplicate group can take.
CONFIRM_CHUNK = 256


def _duplicate_units(
    proj: torch.Tensor,
    row_norm: torch.Tensor,
    top: float,
    fetch: Callable[[list[int]], torch.Tensor] | None,
) -> list[tuple[tuple[int, ...], float]]:
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
    cell = 4 * DUPLICATE_RTOL * typical
    keys = torch.round(proj[live].double() / cell).to(torch.int64).numpy()
    buckets: dict[bytes, list[int]] = {}
    for i, row in zip(live.tolist(), keys, strict=True):
        buckets.setdefault(row.tobytes(), []).append(i)
    groups: list[tuple[tuple[int, ...], float]] = []
    for members in buckets.values():
        if len(members) < 2:
            continue
        if fetch is None:
            groups.append((tuple(members), math.nan))  # unconfirmable: trust the projection
            continue
        ref = fetch(members[:1])[0].double()
        same = [members[0]]
        spread = 0.0
        for k in range(1, len(members), CONFIRM_CHUNK):
            chunk = members[k : k + CONFIRM_CHUNK]
            dist = torch.linalg.vector_norm(fetch(chunk).double() - ref, dim=1)
            relative = dist / torch.maximum(row_norm[chunk], row_norm[members[0]])
            close = (relative <= DUPLICATE_RTOL).tolist()
            same += [m for m, ok in zip(chunk, close, strict=True) if ok]
            if any(close):
                spread = max(spread, float(relative[torch.tensor(close)].max()))
        if len(same) >= 2:
            groups.append((tuple(same), spread))
    return sorted(groups, key=lambda g: len(g[0]), reverse=True)


@lru_cache(maxsize=64)
def _projection_np(fan_in: int) -> np.ndarray:
    # Seeded by size so a re-run groups the same units the same way.
    return np.random.default_rng(fan_in).standard_normal((fan_in, PROJECTIONS))


@lru_cache(maxsize=64)
def _projection(fan_in: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.from_numpy(_projection_np(fan_in)).to(dtype)


class UpdateAccumulator:
    """How a tensor moved, fed with matching blocks of the initial and final tensor."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.init_sq = self.final_sq = self.delta_sq = 0.0
        self.max_abs_delta = 0.0
        self.identical = True

    def add(self, init: torch.Tensor, final: torch.Tensor) -> None:
        import torch

        a = init.reshape(-1).to(torch.float32)
        b = final.reshape(-1).to(torch.float32)
        if a.numel() == 0:
            return
        delta = b - a
        self.init_sq += float(torch.dot(a, a))
        self.final_sq += float(torch.dot(b, b))
        delta_sq = float(torch.dot(delta, delta))
        self.delta_sq += delta_sq
        biggest = float(delta.abs_().max())
        if not math.isnan(self.max_abs_delta) and not biggest <= self.max_abs_delta:
            self.max_abs_delta = biggest  # NaN, once seen, stays
        # Only a zero delta can be equality (NaN deltas are not); confirm it exactly.
        self.identical = self.identical and delta_sq == 0.0 and bool(torch.equal(init, final))

    def finish(self) -> UpdateStats:
        delta_norm = math.sqrt(self.delta_sq)
        return UpdateStats(
            name=self.name,
            init_norm=math.sqrt(self.init_sq),
            final_norm=math.sqrt(self.final_sq),
            delta_norm=delta_norm,
            max_abs_delta=self.max_abs_delta,
            identical=self.identical and delta_norm == 0.0,
        )


def can_compare(init: TensorInfo, final: TensorInfo) -> bool:
    return init.shape == final.shape and init.is_float and final.is_float


def compute_stats(info: TensorInfo, tensor: torch.Tensor) -> TensorStats:
    """Statistics of a tensor already in memory, in its stored layout."""
    acc = StatsAccumulator(info)
    acc.add(tensor)
    axis = acc.unit_axis

    def units(index: list[int]) -> torch.Tensor:
        import torch

        rows = tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)
        return rows[torch.tensor(index)].to(torch.float64)

    return acc.finish(units)


def compute_update(name: str, init: torch.Tensor, final: torch.Tensor) -> UpdateStats | None:
    """Movement of one tensor; None when shapes differ or the tensor is not floating point."""
    if init.shape != final.shape or not final.is_floating_point() or not init.is_floating_point():
        return None
    acc = UpdateAccumulator(name)
    acc.add(init, final)
    return acc.finish()
