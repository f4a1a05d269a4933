"""Fuzz the JSON Lines training log reader, through the rules and every report."""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def one_input(data: bytes) -> None:
    path = scratch_file("log.jsonl", data)
    check_and_render(logs=[str(path)])


if __name__ == "__main__":
    fuzz(one_input)
