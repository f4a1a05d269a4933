"""A model that can be run: the user's module, a batch, and the loss that trains it.

`--model FILE.py:FUNC` (or `package.module:FUNC`) builds the module, the checkpoint's
weights are loaded into it, `--batch` gives the inputs and targets and `--loss` the
objective. The [grads] rules only ever run copies of it, in eval mode, with fixed seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


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

    def copy_model(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A deep copy in eval mode (optionally cast), so probing never touches the original."""
        clone = copy.deepcopy(self.model)
        if dtype is not None:
            clone = clone.to(dtype)
        return clone.eval()

    def cast_inputs(self, dtype: torch.dtype) -> Any:
        """The inputs with floating tensors cast to `dtype` (integer inputs kept)."""

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype) if t.is_floating_point() else t

        if isinstance(self.inputs, dict):
            return {k: cast(v) for k, v in self.inputs.items()}
        return tuple(cast(t) for t in self.inputs)


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
