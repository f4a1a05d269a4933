"""Fuzz the .npz/.npy split readers (hand-parsed headers, stored and deflated members).

Then the leakage engine and every data rule and report.
"""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file

load_diag()


def one_input(data: bytes) -> None:
    # The first byte's bits pick the name (.npz or .npy) and whether the file is compared
    # with itself (every sample leaks) or stands alone.
    mode = data[0] if data else 0
    path = scratch_file("train.npy" if mode & 2 else "train.npz", data[1:])
    splits = {"train": str(path)}
    if mode & 1:
        splits["test"] = str(path)
    check_and_render(splits=splits)


if __name__ == "__main__":
    fuzz(one_input)
