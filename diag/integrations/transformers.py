"""diag in a Hugging Face Trainer run: `DiagCallback`, an adapter over `LiveSession`.

    from diag.integrations.transformers import DiagCallback

    trainer = transformers.Trainer(model, args, train_dataset=..., eval_dataset=...,
                                   callbacks=[DiagCallback(every_n_steps=100)])
    trainer.train()

The Trainer's callbacks never see a step's loss, and the one it logs has NaN and
infinity filtered out (`logging_nan_inf_filter`), so the callback reads the loss where
the model returns it: a forward hook takes `outputs.loss` of each training forward pass
(labels given) and adds up the micro-batches of one optimizer step. A model that
returns no loss (a `compute_loss` of your own) falls back to the `loss` of `on_log`,
every `logging_steps`, which shows a NaN only with `logging_nan_inf_filter=False`.

What runs when:
- `on_pre_optimizer_step`: the gradient norms, when a record is due (after the
  Trainer clipped them to `max_grad_norm`: a growth shows up to that bound);
- `on_step_end`: the step's loss, the checks that are due, and the stop
  (`control.should_training_stop`; under torch.distributed every rank agrees first);
- `on_evaluate`: the evaluation metrics (`eval_loss`, ...); a finding there stops the
  run at the next step;
- `on_save`: the checkpoint folder, so a stop names the last clean one;
- `on_train_end`: the final check and the reports in `output` (default
  `args.output_dir`), on the main process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from diag.integrations import echo_and_log
from diag.live import LiveSession
from diag.model import Result
from diag.monitor import DEFAULT_FORMATS, agree_to_stop

# What `evaluate` adds beside the metrics: timings and the epoch, not curves of the model.
NOT_METRICS = ("_runtime", "_per_second", "epoch")


class DiagCallback(TrainerCallback):
    """Runs diag's rules while a `transformers.Trainer` trains; stops it on a finding.

    `stop_on` ("error", "warning" or None: never stop), `every_n_steps` (how often the
    parameter, gradient and activation checks run) and `**options` are
    `diag.live.LiveSession`'s. The reports (`formats` of json, sarif, junit, html) go
    to `output`, by default the Trainer's `output_dir`.
    """

    def __init__(
        self,
        stop_on: str | None = "error",
        every_n_steps: int = 100,
        output: str | Path | None = None,
        formats: tuple[str, ...] = DEFAULT_FORMATS,
        **options: Any,
    ) -> None:
        self.stop_on, self.every_n_steps = stop_on, every_n_steps
        self.output, self.formats = output, tuple(formats)
        self.options = options
        self.session: LiveSession | None = None
        self.stopped_at: int | None = None
        self._world = 1
        self._hook: Any = None
        self._losses: list[Any] = []
        self._summed = False  # the model divided each micro-batch's loss by the step's tokens
        self._forward_losses = False
        self._finished = False

    @property
    def result(self) -> Result:
        """The findings so far (after training: the final check's)."""
        return self.session.result if self.session is not None else Result(())

    # ------------------------------------------------------------- Trainer events

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        options = dict(self.options)
        options["echo"] = echo_and_log(options.get("echo"))
        self._world = _world_size()
        self.session = LiveSession(
            model,
            optimizer,
            stop_on=self.stop_on,
            every_n_steps=self.every_n_steps,
            is_main=state.is_world_process_zero,
            **options,
        )
        self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        self.stopped_at = None
        self._losses, self._forward_losses, self._finished = [], False, False

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        session = self.session
        step = state.global_step + 1  # the number on_step_end gives this step
        if session is not None and step % session.grad_every == 0:
            session.record_gradients(step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        session = self.session
        if session is None:
            return
        step = state.global_step
        session.on_step(step, self._step_loss(args), state.epoch)
        if agree_to_stop(session, step, self._world) and self.stopped_at is None:
            self.stopped_at = step
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        session = self.session
        if session is None or self._forward_losses or not logs or "loss" not in logs:
            return
        # A stop found here waits for the next on_step_end, where every rank agrees.
        session.log_value("train_loss", logs["loss"], state.global_step, state.epoch)
        if not math.isfinite(session.series["train_loss"].values[-1]):
            session.check(state.global_step, kinds=("curves",))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.session is None or not metrics:
            return
        curves = {k: v for k, v in metrics.items() if not k.endswith(NOT_METRICS)}
        self.session.on_eval(curves, state.global_step, state.epoch)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.session is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.session.note_checkpoint(state.global_step, str(folder))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.session is None or self._finished:
            return
        self._finished = True
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        folder = self.output if self.output is not None else args.output_dir
        self.session.finish(folder, self.formats if folder is not None else ())

    # ------------------------------------------------------------------------- inside

    def _capture(self, module: Any, args: Any, kwargs: Mapping[str, Any], output: Any) -> None:
        if not module.training:
            return  # evaluation passes have labels too
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None or not hasattr(loss, "detach") or loss.numel() != 1:
            return
        self._losses.append(loss.detach())
        self._summed = kwargs.get("num_items_in_batch") is not None
        self._forward_losses = True

    def _step_loss(self, args: TrainingArguments) -> float | None:
        """The optimizer step's loss from its micro-batches' forward passes.

        A model given `num_items_in_batch` divides each micro-batch's summed loss by the
        whole step's token count (over every rank with `average_tokens_across_devices`),
        so the parts add up to the step's mean (over the ranks: this rank's share);
        otherwise each is a mean of its own and they are averaged.
        """
        losses, self._losses = self._losses, []
        if not losses:
            return None
        total = sum(float(v) for v in losses)
        if not self._summed:
            return total / len(losses)
        if self._world > 1 and args.average_tokens_across_devices:
            total *= self._world
        return total


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
