"""A run as a sequence of checkpoints: one streaming pass over all of them, each tensor's
trajectory, and the checkpoint where each finding first appears.

The pass reads every checkpoint exactly once. For each tensor, matching blocks of rows
of every checkpoint are read side by side (a block of each, never a whole checkpoint),
and folded into that checkpoint's statistics, the movement between consecutive
checkpoints, and the movement since the reference (the first of the sequence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diag.loaders.blocks import Buffer, TensorSource
from diag.memory import give_back
from diag.progress import Advance
from diag.stats import StatsAccumulator, TensorStats, UpdateAccumulator, UpdateStats, can_compare

if TYPE_CHECKING:
    from diag.loaders.checkpoint import Checkpoint
    from diag.model import Finding, Result
    from diag.registry import RuleSpec


@dataclass(frozen=True)
class Trajectory:
    """One tensor across the checkpoints it is comparable in (same shape, floating point)."""

    name: str
    members: tuple[int, ...]  # indices into Trajectories.labels
    norms: tuple[float, ...]  # |W| at each member
    ratios: tuple[float, ...]  # |W_i - W_{i-1}| / |W_{i-1}| per interval (len(members) - 1)
    unchanged: tuple[bool, ...]  # per interval: bit for bit the same


@dataclass(frozen=True)
class Trajectories:
    labels: tuple[str, ...]  # checkpoint names, oldest first
    steps: tuple[int | None, ...]
    tensors: dict[str, Trajectory]


def checkpoint_label(ckpt: Checkpoint) -> str:
    return str(ckpt.meta.extra.get("label") or ckpt.path)


def stream_checkpoints(
    members: Sequence[Checkpoint], progress: Advance | None = None
) -> tuple[dict[str, UpdateStats], Trajectories | None]:
    """Fill each checkpoint's `stats`; return each tensor's movement from the first
    checkpoint to the last, and (with three or more) every tensor's trajectory."""
    final = members[-1]
    total = sum(i.nbytes for m in members for i in m.infos())
    done = 0
    updates: dict[str, UpdateStats] = {}
    paths: dict[str, Trajectory] = {}
    buffers = [Buffer() for _ in members]
    for info in final.infos():
        sources = [_source(m, info) for m in members[:-1]] + [TensorSource(final.table, info)]
        together = [i for i, s in enumerate(sources) if s is not None]
        for i, s in enumerate(sources):  # present, but not comparable with the last one
            if s is None and info.name in members[i].table_names:
                s = TensorSource(members[i].table, members[i].info(info.name))
                members[i].stats[info.name] = _alone(s, buffers[i])
                done += s.info.nbytes
        stats, interval, whole = _together([sources[i] for i in together], buffers)
        for i, s in zip(together, stats, strict=True):
            members[i].stats[info.name] = s
            done += members[i].info(info.name).nbytes
        if whole is not None and together[0] == 0:
            updates[info.name] = whole
        if len(together) >= 2:
            paths[info.name] = _trajectory(info.name, together, interval)
        if progress:
            progress(done, total)
    names = {i.name for i in final.infos()}
    for i, member in enumerate(members[:-1]):  # tensors the last checkpoint does not have
        for info in member.infos():
            if info.name not in names and info.name not in member.stats:
                member.stats[info.name] = _alone(TensorSource(member.table, info), buffers[i])
                done += info.nbytes
                if progress:
                    progress(done, total)
    del buffers
    give_back()
    if len(members) < 3:
        return updates, None
    labels = tuple(checkpoint_label(m) for m in members)
    steps = tuple(m.meta.global_step for m in members)
    return updates, Trajectories(labels, steps, paths)


def _source(member: Checkpoint, final: Any) -> TensorSource | None:
    if final.name not in member.table_names:
        return None
    info = member.info(final.name)
    if not can_compare(info, final):
        return None
    return TensorSource(member.table, info)


def _alone(source: TensorSource, buffer: Buffer) -> TensorStats:
    acc = StatsAccumulator(source.info)
    for _, block in source.blocks(source.default_rows_per_block(), buffer):
        acc.add(block)
    stats = acc.finish(source.units)
    source.release()
    return stats


def _together(
    sources: list[TensorSource], buffers: list[Buffer]
) -> tuple[list[TensorStats], list[UpdateStats], UpdateStats | None]:
    """Statistics of each source, the movement between neighbours and from the first to
    the last, reading matching blocks of all of them side by side."""
    if len(sources) == 1:
        return [_alone(sources[0], buffers[0])], [], None
    accs = [StatsAccumulator(s.info) for s in sources]
    steps = [UpdateAccumulator(s.info.name) for s in sources[1:]]
    overall = UpdateAccumulator(sources[0].info.name) if len(sources) > 2 else None
    # Blocks shrink with the number of checkpoints, so memory stays about two blocks.
    rows = max(1, sources[0].default_rows_per_block() // max(1, len(sources) // 2))
    if not all(s.blockable for s in sources):
        rows = sources[0].n_rows
    streams = [s.blocks(rows, b) for s, b in zip(sources, buffers, strict=False)]
    for blocks in zip(*streams, strict=True):
        tensors = [block for _, block in blocks]
        for acc, t in zip(accs, tensors, strict=True):
            acc.add(t)
        for k, step in enumerate(steps):
            step.add(tensors[k], tensors[k + 1])
        if overall is not None:
            overall.add(tensors[0], tensors[-1])
    stats = [acc.finish(s.units) for acc, s in zip(accs, sources, strict=True)]
    for s in sources:
        s.release()
    interval = [step.finish() for step in steps]
    return stats, interval, overall.finish() if overall is not None else interval[0]


def _trajectory(name: str, members: list[int], interval: list[UpdateStats]) -> Trajectory:
    norms = (interval[0].init_norm, *(u.final_norm for u in interval))
    return Trajectory(
        name,
        tuple(members),
        norms,
        tuple(u.ratio for u in interval),
        tuple(u.identical for u in interval),
    )


# ------------------------------------------------------------------ first seen


def replayable(spec: RuleSpec) -> bool:
    """Rules that judge one checkpoint by itself, cheap to re-run on earlier ones."""
    return spec.needs == ("checkpoint",) and spec.group == "params"


def first_seen(
    result: Result,
    history: Sequence[Checkpoint],
    specs: Iterable[RuleSpec],
    options: dict[str, dict[str, Any]] | None = None,
) -> Result:
    """Annotate each finding on the last checkpoint with the first checkpoint of the run
    where it appears (and the last one without it), by re-running its rule on the earlier
    checkpoints' statistics."""
    earlier = list(history[:-1])
    specs = [s for s in specs if replayable(s)]
    if not earlier or not specs or not result.findings:
        return result
    final_path = history[-1].path
    wanted = {
        (f.rule, f.location.object) for f in result.findings if f.location.artifact == final_path
    }
    present: list[set[tuple[str, str]]] = []
    for ckpt in earlier:
        found: set[tuple[str, str]] = set()
        for spec in specs:
            if not any(rule == spec.name for rule, _ in wanted):
                continue
            kwargs = {n: None for n in spec.uses}
            kwargs.update((options or {}).get(spec.name, {}))
            try:
                found.update((spec.name, f.location.object) for f in spec.func(ckpt, **kwargs))
            except Exception:  # noqa: S112 - a replay is extra evidence, never a failure
                continue
        present.append(found)
    labels = [checkpoint_label(c) for c in history]
    findings = tuple(_annotate(f, present, labels, final_path) for f in result.findings)
    return dataclasses.replace(result, findings=findings)


def _annotate(
    f: Finding, present: list[set[tuple[str, str]]], labels: list[str], final: str
) -> Finding:
    if f.location.artifact != final:
        return f
    key = (f.rule, f.location.object)
    first = len(present)
    while first > 0 and key in present[first - 1]:
        first -= 1
    evidence = dict(f.evidence)
    evidence["first_seen"] = labels[first]
    if first == 0:
        message = f"{f.message}; in every checkpoint since {labels[0]}"
    else:
        evidence["last_clean"] = labels[first - 1]
        message = (
            f"{f.message}; first seen at {labels[first]}, {labels[first - 1]} is the last clean one"
        )
    return dataclasses.replace(f, message=message, evidence=evidence)


def intervals_unchanged(path: Trajectory) -> int:
    """How many of the last intervals left the tensor bit for bit the same."""
    count = 0
    for same in reversed(path.unchanged):
        if not same:
            break
        count += 1
    return count
