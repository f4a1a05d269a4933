"""Each [data] rule on small hand-made splits: the fault it names fires, its twin is silent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from diag.api import CheckOptions, check
from diag.registry import load_rules

RNG = np.random.default_rng(0)


def table(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def labels(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


Arrays = dict[str, dict[str, np.ndarray]]


def healthy() -> Arrays:
    return {
        "train": {
            "x": table(4000, seed=1),
            "y": labels(4000, seed=1),
            "group": np.arange(4000) // 4,
        },
        "val": {
            "x": table(12000, seed=2),
            "y": labels(12000, seed=2),
            "group": 2000 + np.arange(12000) // 4,
        },
    }


def edit(arrays: Arrays, split: str, **changes: np.ndarray) -> Arrays:
    out = {k: dict(v) for k, v in arrays.items()}
    out[split].update(changes)
    return out


def copied_rows() -> Arrays:
    a = healthy()
    x = a["val"]["x"].copy()
    x[:3] = a["train"]["x"][[5, 6, 7]]
    return edit(a, "val", x=x)


def rounded_rows() -> Arrays:
    a = healthy()
    x = a["val"]["x"].copy()
    x[:3] = np.round(a["train"]["x"][[5, 6, 7]], 3)
    return edit(a, "val", x=x)


def shared_groups() -> Arrays:
    a = healthy()
    g = a["val"]["group"].copy()
    g[:8] = [0, 0, 0, 0, 1, 1, 1, 1]
    return edit(a, "val", group=g)


def repeated_in_train() -> Arrays:
    a = healthy()
    x = a["train"]["x"].copy()
    x[10] = x[11]
    return edit(a, "train", x=x)


def unseen_label() -> Arrays:
    a = healthy()
    y = a["val"]["y"].copy()
    y[:30] = 9
    return edit(a, "val", y=y)


def shifted_classes() -> Arrays:
    a = healthy()
    y = a["val"]["y"].copy()
    y[: len(y) // 2] = 0
    return edit(a, "val", y=y)


def small_val() -> Arrays:
    a = healthy()
    return edit(
        a, "val", x=a["val"]["x"][:300], y=a["val"]["y"][:300], group=a["val"]["group"][:300]
    )


def _texts() -> tuple[list[str], list[str]]:
    """Standard-library docstrings: 60 for training, 20 for evaluation that share no run of
    13 words with them (the standard library repeats sentences between siblings: those
    are left out by a plain set of word windows, independent of the rule's code)."""
    from test_splits_text_formats import stdlib_docstrings

    def windows(text: str) -> set[tuple[str, ...]]:
        words = "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()
        return {tuple(words[i : i + 13]) for i in range(len(words) - 12)}

    docs = stdlib_docstrings()
    train = docs[:60]
    seen = set().union(*map(windows, train))
    test = [d for d in docs[60:] if not windows(d) & seen][:20]
    return train, test


def clean_texts() -> Arrays:
    train, test = _texts()
    return {"train": {"x": np.array(train)}, "test": {"x": np.array(test)}}


def quoted_texts() -> Arrays:
    """A training page that quotes an evaluation document inside its own text."""
    train, test = _texts()
    train[7] = f"{train[7]}\n\n{test[3]}\n\n{train[8]}"
    return {"train": {"x": np.array(train)}, "test": {"x": np.array(test)}}


@dataclass
class Case:
    id: str
    rule: str
    arrays: Callable[[], Arrays]
    fires: bool


CASES = [
    Case("copied-rows", "split-overlap-exact", copied_rows, True),
    Case("disjoint", "split-overlap-exact", healthy, False),
    Case("rounded-rows", "split-overlap-near", rounded_rows, True),
    Case("copies-are-exact-not-near", "split-overlap-near", copied_rows, False),
    Case("disjoint", "split-overlap-near", healthy, False),
    Case("shared-groups", "group-leakage", shared_groups, True),
    Case("disjoint-groups", "group-leakage", healthy, False),
    Case("repeated-row", "duplicates-within-split", repeated_in_train, True),
    Case("no-repeats", "duplicates-within-split", healthy, False),
    Case("unseen-label", "split-label-shift", unseen_label, True),
    Case("shifted-classes", "split-label-shift", shifted_classes, True),
    Case("same-classes", "split-label-shift", healthy, False),
    Case("quoted-in-train", "eval-contamination", quoted_texts, True),
    Case("disjoint-texts", "eval-contamination", clean_texts, False),
    Case("300-samples", "validation-set-size", small_val, True),
    Case("12000-samples", "validation-set-size", healthy, False),
]  # fmt: skip


def _write(arrays: Arrays, folder: Path) -> dict[str, str]:
    out = {}
    for name, parts in arrays.items():
        path = folder / f"{name}.npz"
        np.savez(path, **parts)
        out[name] = str(path)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}:{c.id}")
def test_data_case(case: Case, tmp_path):
    splits = _write(case.arrays(), tmp_path)
    result, _ = check(CheckOptions(splits=splits, select=[case.rule]))
    assert not result.errors, result.errors
    assert bool(result.findings) == case.fires, [f.message for f in result.findings]


def test_every_data_rule_has_a_firing_and_a_silent_case():
    names = {s.name for s in load_rules() if s.group == "data"}
    assert names == {c.rule for c in CASES if c.fires} == {c.rule for c in CASES if not c.fires}


def test_exact_overlap_names_the_pairs_and_the_fraction(tmp_path):
    splits = _write(copied_rows(), tmp_path)
    result, _ = check(CheckOptions(splits=splits, select=["split-overlap-exact"]))
    (finding,) = result.findings
    assert sorted(tuple(p[:2]) for p in finding.evidence["pairs"]) == [(5, 0), (6, 1), (7, 2)]
    assert finding.location.details["splits"] == ["train", "val"]
    assert finding.evidence["pair_count"] == 3


def test_label_shift_and_size_rules_report_their_numbers(tmp_path):
    splits = _write(small_val(), tmp_path)
    result, _ = check(CheckOptions(splits=splits, select=["validation-set-size"]))
    (finding,) = result.findings
    assert finding.evidence["samples"] == 300
    assert finding.evidence["interval_points"] > 2
    assert 3000 < finding.evidence["samples_needed"] < 4000  # ±1 point at 90% accuracy


def test_html_shows_near_table_rows_with_the_differing_cells(tmp_path):
    splits = _write(rounded_rows(), tmp_path)
    from diag.reports import render

    result, run = check(CheckOptions(splits=splits, select=["split-overlap-near"]))
    page = render("html", result, run)
    section = page[page.index('<section id="leaks"') :]
    assert section.count('class="pair"') == 3
    assert 'class="num diff"' in section  # rounded cells differ from the originals


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((4, 3)), "y": np.zeros(5)}, "4"),
        ({"x": np.array([np.zeros(2), np.zeros(3)], dtype=object)}, "object arrays"),
    ],
)
def test_malformed_splits_exit_2_with_one_line(tmp_path, arrays, fragment):
    import hostile_sandbox as hs

    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    good = tmp_path / "good.npz"
    np.savez(good, x=table(10))
    outcome = hs.run_diag(["--split", f"train={good}", "--split", f"val={path}"], tmp_path)
    hs.check_invariants(outcome, allowed=[tmp_path])
    line = hs.check_refused(outcome, str(path), fragment)
    assert line.startswith(f"diag: error: {path}: ")


def test_a_split_option_without_a_name_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from diag.cli import cli

    result = CliRunner().invoke(cli, ["check", "--split", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "is not NAME=PATH" in result.output


def test_splits_come_from_tool_diag_too(tmp_path):
    import json

    from click.testing import CliRunner

    from diag.cli import cli

    _write(copied_rows(), tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.diag]\nsplits = { train = "train.npz", val = "val.npz" }\n'
        'select = ["split-overlap-exact"]\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        cli, ["check", "--config", str(tmp_path / "pyproject.toml"), "--format", "json", "-q"]
    )
    report = json.loads(result.output)
    assert [f["rule"] for f in report["findings"]] == ["split-overlap-exact"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[tool.diag]\nsplits = ["train.npz"]\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", "--config", str(bad)])
    assert result.exit_code == 2 and "splits must be a table" in result.output
