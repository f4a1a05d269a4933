"""Open a dataset split (`--split NAME=PATH`) as a `Split`.

Formats, sniffed from the bytes and checked against the extension (a known extension that
disagrees with the content is an error: it usually means a mislabelled file):

- NumPy `.npy` (x only) and `.npz` (x, and optionally y and group, under common aliases).
  Never `allow_pickle`: headers are parsed here, object arrays are refused before any byte
  of their pickle is read. `.npy` files and stored (uncompressed) `.npz` members are
  memory-mapped; compressed `.npz` members cannot be, so x is inflated whole (capped at
  `MAX_INFLATED_BYTES`).
- CSV / TSV, streamed twice: a first pass types the columns and keeps only labels, groups
  and one byte offset per row (so `take` can seek); `chunks` parses the rows again.
- Parquet (needs pyarrow, the `diag[parquet]` extra), read one record batch at a time.
- Image folders: `PATH/<class>/**/*.png|jpg|...` (labels = class folder names) or a flat
  folder of images (no labels). Listed once, decoded lazily with Pillow.
- `.pt` / `.pth` holding one tensor or a dict of tensors, in either torch.save layout (zip,
  or legacy pre-1.6), read with diag's restricted unpickler (`TorchZip`, `LegacyTorch`);
  contiguous tensors are memory-mapped.

Array samples: x with ndim >= 3 are images (channels-first (N, C, H, W) becomes channels
last, and a single channel is squeezed so grey images are (H, W) like a decoded PNG), 2-D
(and 1-D numeric) x is a table, 1-D strings are text. Every failure is an `InputError`
with a one-line cause; content errors (a corrupt image, NaN pixels) are raised when the
sample is read.
"""

from __future__ import annotations

import csv
import math
import os
import re
import stat
import struct
import warnings
import zipfile
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

import numpy as np

from diag.errors import InputError
from diag.loaders.crc import crc32
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, Split, TableChunk
from diag.loaders.ziparchive import open_zip

# Array names accepted in .npz / .pt files, in order of preference.
X_NAMES = ("X", "x", "inputs", "data", "images", "features")
Y_NAMES = ("y", "Y", "labels", "label", "targets", "target")
GROUP_NAMES = ("group", "groups", "subject", "patient", "writer", "session")
# Table columns recognised without --label-column / --group-column (case-insensitive).
LABEL_COLUMNS = ("label", "labels", "target", "y", "class")
GROUP_COLUMNS = (
    "group", "groups", "patient", "patient_id", "subject", "subject_id", "writer", "session",
)  # fmt: skip
# Columns that name a sample rather than describe it: comparing them would make every row
# unique and hide real duplicates.
ID_COLUMNS = frozenset({"id", "uuid", "index", "path", "file", "filename", "image", "url"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

MAX_IMAGE_FILES = 5_000_000
# Pillow's own default: 8-bit RGB at this size is ~256 MiB once decoded.
MAX_IMAGE_PIXELS = 89_478_485
# A compressed .npz member is inflated whole; a 1 KiB member can declare terabytes.
MAX_INFLATED_BYTES = 2 * 1024**3
CRC_CHUNK = 4 * 1024 * 1024
# csv reads a line at a time; a file without newlines would otherwise be read whole.
MAX_LINE_BYTES = 16 * 1024**2
MAX_ZIP_ENTRIES = 100_000
NOT_A_SPLIT = (
    "not a split diag can read (expected .npz/.npy, .csv/.tsv, .parquet, an image folder, "
    "or a .pt of tensors)"
)

_EXTENSIONS = {
    ".npz": "npz", ".npy": "npy", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
    ".pq": "parquet", ".pt": "torch", ".pth": "torch",
}  # fmt: skip
_DESCRIBED = {
    "npz": "a NumPy .npz archive", "npy": "a NumPy .npy array", "csv": "CSV text",
    "tsv": "TSV text", "parquet": "Parquet", "torch": "a torch zip archive",
    "image": "an image (pass the folder that holds the images)",
    "pickle": "a raw pickle", "text": "unrecognised (text or unknown bytes)",
}  # fmt: skip
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)", re.IGNORECASE | re.ASCII
)
_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)
# A value that names a file or a record: a URL, a path, a file name, or a token with a
# digit (img_0017, a UUID). No whitespace, so free text is never taken for an id.
_PATH_LIKE = re.compile(r"[a-z][a-z0-9+.-]*://\S+|\S*[/\\]\S*|[\w.-]+\.[A-Za-z][A-Za-z0-9]{0,4}")
_ID_LIKE = re.compile(r"(?=[\w.:-]*\d)[\w.:-]{1,128}")
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# numpy dtypes for torch dtypes that numpy has; others (bfloat16, float8) are widened.
_TORCH_TO_NUMPY = frozenset(
    {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16",
     "uint32", "uint64", "bool", "complex64", "complex128"}
)  # fmt: skip


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
        raise InputError(path, "no such file or folder") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        return _open_image_folder(name, path)
    if not stat.S_ISREG(mode):
        raise InputError(path, "not a regular file or a folder")
    fmt = _detect_format(path)
    if fmt in ("csv", "tsv"):
        return _open_csv(name, path, "\t" if fmt == "tsv" else None, label_column, group_column)
    if fmt == "parquet":
        return _open_parquet(name, path, label_column, group_column)
    if fmt == "npy":
        return _array_split(name, path, {"x": _npy_member(path)}, None, None)
    if fmt == "npz":
        return _array_split(name, path, _npz_members(path), label_column, group_column)
    return _open_torch(name, path, label_column, group_column, legacy=fmt == "torch-legacy")


# ---------------------------------------------------------------- format sniffing


def _detect_format(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
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
        if content in ("npy", "npz", "parquet", "torch"):
            return content
        raise InputError(path, NOT_A_SPLIT)
    if expected in ("csv", "tsv") and content == "text":
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
    if _image_format(head) is not None:
        return "image"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
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


def _image_format(head: bytes) -> str | None:
    """The Pillow format whose signature `head` starts with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    # "BM" alone starts many words (a CSV header "BMI,..."): require the zero reserved bytes.
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


# ---------------------------------------------------------------- arrays: .npy / .npz / .pt


@dataclass(frozen=True)
class _Member:
    """One array of an array file: its header, and how to get it (mapped where possible)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


def _read_npy_header(
    path: Path, fh: IO[bytes], array_name: str
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header at the stream's position; leaves it at the first data byte."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise InputError(path, f"array {array_name!r}: .npy format {version} not supported")
    except InputError:
        raise
    # numpy's header parser raises assorted types on hostile bytes; it only parses (with
    # ast.literal_eval), so any failure means a bad header.
    except Exception as exc:
        cause = f"array {array_name!r}: not a valid .npy header ({_one_line(exc)})"
        raise InputError(path, cause) from None
    if any(d < 0 for d in shape):
        raise InputError(path, f"array {array_name!r}: negative dimension in shape {shape}")
    _check_dtype(path, array_name, dtype)
    return tuple(shape), bool(fortran), dtype


def _check_dtype(path: Path, array_name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise InputError(
            path,
            f"array {array_name!r} holds Python objects (a ragged list?): object arrays are not "
            "supported (they would need pickle)",
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(path, f"array {array_name!r}: structured arrays are not supported")
    if dtype.itemsize == 0:
        raise InputError(path, f"array {array_name!r}: zero-size dtype {dtype}")


def _mapped(
    path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int, fortran: bool
) -> Callable[[], np.ndarray]:
    """A read-only memory map of an array's bytes (an empty array when it has none)."""

    def load() -> np.ndarray:
        if math.prod(shape) == 0:
            return np.empty(shape, dtype)
        order = "F" if fortran else "C"
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)

    return load


def _npy_member(path: Path) -> _Member:
    try:
        with path.open("rb") as fh:
            shape, fortran, dtype = _read_npy_header(path, fh, "x")
            offset = fh.tell()
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    _check_fits(path, "x", shape, dtype, size - offset)
    return _Member("x", shape, dtype, _mapped(path, dtype, shape, offset, fortran))


def _check_fits(
    path: Path, array_name: str, shape: tuple[int, ...], dtype: np.dtype, available: int
) -> None:
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise InputError(
            path,
            f"truncated: array {array_name!r} of shape {shape} needs {needed} bytes, "
            f"the file holds {max(available, 0)}",
        )


def _npz_members(path: Path) -> dict[str, _Member | _UnopenedMember]:
    """The arrays of an .npz by name; only x, y and group have their headers parsed now."""
    by_name: dict[str, zipfile.ZipInfo] = {}
    with _zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES, ".npz archive") as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise InputError(path, f"zip archive with {len(infos)} entries (cap {MAX_ZIP_ENTRIES})")
        for info in infos:
            array_name = info.filename.removesuffix(".npy")
            if array_name == info.filename:
                continue  # not an array (np.savez writes only .npy members)
            if array_name in by_name:
                raise InputError(path, f"duplicate array {array_name!r}")
            by_name[array_name] = info
    if not by_name:
        raise InputError(path, "the .npz archive holds no arrays")
    wanted = {_pick(by_name, X_NAMES), _pick(by_name, Y_NAMES), _pick(by_name, GROUP_NAMES)}
    if len(by_name) == 1:
        wanted = set(by_name)
    return {
        n: _npz_member(path, n, info) if n in wanted else _UnopenedMember(n)
        for n, info in by_name.items()
    }


class _UnopenedMember:
    """An array a split does not use: named (for --label-column), parsed only if picked."""

    def __init__(self, name: str) -> None:
        self.name = name


def _npz_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> _Member:
    if info.flag_bits & 0x1:
        raise InputError(path, f"array {array_name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        return _stored_member(path, array_name, info)
    return _compressed_member(path, array_name, info)


def _stored_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> _Member:
    """A stored member is a plain .npy at a known offset of the file: map it in place."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL_HEADER.size)
            fields = _LOCAL_HEADER.unpack(raw) if len(raw) == _LOCAL_HEADER.size else None
            if fields is None or fields[0] != b"PK\x03\x04":
                raise InputError(path, f"corrupt zip entry for array {array_name!r}")
            start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            fh.seek(start)
            shape, fortran, dtype = _read_npy_header(path, fh, array_name)
            offset = fh.tell()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    end = min(start + info.file_size, size)
    _check_fits(path, array_name, shape, dtype, end - offset)
    _check_crc(path, array_name, info, start)
    return _Member(array_name, shape, dtype, _mapped(path, dtype, shape, offset, fortran))


def _check_crc(path: Path, array_name: str, info: zipfile.ZipInfo, start: int) -> None:
    """A stored member is mapped, so zipfile never checks its CRC: check it here, in one
    sequential pass (it also warms the page cache for the read that follows)."""
    crc, left, pos = 0, info.file_size, start
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            while left > 0:
                chunk = os.pread(fd, min(left, CRC_CHUNK), pos)
                if not chunk:
                    raise InputError(path, f"truncated: array {array_name!r} ends early")
                crc = crc32(chunk, crc)
                left -= len(chunk)
                pos += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if crc != info.CRC:
        raise InputError(path, f"corrupt .npz archive: array {array_name!r} fails its CRC-32 check")


def _compressed_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> _Member:
    """A compressed member cannot be mapped: parse its header now, inflate it on load."""
    with _zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf, zf.open(info) as fh:
        shape, fortran, dtype = _read_npy_header(path, fh, array_name)
        header_bytes = fh.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_INFLATED_BYTES:
        raise InputError(
            path,
            f"compressed array {array_name!r} inflates to {nbytes} bytes (cap "
            f"{MAX_INFLATED_BYTES}); save it with np.savez (uncompressed) to have it mapped",
        )
    _check_fits(path, array_name, shape, dtype, info.file_size - header_bytes)

    def load() -> np.ndarray:
        buf = bytearray(nbytes)
        with _zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf, zf.open(info) as fh:
            fh.read(header_bytes)
            view, got = memoryview(buf), 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    raise InputError(path, f"truncated: array {array_name!r} ends early")
                got += n
        flat = np.frombuffer(buf, dtype=dtype)
        return flat.reshape(shape, order="F" if fortran else "C")

    return _Member(array_name, shape, dtype, load)


@contextmanager
def _zip_errors(path: Path) -> Generator[None, None, None]:
    """Turn zipfile/zlib errors (of many types on hostile bytes) into one InputError."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"corrupt or truncated .npz archive ({_one_line(exc)})") from None


def _open_torch(
    name: str,
    path: Path,
    label_column: str | None,
    group_column: str | None,
    *,
    legacy: bool = False,
) -> Split:
    from diag.loaders.legacy_torch import LegacyTorch
    from diag.loaders.torchzip import TorchZip

    # Restricted unpickler either way: raises InputError, never runs code. Both read
    # tensors by the same code, so the bounds and expansion checks are the same.
    archive = LegacyTorch(path) if legacy else TorchZip(path)
    try:
        members = _torch_members(path, archive)
        # Every array is mapped or read by now, so the archive's file can be closed.
        return _array_split(name, path, members, label_column, group_column)
    finally:
        archive.close()


def _torch_members(path: Path, archive: Any) -> dict[str, _Member]:
    """The tensors of a `.pt` holding one tensor or a flat dict of tensors, and nothing else."""
    from diag.loaders.safe_pickle import Opaque, TensorRef

    root = archive.root
    if isinstance(root, TensorRef):
        return {"x": _tensor_member(path, archive, "x", root)}
    if not isinstance(root, Mapping) or isinstance(root, Opaque):
        raise InputError(
            path, f"holds {_describe(root)}; a split .pt must hold a tensor or a dict of tensors"
        )
    if not root:
        raise InputError(path, "holds an empty dict: no tensors")
    for key, value in root.items():
        if not isinstance(key, str) or not isinstance(value, TensorRef):
            raise InputError(
                path,
                f"holds {_describe(value)} under key {_short(key)}, not a tensor; a split .pt "
                "must hold only tensors",
            )
    return {key: _tensor_member(path, archive, key, ref) for key, ref in root.items()}


def _describe(value: object) -> str:
    from diag.loaders.safe_pickle import Opaque

    if isinstance(value, Opaque):
        return f"an object of class {value.global_name}"
    return f"a {type(value).__name__}"


def _tensor_member(path: Path, archive: Any, key: str, ref: Any) -> _Member:
    shape = tuple(ref.size)
    if ref.dtype in _TORCH_TO_NUMPY:
        dtype = np.dtype(ref.dtype)
    elif ref.dtype.startswith(("bfloat16", "float8")):
        dtype = np.dtype("float32")  # numpy has no such dtype: widened on read
    else:
        raise InputError(path, f"tensor {key!r} has dtype {ref.dtype}, which diag cannot read")

    def load() -> np.ndarray:
        span = archive.span(ref, key) if ref.dtype in _TORCH_TO_NUMPY else None
        if span is not None:  # contiguous: map the bytes where they lie in the file
            return np.memmap(path, dtype=dtype, mode="r", offset=span.offset, shape=shape)
        tensor = archive.read(ref, key)
        return tensor.numpy() if ref.dtype in _TORCH_TO_NUMPY else tensor.float().numpy()

    return _Member(key, shape, dtype, load)


def _pick(names: Iterable[str], wanted: Sequence[str]) -> str | None:
    present = set(names)
    return next((w for w in wanted if w in present), None)


def _array_split(
    name: str,
    path: Path,
    members: Mapping[str, _Member | _UnopenedMember],
    label_column: str | None,
    group_column: str | None,
) -> Split:
    x_name = _pick(members, X_NAMES)
    notes: list[str] = []
    if x_name is None and len(members) == 1:
        x_name = next(iter(members))
        if x_name != "x":
            notes.append(f"the only array, {x_name!r}, is read as the samples")
    if x_name is None:
        raise InputError(
            path,
            f"no samples array (expected one named {', '.join(X_NAMES)}; found "
            f"{_names_list(list(members))})",
        )
    y_name = label_column if label_column in members else _pick(members, Y_NAMES)
    g_name = group_column if group_column in members else _pick(members, GROUP_NAMES)
    x = _opened(path, members, x_name)
    kind, channels_first = _array_kind(path, x)
    n = x.shape[0]
    labels = _side_array(path, _opened(path, members, y_name), x_name, n) if y_name else None
    groups = _side_array(path, _opened(path, members, g_name), x_name, n) if g_name else None
    if channels_first:
        notes.append(f"{x_name!r} is channels-first {x.shape[1:]}: read as channels-last")
    if kind == TABLE and len(x.shape) == 1:
        notes.append(f"{x_name!r} is 1-D: read as a table of one feature")
    samples = _ArraySamples(path, x_name, x.load(), kind, channels_first)
    return Split(name, path, kind, samples, labels, groups, notes=tuple(notes))


def _opened(path: Path, members: Mapping[str, _Member | _UnopenedMember], key: str) -> _Member:
    member = members[key]
    if isinstance(member, _UnopenedMember):  # named by --label-column: open it now
        with _zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf:
            info = zf.getinfo(f"{key}.npy")
        return _npz_member(path, key, info)
    return member


def _array_kind(path: Path, x: _Member) -> tuple[str, bool]:
    """(kind, channels_first) of the samples array, after checking it can be samples."""
    shape, dtype = x.shape, x.dtype
    _check_dtype(path, x.name, dtype)
    if not shape:
        raise InputError(path, f"array {x.name!r} is 0-d (a single value), not one per sample")
    if shape[0] == 0:
        raise InputError(path, f"array {x.name!r} holds no samples (shape {shape})")
    if 0 in shape[1:]:
        raise InputError(path, f"array {x.name!r} has empty samples (shape {shape})")
    if dtype.kind in "US":
        if len(shape) != 1:
            raise InputError(path, f"string array {x.name!r} must be 1-D, got shape {shape}")
        return TEXT, False
    if dtype.kind not in "biuf":
        raise InputError(
            path, f"array {x.name!r} has dtype {dtype}: expected numbers (images, tables) or text"
        )
    if len(shape) > 4:
        raise InputError(
            path,
            f"array {x.name!r} has shape {shape}: images must be (N, H, W), (N, H, W, C) "
            "or (N, C, H, W)",
        )
    if len(shape) >= 3:
        channels_first = len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) > 4
        return IMAGE, channels_first
    return TABLE, False


def _side_array(path: Path, member: _Member, x_name: str, n: int) -> np.ndarray:
    """Labels or groups: 1-D, one per sample, read into memory (they are small)."""
    _check_dtype(path, member.name, member.dtype)
    shape = member.shape
    if member.dtype.kind not in "biufUS":
        raise InputError(path, f"array {member.name!r} has dtype {member.dtype}: not labels")
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise InputError(
            path,
            f"array {member.name!r} must be 1-D (one entry per sample), got shape {member.shape}",
        )
    if shape[0] != n:
        raise InputError(
            path, f"array {x_name!r} has {n} samples but {member.name!r} has {shape[0]} entries"
        )
    values = np.array(member.load()).reshape(n)
    if values.dtype.kind == "S":
        return np.array([v.decode("utf-8", "replace") for v in values.tolist()])
    return values.astype(values.dtype.newbyteorder("="), copy=False)


class _ArraySamples:
    """Samples of one array (often a memory map), converted a chunk at a time."""

    def __init__(self, path: Path, name: str, x: np.ndarray, kind: str, channels_first: bool):
        self._path, self._name, self._x = path, name, x
        self._kind, self._channels_first = kind, channels_first

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        _check_size(size)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, self._convert(self._x[start:stop], np.arange(start, stop))

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = _check_indices(indices, len(self))
        if not wanted.size:
            return []
        converted = self._convert(self._x[wanted], wanted)
        if isinstance(converted, TableChunk):
            return [TableChunk(converted.numeric[i : i + 1]) for i in range(len(wanted))]
        return list(converted)

    def _convert(self, block: np.ndarray, where: np.ndarray) -> object:
        # One copy out of the map, in native byte order.
        block = np.array(block, dtype=block.dtype.newbyteorder("="))
        if self._kind == TEXT:
            if block.dtype.kind == "S":
                return [v.decode("utf-8", "replace") for v in block.tolist()]
            return [str(v) for v in block.tolist()]
        if self._kind == TABLE:
            with np.errstate(invalid="ignore"):  # a signalling NaN in float16 warns on cast
                return TableChunk(numeric=block.reshape(len(block), -1).astype(np.float64))
        if self._channels_first:
            block = np.moveaxis(block, 1, -1)
        if block.ndim == 4 and block.shape[-1] == 1:
            block = block[..., 0]
        if block.dtype.kind == "f":
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if not finite.all():
                bad = int(where[int(np.argmin(finite))])
                raise InputError(
                    self._path, f"array {self._name!r}: image #{bad} holds NaN or inf values"
                )
        return np.ascontiguousarray(block)


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")


def _check_indices(indices: Sequence[int], n: int) -> np.ndarray:
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise IndexError(f"sample index out of range 0..{n - 1}")
    return wanted


# ---------------------------------------------------------------- tables: shared


@dataclass
class _IdTracker:
    """Whether a column's values are all distinct paths or ids (kept as 8-byte hashes)."""

    alive: bool = True
    hashes: array = field(default_factory=lambda: array("q"))

    def add(self, value: str) -> None:
        if not self.alive:
            return
        value = value.strip()
        if len(value) > 512 or not (_PATH_LIKE.fullmatch(value) or _ID_LIKE.fullmatch(value)):
            self.alive, self.hashes = False, array("q")
            return
        self.hashes.append(hash(value))

    def all_distinct(self, rows: int) -> bool:
        if not self.alive or rows < 2 or len(self.hashes) != rows:
            return False
        return np.unique(np.frombuffer(self.hashes, dtype=np.int64)).size == rows


@dataclass(frozen=True)
class _Layout:
    """Which columns of a table are what, once typed."""

    names: tuple[str, ...]
    label: int | None
    group: int | None
    numeric: tuple[int, ...]
    text: tuple[int, ...]
    notes: tuple[str, ...]

    @property
    def kind(self) -> str:
        if self.image_shape is not None:
            return IMAGE
        return TEXT if not self.numeric and len(self.text) == 1 else TABLE

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) when the features are the pixels of flattened images (`pixel0`...)."""
        if self.text:
            return None
        return pixel_grid([self.names[i] for i in self.numeric])

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in (*self.numeric, *self.text))


def _find_column(
    path: Path, names: Sequence[str], wanted: str | None, defaults: Sequence[str], role: str
) -> int | None:
    if wanted is not None:
        if wanted in names:
            return list(names).index(wanted)
        raise InputError(path, f"no {role} column {wanted!r} (columns: {_names_list(names)})")
    lowered = [n.lower() for n in names]
    return next((lowered.index(d) for d in defaults if d in lowered), None)


def _roles(
    path: Path, names: Sequence[str], label_column: str | None, group_column: str | None
) -> tuple[int | None, int | None]:
    label = _find_column(path, names, label_column, LABEL_COLUMNS, "label")
    group = _find_column(path, names, group_column, GROUP_COLUMNS, "group")
    return label, group


def _id_by_name(name: str) -> bool:
    low = name.strip().lower()
    return (
        low in ID_COLUMNS or low.endswith("_id") or re.fullmatch(r"unnamed: \d+", low) is not None
    )


def _layout(
    path: Path,
    names: Sequence[str],
    roles: tuple[int | None, int | None],
    types: Sequence[str],
    id_values: Sequence[bool],
    notes: Sequence[str],
) -> _Layout:
    """Split columns into features (numeric, text) and excluded ones, saying why."""
    label, group = roles
    numeric: list[int] = []
    text: list[int] = []
    excluded: list[str] = []
    for i, column in enumerate(names):
        why = (
            "the label" if i == label
            else "the group" if i == group
            else "an identifier (by its name)" if _id_by_name(column)
            else "an identifier (all values are distinct paths or ids)" if id_values[i]
            else None if types[i] in ("numeric", "text")
            else f"its type ({types[i]}) is not compared"
        )  # fmt: skip
        if why is not None:
            excluded.append(f"column {column!r} excluded: {why}")
        elif types[i] == "numeric":
            numeric.append(i)
        else:
            text.append(i)
    if not numeric and not text:
        raise InputError(path, "no feature columns left: " + "; ".join(excluded))
    if not numeric and len(text) == 1:  # the rule `_Layout.kind` applies
        excluded.append(f"column {names[text[0]]!r} is the only feature: read as text samples")
    return _Layout(tuple(names), label, group, tuple(numeric), tuple(text), (*excluded, *notes))


def _typed_values(values: list[str]) -> np.ndarray:
    """Labels or groups from text cells: int64 if all are integers, float64 if all are
    numbers (or missing), else strings."""
    stripped = [v.strip() for v in values]
    if all(_INTEGER.fullmatch(v) for v in stripped):
        return np.array([int(v) for v in stripped], dtype=np.int64)
    kinds = [_cell_kind(v) for v in stripped]
    if 1 in kinds and 2 not in kinds:
        return np.array([_cell_value(v) for v in stripped], dtype=np.float64)
    return _string_array(values)


def _string_array(values: list[str]) -> np.ndarray:
    # A fixed-width str array is as wide as its longest value times the rows: one huge cell
    # would blow it up, so long values stay Python strings.
    if any(len(v) > 256 for v in values):
        return np.array(values, dtype=object)
    return np.array(values, dtype=str)


def _cell_kind(cell: str) -> int:
    """0 missing, 1 number, 2 text. Numbers are strict: no '1_000', no '0x1f'."""
    s = cell.strip()
    if s.lower() in _MISSING:
        return 0
    return 1 if _NUMBER.fullmatch(s) else 2


def _cell_value(cell: str) -> float:
    s = cell.strip()
    if s.lower() in _MISSING or not _NUMBER.fullmatch(s):
        return math.nan
    return float(s)


class _RowIds(Sequence[str]):
    """ "row 1", "row 2", ... without holding a string per row."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [f"row {i + 1}" for i in range(*index.indices(self._n))]
        if not -self._n <= index < self._n:
            raise IndexError(index)
        return f"row {index % self._n + 1}"


_PIXEL_NAME = re.compile(r"(?:pixel|pix|px)[_-]?(\d+)", re.IGNORECASE)
_ROW_COL_NAME = re.compile(r"(\d+)x(\d+)")


def pixel_grid(names: Sequence[str]) -> tuple[int, int] | None:
    """The image shape of columns that hold flattened pixels, in row-major order.

    Kaggle-style `pixel0`...`pixel783` (or `px`, from 0 or 1) make a square image;
    `1x1`...`28x28` name row and column. Pixels are compared as images (shift-robust),
    not as table rows.
    """
    n = len(names)
    if n < 16:
        return None
    numbers = [_PIXEL_NAME.fullmatch(c.strip()) for c in names]
    if all(numbers):
        index = [int(m[1]) for m in numbers]  # type: ignore[index]
        side = math.isqrt(n)
        if side * side == n and index in (list(range(n)), list(range(1, n + 1))):
            return side, side
        return None
    cells = [_ROW_COL_NAME.fullmatch(c.strip()) for c in names]
    if all(cells):
        rc = [(int(m[1]), int(m[2])) for m in cells]  # type: ignore[index]
        h, w = max(r for r, _ in rc), max(c for _, c in rc)
        if h * w == n and rc == [(r, c) for r in range(1, h + 1) for c in range(1, w + 1)]:
            return h, w
    return None


def _table_chunk(layout: _Layout, rows: Sequence[Sequence[str]]) -> object:
    """The chunk for parsed CSV rows: TableChunk, images, or a list of str for TEXT."""
    if layout.kind == TEXT:
        j = layout.text[0]
        return [row[j] for row in rows]
    numeric = np.array(
        [[_cell_value(row[j]) for j in layout.numeric] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(layout.numeric))
    if layout.image_shape is not None:
        return numeric.reshape(len(rows), *layout.image_shape)
    if not layout.text:
        return TableChunk(numeric)
    text = ["|".join(f"{layout.names[j]}={row[j]}" for j in layout.text) for row in rows]
    return TableChunk(numeric, text)


def _split_chunk(chunk: object, count: int) -> list[object]:
    """One element per row, for `take`."""
    if isinstance(chunk, TableChunk):
        return [
            TableChunk(chunk.numeric[i : i + 1], None if chunk.text is None else [chunk.text[i]])
            for i in range(count)
        ]
    return list(chunk)  # type: ignore[call-overload]


# ---------------------------------------------------------------- CSV / TSV


class _LineFeed:
    """Decoded lines of a binary file from an offset, for csv.reader; tracks the byte
    position so each row's start can be recorded (and sought back to)."""

    def __init__(self, path: Path, fh: IO[bytes], offset: int) -> None:
        self.path, self.fh, self.pos = path, fh, offset
        self.line = 0
        self._first = offset == 0
        fh.seek(offset)

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = self.fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise InputError(self.path, f"a line longer than {MAX_LINE_BYTES} bytes: not a CSV")
        self.pos += len(raw)
        self.line += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(self.path, f"not UTF-8 text (line {self.line})") from None
        if "\0" in text:  # csv accepts NUL since 3.11; in a text table it means binary data
            raise InputError(self.path, f"malformed CSV (line {self.line}): a NUL byte")
        if self._first:
            self._first = False
            text = text.removeprefix("\ufeff")
        return text


def _csv_rows(
    path: Path, fh: IO[bytes], offset: int, delimiter: str
) -> Iterator[tuple[int, list[str]]]:
    """(byte offset of the row, cells) for each non-blank row from `offset`."""
    feed = _LineFeed(path, fh, offset)
    # strict: an unclosed quote or text after a closing quote is an error, not a guess.
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    while True:
        start = feed.pos
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"line {feed.line}" if offset == 0 else f"the row at byte {start}"
            raise InputError(path, f"malformed CSV ({where}): {_one_line(exc)}") from None
        if row:
            yield start, row


def _sniff_delimiter(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            first = fh.readline(64 * 1024).decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _column_names(raw: list[str]) -> tuple[list[str], list[str]]:
    """Header cells made unique; empty ones named like pandas' `Unnamed: 0` index column."""
    names: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for i, cell in enumerate(raw):
        base = cell.strip() or f"Unnamed: {i}"
        unique, k = base, 1
        while unique in seen:
            unique, k = f"{base}.{k}", k + 1
        if unique != base:
            notes.append(f"duplicate column {base!r} renamed {unique!r}")
        seen.add(unique)
        names.append(unique)
    return names, notes


@dataclass
class _CsvScan:
    """What the first pass keeps: one offset per row, labels, groups, column counts."""

    names: list[str]
    offsets: array
    counts: list[list[int]]  # per column: missing, number, text cells (plain ints: fast)
    id_trackers: list[_IdTracker | None]
    labels: list[str]
    groups: list[str]
    ragged: int
    notes: list[str]


def _open_csv(
    name: str,
    path: Path,
    delimiter: str | None,
    label_column: str | None,
    group_column: str | None,
) -> Split:
    delimiter = delimiter or _sniff_delimiter(path)
    scan, roles = _scan_csv(path, delimiter, label_column, group_column)
    rows = len(scan.offsets)
    if rows == 0:
        raise InputError(path, "no data rows (a header only)")
    types, notes = [], list(scan.notes)
    for i, column in enumerate(scan.names):
        _missing, numbers, texts = scan.counts[i]
        is_text = texts * 2 > numbers + texts
        types.append("text" if is_text else "numeric")
        if texts and not is_text and i not in roles:
            notes.append(f"column {column!r}: {texts} non-numeric cells read as missing (NaN)")
    if scan.ragged:
        notes.append(f"{scan.ragged} rows do not have one cell per column (padded or cut)")
    id_values = [t is not None and t.all_distinct(rows) for t in scan.id_trackers]
    layout = _layout(path, scan.names, roles, types, id_values, notes)
    labels = _typed_values(scan.labels) if roles[0] is not None else None
    groups = _typed_values(scan.groups) if roles[1] is not None else None
    samples = _CsvSamples(path, delimiter, scan.offsets, layout)
    return Split(
        name, path, layout.kind, samples, labels, groups, _RowIds(rows), layout.columns,
        layout.notes,
    )  # fmt: skip


def _scan_csv(
    path: Path, delimiter: str, label_column: str | None, group_column: str | None
) -> tuple[_CsvScan, tuple[int | None, int | None]]:
    try:
        with path.open("rb") as fh:
            rows = _csv_rows(path, fh, 0, delimiter)
            first = next(rows, None)
            if first is None:
                raise InputError(path, "empty CSV (no header row)")
            names, notes = _column_names(first[1])
            roles = _roles(path, names, label_column, group_column)
            scan = _CsvScan(
                names, array("q"), [[0, 0, 0] for _ in names],
                [None if i in roles else _IdTracker() for i in range(len(names))], [], [], 0, notes,
            )  # fmt: skip
            for start, cells in rows:
                _scan_row(scan, roles, start, cells)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    return scan, roles


def _scan_row(
    scan: _CsvScan, roles: tuple[int | None, int | None], start: int, cells: list[str]
) -> None:
    width = len(scan.names)
    if len(cells) != width:
        scan.ragged += 1
        cells = _fit(cells, width)
    scan.offsets.append(start)
    label, group = roles
    for i, cell in enumerate(cells):
        if i == label:
            scan.labels.append(cell)
        elif i == group:
            scan.groups.append(cell)
        else:
            kind = _cell_kind(cell)
            scan.counts[i][kind] += 1
            tracker = scan.id_trackers[i]
            if tracker is not None and tracker.alive:
                if kind == 2:
                    tracker.add(cell)
                else:
                    tracker.alive = False


def _fit(cells: list[str], width: int) -> list[str]:
    return cells[:width] + [""] * (width - len(cells))


class _CsvSamples:
    """CSV rows parsed again on demand; `take` seeks to the offsets the scan recorded."""

    def __init__(self, path: Path, delimiter: str, offsets: array, layout: _Layout) -> None:
        self._path, self._delimiter = path, delimiter
        self._offsets, self._layout = offsets, layout

    def __len__(self) -> int:
        return len(self._offsets)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        _check_size(size)
        width, n, done = len(self._layout.names), len(self), 0
        with self._open() as fh:
            batch: list[list[str]] = []
            for _start, cells in _csv_rows(self._path, fh, self._offsets[0], self._delimiter):
                batch.append(cells if len(cells) == width else _fit(cells, width))
                if len(batch) == size or done + len(batch) == n:
                    yield done, _table_chunk(self._layout, batch)
                    done, batch = done + len(batch), []
                if done == n:
                    break
        if done != n:
            raise InputError(self._path, "the file changed while it was being read")

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = _check_indices(indices, len(self))
        width, rows = len(self._layout.names), {}
        with self._open() as fh:
            for i in sorted(set(wanted.tolist())):
                row = next(_csv_rows(self._path, fh, self._offsets[i], self._delimiter), None)
                if row is None:
                    raise InputError(self._path, "the file changed while it was being read")
                rows[i] = _fit(row[1], width)
        chunk = _table_chunk(self._layout, [rows[i] for i in wanted.tolist()])
        return _split_chunk(chunk, len(wanted))

    def _open(self) -> IO[bytes]:
        try:
            return self._path.open("rb")
        except OSError as exc:
            raise InputError(self._path, f"cannot read ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- Parquet


def _import_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            path, "reading Parquet needs pyarrow: pip install 'diag[parquet]'"
        ) from None
    return pq


@contextmanager
def _arrow_errors(path: Path) -> Generator[None, None, None]:
    """pyarrow raises many types (ArrowInvalid, OSError, ...) on a corrupt file."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"unreadable Parquet file ({_one_line(exc)})") from None


def _arrow_type(kind: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if any(f(kind) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)):
        return "numeric"
    if pa.types.is_decimal(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_temporal(kind):
        return "text"
    if getattr(pa.types, "is_string_view", lambda _: False)(kind):
        return "text"
    return str(kind)


def _open_parquet(
    name: str, path: Path, label_column: str | None, group_column: str | None
) -> Split:
    pq = _import_parquet(path)
    with _arrow_errors(path):
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        rows = pf.metadata.num_rows
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    names = list(schema.names)
    if len(set(names)) != len(names):
        raise InputError(path, "duplicate column names")
    if rows == 0:
        raise InputError(path, "no rows")
    roles = _roles(path, names, label_column, group_column)
    types = [_arrow_type(schema.field(i).type) for i in range(len(names))]
    candidates = [
        i
        for i, t in enumerate(types)
        if t == "text" and i not in roles and not _id_by_name(names[i])
    ]
    id_values = _parquet_id_columns(path, pf, names, candidates, rows)
    layout = _layout(path, names, roles, types, id_values, ())
    labels = _parquet_values(path, pf, names[roles[0]]) if roles[0] is not None else None
    groups = _parquet_values(path, pf, names[roles[1]]) if roles[1] is not None else None
    samples = _ParquetSamples(path, pf, layout, sizes)
    return Split(
        name, path, layout.kind, samples, labels, groups, _RowIds(rows), layout.columns,
        layout.notes,
    )  # fmt: skip


def _parquet_id_columns(
    path: Path, pf: Any, names: list[str], candidates: list[int], rows: int
) -> list[bool]:
    """One pass over the text columns only, stopping once none can be an id column."""
    trackers = {i: _IdTracker() for i in candidates}
    if trackers:
        with _arrow_errors(path):
            for batch in pf.iter_batches(batch_size=65_536, columns=[names[i] for i in trackers]):
                for i, tracker in trackers.items():
                    for value in batch.column(names[i]).to_pylist():
                        if value is None:
                            tracker.alive = False
                            break
                        tracker.add(str(value))
                if not any(t.alive for t in trackers.values()):
                    break
    return [i in trackers and trackers[i].all_distinct(rows) for i in range(len(names))]


def _parquet_values(path: Path, pf: Any, column: str) -> np.ndarray:
    import pyarrow as pa

    with _arrow_errors(path):
        values = pf.read(columns=[column]).column(0)
        kind = values.type
        if values.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            return values.to_numpy()
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return np.asarray(values.cast(pa.float64()).to_numpy(), dtype=np.float64)
        return _string_array(["" if v is None else str(v) for v in values.to_pylist()])


class _ParquetSamples:
    """Record batches of the feature columns only; `take` reads just the row groups it needs."""

    def __init__(self, path: Path, pf: Any, layout: _Layout, sizes: list[int]) -> None:
        self._path, self._pf, self._layout = path, pf, layout
        self._starts = np.cumsum([0, *sizes])
        self._columns = [layout.names[i] for i in (*layout.numeric, *layout.text)]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        import pyarrow as pa

        _check_size(size)
        done, pending = 0, []
        with _arrow_errors(self._path):
            batches = self._pf.iter_batches(batch_size=size, columns=self._columns)
        while True:
            with _arrow_errors(self._path):
                batch = next(batches, None)
            if batch is not None:
                pending.append(batch)
            held = sum(b.num_rows for b in pending)
            # Row groups end batches early: regroup so every chunk but the last has `size` rows.
            while held >= size or (batch is None and held):
                table = pa.Table.from_batches(pending)
                take = min(size, held)
                yield done, self._convert(table.slice(0, take))
                done, held = done + take, held - take
                pending = table.slice(take).to_batches()
            if batch is None:
                return

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = _check_indices(indices, len(self))
        found: dict[int, object] = {}
        groups = np.searchsorted(self._starts, wanted, side="right") - 1
        for group in sorted(set(groups.tolist())):
            with _arrow_errors(self._path):
                table = self._pf.read_row_group(group, columns=self._columns)
            for i in sorted(set(wanted[groups == group].tolist())):
                local = i - int(self._starts[group])
                found[i] = _split_chunk(self._convert(table.slice(local, 1)), 1)[0]
        return [found[i] for i in wanted.tolist()]

    def _convert(self, table: Any) -> object:
        import pyarrow as pa

        layout, n = self._layout, table.num_rows
        with _arrow_errors(self._path):
            texts = [
                ["" if v is None else str(v) for v in table.column(layout.names[j]).to_pylist()]
                for j in layout.text
            ]
            numeric = np.empty((n, len(layout.numeric)), dtype=np.float64)
            for k, j in enumerate(layout.numeric):
                column = table.column(layout.names[j]).cast(pa.float64(), safe=False)
                numeric[:, k] = column.to_numpy()
        if layout.kind == TEXT:
            return texts[0]
        if layout.image_shape is not None:
            return numeric.reshape(n, *layout.image_shape)
        if not texts:
            return TableChunk(numeric)
        heads = [layout.names[j] for j in layout.text]
        joined = [
            "|".join(f"{h}={v}" for h, v in zip(heads, row, strict=True))
            for row in zip(*texts, strict=True)
        ]
        return TableChunk(numeric, joined)


# ---------------------------------------------------------------- image folders


def _open_image_folder(name: str, path: Path) -> Split:
    root = os.path.realpath(path)
    files, labelled, notes = _list_images(path, root)
    labels = _string_array([f.split("/", 1)[0] for f in files]) if labelled else None
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
    if os.path.islink(full) and not _inside(os.path.realpath(full), root):
        outside[0] += 1
        return False
    return os.path.isfile(full)


def _inside(real: str, root: str) -> bool:
    return real.startswith(root.rstrip(os.sep) + os.sep)


class _FolderImages:
    """Images of a folder, decoded one file at a time when a chunk or `take` asks."""

    def __init__(self, path: Path, root: str, files: list[str]) -> None:
        self._path, self._root, self._files = path, root, files

    def __len__(self) -> int:
        return len(self._files)

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        _check_size(size)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, [self._read(i) for i in range(start, stop)]

    def take(self, indices: Sequence[int]) -> list[object]:
        return [self._read(i) for i in _check_indices(indices, len(self)).tolist()]

    def _read(self, index: int) -> np.ndarray:
        shown = self._path / self._files[index]
        full = os.path.join(self._root, self._files[index])
        # Checked again at read time: the file may have been swapped for a symlink since.
        if not _inside(os.path.realpath(full), self._root):
            raise InputError(shown, "a symlink out of the split folder: not followed")
        try:
            with open(full, "rb") as fh:
                return _decode_image(shown, fh)
        except OSError as exc:
            raise InputError(shown, f"cannot read ({exc.strerror or exc})") from None


def _decode_image(shown: Path, fh: IO[bytes]) -> np.ndarray:
    """Pixels as uint8 (H, W) or (H, W, 3). Pillow only sees files whose signature matches."""
    from PIL import Image

    fmt = _image_format(fh.read(16))
    if fmt is None:
        raise InputError(shown, "not an image: its bytes match no PNG/JPEG/GIF/BMP/WebP signature")
    fh.seek(0)
    # Pillow warns (not raises) between 1x and 2x its pixel limit: make that an error too.
    # catch_warnings is process-wide; split reading is single-threaded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fh, formats=[fmt]) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(shown, _bomb(f"{width} x {height} pixels"))
                mode = "L" if img.mode in _GREY_MODES else "RGB"
                return np.array(img.convert(mode))
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(shown, _bomb(_one_line(exc))) from None
        # Decoders raise OSError, SyntaxError, ValueError, struct.error, ... on bad bytes.
        except Exception as exc:
            raise InputError(shown, f"cannot decode image: {_one_line(exc)}") from None


def _bomb(what: str) -> str:
    return f"image too large ({what}; cap {MAX_IMAGE_PIXELS} pixels): a decompression bomb?"


# ---------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _short(value: object) -> str:
    text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _names_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(_short(n) for n in list(names)[:limit])
    more = len(names) - limit
    return f"{shown}, ... ({more} more)" if more > 0 else shown or "none"


__all__ = [
    "GROUP_COLUMNS", "GROUP_NAMES", "ID_COLUMNS", "IMAGE_EXTENSIONS", "LABEL_COLUMNS",
    "MAX_IMAGE_FILES", "MAX_IMAGE_PIXELS", "MAX_INFLATED_BYTES", "X_NAMES", "Y_NAMES",
    "open_split",
]  # fmt: skip
