"""Contaminated evaluation documents next to the training documents that hold their text,
the longest shared span highlighted in both.

Only the documents a finding lists are read again (through `SampleSource.take`) and
verified again (`diag.contamination.verify`), so the view costs a few dozen documents
whatever the size of the splits. Every string is plain text: the template marks the span
up and autoescaping covers the content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diag.contamination import CHARS, TOKENS, normalise, verify
from diag.model import Finding

if TYPE_CHECKING:
    from diag.loaders.splits.model import Split

RULE = "eval-contamination"
MAX_DOCUMENTS = 8  # per finding shown
MAX_FINDINGS = 8
CONTEXT = 240  # characters shown before and after the span
MAX_SPAN = 1600  # characters of a longer span shown (its middle is elided)
_CHUNK = re.compile(r"\S+")


@dataclass(frozen=True)
class Excerpt:
    split: str
    index: int
    sample_id: str
    before: str
    shared: str
    after: str


@dataclass(frozen=True)
class SharedView:
    eval: Excerpt
    train: Excerpt
    label: str  # e.g. "45 tokens shared, 100% coverage"


@dataclass(frozen=True)
class ContaminationView:
    anchor: str
    rule: str
    title: str
    pairs: tuple[SharedView, ...]
    more: int


def contamination_views(
    findings: Iterable[Finding], splits: dict[str, Split] | None, anchors: dict[int, str]
) -> list[ContaminationView]:
    if not splits:
        return []
    views = []
    for f in findings:
        names = list(f.location.details.get("splits", ()))
        if f.rule != RULE or len(names) != 2 or not all(n in splits for n in names):
            continue
        train, evaluation = splits[names[0]], splits[names[1]]
        listed = [d for d in f.evidence.get("documents", ()) if _valid(d, train, evaluation)]
        n = int(f.evidence.get("n", 0)) or None
        mode = str(f.evidence.get("mode", TOKENS))
        shown = tuple(_pair(train, evaluation, d, n, mode) for d in listed[:MAX_DOCUMENTS])
        total = int(f.evidence.get("contaminated", len(listed)))
        views.append(
            ContaminationView(anchors.get(id(f), ""), f.rule, f.message, shown, total - len(shown))
        )
        if len(views) >= MAX_FINDINGS:
            break
    return views


def _valid(doc: Any, train: Split, evaluation: Split) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("train"), list) or not doc["train"]:
        return False
    e, t = doc.get("eval"), doc["train"][0]
    return (
        isinstance(e, int)
        and isinstance(t, int)
        and 0 <= e < len(evaluation)
        and 0 <= t < len(train)
    )


def _pair(train: Split, evaluation: Split, doc: dict, n: int | None, mode: str) -> SharedView:
    e, t = int(doc["eval"]), int(doc["train"][0])
    (eval_text,) = evaluation.samples.take([e])
    (train_text,) = train.samples.take([t])
    eval_text, train_text = str(eval_text), str(train_text)
    shared = verify(eval_text, train_text, n, mode)
    unit = "tokens" if mode == TOKENS else "characters"
    label = f"{doc.get('span', shared.longest)} {unit} shared"
    if isinstance(doc.get("coverage"), int | float):
        label += f", {float(doc['coverage']):.0%} coverage"
    return SharedView(
        _excerpt(evaluation, e, eval_text, shared.eval_span, mode),
        _excerpt(train, t, train_text, shared.train_span, mode),
        label,
    )


def _excerpt(split: Split, index: int, text: str, span: tuple[int, int], mode: str) -> Excerpt:
    lo, hi = char_span(text, span, mode)
    shared = text[lo:hi]
    if len(shared) > MAX_SPAN:
        half = MAX_SPAN // 2
        shared = shared[:half] + " … " + shared[-half:]
    before = text[max(0, lo - CONTEXT) : lo]
    after = text[hi : hi + CONTEXT]
    before = ("…" + before) if lo > CONTEXT else before
    after = (after + "…") if hi + CONTEXT < len(text) else after
    return Excerpt(split.name, index, split.sample_id(index), before, shared, after)


def char_span(text: str, span: tuple[int, int], mode: str = TOKENS) -> tuple[int, int]:
    """Where units [start, end) of the normalised text lie in `text`: from the start of the
    whitespace-separated chunk holding the first unit to the end of the one holding the
    last (punctuation inside those chunks included). (0, 0) for an empty span."""
    start, end = span
    if end <= start:
        return 0, 0
    first = last = None
    unit = 0
    for chunk in _CHUNK.finditer(text):
        norm = normalise(chunk.group())
        if not norm:
            continue
        # In chars mode a chunk also brings the space that joins it to the previous one.
        size = len(norm) + (1 if unit else 0) if mode == CHARS else norm.count(" ") + 1
        if first is None and unit + size > start:
            first = chunk.start()
        if unit + size >= end:
            last = chunk.end()
            break
        unit += size
    if first is None:
        return 0, 0
    return first, last if last is not None else len(text)


def documents_text(documents: list, names: Any, run: Any) -> str:
    """The listed documents as a person reads them, one per line:
    `test line 4 in train line 17, line 90: span 45, coverage 0.9`."""
    from diag.reports.html import MAX_LISTED_ITEMS, format_value

    splits = getattr(run, "splits", None) or {}
    if not isinstance(names, list | tuple) or len(names) != 2:
        return format_value(documents)
    train, evaluation = splits.get(names[0]), splits.get(names[1])
    lines = []
    for doc in documents[:MAX_LISTED_ITEMS]:
        if not (train and evaluation and _valid(doc, train, evaluation)):
            return format_value(documents)
        holders = ", ".join(train.sample_id(int(t)) for t in doc["train"][:4])
        lines.append(
            f"{evaluation.name} {evaluation.sample_id(int(doc['eval']))} in {train.name} "
            f"{holders}: span {format_value(doc.get('span'))}, "
            f"coverage {format_value(doc.get('coverage'))}"
        )
    if len(documents) > len(lines):
        lines.append(f"… ({len(documents) - len(lines)} more)")
    return "\n".join(lines)
