"""Leaked sample pairs, side by side: images as small PNG thumbnails, rows, or text.

Only the pairs a finding lists are read again (through `SampleSource.take`), so the report
costs a few dozen samples whatever the size of the splits.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.model import Finding

if TYPE_CHECKING:
    from diag.loaders.splits.model import Split

PAIR_RULES = ("split-overlap-exact", "split-overlap-near", "duplicates-within-split")
MAX_PAIRS = 12  # per finding shown
MAX_FINDINGS = 12
THUMB_PX = 96
MAX_COLUMNS = 24
MAX_TEXT = 400


@dataclass(frozen=True)
class Side:
    split: str
    index: int
    sample_id: str
    image: str | None = None  # data: URI of a PNG
    cells: tuple[tuple[str, str, bool], ...] = ()  # (column, value, differs from the other side)
    text: str | None = None


@dataclass(frozen=True)
class PairView:
    left: Side
    right: Side
    distance: str


@dataclass(frozen=True)
class LeakView:
    anchor: str
    rule: str
    title: str
    pairs: tuple[PairView, ...]
    more: int


def leak_views(
    findings: Iterable[Finding], splits: dict[str, Split] | None, anchors: dict[int, str]
) -> list[LeakView]:
    if not splits:
        return []
    views = []
    for f in findings:
        if f.rule not in PAIR_RULES or "pairs" not in f.evidence:
            continue
        names = list(f.location.details.get("splits", ()))
        if len(names) == 1:
            names = names * 2
        if len(names) != 2 or not all(n in splits for n in names):
            continue
        a, b = splits[names[0]], splits[names[1]]
        pairs = list(f.evidence["pairs"])[:MAX_PAIRS]
        shown = tuple(_pair(a, b, p) for p in pairs)
        total = int(f.evidence.get("pair_count", len(f.evidence["pairs"])))
        views.append(LeakView(anchors.get(id(f), ""), f.rule, f.message, shown, total - len(shown)))
        if len(views) >= MAX_FINDINGS:
            break
    return views


def _pair(a: Split, b: Split, pair: Sequence[Any]) -> PairView:
    i, j = int(pair[0]), int(pair[1])
    distance = f"{float(pair[2]):.3g}" if len(pair) > 2 else "identical"
    (left,) = a.samples.take([i])
    (right,) = b.samples.take([j])
    if a.kind == "image":
        left, right = np.asarray(left), np.asarray(right)
        lo, hi = _joint_range(left, right)  # one scale for both: brightness changes show
        return PairView(_image_side(a, i, left, lo, hi), _image_side(b, j, right, lo, hi), distance)
    if a.kind == "text":
        return PairView(_text_side(a, i, left), _text_side(b, j, right), distance)
    lcells, rcells = _cells(a, left), _cells(b, right)
    differs = [lv != rv for (_, lv), (_, rv) in zip(lcells, rcells, strict=False)]
    differs += [True] * (max(len(lcells), len(rcells)) - len(differs))
    return PairView(
        Side(
            a.name,
            i,
            a.sample_id(i),
            cells=tuple((c, v, d) for (c, v), d in zip(lcells, differs, strict=False)),
        ),
        Side(
            b.name,
            j,
            b.sample_id(j),
            cells=tuple((c, v, d) for (c, v), d in zip(rcells, differs, strict=False)),
        ),
        distance,
    )


def _image_side(split: Split, index: int, image: np.ndarray, lo: float, hi: float) -> Side:
    return Side(split.name, index, split.sample_id(index), image=thumbnail_uri(image, lo, hi))


def _joint_range(*images: np.ndarray) -> tuple[float, float]:
    if all(im.dtype == np.uint8 for im in images):
        return 0.0, 255.0
    values = np.concatenate([im[np.isfinite(im)].ravel().astype(np.float64) for im in images])
    return (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)


def _text_side(split: Split, index: int, text: Any) -> Side:
    value = str(text)
    short = value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    return Side(split.name, index, split.sample_id(index), text=short)


def _cells(split: Split, row: Any) -> list[tuple[str, str]]:
    numeric = np.asarray(getattr(row, "numeric", row), dtype=np.float64).reshape(-1)
    columns = list(split.columns) or [f"x{k}" for k in range(numeric.size)]
    cells = [(c, f"{v:.6g}") for c, v in zip(columns, numeric, strict=False)]
    text = getattr(row, "text", None)
    if text:
        cells.append(("text", str(text[0])[:MAX_TEXT]))
    return cells[:MAX_COLUMNS]


def thumbnail_uri(image: np.ndarray, lo: float = 0.0, hi: float = 255.0) -> str:
    """A PNG data URI of an image mapped from [lo, hi] to grey levels (or RGB), scaled by
    nearest neighbour to about THUMB_PX pixels so single pixels stay visible."""
    from PIL import Image

    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3 and x.shape[2] in (1, 4):
        x = x[:, :, 0] if x.shape[2] == 1 else x[:, :, :3]
    scaled = np.clip((x - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    img = Image.fromarray(np.nan_to_num(scaled * 255).astype(np.uint8))
    factor = max(1, THUMB_PX // max(img.size))
    if factor > 1:
        img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.Resampling.NEAREST)
    elif max(img.size) > THUMB_PX * 2:
        img.thumbnail((THUMB_PX * 2, THUMB_PX * 2))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
