"""`diag.Monitor`: the live checks in a plain training loop.

    monitor = diag.Monitor(model, optimizer, output="runs/exp1")
    for step, (x, y) in enumerate(loader, 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)  # raises diag.TrainingStopped on a finding at `stop_on`
        if step % 500 == 0:
            monitor.eval({"val_loss": evaluate(model)})
    result = monitor.close()  # the final check; reports written to `output`

Call `step` after `backward` and before the next `zero_grad`: the gradients it records are
the ones the optimizer just used. Under `torch.distributed` every rank calls the same
methods; rank 0 runs the checks, and a stop found by any rank stops them all at the same
step (one all-reduce of a flag per step). A non-finite loss on any rank stops the run: the
rank that sees it votes to stop, and rank 0 records the run's loss at that step as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diag.live import LiveSession, TrainingStopped
from diag.model import Finding, Result

DEFAULT_FORMATS = ("json", "sarif", "junit", "html")


class Monitor:
    """Watches a model as it trains; see the module docs for the loop it expects.

    `stop_on` ("error", "warning" or None), `every_n_steps` (how often the parameter,
    gradient and activation checks run; the loss is looked at on every step) and the
    rest of the options are `diag.live.LiveSession`'s. `output` is a folder for the final
    reports (`formats` of json, sarif, junit, html).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        *,
        stop_on: str | None = "error",
        every_n_steps: int = 100,
        output: str | Path | None = None,
        formats: tuple[str, ...] = DEFAULT_FORMATS,
        **options: Any,
    ) -> None:
        self.rank, self.world = _distributed()
        self.session = LiveSession(
            model,
            optimizer,
            stop_on=stop_on,
            every_n_steps=every_n_steps,
            is_main=self.rank == 0,
            **options,
        )
        self.output, self.formats = output, formats
        self._step = 0
        self._closed = False

    @property
    def result(self) -> Result:
        return self.session.result

    @property
    def should_stop(self) -> bool:
        return self.session.stop is not None

    def step(
        self, loss: Any = None, *, step: int | None = None, epoch: float | None = None
    ) -> None:
        """One optimizer step done. Raises TrainingStopped when the run should stop."""
        self._step = self._step + 1 if step is None else int(step)
        self.session.on_step(self._step, loss, epoch)
        if self.world == 1 and self.session.stop is None:
            return  # the common case, without the vote's calls
        if not agree_to_stop(self.session, self._step, self.world):
            return
        stop = self.session.stop
        message, findings = (stop.message, stop.findings) if stop else (None, ())
        if self.world > 1:
            message, findings = _from_main(message, findings)
        self.close()
        if self.world > 1:
            # Every rank is here at this step: leave together, so no rank tears its process
            # group down while rank 0 still writes the reports (gloo aborted the other one).
            import torch.distributed as dist

            dist.barrier()
        raise TrainingStopped(message or f"diag: stopping at step {self._step}", findings)

    def eval(
        self, metrics: Mapping[str, Any], *, step: int | None = None, epoch: float | None = None
    ) -> None:
        """Evaluation metrics at this step (`val_loss`, `val_acc`, ...)."""
        self.session.on_eval(metrics, self._step if step is None else int(step), epoch)

    def checkpoint(self, path: str | Path, *, step: int | None = None) -> None:
        """A checkpoint was saved: the stop message names the last clean one."""
        self.session.note_checkpoint(self._step if step is None else int(step), str(path))

    def close(self) -> Result:
        """The final check (once); writes the reports when `output` was given."""
        if not self._closed:
            self._closed = True
            formats = self.formats if self.output is not None else ()
            self.session.finish(self.output, formats)
        return self.session.result

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree_to_stop(session: LiveSession, step: int, world: int) -> bool:
    """Whether every rank stops now: one all-reduce of a flag when `world` > 1.

    Every rank must call it at the same steps. The framework adapters that have their
    own collective (Lightning's `reduce_boolean_decision`) use `vote` and `settle`.
    """
    stopping = vote(session)
    if world > 1:
        stopping = _any_rank(stopping)
        settle(session, step, stopping)
    return stopping


def vote(session: LiveSession) -> bool:
    """This rank's vote to stop (see `LiveSession.vote`)."""
    return session.vote()


def settle(session: LiveSession, step: int, stopping: bool) -> None:
    """After the ranks agreed (see `LiveSession.settle`)."""
    session.settle(step, stopping)


def _any_rank(flag: bool) -> bool:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(int(tensor))


def _from_main(message: str | None, findings: tuple[Finding, ...]) -> tuple[Any, Any]:
    """Rank 0's stop message and findings, on every rank (only when stopping)."""
    import torch.distributed as dist

    shared = [message, findings]
    dist.broadcast_object_list(shared, src=0)
    return shared[0], tuple(shared[1] or ())
