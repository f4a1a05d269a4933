"""What a model's units do on the probe batch: dead ReLU units and saturated tanh/sigmoid.

One forward pass of a copy of the model, in eval mode and without gradients, watched by a
`TorchFunctionMode`: it sees every torch call, functional (`F.relu`, `torch.tanh`) or made
by a module (`nn.Linear` calls `F.linear`, `nn.Tanh` calls `torch.tanh`), so both styles
are covered by the same code and nothing is counted twice. Module hooks only keep a stack
of the modules running, to name the call sites. Every tensor is reduced to per-unit counts
as soon as it is produced; only a weak reference to each layer output is kept, to see
which function consumes it.
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from diag.probe import Probe

MAX_INDICES = 64
TANH_LIMIT = 0.99  # |tanh| above this: the gradient (1 - tanh²) is under 2% of its peak
SIGMOID_LIMIT = 0.01  # sigmoid below this or above 1 - this: gradient under 4% of its peak

LAYER_OPS = {"linear": "linear", "conv1d": "conv1d", "conv2d": "conv2d", "conv3d": "conv3d"}
# `torch.addmm(bias, x, W)` is a linear layer with the weight stored (in, out): Hugging
# Face's GPT-2 `Conv1D`. Counted only when W is a model parameter.
MATMUL_OPS = {"addmm": "linear"}
# Smooth gates computed with a tanh or sigmoid inside (GELU's tanh approximation, SiLU,
# QuickGELU's sigmoid): their output is x times the gate, so a gate in its tail is not a
# vanishing gradient. Recognised by the class name of the module that runs them.
GATE_MODULES = ("gelu", "silu", "swish", "mish")
# Consumers whose gradient is exactly zero for negative inputs: a unit that is never
# positive on them never learns again. Leaky ReLU, GELU, SiLU and ELU still pass a gradient
# there, so they count as "other" (their name is kept in `consumer_fn`).
RELU_FNS = frozenset({"relu", "relu_", "relu6", "threshold", "threshold_"})
TANH_FNS = frozenset({"tanh", "tanh_"})
SIGMOID_FNS = frozenset({"sigmoid", "sigmoid_", "expit"})
# Calls that move or reshape values without changing their sign: a layer output seen
# through them is still that layer's output when it reaches its activation.
SIGN_KEEPING = frozenset(
    {
        "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
        "squeeze", "unsqueeze", "__getitem__", "dropout", "dropout1d", "dropout2d",
        "dropout3d", "alpha_dropout", "feature_alpha_dropout", "max_pool1d", "max_pool2d",
        "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_max_pool1d",
        "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "clone", "to", "float", "chunk", "split",
    }
)  # fmt: skip
# In eval mode batch norm is a per-channel affine map: the layer's units are measured on
# its output, which is what the activation after it sees (conv -> bn -> relu).
NORMS = frozenset({"batch_norm"})


@dataclass(frozen=True)
class LayerActivity:
    """A Linear or Conv layer's outputs (pre-activations) on the batch, per output unit.

    `positive_fraction` is the mean over units of the fraction of observations > 0 (for a
    conv, every spatial position is an observation). `dead` lists units never positive (up
    to 64; `n_dead` counts them all). `consumer` is the kind of function its output feeds
    ("relu", "tanh", "sigmoid", "other", "none"); "dead" only means something for "relu".
    `through` names a batch norm the units were measured after, if any.
    """

    name: str
    op: str
    n_units: int
    observations: int
    n_dead: int
    dead: tuple[int, ...]
    positive_fraction: float
    consumer: str
    consumer_fn: str | None = None
    through: str | None = None
    calls: int = 1


@dataclass(frozen=True)
class Saturation:
    """One tanh or sigmoid call site: how many of its outputs sit in the flat tails.

    `name` is the module (an `nn.Tanh`) or the enclosing module and the function
    ("encoder.tanh"); `where` the line of the user's code that called it. `unit_fractions`
    are per unit (last dim, or the channel dim after a conv) when units are identifiable.
    """

    name: str
    function: str
    where: str | None
    observations: int
    saturated: int
    unit_fractions: tuple[float, ...] | None = None
    calls: int = 1

    @property
    def fraction(self) -> float:
        return self.saturated / self.observations if self.observations else 0.0


@dataclass(frozen=True)
class Activations:
    layers: list[LayerActivity] = field(default_factory=list)
    saturations: list[Saturation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerActivity | None:
        return next((item for item in self.layers if item.name == name), None)


def record_activations(probe: Probe) -> Activations:
    """Dead units and saturation from one forward pass of a copy of the probe's model."""
    import torch

    model = probe.copy_model()
    recorder = _Recorder(model)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder.enter(name)))
        handles.append(module.register_forward_hook(recorder.leave))
    torch.manual_seed(0)
    try:
        with torch.no_grad(), _watch(recorder):
            probe.forward(model)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.result(model)


class Recording:
    """One forward pass of a live model, watched as `record_activations` watches a copy.

    `diag.live` starts one just before a sampled training step's forward pass and
    finishes it right after, so the activations come from the training itself at no
    extra pass; the recorder's own arithmetic runs without gradient.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.recorder = _Recorder(model)
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self.recorder.enter(name)))
            self.handles.append(module.register_forward_hook(self.recorder.leave))
        self.mode = _watch(self.recorder, no_grad=True)
        self.mode.__enter__()

    def finish(self) -> Activations:
        self.close()
        return self.recorder.result(self.model)

    def close(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
        for handle in self.handles:
            handle.remove()
        self.handles = []


# ------------------------------------------------------------------ the recorder


@dataclass
class _Layer:
    name: str
    op: str
    units_dim: int
    positive: Any  # per-unit count of observations > 0 (a tensor)
    observations: int
    consumers: dict[str, str | None] = field(default_factory=dict)  # kind -> function
    through: str | None = None
    calls: int = 1


@dataclass
class _Site:
    name: str
    function: str
    where: str | None
    observations: int = 0
    saturated: int = 0
    unit_saturated: Any = None  # per-unit saturated counts (a tensor), or None
    unit_observations: int = 0
    calls: int = 0


class _Recorder:
    def __init__(self, model: torch.nn.Module) -> None:
        self.stack: list[str] = []
        self.layers: dict[str, _Layer] = {}
        self.sites: dict[tuple[str, str | None], _Site] = {}
        # id(tensor) -> (weak ref, layer, direct): a layer output waiting for its consumer.
        self.outputs: dict[int, tuple[weakref.ref, _Layer, bool]] = {}
        # A weight used functionally (F.conv2d(x, self.conv1.weight.detach())) is still
        # that module's: recognised by its storage, which .detach() and views share.
        self.owners = {
            (p.data_ptr(), tuple(p.shape)): n.rpartition(".")[0] or n
            for n, p in model.named_parameters()
        }
        self.modules = dict(model.named_modules())

    def enter(self, name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(name)

        return hook

    def leave(self, module: Any, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def on_call(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        import torch

        if not isinstance(out, torch.Tensor | tuple | list):
            return  # .shape, .dim(), .size(): reading metadata does not consume a value
        fn = getattr(func, "__name__", "")
        sources = self._sources(args, kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if fn in LAYER_OPS and isinstance(out, torch.Tensor) and isinstance(weight, torch.Tensor):
            self._note_consumers(sources, "other", fn)
            self._record_layer(fn, weight, out)
            return
        if fn in MATMUL_OPS and isinstance(out, torch.Tensor) and self._owned(args, 2):
            self._note_consumers(sources, "other", fn)
            self._record_layer(MATMUL_OPS[fn], args[2], out)
            return
        if fn in NORMS and isinstance(out, torch.Tensor) and sources and sources[0][2]:
            layer = sources[0][1]
            self._remeasure(layer, out)
            return
        if fn in SIGN_KEEPING and sources:
            for tensor in out if isinstance(out, tuple | list) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor is not sources[0][0]:
                    self._link(tensor, sources[0][1], direct=False)
            return
        kind = _kind(fn)
        self._note_consumers(sources, kind, fn)
        if kind in ("tanh", "sigmoid") and isinstance(out, torch.Tensor) and not self._in_gate():
            self._record_site(kind, fn, out, sources)
        for tensor, _layer, _direct in sources:
            if tensor is out:  # changed in place (ReLU(inplace=True)): no longer the layer's
                del self.outputs[id(tensor)]

    # -- layers

    def _owned(self, args: tuple, index: int) -> bool:
        import torch

        weight = args[index] if len(args) > index else None
        if not isinstance(weight, torch.Tensor):
            return False
        return (weight.data_ptr(), tuple(weight.shape)) in self.owners

    def _in_gate(self) -> bool:
        module = self.modules.get(self._where_in_model()) if self.stack else None
        name = type(module).__name__.lower()
        return module is not None and any(gate in name for gate in GATE_MODULES)

    def _sources(self, args: tuple, kwargs: dict) -> list[tuple[Any, _Layer, bool]]:
        """Layer outputs among a call's tensor arguments (one level into lists: torch.cat)."""
        found = []
        for value in (*args, *kwargs.values()):
            for item in value if isinstance(value, list | tuple) else (value,):
                entry = self.outputs.get(id(item))
                if entry is not None and entry[0]() is item:
                    found.append((item, entry[1], entry[2]))
        return found

    def _note_consumers(self, sources: list, kind: str, fn: str) -> None:
        for _tensor, layer, _direct in sources:
            layer.consumers.setdefault(kind, fn)

    def _link(self, tensor: Any, layer: _Layer, direct: bool) -> None:
        self.outputs[id(tensor)] = (weakref.ref(tensor), layer, direct)

    def _record_layer(self, op: str, weight: torch.Tensor, out: torch.Tensor) -> None:
        owner = self.owners.get((weight.data_ptr(), tuple(weight.shape)))
        name = owner or f"{self._where_in_model()}.{op}".lstrip(".")
        # Linear: units are the last dim. Conv: the channel dim, 1 when batched (the
        # output has as many dims as the weight), 0 for an unbatched input.
        units_dim = -1 if op == "linear" else (1 if out.dim() == weight.dim() else 0)
        positive, observations = _positive_counts(out, units_dim)
        layer = self.layers.get(name)
        if layer is not None and layer.positive.shape == positive.shape:
            layer.positive = layer.positive + positive
            layer.observations += observations
            layer.calls += 1
        else:
            if layer is not None:  # same name, other shape: a second functional call site
                name = f"{name}#{sum(k.startswith(name) for k in self.layers) + 1}"
            layer = _Layer(name, op, units_dim, positive, observations)
            self.layers[name] = layer
        self._link(out, layer, direct=True)

    def _remeasure(self, layer: _Layer, out: torch.Tensor) -> None:
        positive, observations = _positive_counts(out, layer.units_dim)
        if layer.calls == 1 and positive.shape == layer.positive.shape:
            layer.positive, layer.observations = positive, observations
            layer.through = self._where_in_model() or "batch_norm"
        self._link(out, layer, direct=True)

    # -- tanh / sigmoid

    def _record_site(self, kind: str, fn: str, out: torch.Tensor, sources: list) -> None:
        import torch

        module = self._where_in_model()
        owner = self.modules.get(module) if self.stack else None
        own_module = isinstance(owner, torch.nn.Tanh | torch.nn.Sigmoid)
        name = module if own_module else f"{module}.{fn.rstrip('_')}".lstrip(".")
        where = _caller()
        site = self.sites.setdefault((name, where), _Site(name, kind, where))
        flags = out.abs() > TANH_LIMIT if kind == "tanh" else _sigmoid_tails(out)
        site.calls += 1
        site.observations += flags.numel()
        site.saturated += int(flags.sum())
        units_dim = _units_dim(out, sources)
        if units_dim is None or out.dim() == 0:
            site.unit_saturated = None
            site.unit_observations = -1  # not identifiable at one call: not at all
            return
        counts, observations = _positive_counts(flags.to(torch.int8), units_dim)
        if site.unit_observations < 0:
            return
        if site.unit_saturated is None or site.unit_saturated.shape == counts.shape:
            previous = 0 if site.unit_saturated is None else site.unit_saturated
            site.unit_saturated = previous + counts
            site.unit_observations += observations
        else:
            site.unit_saturated, site.unit_observations = None, -1

    def _where_in_model(self) -> str:
        return self.stack[-1] if self.stack else ""

    # -- result

    def result(self, model: torch.nn.Module) -> Activations:
        import torch

        layers = [_finish_layer(layer) for layer in self.layers.values()]
        sites = [_finish_site(site) for site in self.sites.values()]
        seen = {layer.name for layer in layers}
        kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
        unused = [
            name for name, m in model.named_modules() if isinstance(m, kinds) and name not in seen
        ]
        notes = []
        if unused:
            notes.append(f"not used in the forward pass: {', '.join(unused[:10])}")
        return Activations(layers, sites, notes)


def _watch(recorder: _Recorder, no_grad: bool = False) -> Any:
    """A TorchFunctionMode feeding every torch call's result to the recorder."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
        ) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            # The mode is off while its handler runs, so the recorder's own torch calls
            # are not watched (no recursion).
            if no_grad:
                with torch.no_grad():
                    recorder.on_call(func, args, kwargs, out)
            else:
                recorder.on_call(func, args, kwargs, out)
            return out

    return Watch()


# ------------------------------------------------------------------ reductions


def _positive_counts(out: torch.Tensor, units_dim: int) -> tuple[torch.Tensor, int]:
    """Per unit, how many observations are > 0; and observations per unit."""
    if out.dim() == 0:
        return (out > 0).reshape(1).long(), 1
    moved = out.movedim(units_dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return (flat > 0).sum(0), int(flat.shape[0])


def _sigmoid_tails(out: torch.Tensor) -> torch.Tensor:
    return (out < SIGMOID_LIMIT) | (out > 1 - SIGMOID_LIMIT)


def _units_dim(out: torch.Tensor, sources: list) -> int | None:
    """The unit axis of an activation's output: its layer's when it comes straight from one."""
    direct = [layer for _t, layer, is_direct in sources if is_direct]
    if direct and out.dim() > 0:
        return direct[0].units_dim
    if out.dim() == 2:
        return -1  # (batch, features)
    return None  # (batch, length, features) or (batch, channels, length)? not knowable


def _kind(fn: str) -> str:
    if fn in RELU_FNS:
        return "relu"
    if fn in TANH_FNS:
        return "tanh"
    if fn in SIGMOID_FNS:
        return "sigmoid"
    return "other"


def _finish_layer(layer: _Layer) -> LayerActivity:
    positive = layer.positive
    dead = (positive == 0).nonzero().flatten().tolist() if layer.observations else []
    fractions = positive.double() / max(layer.observations, 1)
    consumer, consumer_fn = "none", None
    if len(layer.consumers) == 1:
        consumer, consumer_fn = next(iter(layer.consumers.items()))
    elif layer.consumers:  # feeding a ReLU in one place and a sum in another is not "relu"
        consumer = "other"
    return LayerActivity(
        name=layer.name,
        op=layer.op,
        n_units=int(positive.numel()),
        observations=layer.observations,
        n_dead=len(dead),
        dead=tuple(dead[:MAX_INDICES]),
        positive_fraction=float(fractions.mean()) if positive.numel() else 0.0,
        consumer=consumer,
        consumer_fn=consumer_fn,
        through=layer.through,
        calls=layer.calls,
    )


def _finish_site(site: _Site) -> Saturation:
    units = None
    if site.unit_saturated is not None and site.unit_observations > 0:
        units = tuple((site.unit_saturated.double() / site.unit_observations).tolist())
    return Saturation(
        name=site.name,
        function=site.function,
        where=site.where,
        observations=site.observations,
        saturated=site.saturated,
        unit_fractions=units,
        calls=site.calls,
    )


def _caller() -> str | None:
    """`file.py:line` of the user's code that made the current torch call."""
    import torch

    torch_dir = os.path.dirname(torch.__file__) + os.sep
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((torch_dir, "<")) and filename != __file__:
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None
