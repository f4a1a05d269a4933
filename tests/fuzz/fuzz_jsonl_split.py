"""Fuzz the JSON Lines split reader (text, prompt/completion, chat messages), then the
leakage engine and every data rule and report."""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def one_input(data: bytes) -> None:
    # The first byte picks whether the file is compared with itself (every sample leaks).
    path = scratch_file("train.jsonl", data[1:])
    splits = {"train": str(path)}
    if data[:1] and data[0] % 2:
        splits["test"] = str(path)
    check_and_render(splits=splits)


if __name__ == "__main__":
    fuzz(one_input)
