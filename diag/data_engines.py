"""Where the data rules' stages run: in this process (default), or on a Ray cluster.

The leakage analysis is a plan of stages over the splits (diag.leakage):
1. read shards of each split;
2. signatures of every sample (`digest_chunk`: exact hash, image sketch, table record,
   MinHash), a pure function of a chunk;
3. join on the signatures across splits (`exact_pairs`: equal hashes by one sort; near
   copies: MinHash band keys, or nearest neighbours of the sketches);
4. verify the candidate pairs exactly (Jaccard of the texts, the pixel distance);
5. findings, by the [data] rules, from the pairs.

`LocalEngine` runs them in this process, as fast as before the plan existed. `RayEngine`
runs the same functions on a Ray cluster: each worker opens the split from its path and
digests its own shard (stage 1-2), a task per pair of splits joins and verifies them
(3-4) from the shards' signatures, which stay in the cluster's object store; only the
pairs come back. The same functions on the same signatures: the same findings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag.errors import UsageError

# Samples per shard a Ray worker reads and digests: large enough that opening the split
# in the worker is amortised, small enough to spread a split over the workers.
SHARD_SAMPLES = 50_000
CHUNK = 4096  # samples digested at a time inside a shard, as in process


@dataclass(frozen=True)
class SplitSpec:
    """How to open a split anywhere: what `--split NAME=PATH` and its options said, and
    the path's size and mtime when the check began (a worker's cache of opened splits is
    keyed by it, so a rewritten file is never served from an earlier open)."""

    name: str
    path: str
    label_column: str | None = None
    group_column: str | None = None
    stamp: tuple[int, int] = (0, 0)


class LocalEngine:
    name = "local"

    def analyse(self, splits: Mapping[str, Any], quiet: bool = True) -> Any:
        from diag.run import analyse_splits

        return analyse_splits(dict(splits), quiet=quiet)


class RayEngine:
    """The same stages on Ray: `address` as `ray.init` takes it (None: its own discovery,
    RAY_ADDRESS or a local cluster); `specs` say how each worker opens each split."""

    name = "ray"

    def __init__(
        self,
        specs: Mapping[str, SplitSpec],
        address: str | None = None,
        shard_samples: int = SHARD_SAMPLES,
    ) -> None:
        self.specs, self.address, self.shard_samples = dict(specs), address, shard_samples

    def analyse(self, splits: Mapping[str, Any], quiet: bool = True) -> Any:
        from diag.rules.data import split_pairs
        from diag.run import LeakageReport, sample_progress

        ray = _ray(self.address)
        digest = ray.remote(_digest_shard)
        shards: dict[str, list[Any]] = {}
        pending: dict[Any, int] = {}
        total = sum(len(s) for s in splits.values())
        for name, split in splits.items():
            spec = self.specs[name]
            refs = []
            for start in range(0, max(len(split), 1), self.shard_samples):
                stop = min(start + self.shard_samples, len(split))
                ref = digest.remote(spec, start, stop)
                refs.append(ref)
                pending[ref] = stop - start
            shards[name] = refs
        with sample_progress(quiet, total) as advance:
            done, waiting = 0, list(pending)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                done += pending[ready[0]]
                if advance is not None:
                    advance(done, total)
        compare = ray.remote(_compare)
        within = ray.remote(_within)
        pairs = [(a, b) for a, b in split_pairs(dict(splits)) if splits[a].kind == splits[b].kind]
        compared = {
            (a, b): compare.remote(self.specs[a], shards[a], self.specs[b], shards[b])
            for a, b in pairs
        }
        groups = {name: within.remote(self.specs[name], refs) for name, refs in shards.items()}
        comparisons = {key: ray.get(ref) for key, ref in compared.items()}
        inside = {name: ray.get(ref) for name, ref in groups.items()}
        return LeakageReport(dict(splits), comparisons, inside)


def engine_for(
    name: str, splits: Mapping[str, str], label_column: str | None, group_column: str | None,
    address: str | None = None,
) -> LocalEngine | RayEngine:  # fmt: skip
    """The engine `--engine NAME` names, for the splits `--split` gave."""
    if name == "local":
        if address:
            raise UsageError("--engine-address needs --engine ray")
        return LocalEngine()
    if name != "ray":
        raise UsageError(f"--engine {name!r}: choose local or ray")
    specs = {
        n: SplitSpec(n, str(Path(p).resolve()), label_column, group_column, _stamp(Path(p)))
        for n, p in splits.items()
    }
    return RayEngine(specs, address, SHARD_SAMPLES)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)  # the loader will say what is wrong with it
    return (st.st_size, st.st_mtime_ns)


def _ray(address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'diag[ray]'") from None
    if not ray.is_initialized():
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
    return ray


# ------------------------------------------------------------------ on the workers


@functools.lru_cache(maxsize=8)
def _open(spec: SplitSpec) -> Any:
    """A worker opens each split once, however many of its shards it digests."""
    from diag.loaders.splits.loaders import open_split

    return open_split(
        spec.name, Path(spec.path), label_column=spec.label_column, group_column=spec.group_column
    )


def _digest_shard(spec: SplitSpec, start: int, stop: int) -> Any:
    """Stages 1-2 for samples start..stop-1: read them, return their signatures."""
    from diag.leakage import digest_chunk, merge_parts
    from diag.loaders.splits.common import read_range

    split = _open(spec)
    chunks = read_range(split.samples, start, stop, CHUNK)
    return merge_parts([digest_chunk(split.kind, chunk, True) for _, chunk in chunks])


def _digest(spec: SplitSpec, refs: list[Any]) -> Any:
    import ray

    from diag.leakage import assemble

    return assemble(_open(spec), ray.get(list(refs)))


def _compare(spec_a: SplitSpec, refs_a: list[Any], spec_b: SplitSpec, refs_b: list[Any]) -> Any:
    """Stages 3-4 for one pair of splits, where the signatures are: only pairs come back."""
    from diag.leakage import compare_splits

    return compare_splits(_digest(spec_a, refs_a), _digest(spec_b, refs_b))


def _within(spec: SplitSpec, refs: list[Any]) -> Any:
    from diag.leakage import exact_groups

    return exact_groups(_digest(spec, refs))
