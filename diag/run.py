"""The Run: every artifact of one check, loaded once, with the statistics rules read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diag.loaders.checkpoint import Checkpoint
from diag.stats import UpdateStats, compute_stats, compute_update

# Why a rule was skipped, by the artifact it needed.
MISSING_REASONS = {
    "checkpoint": "needs a checkpoint",
    "init": "needs --init (the checkpoint saved before training)",
    "updates": "needs --init (the checkpoint saved before training)",
    "initial": "needs --init, or a checkpoint saved at step 0",
}

Progress = Callable[[int, int], None]


@dataclass
class Run:
    checkpoint: Checkpoint | None = None
    init: Checkpoint | None = None
    updates: dict[str, UpdateStats] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def initial(self) -> Checkpoint | None:
        """The untrained weights: --init, or the checkpoint itself when saved at step 0."""
        if self.init is not None:
            return self.init
        if self.checkpoint is not None and self.checkpoint.is_initial:
            return self.checkpoint
        return None

    def available(self, name: str) -> bool:
        return getattr(self, name, None) is not None

    def artifact(self, name: str) -> Any:
        return getattr(self, name)

    def total_bytes(self) -> int:
        return sum(
            i.nbytes for c in (self.checkpoint, self.init) if c is not None for i in c.infos()
        )

    def prepare(self, progress: Progress | None = None) -> None:
        """One pass over the tensors: statistics of each, and movement since --init.

        Each final tensor is read once, alongside its initial counterpart when there is
        one, so both files are read exactly once and two tensors at most are in memory.
        """
        done = 0
        total = self.total_bytes()
        init_infos = {i.name: i for i in self.init.infos()} if self.init else {}
        if self.init is not None:
            self.updates = {}
        if self.checkpoint is not None:
            for info in self.checkpoint.infos():
                tensor = self.checkpoint.table.read(info.name)
                self.checkpoint.stats[info.name] = compute_stats(info, tensor)
                done += info.nbytes
                before = init_infos.pop(info.name, None)
                if before is not None and self.init is not None:
                    old = self.init.table.read(info.name)
                    self.init.stats[info.name] = compute_stats(before, old)
                    update = compute_update(info.name, old, tensor)
                    if update is not None and self.updates is not None:
                        self.updates[info.name] = update
                    done += before.nbytes
                    del old
                del tensor
                if progress:
                    progress(done, total)
        if self.init is not None:
            for info in init_infos.values():  # tensors only the initial checkpoint has
                self.init.stats[info.name] = compute_stats(info, self.init.table.read(info.name))
                done += info.nbytes
                if progress:
                    progress(done, total)
