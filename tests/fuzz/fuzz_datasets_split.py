"""Fuzz the `datasets` folder reader on its Arrow IPC stream (schema, record batches, text
and Image columns), then the leakage engine and every data rule and report."""

from __future__ import annotations

import json

from _common import check_and_render, fuzz, load_diag, scratch_tree

load_diag()

STATE = json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}).encode()


def one_input(data: bytes) -> None:
    root = scratch_tree({"train/state.json": STATE, "train/data-00000-of-00001.arrow": data[1:]})
    splits = {"train": str(root / "train")}
    if data[:1] and data[0] % 2:
        splits["test"] = str(root / "train")
    check_and_render(splits=splits)


if __name__ == "__main__":
    fuzz(one_input)
