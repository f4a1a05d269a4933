"""[data] eval-contamination: evaluation documents that occur in the training split.

The work (streaming the training split against the evaluation n-grams, verifying the
candidates token by token) lives in `diag.contamination`; this module turns its report
into findings.
"""

from __future__ import annotations

from collections.abc import Iterator

from diag.contamination import (
    MAX_DOC_COUNT,
    MAX_DOC_FRACTION,
    TOKENS,
    ContaminationCheck,
    ContaminationReport,
)
from diag.loaders.splits.model import Split
from diag.model import Finding, Location, Severity
from diag.registry import rule

MAX_DOCUMENTS_LISTED = 20  # in the evidence, highest coverage first; counts stay exact


@rule(name="eval-contamination", group="data", severity=Severity.ERROR, needs=("contamination",))
def eval_contamination(
    contamination: ContaminationCheck,
    *,
    n: int | None = None,
    mode: str = TOKENS,
    max_doc_count: int = MAX_DOC_COUNT,
    max_doc_fraction: float = MAX_DOC_FRACTION,
    min_units: int | None = None,
) -> Iterator[Finding]:
    """Evaluation documents whose text occurs in the training split (benchmark contamination).

    ## What it does
    For text splits, compares every split with the training split the way GPT-3's
    contamination analysis did: texts are normalised (case, punctuation and Unicode
    compatibility forms do not count; tokens are split on whitespace), and an evaluation
    document is contaminated when one of its `n`-token windows (`n` = 13) occurs in a
    training document. A document shorter than `n` tokens is contaminated when it occurs
    whole, from `min_units` (8) tokens up; shorter ones are never evidence. With
    `mode="chars"` the windows are `n` = 50 characters of the normalised text instead.
    The training split is streamed once against the evaluation n-grams' hashes, and every
    candidate is verified on the tokens themselves, so a hash collision cannot make a
    finding. An n-gram held by more training documents than `max_doc_fraction` (5%) of
    the training split, at most `max_doc_count` (100) and at least 2, is boilerplate
    (licence headers, navigation text, templates) and is ignored, with every n-gram that
    shares a token with it. One finding per evaluation split: how many documents are
    contaminated, and for each (first 20 by coverage) the training documents that hold
    its longest shared span, the span's length in tokens, and its coverage (the share of
    its non-boilerplate n-grams found in the training split). The HTML report shows the
    shared span highlighted in both documents.

    The filter has a price: an evaluation document copied into more training documents
    than the limit reads as boilerplate too, like GPT-3's filter; raise `max_doc_count`
    to audit a corpus where benchmark items recur by the hundred.

    Measured (tests/test_contamination.py on 2,067 standard-library docstrings, and
    bench/bench_contamination.py): a random 400 / 1,667 split of the raw docstrings has
    57 evaluation documents that share a 13-gram or occur whole (templated docstrings
    such as `total_ordering`'s), exactly the set a naive n-gram comparison finds; natural
    shared 13-grams are held by 1 to 5 training documents. Without those documents
    (1,441 / 300) the split gives no finding. Planted copies are found with coverage 1.0
    and the whole document as the longest span: 40 of 40 as a paragraph inside a
    training document of 43 to 773 tokens, and whole. One word in 15 replaced: 30 of 30
    found, coverage 0.08 to 0.54, longest span 14 to 59 tokens; one word in 6 replaced
    (no 13 words in a row left): 0 of 27. A licence header and a navigation line on every
    training and evaluation document: no finding on the clean split (300 of 300 without
    the filter); the header's 13-grams are in all 1,441 training documents, the 13-grams
    that straddle its end and a document's first words in 1 to 251, hence the rule on
    n-grams touching boilerplate. 10,000 evaluation documents against 1,000,000 training
    documents (381 MiB of JSON Lines): 18 s (57,000 training documents/s), 176 MiB peak
    RSS (159 MiB against 100,000), 0.3 MiB of merged hits; 96 of 100 planted documents
    found, the other 4 made of docstring templates that recur in hundreds of training
    documents.

    ## Why is this bad?
    A model evaluated on text it was trained on is measured on memory, not on the task:
    GPT-3's analysis found 13-gram overlaps for a large part of several benchmarks, and
    scores on the contaminated part can be many points higher. Scraped corpora and mixed
    fine-tuning sets pick up benchmark items (copies, quotes, solutions posted online)
    without anyone deciding to.

    ## How to fix
    Remove the listed training documents (or the shared spans, as GPT-3's filter did)
    from the training set and retrain, or report the benchmark score on the clean subset
    next to the full one. Deduplicate new training data against every evaluation set
    before training.
    """
    splits = contamination.splits
    for report in contamination.reports(
        n=n,
        mode=mode,
        max_doc_count=max_doc_count,
        max_doc_fraction=max_doc_fraction,
        min_units=min_units,
    ):
        if report.documents:
            yield _finding(report, splits[report.train], splits[report.eval])


def _finding(report: ContaminationReport, train: Split, evaluation: Split) -> Finding:
    a, b = report.train, report.eval
    docs = report.documents
    first = docs[0]
    unit = "token" if report.mode == TOKENS else "character"
    fraction = len(docs) / report.eval_docs
    return Finding(
        message=(
            f"{len(docs)} of {report.eval_docs} {b} document(s) ({fraction:.1%}) share a "
            f"{report.n}-{unit} span with {a}: e.g. {b} {evaluation.sample_id(first.eval_doc)} "
            f"shares {first.span} {unit}s with {a} {train.sample_id(first.train_docs[0])} "
            f"({first.coverage:.0%} of its {report.n}-grams found)"
        ),
        location=Location(str(evaluation.source), f"{a}/{b}", {"splits": [a, b]}),
        evidence={
            "contaminated": len(docs),
            f"fraction_{b}": fraction,
            "eval_documents": report.eval_docs,
            "train_documents": report.train_docs,
            "n": report.n,
            "mode": report.mode,
            "doc_frequency_limit": report.limit,
            "boilerplate_ngrams": report.frequent_ngrams,
            "documents": [
                {
                    "eval": d.eval_doc,
                    "train": list(d.train_docs),
                    "span": d.span,
                    "coverage": round(d.coverage, 6),
                }
                for d in docs[:MAX_DOCUMENTS_LISTED]
            ],
        },
    )
