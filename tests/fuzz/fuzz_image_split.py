"""Fuzz the image-folder split reader (every Pillow decoder diag accepts) and the leakage engine."""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_tree

load_diag()


def one_input(data: bytes) -> None:
    # One image under a class folder, plus a copy of it in the other split.
    root = scratch_tree({"train/cat/a.png": data, "test/cat/b.png": data})
    check_and_render(splits={"train": str(root / "train"), "test": str(root / "test")})


if __name__ == "__main__":
    fuzz(one_input)
