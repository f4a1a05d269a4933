"""PyTorch's legacy `torch.save` format (before 1.6, or `_use_new_zipfile_serialization=False`).

The file is five pickles back to back, then the raw storages:

1. the magic number, 2. the protocol version (1001), 3. a dict describing the writer's
machine, 4. the saved object, whose storages are persistent ids
`('storage', storage_type, key, location, numel, view_metadata)`, 5. the list of storage
keys, in the order their bytes follow; then for each key an 8-byte little-endian element
count and that many elements.

Every pickle goes through diag's restricted unpickler, so nothing the file names is ever
called. Unpickling records where each storage should be; the storage headers are then
walked (8 bytes read per storage, never the data) and checked against the pickle before a
single tensor is read. Tensors are read one at a time, on demand, with positional reads.
The device a storage was saved from ('cpu', 'cuda:0', ...) is recorded and ignored: every
tensor is read onto the CPU.
"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path
from typing import IO, Any

from diag.errors import InputError
from diag.loaders.rawfile import RawFile
from diag.loaders.safe_pickle import (
    MAX_PICKLE_BYTES,
    CodeInPickle,
    RestrictedUnpickler,
    StorageRef,
    UnsupportedPickle,
    _StorageType,
    restricted_loads,
)
from diag.loaders.table import ITEMSIZE
from diag.loaders.torchzip import MAX_ENTRIES, TorchZip

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# The opcodes a pickled int can use. Anything else where the magic number belongs means a
# plain pickle, which is refused before a single opcode of it is acted on.
_INT_OPCODES = frozenset(
    {"PROTO", "FRAME", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STOP"}
)
_PLAIN_PICKLE = "a plain pickle, not a torch.save file (no torch magic number): not unpickled"
_COUNT_BYTES = 8  # the element count written before each storage's bytes
_FIRST_CHUNK = 1 << 20


class LegacyUnpickler(RestrictedUnpickler):
    """The restricted unpickler, with the legacy format's six-field storage ids.

    Records each root storage (key -> StorageRef, its location) and each view of one
    (view key -> root key, element offset), so the storages can be checked against the
    key list and the file before any tensor is read.
    """

    def __init__(self, file: IO[bytes], reader: LegacyTorch) -> None:
        super().__init__(file)
        self._reader = reader

    def persistent_load(self, pid: Any) -> StorageRef:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            raise UnsupportedPickle(
                "a whole pickled nn.Module (torch.save(model)): its classes are code; "
                "save model.state_dict() instead"
            )
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsupportedPickle(f"unknown persistent id {type(pid).__name__}")
        _, stype, key, location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise UnsupportedPickle("storage of an unknown type")
        if not isinstance(key, str) or not _count(numel):
            raise UnsupportedPickle("storage with an invalid key or size")
        if not isinstance(location, str | bytes):
            raise UnsupportedPickle(
                f"storage {_shown(key)} with a location that is not a device name"
            )
        root = StorageRef(key, stype.dtype, numel, stype.untyped)
        known = self._reader.roots.setdefault(key, root)
        if known != root:
            raise UnsupportedPickle(f"storage {_shown(key)} is declared with two types or sizes")
        self._reader.locations.setdefault(key, _text(location))
        if view is None:
            return root
        return self._view(root, view)

    def _view(self, root: StorageRef, view: Any) -> StorageRef:
        if not (isinstance(view, tuple) and len(view) == 3):
            raise UnsupportedPickle(f"storage {_shown(root.key)} with invalid view metadata")
        view_key, offset, numel = view
        if not isinstance(view_key, str) or not _count(offset) or not _count(numel):
            raise UnsupportedPickle(f"storage {_shown(root.key)} with invalid view metadata")
        if offset + numel > root.numel:
            raise UnsupportedPickle(
                f"view {_shown(view_key)} reaches past the end of {_shown(root.key)}"
            )
        ref = StorageRef(view_key, root.dtype, numel, root.untyped)
        known = self._reader.views.setdefault(view_key, (root.key, offset, ref))
        if known != (root.key, offset, ref):
            raise UnsupportedPickle(f"view {_shown(view_key)} is declared twice, differently")
        return ref


def _count(value: Any) -> bool:
    """A size or offset: a non-negative int that fits the 8-byte count torch writes (and
    that a message can print: str() refuses ints of over 4300 digits)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _shown(key: str) -> str:
    """A storage key for a one-line message: torch's are short numbers, a forged one need not be."""
    return repr(key) if len(key) <= 40 else f"{key[:40]!r}..."


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin1")


class LegacyTorch(TorchZip):
    """An opened legacy torch file: its unpickled root object and a reader for storages.

    A TorchZip whose storages are runs of one flat file rather than zip entries: it
    reuses TorchZip's tensor logic (offsets, views, strides, bounds, the cap on what a
    stride of 0 expands to) through `_data_span`, so both formats read tensors by the
    same code. TorchZip's __init__ is not called: it opens a zip archive.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.size = path.stat().st_size
        except OSError as exc:
            raise InputError(path, f"cannot read ({exc.strerror})") from None
        self.roots: dict[str, StorageRef] = {}
        self.locations: dict[str, str] = {}
        self.views: dict[str, tuple[str, int, StorageRef]] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        self._file = RawFile(path, self.size)
        try:
            with path.open("rb") as fh:
                end = self._read_pickles(fh)
            self._walk_storages(end)
        except OSError as exc:
            self._file.close()
            raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
        except InputError:
            self._file.close()
            raise

    # ------------------------------------------------------------ the pickles

    def _read_pickles(self, fh: IO[bytes]) -> int:
        """Unpickle the five pickles; the file offset where the storages start."""
        pos, magic = self._load(fh, 0, "magic number", only=_INT_OPCODES)
        if not (isinstance(magic, int) and magic == MAGIC_NUMBER):
            raise InputError(self.path, _PLAIN_PICKLE)
        pos, version = self._load(fh, pos, "protocol version", only=_INT_OPCODES)
        if version != PROTOCOL_VERSION:
            shown = version if version.bit_length() <= 64 else "(a huge int)"
            raise InputError(self.path, f"unsupported legacy torch protocol {shown}")
        pos, sys_info = self._load(fh, pos, "system info")
        if not isinstance(sys_info, dict):
            raise InputError(self.path, "corrupt legacy torch file (system info is not a dict)")
        if sys_info.get("little_endian", True) is not True:
            raise InputError(self.path, "big-endian torch checkpoint is not supported")
        pos, self.root = self._load(fh, pos, "checkpoint", lambda f: LegacyUnpickler(f, self))
        pos, keys = self._load(fh, pos, "storage key list")
        self.keys = self._check_keys(keys)
        return pos

    def _load(
        self,
        fh: IO[bytes],
        start: int,
        what: str,
        unpickler: Any = RestrictedUnpickler,
        only: frozenset[str] | None = None,
    ) -> tuple[int, Any]:
        """(end offset, value) of the pickle at `start`, read through the restricted unpickler."""
        data = self._pickle_at(fh, start, what, only)
        try:
            return start + len(data), restricted_loads(data, unpickler)
        except CodeInPickle as exc:
            raise InputError(self.path, str(exc)) from None
        except UnsupportedPickle as exc:
            raise InputError(self.path, f"unreadable {what} pickle: {exc}") from None

    def _pickle_at(
        self, fh: IO[bytes], start: int, what: str, only: frozenset[str] | None = None
    ) -> bytes:
        """The bytes of the pickle starting at `start`, found by walking its opcodes.

        The file is read from `start` in growing chunks (the first is enough for nearly
        every checkpoint), never past the pickle cap; pickletools walks a chunk in memory,
        where a forged length (`BINBYTES 2**60`) is a short read, not an allocation. With
        `only`, the first opcode outside it ends the walk: the file is a plain pickle.
        """
        if start >= self.size:
            raise InputError(self.path, f"truncated: the file ends before the {what} pickle")
        limit = min(self.size - start, MAX_PICKLE_BYTES)
        chunk = min(_FIRST_CHUNK, limit)
        while True:
            fh.seek(start)
            data = fh.read(chunk)
            stream = io.BytesIO(data)
            try:
                for opcode, _arg, pos in pickletools.genops(stream):
                    if only is not None and opcode.name not in only:
                        cause = f"corrupt legacy torch file (the {what} is not an int)"
                        raise InputError(self.path, _PLAIN_PICKLE if start == 0 else cause)
                    if opcode.name == "STOP":
                        return data[: pos + 1]
            except InputError:
                raise
            except Exception as exc:  # any malformed or cut pickle: one clean error
                ran_out = stream.tell() >= len(data)
                if ran_out and chunk < limit:
                    chunk = min(chunk * 4, limit)  # the pickle goes on past this chunk
                    continue
                if ran_out and limit < self.size - start:
                    cause = f"the {what} pickle is over the {MAX_PICKLE_BYTES}-byte cap"
                    raise InputError(self.path, cause) from None
                cause = "truncated" if ran_out else "corrupt"
                raise InputError(self.path, f"{cause} {what} pickle ({exc})") from None
            raise InputError(self.path, f"truncated {what} pickle")  # genops ended without STOP

    def _check_keys(self, keys: Any) -> list[str]:
        """The key list, which must name each root storage of the pickle exactly once."""
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InputError(self.path, "corrupt legacy torch file (storage keys are not a list)")
        if len(keys) > MAX_ENTRIES:
            raise InputError(self.path, f"{len(keys)} storages (cap {MAX_ENTRIES})")
        listed: set[str] = set()
        for key in keys:
            if key in listed:
                raise InputError(
                    self.path, f"storage {_shown(key)} is listed twice in the key list"
                )
            listed.add(key)
        used = set(self.roots)
        if listed != used:
            extra, missing = sorted(listed - used), sorted(used - listed)
            cause = (
                f"storage {_shown(missing[0])} is used by the pickle but not in the key list"
                if missing
                else f"storage {_shown(extra[0])} is in the key list but no tensor uses it"
            )
            raise InputError(self.path, cause)
        clash = sorted(set(self.views) & used)
        if clash:
            raise InputError(self.path, f"storage {_shown(clash[0])} is both a storage and a view")
        return keys

    # ------------------------------------------------------------ the storages

    def _walk_storages(self, pos: int) -> None:
        """Record where each storage's bytes lie, reading only the 8-byte counts."""
        for key in self.keys:
            ref = self.roots[key]
            head = self._file.pread(pos, _COUNT_BYTES)
            if len(head) < _COUNT_BYTES:
                raise InputError(
                    self.path, f"truncated: the file ends before storage {_shown(key)}"
                )
            count = int.from_bytes(head, "little")
            if count != ref.numel:
                raise InputError(
                    self.path,
                    f"storage {_shown(key)} holds {count} elements, the pickle says {ref.numel}",
                )
            nbytes = count * _itemsize(ref)
            start = pos + _COUNT_BYTES
            if start + nbytes > self.size:
                raise InputError(self.path, "truncated: a storage runs past the end of the file")
            self._spans[key] = (start, nbytes)
            pos = start + nbytes
        if pos != self.size:
            extra = self.size - pos
            raise InputError(self.path, f"{extra} unexpected bytes after the last storage")

    def _data_span(self, storage: StorageRef) -> tuple[int, int]:
        view = self.views.get(storage.key)
        if view is None:
            return self._spans[storage.key]
        root_key, offset, _ = view
        start, _ = self._spans[root_key]
        itemsize = _itemsize(storage)
        return start + offset * itemsize, storage.numel * itemsize

    def _entry_crc(self, ref: Any, offset: int, nbytes: int) -> int | None:
        return None  # the legacy format carries no checksums


def _itemsize(storage: StorageRef) -> int:
    return 1 if storage.untyped else ITEMSIZE[storage.dtype]
