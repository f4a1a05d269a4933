"""PyTorch zip checkpoints (`torch.save` since 1.6): read safely and lazily.

The pickle (`data.pkl`) goes through diag's restricted unpickler, which turns every tensor
into a `TensorRef`. A tensor's bytes are read only when asked for, straight from its
uncompressed zip entry, so one tensor is in memory at a time.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import InputError
from diag.loaders.crc import crc32, crc_error
from diag.loaders.rawfile import FileSpan, RawFile
from diag.loaders.safe_pickle import (
    CodeInPickle,
    StorageRef,
    TensorRef,
    UnsupportedPickle,
    restricted_loads,
)
from diag.loaders.table import ITEMSIZE
from diag.loaders.ziparchive import open_zip

if TYPE_CHECKING:
    import torch

MAX_ENTRIES = 200_000  # tensors, optimizer moments and the rest: 20x a 10,000-tensor model
# How much larger than its file a tensor may grow once read (elements repeated by a stride
# of 0, as torch.Tensor.expand makes): enough for any real broadcast buffer.
MAX_EXPANSION = 1 << 30
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


class TorchZip:
    """An opened torch zip archive: its unpickled root object and a reader for storages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        try:
            with open_zip(path, MAX_ENTRIES, "torch zip archive") as zf:
                infos = zf.infolist()
                self._check_entries(path, infos)
                self.prefix = self._prefix(infos)
                names = {i.filename: i for i in infos}
                if f"{self.prefix}constants.pkl" in names or any(
                    n.startswith(f"{self.prefix}code/") for n in names
                ):
                    raise InputError(
                        path, "TorchScript archive: it carries code and loading it would run it"
                    )
                pkl = names.get(f"{self.prefix}data.pkl")
                if pkl is None:
                    raise InputError(path, "zip archive without data.pkl: not a torch checkpoint")
                # torch.save stores every entry; a compressed one is an anomaly (and data.pkl
                # would be inflated before any size check: a zip bomb), so refuse it unread.
                for info in infos:
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise InputError(
                            path, f"zip entry {info.filename!r} is compressed (torch never does)"
                        )
                order = names.get(f"{self.prefix}byteorder")
                if order is not None and zf.read(order).strip() not in (b"little", b""):
                    raise InputError(path, "big-endian torch checkpoint is not supported")
                data = zf.read(pkl)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
            raise InputError(path, f"corrupt or truncated zip archive ({exc})") from None
        except UnicodeDecodeError:  # an entry flagged UTF-8 whose name is not (found by fuzzing)
            raise InputError(path, "corrupt zip archive (an entry name is not UTF-8)") from None
        except ValueError as exc:
            raise InputError(path, f"corrupt zip archive ({exc})") from None
        except (RuntimeError, NotImplementedError) as exc:
            raise InputError(path, f"unreadable zip archive ({exc})") from None
        self._entries = names
        self._spans: dict[tuple[str, str, int, bool], tuple[int, int]] = {}
        try:
            self.root = restricted_loads(data)
        except CodeInPickle as exc:
            raise InputError(path, str(exc)) from None
        except UnsupportedPickle as exc:
            raise InputError(path, f"unreadable checkpoint pickle: {exc}") from None
        self._file = RawFile(path, self.size)

    @staticmethod
    def _check_entries(path: Path, infos: list[zipfile.ZipInfo]) -> None:
        if len(infos) > MAX_ENTRIES:
            raise InputError(path, f"zip archive with {len(infos)} entries (cap {MAX_ENTRIES})")
        seen: set[str] = set()
        for info in infos:
            if info.filename in seen:
                raise zipfile.BadZipFile(f"duplicate entry {info.filename!r}")
            seen.add(info.filename)

    @staticmethod
    def _prefix(infos: list[zipfile.ZipInfo]) -> str:
        for info in infos:
            if info.filename.endswith("data.pkl") and info.filename.count("/") == 1:
                return info.filename.rsplit("data.pkl", 1)[0]
        return ""

    def _data_span(self, storage: StorageRef) -> tuple[int, int]:
        """(file offset, length) of a storage's bytes, checked against the archive; each
        storage's local header is read once, however many tensors and lookups use it."""
        # Keyed by all the reference claims: two references to one entry may disagree.
        key = (storage.key, storage.dtype, storage.numel, storage.untyped)
        span = self._spans.get(key)
        if span is None:
            span = self._spans[key] = self._find_data_span(storage)
        return span

    def _find_data_span(self, storage: StorageRef) -> tuple[int, int]:
        info = self._entries.get(f"{self.prefix}data/{storage.key}")
        if info is None:
            raise InputError(self.path, f"storage {storage.key!r} is missing from the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(self.path, f"storage {storage.key!r} is compressed (torch never does)")
        itemsize = 1 if storage.untyped else ITEMSIZE.get(storage.dtype, 0)
        if itemsize == 0 or info.file_size != storage.numel * itemsize:
            raise InputError(
                self.path,
                f"storage {storage.key!r} holds {info.file_size} bytes, "
                f"its header says {storage.numel * max(itemsize, 1)}",
            )
        header = self._file.pread(info.header_offset, _LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else None
        if fields is None or fields[0] != b"PK\x03\x04":
            raise InputError(self.path, f"corrupt zip entry for storage {storage.key!r}")
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        if start + info.file_size > self.size:
            raise InputError(self.path, "truncated: a storage runs past the end of the file")
        return start, info.file_size

    def _tensor_span(self, ref: TensorRef, name: str) -> tuple[int, int, int]:
        """(file offset of the first element, bytes from it to the last one, numel).

        Refused when reading the tensor would take far more memory than the file: strides
        of 0 repeat elements, so `expand(2**36)` of one float is a file of a few hundred
        bytes that reads as 256 GB. Both torch formats read tensors through here.
        """
        start, length = self._data_span(ref.storage)
        itemsize = ITEMSIZE[ref.dtype]
        numel = 1
        for s in ref.size:
            numel *= s
        if numel == 0:
            return start, 0, 0
        last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride, strict=True))
        # Offsets and strides count elements of the tensor's dtype within its storage.
        if (last + 1) * itemsize > length:
            raise InputError(self.path, f"tensor {name!r} reaches past the end of its storage")
        dense = numel * itemsize
        if dense > self.size + MAX_EXPANSION:
            raise InputError(
                self.path,
                f"tensor {name!r} would take {dense} bytes once read (its strides repeat "
                f"elements), more than the {self.size}-byte file plus {MAX_EXPANSION}",
            )
        first_byte = ref.offset * itemsize
        return start + first_byte, (last + 1) * itemsize - first_byte, numel

    def span(self, ref: TensorRef, name: str) -> FileSpan | None:
        """The tensor's bytes as one row-major run of the file, or None if it is strided."""
        offset, span, numel = self._tensor_span(ref, name)
        if numel == 0 or ref.stride != _contiguous_stride(ref.size):
            return None
        return FileSpan(self._file, offset, span, self._entry_crc(ref, offset, span))

    def _entry_crc(self, ref: TensorRef, offset: int, nbytes: int) -> int | None:
        """The storage entry's CRC-32 when the tensor's bytes are the whole entry (the usual
        state dict), so whoever reads them all can check it; else None."""
        start, length = self._data_span(ref.storage)
        if (offset, nbytes) != (start, length):
            return None
        return self._entries[f"{self.prefix}data/{ref.storage.key}"].CRC

    def read(self, ref: TensorRef, name: str) -> torch.Tensor:
        import torch

        offset, span, numel = self._tensor_span(ref, name)
        if numel == 0:
            return torch.empty(ref.size, dtype=getattr(torch, ref.dtype))
        buf = bytearray(span)
        self._file.readinto(offset, memoryview(buf), f"tensor {name!r}")
        expected = self._entry_crc(ref, offset, span)
        if expected is not None and crc32(buf) != expected:
            raise InputError(self.path, crc_error(name))
        flat = torch.frombuffer(buf, dtype=getattr(torch, ref.dtype))
        if ref.stride == _contiguous_stride(ref.size):
            return flat[:numel].view(ref.size)
        return flat.as_strided(ref.size, ref.stride).contiguous()

    def close(self) -> None:
        self._file.close()


def _contiguous_stride(size: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(size):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


def is_tensor_ref(value: Any) -> bool:
    return isinstance(value, TensorRef)
