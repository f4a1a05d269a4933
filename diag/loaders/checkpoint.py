"""Open any supported checkpoint as a `Checkpoint`: a lazy ParamTable plus what surrounds it.

The format is sniffed from the bytes, never trusted from the extension; a known extension
that disagrees with the content is an error, since it usually means a mislabelled or
tampered file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import InputError
from diag.loaders.optimizer import OptimizerState, parse_optimizer
from diag.loaders.safe_pickle import Opaque, TensorRef, to_plain
from diag.loaders.table import ParamTable, TensorInfo, table_span

if TYPE_CHECKING:
    import torch

    from diag.loaders.rawfile import FileSpan
    from diag.stats import TensorStats

# Keys under which training scripts nest the model's state dict, in order of preference.
STATE_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "model_state",
    "params", "weights", "ema", "model_ema", "ema_state_dict", "ema_model",
)  # fmt: skip
OPTIMIZER_KEYS = (
    "optimizer_states", "optimizer_state_dict", "optimizer_state", "optimizer", "optim", "opt",
)  # fmt: skip
EXTENSIONS = {
    ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch", ".tar": "torch",
    ".safetensors": "safetensors", ".onnx": "onnx",
}  # fmt: skip
FOLDER_CANDIDATES = (
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
    "pytorch_model.bin", "model.onnx", "adapter_model.safetensors", "adapter_model.bin",
)  # fmt: skip


@dataclass
class CheckpointMeta:
    epoch: int | None = None
    global_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors (lazy), training position, optimizer state, stats."""

    path: str
    table: ParamTable
    meta: CheckpointMeta = field(default_factory=CheckpointMeta)
    optimizer: OptimizerState | None = None
    stats: dict[str, TensorStats] = field(default_factory=dict)
    _by_name: dict[str, TensorInfo] | None = field(default=None, repr=False)

    @property
    def format(self) -> str:
        return self.table.format

    @property
    def is_initial(self) -> bool:
        """True when the checkpoint says it was saved before any training step."""
        if self.meta.global_step is not None:
            return self.meta.global_step == 0
        return False

    def infos(self) -> list[TensorInfo]:
        return self.table.infos()

    @property
    def table_names(self) -> dict[str, TensorInfo]:
        """Name -> TensorInfo, built once."""
        if self._by_name is None:
            self._by_name = {i.name: i for i in self.table.infos()}
        return self._by_name

    def info(self, name: str) -> TensorInfo:
        return self.table_names[name]


def sniff(path: Path) -> str:
    """The format of a file from its first bytes: torch, torch-legacy, safetensors, onnx."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch"
    # safetensors first: a header length of 128, 384, ... starts with the bytes of a pickle.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 10**8:
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x08 and head[1] < 0x20:
        return "onnx"  # protobuf field 1 (ir_version), varint
    if path.suffix == ".json":
        return "index"
    return "unknown"


def open_checkpoint(path_text: str | os.PathLike[str]) -> Checkpoint:
    path = Path(path_text)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return _open_folder(path, str(path_text))
    if path.name.endswith(".index.json"):
        return _open_sharded(path, str(path_text))
    try:
        kind = sniff(path)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror})") from None
    expected = EXTENSIONS.get(path.suffix.lower())
    if kind == "unknown":
        what = f"not a {expected} checkpoint" if expected else "not a recognised checkpoint"
        raise InputError(path, f"{what} (unknown content; expected torch zip, safetensors or ONNX)")
    # Both torch layouts carry torch's extensions; only the content tells them apart.
    if expected and expected != kind.removesuffix("-legacy"):
        raise InputError(path, f"the extension says {expected} but the content is {kind}")
    checkpoint = _open_file(path, kind, str(path_text))
    if path.name.startswith("adapter_model."):
        # A PEFT adapter: its rank and scaling are in the config saved beside it.
        from diag.loaders.adapters import read_adapter_config

        checkpoint.meta.extra["adapter"] = read_adapter_config(path.parent)
    return checkpoint


def _open_file(path: Path, kind: str, shown: str) -> Checkpoint:
    if kind == "safetensors":
        from diag.loaders.safetensors_table import SafetensorsTable

        table = SafetensorsTable(path)
        return Checkpoint(shown, table, _meta_from_strings(table.metadata))
    if kind == "onnx":
        from diag.loaders.onnx_table import OnnxTable

        return Checkpoint(shown, OnnxTable(path))
    return _open_torch(path, shown, legacy=kind == "torch-legacy")


def _open_folder(path: Path, shown: str) -> Checkpoint:
    for name in FOLDER_CANDIDATES:
        candidate = path / name
        if candidate.is_file():
            return open_checkpoint(candidate)
    single = [p for p in sorted(path.iterdir()) if p.suffix in (".safetensors", ".onnx")]
    if len(single) == 1:
        return open_checkpoint(single[0])
    raise InputError(path, "folder holds no model.safetensors, pytorch_model.bin or .onnx file")


# ---------------------------------------------------------------- torch zip


class TorchZipTable:
    format = "torch"

    def __init__(self, path: Path, archive: Any, tensors: dict[str, TensorRef]) -> None:
        self.path = path
        self._archive = archive
        self._refs = tensors
        self._infos = [TensorInfo(n, tuple(r.size), r.dtype) for n, r in tensors.items()]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        return self._archive.read(self._refs[name], name)

    def span(self, name: str) -> FileSpan | None:
        return self._archive.span(self._refs[name], name)

    def close(self) -> None:
        self._archive.close()


class LegacyTorchTable(TorchZipTable):
    """Tensors of a legacy (pre-1.6, non-zip) torch file; read like the zip format's."""

    format = "torch-legacy"


def _open_torch(path: Path, shown: str, legacy: bool = False) -> Checkpoint:
    if legacy:
        from diag.loaders.legacy_torch import LegacyTorch

        archive = LegacyTorch(path)
    else:
        from diag.loaders.torchzip import TorchZip

        archive = TorchZip(path)
    root = archive.root
    state, where = find_state_dict(root)
    if state is None:
        archive.close()
        raise InputError(path, "no tensors found (not a state dict or a known checkpoint layout)")
    table = (LegacyTorchTable if legacy else TorchZipTable)(path, archive, state)
    meta = _meta_from_root(root, where)
    optimizer = _optimizer_from_root(root, table, archive)
    return Checkpoint(shown, table, meta, optimizer)


def flatten_tensors(
    obj: Any, prefix: str = "", depth: int = 0, _seen: set[int] | None = None
) -> dict[str, TensorRef]:
    """Name -> TensorRef for every tensor in nested dicts ('a.b.c' names).

    A dict the pickle shares between several keys is walked once, at its first key: a
    pickle can share one dict at every level, which as a tree is exponentially large.
    """
    out: dict[str, TensorRef] = {}
    seen = set() if _seen is None else _seen
    if depth > 16 or not isinstance(obj, Mapping) or id(obj) in seen:
        return out
    seen.add(id(obj))
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, TensorRef):
            out[name] = value
        elif isinstance(value, Mapping) and not isinstance(value, Opaque):
            out.update(flatten_tensors(value, f"{name}.", depth + 1, seen))
    return out


def find_state_dict(
    root: Any, _depth: int = 0, _seen: set[int] | None = None
) -> tuple[dict[str, TensorRef] | None, str]:
    """The model's tensors inside a checkpoint, and the key path they were found under.

    Looks at most 16 levels down and visits each dict once (see flatten_tensors).
    """
    seen = set() if _seen is None else _seen
    if not isinstance(root, Mapping) or _depth > 16 or id(root) in seen:
        return None, ""
    seen.add(id(root))
    direct = {k: v for k, v in root.items() if isinstance(v, TensorRef)}
    if direct and len(direct) >= len(root) / 2:
        return flatten_tensors(root), ""
    for key in STATE_KEYS:
        value = root.get(key)
        if isinstance(value, Mapping):
            inner, where = find_state_dict(value, _depth + 1, seen)
            if inner:
                return inner, f"{key}.{where}".rstrip(".")
    if direct:
        return direct, ""
    return None, ""


def _meta_from_root(root: Any, where: str) -> CheckpointMeta:
    meta = CheckpointMeta()
    if not isinstance(root, Mapping):
        return meta
    for key in ("epoch", "global_step", "step", "iteration"):
        value = root.get(key)
        # A pickle can hold an int of any size; reports cannot print one over 4300 digits.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            if key == "epoch":
                meta.epoch = value
            elif meta.global_step is None:
                meta.global_step = value
    meta.extra["state_dict_key"] = where
    for key in ("hyper_parameters", "callbacks", "pytorch-lightning_version", "loops"):
        if key in root:
            meta.extra[key] = to_plain(root[key])
    return meta


def _meta_from_strings(metadata: Mapping[str, str]) -> CheckpointMeta:
    meta = CheckpointMeta(extra={"metadata": dict(metadata)})
    for key in ("epoch", "global_step", "step"):
        value = metadata.get(key)
        # ASCII digits only ("²".isdigit() is True), and short enough for int().
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
            if key == "epoch":
                meta.epoch = int(value)
            elif meta.global_step is None:
                meta.global_step = int(value)
    return meta


def trainable_shapes(infos: list[TensorInfo]) -> list[tuple[str, tuple[int, ...]]]:
    """Tensors that look like parameters (what an optimizer would hold), in order."""
    from diag.stats import classify

    return [(i.name, i.shape) for i in infos if classify(i) not in ("bn_buffer", "buffer")]


def _optimizer_from_root(root: Any, table: TorchZipTable, archive: Any) -> OptimizerState | None:
    if not isinstance(root, Mapping):
        return None
    for key in OPTIMIZER_KEYS:
        blob = root.get(key)
        if isinstance(blob, list) and blob:
            blob = blob[0]  # Lightning keeps one state dict per optimizer
        state = parse_optimizer(blob, trainable_shapes(table.infos()), archive.read)
        if state is not None:
            return state
    return None


# ---------------------------------------------------------------- sharded


class ShardedTable:
    def __init__(self, path: Path, shards: dict[str, ParamTable], order: list[str]) -> None:
        self.path = path
        self._shards = shards
        self.format = f"sharded {next(iter(shards.values())).format}" if shards else "sharded"
        by_name = {}
        for shard in shards.values():
            for info in shard.infos():
                by_name[info.name] = (info, shard)
        self._by_name = by_name
        self._order = order

    def infos(self) -> list[TensorInfo]:
        return [self._by_name[n][0] for n in self._order]

    def read(self, name: str) -> torch.Tensor:
        return self._by_name[name][1].read(name)

    def span(self, name: str) -> FileSpan | None:
        return table_span(self._by_name[name][1], name)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


def _open_sharded(path: Path, shown: str) -> Checkpoint:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (
        OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError,
        RecursionError,
    ):  # fmt: skip
        raise InputError(path, "not a sharded checkpoint index (no weight_map)") from None
    if not all(isinstance(v, str) and "\0" not in v for v in weight_map.values()):
        raise InputError(path, "weight_map values must be shard file names")
    folder = path.parent.resolve()
    shards: dict[str, ParamTable] = {}
    for shard_name in dict.fromkeys(weight_map.values()):
        shard_path = path.parent / shard_name
        real = Path(os.path.realpath(shard_path))
        if shard_path.is_symlink() or folder not in real.parents:
            raise InputError(path, f"shard {shard_name!r} is outside the checkpoint's folder")
        if not shard_path.is_file():
            raise InputError(path, f"shard {shard_name!r} is missing")
        if shard_path.name.endswith(".index.json"):  # would recurse, possibly forever
            raise InputError(path, f"shard {shard_name!r} is an index, not a weights file")
        shards[shard_name] = open_checkpoint(shard_path).table
    held = {name: shard for shard in shards.values() for name in (i.name for i in shard.infos())}
    for name, shard_name in weight_map.items():
        if held.get(name) is not shards[shard_name]:
            raise InputError(path, f"index maps {name!r} to {shard_name!r}, which does not hold it")
    order = [n for n in held if n in weight_map]
    table = ShardedTable(path, shards, order)
    meta = CheckpointMeta(extra={"metadata": to_plain(index.get("metadata", {}))})
    return Checkpoint(shown, table, meta)
