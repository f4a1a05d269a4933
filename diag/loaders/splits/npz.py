"""NumPy `.npy` (x only) and `.npz` (x, and optionally y and group, under common aliases).

Never `allow_pickle`: headers are parsed here, object arrays are refused before any byte
of their pickle is read. `.npy` files and stored (uncompressed) `.npz` members are
memory-mapped; compressed `.npz` members cannot be, so x is inflated whole (capped at
`MAX_INFLATED_BYTES`)."""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Callable, Generator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np

from diag.errors import InputError
from diag.loaders.crc import crc32
from diag.loaders.splits.arrays import (
    GROUP_NAMES,
    X_NAMES,
    Y_NAMES,
    Member,
    UnopenedMember,
    check_dtype,
    pick,
)
from diag.loaders.splits.common import one_line
from diag.loaders.ziparchive import open_zip

# A compressed .npz member is inflated whole; a 1 KiB member can declare terabytes.
MAX_INFLATED_BYTES = 2 * 1024**3
CRC_CHUNK = 4 * 1024 * 1024
MAX_ZIP_ENTRIES = 100_000
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


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
        cause = f"array {array_name!r}: not a valid .npy header ({one_line(exc)})"
        raise InputError(path, cause) from None
    if any(d < 0 for d in shape):
        raise InputError(path, f"array {array_name!r}: negative dimension in shape {shape}")
    check_dtype(path, array_name, dtype)
    return tuple(shape), bool(fortran), dtype


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


def npy_member(path: Path) -> Member:
    try:
        with path.open("rb") as fh:
            shape, fortran, dtype = _read_npy_header(path, fh, "x")
            offset = fh.tell()
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    _check_fits(path, "x", shape, dtype, size - offset)
    return Member("x", shape, dtype, _mapped(path, dtype, shape, offset, fortran))


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


def npz_members(path: Path) -> dict[str, Member | UnopenedMember]:
    """The arrays of an .npz by name; only x, y and group have their headers parsed now."""
    by_name: dict[str, zipfile.ZipInfo] = {}
    with zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES, ".npz archive") as zf:
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
    wanted = {pick(by_name, X_NAMES), pick(by_name, Y_NAMES), pick(by_name, GROUP_NAMES)}
    if len(by_name) == 1:
        wanted = set(by_name)
    return {
        n: _npz_member(path, n, info)
        if n in wanted
        else UnopenedMember(n, partial(_open_later, path, n))
        for n, info in by_name.items()
    }


def _open_later(path: Path, array_name: str) -> Member:
    with zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf:
        info = zf.getinfo(f"{array_name}.npy")
    return _npz_member(path, array_name, info)


def _npz_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> Member:
    if info.flag_bits & 0x1:
        raise InputError(path, f"array {array_name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        return _stored_member(path, array_name, info)
    return _compressed_member(path, array_name, info)


def _stored_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> Member:
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
    return Member(array_name, shape, dtype, _mapped(path, dtype, shape, offset, fortran))


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


def _compressed_member(path: Path, array_name: str, info: zipfile.ZipInfo) -> Member:
    """A compressed member cannot be mapped: parse its header now, inflate it on load."""
    with zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf, zf.open(info) as fh:
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
        with zip_errors(path), open_zip(path, MAX_ZIP_ENTRIES) as zf, zf.open(info) as fh:
            fh.read(header_bytes)
            view, got = memoryview(buf), 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    raise InputError(path, f"truncated: array {array_name!r} ends early")
                got += n
        flat = np.frombuffer(buf, dtype=dtype)
        return flat.reshape(shape, order="F" if fortran else "C")

    return Member(array_name, shape, dtype, load)


@contextmanager
def zip_errors(path: Path) -> Generator[None, None, None]:
    """Turn zipfile/zlib errors (of many types on hostile bytes) into one InputError."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"corrupt or truncated .npz archive ({one_line(exc)})") from None
