"""A model that can be run: the user's module, a batch, and the loss that trains it.

`--model FILE.py:FUNC` (or `package.module:FUNC`) builds the module, the checkpoint's
weights are loaded into it, `--batch` gives the inputs and targets and `--loss` the
objective. The [grads] rules only ever run copies of it, in eval mode, with fixed seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

# Parameters plus input values under which a probe runs on one thread: each op of a small
# model is too short to share, and on a loaded 2-core machine every op's thread barrier
# waits for a busy core (a 212-parameter MLP's 50 overfitting steps: 1.2 s on 2 threads,
# 5 ms on one).
SMALL_PROBE = 1 << 20


@dataclass(eq=False)
class Probe:
    """The model, its batch and its loss.

    `inputs` are the positional arguments of `model(...)` (a tuple) or its keyword
    arguments (a dict). `targets` may be None when the batch has none (then only the
    rules that need no loss run). `loss_name` says which loss was chosen and why
    ("cross_entropy (integer targets)"). `source` is the `--model` spec, `batch_path` the
    `--batch` file, `initial` the state dict of `--init` when given (for `init-loss`).
    `causal` says the model is a causal language model: the output at a position may only
    depend on the tokens up to it (what `batch-mixing` checks across positions).
    """

    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
    targets: torch.Tensor | None
    loss_fn: LossFn | None
    loss_name: str
    source: str
    batch_path: str
    initial: Mapping[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    causal: bool = False
    model_format: str = "python factory"

    @property
    def batch_size(self) -> int:
        first = (
            next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs[0]
        )
        return int(first.shape[0])

    def forward(self, model: torch.nn.Module | None = None, inputs: Any = None) -> torch.Tensor:
        """The model's output on the batch (or on `inputs` of the same structure)."""
        model = self.model if model is None else model
        inputs = self.inputs if inputs is None else inputs
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)

    def logits(self, model: torch.nn.Module | None = None, inputs: Any = None) -> torch.Tensor:
        """The main output tensor: the output, or its `logits` (ModelOutput, dict, tuple)."""
        output = main_output(self.forward(model, inputs))
        if output is None:
            raise ValueError("the model's output holds no floating-point tensor")
        return output

    def loss(self, model: torch.nn.Module | None = None, inputs: Any = None) -> torch.Tensor:
        if self.loss_fn is None or self.targets is None:
            raise ValueError("this probe has no targets or loss")
        return self.loss_fn(self.forward(model, inputs), self.targets)

    def copy_model(
        self, dtype: torch.dtype | None = None, weights: Mapping[str, torch.Tensor] | None = None
    ) -> torch.nn.Module:
        """A copy in eval mode (optionally cast), so probing never touches the original.

        Tensors are copied (and cast) one at a time straight into the copy: the peak is the
        model plus one copy in `dtype`, never a full-precision copy on the way. With
        `weights` (a state dict, e.g. `--init`) the copy holds those tensors instead of the
        model's, checked like a strict `load_state_dict`, and the model's are not copied.
        Tied tensors (one object under two names) stay tied.
        """
        import torch

        if weights is not None:
            _check_keys(self.model, weights)
        memo: dict[int, Any] = {}
        named = (
            *self.model.named_parameters(remove_duplicate=False),
            *self.model.named_buffers(remove_duplicate=False),
        )
        for name, tensor in named:
            if id(tensor) in memo or type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                continue  # tied (already copied), or a subclass deepcopy knows better
            source = weights[name] if weights is not None and name in weights else tensor
            memo[id(tensor)] = _fresh(tensor, source, dtype)
        clone = copy.deepcopy(self.model, memo)
        return clone.eval()

    def cast_inputs(self, dtype: torch.dtype) -> Any:
        """The inputs with floating tensors cast to `dtype` (integer inputs kept)."""

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype) if t.is_floating_point() else t

        if isinstance(self.inputs, dict):
            return {k: cast(v) for k, v in self.inputs.items()}
        return tuple(cast(t) for t in self.inputs)


@contextmanager
def threads_for(probe: Probe | None) -> Iterator[None]:
    """Run a small probe's work on one thread (see SMALL_PROBE); a large one as it is."""
    if probe is None:
        yield
        return
    import torch

    tensors = probe.inputs.values() if isinstance(probe.inputs, dict) else probe.inputs
    size = sum(p.numel() for p in probe.model.parameters()) + sum(t.numel() for t in tensors)
    before = torch.get_num_threads()
    if size >= SMALL_PROBE or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main_output(output: Any) -> Any:
    """The tensor a loss reads: the output itself, its `logits`, or its first floating tensor.

    Hugging Face models return a `ModelOutput` (a dict that is also a tuple) whose `logits`
    is the prediction; other models return dicts or tuples with extra tensors (hidden states,
    an auxiliary loss) after it.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        candidates = ([output["logits"]] if "logits" in output else []) + list(output.values())
    elif isinstance(output, tuple | list):
        candidates = list(output)
    else:
        return None
    floating = (c for c in candidates if isinstance(c, torch.Tensor) and c.is_floating_point())
    return next(floating, None)


def _fresh(like: torch.Tensor, source: torch.Tensor, dtype: torch.dtype | None) -> Any:
    """A new tensor with `source`'s values, of `like`'s kind (parameter or buffer)."""
    import torch

    if tuple(source.shape) != tuple(like.shape):
        raise RuntimeError(f"size mismatch: {tuple(source.shape)} for {tuple(like.shape)}")
    cast = dtype if dtype is not None and source.is_floating_point() else None
    values = source.detach().to(dtype=cast or like.dtype, copy=True)
    if isinstance(like, torch.nn.Parameter):
        fresh = torch.nn.Parameter(values, requires_grad=like.requires_grad)
        fresh.__dict__.update(like.__dict__)
        return fresh
    return values


def _check_keys(model: torch.nn.Module, weights: Mapping[str, Any]) -> None:
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise RuntimeError(
            f"weights do not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
