"""Integer token inputs, seen through the embedding layers that read them.

Token ids cannot be perturbed or differentiated like pixels: a gradient on an integer
tensor does not exist, and "zeroing" the ids feeds a real token (id 0). The first float
tensor a token reaches is its embedding's output, so the probes that perturb or
differentiate inputs (`batch-mixing`, `input-independence`) do it there: every
`nn.Embedding` whose input is one of the batch's id tensors gets a forward hook that
replaces its output by a differentiable leaf (or by zeros). Position embeddings read
position ids made inside the model, not the batch, so they are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def token_tensors(inputs: Any, batch: int) -> list[torch.Tensor]:
    """The integer tensors of the inputs that have the batch dimension (ids, masks)."""
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return [
        t
        for t in values
        if not t.is_floating_point() and t.ndim > 0 and t.shape[0] == batch and t.numel()
    ]


class EmbeddingTap:
    """Hooks on a model's embeddings that act on the outputs for the batch's token ids.

    `mode` is "leaf" (the output becomes a leaf that requires grad, collected in `leaves`),
    "zero" (the output becomes zeros) or "off". `ids` are the tensors being fed now: an
    embedding acts only when its input shares their storage, which a view or slice inside
    the model keeps and a tensor made inside it (positions, `zeros_like(ids)`) does not.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        import torch

        self.mode = "off"
        self.ids: list[torch.Tensor] = []
        self.leaves: list[torch.Tensor] = []
        self.hits = 0
        self._handles = [
            module.register_forward_hook(self._hook)
            for module in model.modules()
            if isinstance(module, torch.nn.Embedding)
        ]

    def arm(self, mode: str, ids: list[torch.Tensor]) -> None:
        self.mode, self.ids, self.leaves, self.hits = mode, list(ids), [], 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _reads_batch(self, args: tuple) -> bool:
        import torch

        if not args or not isinstance(args[0], torch.Tensor):
            return False
        # The same storage: the batch's ids, or a view or slice of them (`ids[:, :-1]`).
        storage = args[0].untyped_storage().data_ptr()
        return any(storage == t.untyped_storage().data_ptr() for t in self.ids)

    def _hook(self, module: Any, args: tuple, output: Any) -> Any:
        import torch

        if self.mode == "off" or not self._reads_batch(args):
            return None
        self.hits += 1
        if self.mode == "zero":
            return torch.zeros_like(output)
        leaf = output.detach().requires_grad_()
        self.leaves.append(leaf)
        return leaf


@contextmanager
def embedding_tap(model: torch.nn.Module) -> Iterator[EmbeddingTap]:
    tap = EmbeddingTap(model)
    try:
        yield tap
    finally:
        tap.close()
