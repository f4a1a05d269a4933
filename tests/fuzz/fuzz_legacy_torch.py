"""Fuzz legacy (pre-1.6, non-zip) torch.save files: the five pickles, the storage walk,
tensor views and strides, the optimizer state. Then every params rule and report.
"""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def one_input(data: bytes) -> None:
    path = scratch_file("model.pth", data)
    check_and_render(checkpoint=str(path))


if __name__ == "__main__":
    fuzz(one_input)
