"""Text splits in JSON Lines and Hugging Face `datasets` folders, on real text.

The text is the standard library's own docstrings (unique, long ones), written by the real
`datasets` library (`to_json`, `save_to_disk`, `to_parquet`). Planted exact and near copies
between train and test, and a repeat inside train, must be found through the real CLI and
named by line or row; the same corpus split disjointly must raise nothing. Chat records
that differ only in framing (key order, whitespace, ids, extra metadata) are exact copies.
Broken files give one `InputError` naming the file and the line.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

from diag.cli import cli
from diag.errors import InputError
from diag.loaders.splits.loaders import open_split
from diag.loaders.splits.model import TEXT

MODULES = ("json", "textwrap", "pathlib", "argparse", "collections", "functools", "shutil",
           "tarfile", "zipfile", "subprocess", "logging", "email.message", "csv", "string",
           "itertools", "heapq", "calendar", "difflib", "fractions", "decimal")  # fmt: skip
LEAK_RULES = {"split-overlap-exact", "split-overlap-near", "duplicates-within-split"}
TRAIN, TEST = 90, 40


def stdlib_docstrings() -> list[str]:
    """Docstrings of 300+ characters, none sharing half its character 5-grams with another
    (the stdlib repeats paragraphs between siblings such as json.dump and json.dumps, which
    are real near copies)."""
    out, kept = [], []
    for name in MODULES:
        module = importlib.import_module(name)
        objects = [o for _, o in sorted(vars(module).items()) if callable(o)]
        objects += [m for o in objects if inspect.isclass(o) for _, m in sorted(vars(o).items())]
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str) or len(doc) < 300:
                continue
            grams = {doc[i : i + 5] for i in range(len(doc) - 4)}
            if all(len(grams & g) < 0.5 * len(grams | g) for g in kept):
                kept.append(grams)
                out.append(inspect.cleandoc(doc))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    docs = stdlib_docstrings()
    assert len(docs) >= TRAIN + TEST + 2
    return docs


def near_copy(text: str) -> str:
    """One word replaced and one appended: what an edited scrape of the same page looks like."""
    words = text.split(" ")
    words[len(words) // 2] = "zeppelin"
    return " ".join(words) + " Revised."


def check(*splits: str, fmt: str = "json") -> tuple[int, dict]:
    args = ["check", *[a for s in splits for a in ("--split", s)], "--format", fmt, "-q"]
    args += ["--select", "data", "--fail-on", "never", "--isolated"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.exit_code, json.loads(result.output)


def findings(report: dict) -> dict[str, dict]:
    return {f["rule"]: f for f in report["findings"] if f["rule"] in LEAK_RULES}


def pairs(finding: dict) -> set[tuple[int, int]]:
    return {(p[0], p[1]) for p in finding["evidence"]["pairs"]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    datasets.Dataset.from_list(records).to_json(path)
    return path


def leaky(corpus: list[str]) -> tuple[list[str], list[str]]:
    """train with a repeat of #5 at the end; test with an exact copy of train #3 and a
    near copy of train #10 at the end."""
    train = [*corpus[:TRAIN], corpus[5]]
    test = [*corpus[TRAIN : TRAIN + TEST], corpus[3], near_copy(corpus[10])]
    return train, test


def assert_planted_found(report: dict) -> None:
    got = findings(report)
    assert set(got) == LEAK_RULES, sorted(got)
    assert pairs(got["split-overlap-exact"]) == {(3, TEST)}
    assert pairs(got["split-overlap-near"]) == {(10, TEST + 1)}
    assert pairs(got["duplicates-within-split"]) == {(5, TRAIN)}


# ---------------------------------------------------------------- JSON Lines


def test_jsonl_planted_copies_found_and_clean_split_silent(tmp_path, corpus):
    train, test = leaky(corpus)
    a = write_jsonl(
        tmp_path / "train.jsonl", [{"text": t, "label": i % 4} for i, t in enumerate(train)]
    )
    b = write_jsonl(
        tmp_path / "test.jsonl", [{"text": t, "label": i % 4} for i, t in enumerate(test)]
    )
    _, report = check(f"train={a}", f"test={b}")
    assert_planted_found(report)
    exact = findings(report)["split-overlap-exact"]
    assert "train line 4" in exact["message"] and f"test line {TEST + 1}" in exact["message"]

    clean_a = write_jsonl(tmp_path / "clean_a.jsonl", [{"text": t} for t in corpus[:TRAIN]])
    clean_b = write_jsonl(tmp_path / "clean_b.jsonl", [{"text": t} for t in corpus[TRAIN:]])
    _, report = check(f"train={clean_a}", f"test={clean_b}")
    assert findings(report) == {}


def test_jsonl_labels_and_ids(tmp_path, corpus):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"content": t, "label": i % 3} for i, t in enumerate(corpus[:7])]
    )
    split = open_split("train", path)
    assert split.kind == TEXT and len(split) == 7
    assert split.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert split.sample_id(6) == "line 7"
    chunks = list(split.samples.chunks(3))
    assert [start for start, _ in chunks] == [0, 3, 6]
    assert [t for _, c in chunks for t in c] == corpus[:7]
    assert split.samples.take([6, 0, 6]) == [corpus[6], corpus[0], corpus[6]]


def chat(question: str, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": "You answer questions about Python."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def test_chat_records_differing_only_in_framing_are_exact_copies(tmp_path, corpus):
    records = [
        {"messages": chat(f"What does this do? ({i})", doc)} for i, doc in enumerate(corpus[:TRAIN])
    ]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    # The same conversation as train #7: keys reordered, spaced JSON, an id and metadata,
    # and the answer as a list of text parts.
    message = records[7]["messages"]
    reframed = {
        "id": "conv-0007",
        "source": "scrape",
        "messages": [
            {"content": m["content"], "role": m["role"], "name": None} for m in message[:2]
        ]
        + [{"role": "assistant", "content": [{"type": "text", "text": message[2]["content"]}]}],
    }
    others = [{"messages": chat(f"Explain ({i})", doc)} for i, doc in enumerate(corpus[TRAIN:])]
    lines = [json.dumps(r) for r in others]
    lines.append(json.dumps(reframed, indent=None, separators=(" , ", " : "), sort_keys=True))
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(lines) + "\n")
    _, report = check(f"train={train}", f"test={test}")
    got = findings(report)
    assert set(got) == {"split-overlap-exact"}, sorted(got)
    assert pairs(got["split-overlap-exact"]) == {(7, len(others))}


def test_prompt_completion_pairs_compare_on_both(tmp_path, corpus):
    records = [{"prompt": f"Document {i}:", "completion": d} for i, d in enumerate(corpus[:30])]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    # Same completion under another prompt: not a copy. Same pair: an exact copy.
    test_records = [{"prompt": "Another prompt:", "completion": corpus[4]}, dict(records[9])]
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [*test_records, *({"prompt": "x", "completion": d} for d in corpus[TRAIN : TRAIN + 20])],
    )
    _, report = check(f"train={train}", f"test={test}")
    got = findings(report)
    assert pairs(got["split-overlap-exact"]) == {(9, 1)}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"text": "a"}\n{"text": "b",}\n', "invalid JSON at line 2"),
        (
            b'{"text": "a"}\n{"text": "b"}\n{"text": "c',
            "invalid JSON at line 3 (the file ends mid-record",
        ),
        (b'{"text": "a"}\n{"text": "caf\xe9"}\n', "line 2: not UTF-8"),
        (b'{"text": "a"}\n{"text": "a\x00b"}\n', "invalid JSON at line 2"),
        (b'{"text": "a"}\n[1, 2]\n', "line 2 is a list, not a JSON object"),
        (b'{"text": "a"}\n{"text": 3}\n', "line 2: 'text' is a int, not text"),
        (b'{"title": "a"}\n', "line 1: no text field"),
        (
            b'{"messages": [{"role": "user", "content": 5}]}\n',
            "line 1: message 0: content is a int",
        ),
        (b'{"text": "a"}\n' + b"[" * 100_000 + b"\n", "invalid JSON at line 2"),
    ],
)
def test_broken_jsonl_names_the_line(tmp_path, content, fragment):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        open_split("train", path)
    assert err.value.path == str(path)
    assert fragment in err.value.cause and "\n" not in err.value.cause


def test_a_line_past_the_cap_is_refused_unread(tmp_path):
    from diag.loaders.splits import jsonl

    path = tmp_path / "long.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"text": "a"}\n{"text": "')
        fh.write(b"x" * (jsonl.MAX_LINE_BYTES + 10))
        fh.write(b'"}\n')
    with pytest.raises(InputError, match=r"line 2 is longer than"):
        open_split("train", path)


def test_jsonl_extension_with_other_content_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(
        InputError, match="the extension says JSON Lines but the content is an image"
    ):
        open_split("train", path)


# ---------------------------------------------------------------- datasets folders


def test_save_to_disk_dataset_dict_planted_copies_named_by_file_and_row(tmp_path, corpus):
    train, test = leaky(corpus)
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": train, "label": [i % 4 for i in range(len(train))]}
            ),
            "test": datasets.Dataset.from_dict(
                {"text": test, "label": [i % 4 for i in range(len(test))]}
            ),
        }
    ).save_to_disk(folder, num_shards={"train": 2, "test": 2})
    _, report = check(f"train={folder / 'train'}", f"test={folder / 'test'}")
    assert_planted_found(report)
    dup = findings(report)["duplicates-within-split"]
    # train #90 is the last row of the second of two shards of 91 rows.
    assert "data-00001-of-00002.arrow row 44" in dup["message"]
    split = open_split("train", folder / "train")
    assert split.labels.tolist() == [i % 4 for i in range(len(train))]
    assert list(split.samples.take([90, 0])) == [train[90], train[0]]


def test_dataset_dict_folder_picks_the_split_by_name_or_lists_them(tmp_path, corpus):
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": corpus[:10]}),
            "test": datasets.Dataset.from_dict({"text": corpus[10:15]}),
        }
    ).save_to_disk(folder)
    assert len(open_split("test", folder)) == 5
    result = CliRunner().invoke(cli, ["check", "--split", f"holdout={folder}", "-q", "--isolated"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and str(folder) in line and "splits train, test" in line


def test_hub_repository_parquet_shards_by_split_name(tmp_path, corpus):
    train, test = leaky(corpus)
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": train[:50]}).to_parquet(
        data / "train-00000-of-00002.parquet"
    )
    datasets.Dataset.from_dict({"text": train[50:]}).to_parquet(
        data / "train-00001-of-00002.parquet"
    )
    datasets.Dataset.from_dict({"text": test}).to_parquet(data / "test-00000-of-00001.parquet")
    repo = tmp_path / "repo"
    _, report = check(f"train={repo}", f"test={repo}")
    assert_planted_found(report)
    assert open_split("train", repo).sample_id(90) == "train-00001-of-00002.parquet row 40"


def test_chat_messages_in_a_saved_dataset(tmp_path, corpus):
    rows = [chat(f"Q{i}", d) for i, d in enumerate(corpus[:20])]
    datasets.Dataset.from_dict({"messages": rows}).save_to_disk(tmp_path / "chat")
    split = open_split("train", tmp_path / "chat")
    assert split.kind == TEXT
    first = split.samples.take([3])[0]
    assert first.startswith("system: You answer") and first.endswith(corpus[3])


def test_state_json_naming_a_file_outside_is_refused(tmp_path):
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(folder)
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../outside.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match=re.escape("'../outside.arrow' is not a plain name")):
        open_split("train", folder)


def test_saved_numeric_table_reads_like_parquet(tmp_path):
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame
    wine.insert(0, "ref", [f"w{i:03d}" for i in range(len(wine))])
    datasets.Dataset.from_pandas(wine).save_to_disk(tmp_path / "wine", num_shards=3)
    split = open_split("train", tmp_path / "wine")
    assert split.kind == "table" and "ref" not in split.columns
    assert split.labels.tolist() == wine["target"].tolist()
    numeric = np.concatenate([c.numeric for _, c in split.samples.chunks(50)])
    assert np.array_equal(numeric, wine.drop(columns=["ref", "target"]).to_numpy())
    assert np.array_equal(split.samples.take([177])[0].numeric[0], numeric[177])
    assert split.sample_id(177) == "data-00002-of-00003.arrow row 58"
