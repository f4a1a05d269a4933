"""What diag says about each model of the zoo (tests/zoo/manifest.json), one block per model.

    python bench/zoo_findings.py [-o findings.txt]

Fetches the zoo into the cache first (see tests/zoo/fetch.py). A model diag refuses is
listed with the reason; that is evidence too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from zoo.fetch import fetch, load_manifest

from diag.api import CheckOptions, check
from diag.errors import DiagError


def findings_of(path: Path) -> tuple[list[str], float]:
    start = time.perf_counter()
    try:
        result, _ = check(CheckOptions(checkpoint=str(path)))
    except DiagError as exc:
        return [f"  REFUSED: {exc}"], time.perf_counter() - start
    lines = [
        f"  {f.severity.name.lower():7s} {f.rule:20s} {f.location.object}: {f.message}"
        for f in sorted(result.findings, key=lambda f: (-f.severity, f.rule, f.location.object))
    ]
    lines += [f"  RULE CRASHED {e.rule}: {e.message}" for e in result.errors]
    return lines, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write here as well as to stdout")
    args = parser.parse_args(argv)
    models = load_manifest()
    paths = fetch(models)
    out: list[str] = []
    for m in models:
        lines, seconds = findings_of(paths[m.id])
        tags = ", ".join(m.covers)
        head = f"== {m.id} ({m.package}=={m.version}, {m.format}: {tags}) {seconds:.1f} s"
        block = [head, *(lines or ["  (no findings)"])]
        print("\n".join(block), flush=True)
        out += block
    if args.output:
        args.output.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
