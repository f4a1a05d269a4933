"""The leakage engine (`diag.leakage`): recall, false alarms, time and memory.

    .venv/bin/python bench/bench_leakage.py [--parts a,b,c,d] [--rows 1000000] [--images 100000]
        [--big 1000000] [--small 100000]

- (a) digits: scikit-learn's 1,797 real 8x8 digits split by stand-in writer groups into
  train/val/test, with copies of train digits planted into val and test (exact, shifted
  1-2 px with zero fill, upsampled, brightness/contrast, 2% noise, JPEG at 32x32). diag vs
  cleanlab `Datalab` `near_duplicate` on the merged splits (pairs crossing splits kept;
  every image resized to 8x8 so cleanlab gets one feature vector each). cleanlab is not a
  diag dependency; run this script with a Python that has it, e.g.
      python3.11 -m venv /tmp/cleanlabvenv
      /tmp/cleanlabvenv/bin/pip install torch==2.13.0   # first, or a CUDA build is pulled
      /tmp/cleanlabvenv/bin/pip install "cleanlab[datalab]" faiss-cpu pillow scikit-learn
      /tmp/cleanlabvenv/bin/pip install -e . --no-deps
      /tmp/cleanlabvenv/bin/python bench/bench_leakage.py
- (b) exact overlap: a table split of `--rows` x 256 float32 values against one of a tenth
  of that, 1% of whose rows (at most 1,170) are planted copies. Rows are generated chunk
  by chunk, so the memory is the engine's.
- (c) near duplicates: `--images` 32x32 structured images (smooth random fields with
  texture) in two splits (90% / 10%); 500 copies of the big split planted into the small
  one (shift 1-2 px, JPEG, 2% noise, brightness/contrast).
- (d) the whole check on files: `--big` and `--small` 32x32 uint8 images of the same kind
  as (c), written once as `.npy` files under /tmp/diag-bench-images (a folder per set of
  parameters, so reruns skip the generation), with 1,200 planted copies in the small split
  (200 each of: exact, shift 1 px, shift 2 px, JPEG, 2% noise, x*0.8+20). Timed:
  `diag.api.check(CheckOptions(splits=..., select=["data"]))`, as `diag check --split
  train=BIG --split test=SMALL --select data` runs it, with the seconds per stage.

Each part runs in a fresh interpreter; peak RSS is that process's VmHWM (imports
included) and `above imports` subtracts the RSS measured once the imports are done.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diag import leakage as lk
from diag.loaders.splits.model import IMAGE, TABLE, Split, TableChunk


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ListSource:
    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def chunks(self, size):
        for s in range(0, len(self.items), size):
            yield s, self.items[s : s + size]

    def take(self, indices):
        return [self.items[i] for i in indices]


class GeneratedSource:
    """Samples made chunk by chunk from a function of their indices (bounded memory)."""

    def __init__(self, n: int, make, chunk: int = 8192):
        self.n, self.make, self.chunk = n, make, chunk

    def __len__(self) -> int:
        return self.n

    def chunks(self, size):
        for s in range(0, self.n, self.chunk):
            yield s, self.make(np.arange(s, min(self.n, s + self.chunk)))

    def take(self, indices):
        return [self.make(np.array([i]))[0] for i in indices]


# ----------------------------------------------------------------------- (a) digits


def shift(x, dy, dx):
    out = np.zeros_like(x)
    h, w = x.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def jpeg(x, top, size=None):
    from PIL import Image

    img = Image.fromarray(
        np.rint(np.clip(np.asarray(x, float), 0, top) * 255 / top).astype(np.uint8)
    )
    if size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def digit_edits():
    from PIL import Image

    def up(x, n):
        return np.asarray(Image.fromarray(x.astype(np.float32), "F").resize((n, n), Image.BILINEAR))

    return {
        "exact": lambda x, r: x.copy(),
        "shift 1px": lambda x, r: shift(x, *[(1, 0), (0, 1), (-1, 0), (0, -1)][r.integers(4)]),
        "shift 2px": lambda x, r: shift(x, *[(2, 0), (0, 2), (-2, 1), (1, -2)][r.integers(4)]),
        "upsample 16x16": lambda x, r: up(x, 16),
        "x*0.8+1": lambda x, r: x * 0.8 + 1,
        "noise 2%": lambda x, r: x + r.normal(0, 0.32, x.shape),
        "JPEG at 32x32": lambda x, r: jpeg(x, 16, 32),
    }


def digits_case(per_edit: int = 10):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GroupShuffleSplit

    images = load_digits().images
    gss = GroupShuffleSplit(n_splits=1, test_size=0.4, random_state=0)
    train, rest = next(gss.split(images, groups=np.arange(len(images)) // 10))
    rng = np.random.default_rng(0)
    edits = digit_edits()
    sources = rng.choice(len(train), 2 * per_edit * len(edits), replace=False)
    splits = {"train": [images[i] for i in train]}
    truth = []  # (split, index in split, source index in train, edit)
    for s, part in enumerate((rest[: len(rest) // 2], rest[len(rest) // 2 :])):
        name = ("val", "test")[s]
        items = [images[i] for i in part]
        for e, (edit, f) in enumerate(edits.items()):
            for k in range(per_edit):
                src = int(sources[(s * len(edits) + e) * per_edit + k])
                items.append(f(images[train[src]], rng))
                truth.append((name, len(items) - 1, src, edit))
        splits[name] = items
    return splits, truth


def run_diag_digits(splits):
    t = time.perf_counter()
    digests = {
        n: lk.digest_split(Split(n, Path(n), IMAGE, ListSource(v))) for n, v in splits.items()
    }
    found = {}
    for b in ("val", "test"):
        res = lk.compare_splits(digests["train"], digests[b])
        found[b] = {(p.i, p.j) for p in res.pairs()}
    both = lk.compare_splits(digests["val"], digests["test"]).pairs()
    return found, len(both), time.perf_counter() - t, res


def run_cleanlab_digits(splits):
    from cleanlab import Datalab
    from PIL import Image

    def as8(x):
        x = np.asarray(x, np.float32)
        if x.shape != (8, 8):
            x = np.asarray(Image.fromarray(x, "F").resize((8, 8), Image.BOX))
            x = x * (16 / 255) if x.max() > 17 else x
        return x.ravel()

    names = [n for n in ("train", "val", "test") for _ in splits[n]]
    index = [i for n in ("train", "val", "test") for i in range(len(splits[n]))]
    feats = np.stack([as8(x) for n in ("train", "val", "test") for x in splits[n]])
    t = time.perf_counter()
    lab = Datalab(data={"y": np.zeros(len(feats), int)}, label_name="y", verbosity=0)
    lab.find_issues(features=feats, issue_types={"near_duplicate": {}})
    sets = lab.get_issues("near_duplicate")["near_duplicate_sets"]
    elapsed = time.perf_counter() - t
    found = {"val": set(), "test": set()}
    cross_other = 0
    for u, members in enumerate(sets):
        for v in members:
            pair = {names[u]: index[u], names[v]: index[v]}
            if names[u] == "train" and names[v] in found:
                found[names[v]].add((index[u], index[v]))
            elif {names[u], names[v]} == {"val", "test"} and u < v:
                cross_other += 1
            del pair
    return found, cross_other, elapsed


def part_a() -> dict:
    splits, truth = digits_case()
    out = {}
    runs = {"diag": run_diag_digits}
    try:
        import cleanlab  # noqa: F401

        runs["cleanlab near_duplicate"] = run_cleanlab_digits
    except ImportError:
        out["cleanlab"] = "not installed: see the module docstring for a scratch venv"
    for tool, run in runs.items():
        found, val_test, elapsed, *_ = run(splits)
        want = {(s, i, src) for s, i, src, _ in truth}
        per_edit = {}
        for s, i, src, edit in truth:
            hit = (src, i) in found[s]
            per_edit.setdefault(edit, [0, 0])
            per_edit[edit][0] += hit
            per_edit[edit][1] += 1
        false = sum(1 for s in found for (src, i) in found[s] if (s, i, src) not in want)
        out[tool] = {"recall": per_edit, "false": false + val_test, "time": elapsed}
    return out


# -------------------------------------------------------------- (b) exact, 1M rows


def part_b(rows: int) -> dict:
    width, small = 256, rows // 10
    planted = min(small // 100, 8192 // 7)

    def big(idx):
        g = np.random.default_rng(int(idx[0]))
        return TableChunk(g.standard_normal((len(idx), width), dtype=np.float32).astype(np.float64))

    first = big(np.arange(8192)).numeric  # planted copies come from the first chunk

    def other(idx):
        g = np.random.default_rng(10**9 + int(idx[0]))
        x = g.standard_normal((len(idx), width), dtype=np.float32).astype(np.float64)
        head = idx[idx < planted]  # rows 0..planted-1 copy big-split rows 0, 7, 14, ...
        x[: len(head)] = first[head * 7]
        return TableChunk(x)

    base = rss_mb("VmRSS")
    t = time.perf_counter()
    a = lk.digest_split(Split("train", Path("a"), TABLE, GeneratedSource(rows, big)), near=False)
    b = lk.digest_split(Split("test", Path("b"), TABLE, GeneratedSource(small, other)), near=False)
    hashed = time.perf_counter() - t
    t = time.perf_counter()
    ex = lk.exact_pairs(a, b)
    matched = time.perf_counter() - t
    ok = ex.pairs.tolist() == [[i * 7, i] for i in range(planted)]
    # The generator's own cost, to separate it from the hashing.
    t = time.perf_counter()
    for _, _chunk in GeneratedSource(rows, big).chunks(8192):
        pass
    gen = time.perf_counter() - t
    return {
        "rows": rows + small, "hash_s": hashed, "gen_s": gen, "match_s": matched,
        "pairs": ex.n_pairs, "planted": planted, "correct": ok,
        "peak_mb": rss_mb(), "base_mb": base,
    }  # fmt: skip


# ------------------------------------------------------------ (c) near, 100k images


def fields(idx: np.ndarray) -> list[np.ndarray]:
    """Smooth random fields with texture, 32x32 uint8, a deterministic function of idx."""
    out = []
    for i in idx:
        g = np.random.default_rng(int(i) + 7)
        coarse = g.standard_normal((6, 6))
        fine = g.standard_normal((16, 16)) * 0.35
        up6 = lk._resample_matrix(6, 32)
        up16 = lk._resample_matrix(16, 32)
        x = up6 @ coarse @ up6.T + up16 @ fine @ up16.T
        x = (x - x.min()) / (np.ptp(x) + 1e-9) * 255
        out.append(np.rint(x).astype(np.uint8))
    return out


def field_edits():
    return [
        ("shift 1px", lambda x, g: shift(x, 1, 0)),
        ("shift 2px", lambda x, g: shift(x, 0, -2)),
        ("JPEG", lambda x, g: jpeg(x, 255)),
        ("noise 2%", lambda x, g: np.clip(x + g.normal(0, 5.1, x.shape), 0, 255)),
        ("x*0.8+20", lambda x, g: x * 0.8 + 20),
    ]


def part_c(n_images: int) -> dict:
    n_small = n_images // 10
    n_big = n_images - n_small
    planted = 500
    edits = field_edits()

    def small(idx):
        imgs = fields(idx + n_big)
        for k, i in enumerate(idx):
            if i < planted:
                src = int(i) * (n_big // planted)
                imgs[k] = edits[i % len(edits)][1](
                    fields(np.array([src]))[0], np.random.default_rng(int(i))
                )
        return imgs

    base = rss_mb("VmRSS")
    t = time.perf_counter()
    a = lk.digest_split(Split("train", Path("a"), IMAGE, GeneratedSource(n_big, fields)))
    b = lk.digest_split(Split("test", Path("b"), IMAGE, GeneratedSource(n_small, small)))
    digested = time.perf_counter() - t
    t = time.perf_counter()
    res = lk.compare_splits(a, b)
    compared = time.perf_counter() - t
    got = {(p.i, p.j) for p in res.pairs()}
    want = {(i * (n_big // planted), i) for i in range(planted)}
    recall = {}
    for i in range(planted):
        name = edits[i % len(edits)][0]
        recall.setdefault(name, [0, 0])
        recall[name][0] += (i * (n_big // planted), i) in got
        recall[name][1] += 1
    return {
        "images": n_images, "digest_s": digested, "compare_s": compared,
        "recall": recall, "false": len(got - want), "scale": res.scale,
        "threshold": res.threshold, "peak_mb": rss_mb(), "base_mb": base,
    }  # fmt: skip


# ----------------------------------------------- (d) the whole check on .npy files

IMAGE_CACHE = Path("/tmp/diag-bench-images")
D_EDITS = [("exact", lambda x, g: x.copy()), *field_edits()]
D_PER_EDIT = 200


def field_batch(g: np.random.Generator, n: int) -> np.ndarray:
    """(n, 32, 32) uint8 images like `fields`, made with one matrix product per batch."""
    up6, up16 = lk._resample_matrix(6, 32), lk._resample_matrix(16, 32)
    x = up6 @ g.standard_normal((n, 6, 6)) @ up6.T
    x += up16 @ (g.standard_normal((n, 16, 16)) * 0.35) @ up16.T
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    return np.rint((x - lo) / (span + 1e-9) * 255).astype(np.uint8)


def _write_fields(path: Path, n: int, seed: int, batch: int = 65536) -> np.ndarray:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 32, 32))
    for s in range(0, n, batch):
        out[s : s + batch] = field_batch(np.random.default_rng([seed, s]), min(batch, n - s))
    out.flush()
    return out


def image_files(n_big: int, n_small: int) -> tuple[Path, Path, np.ndarray, list[str]]:
    """train.npy, test.npy and the planted copies as (source in train, index in test),
    generated once per parameter set; a folder is only used once its `truth.npy` exists."""
    folder = IMAGE_CACHE / f"fields32-big{n_big}-small{n_small}-per{D_PER_EDIT}-v1"
    names = [e for e, _ in D_EDITS]
    truth_path = folder / "truth.npy"
    if not truth_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        big = _write_fields(folder / "train.npy", n_big, 1)
        small = _write_fields(folder / "test.npy", n_small, 2)
        planted = D_PER_EDIT * len(D_EDITS)
        g = np.random.default_rng(3)
        sources = np.sort(g.choice(n_big, planted, replace=False))
        places = np.sort(g.choice(n_small, planted, replace=False))
        for k, (src, j) in enumerate(zip(sources, places, strict=True)):
            edited = D_EDITS[k % len(D_EDITS)][1](np.array(big[src]), g)
            small[j] = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
        small.flush()
        del big, small
        np.save(folder / "truth.tmp.npy", np.stack([sources, places], axis=1))
        (folder / "truth.tmp.npy").rename(truth_path)
    return folder / "train.npy", folder / "test.npy", np.load(truth_path), names


class StageClock:
    """Seconds per stage, each function's own time (a stage inside another is not counted
    twice): wraps module-level functions and methods by name, so `check` runs unchanged."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._stack: list[list[float]] = []

    def wrap(self, owner: object, attr: str, stage: str) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:
            return

        def timed(*args, **kwargs):
            frame = [time.perf_counter(), 0.0]  # start, time spent in nested stages
            self._stack.append(frame)
            try:
                return inner(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[0]
                self.spent[stage] = self.spent.get(stage, 0.0) + elapsed - frame[1]
                if self._stack:
                    self._stack[-1][1] += elapsed

        setattr(owner, attr, timed)


class RssSampler:
    """Largest anonymous RSS (the engine's own memory) and file-backed RSS (pages of the
    memory-mapped .npy files, which the kernel can drop) seen every 20 ms; VmHWM counts
    both."""

    def __init__(self) -> None:
        import threading

        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for field in self.peak:
                self.peak[field] = max(self.peak[field], rss_mb(field))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


D_STAGES = [
    (lk, "digest_split", "digest"),
    (lk, "exact_pairs", "exact join"),
    (lk, "exact_groups", "exact join"),
    (lk, "_build_index", "index build"),
    (lk, "_build_index_from", "index build"),
    (lk, "_space_scale", "scale (within-split sample)"),
    (lk, "_space_pairs", "near search"),
    (lk._ImageSpace, "distance", "verification"),
]


def part_d(n_big: int, n_small: int) -> dict:
    t = time.perf_counter()
    big, small, truth, names = image_files(n_big, n_small)
    prepared = time.perf_counter() - t
    import faiss  # noqa: F401  (imports before the baseline RSS, as in the other parts)

    from diag.api import CheckOptions, check
    from diag.registry import load_rules

    load_rules()
    clock = StageClock()
    for owner, attr, stage in D_STAGES:
        clock.wrap(owner, attr, stage)
    base = rss_mb("VmRSS")
    t = time.perf_counter()
    with RssSampler() as rss:
        result, run = check(
            CheckOptions(
                splits={"train": str(big), "test": str(small)}, select=["data"], quiet=True
            )
        )
    total = time.perf_counter() - t
    res = run.leakage.comparisons[("train", "test")]
    got = {(p.i, p.j) for p in res.pairs()}
    want = {(int(i), int(j)) for i, j in truth}
    recall: dict[str, list[int]] = {}
    for k, (i, j) in enumerate(truth.tolist()):
        hit = recall.setdefault(names[k % len(names)], [0, 0])
        hit[0] += (i, j) in got
        hit[1] += 1
    return {
        "big": n_big, "small": n_small, "prepare_s": prepared, "total_s": total,
        "stages": clock.spent, "recall": recall, "false": len(got - want),
        "findings": sorted(f.rule for f in result.findings), "scale": res.scale,
        "threshold": res.threshold, "peak_mb": rss_mb(), "base_mb": base,
        "anon_mb": rss.peak["RssAnon"], "file_mb": rss.peak["RssFile"],
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }  # fmt: skip


# ------------------------------------------------------------------------ printing


def print_a(r: dict) -> None:
    print("\n(a) digits with planted copies (10 per edit per split, 140 in all)")
    tools = [t for t in r if isinstance(r[t], dict)]
    edits = list(r[tools[0]]["recall"])
    print(f"| edit | {' | '.join(tools)} |\n|---|{'---|' * len(tools)}")
    for e in edits:
        cells = [f"{r[t]['recall'][e][0]}/{r[t]['recall'][e][1]}" for t in tools]
        print(f"| {e} | {' | '.join(cells)} |")
    print(f"| false alarms | {' | '.join(str(r[t]['false']) for t in tools)} |")
    times = " | ".join(f"{r[t]['time']:.2f}" for t in tools)
    print(f"| time s | {times} |")
    if "cleanlab" in r:
        print(f"cleanlab: {r['cleanlab']}")


def print_b(r: dict) -> None:
    print(f"\n(b) exact overlap, {r['rows']:,} x 256 rows in two splits")
    print(
        "| hash (incl. generating rows) s | generating alone s | match s | pairs | correct "
        "| peak RSS MB (above imports) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {r['hash_s']:.2f} | {r['gen_s']:.2f} | {r['match_s']:.3f} | {r['pairs']} of "
        f"{r['planted']} | {r['correct']} | {r['peak_mb']:.0f} "
        f"({r['peak_mb'] - r['base_mb']:+.0f}) |"
    )


def print_c(r: dict) -> None:
    print(f"\n(c) near duplicates, {r['images']:,} 32x32 images, 500 planted")
    print(
        "| digest s | compare s | false alarms | peak RSS MB (above imports) |\n|---|---|---|---|"
    )
    print(
        f"| {r['digest_s']:.1f} | {r['compare_s']:.1f} | {r['false']} | "
        f"{r['peak_mb']:.0f} ({r['peak_mb'] - r['base_mb']:+.0f}) |"
    )
    print("| edit | recall |\n|---|---|")
    for e, (hit, n) in r["recall"].items():
        print(f"| {e} | {hit}/{n} |")


def print_d(r: dict) -> None:
    print(f"\n(d) diag check on .npy files: {r['big']:,} vs {r['small']:,} 32x32 images")
    print(f"(files ready in {r['prepare_s']:.1f} s; load average after: {' '.join(r['load'])})")
    print("| stage | s |\n|---|---|")
    for stage, s in r["stages"].items():
        print(f"| {stage} | {s:.1f} |")
    other = r["total_s"] - sum(r["stages"].values())
    print(f"| other (opening files, rules) | {other:.1f} |\n| **total** | **{r['total_s']:.1f}** |")
    print(
        f"peak RSS {r['peak_mb']:.0f} MB ({r['peak_mb'] - r['base_mb']:+.0f} above imports; "
        f"sampled peaks: anonymous {r['anon_mb']:.0f} MB, mapped file pages "
        f"{r['file_mb']:.0f} MB); "
        f"false alarms {r['false']}; findings {', '.join(r['findings']) or 'none'}"
    )
    print("| edit | recall |\n|---|---|")
    for e, (hit, n) in r["recall"].items():
        print(f"| {e} | {hit}/{n} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = {
            "a": part_a, "b": lambda: part_b(args.rows), "c": lambda: part_c(args.images),
            "d": lambda: part_d(args.big, args.small),
        }  # fmt: skip
        print(json.dumps(run[args.child]()))
        return
    for part in args.parts.split(","):
        cmd = [sys.executable, __file__, "--child", part]
        cmd += ["--rows", str(args.rows), "--images", str(args.images)]
        cmd += ["--big", str(args.big), "--small", str(args.small)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            continue
        printer = {"a": print_a, "b": print_b, "c": print_c, "d": print_d}[part]
        printer(json.loads(out.stdout.splitlines()[-1]))


if __name__ == "__main__":
    main()
