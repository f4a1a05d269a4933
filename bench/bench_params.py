"""Benchmark diag's params check on a generated ~2 GB float32 checkpoint, in both formats.

Usage: .venv/bin/python bench/bench_params.py [--size-gb 2] [--keep] [--dir PATH]
          [--formats safetensors,torch] [--warm-repeats 2] [--cold-repeats 1]

Measures, per format (safetensors via save_file, torch zip via torch.save):
  - a plain sequential read of the same bytes (16 MiB readinto), cold and warm page cache;
  - `diag check` of the checkpoint alone and with --init, cold and warm, each in a fresh
    interpreter (bench/_run_one.py) so its peak RSS is its own;
  - where the warm time goes (table.read vs compute_stats vs compute_update);
  - the peak RSS of loading the whole file with torch.load / safetensors load_file, and of an
    interpreter that only imports torch and diag (the baseline).
Then prints the targets with PASS/MISS. Units: GB = 1e9 bytes, MB = 1e6 bytes, s = seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import mmap
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
MB = 1e6
CHUNK = 16 * 1024 * 1024
RUNNER = Path(__file__).with_name("_run_one.py")
HIDDEN, FFN, VOCAB = 4096, 11008, 8192
TARGET_COLD_RATIO = 2.0
TARGET_WARM_GBPS = 1.0
TARGET_RSS_SLACK_MB = 300.0
SUFFIX = {"safetensors": ".safetensors", "torch": ".pt"}
FULL_LOAD_MODES = {
    "safetensors": ("safetensors-load", "safetensors-load-touch"),
    "torch": ("torch-load",),
}
FULL_LOAD_LABEL = {
    "safetensors-load": ("load_file", "mmap-backed tensors: pages count only once touched"),
    "safetensors-load-touch": ("load_file + sum each", "every page touched (resident)"),
    "torch-load": ("torch.load weights_only", "whole state dict copied into memory"),
}


# ------------------------------------------------------------------ the model


def layout(target_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a conv stem + transformer blocks, up to `target_bytes` of float32."""
    out: list[tuple[str, tuple[int, ...]]] = []
    total = 0
    for name, shape in _tensor_stream():
        nbytes = 4 * math.prod(shape)
        if out and total + nbytes > target_bytes:
            break
        out.append((name, shape))
        total += nbytes
    return out


def _tensor_stream() -> Iterator[tuple[str, tuple[int, ...]]]:
    stem = [(64, 3, 7, 7), (128, 64, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3)]
    for i, shape in enumerate(stem):
        yield f"stem.conv{i}.weight", shape
        for buf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            yield f"stem.bn{i}.{buf}", () if buf == "num_batches_tracked" else (shape[0],)
    yield "embed_tokens.weight", (VOCAB, HIDDEN)
    layer = 0
    while True:
        yield from _block(f"layers.{layer}")
        layer += 1


def _block(prefix: str) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield f"{prefix}.input_layernorm.weight", (HIDDEN,)
    for proj in ("q", "k", "v", "o"):
        yield f"{prefix}.self_attn.{proj}_proj.weight", (HIDDEN, HIDDEN)
        if proj != "o":
            yield f"{prefix}.self_attn.{proj}_proj.bias", (HIDDEN,)
    yield f"{prefix}.post_attention_layernorm.weight", (HIDDEN,)
    yield f"{prefix}.mlp.gate_proj.weight", (FFN, HIDDEN)
    yield f"{prefix}.mlp.up_proj.weight", (FFN, HIDDEN)
    yield f"{prefix}.mlp.down_proj.weight", (HIDDEN, FFN)


def make_tensor(name: str, shape: tuple[int, ...], trained: bool, gen: Any) -> Any:
    """Fan-in scaled normal weights; ones/zeros-ish norms, biases and BN buffers."""
    import torch

    base = name.rsplit(".", 1)[-1]
    noise = 0.02 if trained else 0.0
    if base == "num_batches_tracked":
        return torch.tensor(1000 if trained else 0, dtype=torch.int64)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if base == "running_var" or "norm" in name or base == "weight":
        return 1.0 + noise * torch.randn(shape, generator=gen)
    return noise * torch.randn(shape, generator=gen)


def write_checkpoints(specs: list[tuple[str, tuple[int, ...]]], paths: dict[str, Path]) -> None:
    """One state dict (trained or init by the file name), saved to every path in `paths`."""
    import torch
    from safetensors.torch import save_file

    for role in sorted({p.stem for p in paths.values()}):
        gen = torch.Generator().manual_seed(1 if role == "model" else 2)
        state = {n: make_tensor(n, s, role == "model", gen) for n, s in specs}
        for key, path in paths.items():
            if path.stem != role:
                continue
            log(f"writing {path} ...")
            if key.startswith("safetensors"):
                save_file(state, str(path))
            else:
                torch.save(state, path)
        del state
        gc.collect()


# ------------------------------------------------------------------ page cache


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache (mincore), or None if unknown."""
    resident = pages = 0
    for path in paths:
        got = _resident_pages(path)
        if got is None:
            return None
        resident += got[0]
        pages += got[1]
    return resident / pages if pages else 1.0


def _resident_pages(path: Path) -> tuple[int, int] | None:
    size = path.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    if size == 0:
        return 0, 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with path.open("rb") as fh:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fh.fileno(), 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    try:
        vec = ctypes.create_string_buffer(pages)
        if libc.mincore(addr, size, vec) != 0:
            return None
        return pages - vec.raw.count(0), pages
    finally:
        libc.munmap(addr, size)


def make_cold(paths: list[Path]) -> str:
    """Evict the files from the page cache; returns how (and how well) it was done."""
    os.sync()
    method = "drop_caches"
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        method = f"fadvise (drop_caches: not permitted, {exc.strerror})"
    left = resident_fraction(paths)
    if method != "drop_caches" or (left is not None and left > 0.01):
        if method == "drop_caches":
            method = "drop_caches+fadvise"
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        left = resident_fraction(paths)
    shown = "unknown" if left is None else f"{100 * left:.1f}%"
    return f"{method}, resident after: {shown}"


def make_warm(paths: list[Path]) -> None:
    sequential_read(paths)


# ------------------------------------------------------------------ measurements


@dataclass
class Row:
    fmt: str
    what: str
    cache: str
    seconds: float
    nbytes: int
    rss_kib: int | None = None  # raw peak (VmHWM), imports included
    work_kib: int | None = None  # peak during the measured work (VmHWM reset after imports)
    note: str = ""

    @property
    def gbps(self) -> float:
        return self.nbytes / GB / self.seconds if self.seconds > 0 else math.inf


@dataclass
class Report:
    size_gb: float
    workdir: Path
    files: dict[str, int] = field(default_factory=dict)
    n_tensors: int = 0
    largest: tuple[str, int] = ("", 0)
    baseline_kib: int = 0
    imports_kib: int = 0
    rows: list[Row] = field(default_factory=list)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    cold_methods: set[str] = field(default_factory=set)
    others_cpu: float | None = None  # share of all CPUs used by other processes meanwhile

    def find(self, fmt: str, what: str, cache: str) -> Row | None:
        for row in self.rows:
            if (row.fmt, row.what, row.cache) == (fmt, what, cache):
                return row
        return None


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process and its children)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # not idle/iowait
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return time.perf_counter(), busy, own


def others_share(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    wall, busy, own = (b - a for a, b in zip(start, end, strict=True))
    return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def sequential_read(paths: list[Path]) -> float:
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - start


def run_one(mode: str, path: Path | None = None, init: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(RUNNER), mode]
    cmd += [str(path)] if path else []
    cmd += ["--init", str(init)] if init else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Repeats:
    cold: int
    warm: int


def measure_seq(report: Report, fmt: str, what: str, paths: list[Path], rep: Repeats) -> None:
    nbytes = sum(p.stat().st_size for p in paths)
    colds, method = [], ""
    for _ in range(rep.cold):
        method = make_cold(paths)
        report.cold_methods.add(method.split(",")[0])
        colds.append(sequential_read(paths))
    note = f"best of {rep.cold}; {method}"
    report.rows.append(Row(fmt, what, "cold", min(colds), nbytes, note=note))
    best = min(sequential_read(paths) for _ in range(rep.warm))
    report.rows.append(Row(fmt, what, "warm", best, nbytes, note=f"best of {rep.warm}"))


def measure_diag(report: Report, fmt: str, ckpt: Path, init: Path | None, rep: Repeats) -> None:
    paths = [ckpt] + ([init] if init else [])
    what = "diag check --init" if init else "diag check"
    nbytes = sum(p.stat().st_size for p in paths)
    log(f"{fmt}: {what} (cold) ...")
    colds, method = [], ""
    for _ in range(rep.cold):
        method = make_cold(paths)
        report.cold_methods.add(method.split(",")[0])
        colds.append(run_one("diag", ckpt, init))
    report.rows.append(_diag_row(fmt, what, "cold", nbytes, colds, method))
    make_warm(paths)
    warms = [run_one("diag", ckpt, init) for _ in range(rep.warm)]
    report.rows.append(_diag_row(fmt, what, "warm", nbytes, warms, ""))


def _diag_row(fmt: str, what: str, cache: str, nbytes: int, runs: list[Any], how: str) -> Row:
    """Best time of the runs, highest RSS of the runs."""
    best = min(runs, key=lambda r: r["seconds"])
    hwm = max(r["hwm_kib"] for r in runs)
    work = max(r["work_hwm_kib"] or 0 for r in runs) or None
    note = f"best of {len(runs)}; {best['findings']} findings, {best['errors']} rule errors"
    note += f"; {how}" if how else ""
    return Row(fmt, what, cache, best["seconds"], nbytes, hwm, work, note)


def _rss(got: dict[str, Any]) -> tuple[int, int | None]:
    return got["hwm_kib"], got["work_hwm_kib"]


def measure_breakdown(report: Report, fmt: str, ckpt: Path, init: Path | None) -> None:
    paths = [ckpt] + ([init] if init else [])
    make_warm(paths)
    key = f"{fmt} {'ckpt+init' if init else 'ckpt'}"
    log(f"{key}: breakdown (warm) ...")
    report.breakdown[key] = run_one("breakdown", ckpt, init)


def measure_full_load(report: Report, fmt: str, ckpt: Path) -> None:
    nbytes = ckpt.stat().st_size
    for mode in FULL_LOAD_MODES[fmt]:
        make_warm([ckpt])
        log(f"{fmt}: {mode} ...")
        got = run_one(mode, ckpt)
        label, note = FULL_LOAD_LABEL[mode]
        report.rows.append(Row(fmt, label, "warm", got["seconds"], nbytes, *_rss(got), note))


def measure_format(report: Report, fmt: str, ckpt: Path, init: Path | None, rep: Repeats) -> None:
    log(f"{fmt}: sequential reads ...")
    measure_seq(report, fmt, "sequential read", [ckpt], rep)
    if init:
        measure_seq(report, fmt, "sequential read ckpt+init", [ckpt, init], rep)
    measure_diag(report, fmt, ckpt, None, rep)
    if init:
        measure_diag(report, fmt, ckpt, init, rep)
    measure_breakdown(report, fmt, ckpt, None)
    if init:
        measure_breakdown(report, fmt, ckpt, init)
    measure_full_load(report, fmt, ckpt)


# ------------------------------------------------------------------ output


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def mb(kib: int | None) -> str:
    return "" if kib is None else f"{kib * 1024 / MB:,.0f}"


def results_table(report: Report) -> str:
    header = ["format", "measurement", "cache", "time s", "GB/s"]
    header += ["peak RSS MB", "peak-base MB", "work peak MB", "work-imports MB"]
    rows = []
    for r in report.rows:
        net = None if r.rss_kib is None else r.rss_kib - report.baseline_kib
        added = None if r.work_kib is None else r.work_kib - report.imports_kib
        row = [r.fmt, r.what, r.cache, f"{r.seconds:.2f}", f"{r.gbps:.2f}"]
        rows.append([*row, mb(r.rss_kib), mb(net), mb(r.work_kib), mb(added)])
    return fmt_table(header, rows)


def notes_table(report: Report) -> str:
    rows = [[r.fmt, r.what, r.cache, r.note] for r in report.rows if r.note]
    return fmt_table(["format", "measurement", "cache", "note"], rows)


def breakdown_table(report: Report) -> str:
    header = ["run (warm, in-process loop)", "read s", "stats s", "update s", "total s"]
    rows = []
    for key, b in report.breakdown.items():
        parts = [b["read_s"], b["stats_s"], b["update_s"]]
        rows.append([key, *(f"{x:.2f}" for x in parts), f"{sum(parts):.2f}"])
    note = (
        "(whole tensors read, then reduced: the pre-blocking path, kept to show what reading\n"
        " in cache-sized blocks with readahead buys; diag check itself streams blocks)"
    )
    return fmt_table(header, rows) + "\n" + note


def verdicts(report: Report) -> list[list[str]]:
    out: list[list[str]] = []
    limit_mb = report.largest[1] / MB + TARGET_RSS_SLACK_MB
    fmts = dict.fromkeys(r.fmt for r in report.rows)
    for fmt in fmts:
        for what, seq in (
            ("diag check", "sequential read"),
            ("diag check --init", "sequential read ckpt+init"),
        ):
            out += _verdicts_for(report, fmt, what, seq, limit_mb)
    return out


def _verdicts_for(report: Report, fmt: str, what: str, seq: str, limit: float) -> list[list[str]]:
    cold, warm = report.find(fmt, what, "cold"), report.find(fmt, what, "warm")
    seq_cold = report.find(fmt, seq, "cold")
    if not (cold and warm and seq_cold):
        return []
    ratio = cold.seconds / seq_cold.seconds
    run = f"{fmt}: {what}"
    return [
        [run, f"cold time <= {TARGET_COLD_RATIO:g}x cold seq read ({seq_cold.seconds:.2f} s)",
         f"{cold.seconds:.2f} s = {ratio:.2f}x", pass_miss(ratio <= TARGET_COLD_RATIO)],
        [run, f"warm throughput >= {TARGET_WARM_GBPS:g} GB/s", f"{warm.gbps:.2f} GB/s",
         pass_miss(warm.gbps >= TARGET_WARM_GBPS)],
        *_rss_verdicts(report, run, [cold, warm], limit),
    ]  # fmt: skip


def _rss_verdicts(report: Report, run: str, rows: list[Row], limit: float) -> list[list[str]]:
    """The target on the raw peak, and (info) on what the check adds over its imports."""
    peak = max(r.rss_kib or 0 for r in rows) * 1024 / MB
    base = report.baseline_kib * 1024 / MB
    target = f"<= largest tensor + {TARGET_RSS_SLACK_MB:g} MB ({limit:,.0f} MB)"
    out = [
        [run, f"raw peak RSS {target}", f"{peak:,.0f} MB (peak-base {peak - base:,.0f} MB)",
         pass_miss(peak <= limit)],
    ]  # fmt: skip
    works = [r.work_kib for r in rows if r.work_kib is not None]
    if works:
        added = (max(works) - report.imports_kib) * 1024 / MB
        verdict = f"{pass_miss(added <= limit)} (info)"
        out.append([run, f"work peak - RSS after imports {target}", f"{added:,.0f} MB", verdict])
    return out


def pass_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(report: Report) -> None:
    name, largest = report.largest
    print(f"\ndiag params benchmark: --size-gb {report.size_gb:g}, data in {report.workdir}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; GB = 1e9 B, MB = 1e6 B")
    for path, size in report.files.items():
        print(f"  {path}: {size / GB:.3f} GB")
    print(f"  {report.n_tensors} tensors; largest {name}: {largest / MB:,.1f} MB")
    print(
        f"  baseline: python + torch + safetensors + diag imported, peak RSS "
        f"{mb(report.baseline_kib)} MB, RSS after imports {mb(report.imports_kib)} MB"
    )
    print("  peak RSS = VmHWM of a fresh interpreter (imports included); work peak = VmHWM reset"
          " after imports, i.e. the peak while measuring")  # fmt: skip
    print(f"  cold cache via: {', '.join(sorted(report.cold_methods)) or 'n/a'}")
    if report.others_cpu is not None:
        busy = " (other processes competed: noisy)" if report.others_cpu > 0.05 else ""
        print(f"  CPU used by other processes while measuring: {100 * report.others_cpu:.1f}%"
              f" of all CPUs{busy}")  # fmt: skip
    print()
    print(results_table(report), "\n")
    print(notes_table(report), "\n")
    print(breakdown_table(report), "\n")
    header = ["run", "target", "result", "verdict"]
    print(fmt_table(header, verdicts(report)))


# ------------------------------------------------------------------ driver


def plan_files(workdir: Path, size: int, formats: list[str]) -> dict[str, Path]:
    """Which files to write: every format with an init copy if the disk allows, else fewer."""
    room = shutil.disk_usage(workdir).free - (1 << 30)
    n = len(formats)
    if room >= size * 2 * n:
        with_init = formats
    elif room >= size * (n + 1):
        with_init = formats[:1]
    elif room >= size * n:
        with_init = []
    else:
        raise SystemExit(f"not enough free disk in {workdir}: {room / GB:.1f} GB usable")
    paths = {f: workdir / f"model{SUFFIX[f]}" for f in formats}
    paths.update({f"{f}-init": workdir / f"init{SUFFIX[f]}" for f in with_init})
    return paths


def run_bench(args: argparse.Namespace, workdir: Path, created: list[Path]) -> Report:
    specs = layout(int(args.size_gb * GB))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    paths = plan_files(workdir, sum(4 * math.prod(s) for _, s in specs), formats)
    created.extend(paths.values())
    write_checkpoints(specs, paths)
    report = Report(args.size_gb, workdir, n_tensors=len(specs))
    report.files = {str(p): p.stat().st_size for p in paths.values()}
    report.largest = max(((n, 4 * math.prod(s)) for n, s in specs), key=lambda t: t[1])
    baseline = run_one("baseline")
    report.baseline_kib, report.imports_kib = baseline["hwm_kib"], baseline["imports_kib"]
    rep = Repeats(args.cold_repeats, args.warm_repeats)
    start = cpu_clock()
    for fmt in formats:
        measure_format(report, fmt, paths[fmt], paths.get(f"{fmt}-init"), rep)
    report.others_cpu = others_share(start, cpu_clock())
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size (GB)")
    parser.add_argument("--dir", default="/tmp/diag-bench", help="where to write the data")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--formats", default="safetensors,torch", help="comma list")
    parser.add_argument("--warm-repeats", type=int, default=2, help="warm runs, best kept")
    parser.add_argument("--cold-repeats", type=int, default=1, help="cold runs, best kept")
    args = parser.parse_args(argv)
    bad = set(args.formats.split(",")) - set(SUFFIX)
    if bad or args.size_gb <= 0 or min(args.warm_repeats, args.cold_repeats) < 1:
        parser.error(f"bad --formats {sorted(bad)}, --size-gb or --*-repeats")
    return args


def cleanup(workdir: Path, created: list[Path], made_dir: bool) -> None:
    for path in created:
        path.unlink(missing_ok=True)
    if made_dir:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.dir)
    made_dir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        report = run_bench(args, workdir, created)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            cleanup(workdir, created, made_dir)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
