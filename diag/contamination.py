"""Evaluation documents found in the training split: n-gram containment, as in GPT-3's analysis.

Stages, each a pure function over a batch so another engine can run them:

1. `eval_index(texts)`: every n-gram of every evaluation document, as a 64-bit hash, with
   its document and position (and, for documents shorter than n, the whole document).
2. `train_hits(index, texts, first_id)`: which of those n-grams one batch of training
   documents holds: (n-gram hash, training document) pairs, nothing else.
3. `merge(hits, ...)`: hits of many batches, with a count of training documents per n-gram
   and at most `keep` document ids per n-gram, so the result stays the size of the
   evaluation index however often an n-gram recurs in training.
4. `doc_frequency_limit` + `frequent`: n-grams held by more training documents than the
   limit are boilerplate (licence headers, navigation text) and are no evidence.
5. `verify(eval_text, train_text, n)`: the shared spans of one candidate pair, decided on
   the tokens themselves, so a hash collision can never make a finding.

`contamination(train_split, eval_split)` runs them in process, streaming the training split
chunk by chunk: its memory is the evaluation index plus the hits, whatever the size of the
training split.

Normalisation follows lm-evaluation-harness's reimplementation of GPT-3's: case and
punctuation do not count and tokens are split on whitespace ("it's" -> "its", "foo-bar" ->
"foobar"); we also fold Unicode compatibility forms and Unicode punctuation.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diag.loaders.splits.model import Split

TOKENS, CHARS = "tokens", "chars"
DEFAULT_N = {TOKENS: 13, CHARS: 50}  # 13 tokens as GPT-3; 50 characters as GPT-4's check
MIN_TOKENS = 8  # shorter evaluation documents are never evidence, even when found whole
MAX_DOC_COUNT = 100
MAX_DOC_FRACTION = 0.05
MAX_VERIFIED = 8  # candidate training documents verified per evaluation document
KEEP_DOCS = MAX_VERIFIED  # training document ids kept per n-gram (counts stay exact)
MAX_CANDIDATES = 2_000_000  # window pairs one verification compares at most
CANDIDATE_BLOCK = 250_000  # evaluation n-grams turned into candidate pairs at once
TAKE_BATCH = 512  # training documents re-read at once for verification

Progress = Callable[[int, int], None]

# ------------------------------------------------------------------ normalisation

# ASCII characters that are neither letters, digits nor whitespace: what the regex below
# deletes, as a translate table (twice as fast on the ASCII documents most corpora are).
_ASCII_DELETE = str.maketrans(
    {c: None for c in range(128) if not (chr(c).isalnum() or chr(c).isspace())}
)
_PUNCT = re.compile(r"[^\w\s]|_")


def normalise(text: str) -> str:
    """The text as its tokens joined by single spaces: no case, punctuation or extra space."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_DELETE).split())
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub("", text).split())


def tokens_of(text: str, mode: str = TOKENS) -> list[str]:
    """The units n-grams are made of: words, or characters (spaces included) in chars mode."""
    norm = normalise(text)
    return norm.split() if mode == TOKENS else list(norm)


def default_n(mode: str) -> int:
    if mode not in DEFAULT_N:
        raise ValueError(f"mode must be 'tokens' or 'chars', not {mode!r}")
    return DEFAULT_N[mode]


# ------------------------------------------------------------------ hashing
# Polynomial hashes modulo 2**64 (numpy's uint64 arithmetic wraps), made position-free with
# the inverse of an odd base, then mixed by splitmix64's finaliser: the same text hashes the
# same in every process and on every machine, unlike Python's salted `hash`.

_U = np.uint64
_BASE_CHAR, _BASE_TOKEN = 0x100000001B3, 0x9E3779B97F4A7C15  # odd: invertible mod 2**64
_LEN_MIX = 0xD6E8FEB86659FD93
_M1, _M2 = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U(30))
    x *= _M1
    x ^= x >> _U(27)
    x *= _M2
    x ^= x >> _U(31)
    return x


def _powers(base: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """base**k and base**-k modulo 2**64 for k < size."""
    inverse = pow(base, -1, 1 << 64)
    up = np.full(size, base, dtype=_U)
    down = np.full(size, inverse, dtype=_U)
    up[0] = down[0] = 1
    return np.cumprod(up, dtype=_U), np.cumprod(down, dtype=_U)


def _prefix(values: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Prefix sums of values * base**-k, and base**k: a slice [l, r) then hashes as
    (S[r] - S[l]) * base**l, the same wherever the slice sits."""
    up, down = _powers(base, len(values) + 1)
    s = np.zeros(len(values) + 1, dtype=_U)
    np.cumsum(values * down[:-1], dtype=_U, out=s[1:])
    return s, up


@dataclass(frozen=True)
class Sequences:
    """A batch of documents as one array of unit hashes and each document's bounds."""

    units: np.ndarray  # uint64, one per token (or character)
    bounds: np.ndarray  # int64, len(documents) + 1 offsets into units

    @cached_property
    def prefix(self) -> tuple[np.ndarray, np.ndarray]:
        # Once per batch, however many window widths are hashed from it.
        return _prefix(self.units, _BASE_TOKEN)


def sequences(texts: Sequence[str], mode: str = TOKENS) -> Sequences:
    norms = [normalise(t) for t in texts]
    if mode == CHARS:
        counts = np.fromiter((len(s) for s in norms), dtype=np.int64, count=len(norms))
        cps = np.frombuffer("".join(norms).encode("utf-32-le"), dtype=np.uint32)
        units = _mix(cps.astype(_U) + _U(1))
    else:
        counts = np.fromiter(
            (s.count(" ") + 1 if s else 0 for s in norms), dtype=np.int64, count=len(norms)
        )
        units = _token_hashes(" ".join(s for s in norms if s))
    bounds = np.zeros(len(norms) + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    return Sequences(units, bounds)


def _token_hashes(joined: str) -> np.ndarray:
    if not joined:
        return np.zeros(0, dtype=_U)
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    spaces = np.flatnonzero(cps == 32)
    starts = np.concatenate([[0], spaces + 1])
    ends = np.concatenate([spaces, [len(cps)]])
    s, up = _prefix(cps.astype(_U), _BASE_CHAR)
    h = (s[ends] - s[starts]) * up[starts]
    return _mix(h + (ends - starts).astype(_U) * _U(_LEN_MIX))


@dataclass(frozen=True)
class Windows:
    hashes: np.ndarray  # uint64
    docs: np.ndarray  # int64, document of each window (index into the batch)
    starts: np.ndarray  # int64, first unit of each window within its document


def windows(seq: Sequences, width: int, docs: np.ndarray | None = None) -> Windows:
    """Hashes of every run of `width` consecutive units that stays inside one document
    (of the given documents only, when `docs` is set)."""
    counts = np.diff(seq.bounds)
    per_doc = np.maximum(counts - width + 1, 0)
    if docs is not None:
        keep = np.zeros(len(counts), dtype=bool)
        keep[docs] = True
        per_doc = np.where(keep, per_doc, 0)
    total = int(per_doc.sum())
    doc_of = np.repeat(np.arange(len(counts), dtype=np.int64), per_doc)
    first = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(per_doc, out=first[1:])
    local = np.arange(total, dtype=np.int64) - first[doc_of]
    at = seq.bounds[doc_of] + local
    if total == 0:
        return Windows(np.zeros(0, dtype=_U), doc_of, local)
    s, up = seq.prefix
    h = (s[at + width] - s[at]) * up[at]
    return Windows(_mix(h + _U(width * _LEN_MIX % (1 << 64))), doc_of, local)


# ------------------------------------------------------------------ stage 1: the index


@dataclass(frozen=True)
class EvalIndex:
    """Every n-gram of every evaluation document, and a sorted array to look them up in.

    Documents shorter than `n` units but at least `min_units` long are one "n-gram" of their
    own length (found only when the whole document occurs); shorter ones have none.
    """

    n: int
    mode: str
    hashes: np.ndarray  # uint64, document-major
    docs: np.ndarray  # int64, document of each n-gram
    starts: np.ndarray  # int64, first unit of each n-gram in its document
    lengths: np.ndarray  # int64, units per document
    keys: np.ndarray  # sorted unique hashes
    short_lengths: tuple[int, ...]  # widths of the documents shorter than n
    _bits: np.ndarray = field(repr=False, compare=False)  # bool, a one-hash Bloom filter

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, doc: int) -> slice:
        lo, hi = np.searchsorted(self.docs, [doc, doc + 1])
        return slice(int(lo), int(hi))

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Which of `hashes` are n-grams of the index: a bit test first (a few % false
        positives), then a binary search for those that pass."""
        maybe = self._bits[(hashes >> _U(64 - _shift_bits(len(self._bits)))).astype(np.int64)]
        found = np.zeros(len(hashes), dtype=bool)
        idx = np.flatnonzero(maybe)
        if len(idx) and len(self.keys):
            cand = hashes[idx]
            pos = np.minimum(np.searchsorted(self.keys, cand), len(self.keys) - 1)
            found[idx] = self.keys[pos] == cand
        return found


def _shift_bits(size: int) -> int:
    return size.bit_length() - 1


def _bit_table(keys: np.ndarray) -> np.ndarray:
    # About 16 bits per key keeps false positives near 6%; 2**25 bools (32 MiB) at most.
    bits = 1 << max(16, min(25, (max(len(keys), 1) * 16 - 1).bit_length()))
    table = np.zeros(bits, dtype=bool)
    table[(keys >> _U(64 - _shift_bits(bits))).astype(np.int64)] = True
    return table


def eval_index(
    texts: Sequence[str], n: int | None = None, mode: str = TOKENS, *, min_units: int | None = None
) -> EvalIndex:
    """Stage 1: the n-grams of the evaluation documents (n defaults to 13 tokens or 50
    characters; documents shorter than `min_units`, default 8 tokens or n/2 characters,
    are too short to be evidence)."""
    n = n or default_n(mode)
    if n < 1:
        raise ValueError("n must be at least 1")
    if min_units is None:
        min_units = min(MIN_TOKENS, n) if mode == TOKENS else max(1, n // 2)
    seq = sequences(texts, mode)
    lengths = np.diff(seq.bounds)
    full = windows(seq, n)
    parts = [full]
    short = sorted({int(k) for k in lengths if min_units <= k < n})
    for k in short:
        parts.append(windows(seq, k, np.flatnonzero(lengths == k)))
    hashes = np.concatenate([w.hashes for w in parts])
    docs = np.concatenate([w.docs for w in parts])
    starts = np.concatenate([w.starts for w in parts])
    order = np.lexsort((starts, docs))
    hashes, docs, starts = hashes[order], docs[order], starts[order]
    keys = np.unique(hashes)
    return EvalIndex(n, mode, hashes, docs, starts, lengths, keys, tuple(short), _bit_table(keys))


# ------------------------------------------------------------------ stages 2 and 3: hits


@dataclass(frozen=True)
class Hits:
    """Evaluation n-grams found in training documents.

    `keys`/`counts`: each n-gram found and in how many training documents. `pair_keys`/
    `pair_docs`: which documents, sorted, at most `keep` per n-gram (see `merge`).
    """

    keys: np.ndarray  # uint64, sorted unique
    counts: np.ndarray  # int64
    pair_keys: np.ndarray  # uint64
    pair_docs: np.ndarray  # int64, training document ids

    @staticmethod
    def empty() -> Hits:
        z = np.zeros(0, dtype=_U)
        return Hits(z, np.zeros(0, dtype=np.int64), z, np.zeros(0, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.counts, self.pair_keys, self.pair_docs))


def train_hits(index: EvalIndex, texts: Sequence[str], first_id: int = 0) -> Hits:
    """Stage 2 (pure, per batch): the evaluation n-grams that the training documents
    `texts` hold; `first_id` is the id of `texts[0]` in the training split."""
    seq = sequences(texts, index.mode)
    found_h, found_d = [], []
    for width in (index.n, *index.short_lengths):
        w = windows(seq, width)
        hit = index.lookup(w.hashes)
        found_h.append(w.hashes[hit])
        found_d.append(w.docs[hit])
    h = np.concatenate(found_h)
    d = np.concatenate(found_d) + first_id
    if not len(h):
        return Hits.empty()
    order = np.lexsort((d, h))
    h, d = h[order], d[order]
    new = np.r_[True, (h[1:] != h[:-1]) | (d[1:] != d[:-1])]
    h, d = h[new], d[new]
    keys, counts = np.unique(h, return_counts=True)
    return Hits(keys, counts.astype(np.int64), h, d)


def merge(hits: Iterable[Hits], keep: int | None = None) -> Hits:
    """Stage 3: hits of disjoint batches as one, with at most `keep` (the lowest) document
    ids per n-gram; the counts stay exact."""
    parts = [h for h in hits if len(h.keys)]
    if not parts:
        return Hits.empty()
    keys = np.concatenate([p.keys for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    starts = np.flatnonzero(first)
    merged_keys, merged_counts = keys[starts], np.add.reduceat(counts, starts)
    pk = np.concatenate([p.pair_keys for p in parts])
    pd = np.concatenate([p.pair_docs for p in parts])
    order = np.lexsort((pd, pk))
    pk, pd = pk[order], pd[order]
    if keep is not None and len(pk):
        run_start = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
        rank = np.arange(len(pk)) - np.repeat(run_start, np.diff(np.r_[run_start, len(pk)]))
        pk, pd = pk[rank < keep], pd[rank < keep]
    return Hits(merged_keys, merged_counts, pk, pd)


# ------------------------------------------------------------------ stage 4: boilerplate


def doc_frequency_limit(
    n_train: int, max_doc_count: int = MAX_DOC_COUNT, max_doc_fraction: float = MAX_DOC_FRACTION
) -> int:
    """How many training documents may hold an n-gram before it counts as boilerplate: a
    fraction of the training split, capped by an absolute count for large splits, and at
    least 2 so that one copy is always evidence in a small split."""
    return max(2, min(max_doc_count, math.ceil(max_doc_fraction * n_train)))


def frequent(hits: Hits, limit: int) -> np.ndarray:
    """The n-grams (sorted hashes) held by more than `limit` training documents."""
    return hits.keys[hits.counts > limit]


def evidence(index: EvalIndex, boilerplate: np.ndarray) -> np.ndarray:
    """Which n-grams of the index (a bool per row) may count as evidence: those that share
    no unit with a boilerplate n-gram. An n-gram that straddles the end of a licence header
    and the first words of a document is held by every training document that starts
    with those words after the same header; it says nothing about the document."""
    width = np.minimum(index.n, index.lengths[index.docs])
    offset = np.zeros(len(index.lengths) + 1, dtype=np.int64)
    np.cumsum(index.lengths, out=offset[1:])
    at = offset[index.docs] + index.starts
    bad = np.isin(index.hashes, boilerplate)
    cover = np.zeros(int(offset[-1]) + 1, dtype=np.int64)
    np.add.at(cover, at[bad], 1)
    np.add.at(cover, at[bad] + width[bad], -1)
    is_boiler_unit = np.cumsum(cover)[:-1] > 0
    inside = np.zeros(len(is_boiler_unit) + 1, dtype=np.int64)
    np.cumsum(is_boiler_unit, out=inside[1:])
    return inside[at + width] - inside[at] == 0


# ------------------------------------------------------------------ stage 5: verification


@dataclass(frozen=True)
class Shared:
    """What one evaluation document shares with one training document, token for token."""

    longest: int  # units in the longest shared span (0: nothing shared)
    eval_span: tuple[int, int]  # [start, end) units of that span in the evaluation document
    train_span: tuple[int, int]
    matched: np.ndarray  # int64, starts of the evaluation n-grams found in the training text
    possible: int = 0  # evaluation n-grams that could be found (not ignored)

    @property
    def coverage(self) -> float:
        """The share of the evaluation document's n-grams found in this training text."""
        return len(self.matched) / self.possible if self.possible else 0.0


NOTHING = Shared(0, (0, 0), (0, 0), np.zeros(0, dtype=np.int64))


def verify(
    eval_text: str,
    train_text: str,
    n: int | None = None,
    mode: str = TOKENS,
    *,
    ignore: np.ndarray | None = None,
) -> Shared:
    """Stage 5: the exact shared spans of two documents. Candidates come from the hashes;
    each is confirmed on the units themselves. `ignore` lists evaluation n-gram starts that
    are boilerplate: they are neither matched nor part of a span. An evaluation document
    shorter than n is shared only when it occurs whole."""
    n = n or default_n(mode)
    a, b = tokens_of(eval_text, mode), tokens_of(train_text, mode)
    width = min(n, len(a))
    if width == 0 or len(b) < width:
        return NOTHING
    ha = windows(sequences([eval_text], mode), width).hashes
    hb = windows(sequences([train_text], mode), width).hashes
    allowed = np.ones(len(ha), dtype=bool)
    if ignore is not None and len(ignore):
        allowed[ignore[ignore < len(ha)]] = False
    ia, jb = _equal_pairs(ha, hb, allowed)
    # The hashes only propose; the units decide. Units get exact ids (a dict resolves
    # equal strings, never hashes alone), then whole windows are compared at once.
    vocab: dict[str, int] = {}
    ua = np.fromiter((vocab.setdefault(t, len(vocab)) for t in a), np.int64, len(a))
    ub = np.fromiter((vocab.setdefault(t, len(vocab)) for t in b), np.int64, len(b))
    same = np.ones(len(ia), dtype=bool)
    for k in range(width):
        same &= ua[ia + k] == ub[jb + k]
    ia, jb = ia[same], jb[same]
    if not len(ia):
        return NOTHING
    # Consecutive matches on one diagonal (i+1, j+1) extend one shared span.
    diag = jb - ia
    order = np.lexsort((ia, diag))
    ia, diag = ia[order], diag[order]
    breaks = np.r_[True, (diag[1:] != diag[:-1]) | (ia[1:] != ia[:-1] + 1)]
    run_start = np.flatnonzero(breaks)
    run_len = np.diff(np.r_[run_start, len(ia)])
    best = int(np.argmax(run_len))
    i0 = int(ia[run_start[best]])
    j0 = i0 + int(diag[run_start[best]])
    span = int(run_len[best]) + width - 1
    possible = int(allowed.sum())
    return Shared(span, (i0, i0 + span), (j0, j0 + span), np.unique(ia), possible)


def _equal_pairs(
    ha: np.ndarray, hb: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with ha[i] == hb[j] for the allowed i, without a quadratic table. Repetitive
    text ("the the the ...") would pair every window with every other: past
    MAX_CANDIDATES pairs each i keeps only its first occurrences in hb, which can shorten
    the longest span reported for such text but never invents a match."""
    ob = np.argsort(hb, kind="stable")
    sb = hb[ob]
    lo = np.searchsorted(sb, ha, "left")
    count = np.where(allowed, np.searchsorted(sb, ha, "right") - lo, 0)
    total = int(count.sum())
    if total > MAX_CANDIDATES:
        count = np.minimum(count, max(1, MAX_CANDIDATES // max(1, int((count > 0).sum()))))
        total = int(count.sum())
    ia = np.repeat(np.arange(len(ha), dtype=np.int64), count)
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    jb = ob[np.repeat(lo, count) + offset].astype(np.int64)
    return ia, jb


# ------------------------------------------------------------------ the whole comparison


@dataclass(frozen=True)
class Contaminated:
    """One evaluation document found in the training split."""

    eval_doc: int
    train_docs: tuple[int, ...]  # the training documents holding the longest span
    span: int  # units in the longest shared span
    coverage: float  # share of the document's evidence n-grams found in the training split


@dataclass(frozen=True)
class ContaminationReport:
    train: str
    eval: str
    n: int
    mode: str
    eval_docs: int
    train_docs: int
    limit: int  # training documents an n-gram may be in before it is boilerplate
    frequent_ngrams: int  # evaluation n-grams ignored as boilerplate
    candidates: int  # evaluation documents whose hashes matched
    documents: tuple[Contaminated, ...]  # by coverage, highest first
    hit_bytes: int  # size of the merged hits: what streaming the training split kept


# How the training split is streamed into hits: (index, train, chunk_size, quiet) ->
# (the merged hits, the split to re-read candidates from). In process by default; an
# engine (diag.data_engines.RayEngine.scan_contamination) scans it on a cluster.
Scan = Callable[["EvalIndex", "Split", int, bool], tuple["Hits", "Split"]]


def contamination(
    train: Split,
    evaluation: Split,
    *,
    n: int | None = None,
    mode: str = TOKENS,
    max_doc_count: int = MAX_DOC_COUNT,
    max_doc_fraction: float = MAX_DOC_FRACTION,
    min_units: int | None = None,
    chunk_size: int = 2048,
    quiet: bool = True,
    scan: Scan | None = None,
) -> ContaminationReport:
    """Which documents of `evaluation` occur in `train`, streaming `train` once."""
    n = n or default_n(mode)
    eval_texts = split_texts(evaluation, chunk_size)
    index = eval_index(eval_texts, n, mode, min_units=min_units)
    hits, reread = (scan or scan_here)(index, train, chunk_size, quiet)
    limit = doc_frequency_limit(len(train), max_doc_count, max_doc_fraction)
    return conclude(reread, evaluation, index, eval_texts, hits, limit)


def scan_here(index: EvalIndex, train: Split, chunk_size: int, quiet: bool) -> tuple[Hits, Split]:
    """Stages 2-3 in this process: the training split's hits, merged as they stream."""
    from diag.progress import Progress as Bar

    total = len(train)
    acc = Hits.empty()
    with Bar(quiet or total < 20_000, total, "eval-contamination", unit="documents") as advance:
        for start, chunk in train.samples.chunks(chunk_size):
            texts = [str(t) for t in chunk]  # type: ignore[attr-defined]
            acc = merge([acc, train_hits(index, texts, start)], keep=KEEP_DOCS)
            if advance is not None:
                advance(start + len(texts), total)
    return acc, train


def split_texts(split: Split, chunk_size: int = 2048) -> list[str]:
    """Every document of a (small, evaluation) split, in order."""
    return [str(t) for _, chunk in split.samples.chunks(chunk_size) for t in chunk]  # type: ignore[attr-defined]


def conclude(
    train: Split,
    evaluation: Split,
    index: EvalIndex,
    eval_texts: list[str],
    hits: Hits,
    limit: int,
) -> ContaminationReport:
    """Stages 4-5 and the report, from the hits of the whole training split merged with
    `keep=KEEP_DOCS` (however the training split was scanned): verification re-reads
    only the candidate training documents, through `train.samples.take`."""
    documents, candidates, n_frequent = _decide(index, hits, limit, eval_texts, train)
    return ContaminationReport(
        train.name,
        evaluation.name,
        index.n,
        index.mode,
        len(eval_texts),
        len(train),
        limit,
        n_frequent,
        candidates,
        documents,
        hits.nbytes,
    )


def _candidates(index: EvalIndex, hits: Hits, rows: np.ndarray) -> dict[int, list[int]]:
    """Per evaluation document, the training documents to verify: those sharing the most
    of its n-grams first, at most MAX_VERIFIED. Rows go in blocks of whole documents, so
    a heavily contaminated evaluation set does not make one huge pair array."""
    pairs: dict[int, list[int]] = {}
    docs = index.docs[rows]
    cuts = np.unique(np.searchsorted(docs, docs[::CANDIDATE_BLOCK], "left"))
    for block in np.split(rows, cuts[1:]):
        h = index.hashes[block]
        first = np.searchsorted(hits.pair_keys, h, "left")
        count = np.searchsorted(hits.pair_keys, h, "right") - first
        ev = np.repeat(index.docs[block], count)
        offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        tr = hits.pair_docs[np.repeat(first, count) + offset]
        if not len(ev):
            continue
        width = int(tr.max()) + 1
        both, shared = np.unique(ev * width + tr, return_counts=True)
        e_of, t_of = both // width, both % width
        order = np.lexsort((t_of, -shared, e_of))
        for e, t in zip(e_of[order].tolist(), t_of[order].tolist(), strict=True):
            listed = pairs.setdefault(e, [])
            if len(listed) < MAX_VERIFIED:
                listed.append(t)
    return pairs


def _decide(
    index: EvalIndex, hits: Hits, limit: int, eval_texts: list[str], train: Split
) -> tuple[tuple[Contaminated, ...], int, int]:
    usable = evidence(index, frequent(hits, limit))
    is_boiler = ~usable
    is_hit = np.isin(index.hashes, hits.keys) & usable
    pairs = _candidates(index, hits, np.flatnonzero(is_hit))
    # Verify training document by training document, re-reading a batch of them at a time.
    by_train = sorted((t, e) for e, ts in pairs.items() for t in ts)
    wanted = sorted({t for t, _ in by_train})
    results: dict[int, list[tuple[int, Shared]]] = {}
    at = 0
    for lo in range(0, len(wanted), TAKE_BATCH):
        ids = wanted[lo : lo + TAKE_BATCH]
        texts = dict(zip(ids, (str(t) for t in train.samples.take(ids)), strict=True))
        while at < len(by_train) and by_train[at][0] in texts:
            t, e = by_train[at]
            at += 1
            rows_e = index.rows(e)
            ignore = index.starts[rows_e][is_boiler[rows_e]]
            found = verify(eval_texts[e], texts[t], index.n, index.mode, ignore=ignore)
            if found.longest:
                results.setdefault(e, []).append((t, found))
    documents = []
    for e, found in results.items():
        rows_e = index.rows(e)
        usable_e = int(usable[rows_e].sum())
        matched = np.unique(np.concatenate([s.matched for _, s in found]))
        longest = max(s.longest for _, s in found)
        holders = tuple(sorted(t for t, s in found if s.longest == longest))
        coverage = min(1.0, len(matched) / usable_e) if usable_e else 0.0
        documents.append(Contaminated(e, holders, longest, coverage))
    documents.sort(key=lambda d: (-d.coverage, -d.span, d.eval_doc))
    return tuple(documents), len(pairs), int(is_boiler.sum())


@dataclass
class ContaminationCheck:
    """Every split compared with the training split (`Run.contamination`): each comparison
    runs once per set of options, however many rules or reports ask for it."""

    splits: dict[str, Split]
    quiet: bool = True
    # Where the training split is scanned: None is this process; else an engine with a
    # `scan_contamination` (a `Scan`: diag.data_engines.RayEngine).
    engine: Any = None
    _done: dict[tuple, list[ContaminationReport]] = field(default_factory=dict, repr=False)

    def reports(self, **options: object) -> list[ContaminationReport]:
        """One report per text split other than the training split, in split order."""
        from diag.loaders.splits.model import TEXT
        from diag.rules.data import train_split

        key = tuple(sorted(options.items()))
        if key not in self._done:
            train = train_split(self.splits)
            base = self.splits[train]
            scan = None if self.engine is None else self.engine.scan_contamination
            self._done[key] = [
                contamination(base, split, quiet=self.quiet, scan=scan, **options)  # type: ignore[arg-type]
                for name, split in self.splits.items()
                if name != train and split.kind == TEXT == base.kind and len(split)
            ]
        return self._done[key]
