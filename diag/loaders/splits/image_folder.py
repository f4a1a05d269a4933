"""Image folders: `PATH/<class>/**/*.png|jpg|...` (labels = class folder names) or a flat
folder of images (no labels). Listed once, decoded lazily with Pillow; symlinks out of the
folder are never followed."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import check_indices, check_size, inside, string_array
from diag.loaders.splits.images import decode_image
from diag.loaders.splits.model import IMAGE, Split

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
MAX_IMAGE_FILES = 5_000_000


def open_image_folder(name: str, path: Path) -> Split:
    root = os.path.realpath(path)
    files, labelled, notes = _list_images(path, root)
    labels = string_array([f.split("/", 1)[0] for f in files]) if labelled else None
    samples = _FolderImages(path, root, files)
    return Split(name, path, IMAGE, samples, labels, None, files, (), tuple(notes))


def _list_images(path: Path, root: str) -> tuple[list[str], bool, list[str]]:
    """Image files (relative, '/'-separated, sorted) and whether they sit in class folders."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(path, f"cannot list the folder ({exc.strerror or exc})") from None
    flat: list[str] = []
    labelled: list[str] = []
    outside = [0]
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            _walk_class(path, root, entry.name, labelled, outside)
        elif _is_image_file(root, entry.name, outside):
            flat.append(entry.name)
        if len(flat) + len(labelled) > MAX_IMAGE_FILES:
            raise InputError(path, f"more than {MAX_IMAGE_FILES} image files")
    notes = []
    if outside[0]:
        notes.append(f"{outside[0]} symlinks pointing outside the folder were not followed")
    if labelled and flat:
        notes.append(f"{len(flat)} images at the top level ignored (layout: PATH/<class>/<image>)")
    if not labelled and not flat:
        extra = f" ({notes[0]})" if notes else ""
        raise InputError(path, f"no images found (.png, .jpg, .jpeg, .bmp, .gif, .webp){extra}")
    return (labelled or flat), bool(labelled), notes


def _walk_class(path: Path, root: str, top: str, out: list[str], outside: list[int]) -> None:
    # os.walk without followlinks never enters a symlinked folder (no loops, no escapes).
    for folder, dirs, files in os.walk(os.path.join(root, top)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        for file in sorted(files):
            rel = f"{rel_folder}/{file}"
            if not file.startswith(".") and _is_image_file(root, rel, outside):
                out.append(rel)
        if len(out) > MAX_IMAGE_FILES:
            raise InputError(path, f"more than {MAX_IMAGE_FILES} image files")


def _is_image_file(root: str, rel: str, outside: list[int]) -> bool:
    if os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
        return False
    full = os.path.join(root, rel)
    if os.path.islink(full) and not inside(os.path.realpath(full), root):
        outside[0] += 1
        return False
    return os.path.isfile(full)


class _FolderImages:
    """Images of a folder, decoded one file at a time when a chunk or `take` asks."""

    def __init__(self, path: Path, root: str, files: list[str]) -> None:
        self._path, self._root, self._files = path, root, files

    def __len__(self) -> int:
        return len(self._files)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        check_size(size)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, [self._read(i) for i in range(start, stop)]

    def take(self, indices: Sequence[int]) -> list[object]:
        return [self._read(i) for i in check_indices(indices, len(self)).tolist()]

    def _read(self, index: int) -> np.ndarray:
        shown = self._path / self._files[index]
        full = os.path.join(self._root, self._files[index])
        # Checked again at read time: the file may have been swapped for a symlink since.
        if not inside(os.path.realpath(full), self._root):
            raise InputError(shown, "a symlink out of the split folder: not followed")
        try:
            with open(full, "rb") as fh:
                return decode_image(shown, fh)
        except OSError as exc:
            raise InputError(shown, f"cannot read ({exc.strerror or exc})") from None
