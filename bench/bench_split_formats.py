"""Load time and peak memory of the streamed split formats: a 100,000-record JSONL split
(chat records from the standard library's docstrings) and a 100,000-image WebDataset split
(scikit-learn's digits as PNGs, 100 shards written by webdataset.TarWriter).

    .venv/bin/python bench/bench_split_formats.py [--out bench/out/split_formats]

Each measurement is a fresh interpreter: imports first, then `open_split` (the indexing
pass), then one full `chunks(256)` pass (what the leakage engine reads) and a `take` of 10
samples. Printed: seconds of each step, RSS once imports are done, and the peak RSS (VmHWM)
of the whole process. Numbers inflate when the 2 cores are busy with other work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = 100_000


def write_jsonl(path: Path) -> None:
    import importlib
    import inspect

    docs = []
    for name in ("json", "textwrap", "pathlib", "argparse", "collections", "tarfile"):
        for obj in vars(importlib.import_module(name)).values():
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc and len(doc) > 200:
                docs.append(doc)
    with path.open("w") as fh:
        for i in range(N):
            messages = [
                {"role": "user", "content": f"Explain item {i}."},
                {"role": "assistant", "content": docs[i % len(docs)]},
            ]
            fh.write(json.dumps({"id": i, "messages": messages, "label": i % 10}) + "\n")


def write_shards(folder: Path) -> None:
    import numpy as np
    import webdataset as wds
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for image in (digits.images * 15).astype(np.uint8):
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        pngs.append(out.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = 1000
    for k in range(N // per_shard):
        with wds.TarWriter(str(folder / f"train-{k:06d}.tar")) as sink:
            for i in range(k * per_shard, (k + 1) * per_shard):
                j = i % len(pngs)
                sink.write(
                    {"__key__": f"sample{i:06d}", "png": pngs[j], "cls": int(digits.target[j])}
                )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def measure(path: str) -> dict:
    """In the child: imports, then the three steps, timed."""
    from diag.loaders.splits.loaders import open_split

    imports = _status_kib("VmRSS")
    started = time.perf_counter()
    split = open_split("train", Path(path))
    opened = time.perf_counter()
    count = sum(len(chunk) for _, chunk in split.samples.chunks(256))  # type: ignore[arg-type]
    read = time.perf_counter()
    split.samples.take(list(range(0, len(split), len(split) // 10))[:10])
    took = time.perf_counter()
    return {
        "samples": count,
        "open_s": opened - started,
        "chunks_s": read - opened,
        "take_s": took - read,
        "imports_mib": imports / 1024,
        "peak_mib": _status_kib("VmHWM") / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "split_formats")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    inputs = {"JSONL, 100,000 chat records": out / "train.jsonl",
              "WebDataset, 100,000 PNGs in 100 shards": out / "shards"}  # fmt: skip
    started = time.monotonic()
    if not inputs["JSONL, 100,000 chat records"].exists():
        write_jsonl(inputs["JSONL, 100,000 chat records"])
    if not (out / "shards" / f"train-{N // 1000 - 1:06d}.tar").exists():
        write_shards(out / "shards")
    print(f"inputs ready in {time.monotonic() - started:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, path in inputs.items():
        size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(proc.stdout.splitlines()[-1])
        print(
            f"{name} ({size / 1e6:.0f} MB): open {r['open_s']:.1f} s, chunks {r['chunks_s']:.1f} s,"
            f" take(10) {r['take_s']:.2f} s; RSS after imports {r['imports_mib']:.0f} MiB, "
            f"peak {r['peak_mib']:.0f} MiB ({r['samples']} samples)"
        )


if __name__ == "__main__":
    main()
