"""Fuzz the W&B run-file reader (LevelDB-log framing with CRCs, own protobuf decoder)."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import check_and_render, fuzz, load_diag, scratch_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: wandb_writer
import wandb_writer

load_diag()

SEPARATOR = b"\xfe\xfe"


def one_input(data: bytes) -> None:
    # The first byte picks the mode. Odd: the rest is the file as is, so the header, the
    # framing and the CRCs get fuzzed. Even: each chunk of the rest becomes one payload,
    # framed with good CRCs (split across blocks when long), so mutations reach the
    # protobuf decoder instead of dying at the first CRC.
    mode, data = data[:1], data[1:]
    if mode and mode[0] % 2 == 0:
        data = wandb_writer.frame(data.split(SEPARATOR))
    path = scratch_file("run-fuzz.wandb", data)
    check_and_render(logs=[str(path)])


if __name__ == "__main__":
    fuzz(one_input)
