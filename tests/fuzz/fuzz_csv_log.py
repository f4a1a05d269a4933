"""Fuzz the CSV/TSV training logs (Keras, Lightning, plain tables): rules and reports too."""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def one_input(data: bytes) -> None:
    path = scratch_file("metrics.csv", data)
    check_and_render(logs=[str(path)])


if __name__ == "__main__":
    fuzz(one_input)
