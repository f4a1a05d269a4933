"""`--engine ray` reads splits from an object store: a real S3 endpoint, offline.

moto's S3 server runs in a thread of this process; the splits are uploaded to it and diag
is pointed at it only through the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), which pyarrow's S3 filesystem reads in the driver and in
the Ray workers (started after they are set, so they inherit them). Compared with the same
files read locally in process: every finding's rule, object, message and evidence, for the
data rules (leakage and eval-contamination) on tests/test_contamination.py's planted and
clean text in Parquet and JSON Lines, and for a training split cut into several files
named by a glob (`s3://bucket/train-*.parquet`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner
from test_contamination import _write as write_text
from test_contamination import clean_split, long_enough, paraphrase

import diag.ray_data as ray_data
from diag.api import CheckOptions, check
from diag.cli import cli

pytest.importorskip("moto")
BUCKET = "diag-splits"


@pytest.fixture(scope="module")
def patch():
    with pytest.MonkeyPatch.context() as p:
        yield p


@pytest.fixture(scope="module", autouse=True)
def s3(patch):
    """A local S3 endpoint with an empty bucket, and a 2-worker cluster that can reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        patch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    patch.setattr(ray_data, "SHARD_ROWS", 300)
    patch.setattr(ray_data, "SHARD_BYTES", 60_000)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    server.stop()


def upload(path: Path, key: str) -> str:
    import boto3

    boto3.client("s3").upload_file(str(path), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def findings(splits: dict, engine: str) -> list[dict]:
    options = CheckOptions(splits={k: str(v) for k, v in splits.items()}, select=["data"])
    options.engine = engine
    result, _ = check(options)
    return [
        {"rule": f.rule, "object": f.location.object, "message": f.message, **f.evidence}
        for f in result.findings
    ]


@pytest.fixture(scope="module")
def texts() -> dict[str, tuple[list[str], list[str]]]:
    from lm_support import docstring_texts

    train, test = clean_split(docstring_texts(10**8))
    leaky, big = list(train), long_enough(test, 40)
    leaky.append(test[big[0]])  # whole
    leaky[10] = f"{leaky[10]}\n\n{test[big[1]]}\n\n{leaky[11]}"  # embedded
    leaky.insert(700, paraphrase(test[big[2]], 15))  # lightly paraphrased
    leaky.append(test[3])  # an exact copy too, for the leakage rules
    return {"planted": (leaky, test), "clean": (train, test)}


@pytest.mark.parametrize("case", ["planted", "clean"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_s3_splits_give_the_findings_of_the_same_files_read_locally(
    texts, tmp_path, suffix, case
) -> None:
    local, remote = {}, {}
    for name, docs in zip(("train", "test"), texts[case], strict=True):
        local[name] = write_text(tmp_path / f"{name}{suffix}", docs)
        remote[name] = upload(local[name], f"{case}/{name}{suffix}")
    expected = findings(local, "local")
    assert findings(remote, "ray") == expected
    rules = {f["rule"] for f in expected}
    assert ("eval-contamination" in rules) is (case == "planted")
    assert ("split-overlap-exact" in rules) is (case == "planted")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_glob_of_files_is_one_split_in_file_order(texts, tmp_path, suffix) -> None:
    """Document ids run on across the files, as the concatenated file's would."""
    train, test = texts["planted"]
    parts = [train[:500], train[500:1100], train[1100:]]
    for k, part in enumerate(parts):
        upload(write_text(tmp_path / f"train-{k}{suffix}", part), f"glob/train-{k}{suffix}")
    test_url = upload(write_text(tmp_path / f"test{suffix}", test), f"glob/test{suffix}")
    whole = write_text(tmp_path / f"whole{suffix}", train)
    by_glob = findings({"train": f"s3://{BUCKET}/glob/train-*{suffix}", "test": test_url}, "ray")
    local_glob = findings({"train": str(tmp_path / f"train-*{suffix}"), "test": test_url}, "ray")
    assert by_glob == local_glob
    expected = findings({"train": whole, "test": tmp_path / f"test{suffix}"}, "local")

    def documents(found: list[dict]) -> list:
        return [f["documents"] for f in found if f["rule"] == "eval-contamination"]

    assert documents(by_glob) == documents(expected) and documents(expected)
    found = next(f for f in by_glob if f["rule"] == "eval-contamination")
    # The example the message names is the first document's training holder, by the
    # glob's ids: training document t is record t - start + 1 of the file it falls in.
    t = found["documents"][0]["train"][0]
    k = next(k for k, end in enumerate((500, 1100, len(train))) if t < end)
    record = t - (0, 500, 1100)[k] + 1
    unit = "line" if suffix == ".jsonl" else "row"
    assert f"with train train-{k}{suffix} {unit} {record} " in found["message"]
    # Training document 10 (the embedded copy) is the 11th record of the first file.
    assert 10 in {t for d in found["documents"] for t in d["train"]}


def test_the_cli_reads_an_s3_glob_and_finds_the_contamination(texts, tmp_path) -> None:
    train, test = texts["planted"]
    for k, part in enumerate((train[:900], train[900:])):
        upload(write_text(tmp_path / f"train-{k}.parquet", part), f"cli/train-{k}.parquet")
    test_url = upload(write_text(tmp_path / "test.jsonl", test), "cli/test.jsonl")
    args = ["check", "--split", f"train=s3://{BUCKET}/cli/train-*.parquet"]
    args += ["--split", f"test={test_url}", "--engine", "ray", "--select", "data"]
    result = CliRunner().invoke(cli, [*args, "--isolated", "-q", "--format", "json"])
    assert result.exit_code == 1, result.output
    rules = {f["rule"] for f in json.loads(result.output)["findings"]}
    assert {"eval-contamination", "split-overlap-exact"} <= rules


@pytest.mark.parametrize(
    "url", [f"s3://{BUCKET}/no/such.parquet", "s3://no-such-bucket/train.jsonl"]
)
def test_a_missing_object_is_a_one_line_error(texts, tmp_path, url) -> None:
    test = write_text(tmp_path / "test.jsonl", texts["clean"][1])
    args = ["check", "--engine", "ray", "--split", f"train={url}", "--split", f"test={test}"]
    result = CliRunner().invoke(cli, [*args, "--isolated", "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"diag: error: {url}: no such object"


def test_a_url_needs_the_ray_engine(tmp_path) -> None:
    url = f"s3://{BUCKET}/train.parquet"
    args = ["check", "--split", f"train={url}", "--split", f"test={tmp_path}/t.jsonl"]
    result = CliRunner().invoke(cli, [*args, "--isolated", "-q"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "needs --engine ray" in result.output and json.dumps(url)[1:-1] in result.output


def test_an_object_store_that_does_not_answer_is_a_one_line_error(tmp_path) -> None:
    """GCS with no route and no credentials here: pyarrow would retry for 15 minutes by
    default; diag's client gives up after URL_RETRY_SECONDS."""
    from datetime import timedelta

    fs, _ = ray_data.filesystem("gs://no-bucket/train.parquet")
    state = fs.__reduce__()[1][0]  # what the filesystem was built with
    assert state["retry_time_limit"] == timedelta(seconds=ray_data.URL_RETRY_SECONDS)
    (tmp_path / "t.jsonl").write_text('{"text": "a b c"}\n')
    args = ["check", "--split", "train=gs://no-bucket/train.parquet"]
    args += ["--split", f"test={tmp_path}/t.jsonl", "--engine", "ray", "--isolated", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "gs://no-bucket/train.parquet" in result.output


def test_a_corrupt_record_read_by_a_worker_is_a_one_line_error(texts, tmp_path) -> None:
    train, test = texts["clean"]
    bad = tmp_path / "train.jsonl"
    write_text(bad, train)
    bad.write_bytes(bad.read_bytes() + b'{"text": "cut off\n')
    url = upload(bad, "corrupt/train.jsonl")
    test_path = write_text(tmp_path / "test.jsonl", test)
    args = ["check", "--engine", "ray", "--split", f"train={url}", "--split", f"test={test_path}"]
    result = CliRunner().invoke(cli, [*args, "--isolated", "-q"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"diag: error: {url}: record at byte ")
