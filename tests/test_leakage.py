"""The leakage engine on real data: silent on honest splits, finds every planted copy.

Real data: scikit-learn's 1,797 8x8 digits (split by stand-in writer groups) and its two
sample photos. Planted copies are made from one split and put into another; each must be
reported paired with its source, and nothing else may be reported.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from sklearn.model_selection import GroupShuffleSplit

from diag import leakage as lk
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, Split, TableChunk


class ListSource:
    """An in-memory `SampleSource` over a list (images, strings) or a 2-D array (table)."""

    def __init__(self, items: Sequence[object] | np.ndarray, text: Sequence[str] | None = None):
        self.items = items
        self.text = text

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, lo: int, hi: int) -> object:
        if isinstance(self.items, np.ndarray) and self.items.ndim == 2:
            return TableChunk(self.items[lo:hi], None if self.text is None else self.text[lo:hi])
        return list(self.items[lo:hi])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        for start in range(0, len(self.items), size):
            yield start, self._get(start, start + size)

    def take(self, indices: Sequence[int]) -> list[object]:
        table = isinstance(self.items, np.ndarray) and self.items.ndim == 2
        return [self._get(i, i + 1) if table else self.items[i] for i in indices]


def make_split(name: str, kind: str, items, text=None) -> Split:
    return Split(name, Path(name), kind, ListSource(items, text))


def digest(name: str, kind: str, items, text=None) -> lk.SplitDigest:
    return lk.digest_split(make_split(name, kind, items, text))


# ------------------------------------------------------------------------- edits


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx), zero fill: what `np.roll` without the wrap would do."""
    out = np.zeros_like(x)
    h, w = x.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def resize(x: np.ndarray, size: int, method=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(x.astype(np.float32), "F").resize((size, size), method))


def jpeg(x: np.ndarray, top: float, size: int | None = None) -> np.ndarray:
    img = Image.fromarray(
        np.rint(np.clip(np.asarray(x, float), 0, top) * 255 / top).astype(np.uint8)
    )
    if size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return x + np.random.default_rng(seed).normal(0, sigma, x.shape)


DIGIT_EDITS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda x: x.copy(),
    "shift-down-1": lambda x: shift(x, 1, 0),
    "shift-left-1": lambda x: shift(x, 0, -1),
    "shift-2-1": lambda x: shift(x, -2, 1),
    "shift-right-2": lambda x: shift(x, 0, 2),
    "upsample-16": lambda x: resize(x, 16),
    "upsample-24-bicubic": lambda x: resize(x, 24, Image.BICUBIC),
    "brightness-contrast": lambda x: x * 0.8 + 1,
    "noise-2pct": lambda x: noisy(x, 0.02 * 16, int(x.sum())),
    "jpeg-32": lambda x: jpeg(x, 16, 32),
}


# ------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    images = load_digits().images
    groups = np.arange(len(images)) // 10  # stand-in writers: 10 consecutive samples each
    gss = GroupShuffleSplit(n_splits=1, test_size=0.4, random_state=0)
    train, rest = next(gss.split(images, groups=groups))
    half = len(rest) // 2
    return {"images": images, "train": train, "val": rest[:half], "test": rest[half:]}


@pytest.fixture(scope="module")
def digit_digests(digits) -> dict[str, lk.SplitDigest]:
    x = digits["images"]
    return {s: digest(s, IMAGE, list(x[digits[s]])) for s in ("train", "val", "test")}


def test_real_digit_splits_are_silent_with_margin(digit_digests):
    d = digit_digests
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        result = lk.compare_splits(d[a], d[b])
        assert result.pairs() == [], (a, b)
        # The closest natural pair must clear the threshold by a margin (measured ~1.2x).
        loose = lk.compare_splits(d[a], d[b], factor=1.0)
        closest = min(p.score for p in loose.near)
        assert closest > 1.1 * result.threshold, (a, b, closest / result.scale)


def test_every_planted_digit_copy_is_found_and_nothing_else(digits, digit_digests):
    x, train = digits["images"], digits["train"]
    rng = np.random.default_rng(5)
    sources = rng.choice(len(train), 6 * len(DIGIT_EDITS) * 2, replace=False).reshape(2, -1)
    results = {}
    for split, srcs in zip(("val", "test"), sources, strict=True):
        items = [x[i] for i in digits[split]]
        truth = {}
        for n, (name, edit) in enumerate(DIGIT_EDITS.items()):
            for src in srcs[n * 6 : (n + 1) * 6]:
                items.append(edit(x[train[src]]))
                truth[len(items) - 1] = (int(src), name)
        results[split] = (
            lk.compare_splits(digit_digests["train"], digest(split, IMAGE, items)),
            truth,
        )
    for split, (result, truth) in results.items():
        got = {(p.i, p.j): p for p in result.pairs()}
        want = {(src, j) for j, (src, _) in truth.items()}
        missed = sorted(truth[j][1] for (_, j) in want - set(got))
        assert not missed, (split, missed)
        assert set(got) == want, (split, sorted(set(got) - want))
        for (_, j), p in got.items():
            assert p.kind == ("exact" if truth[j][1] == "copy" else "near"), (truth[j], p)


# ----------------------------------------------------------------- exact hashing


def test_one_picture_stored_three_ways_hashes_the_same():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    stored = [levels, levels / 255.0, levels.astype(np.float64), np.dstack([levels] * 3)]
    stored.append(np.dstack([levels] * 3 + [np.full_like(levels, 255)]))  # opaque RGBA
    d = digest("a", IMAGE, stored)
    assert len(lk.exact_groups(d)) == 1 and len(lk.exact_groups(d)[0]) == len(stored)
    other = digest("b", IMAGE, [levels.T, levels[:, :8], (levels / 255.0) * 0.5])
    assert lk.exact_pairs(d, other).n_pairs == 0  # transposed, cropped, darker: not equal


def test_table_rows_equal_up_to_signed_zero_and_nan_and_text_case():
    rows = np.array([[0.0, np.nan, 1.5], [-0.0, np.nan, 1.5], [0.0, 0.0, 1.5], [0.1, 2.0, 3.0]])
    d = digest("t", TABLE, rows, text=["Red ", "red", "red", "blue"])
    assert [g.tolist() for g in lk.exact_groups(d)] == [[0, 1]]
    # float64 values that float32 cannot hold stay distinct
    wide = np.array([[1.0 + 1e-12], [1.0]])
    assert lk.exact_groups(digest("w", TABLE, wide)) == []


def test_text_equal_up_to_case_whitespace_and_punctuation():
    texts = ["Hello,   World!", "hello world", "HELLO WORLD...", "hello word"]
    groups = lk.exact_groups(digest("s", TEXT, texts))
    assert [g.tolist() for g in groups] == [[0, 1, 2]]


def test_exact_pairs_lists_every_index_pair_and_counts():
    a = digest("a", TEXT, ["x", "y", "x", "z", "w"])
    b = digest("b", TEXT, ["x", "q", "x", "z", "x"])
    ex = lk.exact_pairs(a, b)
    assert ex.pairs.tolist() == [[0, 0], [0, 2], [0, 4], [2, 0], [2, 2], [2, 4], [3, 3]]
    assert (ex.n_pairs, ex.n_a, ex.n_b) == (7, 3, 4)
    capped = lk.exact_pairs(a, b, max_pairs=2)
    assert len(capped.pairs) == 2 and capped.n_pairs == 7


def test_exact_hashing_is_vectorised_enough():
    # 50,000 x 256 float64 rows through the streaming path; the bench does a million.
    import time

    x = np.random.default_rng(1).standard_normal((50_000, 256)).astype(np.float32)
    t = time.perf_counter()
    d = lk.digest_split(make_split("big", TABLE, x.astype(np.float64)), near=False)
    assert time.perf_counter() - t < 3.0
    assert d.hashes.shape == (50_000, 2) and d.records is None


# ------------------------------------------------------------------------ photos


@pytest.fixture(scope="module")
def photo_patches() -> tuple[list[np.ndarray], list[tuple[int, int, int]]]:
    """48x48 RGB patches on a 48-pixel grid of both sample photos, and where each sits.

    Nearly uniform patches (blank sky, grey std < 8 levels, ~20% of them) are left out:
    with brightness and contrast removed, two of them differ only by JPEG noise, and the
    engine reports them as near copies (they do look the same).
    """
    patches, where = [], []
    for k, photo in enumerate(load_sample_images().images):
        for y in range(0, photo.shape[0] - 50, 48):
            for x in range(0, photo.shape[1] - 50, 48):
                patch = photo[y : y + 48, x : x + 48]
                if patch.mean(axis=2).std() >= 8:
                    patches.append(patch)
                    where.append((k, y, x))
    return patches, where


def test_photo_patches_with_planted_shifted_and_jpeg_copies(photo_patches):
    patches, where = photo_patches
    photos = load_sample_images().images
    rng = np.random.default_rng(3)
    order = rng.permutation(len(patches))
    train_idx, val_idx = order[: len(order) // 2], order[len(order) // 2 :]
    train = [patches[i] for i in train_idx]
    val = [patches[i] for i in val_idx]
    silent = lk.compare_splits(digest("train", IMAGE, train), digest("val", IMAGE, val))
    assert silent.pairs() == []

    def recrop(i: int, dy: int, dx: int) -> np.ndarray:
        k, y, x = where[train_idx[i]]
        return photos[k][y + dy : y + dy + 48, x + dx : x + dx + 48]

    edits = {
        "recrop-1": lambda i: recrop(i, 1, 0),
        "recrop-2": lambda i: recrop(i, 0, 2),
        "shift-1-zero-fill": lambda i: shift(train[i], 0, -1),
        "jpeg": lambda i: jpeg(train[i], 255),
        "noise": lambda i: noisy(train[i].astype(float), 0.02 * 255, i),
    }
    truth = {}
    for n, edit in enumerate(edits.values()):
        for i in range(n * 4, n * 4 + 4):
            val.append(edit(i))
            truth[len(val) - 1] = i
    d_train = digest("train", IMAGE, train)
    result = lk.compare_splits(d_train, digest("val", IMAGE, val))
    got = {(p.i, p.j) for p in result.pairs()}
    assert {(i, j) for j, i in truth.items()} <= got
    # Neighbouring patches of one repetitive texture (roof tiles) are near copies of each
    # other already inside train; a copy of one is then also a near copy of its twin.
    twins = {int(x): set(g.tolist()) for g in lk.duplicate_groups(d_train, near=True) for x in g}
    for i, j in got - {(i, j) for j, i in truth.items()}:
        assert i in twins.get(truth[j], ()), (i, j)


# ------------------------------------------------------------------------- tables


def round_significant(x: np.ndarray, digits: int) -> np.ndarray:
    mag = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(np.where(x == 0, 1, x)))))
    return np.round(x * mag) / mag


@pytest.mark.parametrize("table", ["digits", "normal"])
def test_tables_with_planted_rounded_and_rescaled_rows(digits, table):
    if table == "digits":
        x = digits["images"].reshape(len(digits["images"]), -1)
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)  # standardised pixel features
        a_rows, b_rows = x[digits["train"]], x[np.r_[digits["val"], digits["test"]]]
    else:
        x = np.random.default_rng(4).standard_normal((3000, 20)) * np.geomspace(1e-3, 1e3, 20)
        a_rows, b_rows = x[:2000], x[2000:]
    a = digest("a", TABLE, a_rows)
    assert lk.compare_splits(a, digest("b", TABLE, b_rows)).pairs() == []
    planted = {
        "rounded-4": lambda r: round_significant(r, 4),
        "rescaled": lambda r: r * 2.5,
        "rescaled-rounded": lambda r: round_significant(r / 16, 4),
    }
    rows, truth = list(b_rows), {}
    for n, edit in enumerate(planted.values()):
        for i in range(n * 5, n * 5 + 5):
            rows.append(edit(a_rows[i]))
            truth[len(rows) - 1] = i
    rows.append(a_rows[99].copy())
    truth[len(rows) - 1] = 99
    result = lk.compare_splits(a, digest("b", TABLE, np.array(rows)))
    got = {(p.i, p.j): p.kind for p in result.pairs()}
    assert set(got) == {(i, j) for j, i in truth.items()}
    assert got[(99, len(rows) - 1)] == "exact"


# --------------------------------------------------------------------------- text

WORDS = [
    "river",
    "stone",
    "light",
    "market",
    "garden",
    "window",
    "paper",
    "silver",
    "engine",
    "forest",
    "winter",
    "yellow",
    "harbour",
    "candle",
    "mirror",
    "thunder",
    "orchard",
    "signal",
    "ladder",
    "valley",
    "copper",
    "blanket",
    "feather",
    "compass",
    "lantern",
    "meadow",
    "pepper",
    "saddle",
    "timber",
    "velvet",
    "anchor",
    "basket",
    "canyon",
    "dolphin",
    "glacier",
    "hammer",
    "island",
    "jacket",
    "kettle",
    "lemon",
    "magnet",
    "needle",
    "oyster",
    "pillow",
    "quartz",
    "ribbon",
]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, int(rng.integers(24, 32))))
        out.append(" ".join(words).capitalize() + ".")
    return out


def test_text_with_planted_case_and_one_word_variants():
    train, val = sentences(1500, 0), sentences(600, 1)
    a = digest("train", TEXT, train)
    assert lk.compare_splits(a, digest("val", TEXT, val)).pairs() == []
    rng = np.random.default_rng(2)
    truth = {}
    for i in range(10):  # case, whitespace and punctuation only: exact
        val.append("  " + train[i].upper().replace(" ", ",  ") + "!")
        truth[len(val) - 1] = (i, "exact")
    for i in range(10, 25):  # one word replaced: near
        words = train[i].split()
        words[int(rng.integers(1, len(words) - 1))] = "zeppelin"
        val.append(" ".join(words))
        truth[len(val) - 1] = (i, "near")
    result = lk.compare_splits(a, digest("val", TEXT, val))
    got = {(p.i, p.j): p for p in result.pairs()}
    assert set(got) == {(i, j) for j, (i, _) in truth.items()}
    for (_, j), p in got.items():
        assert p.kind == truth[j][1]
        assert p.kind == "exact" or lk.TEXT_JACCARD <= p.score < 1


# ------------------------------------------------------------------ within a split


def test_duplicate_groups_within_a_split(digits):
    x = digits["images"]
    items = [x[i] for i in digits["val"][:200]]
    items += [items[3].copy(), shift(items[3], 0, 1), items[10] * 0.8 + 1]
    d = digest("val", IMAGE, items)
    assert [g.tolist() for g in lk.duplicate_groups(d)] == [[3, 200]]
    near = [g.tolist() for g in lk.duplicate_groups(d, near=True)]
    assert near == [[3, 200, 201], [10, 202]]


def test_progress_reports_reach_the_total(digits):
    calls: list[tuple[int, int]] = []
    x = digits["images"]
    split = make_split("val", IMAGE, [x[i] for i in digits["val"]])
    d = lk.digest_split(
        split, chunk_size=100, progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (len(split), len(split)) and len(calls) == -(-len(split) // 100)
    calls.clear()
    lk.compare_splits(d, d, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
