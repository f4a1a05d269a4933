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
runs the same functions on a Ray cluster. Stages 1-2 run on Ray Data: one row per shard
(a sample range of a split, about 4 per worker up to SHARD_SAMPLES), `map_batches` in
the workers opens the split from its path and digests the shard, and `to_numpy_refs`
hands back references to the digested blocks, which stay in the object store. A task per
pair of splits then joins and verifies them (3-4) from those blocks; only the pairs come
back. The same functions on the same signatures: the same findings.

eval-contamination (diag.contamination) runs on Ray Data too: the evaluation index is
built on the driver and put in the object store once; the training split's shards
(Parquet row groups, JSON Lines byte ranges, else sample ranges of diag's loader;
diag.ray_data) are read by the workers straight from their paths or URLs, `map_batches`
turns each into its hits, and only the hits come back, merged on the driver;
verification re-reads only the candidate documents, in the workers. Splits may be URLs
(`s3://`, `gs://`, `file://`, any fsspec protocol) and globs of Parquet or JSON Lines
files (`load_splits`).

What scales and what does not: reading and digesting (stages 1-2) and the contamination
scan spread over the workers, and the driver holds only counts, per-sample ids, labels
and the merged hits. The join (3-4) is one task per pair of splits: that task holds both
splits' signatures (a hash and a sketch per sample, and an image's thumbnail), so a
pair is bounded by one worker's memory; a join partitioned by signature key across
workers is not built.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag.errors import InputError, UsageError
from diag.ray_data import cluster_workers, shard_size

# Samples per shard a Ray worker reads and digests: large enough that opening the split
# in the worker is amortised, small enough to spread a split over the workers.
SHARD_SAMPLES = 50_000
CHUNK = 4096  # samples digested at a time inside a shard, as in process
MIN_SHARD_SAMPLES = 2_000  # a smaller split is cut no finer for the workers' sake


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
        from diag.run import LeakageReport

        ray = _ray(self.address)
        workers = cluster_workers()
        items = []
        for name, split in splits.items():
            step = shard_size(len(split), self.shard_samples, MIN_SHARD_SAMPLES, workers)
            for start in range(0, max(len(split), 1), step):
                items.append({"split": name, "start": start, "stop": min(start + step, len(split))})
        shards = _digest_on_ray_data(items, self.specs, quiet)
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

    def scan_contamination(
        self, index: Any, train: Any, chunk_size: int = 2048, quiet: bool = True
    ) -> tuple[Any, Any]:
        """eval-contamination's scan (a diag.contamination.Scan) on Ray Data: the workers
        turn the training split's shards into hits against `index`; returns the hits
        merged, and the split to re-read the candidates from (see diag.ray_data)."""
        from dataclasses import replace

        from diag import contamination as dc
        from diag import ray_data
        from diag.progress import Progress

        _ray(self.address)
        shards = text_shards(self.specs[train.name], train)
        total = len(train)
        with Progress(
            quiet or total < 20_000, total, "eval-contamination", unit="documents"
        ) as bar:
            seen = [0]

            def advance(count: int) -> None:
                seen[0] += count
                if bar is not None:
                    bar(seen[0], total)

            parts = ray_data.run_stage(shards, _shard_hits, index, advance)
        counts = [count for count, _ in parts]
        samples = ray_data.ShardSamples(shards, counts)
        if len(samples) != total:
            raise InputError(train.source, "the split changed while it was being read")
        # Shard-local ids plus the records before the shard: the split's own ids.
        hits = [
            dc.Hits(h.keys, h.counts, h.pair_keys, h.pair_docs + first)
            for first, (_, h) in zip(samples.first_ids().tolist(), parts, strict=True)
        ]
        # Verification re-reads the candidates from their shards, in the workers; a split
        # read by diag's own loader is re-read by the driver's copy of it, as in process.
        reread = (
            train if shards and shards[0].fmt == ray_data.SPLIT else replace(train, samples=samples)
        )
        return dc.merge(hits, keep=dc.KEEP_DOCS), reread


def engine_for(
    name: str, splits: Mapping[str, str], label_column: str | None, group_column: str | None,
    address: str | None = None,
) -> LocalEngine | RayEngine:  # fmt: skip
    """The engine `--engine NAME` names, for the splits `--split` gave."""
    from diag import ray_data

    if name == "local":
        if address:
            raise UsageError("--engine-address needs --engine ray")
        ray_data.needs_ray(list(splits.values()))
        return LocalEngine()
    if name != "ray":
        raise UsageError(f"--engine {name!r}: choose local or ray")
    specs = {}
    for n, p in splits.items():
        if ray_data.is_url(p):
            ray_data.resolve(p)  # a missing object or bucket is named now, in one line
            specs[n] = SplitSpec(n, p, label_column, group_column)
        else:
            specs[n] = SplitSpec(
                n, str(Path(p).resolve()), label_column, group_column, _stamp(Path(p))
            )
    return RayEngine(specs, address, SHARD_SAMPLES)


def load_splits(
    paths: Mapping[str, str],
    label_column: str | None,
    group_column: str | None,
    engine: LocalEngine | RayEngine,
) -> dict[str, Any]:
    """The splits `--split` names, opened on the driver. With Ray, a URL or a glob of
    Parquet or JSON Lines files is opened without reading its records here (the workers
    count and scan them, see diag.ray_data.open_remote); everything else as in process."""
    from diag import ray_data
    from diag.loaders.splits.loaders import open_split

    out = {}
    for name, path in paths.items():
        if isinstance(engine, RayEngine) and (ray_data.is_url(path) or _glob_of_files(path)):
            _ray(engine.address)
            out[name] = ray_data.open_remote(
                name, engine.specs[name].path, label_column, group_column
            )
        else:
            out[name] = open_split(
                name, Path(path), label_column=label_column, group_column=group_column
            )
    return out


def _glob_of_files(path: str) -> bool:
    """A local glob over Parquet or JSON Lines files (other globs are WebDataset shards)."""
    from diag import ray_data

    return ray_data.is_glob(path) and ray_data.file_format([path]) is not None


def text_shards(spec: SplitSpec, split: Any) -> list[Any]:
    """The shards a worker reads a text split by: natively for Parquet and JSON Lines
    files (one file, a glob, or a URL), else with diag's loader by sample ranges."""
    from diag import ray_data
    from diag.loaders.splits.model import TEXT

    native = ray_data.is_url(spec.path) or ray_data.is_glob(spec.path) or Path(spec.path).is_file()
    locations = ray_data.resolve(spec.path) if native else []
    fmt = ray_data.file_format(locations)
    if fmt is None or split.kind != TEXT or len(split.columns) != 1:
        return ray_data.plan([], None, "", spec, len(split), ray_data.cluster_workers())
    workers = ray_data.cluster_workers()
    return ray_data.plan(locations, fmt, split.columns[0], spec, len(split), workers)


def _shard_hits(index: Any, chunks: Any) -> Any:
    """eval-contamination's stages 2-3 on one shard, in a worker: its hits, merged."""
    from diag.contamination import KEEP_DOCS, Hits, merge, train_hits

    acc = Hits.empty()
    for first, texts in chunks:
        acc = merge([acc, train_hits(index, texts, first)], keep=KEEP_DOCS)
    return acc


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
    from diag import ray_data
    from diag.loaders.splits.loaders import open_split

    if ray_data.is_url(spec.path) or _glob_of_files(spec.path):
        # Already in a worker: the split is counted here, not by more tasks.
        return ray_data.open_remote(
            spec.name, spec.path, spec.label_column, spec.group_column, parallel=False
        )
    return open_split(
        spec.name, Path(spec.path), label_column=spec.label_column, group_column=spec.group_column
    )


def _digest_on_ray_data(
    items: list[dict[str, Any]], specs: Mapping[str, SplitSpec], quiet: bool
) -> dict[str, list[Any]]:
    """Stages 1-2 on Ray Data: one row per shard, digested by `map_batches` in the workers.
    What comes back per split is references to the digested blocks, which stay in the
    object store for the join: `to_numpy_refs` moves no block through the driver."""
    import sys

    import ray.data

    from diag.ray_data import data_context

    context = data_context(progress_bars=not quiet and sys.stderr.isatty())
    # Block k is shard k: the join asks for its splits' blocks by position.
    context.execution_options.preserve_order = True
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    digested = ds.map_batches(
        _digest_batch, fn_kwargs={"specs": dict(specs)}, batch_size=1, batch_format="numpy"
    )
    try:
        refs = digested.to_numpy_refs()
    except Exception as exc:
        from diag.ray_data import _cause

        raise _cause(exc) from None
    if len(refs) != len(items):  # blocks merged or split after all: every join reads all
        return {name: list(refs) for name in specs}
    by_split: dict[str, list[Any]] = {name: [] for name in specs}
    for item, ref in zip(items, refs, strict=True):
        by_split[item["split"]].append(ref)
    return by_split


def _digest_batch(batch: dict[str, Any], specs: dict[str, SplitSpec]) -> dict[str, Any]:
    import pickle

    import numpy as np

    name, start, stop = str(batch["split"][0]), int(batch["start"][0]), int(batch["stop"][0])
    part = _digest_shard(specs[name], start, stop)
    return {
        "split": np.array([name], dtype=object),
        "start": np.array([start]),
        "part": np.array([pickle.dumps(part)], dtype=object),
    }


def _digest_shard(spec: SplitSpec, start: int, stop: int) -> Any:
    """Stages 1-2 for samples start..stop-1: read them, return their signatures."""
    from diag.leakage import digest_chunk, merge_parts
    from diag.loaders.splits.common import read_range
    from diag.ray_data import carried

    with carried():
        split = _open(spec)
        chunks = read_range(split.samples, start, stop, CHUNK)
        return merge_parts([digest_chunk(split.kind, chunk, True) for _, chunk in chunks])


def _digest(spec: SplitSpec, refs: list[Any]) -> Any:
    """The split's signatures from its digested blocks (in shard order)."""
    import pickle

    import ray

    from diag.leakage import assemble

    parts = []
    for block in ray.get(list(refs)):
        for name, start, part in zip(block["split"], block["start"], block["part"], strict=True):
            if name == spec.name:
                # Written by our own _digest_batch in a worker of this cluster.
                parts.append((int(start), pickle.loads(part)))  # noqa: S301
    parts.sort(key=lambda p: p[0])
    return assemble(_open(spec), [part for _, part in parts])


def _compare(spec_a: SplitSpec, refs_a: list[Any], spec_b: SplitSpec, refs_b: list[Any]) -> Any:
    """Stages 3-4 for one pair of splits, where the signatures are: only pairs come back."""
    from diag.leakage import compare_splits

    return compare_splits(_digest(spec_a, refs_a), _digest(spec_b, refs_b))


def _within(spec: SplitSpec, refs: list[Any]) -> Any:
    from diag.leakage import exact_groups

    return exact_groups(_digest(spec, refs))
