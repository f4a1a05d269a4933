"""What a live run keeps between checks: gradient norms, and a sample of each weight.

Both are small whatever the model's size: one float per tensor per record, and at most
`SAMPLE` values per tensor, so a check never holds a copy of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from diag.stats import UpdateStats

# Values of each tensor kept from one check to the next, at fixed random positions: the
# movement between checks is estimated from them (the relative error of a norm from k
# samples is about 1/sqrt(2k), 1.1% at 4096). Whether a tensor changed at all is exact:
# a checksum of its bits is kept as well.
SAMPLE = 4096
# Records of gradient norms kept; older ones are thinned (every other one dropped), so a
# run of any length keeps its early history and its recent one.
MAX_RECORDS = 4096


@dataclass
class GradientHistory:
    """Per trainable tensor, its gradient norm at each record (None: no gradient)."""

    source: str
    steps: list[int] = field(default_factory=list)
    norms: dict[str, list[float | None]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # trainable tensors the optimizer holds

    def record(self, step: int, params: list[tuple[str, Any]]) -> None:
        """One record: the norm of each parameter's `.grad`, one fused pass."""
        import torch

        with torch.no_grad():
            present = [(n, p.grad) for n, p in params if p.grad is not None]
            values = torch._foreach_norm([g for _, g in present]) if present else []
            listed: list[float] = []
            if values:
                same = all(v.device == values[0].device for v in values)
                listed = torch.stack(values if same else [v.to("cpu") for v in values]).tolist()
            norms = dict(zip([n for n, _ in present], listed, strict=True))
        self.steps.append(int(step))
        for name, _ in params:
            self.norms.setdefault(name, [None] * (len(self.steps) - 1)).append(norms.get(name))
        if len(self.steps) > MAX_RECORDS:
            self._thin()

    def _thin(self) -> None:
        keep = list(range(0, len(self.steps) - 64, 2)) + list(
            range(len(self.steps) - 64, len(self.steps))
        )
        self.steps = [self.steps[i] for i in keep]
        for name, values in self.norms.items():
            self.norms[name] = [values[i] for i in keep]


def _bits(tensor: Any) -> Any:
    import torch

    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    return tensor.reshape(-1).view(ints[tensor.element_size()])


def checksum(tensor: Any) -> int:
    """A sum of the tensor's bits, block by block (no full-size temporary)."""
    import torch

    flat = _bits(tensor.detach())
    total = 0
    for block in flat.split(1 << 20):
        total += int(block.to(torch.int64).sum())
    return total


@dataclass
class Sample:
    """Fixed positions of one tensor, their values at the last check, and its checksum."""

    positions: Any
    values: Any
    checksum: int
    numel: int


def take_sample(name: str, tensor: Any) -> Sample:
    import torch

    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n <= SAMPLE:
        positions = torch.arange(n)
    else:
        gen = torch.Generator().manual_seed(sum(name.encode()) * 7919 + n)
        positions = torch.randint(0, n, (SAMPLE,), generator=gen)
    values = flat[positions.to(flat.device)].to("cpu", torch.float64)
    return Sample(positions, values, checksum(tensor), n)


def movement(name: str, before: Sample, now: Sample) -> UpdateStats:
    """The tensor's movement since `before`, estimated from the sampled positions.

    Unchanged is exact (equal checksums and samples). A tensor that changed only away from
    the sampled positions (sparse rows of an embedding) is "moved, by an unknown amount":
    no movement in the sample, an infinite largest change, so no rule calls it stuck.
    """
    scale = before.numel / max(len(before.values), 1)
    delta = now.values - before.values
    identical = before.checksum == now.checksum and bool((delta == 0).all())
    max_delta = float(delta.abs().max()) if delta.numel() else 0.0
    if not identical and max_delta == 0.0:
        max_delta = math.inf
    return UpdateStats(
        name=name,
        init_norm=math.sqrt(float(before.values.pow(2).sum()) * scale),
        final_norm=math.sqrt(float(now.values.pow(2).sum()) * scale),
        delta_norm=math.sqrt(float(delta.pow(2).sum()) * scale),
        max_abs_delta=max_delta,
        identical=identical,
    )
