"""Run every atheris harness for a set time and print executions and findings (`make fuzz`).

Each harness gets its own corpus folder (seeded by seeds.py, grown by libFuzzer, kept
between runs, not committed) and writes crashing inputs to tests/fuzz/findings/. A crash
stops that harness; copy the input to tests/fuzz/regressions/<harness>/ once fixed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import seeds as seed_builders

HERE = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def seed_corpus(name: str, corpus_root: Path) -> None:
    corpus = corpus_root / name
    if not corpus.is_dir() or not any(corpus.iterdir()):
        corpus.mkdir(parents=True, exist_ok=True)
        for seed, data in seed_builders.seeds(name).items():
            (corpus / f"seed-{seed}").write_bytes(data)


def fuzz_one(name: str, seconds: int, corpus_root: Path, findings: Path, logs: Path) -> dict:
    corpus = corpus_root / name
    log = logs / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / f"fuzz_{name}.py"),
                str(corpus),
                f"-max_total_time={seconds}",
                "-rss_limit_mb=2048",
                "-timeout=20",
                "-max_len=16384",
                f"-artifact_prefix={findings}/{name}-",
                "-print_final_stats=1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=HERE,
        )
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    done = re.findall(r"Done (\d+) runs", text)
    crash = re.findall(r"Test unit written to (\S+)", text)
    return {
        "name": name,
        "seconds": round(time.monotonic() - started),
        "runs": int(runs[-1]) if runs else int(done[-1]) if done else None,
        "corpus": sum(1 for _ in corpus.iterdir()),
        "exit": proc.returncode,
        "finding": crash[-1] if crash else "",
        "log": str(log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", default=HARNESSES, help=", ".join(HARNESSES))
    parser.add_argument("--seconds", type=int, default=600, help="per harness")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run side by side")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    unknown = set(args.targets) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness {', '.join(sorted(unknown))}")
    findings, logs = HERE / "findings", HERE / "logs"
    findings.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    for name in args.targets:  # here, not in the pool: two threads importing torch clash
        seed_corpus(name, args.corpus)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(
            pool.map(lambda n: fuzz_one(n, args.seconds, args.corpus, findings, logs), args.targets)
        )
    print(f"{'harness':<15} {'seconds':>8} {'executions':>11} {'corpus':>7}  finding")
    for r in results:
        runs = "?" if r["runs"] is None else f"{r['runs']:,}"
        print(
            f"{r['name']:<15} {r['seconds']:>8} {runs:>11} {r['corpus']:>7}  "
            f"{r['finding'] or ('none' if r['exit'] == 0 else 'exit ' + str(r['exit']))}"
        )
    return 1 if any(r["exit"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
