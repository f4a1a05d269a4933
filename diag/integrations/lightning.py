"""diag in a Lightning run: `DiagCallback`, a thin adapter over `diag.live.LiveSession`.

    from diag.integrations.lightning import DiagCallback

    trainer = lightning.Trainer(callbacks=[DiagCallback(every_n_steps=100)])
    trainer.fit(model, train_loader, val_loader)

What it feeds the session, and when:
- `on_before_optimizer_step`: the gradient norms, when a record is due (the gradients
  as backward left them, before Lightning clips them);
- `on_train_batch_end`: the step's loss (from `training_step`'s output; the mean over
  the batches of one step under gradient accumulation), once per optimizer step;
- `on_validation_end`: the validation metrics of `trainer.callback_metrics` (not
  during the sanity check);
- the paths ModelCheckpoint saved, so a stop names the last clean checkpoint;
- `on_fit_end` (or an exception): the final check and the reports, on rank 0.

The session hooks the LightningModule's own `forward` to sample activations: a
`training_step` that calls `self(x)` gets them, one that calls a submodule directly
does not (every other check still runs). Under DDP, rank 0 checks and every rank
stops at the same step (`strategy.reduce_boolean_decision`, once per step).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from diag.integrations import echo_and_log
from diag.live import LiveSession
from diag.model import Result
from diag.monitor import DEFAULT_FORMATS, settle, vote

# Names Lightning users give validation metrics: val_loss, val/acc, valid_f1, eval_loss.
VALIDATION = re.compile(r"(^|[_/.\-])(val|valid|validation|eval)([_/.\-]|$)", re.IGNORECASE)


class DiagCallback(pl.Callback):
    """Runs diag's rules while a LightningModule trains; stops the run on a finding.

    `stop_on` ("error", "warning" or None: never stop), `every_n_steps` (how often the
    parameter, gradient and activation checks run) and `**options` are
    `diag.live.LiveSession`'s. The reports (`formats` of json, sarif, junit, html) go
    to `output`, by default the trainer's `log_dir` (else its `default_root_dir`).
    """

    def __init__(
        self,
        stop_on: str | None = "error",
        every_n_steps: int = 100,
        output: str | Path | None = None,
        formats: tuple[str, ...] = DEFAULT_FORMATS,
        **options: Any,
    ) -> None:
        super().__init__()
        self.stop_on, self.every_n_steps = stop_on, every_n_steps
        self.output, self.formats = output, tuple(formats)
        self.options = options
        self.session: LiveSession | None = None
        self.folder: Path | None = None
        self.stopped_at: int | None = None
        self._losses: list[Any] = []
        self._last_step: int | None = None
        self._epoch: float | None = None
        self._saving: list[int] = []
        self._noted: set[str] = set()
        self._finished = False

    @property
    def result(self) -> Result:
        """The findings so far (after the fit: the final check's)."""
        return self.session.result if self.session is not None else Result(())

    # ---------------------------------------------------------------- Lightning hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = dict(self.options)
        options["echo"] = echo_and_log(options.get("echo"))
        optimizers = trainer.optimizers
        self.session = LiveSession(
            pl_module,
            optimizers[0] if len(optimizers) == 1 else _Optimizers(optimizers),
            stop_on=self.stop_on,
            every_n_steps=self.every_n_steps,
            is_main=trainer.is_global_zero,
            **options,
        )
        # `log_dir` broadcasts from rank 0 under DDP: every rank asks here, together.
        folder = self.output or trainer.log_dir or trainer.default_root_dir
        self.folder = Path(folder)
        self.stopped_at = None
        self._losses, self._last_step, self._epoch = [], None, None
        self._saving, self._noted = [], set()
        self._finished = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run starts at its checkpoint's step (restored by now), not at 0.
        self._last_step = trainer.global_step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # `training_step` may call a submodule (`self.net(x)`) and never the module's own
        # forward: the sampled step's forward pass is bracketed here, up to the backward.
        if self.session is not None and self.session.activations_due:
            self.session.start_activations()

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any
    ) -> None:
        if self.session is not None:
            self.session.finish_activations()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        session = self.session
        step = trainer.global_step + 1  # the number on_train_batch_end gives this step
        if session is not None and step % session.grad_every == 0:
            session.record_gradients(step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        session = self.session
        if session is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            self._losses.append(loss.detach())
        step = trainer.global_step
        if step == self._last_step:
            return  # a batch of gradient accumulation: the optimizer has not stepped yet
        self._last_step = step
        self._note_checkpoints(trainer)
        self._epoch = _epoch(trainer, batch_idx)
        divided_by = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        loss = _step_loss(self._losses, divided_by)
        session.on_step(step, loss, self._epoch)
        self._losses = []
        stopping = trainer.strategy.reduce_boolean_decision(vote(session), all=False)
        settle(session, step, stopping)
        if stopping and self.stopped_at is None:
            self.stopped_at = step
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None or trainer.sanity_checking:
            return
        self._note_checkpoints(trainer)
        metrics = {
            name: value
            for name, value in trainer.callback_metrics.items()
            if VALIDATION.search(name)
        }
        if metrics:
            # A divergence found here stops the run at the next step, when the ranks agree.
            self.session.on_eval(metrics, trainer.global_step, self._epoch)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called before the file is written; its path is read from ModelCheckpoint later.
        self._saving.append(trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_checkpoints(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._finish(trainer)  # what the run showed before it crashed is worth keeping

    # ------------------------------------------------------------------------- inside

    def _finish(self, trainer: pl.Trainer) -> None:
        if self.session is None or self._finished:
            return
        self._finished = True
        self._note_checkpoints(trainer)
        self.session.finish(self.folder, self.formats if self.folder is not None else ())

    def _note_checkpoints(self, trainer: pl.Trainer) -> None:
        """Paths ModelCheckpoint wrote since the last look, at the step they were saved."""
        if self.session is None or not self._saving:
            return
        step = self._saving[-1]
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            paths = [
                getattr(callback, "_last_checkpoint_saved", ""),
                callback.last_model_path,
                *callback.best_k_models,
            ]
            for path in paths:
                if path and str(path) not in self._noted and Path(path).exists():
                    self._noted.add(str(path))
                    self.session.note_checkpoint(step, str(path))
        self._saving = []


class _Optimizers:
    """Several optimizers seen as one: the session only asks which tensors they hold."""

    def __init__(self, optimizers: list[Any]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]


def _loss_of(outputs: Any) -> Any:
    """The loss `training_step` returned: a tensor, or the "loss" of a dict."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if hasattr(outputs, "detach") and outputs.numel() == 1:
        return outputs
    return None


def _step_loss(losses: list[Any], divided_by: int) -> float | None:
    """One optimizer step's loss: the mean of its batches' losses.

    Under automatic optimization Lightning hands each batch's loss divided by
    `accumulate_grad_batches` (the last, shorter group of an epoch too), so they are
    multiplied back; `training_step`'s own return values (manual optimization) are not.
    """
    if not losses:
        return None
    return sum(float(v) for v in losses) * divided_by / len(losses)


def _epoch(trainer: pl.Trainer, batch_idx: int) -> float:
    batches = trainer.num_training_batches
    if isinstance(batches, int | float) and math.isfinite(batches) and batches > 0:
        return trainer.current_epoch + min(1.0, (batch_idx + 1) / batches)
    return float(trainer.current_epoch)
