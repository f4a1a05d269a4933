"""Benchmark: diag's W&B run-file reader against wandb's own record reader.

    .venv/bin/python bench/bench_wandb.py [--steps 1000000] [--real-steps 20000]
        [--repeats 2] [--dir /tmp/diag-bench-wandb] [--wandb-017-wheel WHEEL]

The real `wandb` logs ~4,500 steps a second offline (measured: 50,000 `wandb.log` calls in
11 s), so a million-step run would take minutes to write. The bench therefore writes two
files:

- a real one, `--real-steps` steps of `wandb.log` offline, to time diag per step on what
  wandb-core writes;
- a `--steps` one in the same record mix (per step: two summary records and one history
  record of `_step`, `_timestamp`, `_runtime`, `train/loss`, `train/learning_rate` in
  shuffled order, as wandb-core writes them), serialised by wandb's protobuf classes and
  framed by tests/wandb_writer.py.

Peers, on the same files, all returning every point:

- diag `read_wandb(file)`;
- wandb 0.31 has no Python reader (its Go core reads the file for `wandb sync`), so the
  peer is the one wandb shipped until 0.17: `wandb.sdk.internal.datastore.DataStore.scan_data`
  (taken from the wheel given with `--wandb-017-wheel`, e.g. from
  `pip download --no-deps wandb==0.17.9`) with each record parsed by wandb's own
  `wandb_internal_pb2.Record` and each value by `json.loads`;
- without that wheel, the same with our framing loop in place of `DataStore`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

WRITE_REAL = r"""
import math, sys
import wandb

run = wandb.init(mode="offline", dir=sys.argv[1], project="bench")
for step in range(int(sys.argv[2])):
    wandb.log({"train/loss": 2.5 * 0.9999 ** step + 0.01 * math.sin(step),
               "train/learning_rate": 1e-3 * (1 + math.cos(step / 1000)) / 2})
run.finish()
"""


def write_real(folder: Path, steps: int) -> Path:
    shutil.rmtree(folder, ignore_errors=True)  # a kept --dir holds the last bench's run
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[var] = str(folder / ".wandb-home")
    subprocess.run([sys.executable, "-c", WRITE_REAL, str(folder), str(steps)], check=True, env=env)
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    return path


def write_synthetic(path: Path, steps: int) -> Path:
    """`steps` rows in wandb-core's record mix, without the hours wandb.log would take."""
    import wandb_writer as ww
    from wandb.proto import wandb_internal_pb2 as pb

    rng = random.Random(0)
    num = 0

    def record(kind: str, items: dict[str, str], step: int | None = None) -> bytes:
        nonlocal num
        num += 1
        rec = pb.Record(num=num)
        target = rec.history.item if kind == "history" else rec.summary.update
        names = list(items)
        rng.shuffle(names)  # wandb-core writes a row's items in map order
        for name in names:
            item = target.add()
            item.nested_key.append(name)
            item.value_json = items[name]
        if step is not None:
            rec.history.step.num = step
        return rec.SerializeToString()

    def payloads():
        start = 1.7e9
        for step in range(steps):
            loss = 2.5 * 0.9999**step + 0.01 * math.sin(step)
            row = {
                "_step": str(step), "_timestamp": repr(start + step * 0.01),
                "_runtime": repr(step * 0.01), "train/loss": repr(loss),
                "train/learning_rate": repr(1e-3 * (1 + math.cos(step / 1000)) / 2),
            }  # fmt: skip
            yield record("summary", {"_wandb.runtime": "0", "_runtime": "0"})
            yield record("summary", row)
            yield record("history", row, step)

    path.write_bytes(ww.frame(payloads()))
    return path


def old_datastore(wheel: Path) -> type:
    """`DataStore` from wandb <= 0.17's wheel; it imports `wandb` only for an assertion."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("wandb/sdk/internal/datastore.py").decode()
    stub = types.ModuleType("wandb")
    stub._assert_is_internal_process = True  # type: ignore[attr-defined]
    real = sys.modules.get("wandb")
    sys.modules["wandb"] = stub
    try:
        module = types.ModuleType("wandb_017_datastore")
        exec(compile(source, "wandb/sdk/internal/datastore.py", "exec"), module.__dict__)
    finally:
        if real is None:
            del sys.modules["wandb"]
        else:
            sys.modules["wandb"] = real
    return module.DataStore


def our_framing(path: Path):
    """Payloads by the format's framing, for the protobuf peer without the 0.17 wheel."""
    import struct

    data = path.read_bytes()
    pos, parts = 7, []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []


def protobuf_peer(payloads: Callable[[Path], object]) -> Callable[[Path], dict]:
    def read(path: Path) -> dict[str, list[tuple[int, float]]]:
        from wandb.proto import wandb_internal_pb2 as pb

        points: dict[str, list[tuple[int, float]]] = {}
        for payload in payloads(path):
            record = pb.Record.FromString(payload)
            if record.WhichOneof("record_type") != "history":
                continue
            row = {
                item.key or ".".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            step = row.pop("_step")
            for name, value in row.items():
                if name not in ("_timestamp", "_runtime") and isinstance(value, float | int):
                    points.setdefault(name, []).append((step, float(value)))
        return points

    return read


def datastore_payloads(store_class: type) -> Callable[[Path], object]:
    def payloads(path: Path):
        store = store_class()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            yield data
        store.close()

    return payloads


def diag_reader(path: Path) -> dict[str, list[tuple[int, float]]]:
    from diag.loaders.logs.wandb import read_wandb

    (run,) = read_wandb(path)
    return {
        name: list(zip(s.steps.tolist(), s.values.tolist(), strict=True))
        for name, s in run.series.items()
    }


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds: on a shared machine the CPU time is the steadier one."""
    wall = cpu = math.inf
    result = None
    for _ in range(repeats):
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--real-steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--wandb-017-wheel", type=Path, default=None)
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="diag-bench-wandb-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        real = write_real(folder / "real", args.real_steps)
        took, size = time.perf_counter() - started, real.stat().st_size / 1e6
        print(f"real run: {args.real_steps:,} wandb.log calls in {took:.1f} s ({size:.1f} MB)")
        synthetic = folder / f"run-synth{args.steps}.wandb"
        if not synthetic.exists():
            started = time.perf_counter()
            write_synthetic(synthetic, args.steps)
            took, size = time.perf_counter() - started, synthetic.stat().st_size / 1e6
            print(f"synthetic run: {args.steps:,} steps in {took:.1f} s ({size:.0f} MB)")
        peers: list[tuple[str, Callable[[Path], dict]]] = [("diag read_wandb", diag_reader)]
        if args.wandb_017_wheel:
            store = old_datastore(args.wandb_017_wheel)
            peers.append(
                ("wandb 0.17 DataStore + pb2 + json", protobuf_peer(datastore_payloads(store)))
            )
        else:
            peers.append(("framing + wandb pb2 + json", protobuf_peer(our_framing)))
        print("\n| file | reader | wall s | CPU s | steps | steps/s (CPU) |")
        print("|---|---|---:|---:|---:|---:|")
        for label, path, steps in (
            ("real", real, args.real_steps),
            ("synthetic", synthetic, args.steps),
        ):
            results = []
            for name, read in peers:
                wall, cpu, points = best_time(lambda read=read, path=path: read(path), args.repeats)
                results.append(points)
                rate = steps / cpu
                print(f"| {label} | {name} | {wall:.2f} | {cpu:.2f} | {steps:,} | {rate:,.0f} |")
            assert results[0] == results[1], f"{label}: the readers disagree"
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
