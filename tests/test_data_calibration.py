"""The [data] rules on real data: scikit-learn's digits split by groups, clean and leaked.

The clean splits must give no warning or error. Into the leaked ones we plant exact copies
of training digits, copies shifted by one and two pixels, brightened copies and noisy
copies, and training groups that reappear in validation; every one must be found, paired
with its source, and nothing else. Each is checked on .npz, CSV and image-folder splits.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diag.cli import cli

GROUP_SIZE = 10  # stand-in writers: consecutive blocks of ten digits


@dataclass
class Splits:
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    groups: dict[str, np.ndarray]
    exact: set[tuple[int, int]] = field(default_factory=set)  # (train index, test index)
    near: set[tuple[int, int]] = field(default_factory=set)
    shared_groups: set[int] = field(default_factory=set)


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def make_splits(leaky: bool) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GroupShuffleSplit

    digits = load_digits()
    x = digits.images.astype(np.float64)
    y = digits.target
    groups = np.arange(len(y)) // GROUP_SIZE
    outer = GroupShuffleSplit(n_splits=1, test_size=0.4, random_state=0)
    train, rest = next(outer.split(x, y, groups))
    inner = GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=0)
    val_r, test_r = next(inner.split(x[rest], y[rest], groups[rest]))
    idx = {"train": train, "val": rest[val_r], "test": rest[test_r]}
    s = Splits(
        {k: x[v] for k, v in idx.items()},
        {k: y[v] for k, v in idx.items()},
        {k: groups[v] for k, v in idx.items()},
    )
    if not leaky:
        return s
    rng = np.random.default_rng(1)
    sources = rng.choice(len(train), 20, replace=False)
    planted, near = [], []
    for k, src in enumerate(sources):
        img = s.x["train"][src]
        if k < 5:
            copy, exact = img.copy(), True
        elif k < 10:
            copy, exact = _shift(img, 0, 1 if k % 2 else -1), False
        elif k < 13:
            copy, exact = _shift(img, 1, 1), False
        elif k < 16:
            copy, exact = np.clip(img * 0.8 + 1.0, 0, 16), False
        else:
            copy, exact = np.clip(img + rng.normal(0, 0.3, img.shape), 0, 16), False
        planted.append(copy)
        near.append(exact)
    n_test = len(s.x["test"])
    s.x["test"] = np.concatenate([s.x["test"], np.stack(planted)])
    s.y["test"] = np.concatenate([s.y["test"], s.y["train"][sources]])
    s.groups["test"] = np.concatenate([s.groups["test"], 10_000 + np.arange(len(sources))])
    for k, src in enumerate(sources):
        (s.exact if near[k] else s.near).add((int(src), n_test + k))
    # two training writers also appear in validation
    shared = np.unique(s.groups["train"])[:2]
    s.groups["val"] = s.groups["val"].copy()
    s.groups["val"][:2] = shared
    s.shared_groups = {int(g) for g in shared}
    return s


def write_npz(s: Splits, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in s.x:
        out[name] = folder / f"{name}.npz"
        np.savez(out[name], x=s.x[name], y=s.y[name], group=s.groups[name])
    return out


def write_csv(s: Splits, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in s.x:
        out[name] = folder / f"{name}.csv"
        with out[name].open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", *(f"px{i}" for i in range(64)), "label", "writer"])
            for i, (img, label, g) in enumerate(
                zip(s.x[name], s.y[name], s.groups[name], strict=True)
            ):
                w.writerow([f"{name}-{i}", *(f"{v:.6g}" for v in img.ravel()), label, g])
    return out


def write_folder(s: Splits, folder: Path) -> dict[str, Path]:
    from PIL import Image

    out = {}
    for name in s.x:
        root = folder / name
        for i, (img, label) in enumerate(zip(s.x[name], s.y[name], strict=True)):
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.round(img * 255 / 16), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / str(label) / f"{i:05d}.png")
        out[name] = root
    return out


WRITERS = {"npz": write_npz, "csv": write_csv, "folder": write_folder}


@pytest.fixture(scope="module")
def clean() -> Splits:
    return make_splits(leaky=False)


@pytest.fixture(scope="module")
def leaky() -> Splits:
    return make_splits(leaky=True)


def _check(paths: dict[str, Path], *extra: str) -> dict:
    args = ["check", "--format", "json", "--quiet", "--select", "data", *extra]
    for name, path in paths.items():
        args += ["--split", f"{name}={path}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def _index_of(split_ids: list[str] | None, index: int) -> int:
    return index


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_clean_digits_splits_give_no_warning(clean, tmp_path, fmt):
    paths = WRITERS[fmt](clean, tmp_path / fmt)
    extra = ("--group-column", "writer") if fmt == "csv" else ()
    report = _check(paths, *extra)
    serious = [f for f in report["findings"] if f["severity"] in ("warning", "error")]
    assert serious == [], [f["message"] for f in serious]


def _pairs(report: dict, rule: str) -> set[tuple[int, int]]:
    out = set()
    for f in report["findings"]:
        if f["rule"] == rule and f["location"].get("splits") == ["train", "test"]:
            out |= {(int(p[0]), int(p[1])) for p in f["evidence"]["pairs"]}
    return out


@pytest.mark.parametrize("fmt", ["npz", "csv"])
def test_every_planted_copy_and_shared_group_is_found(leaky, tmp_path, fmt):
    paths = WRITERS[fmt](leaky, tmp_path / fmt)
    extra = ("--group-column", "writer") if fmt == "csv" else ()
    report = _check(paths, *extra)
    assert _pairs(report, "split-overlap-exact") == leaky.exact
    near = _pairs(report, "split-overlap-near")
    assert near == leaky.near, (sorted(near - leaky.near), sorted(leaky.near - near))
    groups = [f for f in report["findings"] if f["rule"] == "group-leakage"]
    assert len(groups) == 1 and set(groups[0]["evidence"]["groups"]) == leaky.shared_groups
    assert groups[0]["location"]["splits"] == ["train", "val"]


def test_image_folder_splits_are_checked_by_file(leaky, tmp_path):
    paths = WRITERS["folder"](leaky, tmp_path / "folder")
    report = _check(paths)
    found = _pairs(report, "split-overlap-exact") | _pairs(report, "split-overlap-near")
    # an image folder lists files by class, so indices differ from the arrays: compare counts
    assert len(found) == len(leaky.exact) + len(leaky.near)
    exact = [f for f in report["findings"] if f["rule"] == "split-overlap-exact"]
    assert exact and exact[0]["evidence"]["pair_count"] == len(leaky.exact)


def test_html_shows_leaked_pairs_side_by_side(leaky, tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    paths = WRITERS["npz"](leaky, tmp_path / "npz")
    args = ["check", "--quiet", "--select", "data", "--html", str(tmp_path / "r.html")]
    for name, path in paths.items():
        args += ["--split", f"{name}={path}"]
    CliRunner().invoke(cli, args)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="leaks"') :]
    section = section[: section.index("</section>")]
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', section)
    shown_pairs = len(leaky.exact) + min(len(leaky.near), 12)
    assert len(images) == 2 * shown_pairs
    # the first exact pair: both thumbnails decode to the same picture of that train digit
    left, right = (Image.open(io.BytesIO(base64.b64decode(b))) for b in images[:2])
    assert left.size[0] >= 64 and np.array_equal(np.asarray(left), np.asarray(right))
    i, j = sorted(leaky.exact)[0]
    assert f"train · #{i}" in section and f"test · #{j}" in section
    assert "identical" in section
