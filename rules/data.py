"""[data] rules: what the dataset splits say about leakage and evaluation.

The expensive part (hashing every sample, near-duplicate search) runs once in
`diag.leakage` before the rules; these functions only read its results and the labels and
groups of each split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import combinations
from typing import Any

import numpy as np

from diag.loaders.splits.model import Split
from diag.model import Finding, Location, Severity
from diag.registry import rule

TRAIN_NAMES = ("train", "training", "trn", "fit")
MAX_LISTED = 20


def train_split(splits: dict[str, Split]) -> str:
    """The training split: one named like train, else the first given."""
    for name in splits:
        if name.lower() in TRAIN_NAMES:
            return name
    return next(iter(splits))


def split_pairs(splits: dict[str, Split]) -> list[tuple[str, str]]:
    """Split pairs to compare, training split first."""
    train = train_split(splits)
    names = [train, *[n for n in splits if n != train]]
    return list(combinations(names, 2))


def _where(split: Split, obj: str, **details: Any) -> Location:
    return Location(str(split.source), obj, details)


# ------------------------------------------------------------------ group-leakage


@rule(name="group-leakage", group="data", severity=Severity.ERROR, needs=("splits",))
def group_leakage(splits: dict[str, Split]) -> Iterator[Finding]:
    """A group (patient, subject, session, writer) present in more than one split.

    ## What it does
    For every pair of splits that both have group ids (`--group-column`, or a `group`,
    `patient`, `subject`, `writer` or `session` array/column), lists the groups that occur
    in both, and how many samples of each split belong to them.

    ## Why is this bad?
    Samples of one group are correlated (the same patient's scans, the same writer's
    digits, frames of one session). A model can recognise the group instead of learning
    the task, and a split that shares groups measures that: slice-level instead of
    subject-level splits inflated accuracy by 30 to 55 points in published MRI studies.

    ## How to fix
    Split by group (`GroupShuffleSplit`, `GroupKFold`, `StratifiedGroupKFold`), so every
    group lands in exactly one split, and re-evaluate.
    """
    for a, b in split_pairs(splits):
        ga, gb = splits[a].groups, splits[b].groups
        if ga is None or gb is None:
            continue
        shared = np.intersect1d(np.asarray(ga), np.asarray(gb))
        if shared.size == 0:
            continue
        in_a = int(np.isin(ga, shared).sum())
        in_b = int(np.isin(gb, shared).sum())
        listed = [_plain(g) for g in shared[:MAX_LISTED]]
        yield Finding(
            message=(
                f"{shared.size} group(s) occur in both {a} and {b} ({in_a} {a} samples, "
                f"{in_b} {b} samples, {in_b / len(gb):.1%} of {b}): e.g. "
                + ", ".join(str(g) for g in listed[:5])
            ),
            location=_where(splits[b], f"{a}/{b}", splits=[a, b]),
            evidence={
                "shared_groups": int(shared.size),
                "groups": listed,
                f"samples_{a}": in_a,
                f"samples_{b}": in_b,
                f"fraction_{b}": in_b / len(gb),
            },
        )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------ split-label-shift


def _chi2_sf(stat: float, dof: int) -> float:
    """P(X > stat) for X ~ chi-square(dof): the regularised upper incomplete gamma
    Q(dof/2, stat/2), by its series below a + 1 and its continued fraction above
    (no scipy needed)."""
    if dof <= 0:
        return 1.0
    if stat <= 0:
        return 1.0
    a, x = dof / 2, stat / 2
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # P(a, x) by its power series, then Q = 1 - P
        term = total = 1 / a
        k = a
        for _ in range(1000):
            k += 1
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1 - total * math.exp(log_front))
    # Q(a, x) by Lentz's continued fraction
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-15:
            break
    return math.exp(log_front) * h


@rule(name="split-label-shift", group="data", severity=Severity.WARNING, needs=("splits",))
def split_label_shift(
    splits: dict[str, Split], *, alpha: float = 1e-3, min_distance: float = 0.05
) -> Iterator[Finding]:
    """Labels missing from training, or class proportions that differ beyond chance.

    ## What it does
    Compares each split's labels with the training split's. It reports labels that occur
    in validation or test but never in training, and class distributions that differ both
    significantly (chi-square test of homogeneity, p < `alpha`) and materially (total
    variation distance at least `min_distance`).

    ## Why is this bad?
    A model cannot predict a class it never saw, and a validation or test set with other
    class proportions than the data the model will meet measures a different task: its
    accuracy is not the accuracy you will get. Very different proportions also often
    betray a split made by sorting (by label, date or source) instead of at random.

    ## How to fix
    Stratify the split (`train_test_split(..., stratify=y)`, `StratifiedGroupKFold`), or
    if the shift is real (a later period, another site), report it and evaluate per class.
    """
    train = train_split(splits)
    base = splits[train].labels
    if base is None:
        return
    base_labels, base_counts = np.unique(np.asarray(base), return_counts=True)
    for name, split in splits.items():
        if name == train or split.labels is None:
            continue
        labels, counts = np.unique(np.asarray(split.labels), return_counts=True)
        unseen = np.setdiff1d(labels, base_labels)
        if unseen.size:
            n_unseen = int(counts[np.isin(labels, unseen)].sum())
            listed = [_plain(v) for v in unseen[:MAX_LISTED]]
            yield Finding(
                message=(
                    f"{unseen.size} label(s) of {name} never occur in {train} "
                    f"({n_unseen} samples): " + ", ".join(str(v) for v in listed[:5])
                ),
                location=_where(split, name, against=train),
                evidence={"unseen_labels": listed, "samples": n_unseen, "kind": "unseen"},
            )
        result = _homogeneity(base_labels, base_counts, labels, counts)
        if result is None:
            continue
        stat, dof, p, tvd, worst = result
        if p < alpha and tvd >= min_distance:
            yield Finding(
                message=(
                    f"class proportions of {name} differ from {train}: total variation "
                    f"{tvd:.2f}, chi-square p = {p:.1e}; the most shifted class is "
                    f"{worst[0]!s} ({worst[1]:.1%} in {train}, {worst[2]:.1%} in {name})"
                ),
                location=_where(split, name, against=train),
                evidence={
                    "kind": "proportions",
                    "total_variation": tvd,
                    "chi2": stat,
                    "dof": dof,
                    "p_value": p,
                    "class": _plain(worst[0]),
                    "train_share": worst[1],
                    "split_share": worst[2],
                },
            )


def _homogeneity(
    la: np.ndarray, ca: np.ndarray, lb: np.ndarray, cb: np.ndarray
) -> tuple[float, int, float, float, tuple[Any, float, float]] | None:
    labels = np.union1d(la, lb)
    if labels.size < 2:
        return None
    a = np.zeros(labels.size)
    b = np.zeros(labels.size)
    a[np.searchsorted(labels, la)] = ca
    b[np.searchsorted(labels, lb)] = cb
    table = np.stack([a, b])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = float(np.nansum((table - expected) ** 2 / expected))
    dof = labels.size - 1
    pa, pb = a / a.sum(), b / b.sum()
    tvd = float(0.5 * np.abs(pa - pb).sum())
    k = int(np.argmax(np.abs(pa - pb)))
    return stat, dof, _chi2_sf(stat, dof), tvd, (_plain(labels[k]), float(pa[k]), float(pb[k]))


# ------------------------------------------------------------------ validation-set-size


@rule(name="validation-set-size", group="data", severity=Severity.INFO, needs=("splits",))
def validation_set_size(
    splits: dict[str, Split],
    *,
    max_interval_points: float = 2.0,
    assumed_accuracy: float = 0.9,
) -> Iterator[Finding]:
    """A validation or test set too small to tell models apart.

    ## What it does
    For every split but the training one, computes the width of the 95% confidence
    interval of an accuracy of `assumed_accuracy` measured on it (Wilson interval) and
    reports the split when that interval is wider than `max_interval_points` percentage
    points, with the number of samples that would make it that narrow.

    ## Why is this bad?
    On a small evaluation set, two models whose accuracies differ by less than the
    interval cannot be told apart: picking the better one, or reporting an improvement,
    is noise. Early stopping and model selection on such a set overfit it.

    ## How to fix
    Use a larger validation set, cross-validation, or report the interval with the score;
    compare models with a paired test on the same samples.
    """
    train = train_split(splits)
    p, z = assumed_accuracy, 1.959964
    for name, split in splits.items():
        n = len(split)
        if name == train or n == 0:
            continue
        width = _wilson_width(p, n, z)
        if width * 100 <= max_interval_points:
            continue
        needed = _needed(p, z, max_interval_points / 100)
        yield Finding(
            message=(
                f"{name} has {n} samples: an accuracy of {p:.0%} measured on it is only known "
                f"to ±{width * 50:.1f} points (95%); about {needed:,} samples would narrow "
                f"that to ±{max_interval_points / 2:g}"
            ),
            location=_where(split, name),
            evidence={
                "samples": n,
                "interval_points": width * 100,
                "assumed_accuracy": p,
                "samples_needed": needed,
            },
        )


def _wilson_width(p: float, n: int, z: float) -> float:
    return 2 * z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def _needed(p: float, z: float, width: float) -> int:
    n = max(1, math.ceil(4 * z * z * p * (1 - p) / (width * width)))
    while _wilson_width(p, n, z) > width:
        n = math.ceil(n * 1.01) + 1
    return n


# ------------------------------------------------------------------ overlap rules

MAX_PAIRS_LISTED = 200  # in the evidence; counts stay exact


def _pair_list(pairs: Any, limit: int = MAX_PAIRS_LISTED) -> list[list[Any]]:
    return [
        [int(p[0]), int(p[1]), *([round(float(p[2]), 6)] if len(p) > 2 else [])]
        for p in pairs[:limit]
    ]


@rule(name="split-overlap-exact", group="data", severity=Severity.ERROR, needs=("leakage",))
def split_overlap_exact(leakage: Any) -> Iterator[Finding]:
    """Samples whose content is identical in two splits.

    ## What it does
    Hashes every sample's normalised content (pixel values whatever their dtype or
    scale, table rows with `-0.0` equal to `0.0` and NaN equal to NaN, text without case,
    whitespace and punctuation differences) and reports, for every pair of splits, each
    sample that also occurs in the other: the index pairs, how many, and what fraction of
    the evaluation split they are.

    ## Why is this bad?
    A test sample the model was trained on measures memory, not generalisation. Even a few
    percent of copies inflate the score: 3.3% of CIFAR-10's test images have a copy in its
    training set, and removing them costs models up to 14% relative accuracy.

    ## How to fix
    Deduplicate before splitting (hash the content, keep one copy), then split; if the
    data has groups (patients, sources), split by group. Drop the listed samples from the
    evaluation split and re-evaluate.
    """
    for comparison in leakage.comparisons.values():
        exact = comparison.exact
        if exact.n_pairs == 0:
            continue
        a, b = comparison.a, comparison.b
        n_b = len(leakage.splits[b])
        yield Finding(
            message=(
                f"{exact.n_b} {b} sample(s) ({exact.n_b / n_b:.1%} of {b}) are exact copies of "
                f"{exact.n_a} {a} sample(s): {exact.n_pairs} pair(s), e.g. "
                + ", ".join(
                    f"{a} {leakage.splits[a].sample_id(int(i))} = "
                    f"{b} {leakage.splits[b].sample_id(int(j))}"
                    for i, j in exact.pairs[:3]
                )
            ),
            location=_where(leakage.splits[b], f"{a}/{b}", splits=[a, b]),
            evidence={
                "pair_count": int(exact.n_pairs),
                f"samples_{a}": int(exact.n_a),
                f"samples_{b}": int(exact.n_b),
                f"fraction_{b}": exact.n_b / n_b,
                "pairs": _pair_list(exact.pairs),
            },
        )


@rule(name="split-overlap-near", group="data", severity=Severity.WARNING, needs=("leakage",))
def split_overlap_near(leakage: Any) -> Iterator[Finding]:
    """Near-duplicate samples across splits: shifted, rescaled, re-encoded, rounded.

    ## What it does
    Finds pairs of samples from two splits that are copies up to an edit: images shifted
    by a pixel or two, rescaled, re-encoded as JPEG, with brightness or contrast changes
    or mild noise; table rows equal up to rounding or a rescaling; texts equal up to a few
    words. Candidates come from an approximate nearest-neighbour index over small
    edit-robust sketches (MinHash bands for text) and are verified on the samples' own
    thumbnails or values. The threshold is relative to the data: a fraction of the
    typical distance between a sample and its nearest neighbour within a split, so it
    adapts to how alike the samples of a dataset naturally are. Exact copies are left to
    `split-overlap-exact`.

    ## Why is this bad?
    A shifted or re-encoded copy of a training sample is, for the model, the same
    sample: it leaks just like an exact copy, but no hash comparison finds it.
    Augmentation pipelines and scraped datasets produce such copies routinely.

    ## How to fix
    Look at the pairs (the HTML report shows them side by side), remove them from the
    evaluation split, and deduplicate with a perceptual comparison before splitting.
    """
    for comparison in leakage.comparisons.values():
        if not comparison.near:
            continue
        a, b = comparison.a, comparison.b
        n_b = len(leakage.splits[b])
        pairs = sorted(comparison.near, key=lambda p: (p.i, p.j))
        in_b = len({p.j for p in pairs})
        measure = "Jaccard similarity" if comparison.kind == "text" else "distance"
        ids_a, ids_b = leakage.splits[a].sample_id, leakage.splits[b].sample_id
        yield Finding(
            message=(
                f"{in_b} {b} sample(s) ({in_b / n_b:.1%} of {b}) are near copies of {a} samples "
                f"({len(pairs)} pair(s); {measure} threshold {comparison.threshold:.3g}), e.g. "
                + ", ".join(f"{a} {ids_a(p.i)} ~ {b} {ids_b(p.j)}" for p in pairs[:3])
            ),
            location=_where(leakage.splits[b], f"{a}/{b}", splits=[a, b]),
            evidence={
                "pair_count": len(pairs),
                f"samples_{b}": in_b,
                f"fraction_{b}": in_b / n_b,
                "threshold": comparison.threshold,
                "typical_neighbour_distance": comparison.scale,
                "pairs": _pair_list([(p.i, p.j, p.score) for p in pairs]),
            },
        )


@rule(name="duplicates-within-split", group="data", severity=Severity.INFO, needs=("leakage",))
def duplicates_within_split(leakage: Any) -> Iterator[Finding]:
    """Samples repeated inside one split.

    ## What it does
    Groups the samples of each split by the hash of their normalised content and
    reports the groups with more than one member.

    ## Why is this bad?
    Repeats weigh some samples more than others in training and in the metric, and are
    often the first sign of a data pipeline that copies (a join that fans out, a scrape
    that met the same page twice). In an evaluation split they make the score lean on
    a few samples.

    ## How to fix
    Deduplicate each split, or make the repetition deliberate (sample weights) and know
    it is there.
    """
    for name, groups in leakage.within.items():
        if not groups:
            continue
        split = leakage.splits[name]
        extra = sum(len(g) - 1 for g in groups)
        pairs = [(int(g[0]), int(x)) for g in groups for x in g[1:]]
        yield Finding(
            message=(
                f"{extra} sample(s) of {name} repeat another one ({len(groups)} group(s) of "
                f"identical samples), e.g. "
                + ", ".join(" = ".join(split.sample_id(int(k)) for k in g[:3]) for g in groups[:3])
            ),
            location=_where(split, name, splits=[name]),
            evidence={
                "groups": len(groups),
                "repeated_samples": extra,
                "fraction": extra / len(split),
                "pair_count": len(pairs),
                "pairs": _pair_list(pairs),
            },
        )
