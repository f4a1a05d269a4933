"""The Run: every artifact of one check, loaded once, with the statistics rules read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diag.errors import DiagError
from diag.loaders.blocks import Buffer, TensorSource
from diag.loaders.checkpoint import Checkpoint
from diag.loaders.logs.curves import TrainingLog
from diag.loaders.splits.model import Split
from diag.memory import give_back
from diag.probe import Probe
from diag.progress import Advance, Progress
from diag.stats import (
    StatsAccumulator,
    TensorStats,
    UpdateAccumulator,
    UpdateStats,
    can_compare,
)

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
    "probe": "needs --model and --batch",
    "probe_init": "needs --model, --batch and --init",
    "activations": "needs --model and --batch",
    "gradients": "needs --model and --batch (with targets)",
    "checkpoint|activations": "needs a checkpoint, or --model and --batch",
}


@dataclass
class Run:
    checkpoint: Checkpoint | None = None
    init: Checkpoint | None = None
    updates: dict[str, UpdateStats] | None = None
    logs: list[TrainingLog] | None = None
    splits: dict[str, Split] | None = None
    quiet: bool = True
    probe: Probe | None = None
    _activations: Any = field(default=None, repr=False)
    _gradients: Any = field(default=None, repr=False)
    _leakage: LeakageReport | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    _failed: dict[str, Exception] = field(default_factory=dict, repr=False)

    @property
    def initial(self) -> Checkpoint | None:
        """The untrained weights: --init, or the checkpoint itself when saved at step 0."""
        if self.init is not None:
            return self.init
        if self.checkpoint is not None and self.checkpoint.is_initial:
            return self.checkpoint
        return None

    @property
    def leakage(self) -> LeakageReport | None:
        """Exact and near copies between and within the splits, computed on first use."""
        if self._leakage is None and self.splits:
            self._leakage = analyse_splits(self.splits, quiet=self.quiet)
            give_back()
        return self._leakage

    @property
    def activations(self) -> Any:
        """Which units fire and which saturate on the batch (one forward pass, on demand)."""
        if self._activations is None and self.probe is not None:
            from diag.activations import record_activations

            self._activations = record_activations(self.probe)
        return self._activations

    @property
    def gradients(self) -> Any:
        """Autograd against finite differences for every parameter (on demand)."""
        if self._gradients is None and self.probe is not None and self.probe.loss_fn is not None:
            from diag.gradients import check_gradients

            self._gradients = check_gradients(self.probe)
        return self._gradients

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
        return getattr(self, name)

    def total_bytes(self) -> int:
        return sum(
            i.nbytes for c in (self.checkpoint, self.init) if c is not None for i in c.infos()
        )

    def prepare(self, progress: Advance | None = None) -> None:
        """One pass over the tensors: statistics of each, and movement since --init.

        Each final tensor is read once, in blocks of rows, alongside the same rows of its
        initial counterpart when there is one: both files are read exactly once and, for
        tensors stored as a plain run of bytes, only a block of each is in memory.
        """
        done = 0
        total = self.total_bytes()
        init_infos = {i.name: i for i in self.init.infos()} if self.init else {}
        if self.init is not None:
            self.updates = {}
        final_buf, init_buf = Buffer(), Buffer()
        if self.checkpoint is not None:
            for info in self.checkpoint.infos():
                before = init_infos.pop(info.name, None)
                source = TensorSource(self.checkpoint.table, info)
                if before is None or self.init is None:
                    self.checkpoint.stats[info.name] = _stats(source, final_buf)
                    done += info.nbytes
                else:
                    twin = TensorSource(self.init.table, before)
                    final_stats, init_stats, update = _paired_stats(
                        source, twin, final_buf, init_buf
                    )
                    self.checkpoint.stats[info.name] = final_stats
                    self.init.stats[info.name] = init_stats
                    if update is not None and self.updates is not None:
                        self.updates[info.name] = update
                    done += info.nbytes + before.nbytes
                if progress:
                    progress(done, total)
        if self.init is not None:
            for info in init_infos.values():  # tensors only the initial checkpoint has
                self.init.stats[info.name] = _stats(TensorSource(self.init.table, info), init_buf)
                done += info.nbytes
                if progress:
                    progress(done, total)
        del final_buf, init_buf
        give_back()


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


def _stats(source: TensorSource, buffer: Buffer) -> TensorStats:
    acc = StatsAccumulator(source.info)
    for _, block in source.blocks(source.default_rows_per_block(), buffer):
        acc.add(block)
    stats = acc.finish(source.units)
    source.release()
    return stats


def _paired_stats(
    final: TensorSource, init: TensorSource, final_buf: Buffer, init_buf: Buffer
) -> tuple[TensorStats, TensorStats, UpdateStats | None]:
    """Statistics of a tensor and its initial twin, and the movement between them."""
    if not can_compare(init.info, final.info):
        return _stats(final, final_buf), _stats(init, init_buf), None
    acc, init_acc = StatsAccumulator(final.info), StatsAccumulator(init.info)
    update = UpdateAccumulator(final.info.name)
    # Matching blocks need both tensors blocked alike; otherwise each comes whole.
    rows = final.default_rows_per_block()
    if not (final.blockable and init.blockable):
        rows = final.n_rows
    pairs = zip(final.blocks(rows, final_buf), init.blocks(rows, init_buf), strict=True)
    for (_, new), (_, old) in pairs:
        acc.add(new)
        init_acc.add(old)
        update.add(old, new)
    result = acc.finish(final.units), init_acc.finish(init.units), update.finish()
    final.release()
    init.release()
    return result
