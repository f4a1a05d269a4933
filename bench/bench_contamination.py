"""eval-contamination at scale: 10k evaluation documents against 1M training documents.

    .venv/bin/python bench/bench_contamination.py [--train 1000000] [--eval 10000]
        [--out /tmp/diag-contamination]

The text is real: standard-library docstrings (tests/lm_support.py) cut into paragraphs.
A fifth of the docstrings is held out; evaluation documents recombine 1-3 held-out
paragraphs, training documents 2-4 of the others, so every training paragraph recurs in
hundreds of training documents (as boilerplate and templates do in a crawl) and the
evaluation documents share only the docstrings' natural templates with training. 100
evaluation documents are planted into training: 50 whole, 50 as a paragraph inside a
training document. Both files are written once, streaming, as JSON Lines, and read back
through diag's own loader, in process: wall time, documents per second, peak RSS
(VmHWM, imports included) and the planted documents found.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lm_support import docstring_texts

from diag.contamination import contamination, normalise
from diag.loaders.splits.loaders import open_split

PLANTED = 100


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def paragraphs(texts: list[str]) -> list[str]:
    return [p.strip() for t in texts for p in t.split("\n\n") if len(p.split()) >= 5]


def write_splits(out: Path, n_train: int, n_eval: int) -> tuple[Path, Path, set[int], set[int]]:
    """The two JSONL files (reused when present), the planted evaluation documents, and
    the others that share a paragraph with a planted one (so are in training too)."""
    out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = out / f"train-{n_train}.jsonl", out / f"eval-{n_eval}.jsonl"
    rng = random.Random(0)
    docs = docstring_texts(10**8)
    rng.shuffle(docs)
    held = paragraphs(docs[: len(docs) // 5])
    rest = paragraphs(docs[len(docs) // 5 :])
    evals = [
        "\n\n".join(rng.sample(held, rng.randint(1, 3))) for _ in range(n_eval)
    ]  # fmt: skip
    # Shorter than 8 tokens is never evidence (see eval-contamination): plant longer ones.
    eligible = [k for k, t in enumerate(evals) if len(normalise(t).split()) >= 13]
    planted = set(rng.sample(eligible, PLANTED))
    copied = {p for k in planted for p in evals[k].split("\n\n")}
    sharing = {k for k, t in enumerate(evals) if copied & set(t.split("\n\n"))} - planted
    if not eval_path.exists():
        with eval_path.open("w") as f:
            for t in evals:
                f.write(json.dumps({"text": t}) + "\n")
    if not train_path.exists():
        at = dict(zip(rng.sample(range(n_train), PLANTED), sorted(planted), strict=True))
        with train_path.open("w") as f:
            for k in range(n_train):
                parts = rng.sample(rest, rng.randint(2, 4))
                if k in at:
                    e = at[k]
                    parts = [evals[e]] if e % 2 else [*parts[:1], evals[e], *parts[1:]]
                f.write(json.dumps({"text": "\n\n".join(parts)}) + "\n")
    return train_path, eval_path, planted, sharing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/diag-contamination"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    train_path, eval_path, planted, sharing = write_splits(args.out, args.train, args.eval)
    made = time.perf_counter() - t0
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    train = open_split("train", train_path)
    evaluation = open_split("test", eval_path)
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = contamination(train, evaluation, quiet=False)
    took = time.perf_counter() - t0
    found = {d.eval_doc for d in report.documents}
    rows = [
        ("training documents", f"{len(train):,}", f"{train_path.stat().st_size / 2**20:,.0f} MiB"),
        ("evaluation documents", f"{len(evaluation):,}", ""),
        ("files written (s)", f"{made:.1f}", "reused when present"),
        ("open both (s)", f"{opened:.1f}", "the loader's first pass"),
        ("contamination (s)", f"{took:.1f}", f"{len(train) / took:,.0f} training docs/s"),
        ("peak RSS (MiB)", f"{rss_mb():,.0f}", f"{rss_mb() - base:,.0f} above imports"),
        ("merged hits (MiB)", f"{report.hit_bytes / 2**20:.1f}", f"limit {report.limit} docs"),
        ("boilerplate n-grams", f"{report.frequent_ngrams:,}", "ignored"),
        ("planted found", f"{len(found & planted)} / {len(planted)}", ""),
        ("others sharing a planted paragraph", f"{len(found & sharing)} / {len(sharing)}", ""),
        ("other documents found", f"{len(found - planted - sharing)}", "natural templates"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
