"""Is a bank of small 2-D kernels spatially smooth, or indistinguishable from i.i.d. noise?

Lag-1 spatial autocorrelation of each kernel (horizontal and vertical neighbours, mean
removed) is about 0.5 for the edge and blob detectors a trained first layer learns, and
about 0 (slightly negative, from removing the mean) for random initialisation. Whether a
layer's median is "about 0" is decided against a permutation null: the same kernels with
their pixels shuffled, which keeps every value and destroys only the spatial structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KernelNoise:
    n_kernels: int
    median_autocorr: float
    null_median: float
    null_q99: float
    n_noisy: int  # kernels no smoother than the 95th percentile of shuffled kernels
    p_value: float  # chance a shuffled layer is at least as smooth


def lag1_autocorr(kernels: np.ndarray) -> np.ndarray:
    """Per-kernel lag-1 autocorrelation of an (N, kh, kw) array; NaN for flat kernels."""
    k = kernels - kernels.mean(axis=(1, 2), keepdims=True)
    kh, kw = k.shape[1:]
    num = (k[:, :, :-1] * k[:, :, 1:]).sum(axis=(1, 2)) + (k[:, :-1, :] * k[:, 1:, :]).sum(
        axis=(1, 2)
    )
    pairs = kh * (kw - 1) + (kh - 1) * kw
    var = (k * k).sum(axis=(1, 2)) / (kh * kw)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / pairs) / var


def kernel_noise(weight: np.ndarray, rounds: int = 200, seed: int = 0) -> KernelNoise | None:
    """Test a conv weight (out, in, kh, kw) against shuffled copies of itself."""
    out, cin, kh, kw = weight.shape
    kernels = weight.reshape(out * cin, kh, kw).astype(np.float64)
    r = lag1_autocorr(kernels)
    keep = np.isfinite(r)
    if keep.sum() < 2:
        return None
    kernels, r = kernels[keep], r[keep]
    rng = np.random.default_rng(seed)
    flat = kernels.reshape(len(kernels), -1)
    null_medians = np.empty(rounds)
    null_all = []
    for i in range(rounds):
        order = np.argsort(rng.random(flat.shape), axis=1)
        shuffled = np.take_along_axis(flat, order, axis=1).reshape(kernels.shape)
        rn = lag1_autocorr(shuffled)
        null_medians[i] = np.median(rn)
        null_all.append(rn)
    per_kernel_q95 = float(np.quantile(np.concatenate(null_all), 0.95))
    observed = float(np.median(r))
    return KernelNoise(
        n_kernels=len(r),
        median_autocorr=observed,
        null_median=float(np.median(null_medians)),
        null_q99=float(np.quantile(null_medians, 0.99)),
        n_noisy=int((r <= per_kernel_q95).sum()),
        p_value=float((null_medians >= observed).mean()),
    )
