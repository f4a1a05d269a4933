"""Faults planted into copies of real models: NaN, constant, duplicated units, stuck layers.

ONNX models are edited in place in their graph (initializers and `Constant` nodes, in
subgraphs too) with the `onnx` package and saved as new .onnx files, so the planted file
keeps the real graph around the fault. The other formats are read tensor by tensor through
diag's own loader (no pickle is ever run) and written back as safetensors or with
`torch.save`, in the model's own layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Tensors a real optimizer would not hold.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
DUPLICATES = 4  # unit 0 copied over units 1..3


@dataclass(frozen=True)
class Targets:
    """One tensor per fault, all different, so each finding points at its own fault."""

    nan: str
    constant: str
    duplicate: str
    stuck: str


# ------------------------------------------------------------------ choosing targets


def choose_targets(arrays: dict[str, np.ndarray], *, conv_only_duplicate: bool) -> Targets:
    """Weight matrices and kernels big enough for every rule to judge.

    In an ONNX graph only a Conv kernel is sure to keep output units on axis 0 (a MatMul
    weight is stored transposed, a Gather table holds tokens), hence `conv_only_duplicate`.
    Embedding tables are not units either.
    """
    candidates = sorted(
        (name for name, a in arrays.items() if _is_weight(name, a)),
        key=lambda name: (-arrays[name].size, name),
    )
    if len(candidates) < 3:
        raise ValueError(f"only {len(candidates)} weight tensors to plant into")
    nan, constant = candidates[0], candidates[1]
    duplicable = [
        n
        for n in candidates[2:]
        if (arrays[n].ndim >= 3 or not conv_only_duplicate) and "embed" not in n.lower()
    ] or candidates[2:]
    duplicate = duplicable[len(duplicable) // 2]
    stuck = candidates[-1] if candidates[-1] not in (nan, constant, duplicate) else candidates[2]
    return Targets(nan, constant, duplicate, stuck)


def _is_weight(name: str, a: np.ndarray) -> bool:
    if a.dtype.kind != "f" or a.ndim < 2 or name.endswith(BUFFER_SUFFIXES):
        return False
    units, fan_in = a.shape[0], a.size // max(a.shape[0], 1)
    if units < DUPLICATES + 2 or fan_in < 8 or not np.isfinite(a).all():
        return False
    rows = a.reshape(units, -1).astype(np.float64)
    # The unit copied must carry weights, and the layer must not already repeat units.
    return bool(rows[0].std() > 0 and np.unique(rows, axis=0).shape[0] == units)


# ------------------------------------------------------------------ the faults


def with_nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flat[out.size // 2] = np.nan
    return out


def made_constant(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, 0.05)


def with_duplicate_units(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[1:DUPLICATES] = out[0]
    return out


def moved(a: np.ndarray, seed: int) -> np.ndarray:
    """An earlier state of a trained tensor: the same tensor minus a small random step."""
    if a.dtype.kind != "f" or a.size == 0:
        return a
    finite = np.isfinite(a)
    scale = float(np.abs(a[finite]).mean()) if finite.any() else 0.0
    step = np.random.default_rng(seed).standard_normal(a.shape) * 0.02 * (scale or 1e-3)
    return np.where(finite, a - step, a).astype(a.dtype)


def planted(targets: Targets) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        targets.nan: with_nan,
        targets.constant: made_constant,
        targets.duplicate: with_duplicate_units,
    }


# ------------------------------------------------------------------ ONNX


def onnx_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every float tensor stored in the graph (initializers, Constant nodes, subgraphs)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {name: numpy_helper.to_array(t) for name, t in _onnx_tensors(model)}


def top_level_onnx_arrays(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {name: numpy_helper.to_array(t) for name, t in _graph_tensors(model.graph, False)}


def edit_onnx(source: Path, target: Path, edit: Callable[[str, np.ndarray], np.ndarray]) -> None:
    """Save a copy of `source` with every stored tensor replaced by `edit(name, array)`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for name, tensor in _onnx_tensors(model):
        before = numpy_helper.to_array(tensor)
        after = edit(name, before)
        if after is not before:
            tensor.CopyFrom(numpy_helper.from_array(after.astype(before.dtype), tensor.name))
    onnx.save(model, str(target))


def _onnx_tensors(model) -> Iterator[tuple[str, object]]:
    yield from _graph_tensors(model.graph, True)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, True)


def _graph_tensors(graph, deep: bool) -> Iterator[tuple[str, object]]:
    for tensor in graph.initializer:
        yield tensor.name, tensor
    for node in graph.node:
        yield from _node_tensors(node, deep)


def _node_tensors(node, deep: bool) -> Iterator[tuple[str, object]]:
    import onnx

    for attr in node.attribute:
        if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
            yield node.output[0], attr.t
        elif deep and attr.type == onnx.AttributeProto.GRAPH:
            yield from _graph_tensors(attr.g, deep)
        elif deep and attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                yield from _graph_tensors(sub, deep)


# ------------------------------------------------------------------ torch and safetensors


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a torch or safetensors checkpoint, by diag's names, as numpy."""
    from diag.loaders.checkpoint import open_checkpoint

    table = open_checkpoint(path).table
    try:
        return {i.name: table.read(i.name).numpy() for i in table.infos()}
    finally:
        table.close()


def write_like(source_format: str, tensors: dict[str, np.ndarray], target: Path) -> None:
    """Write tensors in the model's own format (legacy pickles stay legacy)."""
    import torch

    state = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in tensors.items()}
    if source_format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(target))
    else:
        legacy = source_format == "torch-legacy"
        torch.save(state, target, _use_new_zipfile_serialization=not legacy)


def write_with_optimizer(
    tensors: dict[str, np.ndarray], target: Path, frozen: str, *, zero_second_moment: bool
) -> None:
    """A training checkpoint whose Adam state says every parameter but `frozen` was trained.

    `frozen` gets no state at all (never a gradient), or with `zero_second_moment` a state
    whose exp_avg_sq is all zero (only zero gradients).
    """
    import torch

    names = [
        n for n, a in tensors.items() if a.dtype.kind == "f" and not n.endswith(BUFFER_SUFFIXES)
    ]
    rng = np.random.default_rng(0)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(names):
        shape = tensors[name].shape
        if name == frozen and not zero_second_moment:
            continue
        second = np.zeros(shape) if name == frozen else rng.random(shape) * 1e-6 + 1e-9
        state[index] = {
            "step": torch.tensor(1000.0),
            "exp_avg": torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 1e-4),
            "exp_avg_sq": torch.from_numpy(second.astype(np.float32)),
        }
    group = {
        "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
        "params": list(range(len(names))), "param_names": names,
    }  # fmt: skip
    model = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in tensors.items()}
    blob = {"state_dict": model, "optimizer": {"state": state, "param_groups": [group]}}
    torch.save({**blob, "global_step": 1000}, target)
