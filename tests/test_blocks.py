"""Statistics read in row blocks must equal statistics of the whole tensor.

Real checkpoints of the demo are small enough to fit one block, so these tests shrink the
block size until every tensor spans many blocks, and compare against whole-tensor reads.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diag.api import CheckOptions, check
from diag.loaders import blocks
from diag.loaders.checkpoint import open_checkpoint
from diag.run import Run
from diag.stats import TensorStats, compute_stats, compute_update


def _same_stats(a: TensorStats, b: TensorStats) -> None:
    for f in dataclasses.fields(TensorStats):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "kernels":
            assert (x is None) == (y is None), a.name
            if x is not None:
                np.testing.assert_array_equal(x, y)
        elif isinstance(x, float) and math.isfinite(x):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-9), (a.name, f.name)
        else:
            assert x == y, (a.name, f.name)


def _prepared(final: Path, init: Path | None) -> Run:
    run = Run(checkpoint=open_checkpoint(final), init=open_checkpoint(init) if init else None)
    run.prepare()
    return run


@pytest.mark.parametrize("variant", ["healthy", "planted"])
def test_tiny_blocks_give_whole_tensor_statistics_on_real_runs(runs, variant, monkeypatch):
    paths = runs[variant]
    whole = _prepared(paths["final"], paths["init"])
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64)  # a 3x3 filter row per block, or less
    blocked = _prepared(paths["final"], paths["init"])
    assert whole.checkpoint is not None and blocked.checkpoint is not None
    assert set(whole.checkpoint.stats) == set(blocked.checkpoint.stats)
    for name, stats in whole.checkpoint.stats.items():
        _same_stats(stats, blocked.checkpoint.stats[name])
    assert whole.init is not None and blocked.init is not None
    for name, stats in whole.init.stats.items():
        _same_stats(stats, blocked.init.stats[name])
    assert whole.updates is not None and blocked.updates is not None
    for name, update in whole.updates.items():
        other = blocked.updates[name]
        assert other.identical == update.identical, name
        assert other.delta_norm == pytest.approx(update.delta_norm, rel=1e-5), name
        assert other.max_abs_delta == pytest.approx(update.max_abs_delta, rel=1e-6), name


def test_tiny_blocks_find_the_same_planted_faults(runs, monkeypatch):
    paths = runs["planted"]
    options = CheckOptions(checkpoint=str(paths["final"]), init=str(paths["init"]), quiet=True)
    expected = check(options)[0].findings
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64)
    got = check(options)[0].findings
    assert [(f.rule, f.location.object) for f in got] == [
        (f.rule, f.location.object) for f in expected
    ]
    assert {f.rule for f in got} >= {"stuck-parameter", "constant-parameter"}


def _planted_matrix() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 24, generator=g)
    w[31] = w[2]  # a duplicate far from its original: different blocks
    w[17] = w[2] * (1 + 1e-4)
    w[9] = 0.0  # a dead unit
    w[25] = w[6] + 0.5 * torch.randn(24, generator=g)  # close-ish, not a duplicate
    return w


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_duplicates_across_blocks_are_confirmed_on_the_file(
    tmp_path, fmt, monkeypatch, preadv_offsets
):
    state = {"fc.weight": _planted_matrix(), "fc.bias": torch.zeros(40)}
    path = tmp_path / ("m.pt" if fmt == "torch" else "m.safetensors")
    torch.save(state, path) if fmt == "torch" else save_file(state, str(path))
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 3 * 24 * 4)  # three rows per block
    reads = preadv_offsets
    stats = _prepared(path, None).checkpoint.stats["fc.weight"]  # type: ignore[union-attr]
    assert len(reads) >= 40 // 3  # really read block by block (plus the confirmations)
    assert stats.duplicate_groups == ((2, 17, 31),)
    assert stats.n_duplicate_units == 2
    assert stats.zero_units == (9,)
    _same_stats(compute_stats(stats.info, state["fc.weight"]), stats)


def test_non_finite_values_in_a_late_block_drop_unit_statistics(tmp_path, monkeypatch):
    w = _planted_matrix()
    w[38, 3] = float("nan")
    w[39, 0] = float("inf")
    path = tmp_path / "m.pt"
    torch.save({"fc.weight": w}, path)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2 * 24 * 4)
    stats = _prepared(path, None).checkpoint.stats["fc.weight"]  # type: ignore[union-attr]
    assert (stats.nan, stats.inf) == (1, 1)
    assert stats.duplicate_groups == () and stats.zero_units == ()
    finite = w[torch.isfinite(w)]
    assert stats.mean == pytest.approx(float(finite.mean()), rel=1e-5)
    assert stats.max == float(finite.max())


def test_a_strided_tensor_is_read_whole_and_right(tmp_path, monkeypatch):
    base = _planted_matrix()
    path = tmp_path / "m.pt"
    torch.save({"fc.weight": base.t()}, path)  # a transposed view: not one row-major run
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64)
    stats = _prepared(path, None).checkpoint.stats["fc.weight"]  # type: ignore[union-attr]
    _same_stats(compute_stats(stats.info, base.t().contiguous()), stats)


def test_updates_in_blocks_match_whole_tensors(tmp_path, monkeypatch):
    init = _planted_matrix()
    final = init.clone()
    final[35] += 0.25  # the only movement, in the last block
    torch.save({"w": init, "frozen": init.clone()}, tmp_path / "init.pt")
    torch.save({"w": final, "frozen": init.clone()}, tmp_path / "final.pt")
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 4 * 24 * 4)
    run = _prepared(tmp_path / "final.pt", tmp_path / "init.pt")
    assert run.updates is not None
    expected = compute_update("w", init, final)
    assert expected is not None and not run.updates["w"].identical
    assert run.updates["w"].delta_norm == pytest.approx(expected.delta_norm, rel=1e-6)
    assert run.updates["w"].max_abs_delta == pytest.approx(0.25, rel=1e-6)
    assert run.updates["frozen"].identical
