"""The Run: every artifact of one check, loaded once, with the statistics rules read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diag.errors import DiagError
from diag.loaders.checkpoint import Checkpoint
from diag.loaders.logs.curves import TrainingLog
from diag.loaders.splits.model import Split
from diag.memory import give_back
from diag.probe import Probe
from diag.progress import Advance, Progress
from diag.stats import UpdateStats

# Why a rule was skipped, by the artifact it needed.
MISSING_REASONS = {
    "checkpoint": "needs a checkpoint",
    "init": "needs --init (the checkpoint saved before training)",
    "updates": "needs --init (the checkpoint saved before training)",
    "initial": "needs --init, or a checkpoint saved at step 0",
    "logs": "needs --logs (the run's training logs)",
    "logs|checkpoint": "needs --logs, or a checkpoint that records what it monitored",
    "splits": "needs --split NAME=PATH",
    "leakage": "needs --split NAME=PATH",
    "contamination": "needs --split NAME=PATH",
    "probe": "needs --model and --batch",
    "probe_init": "needs --model, --batch and --init",
    "activations": "needs --model and --batch",
    "gradients": "needs --model and --batch (with targets)",
    "checkpoint|activations": "needs a checkpoint, or --model and --batch",
    "gradients_live": "needs a live run (diag.Monitor or a training callback)",
}

# The flag that would supply each input, for the one-line summary of skipped rules.
MISSING_FLAGS = {
    "checkpoint": "CHECKPOINT",
    "init": "--init", "updates": "--init", "initial": "--init",
    "logs": "--logs", "logs|checkpoint": "--logs",
    "splits": "--split", "leakage": "--split", "contamination": "--split",
    "probe": "--model/--batch", "probe_init": "--model/--batch",
    "activations": "--model/--batch", "gradients": "--model/--batch",
    "checkpoint|activations": "CHECKPOINT",
    "gradients_live": "a live run",
}  # fmt: skip


# Work several rules share, computed once on first use: the name it has in the timings
# and on the progress bar, where it is shown like a rule (it sits outside every rule's timer).
SHARED_WORK = {"gradients": "probe: gradients", "activations": "probe: activations"}


@dataclass
class Run:
    checkpoint: Checkpoint | None = None
    init: Checkpoint | None = None
    # Every checkpoint of a run folder, oldest first (the last is `checkpoint`), and
    # whether `init` is only the earliest of them rather than the weights before training.
    history: list[Checkpoint] | None = None
    init_is_reference: bool = False
    trajectories: Any = None
    updates: dict[str, UpdateStats] | None = None
    logs: list[TrainingLog] | None = None
    splits: dict[str, Split] | None = None
    # Where the data rules' stages run (diag.data_engines): None is this process.
    engine: Any = None
    quiet: bool = True
    probe: Probe | None = None
    # Gradient norms recorded while the model trained (diag.live); None after the fact.
    gradients_live: Any = None
    _activations: Any = field(default=None, repr=False)
    _gradients: Any = field(default=None, repr=False)
    _leakage: LeakageReport | None = field(default=None, repr=False)
    _contamination: Any = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    _failed: dict[str, Exception] = field(default_factory=dict, repr=False)
    # Seconds each piece of shared work took (SHARED_WORK's labels), in the order it ran,
    # and who to tell when one starts (the engine's progress bar).
    work_timings: dict[str, float] = field(default_factory=dict, repr=False)
    on_work: Callable[[str], None] | None = field(default=None, repr=False)

    @property
    def initial(self) -> Checkpoint | None:
        """The untrained weights: --init, or a checkpoint saved at step 0."""
        if self.init is not None and (not self.init_is_reference or self.init.is_initial):
            return self.init
        if self.checkpoint is not None and self.checkpoint.is_initial:
            return self.checkpoint
        return None

    @property
    def leakage(self) -> LeakageReport | None:
        """Exact and near copies between and within the splits, computed on first use."""
        if self._leakage is None and self.splits:
            if self.engine is not None:
                self._leakage = self.engine.analyse(self.splits, quiet=self.quiet)
            else:
                self._leakage = analyse_splits(self.splits, quiet=self.quiet)
            give_back()
        return self._leakage

    @property
    def contamination(self) -> Any:
        """Evaluation text found in the training split (diag.contamination), computed on
        first use for each set of options and kept for the rest of the check."""
        if self._contamination is None and self.splits:
            from diag.contamination import ContaminationCheck

            # The same engine as the leakage stages: the training split is scanned where
            # the splits are read (None: in this process).
            self._contamination = ContaminationCheck(
                self.splits, quiet=self.quiet, engine=self.engine
            )
        return self._contamination

    @property
    def activations(self) -> Any:
        """Which units fire and which saturate on the batch (one forward pass, on demand)."""
        if self._activations is None and self.probe is not None:
            from diag.activations import record_activations

            self._activations = self._timed("activations", record_activations, self.probe)
        return self._activations

    @property
    def gradients(self) -> Any:
        """Autograd against finite differences for every parameter (on demand)."""
        if self._gradients is None and self.probe is not None and self.probe.loss_fn is not None:
            from diag.gradients import check_gradients

            self._gradients = self._timed("gradients", check_gradients, self.probe)
        return self._gradients

    def _timed(self, name: str, compute: Callable[..., Any], *args: Any) -> Any:
        label = SHARED_WORK[name]
        if self.on_work is not None:
            self.on_work(label)
        start = time.perf_counter()
        try:
            return compute(*args)
        finally:  # a failed computation still cost its time
            self.work_timings[label] = round(time.perf_counter() - start, 6)

    @property
    def probe_init(self) -> Probe | None:
        """The probe, when it also has the initial weights (for init-loss)."""
        return self.probe if self.probe is not None and self.probe.initial is not None else None

    def available(self, name: str) -> bool:
        """Whether an input is there; `a|b` asks for either.

        Computing a lazy input (leakage, activations, gradients) may fail. An InputError is
        the input's fault and ends the run; anything else is raised here for each rule that
        needs the input (the engine reports it as that rule's error), computed only once.
        Never `getattr(..., None)`: it would turn an AttributeError deep inside the
        computation into "input missing" and skip the rules in silence.
        """
        for n in name.split("|"):
            if n in self._failed:
                raise self._failed[n]
            if not hasattr(type(self), n) and n not in self.__dataclass_fields__:
                continue  # an input this version of diag does not know
            try:
                value = getattr(self, n)
            except DiagError:
                raise
            except Exception as exc:
                self._failed[n] = exc
                raise
            if value is not None:
                return True
        return False

    def artifact(self, name: str) -> Any:
        # A reference that is only the earliest checkpoint of a run is not the untrained
        # model: rules that judge --init (NaN in it, constant from the start) leave it be,
        # and the findings on the last checkpoint are dated by diag.history instead.
        if name == "init" and self.init_is_reference:
            return None
        return getattr(self, name)

    def members(self) -> list[Checkpoint]:
        """The checkpoints in training order: the reference (--init, or the earliest of the
        run) first, the checkpoint under check last."""
        seq = list(self.history or ([self.checkpoint] if self.checkpoint is not None else []))
        if self.init is not None and (not seq or seq[0] is not self.init):
            seq.insert(0, self.init)
        return seq

    def total_bytes(self) -> int:
        return sum(i.nbytes for c in self.members() for i in c.infos())

    def prepare(self, progress: Advance | None = None) -> None:
        """One pass over the tensors of every checkpoint: statistics of each, movement since
        the reference, and each tensor's trajectory when the run has three or more.

        Each file is read exactly once, a block of rows of each tensor at a time, side by
        side with the same rows of the other checkpoints (see diag.history).
        """
        from diag.history import stream_checkpoints

        members = self.members()
        if not members:
            return
        updates, self.trajectories = stream_checkpoints(members, progress)
        self.updates = updates if self.init is not None else None


@dataclass
class LeakageReport:
    """What the leakage engine found, for the [data] rules and the report."""

    splits: dict[str, Split]
    comparisons: dict[tuple[str, str], Any]  # (a, b) -> diag.leakage.SplitLeakage
    within: dict[str, list[Any]]  # split -> groups (index arrays) of identical samples


def analyse_splits(splits: dict[str, Split], quiet: bool = True) -> LeakageReport:
    """Read every split once (hashes and sketches), then compare every pair of the same kind.

    The training split is compared first and always as the first of a pair, so findings
    read "test sample j copies train sample i".
    """
    from diag.leakage import compare_splits, digest_split, exact_groups
    from diag.rules.data import split_pairs

    total = sum(len(s) for s in splits.values())
    with sample_progress(quiet, total) as advance:
        digests, done = {}, 0
        for name, split in splits.items():
            base = done

            def step(count: int, _: int, base: int = base) -> None:
                if advance is not None:
                    advance(base + count, total)

            digests[name] = digest_split(split, progress=step)
            done += len(split)
        comparisons = {
            (a, b): compare_splits(digests[a], digests[b])
            for a, b in split_pairs(splits)
            if digests[a].kind == digests[b].kind
        }
    within = {name: exact_groups(d) for name, d in digests.items()}
    return LeakageReport(splits, comparisons, within)


def sample_progress(quiet: bool, total: int) -> Any:
    return Progress(quiet or total < 50_000, total, "hashing samples", unit="samples")
