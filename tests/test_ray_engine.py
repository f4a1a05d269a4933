"""`--engine ray` gives the findings the in-process engine gives, on a local 2-worker cluster.

The cluster is started by the tests (`ray.init(num_cpus=2)`: two worker processes, each
opening the splits from their paths and digesting its own shards). Shards are cut small
(SHARD_SAMPLES) so every split is read as many shards, spread over both workers. Compared:
every finding's rule, location, message and evidence, on the data-rule cases of
tests/test_data_rules.py, the planted and clean digits of tests/test_data_calibration.py
in npz, CSV and image folders, planted text copies in JSON Lines and Parquet, and
eval-contamination's planted (whole, embedded, lightly paraphrased) and clean splits of
tests/test_contamination.py, whose training split Ray Data reads in shards of a few
hundred documents (diag.ray_data: Parquet row groups, JSON Lines byte ranges).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import ray
from click.testing import CliRunner
from test_contamination import _write as write_text
from test_contamination import clean_split, long_enough, paraphrase
from test_data_calibration import WRITERS, make_splits
from test_data_rules import CASES, _write
from test_splits_text_formats import leaky as leaky_text
from test_splits_text_formats import stdlib_docstrings, write_jsonl

import diag.data_engines as engines
import diag.ray_data as ray_data
from diag.api import CheckOptions, check
from diag.cli import cli
from diag.errors import UsageError


@pytest.fixture(scope="module", autouse=True)
def cluster(monkeypatch_module):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    monkeypatch_module.setattr(engines, "SHARD_SAMPLES", 97)
    monkeypatch_module.setattr(ray_data, "SHARD_ROWS", 300)  # Parquet row groups are 500
    monkeypatch_module.setattr(ray_data, "SHARD_BYTES", 40_000)  # 10 shards of the JSONL
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def findings(splits: dict, engine: str) -> list[dict]:
    options = CheckOptions(splits={k: str(v) for k, v in splits.items()}, select=["data"])
    options.engine = engine
    result, _ = check(options)
    return [
        {"rule": f.rule, "where": f.location.to_dict(), "message": f.message, **f.evidence}
        for f in result.findings
    ]


def same_everywhere(splits: dict) -> list[dict]:
    local = findings(splits, "local")
    assert findings(splits, "ray") == local
    return local


@pytest.mark.parametrize("case", [c for c in CASES if c.fires], ids=lambda c: c.id)
def test_table_cases_give_the_same_findings(case, tmp_path) -> None:
    found = same_everywhere(_write(case.arrays(), tmp_path))
    assert case.rule in {f["rule"] for f in found}


@pytest.mark.parametrize("fmt", list(WRITERS))
@pytest.mark.parametrize("leaky", [True, False], ids=["planted", "clean"])
def test_digits_in_every_format_give_the_same_findings(fmt, leaky, tmp_path) -> None:
    splits = WRITERS[fmt](make_splits(leaky=leaky), tmp_path)
    found = same_everywhere(splits)
    rules = {f["rule"] for f in found}
    assert ("split-overlap-exact" in rules) is leaky and ("split-overlap-near" in rules) is leaky


def test_text_copies_in_jsonl_and_parquet_give_the_same_findings(tmp_path) -> None:
    import datasets

    train, test = leaky_text(stdlib_docstrings())
    paths = {
        "train": write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in train]),
        "test": write_jsonl(tmp_path / "test.jsonl", [{"text": t} for t in test]),
    }
    found = same_everywhere(paths)
    assert {"split-overlap-exact", "split-overlap-near", "duplicates-within-split"} <= {
        f["rule"] for f in found
    }
    parquet = {}
    for name, texts in (("train", train), ("test", test)):
        parquet[name] = tmp_path / f"{name}.parquet"
        datasets.Dataset.from_list([{"text": t} for t in texts]).to_parquet(parquet[name])
    assert [f["rule"] for f in same_everywhere(parquet)] == [f["rule"] for f in found]


def test_the_cli_takes_the_engine_and_its_address(tmp_path) -> None:
    case = next(c for c in CASES if c.rule == "split-overlap-exact" and c.fires)
    paths = _write(case.arrays(), tmp_path)
    args = ["check", "--format", "json", "-q", "--select", "data", "--isolated"]
    args += [a for n, p in paths.items() for a in ("--split", f"{n}={p}")]
    out = {}
    for engine in ("local", "ray"):
        result = CliRunner().invoke(cli, [*args, "--engine", engine])
        assert result.exit_code == 1, result.output
        out[engine] = [(f["rule"], f["message"]) for f in json.loads(result.output)["findings"]]
    assert out["ray"] == out["local"]
    result = CliRunner().invoke(cli, [*args, "--engine-address", "127.0.0.1:6379"])
    assert result.exit_code == 2 and "--engine-address needs --engine ray" in result.output


def test_without_ray_installed_the_engine_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(UsageError, match=r"pip install 'diag\[ray\]'"):
        engines._ray(None)


def test_the_digests_stay_in_the_cluster(tmp_path, monkeypatch) -> None:
    """Stages 1-2 run on Ray Data and the driver never iterates their rows: with every way
    of pulling a dataset's rows to the driver broken, the findings are the same."""
    import ray.data

    splits = _write(CASES[0].arrays(), tmp_path)
    local = findings(splits, "local")

    def pulled(*args, **kwargs):
        raise AssertionError("a dataset's rows came to the driver")

    for name in ("iter_rows", "iter_batches", "take", "take_all", "to_pandas"):
        monkeypatch.setattr(ray.data.Dataset, name, pulled)
    assert local and findings(splits, "ray") == local  # a table: no contamination to scan


def test_shards_cover_every_sample_once(tmp_path) -> None:
    """A worker's shard is samples start..stop-1, read with the split's own reader."""
    from diag.leakage import assemble, digest_split
    from diag.loaders.splits.loaders import open_split

    paths = _write(CASES[0].arrays(), tmp_path)
    spec = engines.SplitSpec("train", str(paths["train"]))
    split = open_split("train", paths["train"])
    parts = [
        engines._digest_shard(spec, lo, min(lo + 97, len(split))) for lo in range(0, len(split), 97)
    ]
    whole = digest_split(split)
    assert np.array_equal(assemble(split, parts).hashes, whole.hashes)
    assert np.array_equal(assemble(split, parts).records, whole.records)


@pytest.fixture(scope="module")
def clean() -> tuple[list[str], list[str]]:
    from lm_support import docstring_texts

    return clean_split(docstring_texts(10**8))


def planted(clean: tuple[list[str], list[str]]) -> tuple[list[str], list[str], list[int]]:
    """The clean pair with test documents planted whole, embedded and lightly paraphrased."""
    train, test = list(clean[0]), list(clean[1])
    big = long_enough(test, 40)
    train.append(test[big[0]])
    train[10] = f"{train[10]}\n\n{test[big[1]]}\n\n{train[11]}"
    train.insert(700, paraphrase(test[big[2]], 15))  # inside a shard, not at its start
    return train, test, big[:3]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_contamination_on_ray_data_gives_the_same_findings(clean, tmp_path, suffix) -> None:
    train, test, big = planted(clean)
    paths = {
        n: write_text(tmp_path / f"{n}{suffix}", t) for n, t in (("train", train), ("test", test))
    }
    found = [f for f in same_everywhere(paths) if f["rule"] == "eval-contamination"]
    assert len(found) == 1 and {d["eval"] for d in found[0]["documents"]} == set(big)
    assert {tuple(d["train"]) for d in found[0]["documents"]} == {(len(train) - 1,), (10,), (700,)}
    paths = {
        n: write_text(tmp_path / f"clean_{n}{suffix}", t)
        for n, t in zip(("train", "test"), clean, strict=True)
    }
    assert not [f for f in same_everywhere(paths) if f["rule"] == "eval-contamination"]


def test_jsonl_byte_shards_cover_every_record_once(tmp_path) -> None:
    """Records are cut by the byte their line starts at: blank lines, a byte order mark and
    a shard boundary inside a record or on a newline change nothing."""
    from diag.loaders.splits.loaders import open_split

    texts = [f"document {k} " + "word " * (k % 17) for k in range(300)]
    lines = [
        json.dumps({"text": t}) + ("\n\n" if k % 7 == 0 else "\n") for k, t in enumerate(texts)
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode())
    whole = [t for _, chunk in open_split("train", path).samples.chunks(50) for t in chunk]
    size = path.stat().st_size
    for step in (1, 37, len(lines[1]), 4096, size):
        shards = [
            ray_data.Shard(ray_data.JSONL, str(path), lo, min(lo + step, size), "text")
            for lo in range(0, size, step)
        ]
        assert [t for s in shards for chunk in ray_data.shard_texts(s, 64) for t in chunk] == whole
    samples = ray_data.ShardSamples(shards, [len(texts)], parallel=False)
    assert samples.take([299, 0, 150]) == [whole[299], whole[0], whole[150]]


def test_a_split_smaller_than_a_shard_is_cut_for_every_worker(tmp_path, monkeypatch) -> None:
    """A 3.5 MB training file, far below the 64 MiB shard, is read by both workers of the
    cluster (1 MiB shards, the floor), every record once."""
    from diag.loaders.splits.loaders import open_split

    monkeypatch.setattr(ray_data, "SHARD_BYTES", 64 << 20)  # the module's fixture cut it

    assert ray_data.cluster_workers() == 2
    assert ray_data.shard_size(10**9, 64 << 20, 1 << 20, 2) == 64 << 20  # big: as before
    assert ray_data.shard_size(3_500_000, 64 << 20, 1 << 20, 2) == 1 << 20  # the floor
    assert ray_data.shard_size(40 << 20, 64 << 20, 1 << 20, 2) == 5 << 20  # 4 per worker
    texts = [f"record {k}: " + "lorem ipsum dolor sit amet " * 25 for k in range(5000)]
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in texts])
    split = open_split("train", path)
    spec = engines.SplitSpec("train", str(path))
    shards = engines.text_shards(spec, split)
    assert len(shards) == -(-path.stat().st_size // (1 << 20)) >= 3
    whole = [t for _, chunk in split.samples.chunks(512) for t in chunk]
    assert [t for s in shards for chunk in ray_data.shard_texts(s, 512) for t in chunk] == whole


def test_a_url_in_process_is_a_one_line_error(tmp_path) -> None:
    paths = {"train": "s3://bucket/train.parquet", "test": str(tmp_path / "t.parquet")}
    with pytest.raises(UsageError, match=r"s3://bucket/train.parquet: .* needs --engine ray"):
        engines.engine_for("local", paths, None, None)
