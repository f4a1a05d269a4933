"""Open a dataset split (`--split NAME=PATH`) as a `Split`: find the format, hand it over.

Formats are sniffed from the bytes and checked against the extension (a known extension
that disagrees with the content is an error: it usually means a mislabelled file). Each
format has its own module behind the same `Split` seam: `npz` (.npy/.npz), `torch_pt`
(.pt/.pth), `csv_table` (CSV/TSV), `parquet`, `image_folder`; what they share (column
roles, id trackers, index checks) is in `common`, image decoding in `images`. Every
failure is an `InputError` with a one-line cause; content errors (a corrupt image, NaN
pixels) are raised when the sample is read.
"""

from __future__ import annotations

import stat
from pathlib import Path

from diag.errors import InputError
from diag.loaders.splits.arrays import GROUP_NAMES, X_NAMES, Y_NAMES, array_split
from diag.loaders.splits.common import GROUP_COLUMNS, ID_COLUMNS, LABEL_COLUMNS
from diag.loaders.splits.csv_table import open_csv
from diag.loaders.splits.hf_datasets import is_datasets_folder, open_datasets_folder
from diag.loaders.splits.image_folder import IMAGE_EXTENSIONS, MAX_IMAGE_FILES, open_image_folder
from diag.loaders.splits.images import MAX_IMAGE_PIXELS, image_format
from diag.loaders.splits.jsonl import open_jsonl
from diag.loaders.splits.model import Split
from diag.loaders.splits.npz import MAX_INFLATED_BYTES, MAX_ZIP_ENTRIES, npy_member, npz_members
from diag.loaders.splits.parquet import open_parquet
from diag.loaders.splits.torch_pt import open_torch
from diag.loaders.splits.webdataset import folder_shards, is_pattern, open_webdataset, shard_paths
from diag.loaders.ziparchive import open_zip

NOT_A_SPLIT = (
    "not a split diag can read (expected .npz/.npy, .csv/.tsv, .parquet, .jsonl, an image "
    "folder, a datasets folder, WebDataset .tar shards, or a .pt of tensors)"
)

_EXTENSIONS = {
    ".npz": "npz", ".npy": "npy", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
    ".pq": "parquet", ".pt": "torch", ".pth": "torch", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".json": "jsonl", ".tar": "tar",
}  # fmt: skip
_DESCRIBED = {
    "npz": "a NumPy .npz archive", "npy": "a NumPy .npy array", "csv": "CSV text",
    "tsv": "TSV text", "parquet": "Parquet", "torch": "a torch zip archive",
    "image": "an image (pass the folder that holds the images)",
    "pickle": "a raw pickle", "text": "unrecognised (text or unknown bytes)",
    "jsonl": "JSON Lines", "tar": "a tar archive (a WebDataset shard)",
}  # fmt: skip


def open_split(
    name: str,
    path: Path,
    *,
    label_column: str | None = None,
    group_column: str | None = None,
) -> Split:
    """Open `path` as the split `name`. Raises InputError when it cannot be read safely.

    For tables, `label_column` / `group_column` must exist when given. For array files
    (.npz, .pt) they name the label / group array when the file has one by that name, else
    the usual aliases apply (the flags are shared by every --split).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if is_pattern(str(path)):  # WebDataset shards: `train-{000000..000003}.tar`
            shards = shard_paths(str(path))
            return open_webdataset(name, shards, label_column, group_column, path)
        raise InputError(path, "no such file or folder") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        return _open_folder(name, path, label_column, group_column)
    if not stat.S_ISREG(mode):
        raise InputError(path, "not a regular file or a folder")
    fmt = _detect_format(path)
    if fmt in ("csv", "tsv"):
        return open_csv(name, path, "\t" if fmt == "tsv" else None, label_column, group_column)
    if fmt == "parquet":
        return open_parquet(name, path, label_column, group_column)
    if fmt == "npy":
        return array_split(name, path, {"x": npy_member(path)}, None, None)
    if fmt == "npz":
        return array_split(name, path, npz_members(path), label_column, group_column)
    if fmt == "jsonl":
        return open_jsonl(name, [path], label_column, group_column)
    if fmt == "tar":
        return open_webdataset(name, [path], label_column, group_column, path)
    return open_torch(name, path, label_column, group_column, legacy=fmt == "torch-legacy")


def _open_folder(
    name: str, path: Path, label_column: str | None, group_column: str | None
) -> Split:
    if is_datasets_folder(path):
        return open_datasets_folder(name, path, label_column, group_column)
    shards = folder_shards(path)
    if shards:
        return open_webdataset(name, shards, label_column, group_column, path)
    return open_image_folder(name, path)


# ---------------------------------------------------------------- format sniffing


def _detect_format(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(512)  # a tar says "ustar" at byte 257
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if not head:
        raise InputError(path, "empty file")
    expected = _EXTENSIONS.get(path.suffix.lower())
    content = _content_kind(head)
    if content == "zip":
        content = _zip_kind(path, expected)
    if content == "pickle" and expected in ("torch", None):
        # LegacyTorch checks the torch magic number before acting on any other opcode, so
        # a plain pickle is refused unread.
        return "torch-legacy"
    if expected is None:
        if content in ("npy", "npz", "parquet", "torch", "jsonl", "tar"):
            return content
        raise InputError(path, NOT_A_SPLIT)
    if expected in ("csv", "tsv") and content in ("text", "jsonl"):
        return expected
    if expected == content:
        return content
    shown = "CSV" if expected == "csv" else "TSV" if expected == "tsv" else _DESCRIBED[expected]
    raise InputError(path, f"the extension says {shown} but the content is {_DESCRIBED[content]}")


def _content_kind(head: bytes) -> str:
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    if image_format(head) is not None:
        return "image"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return "text"


def _zip_kind(path: Path, expected: str | None) -> str:
    """torch or npz: torch.save writes `<archive>/data.pkl`, numpy writes `*.npy` members."""
    try:
        with open_zip(path, MAX_ZIP_ENTRIES) as zf:
            names = zf.namelist()[: MAX_ZIP_ENTRIES + 1]
    except Exception:  # a broken zip: the reader the extension picks reports it properly
        return expected if expected in ("npz", "torch") else "npz"
    if any(n.endswith("data.pkl") and n.count("/") <= 1 for n in names):
        return "torch"
    return "npz"


__all__ = [
    "GROUP_COLUMNS", "GROUP_NAMES", "ID_COLUMNS", "IMAGE_EXTENSIONS", "LABEL_COLUMNS",
    "MAX_IMAGE_FILES", "MAX_IMAGE_PIXELS", "MAX_INFLATED_BYTES", "X_NAMES", "Y_NAMES",
    "open_split",
]  # fmt: skip
