"""Optimizer state in a checkpoint, mapped from integer ids to parameter names.

`Optimizer.state_dict()` keys state by integer ids in param-group order, with no names
(unless the optimizer was built from named parameters, which records `param_names`). The
ids are 0..n-1 in current torch; older torch used each parameter's `id()` (a memory
address), as many legacy-format checkpoints show. Either way the groups list the ids in
parameter order, so both are mapped to names by position. Adam
creates a parameter's state only once that parameter gets a gradient, so "in a group but
no state" means "never received a gradient".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diag.loaders.safe_pickle import TensorRef


@dataclass(frozen=True)
class ParamOptState:
    has_state: bool
    step: float | None = None
    # Tensor refs of the moment estimates; read on demand.
    exp_avg_sq: TensorRef | None = None
    momentum: TensorRef | None = None


@dataclass(frozen=True)
class OptimizerState:
    kind: str  # "adam", "sgd", "other"
    params: Mapping[str, ParamOptState]
    unmapped_reason: str | None = None  # set when ids could not be matched to names
    read: Callable[[TensorRef, str], Any] | None = None

    @property
    def mapped(self) -> bool:
        return self.unmapped_reason is None


def parse_optimizer(
    blob: Any,
    param_shapes: Sequence[tuple[str, tuple[int, ...]]],
    read: Callable[[TensorRef, str], Any],
) -> OptimizerState | None:
    """Map one `Optimizer.state_dict()` to names; None if `blob` is not one."""
    if not isinstance(blob, Mapping) or "param_groups" not in blob or "state" not in blob:
        return None
    groups = blob["param_groups"]
    state = blob["state"]
    if not isinstance(groups, list) or not isinstance(state, Mapping):
        return None
    ids: list[Any] = []
    names: list[Any] = []
    for group in groups:
        if isinstance(group, Mapping):
            ids.extend(_list(group.get("params")))
            names.extend(_list(group.get("param_names")))
    kind = _kind(state)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return OptimizerState(kind, {}, "parameter ids that are not integers", read)
    seen: set[int] = set()
    for pid in ids:
        if pid in seen:
            return OptimizerState(kind, {}, f"parameter id {_shown(pid)} is listed twice", read)
        seen.add(pid)
    # State under an id no group lists means the ids are not what the groups say (a
    # hand-edited or half-converted state dict): mapping by position would then call
    # parameters that have state stateless, and so stuck.
    stray = next((k for k in state if k not in seen), None)
    if stray is not None:
        reason = f"optimizer state for id {_shown(stray)}, which no parameter group lists"
        return OptimizerState(kind, {}, reason, read)
    if not all(isinstance(n, str) for n in names):
        names = []
    shapes = dict(param_shapes)
    if names and len(names) == len(ids) and all(n in shapes for n in names):
        mapping = dict(zip(ids, names, strict=True))
        return OptimizerState(kind, _per_name(mapping, state), None, read)
    if len(ids) != len(param_shapes):
        reason = (
            f"the optimizer holds {len(ids)} parameters but the checkpoint has "
            f"{len(param_shapes)} trainable-looking tensors"
        )
        return OptimizerState(kind, {}, reason, read)
    mapping = {pid: name for pid, (name, _) in zip(ids, param_shapes, strict=True)}
    for pid, name in mapping.items():
        entry = state.get(pid)
        ref = _first_tensor(entry)
        if ref is not None and ref.size and tuple(ref.size) != shapes[name]:
            reason = (
                f"optimizer state of id {_shown(pid)} has shape {tuple(ref.size)}, "
                f"{name} has {shapes[name]}"
            )
            return OptimizerState(kind, {}, reason, read)
    return OptimizerState(kind, _per_name(mapping, state), None, read)


def _shown(key: Any) -> str:
    """A state key for a message; an int of thousands of digits cannot be printed."""
    if isinstance(key, int) and key.bit_length() > 64:
        return f"<{key.bit_length()}-bit int>"
    return repr(key) if isinstance(key, str | int) else f"of type {type(key).__name__}"


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _kind(state: Mapping[Any, Any]) -> str:
    for entry in state.values():
        if isinstance(entry, Mapping):
            if "exp_avg_sq" in entry:
                return "adam"
            if "momentum_buffer" in entry:
                return "sgd"
    return "other"


def _first_tensor(entry: Any) -> TensorRef | None:
    if isinstance(entry, Mapping):
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if isinstance(entry.get(key), TensorRef):
                return entry[key]
    return None


def _per_name(mapping: Mapping[Any, str], state: Mapping[Any, Any]) -> dict[str, ParamOptState]:
    out = {}
    for pid, name in mapping.items():
        entry = state.get(pid)
        if not isinstance(entry, Mapping) or not entry:
            out[name] = ParamOptState(has_state=False)
            continue
        step = entry.get("step")
        if isinstance(step, TensorRef):
            step = None  # a 0-d tensor; read lazily by the rule if it needs it
        out[name] = ParamOptState(
            has_state=True,
            step=_float(step),
            exp_avg_sq=_ref(entry.get("exp_avg_sq")),
            momentum=_ref(entry.get("momentum_buffer")),
        )
    return out


def _float(value: Any) -> float | None:
    if not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return None


def _ref(value: Any) -> TensorRef | None:
    return value if isinstance(value, TensorRef) else None
