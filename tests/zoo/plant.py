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
    """One tensor per fault, each a different one, so each finding points at its own fault.

    A fault is None when the model has no tensor it makes sense in (a single-unit layer
    cannot have duplicated units).
    """

    nan: str | None
    constant: str | None
    duplicate: str | None
    duplicate_axis: int
    stuck: str | None


# ------------------------------------------------------------------ choosing targets


def choose_targets(arrays: dict[str, np.ndarray], axes: dict[str, int] | None) -> Targets:
    """Weight matrices and kernels big enough for every rule to judge.

    `axes` says which axis of each tensor indexes output units. None means PyTorch
    layouts (axis 0 of every weight). For ONNX it comes from the operator that consumes the
    tensor (`onnx_unit_axes`): a MatMul weight is stored transposed, a TensorFlow export
    feeds kernels through a Transpose, and a tensor no known operator consumes has no units.
    """
    order = list(arrays)
    weights = sorted(
        (n for n, a in arrays.items() if _is_weight(n, a)), key=lambda n: (-arrays[n].size, n)
    )

    def axis(name: str) -> int | None:
        return 0 if axes is None else axes.get(name)

    with_units = [n for n in weights if axis(n) is not None and arrays[n].shape[axis(n)] >= 2]
    nan = weights[0] if weights else None
    constant = next((n for n in with_units if n != nan), None)
    duplicable = [
        n for n in with_units if n not in (nan, constant) and _duplicable(arrays[n], axis(n))
    ]
    duplicate = _pick_hidden_layer(duplicable, arrays, order)
    used = {nan, constant, duplicate}
    # The stuck layer must differ from the planted ones, or the planted fault would move it;
    # a model with a single weight matrix lends a bias or a scale instead.
    others = sorted(n for n, a in arrays.items() if a.dtype.kind == "f" and a.size >= 8)
    spare = [n for n in [*reversed(with_units), *reversed(weights), *others] if n not in used]
    stuck = spare[0] if spare else None
    dup_axis = axis(duplicate) if duplicate is not None else None
    return Targets(nan, constant, duplicate, 0 if dup_axis is None else dup_axis, stuck)


def _is_weight(name: str, a: np.ndarray) -> bool:
    return (
        a.dtype.kind == "f"
        and a.ndim >= 2
        and a.size >= 8
        and not name.endswith(BUFFER_SUFFIXES)
        and bool(np.isfinite(a).all())
    )


def _duplicable(a: np.ndarray, axis: int | None) -> bool:
    if axis is None:
        return False
    rows = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64)
    units, fan_in = rows.shape
    if units < DUPLICATES + 2 or fan_in < 8:
        return False
    # The unit copied must carry weights, and the layer must not already repeat units.
    return bool(rows[0].std() > 0 and np.unique(rows, axis=0).shape[0] == units)


def _pick_hidden_layer(
    names: list[str], arrays: dict[str, np.ndarray], order: list[str]
) -> str | None:
    """A hidden layer's weight: duplicated output rows of a classifier head are not a fault.

    A spatial kernel is hidden almost always; the last matrix in the file is usually the
    head, and embedding tables hold tokens, not units.
    """
    names = [n for n in names if "embed" not in n.lower()]
    spatial = [n for n in names if arrays[n].ndim >= 3 and int(np.prod(arrays[n].shape[2:])) > 1]
    matrices = [n for n in names if arrays[n].ndim == 2]
    if matrices:
        last = max(matrices, key=order.index)
        matrices.remove(last)
    for group in (spatial, [n for n in names if arrays[n].ndim >= 3], matrices):
        if group:
            return group[len(group) // 2]
    return None


# ------------------------------------------------------------------ the faults


def with_nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flat[out.size // 2] = np.nan
    return out


def made_constant(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, 0.05)


def duplicating_units(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    def edit(a: np.ndarray) -> np.ndarray:
        out = np.moveaxis(a.copy(), axis, 0)
        out[1:DUPLICATES] = out[0]
        return np.moveaxis(out, 0, axis)

    return edit


def moved(a: np.ndarray, seed: int) -> np.ndarray:
    """An earlier state of a trained tensor: the same tensor minus a random step.

    The step has a floor, so that tiny constants (an epsilon of 1e-10) move by more than
    any tolerance too. In a low-precision tensor (float16) a step smaller than half the
    spacing of a large value rounds back to that value, so such a value moves by one ulp.
    """
    if a.dtype.kind != "f" or a.size == 0:
        return a
    finite = np.isfinite(a)
    scale = max(float(np.abs(a[finite]).mean()) * 0.02 if finite.any() else 0.0, 1e-3)
    step = np.random.default_rng(seed).standard_normal(a.shape) * scale
    out = np.where(finite, a - step, a).astype(a.dtype)
    unmoved = finite & (out == a)
    out[unmoved] = np.nextafter(a[unmoved], np.inf, dtype=a.dtype)
    return out


def planted(targets: Targets) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    edits = {
        targets.nan: with_nan,
        targets.constant: made_constant,
        targets.duplicate: duplicating_units(targets.duplicate_axis),
    }
    return {name: edit for name, edit in edits.items() if name is not None}


def expected_errors(targets: Targets) -> set[tuple[str, str]]:
    """The (rule, tensor) error findings the planted faults must cause."""
    pairs = {
        ("nonfinite-parameter", targets.nan),
        ("constant-parameter", targets.constant),
        ("symmetric-units", targets.duplicate),
    }
    return {(rule, name) for rule, name in pairs if name is not None}


# ------------------------------------------------------------------ ONNX


def onnx_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every float tensor stored in the graph (initializers, Constant nodes, subgraphs)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {name: numpy_helper.to_array(t) for name, t in _onnx_tensors(model)}


# The input of each operator that holds a weight, and the axis of its output units.
WEIGHT_INPUTS = {"Conv": 0, "ConvInteger": 0, "ConvTranspose": 1, "MatMul": -1, "MatMulInteger": -1}


def onnx_unit_axes(path: Path) -> dict[str, int]:
    """Output-unit axis of every stored tensor a weight-taking operator consumes."""
    import onnx

    model = onnx.load(str(path))
    axes: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        if len(node.input) < 2:
            continue
        if node.op_type in WEIGHT_INPUTS:
            axes[node.input[1]] = WEIGHT_INPUTS[node.op_type]
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axes[node.input[1]] = 0 if trans_b else 1
    return axes


def _all_nodes(graph) -> Iterator[object]:
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _all_nodes(sub)


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
    tensors: dict[str, np.ndarray],
    target: Path,
    frozen: str,
    *,
    zero_second_moment: bool,
    legacy: bool = False,
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
    torch.save({**blob, "global_step": 1000}, target, _use_new_zipfile_serialization=not legacy)
