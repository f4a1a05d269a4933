"""diag while a model trains: the same rules as `diag check`, fed in memory.

`LiveSession` is the one core the framework callbacks (`diag.integrations.lightning`,
`diag.integrations.transformers`) and the plain-loop `Monitor` adapt. It keeps what the
run has produced so far, small whatever the model's size:

- every logged value as a growing series (the loss of each step, evaluation metrics);
- per-tensor gradient norms, recorded every few steps (`diag.live_history`);
- a sample of each weight from the last check, for the movement between checks.

What runs when:
- each step: the loss is looked at (a non-finite one runs the curve rules at once);
- each evaluation: the curve rules (divergence becomes certain at an evaluation);
- every `every_n_steps`: the curve rules, the parameter rules on the live model
  (statistics streamed one tensor at a time), the gradient rules, and the activation
  rules on one sampled forward pass of the training itself.

A check never kills the run: an exception inside one is recorded once in the Result and
training goes on; a check predicted to cost more than `budget` of the training time
since the last one is skipped, and the Result says so.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.live_history import GradientHistory, Sample, movement, take_sample
from diag.model import Finding, Result, RuleError, Severity
from diag.telling import FACT_RULES, Teller, key_of

LIVE_SOURCE = "<live model>"
LOG_SOURCE = "<live log>"
# The parameter rules that mean the same mid-run as at the end. `init-scale` and
# `noisy-kernels` judge the start and the end of training, so they wait for the final check.
LIVE_PARAM_RULES = (
    "nonfinite-parameter", "constant-parameter", "symmetric-units", "dead-units",
    "update-ratio", "stuck-parameter", "lora-stuck",
)  # fmt: skip
# Kinds whose movement between checks is judged. An embedding moves only in the rows of
# the tokens an interval saw, so its movement over one interval says nothing of its
# learning rate (it is judged on the whole run, at the end).
INTERVAL_KINDS = ("conv", "linear")
FORMAT_FILES = {"json": "diag.json", "sarif": "diag.sarif", "junit": "diag.junit.xml",
                "html": "diag.html"}  # fmt: skip


class TrainingStopped(RuntimeError):
    """Raised by `Monitor.step` in a plain loop when a finding at `stop_on` appears."""

    def __init__(self, message: str, findings: tuple[Finding, ...]) -> None:
        super().__init__(message)
        self.findings = findings


@dataclass
class _Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)


class LiveTable:
    """The live model's state as a ParamTable, one tensor at a time: a tensor on the CPU
    is read in place (the statistics only read it, and a check runs between steps), any
    other is copied to the CPU, so the pass never holds more than one extra tensor."""

    format = "live"

    def __init__(self, model: Any) -> None:
        self.path = Path(LIVE_SOURCE)
        self._tensors = dict(model.state_dict(keep_vars=True))

    def infos(self) -> list[Any]:
        from diag.loaders.table import TensorInfo

        return [
            TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in self._tensors.items()
        ]

    def read(self, name: str) -> Any:
        tensor = self._tensors[name].detach()
        if tensor.device.type == "cpu" and tensor.is_contiguous():
            return tensor
        return tensor.to("cpu", copy=True).contiguous()

    def close(self) -> None:
        self._tensors = {}


@dataclass
class StopDecision:
    """Why the run should stop: the findings at or above `stop_on`, and where."""

    step: int
    findings: tuple[Finding, ...]
    last_clean: str | None

    @property
    def message(self) -> str:
        first = self.findings[0]
        where = f"; last clean checkpoint: {self.last_clean}" if self.last_clean else ""
        more = f" (+{len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        return (
            f"diag: stopping at step {self.step}: {first.rule} {first.location.object}: "
            f"{first.message}{more}{where}"
        )


class LiveSession:
    """The shared core: feed it steps, evaluations and gradients; it runs the rules.

    `stop_on` is "error", "warning" or None (never stop); `every_n_steps` how often the
    parameter, gradient and activation checks run; `grad_every` how often gradient
    norms are recorded (default: ten records per check interval); `budget` the share of
    training time diag may take (its checks, their sampled forward pass, the gradient
    records and the per-step look at the loss); `memory_budget` the bytes one tensor's
    copy may take (the parameter checks read one tensor at a time; None: no limit). `echo`
    receives each new finding's line (default: stderr); `is_main` is False on the ranks
    of a distributed run that do not check.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        *,
        stop_on: str | None = "error",
        every_n_steps: int = 100,
        grad_every: int | None = None,
        activations: bool = True,
        select: list[str] | None = None,
        ignore: list[str] | None = None,
        rule_options: Mapping[str, Mapping[str, Any]] | None = None,
        budget: float = 0.005,
        memory_budget: int | None = None,
        echo: Callable[[str], None] | None = None,
        is_main: bool = True,
    ) -> None:
        if stop_on not in ("error", "warning", None):
            raise ValueError(f"stop_on must be 'error', 'warning' or None, not {stop_on!r}")
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        self.model, self.optimizer = model, optimizer
        self.stop_on = Severity.parse(stop_on) if stop_on else None
        self.every_n_steps = every_n_steps
        self.grad_every = grad_every or max(1, every_n_steps // 10)
        self.activations_on = activations
        self.budget, self.memory_budget = budget, memory_budget
        self._largest: tuple[int, str] | None = None
        self.echo = echo or (lambda line: sys.stderr.write(line + "\n"))
        self.is_main = is_main
        self._specs = _live_specs(select or [], ignore or [])
        self._options = {k: dict(v) for k, v in (rule_options or {}).items()}
        self.series: dict[str, _Series] = {}
        self._loss_series: _Series | None = None
        self.gradients = GradientHistory(LIVE_SOURCE)
        self._samples: dict[str, Sample] = {}
        self._first: dict[str, Sample] = {}
        self._first_step: int | None = None
        self._activations: Any = None
        self._arm_activations = False
        self._recording: Any = None
        self._explicit = False  # an adapter brackets the sampled forward pass itself
        self._params: list[tuple[str, Any]] | None = None
        self._hooks: list[Any] = []
        self.teller = Teller(functools.partial(_interval_later, every_n_steps))
        self.events: list[tuple[int, Finding]] = []  # (step, finding) as each was first told
        self.errors: dict[str, RuleError] = {}
        self.notes: list[str] = []
        self.skipped_checks = 0
        self.checkpoints: list[tuple[int, str]] = []
        self.last_clean_step: int | None = None
        self.stop: StopDecision | None = None
        self.step_count = 0
        self._last_grad_step: int | None = None
        self._last_check_step: int | None = None
        # What the checks cost, against `budget`: the last check cycle (its rules and the
        # forward pass it sampled), and the gradient records since.
        self._check_seconds = 0.0
        self._grad_seconds = 0.0
        self._sample_seconds = 0.0
        self._step_seconds = 0.0  # the per-step path (the loss), between checks
        self._recording_since = 0.0
        self.check_seconds: list[float] = []  # wall time of every check, for the bench
        self._train_clock = time.perf_counter()
        self._checks_run = 0
        self.result: Result = Result(())

    # ---------------------------------------------------------------- what training feeds

    def log_value(self, name: str, value: Any, step: int, epoch: float | None = None) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = _Series()
        series.steps.append(int(step))
        series.values.append(_as_float(value))
        series.epochs.append(math.nan if epoch is None else float(epoch))

    def on_step(self, step: int, loss: Any = None, epoch: float | None = None) -> None:
        """One optimizer step done: its loss, and the checks that are due."""
        if self.model is None:
            return  # finished: nothing more is checked
        start = time.perf_counter()
        self.step_count = step
        value = math.nan
        if loss is not None:
            # Inlined log_value: on a 1.5 ms step this path is a third of the monitor's cost.
            series = self._loss_series
            if series is None:
                series = self._loss_series = self.series.setdefault("train_loss", _Series())
            value = _as_float(loss)
            series.steps.append(step)
            series.values.append(value)
            series.epochs.append(math.nan if epoch is None else float(epoch))
        if not self.is_main:
            return
        nonfinite = loss is not None and not math.isfinite(value)
        every = self.every_n_steps
        if step % self.grad_every and step % every and (step + 1) % every and not nonfinite:
            # Nothing due: what this step cost is paid from the budget too, so on a model
            # whose step is as short as this path is long the checks thin out instead.
            self._step_seconds += time.perf_counter() - start
            return
        if step % self.grad_every == 0 and self._last_grad_step != step and self._records_fit():
            self.record_gradients(step)
        if nonfinite:
            self.check(step, kinds=("curves",))
        if step % self.every_n_steps == 0:
            self.check(step, kinds=("curves", "params", "gradients", "activations"))
        # The sampled forward pass costs several plain ones: only before a check that runs.
        armed = (
            (step + 1) % self.every_n_steps == 0 and self.activations_on and not self._over_budget()
        )
        if armed and not self._explicit and not self._hooks:
            # Hooks only around the sampled forward pass: the other steps run unhooked.
            self._hooks = [
                self.model.register_forward_pre_hook(self._before_forward),
                self.model.register_forward_hook(self._after_forward),
            ]
        self._arm_activations = armed

    def on_eval(self, metrics: Mapping[str, Any], step: int, epoch: float | None = None) -> None:
        for name, value in metrics.items():
            try:
                self.log_value(name, value, step, epoch)
            except (TypeError, ValueError):
                continue  # not a number (a string, a list): not a curve
        if self.is_main:
            self.check(step, kinds=("curves",))

    def record_gradients(self, step: int) -> None:
        """Per-tensor gradient norms now (call after backward, before zero_grad)."""
        if not self.is_main:
            return
        start = time.perf_counter()
        try:
            if self._params is None:  # listed once per check, not on every record
                self._params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                self.gradients.held = self._held()
            self.gradients.record(step, self._params)
            self._last_grad_step = step
        except Exception as exc:  # recording must never be why a run dies
            self._error("gradient record", exc)
        self._grad_seconds += time.perf_counter() - start

    def note_checkpoint(self, step: int, path: str) -> None:
        """A checkpoint was saved: named as the last clean one when no finding follows."""
        self.checkpoints.append((int(step), str(path)))

    # ------------------------------------------------------- distributed data parallel

    def vote(self) -> bool:
        """This rank's vote to stop: rank 0's decision, or a non-finite loss on another rank.

        Only rank 0 checks, but a NaN loss on any rank is the run's (its loss is the mean
        over ranks), and the gradients all-reduced from it poison every rank's weights.
        """
        if self.stop is not None:
            return True
        if self.is_main or self.stop_on is None:
            return False
        if not any(spec.name == "loss-nonfinite" for spec in self._specs):
            return False
        series = self.series.get("train_loss")
        return bool(
            series and series.steps[-1] == self.step_count and not math.isfinite(series.values[-1])
        )

    def settle(self, step: int, stopping: bool) -> None:
        """After the ranks agreed to stop: rank 0 gives the reason when another rank saw it.

        Another rank votes only for a non-finite loss, so rank 0 records the run's loss at
        this step as NaN and its curve rules name it; the Result says where it was seen.
        """
        if not stopping or not self.is_main or self.stop is not None:
            return
        self.notes.append(f"the non-finite loss at step {step} was seen on another rank")
        series = self.series.get("train_loss")
        if series and series.steps[-1] == step:
            series.values[-1] = math.nan
        else:
            self.log_value("train_loss", math.nan, step)
        self.check(step, kinds=("curves",))

    # ---------------------------------------------------------------------- the checks

    def check(self, step: int, kinds: tuple[str, ...]) -> list[Finding]:
        """Run the rules of `kinds` now; return the findings not seen before."""
        if not self.is_main:
            return []
        heavy = any(k != "curves" for k in kinds)
        if heavy and self._over_budget():
            # Skipped whole: the loss is still looked at every step, and evaluations still
            # run the curve rules; the next check comes once training has earned it.
            self.skipped_checks += 1
            if self.skipped_checks == 1:
                self._note(
                    f"the check at step {step} was skipped: it would take more than "
                    f"{self.budget:.0%} of the training time (later skips are counted)"
                )
            return []
        if "params" in kinds and self._too_big():
            kinds = tuple(k for k in kinds if k != "params")
        start = time.perf_counter()
        if heavy:
            self._params = None  # a layer frozen or unfrozen since is seen from now on
        try:
            result, _ = self._run(kinds, final=False)
        except Exception as exc:
            self._error("live check", exc)
            return []
        finally:
            spent = time.perf_counter() - start
            self.check_seconds.append(spent)
            if heavy:
                self._check_seconds = spent + self._sample_seconds
                self._train_clock = time.perf_counter()
                self._grad_seconds = self._sample_seconds = self._step_seconds = 0.0
        self._checks_run += 1
        new = self._absorb(result, step)
        self._decide(step, new, heavy)
        return new

    def finish(self, output: str | Path | None = None, formats: tuple[str, ...] = ()) -> Result:
        """The final check: every rule the live inputs allow, as `diag check` reports it.

        With `output` the reports are written there (`formats`: json, sarif, junit, html).
        """
        if not self.is_main:
            self._release()
            return self.result
        kinds = ("curves", "params", "gradients", "activations")
        if self._too_big():
            kinds = tuple(k for k in kinds if k != "params")
        try:
            result, run = self._run(kinds, final=True)
        except Exception as exc:
            self._error("final check", exc)
            result, run = self.result, None
        final = {key_of(f): f for f in result.findings}
        # What the whole run shows, as `diag check` would see it at the end; a fact told
        # earlier stays (NaN weights that a later step overwrote were still NaN then).
        told = self.teller.told
        self.teller.finish(result.findings)
        self.teller.told = {
            **{k: f for k, f in told.items() if k[0] in FACT_RULES and k not in final},
            **final,
        }
        self.result = self._result(result)
        self._unhook()
        if output is not None and formats:
            self.write(Path(output), formats, run)
        self._release()
        return self.result

    def _release(self) -> None:
        """Let go of the model once the run is over: a DDP model kept alive here until the
        interpreter exits outlives its process group, and gloo aborts the process."""
        self._unhook()
        self.model = self.optimizer = None
        self._params = None

    def write(self, folder: Path, formats: tuple[str, ...], run: Any = None) -> list[Path]:
        from diag.api import write_atomic
        from diag.reports import render

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            path = folder / FORMAT_FILES[fmt]
            try:
                write_atomic(path, render(fmt, self.result, run))
                written.append(path)
            except Exception as exc:
                self._error(f"{fmt} report", exc)
        return written

    # ------------------------------------------------------------------------- inside

    def _run(self, kinds: tuple[str, ...], final: bool) -> tuple[Result, Any]:
        from diag.engine import run_rules
        from diag.run import Run

        run = Run(quiet=True)
        groups: set[str] = set()
        if "curves" in kinds and self.series:
            run.logs = [self._training_log()]
            groups.add("curves")
        if "params" in kinds:
            self._live_checkpoint(run, final)
            groups.update(("params",))
        if "gradients" in kinds and self.gradients.steps:
            run.gradients_live = self.gradients
            groups.add("live")
        if "activations" in kinds and self._activations is not None:
            run._activations = self._activations
            groups.add("grads")  # its rules that read only activations (saturation)
        specs = [s for s in self._specs if s.group in groups]
        # Of the probe's rules, only those that read nothing but the activations can run.
        specs = [s for s in specs if s.group != "grads" or s.needs == ("activations",)]
        if not final:
            specs = [s for s in specs if s.group != "params" or s.name in LIVE_PARAM_RULES]
        result = run_rules(run, specs, {"live": True}, self._options)
        return result, run

    def _live_checkpoint(self, run: Any, final: bool) -> None:
        from diag.history import stream_checkpoints
        from diag.loaders.checkpoint import Checkpoint, CheckpointMeta

        table = LiveTable(self.model)
        checkpoint = Checkpoint(LIVE_SOURCE, table, CheckpointMeta(global_step=self.step_count))
        stream_checkpoints([checkpoint])
        updates = {}
        for name, tensor in table._tensors.items():
            stats = checkpoint.stats.get(name)
            if stats is None or not tensor.is_floating_point():
                continue
            sample = take_sample(name, tensor)
            # Mid-run, the movement since the last check; at the end, over the whole
            # run watched (since the first check), as `diag check --init` would see it.
            before = (self._first if final else self._samples).get(name)
            moved_on = final and self._first_step is not None and self.step_count > self._first_step
            if (
                before is not None
                and before.numel == sample.numel
                and (moved_on or (not final and stats.kind in INTERVAL_KINDS))
            ):
                updates[name] = movement(name, before, sample)
            if not final:
                self._samples[name] = sample
                self._first.setdefault(name, sample)
        if not final and self._first_step is None:
            self._first_step = self.step_count
        run.checkpoint = checkpoint
        run.updates = updates or None
        table.close()

    def _training_log(self) -> Any:
        import numpy as np

        from diag.loaders.logs.curves import training_log
        from diag.loaders.logs.series import LogRun, Series

        series = {}
        for name, s in self.series.items():
            epochs = np.asarray(s.epochs, dtype=np.float64)
            series[name] = Series(
                name,
                np.asarray(s.steps, dtype=np.int64),
                np.asarray(s.values, dtype=np.float64),
                epochs if np.isfinite(epochs).any() else None,
            )
        return training_log(LogRun(Path(LOG_SOURCE), "live", series))

    def _absorb(self, result: Result, step: int) -> list[Finding]:
        """Take a check's findings: facts at once, judgements once confirmed (a run of
        their rule at least `every_n_steps` later still gives them; an evaluation three
        steps on is no second opinion). See diag.telling."""
        ran = set(result.metadata.get("timings", {}))
        new = self.teller.take(result.findings, ran, step)
        for finding in new:
            self.events.append((step, finding))
            self.echo(_line(finding, step))
        for error in result.errors:
            if error.rule not in self.errors:
                self.errors[error.rule] = error
                self.echo(f"diag: rule {error.rule} failed (training goes on): {error.message}")
        self.result = self._result(result)
        return new

    def _decide(self, step: int, new: list[Finding], heavy: bool) -> None:
        threshold = self.stop_on
        loud = [f for f in new if threshold is not None and f.severity >= threshold]
        if loud and self.stop is None:
            self.stop = StopDecision(step, tuple(loud), self._last_clean())
            self.echo(self.stop.message)
        elif heavy and not any(
            threshold is not None and f.severity >= threshold for f in self.teller.told.values()
        ):
            self.last_clean_step = step

    def _last_clean(self) -> str | None:
        if self.last_clean_step is None:
            return None
        clean = [p for s, p in self.checkpoints if s <= self.last_clean_step]
        return clean[-1] if clean else None

    def _result(self, latest: Result) -> Result:
        """Every finding seen in the run (the latest version of each), and the run's notes."""
        findings = sorted(
            self.teller.told.values(),
            key=lambda f: (-f.severity, f.rule, f.location.artifact, f.location.object),  # type: ignore[operator]
        )
        meta = dict(latest.metadata)
        meta.update(
            {
                "live": {
                    "steps": self.step_count,
                    "checks": self._checks_run,
                    "skipped_checks": self.skipped_checks,
                    "notes": list(self.notes),
                    "stopped_at": self.stop.step if self.stop else None,
                    "events": [
                        {
                            "step": step,
                            "rule": f.rule,
                            "object": f.location.object,
                            "severity": f.severity.label if f.severity else "info",
                        }
                        for step, f in self.events
                    ],
                },
                "generated": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            }
        )
        errors = tuple(self.errors.values())
        return Result(tuple(findings), latest.skipped, errors, meta)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self.echo(f"diag: {text}")

    def _too_big(self) -> bool:
        """Would reading the largest tensor (one copy, on the CPU) pass `memory_budget`?"""
        if self.memory_budget is None:
            return False
        if self._largest is None:
            state = self.model.state_dict(keep_vars=True).items()
            self._largest = max(
                ((t.numel() * t.element_size(), n) for n, t in state), default=(0, "")
            )
        size, name = self._largest
        if size <= self.memory_budget:
            return False
        if not any("memory" in n for n in self.notes):
            self._note(
                f"the parameter checks are skipped: {name} alone takes {size / 2**20:.0f} MiB, "
                f"over the memory budget of {self.memory_budget / 2**20:.0f} MiB"
            )
        return True

    def _over_budget(self) -> bool:
        """Would this check take more than `budget` of the training time since the last?"""
        if self._check_seconds == 0.0:
            return False  # the first check measures what a check costs
        # The gradient records and the per-step path since the last check are paid from
        # the same budget.
        trained = time.perf_counter() - self._train_clock
        spent = self._check_seconds + self._grad_seconds + self._step_seconds
        return spent > self.budget * trained

    def _records_fit(self) -> bool:
        """Gradient records take at most half of the budget the per-step path leaves: on a
        model whose step is as cheap as a record (~40 us for a small CNN), they thin out
        instead of costing 3%."""
        trained = time.perf_counter() - self._train_clock
        return self._grad_seconds <= 0.5 * (self.budget * trained - self._step_seconds)

    def _held(self) -> set[str]:
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if self.optimizer is None:
            return trainable
        ids = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return {n for n, p in self.model.named_parameters() if id(p) in ids and n in trainable}

    def _error(self, where: str, exc: Exception) -> None:
        if where not in self.errors:
            self.errors[where] = RuleError(where, f"{type(exc).__name__}: {exc}")
            self.echo(f"diag: {where} failed (training goes on): {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ sampled activations

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @property
    def activations_due(self) -> bool:
        """Whether the next training forward pass is the one sampled for the activations."""
        return self._arm_activations

    def start_activations(self) -> None:
        """Watch the training forward pass about to run (when one is due).

        The model's own forward hooks do this for a plain loop; an adapter whose framework
        may call a submodule rather than the model (Lightning's `training_step` calling
        `self.net(x)`) brackets the step with this and `finish_activations` instead.
        """
        self._explicit = True
        self._start()

    def finish_activations(self) -> None:
        self._finish()
        self._explicit = False

    def _before_forward(self, module: Any, args: Any) -> None:
        if not self._explicit and module.training:
            self._start()

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        if not self._explicit:
            self._finish()

    def _start(self) -> None:
        if not self._arm_activations or not self.is_main:
            return
        stale = self._recording
        if stale is not None:  # the last sampled forward raised before it ended
            stale.close()
        try:
            from diag.activations import Recording

            self._recording_since = time.perf_counter()
            self._recording = Recording(self.model)
        except Exception as exc:
            self._arm_activations = False
            self._error("activation record", exc)

    def _finish(self) -> None:
        recording = self._recording
        if recording is None:
            return
        self._recording = None
        self._arm_activations = False
        self._unhook()
        self._sample_seconds = time.perf_counter() - self._recording_since
        try:
            self._activations = recording.finish()
        except Exception as exc:
            self._error("activation record", exc)


def _interval_later(every_n_steps: int, first: int, now: int) -> bool:
    """A check at step `now` confirms a judgement first made at step `first`."""
    return now >= first + every_n_steps


def _live_specs(select: list[str], ignore: list[str]) -> list[Any]:
    from diag.registry import load_rules, select_rules

    return select_rules(load_rules(), select, ignore)


def _as_float(value: Any) -> float:
    if type(value) is float:
        return value
    if hasattr(value, "detach"):
        if value.numel() != 1:
            raise ValueError(f"a loss must be a single number, got shape {tuple(value.shape)}")
        return value.item()
    return float(value)


def _line(finding: Finding, step: int) -> str:
    severity = finding.severity.label if finding.severity else "info"
    return (
        f"diag: step {step}: {severity} {finding.rule} {finding.location.object}: {finding.message}"
    )
