"""eval-contamination on real text: standard-library docstrings, planted copies, boilerplate.

The clean corpus is the docstrings minus every one that shares text with another by the
rule's own definition, as a naive n-gram comparison (below) decides; on the raw corpus the
rule must find exactly what that naive comparison finds.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from lm_support import docstring_texts

import diag.contamination as dc
from diag.contamination import (
    ContaminationCheck,
    Hits,
    contamination,
    eval_index,
    merge,
    normalise,
    tokens_of,
    train_hits,
    verify,
)
from diag.loaders.splits.loaders import open_split
from diag.loaders.splits.model import TEXT, Split
from diag.reports.contamination import char_span
from diag.rules.contamination import eval_contamination

N = 13
LICENCE = (
    "Copyright (c) 2001-2024 Python Software Foundation. All rights reserved.\n"
    "Licensed under the Python Software Foundation License Version 2; you may not use this "
    'file except in compliance with the License. Distributed on an "AS IS" BASIS, WITHOUT '
    "WARRANTIES OR CONDITIONS OF ANY KIND.\n"
    "Home | Modules | Index | Search | Previous topic | Next topic | Report a bug | Show source\n\n"
)


class Texts:
    """An in-memory text split's samples."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        for start in range(0, len(self.texts), size):
            yield start, self.texts[start : start + size]

    def take(self, indices: Sequence[int]) -> list[object]:
        return [self.texts[i] for i in indices]


def split(name: str, texts: Sequence[str]) -> Split:
    return Split(name, Path(f"{name}.jsonl"), TEXT, Texts(texts))


def naive(train: Sequence[str], test: Sequence[str], n: int = N, short: int = 8) -> set[int]:
    """Evaluation documents sharing an n-gram with training, or (n > length >= short) found
    whole in it: the rule's definition, written the obvious way."""
    grams = set()
    for t in train:
        tk = tokens_of(t)
        grams.update(tuple(tk[i : i + n]) for i in range(len(tk) - n + 1))
    joined = [f" {normalise(t)} " for t in train]
    found = set()
    for e, t in enumerate(test):
        tk = tokens_of(t)
        windows = (tuple(tk[i : i + n]) for i in range(len(tk) - n + 1))
        if len(tk) >= n and any(w in grams for w in windows):
            found.add(e)
        if short <= len(tk) < n and any(f" {' '.join(tk)} " in j for j in joined):
            found.add(e)
    return found


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return docstring_texts(10**8)


@pytest.fixture(scope="module")
def clean(corpus: list[str]) -> tuple[list[str], list[str]]:
    return clean_split(corpus)


def clean_split(corpus: list[str]) -> tuple[list[str], list[str]]:
    """A rest / 300 split of the docstrings that share no text with one another."""
    owners: dict[tuple[str, ...], set[int]] = {}
    for k, t in enumerate(corpus):
        tk = tokens_of(t)
        for i in range(len(tk) - N + 1):
            owners.setdefault(tuple(tk[i : i + N]), set()).add(k)
    shared = {k for ks in owners.values() if len(ks) > 1 for k in ks}
    joined = " \n ".join(f" {normalise(t)} " for t in corpus)
    for k, t in enumerate(corpus):
        tk = tokens_of(t)
        if 8 <= len(tk) < N and joined.count(f" {' '.join(tk)} ") > 1:
            shared.add(k)
    docs = [t for k, t in enumerate(corpus) if k not in shared]
    random.Random(7).shuffle(docs)
    return docs[300:], docs[:300]


def long_enough(texts: Sequence[str], least: int) -> list[int]:
    return [i for i, t in enumerate(texts) if len(tokens_of(t)) >= least]


def paraphrase(text: str, every: int) -> str:
    """Replace every `every`-th word by another one, punctuation and layout kept."""
    words = text.split(" ")
    return " ".join(
        "otherword" if k % every == every - 1 and w.strip() else w for k, w in enumerate(words)
    )


# --------------------------------------------------------------------------- the rule's decisions


def test_raw_corpus_matches_the_naive_definition(corpus: list[str]) -> None:
    docs = corpus[:]
    random.Random(0).shuffle(docs)
    test, train = docs[:400], docs[400:]
    report = contamination(split("train", train), split("test", test))
    assert {d.eval_doc for d in report.documents} == naive(train, test)
    assert len(report.documents) > 20  # templated docstrings really share 13-grams


def test_clean_split_has_no_finding(clean: tuple[list[str], list[str]]) -> None:
    train, test = clean
    assert not naive(train, test)
    check = ContaminationCheck({"train": split("train", train), "test": split("test", test)})
    assert not list(eval_contamination(check))


def test_planted_whole_embedded_paraphrased(clean: tuple[list[str], list[str]]) -> None:
    train, test = list(clean[0]), clean[1]
    rng = random.Random(3)
    big = long_enough(test, 40)
    whole, embedded, light, heavy = (big[k : k + 5] for k in range(0, 20, 5))
    planted: dict[int, int] = {}
    for e in whole:
        planted[e] = len(train)
        train.append(test[e])
    for e in embedded:  # a paragraph inside a long training document
        host = rng.randrange(len(train))
        train[host] = f"{train[host]}\n\n{test[e]}\n\n{train[rng.randrange(len(train))]}"
        planted[e] = host
    for e in light:
        planted[e] = len(train)
        train.append(paraphrase(test[e], 15))  # runs of 14 words survive
    for e in heavy:
        train.append(paraphrase(test[e], 6))  # no 13 words in a row survive
    report = contamination(split("train", train), split("test", test))
    found = {d.eval_doc: d for d in report.documents}
    assert set(found) == set(whole) | set(embedded) | set(light)
    for e in [*whole, *embedded]:
        assert found[e].coverage == 1.0
        assert found[e].span == len(tokens_of(test[e]))
        assert planted[e] in found[e].train_docs
    for e in light:
        assert N <= found[e].span < len(tokens_of(test[e]))
        assert 0 < found[e].coverage < 1
        assert found[e].train_docs == (planted[e],)


def test_short_document_found_whole_only(clean: tuple[list[str], list[str]]) -> None:
    train, test = list(clean[0]), list(clean[1])
    short = next(i for i, t in enumerate(test) if 8 <= len(tokens_of(t)) < N)
    tiny = "Return the value."  # 3 tokens: never evidence
    test.append(tiny)
    train[0] = f"{train[0]} {test[short]} And more words follow it here. {tiny}"
    report = contamination(split("train", train), split("test", test))
    assert [(d.eval_doc, d.train_docs, d.coverage) for d in report.documents] == [
        (short, (0,), 1.0)
    ]
    assert report.documents[0].span == len(tokens_of(test[short]))


def test_boilerplate_in_every_document_is_not_contamination(
    clean: tuple[list[str], list[str]],
) -> None:
    train = [LICENCE + t for t in clean[0]]
    test = [LICENCE + t for t in clean[1]]
    report = contamination(split("train", train), split("test", test))
    assert report.documents == ()
    assert report.frequent_ngrams > 0
    # Without the filter every document would be contaminated by its header.
    unfiltered = contamination(
        split("train", train), split("test", test[:40]), max_doc_count=10**9, max_doc_fraction=1.0
    )
    assert len(unfiltered.documents) == 40
    # A planted copy still is, header or not.
    e = long_enough(clean[1], 30)[0]
    planted = contamination(split("train", [*train, LICENCE + clean[1][e]]), split("test", test))
    assert [d.eval_doc for d in planted.documents] == [e]
    assert planted.documents[0].coverage == 1.0


def test_boilerplate_in_a_small_training_split(clean: tuple[list[str], list[str]]) -> None:
    train = [LICENCE + t for t in clean[0][:6]]
    test = [LICENCE + t for t in clean[1][:50]]
    assert contamination(split("train", train), split("test", test)).documents == ()


def test_chars_mode(clean: tuple[list[str], list[str]]) -> None:
    train, test = list(clean[0]), clean[1]
    e = long_enough(test, 20)[0]
    train[5] = f"{train[5]} {test[e].upper()} {train[6]}"
    report = contamination(split("train", train), split("test", test[:100]), mode="chars")
    assert report.n == 50
    hit = next(d for d in report.documents if d.eval_doc == e)
    assert hit.train_docs == (5,) and hit.coverage == 1.0
    assert hit.span == len(normalise(test[e]))


def test_chunking_does_not_change_the_result(clean: tuple[list[str], list[str]]) -> None:
    train, test = list(clean[0]), clean[1]
    for e in long_enough(test, 20)[:4]:
        train.insert(e * 3, test[e])
    one = contamination(split("train", train), split("test", test), chunk_size=4096)
    many = contamination(split("train", train), split("test", test), chunk_size=7)
    assert one.documents == many.documents and len(one.documents) == 4
    # merge is associative and order-free on disjoint batches
    index = eval_index(test)
    parts = [train_hits(index, train[k : k + 100], k) for k in range(0, len(train), 100)]
    a = merge([merge(parts[:5]), merge(parts[5:])])
    b = merge(parts[::-1])
    assert all(
        np.array_equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True)
    )


def test_verify_spans_and_coverage() -> None:
    eval_text = "Alpha beta, gamma delta epsilon. Zeta eta theta iota kappa lambda mu nu xi!"
    train_text = f"Something else first. {eval_text.upper()} And then something else."
    shared = verify(eval_text, train_text, 5)
    assert shared.longest == 14 and shared.coverage == 1.0
    assert shared.eval_span == (0, 14) and shared.train_span == (3, 17)
    half = verify(eval_text, "zeta eta theta iota kappa lambda mu", 5)
    assert half.longest == 7 and half.coverage == pytest.approx(3 / 10)
    lo, hi = char_span(train_text, shared.train_span)
    assert train_text[lo:hi] == eval_text.upper()
    assert char_span("Hello, world! Foo-bar baz.", (1, 3)) == (7, 21)  # "world! Foo-bar"


def test_hash_collisions_never_make_a_finding(
    clean: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    unrelated = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi"
    other = "one two three four five six seven eight nine ten eleven twelve thirteen"
    monkeypatch.setattr(dc, "_mix", lambda x: np.zeros_like(x))  # every hash the same
    assert verify(unrelated, other).longest == 0
    assert verify(unrelated, f"{other} {unrelated}").longest == 14
    # 12 bits of hash: thousands of collisions, none verified.
    monkeypatch.setattr(dc, "_mix", lambda x: (x * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(52))
    train, test = clean
    report = contamination(
        split("train", train), split("test", test), max_doc_count=10**9, max_doc_fraction=1.0
    )
    assert report.candidates > 50
    assert report.documents == ()


def test_odd_inputs(clean: tuple[list[str], list[str]]) -> None:
    train, test = clean
    empty = ["", "   ", "!!! ... ---", "\x00\x01", "é"]
    report = contamination(
        split("train", [*empty, *train[:50]]), split("test", [*empty, *test[:50]])
    )
    assert report.documents == ()
    assert contamination(split("train", empty), split("test", empty)).documents == ()
    assert verify("", "") == dc.NOTHING
    # Unicode forms and punctuation too; a dash joins its words as "-" does.
    assert normalise("Ｆｕｌｌ—width “quotes” and it's") == "fullwidth quotes and its"


def test_a_5mb_training_document(clean: tuple[list[str], list[str]]) -> None:
    train, test = clean
    e = long_enough(test, 30)[0]
    filler = "\n\n".join(train)
    huge = (filler * (2_500_000 // len(filler) + 1))[:2_500_000]
    doc = huge + "\n\n" + test[e] + "\n\n" + huge
    assert len(doc) > 5_000_000
    report = contamination(split("train", [doc, *train[:10]]), split("test", test))
    assert [(d.eval_doc, d.train_docs, d.coverage) for d in report.documents] == [(e, (0,), 1.0)]


def test_repetitive_and_huge_evaluation_documents(clean: tuple[list[str], list[str]]) -> None:
    train, test = clean
    the = "the " * 300_000  # every window equal to every other one
    e = long_enough(test, 30)[0]
    huge_eval = "\n\n".join(train[:800]) * 30  # a 5 MB evaluation document, not in train
    assert len(huge_eval) > 5_000_000
    report = contamination(
        split("train", [the, *train[800:], test[e]]), split("test", [the, huge_eval, test[e]])
    )
    found = {d.eval_doc: d for d in report.documents}
    assert set(found) == {0, 2}  # "the the ..." is in training too, just once
    assert found[0].coverage == 1.0 and found[2].train_docs == (len(train) - 800 + 1,)
    assert found[0].span >= N


# --------------------------------------------------------------------------- the CLI and report


def _write(path: Path, texts: Sequence[str]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": list(texts)}), path, row_group_size=500)
    return path


def _check(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "diag", "check", *args, "--format", "json", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cli_finds_planted_contamination(
    clean: tuple[list[str], list[str]], tmp_path: Path, suffix: str
) -> None:
    train, test = list(clean[0]), list(clean[1])
    big = long_enough(test, 40)
    train.append(test[big[0]])  # whole
    train[10] = f"{train[10]}\n\n{test[big[1]]}\n\n{train[11]}"  # embedded
    train.append(paraphrase(test[big[2]], 15))  # lightly paraphrased
    test[big[3]] = test[big[3]] + " <script>alert(1)</script> & more"
    train.append(test[big[3]])
    a = _write(tmp_path / f"train{suffix}", train)
    b = _write(tmp_path / f"test{suffix}", test)
    html = tmp_path / "report.html"
    done = _check("--split", f"train={a}", "--split", f"test={b}", "--html", str(html))
    assert done.returncode == 1, done.stderr
    found = [f for f in json.loads(done.stdout)["findings"] if f["rule"] == "eval-contamination"]
    assert len(found) == 1
    ev = found[0]["evidence"]
    assert ev["contaminated"] == 4 and ev["fraction_test"] == pytest.approx(4 / len(test))
    assert {d["eval"] for d in ev["documents"]} == set(big[:4])
    assert {d["train"][0] for d in ev["documents"]} == {
        len(train) - 3,
        10,
        len(train) - 2,
        len(train) - 1,
    }
    assert "\n" not in found[0]["message"]
    page = html.read_text()
    assert page.count("<mark>") == 8  # both sides of 4 documents
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more</mark>" in page
    assert "<script>" not in page
    eval_id = open_split("test", b).sample_id(big[3])
    train_id = open_split("train", a).sample_id(len(train) - 1)
    assert f"test {eval_id} in train {train_id}: span" in page
    # the clean pair: no finding, exit 0
    a = _write(tmp_path / f"clean_train{suffix}", clean[0])
    b = _write(tmp_path / f"clean_test{suffix}", clean[1])
    done = _check("--split", f"train={a}", "--split", f"test={b}", "--select", "eval-contamination")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["findings"] == []


def test_rule_skips_non_text_splits() -> None:
    table = Split("train", Path("t.npz"), "table", Texts([]))
    check = ContaminationCheck({"train": table, "test": split("test", ["x"])})
    assert list(eval_contamination(check)) == []


def test_hits_stay_small_for_boilerplate() -> None:
    index = eval_index([LICENCE + "some evaluation text that is long enough to matter here ok"])
    batches = [train_hits(index, [LICENCE + f"doc {k}"] * 100, k * 100) for k in range(20)]
    acc = Hits.empty()
    for h in batches:
        acc = merge([acc, h], keep=3)
    assert acc.counts.max() == 2000
    assert len(acc.pair_docs) <= 3 * len(acc.keys)
