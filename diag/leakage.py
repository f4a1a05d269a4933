"""Leakage between splits: exact and near duplicates, found from hashes and small sketches.

One streaming pass per split (`digest_split`) keeps, per sample, a 128-bit hash of its
normalised content plus a small near-duplicate record: a 16x16 uint8 thumbnail (images), a
float32 row of at most 64 numbers (tables) or a MinHash signature (text). Everything after
that works on these records, never on the content, except that text candidates are
re-read through `SampleSource.take` to verify their Jaccard similarity exactly.

Near duplicates are decided against the data's own spread: the decision threshold is a
fraction of the median nearest-neighbour distance *within* the splits, measured with the
same verified distance on a sample. Candidates come from a nearest-neighbour index
(faiss) over small sketches and are then verified pair by pair; nothing loops over all
pairs.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from diag.loaders.splits.model import IMAGE, TABLE, TEXT, Split, TableChunk

Progress = Callable[[int, int], None]

THUMB = 16  # thumbnail side: fine enough to tell digits apart, 256 bytes per image
SKETCH = 8  # sketch side: 64 dims for the nearest-neighbour index
SKETCH_BORDER = 2  # thumbnail pixels left out of the sketch on each side
THUMB_BLUR = 0.5  # Gaussian sigma in thumbnail pixels: evens out resize and JPEG differences
# Shifts up to this many *original* pixels are searched; in thumbnail pixels that is a
# quarter of a 8x8 digit but nothing for a photo, hence the cap at THUMB // 4.
MAX_SHIFT_PX = 2
MARGIN = 1  # thumbnail pixels ignored at the overlap edges, where the blur saw the fill
TABLE_DIMS = 64  # wider tables are kept as a fixed random projection to this many dims
# A near pair is closer than this fraction of the median within-split nearest-neighbour
# distance. Measured (tests/test_leakage.py): real 8x8 digits, closest natural cross-split
# pair 0.32 of the median, planted edits at most 0.23 (2% noise); photo patches, 0.34
# natural vs 0.25 planted (2 px re-crop). 0.27 sits between both.
IMAGE_FACTOR = 0.27
TABLE_FACTOR = 0.1  # planted rounded/rescaled rows <= 0.001, natural closest >= 0.2
TEXT_JACCARD = 0.8  # character 5-shingle Jaccard; datasketch users cut at 0.8-0.85
SHINGLE = 5
NUM_PERM = 120
BANDS = 20  # 20 bands of 6 rows: P(candidate) = 0.998 at Jaccard 0.8, 0.014 at 0.3
SCALE_SAMPLE = 2000  # queries per split for the median nearest-neighbour distance
FLAT_LIMIT = 20_000  # below this an exact flat index is both fast and exact
IVF_MAX_CELLS = 4096  # cells of the inverted file above FLAT_LIMIT (about 2 sqrt(n))
IVF_PROBES = 8  # cells searched per query
STATS_ROWS = 65536  # rows (or pairs) per block of table arithmetic
MAX_EXACT_PAIRS = 1_000_000  # listed pairs; counts stay exact beyond it
BUCKET_LEFT = 256  # LSH bucket members each text is paired with
EXACT, NEAR = "exact", "near"


class LeakPair(NamedTuple):
    """Sample `i` of the first split and sample `j` of the second are copies.

    `score` is the verified distance for images and tables (0 for exact pairs) and the
    shingle Jaccard similarity for text (1 for exact pairs).
    """

    i: int
    j: int
    score: float
    kind: str


@dataclass(frozen=True, eq=False)
class SplitDigest:
    """What the leakage engine keeps of one split: hashes and near-duplicate records."""

    split: Split
    hashes: np.ndarray  # (n, 2) uint64: a 128-bit digest of each normalised sample
    records: np.ndarray | None  # thumbnails (n,16,16) u8, rows (n,d) f32, MinHash (n,P) u32
    min_side: int = 0  # smallest image side seen, which sets the shift search range
    # Indexes and scales reused when the split is compared with several others.
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.split.name

    @property
    def kind(self) -> str:
        return self.split.kind

    def __len__(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True, eq=False)
class ExactPairs:
    """Every (i, j) with equal normalised content, up to `MAX_EXACT_PAIRS` listed."""

    pairs: np.ndarray  # (m, 2) int64, sorted by i then j
    n_pairs: int  # all pairs, even beyond the listed ones
    n_a: int  # samples of the first split with a copy in the second
    n_b: int  # and the other way round


@dataclass(frozen=True, eq=False)
class SplitLeakage:
    """Exact and near copies between two splits, with the threshold that decided them."""

    a: str
    b: str
    kind: str
    exact: ExactPairs
    near: list[LeakPair]
    threshold: float  # distance below which (similarity above which, text) a pair is near
    scale: float  # median within-split nearest-neighbour distance; 0 for text

    def pairs(self) -> list[LeakPair]:
        exact_score = 1.0 if self.kind == TEXT else 0.0
        listed = [LeakPair(int(i), int(j), exact_score, EXACT) for i, j in self.exact.pairs]
        return listed + self.near


# --------------------------------------------------------------------------- hashing


def _digest16(data: bytes | memoryview, person: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=16, person=person).digest()


def _hash_rows(rows: np.ndarray, person: bytes) -> np.ndarray:
    """128-bit digests of the rows of a 2-D array, one blake2b call per row (~1.5 us for
    1 KB): rows are sliced from one memoryview, so no Python object per value."""
    rows = np.ascontiguousarray(rows)
    width = rows.shape[1] * rows.itemsize
    if width == 0:  # a table with no numeric column (found by fuzzing): all rows hash alike
        empty = _digest16(b"", person)
        return np.frombuffer(empty * len(rows), dtype=np.uint64).reshape(-1, 2).copy()
    buf = memoryview(rows).cast("B")
    h = hashlib.blake2b
    starts = range(0, len(rows) * width, width)
    out = b"".join([h(buf[k : k + width], digest_size=16, person=person).digest() for k in starts])
    return np.frombuffer(out, dtype=np.uint64).reshape(-1, 2)


def _canonical_numbers(x: np.ndarray) -> np.ndarray:
    """-0.0 becomes 0.0 and every NaN the same NaN, so equal values have equal bytes."""
    x = np.asarray(x, dtype=np.float64) + 0.0  # IEEE: -0.0 + 0.0 == +0.0
    x[np.isnan(x)] = np.nan
    return x


def _hash_numeric_rows(x: np.ndarray) -> np.ndarray:
    """Rows that float32 represents exactly (most real tables) hash their float32 bytes,
    which halves the bytes hashed; the others hash float64 under another personalisation,
    so the choice is a property of the row, not of the chunk it came in."""
    x = _canonical_numbers(x)
    x32 = x.astype(np.float32)
    fits = ((x32 == x) | np.isnan(x)).all(axis=1)
    out = np.empty((len(x), 2), dtype=np.uint64)
    if fits.any():
        out[fits] = _hash_rows(x32[fits], b"f32")
    if not fits.all():
        out[~fits] = _hash_rows(x[~fits], b"f64")
    return out


_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Case, Unicode compatibility forms, punctuation and runs of whitespace do not count."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub("", text)).strip()


def canonical_image(img: np.ndarray) -> np.ndarray:
    """One representation per picture: 2-D grey when the channels agree or there is one,
    no opaque alpha, and uint8 when the values are 8-bit levels, whether stored as uint8,
    as floats in [0, 1] or as floats in [0, 255]. Otherwise float32 values."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 4 and _is_opaque(a[..., 3]):
        a = a[..., :3]
    if a.ndim == 3 and (a.shape[2] == 1 or (a == a[..., :1]).all()):
        a = a[..., 0]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    x = _canonical_numbers(a)
    finite = np.isfinite(x).all()
    if finite and x.size and x.min() >= 0 and x.max() <= 1 and a.dtype.kind == "f":
        x = x * 255.0  # floats in [0, 1] are 8-bit levels divided by 255
    levels = np.rint(x)
    if finite and x.size and x.min() >= 0 and x.max() <= 255 and np.abs(x - levels).max() < 1e-3:
        return levels.astype(np.uint8)
    return x.astype(np.float32)


def _is_opaque(alpha: np.ndarray) -> bool:
    top = 255 if alpha.dtype == np.uint8 else (1.0 if alpha.max(initial=0) <= 1 else 255)
    return bool((alpha == top).all())


def _hash_image(img: np.ndarray) -> bytes:
    c = canonical_image(img)
    head = f"{c.dtype.str}{c.shape}".encode()  # the shape is part of the content
    return _digest16(head + c.tobytes(), b"img")


def _hash_texts(texts: Sequence[str], person: bytes) -> np.ndarray:
    out = b"".join(_digest16(normalise_text(t).encode(), person) for t in texts)
    return np.frombuffer(out, dtype=np.uint64).reshape(-1, 2)


# ------------------------------------------------------------------ near-dup records


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: a triangle filter widened when shrinking (so every input
    pixel counts), then a light Gaussian blur in output pixels."""
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    width = max(1.0, scale)
    w = np.clip(1 - np.abs(np.arange(n_in)[None] - centres[:, None]) / width, 0, None)
    w /= w.sum(axis=1, keepdims=True)
    k = np.arange(n_out)
    g = np.exp(-0.5 * ((k[:, None] - k[None]) / THUMB_BLUR) ** 2)
    return (g / g.sum(axis=1, keepdims=True)) @ w


def _grey(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] >= 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])  # Rec. 601 luma
    elif a.ndim == 3:
        a = a[..., 0]
    return np.nan_to_num(a)


def image_thumbnail(img: np.ndarray) -> np.ndarray:
    """16x16 uint8, grey, blurred, stretched to 0..255: brightness and contrast gone."""
    g = _grey(img)
    t = _resample_matrix(g.shape[0], THUMB) @ g @ _resample_matrix(g.shape[1], THUMB).T
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(t)
    return np.rint(t).astype(np.uint8)


def _table_projection(width: int) -> np.ndarray | None:
    if width <= TABLE_DIMS:
        return None
    # Fixed seed: every split of a run must be projected the same way.
    rng = np.random.default_rng(width)
    return (rng.standard_normal((width, TABLE_DIMS)) / math.sqrt(TABLE_DIMS)).astype(np.float32)


def _shingles(text: str) -> np.ndarray:
    """Character 5-shingles of the normalised text as exact uint64 codes of its UTF-8 bytes."""
    b = np.frombuffer(normalise_text(text).encode(), dtype=np.uint8).astype(np.uint64)
    if len(b) < SHINGLE:
        b = np.concatenate([b, np.zeros(SHINGLE - len(b), dtype=np.uint64)])
    n = len(b) - SHINGLE + 1
    code = np.zeros(n, dtype=np.uint64)
    for k in range(SHINGLE):
        code = (code << np.uint64(8)) | b[k : k + n]
    return np.unique(code)


_PERM = np.random.default_rng(20240611).integers(1, 2**63, size=(2, NUM_PERM), dtype=np.uint64)
_PERM[0] |= np.uint64(1)  # odd multipliers: multiply-shift hashing needs them


def _minhash(text: str) -> np.ndarray:
    s = _shingles(text)
    with np.errstate(over="ignore"):
        h = (s[:, None] * _PERM[0][None] + _PERM[1][None]) >> np.uint64(32)
    return h.min(axis=0).astype(np.uint32)


# -------------------------------------------------------------------------- digests


def digest_split(
    split: Split, *, near: bool = True, chunk_size: int = 4096, progress: Progress | None = None
) -> SplitDigest:
    """Hash every sample of `split` and, with `near`, keep its near-duplicate record.

    Memory: 16 bytes per sample plus 256 bytes (images), <= 256 bytes (tables) or 480
    bytes (text) with `near`; the content is dropped chunk by chunk.
    """
    total = len(split)
    parts = []
    chunks = split.samples.chunks(chunk_size)
    for start, part in _ordered_map(lambda c: (c[0], digest_chunk(split.kind, c[1], near)), chunks):
        parts.append(part)
        if progress is not None:
            progress(min(start + len(part.hashes), total), total)
    return _as_digest(split, _merge_owned(parts))


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _ordered_map(func: Callable, items: Iterable, workers: int | None = None) -> Iterator:
    """func over items in a few threads, results in order, a few items ahead at most.

    Worth it where func spends its time in numpy (matrix products, array arithmetic),
    which releases the GIL: image thumbnails and pixel verification use both cores.
    The items are drawn in this thread, so a loader is never read from two at once.
    """
    workers = _workers() if workers is None else workers
    if workers == 1:
        yield from map(func, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass(frozen=True, eq=False)
class DigestPart:
    """The signatures of a run of consecutive samples: the map stage's output."""

    hashes: np.ndarray
    records: np.ndarray | None
    min_side: int = 1 << 30


def digest_chunk(kind: str, chunk: object, near: bool) -> DigestPart:
    """Signatures of one chunk of samples: a pure function, so any engine can map it."""
    if kind == IMAGE:
        batch = _uint8_batch(chunk)
        if batch is not None:
            return _digest_uint8_batch(batch, near)
        imgs = [np.asarray(x) for x in chunk]  # type: ignore[attr-defined]
        raw = b"".join(_hash_image(x) for x in imgs)
        hashes = np.frombuffer(raw, dtype=np.uint64).reshape(-1, 2)
        if near and imgs:
            thumbs = np.stack([image_thumbnail(x) for x in imgs])
            return DigestPart(hashes, thumbs, min(min(x.shape[:2]) for x in imgs))
        return DigestPart(hashes, None)
    if kind == TABLE:
        return DigestPart(
            _hash_table_chunk(chunk),  # type: ignore[arg-type]
            _table_record(chunk) if near else None,  # type: ignore[arg-type]
        )
    if kind == TEXT:
        texts = list(chunk)  # type: ignore[call-overload]
        records = np.stack([_minhash(t) for t in texts]) if near and texts else None
        return DigestPart(_hash_texts(texts, b"txt"), records)
    raise ValueError(f"unknown split kind {kind!r}")


def _uint8_batch(chunk: object) -> np.ndarray | None:
    """The chunk as one (n, h, w) or (n, h, w, 3|4) uint8 array when it is one (array
    splits, and lists of equal-shaped 8-bit images): then one matrix product per chunk
    makes every thumbnail, instead of two per image."""
    if isinstance(chunk, np.ndarray):
        x = chunk
    elif isinstance(chunk, list) and chunk and all(isinstance(v, np.ndarray) for v in chunk):
        first = chunk[0]
        if first.dtype != np.uint8 or any(
            v.shape != first.shape or v.dtype != first.dtype for v in chunk
        ):
            return None
        x = np.stack(chunk)
    else:
        return None
    if x.dtype != np.uint8 or not len(x) or 0 in x.shape:
        return None
    if x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (3, 4)):
        return np.ascontiguousarray(x)
    return None


_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601


def _digest_uint8_batch(x: np.ndarray, near: bool) -> DigestPart:
    """`_hash_image` and `image_thumbnail` of every image of a uint8 batch, same results."""
    h, w = x.shape[1:3]
    if x.ndim == 3:
        hashes = _hash_images_as(x, f"{x.dtype.str}{(h, w)}")
        grey = x.astype(np.float64)
    else:
        hashes = _hash_colour_batch(x)
        grey = x[..., :3] @ _LUMA
    if not near:
        return DigestPart(hashes, None)
    return DigestPart(hashes, _thumbnails(grey), min(h, w))


def _hash_images_as(x: np.ndarray, head: str) -> np.ndarray:
    """`_hash_image` of each row of `x`, whose canonical form has the header `head`."""
    base = hashlib.blake2b(head.encode(), digest_size=16, person=b"img")
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    width = rows.shape[1]
    buf = memoryview(rows).cast("B")
    out = bytearray()
    for k in range(0, len(rows) * width, width):
        one = base.copy()  # the header's state, so it is hashed once per chunk
        one.update(buf[k : k + width])
        out += one.digest()
    return np.frombuffer(bytes(out), dtype=np.uint64).reshape(-1, 2)


def _hash_colour_batch(x: np.ndarray) -> np.ndarray:
    """Colour images canonicalise per image (opaque alpha dropped, grey when the channels
    agree): group the batch by what each image becomes, hash each group at once."""
    n, h, w, c = x.shape
    opaque = (x[..., 3] == 255).reshape(n, -1).all(axis=1) if c == 4 else np.ones(n, bool)
    rgb = x[..., :3]
    grey = (rgb == rgb[..., :1]).reshape(n, -1).all(axis=1)
    if c == 4:  # with its alpha kept, an image is grey only when all four channels agree
        grey &= opaque | (x[..., 3] == x[..., 0]).reshape(n, -1).all(axis=1)
    out = np.empty((n, 2), dtype=np.uint64)
    forms = [
        (grey, lambda v: v[..., 0], (h, w)),
        (opaque & ~grey, lambda v: v[..., :3], (h, w, 3)),
        (~opaque & ~grey, lambda v: v, (h, w, c)),
    ]
    for rows, form, shape in forms:
        if rows.any():
            out[rows] = _hash_images_as(form(x[rows]), f"{x.dtype.str}{shape}")
    return out


def _thumbnails(grey: np.ndarray) -> np.ndarray:
    """`image_thumbnail` of a stack of equal-sized grey images, with two matrix products."""
    h, w = grey.shape[1:]
    rows, cols = _resample_matrix(h, THUMB), _resample_matrix(w, THUMB)
    t = np.matmul(np.matmul(rows, grey), cols.T)
    lo = t.min(axis=(1, 2), keepdims=True)
    hi = t.max(axis=(1, 2), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    t = np.where(hi > lo, (t - lo) / span * 255, 0.0)
    return np.rint(t).astype(np.uint8)


def merge_parts(parts: Sequence[DigestPart]) -> DigestPart:
    """Consecutive parts as one, in sample order."""
    h = np.concatenate([p.hashes for p in parts]) if parts else np.zeros((0, 2), np.uint64)
    records = [p.records for p in parts if p.records is not None]
    rec = np.concatenate(records) if records else None
    return DigestPart(h, rec, min((p.min_side for p in parts), default=1 << 30))


def _merge_owned(parts: list[DigestPart]) -> DigestPart:
    """merge_parts of a list it empties: each part is dropped once copied, so a split's
    records (280 MB of thumbnails for 1.1M images) are never held twice."""
    recs = [p.records for p in parts]
    same = all(
        r is not None and r.shape[1:] == recs[0].shape[1:] and r.dtype == recs[0].dtype
        for r in recs
    )
    if not parts or not same:
        return merge_parts(parts)
    del recs
    n = sum(len(p.hashes) for p in parts)
    first = parts[0].records
    hashes = np.empty((n, 2), dtype=np.uint64)
    records = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    min_side, at = 1 << 30, 0
    parts.reverse()  # pop from the end, in sample order
    while parts:
        part = parts.pop()
        hashes[at : at + len(part.hashes)] = part.hashes
        records[at : at + len(part.hashes)] = part.records
        min_side, at = min(min_side, part.min_side), at + len(part.hashes)
    return DigestPart(hashes, records, min_side)


def assemble(split: Split, parts: Sequence[DigestPart]) -> SplitDigest:
    """One split's digest from its parts, in sample order."""
    return _as_digest(split, merge_parts(parts))


def _as_digest(split: Split, whole: DigestPart) -> SplitDigest:
    min_side = whole.min_side if whole.min_side < 1 << 30 else 0
    return SplitDigest(split, whole.hashes, whole.records, min_side)


def _hash_table_chunk(chunk: TableChunk) -> np.ndarray:
    h = _hash_numeric_rows(np.atleast_2d(chunk.numeric))
    if chunk.text is None:
        return h
    # The text cells join the numeric digest: a row is equal only when both parts are.
    cells = _hash_texts(chunk.text, b"cell")
    both = np.concatenate([h, cells], axis=1)
    return _hash_rows(both, b"row")


def _table_record(chunk: TableChunk) -> np.ndarray:
    x = np.atleast_2d(np.asarray(chunk.numeric, dtype=np.float64))
    proj = _table_projection(x.shape[1])
    if proj is None:
        return x.astype(np.float32)
    return np.nan_to_num(x).astype(np.float32) @ proj


# ---------------------------------------------------------------------- exact pairs


def _sorted_runs(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order that sorts the digests, and the start of each run of equal digests."""
    order = np.lexsort((h[:, 1], h[:, 0]))
    s = h[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    return order, np.flatnonzero(new)


def exact_pairs(a: SplitDigest, b: SplitDigest, *, max_pairs: int = MAX_EXACT_PAIRS) -> ExactPairs:
    """Every (i in a, j in b) with equal digests: a sort of both, no pairwise loop."""
    h = np.concatenate([a.hashes, b.hashes])
    order, starts = _sorted_runs(h)
    side_b = order >= len(a)
    ends = np.append(starts[1:], len(order))
    n_b = np.add.reduceat(side_b.astype(np.int64), starts) if len(order) else np.zeros(0, int)
    n_a = (ends - starts) - n_b
    shared = np.flatnonzero((n_a > 0) & (n_b > 0))
    total = int((n_a[shared] * n_b[shared]).sum())
    # One copy each side is the common case: pair those without a Python loop.
    single = shared[(n_a[shared] == 1) & (n_b[shared] == 1)]
    first, second = order[starts[single]], order[starts[single] + 1]
    ia, jb = np.minimum(first, second), np.maximum(first, second) - len(a)
    out = [np.stack([ia, jb], axis=1)[:max_pairs]]
    listed = len(out[0])
    for r in shared[(n_a[shared] > 1) | (n_b[shared] > 1)]:
        if listed >= max_pairs:
            break
        members = order[starts[r] : ends[r]]
        in_a, in_b = members[members < len(a)], members[members >= len(a)] - len(a)
        # Only the rows still to be listed: the whole grid of a big group of identical
        # samples is n_a * n_b pairs (20,000 zeros a side took 12 GB before).
        rows = min(len(in_a), -(-(max_pairs - listed) // len(in_b)))
        grid = np.stack([np.repeat(in_a[:rows], len(in_b)), np.tile(in_b, rows)], axis=1)
        out.append(grid[: max_pairs - listed])
        listed += len(out[-1])
    pairs = np.concatenate(out).astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return ExactPairs(pairs, total, int(n_a[shared].sum()), int(n_b[shared].sum()))


def exact_groups(d: SplitDigest) -> list[np.ndarray]:
    """Groups (sorted index arrays, >= 2 members) of samples equal within one split."""
    if len(d) == 0:
        return []
    order, starts = _sorted_runs(d.hashes)
    ends = np.append(starts[1:], len(order))
    groups = [np.sort(order[s:e]) for s, e in zip(starts, ends, strict=True) if e - s > 1]
    return sorted(groups, key=lambda g: int(g[0]))


# ------------------------------------------------------------ nearest-neighbour search


def _build_index(vectors: np.ndarray, unit: bool = False):  # -> faiss.Index
    """Exact below FLAT_LIMIT; above it an inverted file of about sqrt(n) cells.

    Near copies sit far closer than any natural neighbour, so the cell of a sample and its
    IVF_PROBES nearest cells hold its copies; the inverted file adds 1M rows in seconds
    where HNSW took minutes (and degenerated on runs of identical vectors). `unit` vectors
    (image sketches) are stored as float16 in the inverted file: scanning it is bound by
    memory, and half the bytes took a third off the search (1M sketches: the same top 3
    for 99.95% of the neighbours); table rows can exceed float16's range, so not them.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return _build_index_from(len(x), x.shape[1], lambda rows: x[rows], unit)


def _build_index_from(
    n: int, dims: int, rows: Callable[[np.ndarray | slice], np.ndarray], unit: bool
):
    """`_build_index` of n vectors that `rows(index or slice)` makes a block at a time."""
    import faiss  # lazy: `diag --help` must not pay for it

    if n <= FLAT_LIMIT:
        index = faiss.IndexFlatL2(dims)
        index.add(np.ascontiguousarray(rows(slice(0, n)), dtype=np.float32))
        return index
    cells = int(min(IVF_MAX_CELLS, round(2 * math.sqrt(n))))
    quantizer = faiss.IndexFlatL2(dims)
    if unit:
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dims, cells, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2
        )
        index.by_residual = False  # plain vectors, as the flat index stores them
    else:
        index = faiss.IndexIVFFlat(quantizer, dims, cells)
    index.cp.seed = 0
    # 40 training points per cell: faiss's own minimum is 39 (it warns on stderr below it).
    sample = np.random.default_rng(0).choice(n, min(n, 40 * cells), replace=False)
    index.train(np.ascontiguousarray(rows(np.sort(sample)), dtype=np.float32))
    for s in range(0, n, 65536):  # in blocks: no float copy of every vector at once
        index.add(np.ascontiguousarray(rows(slice(s, min(n, s + 65536))), dtype=np.float32))
    index.nprobe = IVF_PROBES
    return index  # faiss's wrapper keeps a reference to the quantizer


def _search(index, queries: np.ndarray, k: int) -> np.ndarray:
    """(n, k) neighbour ids, -1 where the index has fewer than k entries."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def _representatives(d: SplitDigest) -> np.ndarray | None:
    """Sorted index of one sample per run of identical samples, or None when all differ.

    Only these go into a near-copy index: exact copies are reported as exact, and a big run
    of identical vectors makes HNSW degenerate (20,000 identical images took 18 s to index,
    200,000 would take hours) and fills every neighbour list with copies of one sample.
    """
    if "representatives" not in d.cache:
        order, starts = _sorted_runs(d.hashes)
        d.cache["representatives"] = np.sort(order[starts]) if len(starts) < len(d) else None
    return d.cache["representatives"]


def _to_samples(ids: np.ndarray, reps: np.ndarray | None) -> np.ndarray:
    """Index ids (over representatives) as sample indices; -1 (no neighbour) stays."""
    if reps is None:
        return ids
    return np.where(ids >= 0, reps[np.maximum(ids, 0)], -1)


def _pairs_from(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pairs = np.stack([np.repeat(rows, ids.shape[1]), ids.ravel()], axis=1)
    return pairs[pairs[:, 1] >= 0].astype(np.int64)


def _unique_pairs(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The distinct (i, j) rows, sorted. One int64 key per pair: np.unique(axis=0) sorts
    rows as void records, 40x slower on the millions of candidates of a big split."""
    chunks = [p for p in parts if len(p)]
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(chunks).astype(np.int64)
    width = int(pairs[:, 1].max()) + 1
    keys = np.unique(pairs[:, 0] * width + pairs[:, 1])
    return np.stack([keys // width, keys % width], axis=1)


# --------------------------------------------------------------------------- images


def _image_sketch(t: np.ndarray) -> np.ndarray:
    """(n, 64) unit vectors: the thumbnail's centre shrunk to 8x8, its mean removed.

    The 2-pixel border is left out: a zero-filled shift or a re-crop changes the border
    most, and a dark band there would otherwise dominate the sketch.
    """
    c = SKETCH_BORDER
    down = _resample_matrix(THUMB - 2 * c, SKETCH).astype(np.float32)
    sk = (down @ t[:, c : THUMB - c, c : THUMB - c] @ down.T).reshape(len(t), -1)
    sk -= sk.mean(axis=1, keepdims=True)
    return sk / (np.linalg.norm(sk, axis=1, keepdims=True) + 1e-6)


def _image_sketches(thumbs: np.ndarray) -> np.ndarray:
    """`_image_sketch` of many thumbnails, in blocks: at once, a million thumbnails made
    1.5 GB of float temporaries."""
    out = np.empty((len(thumbs), SKETCH * SKETCH), dtype=np.float32)
    for s in range(0, len(thumbs), 65536):
        out[s : s + 65536] = _image_sketch(thumbs[s : s + 65536].astype(np.float32))
    return out


def _shift_thumbs(t: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx); the uncovered band takes each image's darkest value,
    as a zero-filled shift of a non-negative image does."""
    if dy == dx == 0:
        return t
    out = np.broadcast_to(t.min(axis=(1, 2), keepdims=True), t.shape).copy()
    s = THUMB
    out[:, max(dy, 0) : s + min(dy, 0), max(dx, 0) : s + min(dx, 0)] = t[
        :, max(-dy, 0) : s + min(-dy, 0), max(-dx, 0) : s + min(-dx, 0)
    ]
    return out


def shift_radius(min_side: int) -> int:
    """Thumbnail pixels searched each way, for images whose smallest side is `min_side`."""
    if min_side <= 0:
        return 1
    return max(1, min(THUMB // 4, math.ceil(MAX_SHIFT_PX * THUMB / min_side)))


def _shift_grid(radius: int, min_side: int = 0) -> list[tuple[int, int]]:
    """Shifts (thumbnail pixels) each query is searched at."""
    if radius >= 2:
        # Sketch pixels are 2 thumbnail pixels wide: probing every 2nd shift covers the rest.
        steps: Sequence[int] = range(-(radius // 2) * 2, radius + 1, 2)
    elif min_side and MAX_SHIFT_PX * THUMB / min_side > 0.5:
        # A whole thumbnail pixel (2 px of a 32x32 image) moves the sketch as far as a
        # natural neighbour is (measured: up to 0.82 against a median nearest neighbour
        # of 0.52), so among a million images 38 of 200 such copies fell out of the
        # top 8; probed one pixel each way, all 200 rank in the top 3.
        steps = (-1, 0, 1)
    else:  # shifts of at most half a thumbnail pixel: the blur absorbs them
        steps = (0,)
    return [(dy, dx) for dy in steps for dx in steps]


def _image_candidates(
    query: np.ndarray, index, grid: Sequence[tuple[int, int]], k: int
) -> np.ndarray:
    """(i, j): the k nearest sketches j of query i over all shift probes.

    Shifting the *query* matters: a copy shifted with zero fill lost a strip of its
    source, so it matches its source shifted the same way, not itself shifted back.
    Ranking by the best probe keeps the verification to k pairs per query.
    """
    per_probe = k if len(grid) == 1 else max(3, k // 3)  # probes mostly see the same
    per_probe = max(1, min(per_probe, index.ntotal))
    parts = []
    for start in range(0, len(query), 8192):
        t = query[start : start + 8192].astype(np.float32)
        probes = np.stack([_image_sketch(_shift_thumbs(t, dy, dx)) for dy, dx in grid], axis=1)
        # One search for all probes, each query's probes side by side and the queries in
        # the order of their inverted-file cell: the probes of a query (and neighbouring
        # queries) scan the same cells while they are in the cache. At 1M indexed that
        # is memory-bound, and this order took it from 5.1 to 1.9 s per 8,192 queries.
        order = _cell_order(index, probes[:, len(grid) // 2])
        flat = np.ascontiguousarray(probes[order].reshape(-1, probes.shape[2]))
        dist, ids = index.search(flat, per_probe)
        rows = np.repeat(order, len(grid) * per_probe)
        found = np.stack([rows, ids.ravel(), dist.ravel()], 1)
        parts.append(_best_k(found, k) + np.array([start, 0]))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def _cell_order(index, sketches: np.ndarray) -> np.ndarray:
    """Queries ordered by the inverted-file cell nearest to them (as given for a flat index)."""
    quantizer = getattr(index, "quantizer", None)
    if quantizer is None:
        return np.arange(len(sketches))
    cells = quantizer.search(np.ascontiguousarray(sketches), 1)[1][:, 0]
    return np.argsort(cells, kind="stable")


def _best_k(found: np.ndarray, k: int) -> np.ndarray:
    """From (row, id, distance) rows: per row, its k distinct ids of smallest distance."""
    found = found[found[:, 1] >= 0]
    found = found[np.lexsort((found[:, 2], found[:, 1], found[:, 0]))]
    pairs = found[:, :2].astype(np.int64)
    first = np.r_[True, (pairs[1:] != pairs[:-1]).any(axis=1)]
    found = found[first]  # each (row, id) once, at its best distance
    found = found[np.lexsort((found[:, 2], found[:, 0]))]
    rows = found[:, 0].astype(np.int64)
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    return found[rank < k, :2].astype(np.int64)


def _box_sums(x: np.ndarray) -> np.ndarray:
    """(m, n+1, n+1) summed-area tables, so any rectangle's sum costs four lookups."""
    c = np.zeros((x.shape[0], x.shape[1] + 1, x.shape[2] + 1))
    c[:, 1:, 1:] = x.cumsum(axis=1).cumsum(axis=2)
    return c


def _box(c: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
    return (
        c[:, ys.stop, xs.stop]
        - c[:, ys.start, xs.stop]
        - c[:, ys.stop, xs.start]
        + c[:, ys.start, xs.start]
    )


def _subpixel_peak(r: np.ndarray, radius: int) -> np.ndarray:
    """Best correlation over shifts within `radius`, refined between pixels.

    A copy shifted by a fraction of a thumbnail pixel (1-2 px of a big image) peaks
    between grid points; a parabola through the peak and its neighbours on each axis
    recovers it. The gain is at most 1/8 of the neighbours' difference, so unrelated
    pairs (flat, low correlation) gain next to nothing.
    """
    inner = r[:, 1:-1, 1:-1].reshape(len(r), -1)
    k = inner.argmax(axis=1)
    y, x = k // (2 * radius + 1) + 1, k % (2 * radius + 1) + 1
    rows = np.arange(len(r))
    peak = r[rows, y, x]
    gain = np.zeros(len(r))
    for up, down in (((y - 1, x), (y + 1, x)), ((y, x - 1), (y, x + 1))):
        lo, hi = r[rows, up[0], up[1]], r[rows, down[0], down[1]]
        curve = 2 * peak - lo - hi
        # Only a true local peak (vertex within half a pixel) is refined.
        local = (peak >= lo) & (peak >= hi) & (curve > 1e-12)
        gain += np.where(local, (hi - lo) ** 2 / (8 * np.maximum(curve, 1e-12)), 0.0)
    return np.minimum(peak + gain, 1.0)


def _correlation_distance(
    a: np.ndarray, b: np.ndarray, radius: int, refine: bool = False
) -> np.ndarray:
    """min over shifts of sqrt(2 (1 - Pearson r)) on the overlap of two thumbnails.

    Pearson r on the overlap ignores brightness, contrast and what a shift pushed out;
    sqrt(2 (1 - r)) is the RMS difference of the two standardised overlaps. The MARGIN
    crop comes first: the blur mixed the fill of a shifted copy into its edge pixels.
    """
    m = MARGIN
    a = a[:, m : THUMB - m, m : THUMB - m].astype(np.float64)
    b = b[:, m : THUMB - m, m : THUMB - m].astype(np.float64)
    # Centred, the float32 products lose nothing that matters; the sums stay float64.
    a -= a.mean(axis=(1, 2), keepdims=True)
    b -= b.mean(axis=(1, 2), keepdims=True)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    n = a.shape[1]
    ca, caa, cb, cbb = _box_sums(a), _box_sums(a * a), _box_sums(b), _box_sums(b * b)
    reach = radius + 1  # one more each way, for the sub-pixel refinement below
    r = np.empty((len(a), 2 * reach + 1, 2 * reach + 1))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            ya, xa = slice(max(dy, 0), n + min(dy, 0)), slice(max(dx, 0), n + min(dx, 0))
            yb, xb = slice(max(-dy, 0), n + min(-dy, 0)), slice(max(-dx, 0), n + min(-dx, 0))
            count = (n - abs(dy)) * (n - abs(dx))
            sa, sb = _box(ca, ya, xa), _box(cb, yb, xb)
            cov = np.einsum("nyx,nyx->n", a32[:, ya, xa], b32[:, yb, xb]) - sa * sb / count
            va = np.maximum(_box(caa, ya, xa) - sa * sa / count, 0.0)
            vb = np.maximum(_box(cbb, yb, xb) - sb * sb / count, 0.0)
            den = np.sqrt(va * vb)
            # Two flat overlaps show the same (empty) picture; one flat one is unrelated.
            flat = (va < 1e-9 * count) & (vb < 1e-9 * count)
            rho = np.where(den > 1e-9 * count, cov / np.maximum(den, 1e-300), 0.0)
            r[:, dy + reach, dx + reach] = np.where(flat, 1.0, rho)
    best = _subpixel_peak(r, radius) if refine else r[:, 1:-1, 1:-1].max(axis=(1, 2))
    return np.sqrt(np.maximum(0.0, 2.0 * (1.0 - best)))


def _image_distances(
    ta: np.ndarray, tb: np.ndarray, pairs: np.ndarray, radius: int, refine: bool
) -> np.ndarray:
    def block(s: int) -> np.ndarray:
        p = pairs[s : s + 2048]  # ~15 MB of temporaries per block
        a = ta[p[:, 0]].astype(np.float32)
        b = tb[p[:, 1]].astype(np.float32)
        return _correlation_distance(a, b, radius, refine)

    starts = range(0, len(pairs), 2048)
    blocks = list(_ordered_map(block, starts))
    return np.concatenate(blocks).astype(np.float32) if blocks else np.empty(0, np.float32)


class _ImageSpace:
    """Thumbnails of two splits (or one split twice) under the correlation distance."""

    def __init__(self, a: SplitDigest, b: SplitDigest) -> None:
        self.digests = (a, b)
        side = min(a.min_side or 1 << 30, b.min_side or 1 << 30)
        self.radius = shift_radius(side)
        # Images bigger than the thumbnail shift by fractions of a thumbnail pixel; small
        # ones (digits: 2 thumbnail pixels per pixel) by whole ones, where refining would
        # only pull unrelated pairs closer.
        self.refine = side > THUMB
        self.grid = _shift_grid(self.radius, side if side < 1 << 30 else 0)
        # Shifts of 2+ thumbnail pixels (small images): either split may hold the source,
        # and a shifted copy matches its source shifted, not itself shifted back, so both
        # ways are searched. Within a pixel the sketch's border absorbs the difference
        # (measured at 1M vs 100k: shifted copies rank in the top 3 either way), and the
        # smaller split is asked against the bigger one's index, as for tables.
        self.two_way = self.radius >= 2

    def index(self, side: int) -> list:
        d = self.digests[side]
        if "image_index" not in d.cache:
            reps = _representatives(d)
            records = d.records if reps is None else d.records[reps]
            dims = SKETCH * SKETCH
            index = _build_index_from(
                len(records), dims, lambda rows: _image_sketches(records[rows]), unit=True
            )
            d.cache["image_index"] = [index]
        return d.cache["image_index"]

    def candidates(self, q: int, t: int, rows: np.ndarray, k: int) -> np.ndarray:
        found = _image_candidates(self.digests[q].records[rows], self.index(t)[0], self.grid, k)
        if not len(found):
            return found
        ids = _to_samples(found[:, 1], _representatives(self.digests[t]))
        return np.stack([rows[found[:, 0]], ids], axis=1)

    def distance(self, q: int, t: int, pairs: np.ndarray) -> np.ndarray:
        ta, tb = self.digests[q].records, self.digests[t].records
        return _image_distances(ta, tb, pairs, self.radius, self.refine)


def _column_stats(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation over the rows of all parts, NaN skipped, in
    blocks (np.nanstd of a million rows makes several full-size copies). Sums are taken
    around each column's first value, so a column like 1.7e9 +- 100 keeps its digits."""
    width = parts[0].shape[1] if parts and parts[0].ndim == 2 else 0
    count, total, squares = np.zeros(width), np.zeros(width), np.zeros(width)
    pivot = None
    for x in parts:
        for s in range(0, len(x), STATS_ROWS):
            block = x[s : s + STATS_ROWS].astype(np.float64)
            if pivot is None:
                first = np.where(np.isnan(block), np.inf, 0).argmin(axis=0)
                pivot = np.nan_to_num(block[first, np.arange(width)], posinf=0.0, neginf=0.0)
            ok = ~np.isnan(block)
            with np.errstate(all="ignore"):
                centred = np.where(ok, block - pivot, 0.0)
                count += ok.sum(axis=0)
                total += centred.sum(axis=0)
                squares += (centred * centred).sum(axis=0)
    if pivot is None:
        return np.zeros(width), np.ones(width)
    with np.errstate(all="ignore"):
        shift = total / count
        var = squares / count - shift * shift
        mean = np.nan_to_num(pivot + shift)
        spread = np.nan_to_num(np.sqrt(np.maximum(var, 0.0)))
    return mean, spread


class _TableSpace:
    """Rows scaled by pooled column spreads, compared up to a common factor per row.

    The distance is min over c > 0 of |a - c b| / sqrt(c) (RMS per column), which is
    sqrt(2 (|a| |b| - a.b) / dims): zero for a row and any rescaling of it, small for
    rounding, symmetric in a and b.
    """

    def __init__(self, a: SplitDigest, b: SplitDigest) -> None:
        self.digests = (a, b)
        self.two_way = False
        mean, spread = _column_stats([a.records] if a is b else [a.records, b.records])
        self.scale = np.where(spread > 0, spread, 1.0).astype(np.float32)
        self.mean = mean.astype(np.float32)
        self.rows = [self._scaled(d.records) for d in self.digests]
        self._indexes: dict[int, list] = {}

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float32)
        for s in range(0, len(x), STATS_ROWS):  # in blocks: no full-size temporaries
            block = x[s : s + STATS_ROWS]
            block = np.where(np.isnan(block), self.mean, block)  # missing: the column mean
            out[s : s + STATS_ROWS] = block / self.scale
        return out

    def _views(self, x: np.ndarray) -> Iterator[np.ndarray]:
        # Standardised rows find rounded copies; directions find rescaled ones. One at a
        # time: each is as big as the split.
        yield x - self.mean / self.scale
        yield x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)

    def index(self, side: int) -> list:
        if side not in self._indexes:
            reps = _representatives(self.digests[side])
            rows = self.rows[side] if reps is None else self.rows[side][reps]
            self._indexes[side] = [_build_index(v) for v in self._views(rows)]
        return self._indexes[side]

    def candidates(self, q: int, t: int, rows: np.ndarray, k: int) -> np.ndarray:
        views = self._views(self.rows[q][rows])
        reps = _representatives(self.digests[t])
        parts = [
            _pairs_from(rows, _to_samples(_search(ix, v, k), reps))
            for ix, v in zip(self.index(t), views, strict=True)
        ]
        return _unique_pairs(parts)

    def distance(self, q: int, t: int, pairs: np.ndarray) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float64)
        for s in range(0, len(pairs), STATS_ROWS):  # 1.6M candidates at once took 300 MB
            p = pairs[s : s + STATS_ROWS]
            a, b = self.rows[q][p[:, 0]], self.rows[t][p[:, 1]]
            na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
            sq = 2.0 * (na * nb - np.einsum("ij,ij->i", a, b)) / max(1, a.shape[1])
            out[s : s + len(p)] = np.sqrt(np.maximum(sq, 0.0))
        return out


def _space(a: SplitDigest, b: SplitDigest) -> _ImageSpace | _TableSpace:
    if a.records is None or b.records is None:
        raise ValueError("digest the splits with near=True to look for near duplicates")
    return _ImageSpace(a, b) if a.kind == IMAGE else _TableSpace(a, b)


def _not_equal(ha: np.ndarray, hb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pairs whose digests differ: exact copies are reported as exact, never as near."""
    return pairs[(ha[pairs[:, 0]] != hb[pairs[:, 1]]).any(axis=1)] if len(pairs) else pairs


def _nn_distances(space, side: int, seed: int = 0) -> np.ndarray:
    """Verified distance from each of up to SCALE_SAMPLE samples to its nearest neighbour
    in the same split (exact copies skipped: they say nothing about the spread)."""
    d = space.digests[side]
    n = len(d)
    if n < 2:
        return np.zeros(0, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, SCALE_SAMPLE), replace=False))
    pairs = space.candidates(side, side, rows, 9)
    pairs = _not_equal(d.hashes, d.hashes, pairs[pairs[:, 0] != pairs[:, 1]])
    if not len(pairs):
        return np.zeros(0, dtype=np.float32)
    dist = space.distance(side, side, pairs)
    order = np.lexsort((dist, pairs[:, 0]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pairs[order[1:], 0] != pairs[order[:-1], 0]
    return dist[order[first]]


def _space_scale(space: _ImageSpace | _TableSpace) -> float:
    a, b = space.digests
    parts = []
    for side in (0,) if a is b else (0, 1):
        d = space.digests[side]
        # Image distances do not depend on the other split, except through the radius.
        image = isinstance(space, _ImageSpace)
        key = ("nn", space.radius, space.refine, tuple(space.grid)) if image else None
        if key is not None and key in d.cache:
            parts.append(d.cache[key])
            continue
        parts.append(_nn_distances(space, side))
        if key is not None:
            d.cache[key] = parts[-1]
    dists = np.concatenate(parts)
    return float(np.median(dists)) if len(dists) else math.nan


def near_scale(a: SplitDigest, b: SplitDigest | None = None) -> float:
    """Median within-split nearest-neighbour distance, pooled over `a` and `b`."""
    return _space_scale(_space(a, a if b is None else b))


def _default_factor(kind: str) -> float:
    return IMAGE_FACTOR if kind == IMAGE else TABLE_FACTOR


def _space_pairs(
    space: _ImageSpace | _TableSpace, self_pairs: bool, k: int, progress: Progress | None
) -> np.ndarray:
    """Candidate (i, j) of side 0 x side 1, in chunks so `progress` can follow."""
    n0, n1 = (len(d) for d in space.digests)
    jobs = [(0, 1, n0)] + ([(1, 0, n1)] if space.two_way and not self_pairs else [])
    if not space.two_way and n1 < n0:
        jobs = [(1, 0, n1)]  # one way is enough: ask with the smaller split, index the bigger
    total, done, parts = sum(j[2] for j in jobs), 0, []
    for q, t, n in jobs:
        for start in range(0, n, 8192):
            rows = np.arange(start, min(n, start + 8192))
            found = space.candidates(q, t, rows, k)
            parts.append(found if q == 0 else found[:, ::-1])
            done += len(rows)
            if progress is not None:
                progress(done, total)
    pairs = _unique_pairs(parts)
    if self_pairs:  # one split against itself: each unordered pair once, no self pairs
        pairs = _unique_pairs([np.sort(pairs, axis=1)])
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs


def _vector_near(
    a: SplitDigest, b: SplitDigest, factor: float | None, k: int, progress: Progress | None
) -> tuple[list[LeakPair], float, float]:
    space = _space(a, b)
    scale = _space_scale(space)
    threshold = (factor if factor is not None else _default_factor(a.kind)) * scale
    if not math.isfinite(threshold) or threshold <= 0:
        return [], threshold, scale
    pairs = _not_equal(a.hashes, b.hashes, _space_pairs(space, a is b, k, progress))
    dist = space.distance(0, 1, pairs) if len(pairs) else np.zeros(0)
    keep = dist < threshold
    near = [
        LeakPair(int(i), int(j), float(v), NEAR)
        for (i, j), v in zip(pairs[keep], dist[keep], strict=True)
    ]
    return near, threshold, scale


# ----------------------------------------------------------------------------- text

_BAND_MIX = np.random.default_rng(7).integers(
    1, 2**63, size=NUM_PERM // BANDS, dtype=np.uint64
) | np.uint64(1)


def _band_keys(sig: np.ndarray) -> np.ndarray:
    """(n, BANDS) uint64: one key per band of MinHash rows; equal bands, equal keys."""
    rows = sig.reshape(len(sig), BANDS, -1).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = (rows * _BAND_MIX).sum(axis=2, dtype=np.uint64)
        keys ^= keys >> np.uint64(29)
    return keys


def _bucket_pairs(ka: np.ndarray, kb: np.ndarray, same: bool) -> np.ndarray:
    """(i, j) with ka[i] == kb[j], from one sort of both key columns."""
    keys = np.concatenate([ka, kb]) if not same else ka
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    parts = []
    for lo, hi in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        members = order[lo:hi]
        left = members if same else members[members < len(ka)]
        right = members if same else members[members >= len(ka)] - len(ka)
        if len(left) and len(right):
            # A templated text shares a band with thousands of others; pairing each with
            # the first BUCKET_LEFT of them finds a copy without a quadratic candidate list.
            left = left[:BUCKET_LEFT]
            pairs = np.stack([np.tile(left, len(right)), np.repeat(right, len(left))], axis=1)
            parts.append(pairs)
    return _unique_pairs(parts)


def jaccard(x: str, y: str) -> float:
    """Jaccard similarity of the character 5-shingle sets of two normalised texts."""
    sx, sy = _shingles(x), _shingles(y)
    inter = len(np.intersect1d(sx, sy, assume_unique=True))
    return inter / (len(sx) + len(sy) - inter)


def _text_near(
    a: SplitDigest, b: SplitDigest, threshold: float, progress: Progress | None
) -> list[LeakPair]:
    same = a is b
    # One text per run of identical ones: exact copies are reported as exact.
    ra, rb = _representatives(a), _representatives(b)
    ia = np.arange(len(a)) if ra is None else ra
    ib = np.arange(len(b)) if rb is None else rb
    keys_a, keys_b = _band_keys(a.records[ia]), _band_keys(b.records[ib])
    parts = []
    for band in range(BANDS):
        parts.append(_bucket_pairs(keys_a[:, band], keys_b[:, band], same))
        if progress is not None:
            progress(band + 1, BANDS)
    pairs = _unique_pairs(parts)
    if len(pairs):
        pairs = np.stack([ia[pairs[:, 0]], ib[pairs[:, 1]]], axis=1)
    if same and len(pairs):
        pairs = _unique_pairs([np.sort(pairs, axis=1)])
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = _not_equal(a.hashes, b.hashes, pairs)
    if not len(pairs):
        return []
    # Candidates are few: re-read just those texts and measure their Jaccard exactly.
    ia, jb = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
    ta = dict(zip(ia.tolist(), a.split.samples.take(ia.tolist()), strict=True))
    tb = dict(zip(jb.tolist(), b.split.samples.take(jb.tolist()), strict=True))
    out = []
    for i, j in pairs.tolist():
        sim = jaccard(str(ta[i]), str(tb[j]))
        if sim >= threshold:
            out.append(LeakPair(i, j, sim, NEAR))
    return out


# ------------------------------------------------------------------------ public API


def near_pairs(
    a: SplitDigest,
    b: SplitDigest,
    *,
    factor: float | None = None,
    text_threshold: float = TEXT_JACCARD,
    k: int = 8,
    progress: Progress | None = None,
) -> tuple[list[LeakPair], float, float]:
    """Near (not exact) copies between `a` and `b`: (pairs, threshold, scale).

    Images and tables: verified distance < `factor` x the median within-split
    nearest-neighbour distance (`scale`). Text: Jaccard >= `text_threshold` (scale 0).
    Pass the same digest twice for pairs within one split (each pair once, i < j).
    """
    if a.kind != b.kind:
        raise ValueError(f"cannot compare a {a.kind} split with a {b.kind} split")
    if a.kind == TEXT:
        if a.records is None or b.records is None:
            raise ValueError("digest the splits with near=True to look for near duplicates")
        return _text_near(a, b, text_threshold, progress), text_threshold, 0.0
    return _vector_near(a, b, factor, k, progress)


def compare_splits(
    a: SplitDigest,
    b: SplitDigest,
    *,
    near: bool = True,
    factor: float | None = None,
    text_threshold: float = TEXT_JACCARD,
    progress: Progress | None = None,
) -> SplitLeakage:
    """Exact and (with `near`) near copies between two splits of the same kind."""
    exact = exact_pairs(a, b)
    found, threshold, scale = [], math.nan, math.nan
    if near and a.records is not None and b.records is not None:
        found, threshold, scale = near_pairs(
            a, b, factor=factor, text_threshold=text_threshold, progress=progress
        )
    return SplitLeakage(a.name, b.name, a.kind, exact, found, threshold, scale)


def duplicate_groups(
    d: SplitDigest,
    *,
    near: bool = False,
    factor: float | None = None,
    text_threshold: float = TEXT_JACCARD,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Groups (sorted index arrays) of copies within one split: exact, plus near with `near`.

    Near pairs are chained: a group holds every sample linked to another by a near pair.
    """
    groups = exact_groups(d)
    if not near or d.records is None:
        return groups
    found, _, _ = near_pairs(d, d, factor=factor, text_threshold=text_threshold, progress=progress)
    links = [(int(g[0]), int(x)) for g in groups for x in g[1:]] + [(p.i, p.j) for p in found]
    return _components(links)


def _components(links: Iterable[tuple[int, int]]) -> list[np.ndarray]:
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees shallow
            x = parent[x]
        return x

    for i, j in links:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for x in parent:
        members.setdefault(root(x), []).append(x)
    return sorted(
        (np.array(sorted(m)) for m in members.values() if len(m) > 1), key=lambda g: int(g[0])
    )


def find_leakage(
    splits: Sequence[Split], *, near: bool = True, progress: Progress | None = None
) -> list[SplitLeakage]:
    """Every pair of splits of the same kind, each split read once."""
    digests = [digest_split(s, near=near, progress=progress) for s in splits]
    return [
        compare_splits(a, b, near=near, progress=progress)
        for n, a in enumerate(digests)
        for b in digests[n + 1 :]
        if a.kind == b.kind
    ]
