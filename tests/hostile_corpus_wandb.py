"""Hostile and broken W&B run files (`run-<id>.wandb`) for the hostile corpus.

The damaged files start from a run the real `wandb` wrote offline (once per process); the
crafted records are serialised by wandb's own protobuf classes and framed by
tests/wandb_writer.py, so every CRC is right and the damage reaches the decoder.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import wandb_writer as ww
from hostile_corpus import CASES, MARKUP, Builder, Case, case

RUN_FILE = "run-hostile1.wandb"

_WRITE = r"""
import sys
import wandb

run = wandb.init(mode="offline", dir=sys.argv[1], project="hostile", name="real")
for step in range(60):
    row = {"train/loss": 2.0 / (step + 1)}
    if step % 10 == 9:
        row["eval/loss"] = 2.2 / (step + 1)
    wandb.log(row)
run.finish()
"""


@functools.cache
def real_run() -> bytes:
    """The bytes of a small run written by the real wandb (offline, no network)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env[var] = tmp
        subprocess.run(
            [sys.executable, "-c", _WRITE, tmp], check=True, env=env, capture_output=True
        )
        (path,) = Path(tmp).glob("wandb/offline-run-*/run-*.wandb")
        return path.read_bytes()


def _rows(n: int = 30, nan_from: int | None = None) -> list[bytes]:
    rows = []
    for step in range(n):
        loss = "NaN" if nan_from is not None and step >= nan_from else repr(2.0 / (step + 1))
        rows.append(ww.history({"train/loss": loss, "eval/loss": repr(2.2 / (step + 1))}, step))
    return rows


def _run_case(inp: Path, blob: bytes, *fragments: str, refused: bool = True,
              rules: tuple[str, ...] = ()) -> Case:  # fmt: skip
    (inp / RUN_FILE).write_bytes(blob)
    return Case(["--logs", RUN_FILE], RUN_FILE if refused else None, fragments, rules)


@case
def wandb_bad_magic(inp: Path, outside: Path, marker: Path) -> Case:
    return _run_case(inp, b"LEVELDB!" + real_run()[8:], "no :W&B header")


@case
def wandb_crc_flipped_mid_file(inp: Path, outside: Path, marker: Path) -> Case:
    blob = bytearray(real_run())
    offsets = ww.record_offsets(bytes(blob))
    blob[offsets[len(offsets) // 2]] ^= 0x10  # the stored CRC of a record mid-file
    return _run_case(inp, bytes(blob), "CRC mismatch")


@case
def wandb_field_length_2_31(inp: Path, outside: Path, marker: Path) -> Case:
    """A history item claiming 2**31 bytes, in a record whose CRC holds."""
    forged = b"\x12\x06\x0a" + b"\x80\x80\x80\x80\x08"
    return _run_case(inp, ww.frame([*_rows(5), forged]), "2147483648 bytes past the end")


@case
def wandb_varint_11_bytes(inp: Path, outside: Path, marker: Path) -> Case:
    return _run_case(inp, ww.frame([*_rows(5), b"\x08" + b"\xff" * 10 + b"\x01"]), "10 bytes")


@case
def wandb_groups_nested_too_deep(inp: Path, outside: Path, marker: Path) -> Case:
    return _run_case(inp, ww.frame([*_rows(5), b"\x1b" * 100_000]), "nested too deeply")


@case
def wandb_value_json_100mb_string(inp: Path, outside: Path, marker: Path) -> Case:
    huge = ww.history({"train/loss": '"' + "x" * (100 << 20) + '"'}, 5)
    return _run_case(inp, ww.frame([*_rows(5), huge, *_rows(3)]), "over 16777216 bytes")


@case
def wandb_deeply_nested_json_values(inp: Path, outside: Path, marker: Path) -> Case:
    """JSON nested a million deep as a point and 2000 deep as a config value: not numbers,
    skipped without recursing; the NaN loss around them is still found."""
    from wandb.proto import wandb_internal_pb2 as pb

    config = pb.Record()
    item = config.config.update.add()
    item.key, item.value_json = "deep", "[" * 2000 + "]" * 2000
    deep = ww.history({"train/loss": "[" * 1_000_000 + "]" * 1_000_000}, 3)
    blob = ww.frame([config.SerializeToString(), *_rows(3), deep, *_rows(12, nan_from=6)])
    return _run_case(inp, blob, refused=False, rules=("loss-nonfinite",))


@case
def wandb_markup_in_names(inp: Path, outside: Path, marker: Path) -> Case:
    rows = [
        ww.history({"train/loss": "NaN" if s > 4 else str(1 / (s + 1)), f"a{MARKUP}": "1"}, s)
        for s in range(8)
    ]
    blob = ww.frame([ww.run_record(f"id{MARKUP}", name=MARKUP, project=MARKUP), *rows])
    return _run_case(inp, blob, refused=False, rules=("loss-nonfinite",))


@case
def wandb_too_many_metric_names(inp: Path, outside: Path, marker: Path) -> Case:
    row = ww.history({f"m{i}": "1" for i in range(10_001)}, 0)
    return _run_case(inp, ww.frame([row]), "more than 10000 metric names")


@case
def wandb_latest_run_link_outside(inp: Path, outside: Path, marker: Path) -> Case:
    """`wandb/latest-run` pointing out of the folder: neither followed nor listed."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "run-elsewhere.wandb").write_bytes(real_run())
    run_dir = inp / "wandb" / "offline-run-20250101_000000-hostile1"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_FILE).write_bytes(real_run())
    (inp / "wandb" / "latest-run").symlink_to(outside, target_is_directory=True)
    return Case(["--logs", "wandb"])


def _cut(fraction: float) -> Builder:
    def build(inp: Path, outside: Path, marker: Path) -> Case:
        blob = real_run()
        c = _run_case(inp, blob[: max(1, int(len(blob) * fraction))])
        c.either = True  # a cut record is noted; a file cut inside its header is refused
        return c

    return build


for _fraction in (0.0001, 0.25, 0.5, 0.9, 0.999):
    CASES[f"wandb-cut-at-{_fraction:.2%}"] = _cut(_fraction)
