"""ONNX models: the weights in initializers, Constant nodes and subgraphs, read lazily and safely.

The model is parsed with its external data left on disk. An external tensor's `location` is
attacker-controlled (CVE-2022-25882, CVE-2024-27318, CVE-2026-27489, CVE-2026-34446), so every
reference is checked when the table is opened: containment in the model's folder, no symlinks,
no hard links, a regular file, and a byte range that fits the file and the tensor. Bytes are
then read one tensor at a time. Nothing here runs the model or asks onnx to touch other files.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from diag.errors import InputError
from diag.loaders.onnx_graph import weight_positions
from diag.loaders.table import ITEMSIZE, TensorInfo

if TYPE_CHECKING:
    import torch
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto

MAX_DEPTH = 64
# How many Identity/Transpose/Cast/DequantizeLinear nodes to follow from a weight to its layer.
MAX_CHAIN = 16
_READ_CHUNK = 1 << 30  # Linux reads at most ~2 GiB per call

# Numbers fixed by onnx.proto, spelled out so that importing this module does not import onnx.
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
    15: "complex128", 16: "bfloat16",
}  # fmt: skip
_PARAM_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_GRAPHS = 4, 5, 10
_DEFAULT_DOMAINS = ("", "ai.onnx")
_PASS_THROUGH = frozenset({"Identity", "Transpose", "Cast", "DequantizeLinear"})
_NORMS = frozenset(
    {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}
)


@dataclass(frozen=True)
class _Span:
    """An external tensor's byte range, and the file identity that was checked at open time."""

    file: str
    offset: int
    length: int
    dev: int
    ino: int


@dataclass(frozen=True)
class _Found:
    raw_name: str
    scope: str
    tensor: TensorProto


@dataclass
class _Collector:
    """Tensors and nodes gathered from the main graph, its subgraphs and local functions."""

    path: Path
    found: list[_Found] = field(default_factory=list)
    nodes: list[NodeProto] = field(default_factory=list)

    def graph(self, graph: GraphProto, scope: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise InputError(self.path, f"subgraphs nested deeper than {MAX_DEPTH} levels")
        self.found.extend(_Found(_text(t.name), scope, t) for t in graph.initializer)
        self.node_list(graph.node, scope, depth)

    def node_list(self, nodes: Iterable[NodeProto], scope: str, depth: int) -> None:
        for index, node in enumerate(nodes):
            self.nodes.append(node)
            label = f"{scope}/{_text(node.name) or f'{_text(node.op_type)}_{index}'}".lstrip("/")
            for attr in node.attribute:
                if attr.type == _ATTR_GRAPH:
                    self.graph(attr.g, f"{label}.{_text(attr.name)}", depth + 1)
                elif attr.type == _ATTR_GRAPHS:
                    for k, sub in enumerate(attr.graphs):
                        self.graph(sub, f"{label}.{_text(attr.name)}[{k}]", depth + 1)
                elif _is_constant_value(node, attr.name, attr.type):
                    self.found.append(_Found(_text(node.output[0]), scope, attr.t))


def _text(value: str | bytes) -> str:
    """ONNX is proto2: a string field holding invalid UTF-8 comes back as bytes (found by
    fuzzing: it crashed the name handling downstream)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _is_constant_value(node: NodeProto, attr_name: str, attr_type: int) -> bool:
    # value_float/value_ints are scalars or shapes and sparse_value is not a dense weight.
    return (
        node.op_type == "Constant"
        and node.domain in _DEFAULT_DOMAINS
        and attr_name == "value"
        and attr_type == _ATTR_TENSOR
        and len(node.output) > 0
    )


class OnnxTable:
    """The floating-point weights of an ONNX model as a lazy `ParamTable`."""

    format = "onnx"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._base = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))
        model = _load(self.path)
        collector = _Collector(self.path)
        collector.graph(model.graph, "", 0)
        for func in model.functions:
            collector.node_list(func.node, f"{func.domain}:{func.name}", 1)
        self._tensors: dict[str, tuple[TensorProto, _Span | None]] = {}
        self._positions = weight_positions(model.graph)
        self._infos = self._index(collector)

    def _index(self, collector: _Collector) -> list[TensorInfo]:
        uses = _consumers(collector.nodes)
        kept = [f for f in collector.found if _dtype(f.tensor) in _PARAM_DTYPES]
        infos = []
        for found, name in zip(kept, _unique_names(kept), strict=True):
            tensor = found.tensor
            shape = self._shape(tensor, name)
            dtype = _ONNX_DTYPES[tensor.data_type]
            span = self._external(tensor, name, shape)
            if span is None:
                self._check_embedded(tensor, name, shape, dtype)
            op, units_axis = _hint(found.raw_name, len(shape), uses)
            position = None if found.scope else self._positions.get(found.raw_name)
            infos.append(
                TensorInfo(name, shape, dtype, units_axis=units_axis, op=op, position=position)
            )
            self._tensors[name] = (tensor, span)
        # Tensors that are not parameters are never read, but a hostile reference still
        # marks the model as hostile, so it fails here rather than halfway through a run.
        for found in collector.found:
            if _dtype(found.tensor) not in _PARAM_DTYPES:
                tensor, name = found.tensor, found.raw_name
                self._external(tensor, name, self._shape(tensor, name))
        return infos

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read now; KeyError for a name that `infos()` does not list."""
        import torch

        tensor, span = self._tensors[name]
        shape = tuple(tensor.dims)
        dtype = getattr(torch, _ONNX_DTYPES[tensor.data_type])
        if math.prod(shape) == 0:
            return torch.empty(shape, dtype=dtype)
        if span is not None:
            flat = torch.frombuffer(self._read_span(span, name), dtype=dtype)
        else:
            flat = _embedded(tensor, dtype)
        return flat.reshape(shape)

    def close(self) -> None:
        self._tensors = {}

    def __enter__(self) -> OnnxTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shape(self, tensor: TensorProto, name: str) -> tuple[int, ...]:
        shape = tuple(int(d) for d in tensor.dims)
        if any(d < 0 for d in shape):
            raise InputError(self.path, f"tensor {name!r} has a negative dimension {list(shape)}")
        return shape

    def _check_embedded(self, tensor: TensorProto, name: str, shape: tuple, dtype: str) -> None:
        itemsize = ITEMSIZE[dtype]
        if tensor.HasField("raw_data"):
            held = len(tensor.raw_data)
        else:
            held = len(getattr(tensor, _TYPED_FIELD[dtype])) * itemsize
        need = math.prod(shape) * itemsize
        if held != need:
            raise InputError(
                self.path,
                f"tensor {name!r} holds {held} bytes, its shape {list(shape)} needs {need}",
            )

    def _external(self, tensor: TensorProto, name: str, shape: tuple) -> _Span | None:
        """Check an external reference before any byte of it is read; None if embedded."""
        if tensor.data_location != _EXTERNAL:
            return None
        location, offset, length = self._external_fields(tensor, name)
        file, st = self._locate(location, name)
        if offset > st.st_size or (length is not None and offset + length > st.st_size):
            raise InputError(
                self.path,
                f"external data for {name!r} runs past the end of {location!r} "
                f"(offset {offset}, length {length}, file size {st.st_size})",
            )
        if length is None:
            length = st.st_size - offset
        itemsize = ITEMSIZE.get(_dtype(tensor) or "", 0)  # 0: strings, unknown types
        need = math.prod(shape) * itemsize
        if itemsize and length != need:
            raise InputError(
                self.path,
                f"external data for {name!r} is {length} bytes, "
                f"its shape {list(shape)} and dtype need {need}",
            )
        return _Span(file, offset, length, st.st_dev, st.st_ino)

    def _external_fields(self, tensor: TensorProto, name: str) -> tuple[str, int, int | None]:
        values: dict[str, str] = {}
        for entry in tensor.external_data:
            if entry.key in values:
                raise InputError(self.path, f"external data for {name!r} repeats {entry.key!r}")
            values[entry.key] = entry.value
        location = values.get("location", "")
        offset = self._count(values.get("offset", "0"), "offset", name)
        length = values.get("length")
        return location, offset, None if length is None else self._count(length, "length", name)

    def _count(self, text: str, key: str, name: str) -> int:
        if not (text.isascii() and text.isdecimal() and len(text) <= 20):
            raise InputError(self.path, f"external data for {name!r} has a bad {key} {text!r}")
        return int(text)

    def _locate(self, location: str, name: str) -> tuple[str, os.stat_result]:
        """The checked file behind `location`, and its lstat."""
        fail = f"external data for {name!r}"
        if not location or "\x00" in location:
            raise InputError(self.path, f"{fail} has no usable location")
        windows = PureWindowsPath(location)
        if PurePosixPath(location).is_absolute() or windows.drive or windows.root:
            raise InputError(self.path, f"{fail} has an absolute location {location!r}")
        target = os.path.realpath(os.path.join(self._base, location))
        if target == self._base or os.path.commonpath([self._base, target]) != self._base:
            raise InputError(self.path, f"{fail} points outside the model folder ({location!r})")
        parts = [p for p in location.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InputError(self.path, f"{fail} has '..' in its location {location!r}")
        return self._walk_parts(parts, location, fail)

    def _walk_parts(self, parts: list[str], location: str, fail: str) -> tuple[str, os.stat_result]:
        # realpath already followed links; lstat each step so a link inside the folder is
        # refused too, since it can be swapped for one pointing elsewhere before the read.
        current = self._base
        for depth, part in enumerate(parts, start=1):
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                raise InputError(self.path, f"{fail}: file {location!r} is missing") from None
            except OSError as exc:
                raise InputError(self.path, f"{fail}: {location!r}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                what = "is a symlink" if depth == len(parts) else f"goes through symlink {part!r}"
                raise InputError(self.path, f"{fail}: {location!r} {what}")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(self.path, f"{fail}: {location!r} is not a regular file")
        if st.st_nlink != 1:
            raise InputError(self.path, f"{fail}: {location!r} has {st.st_nlink} hard links")
        return current, st

    def _read_span(self, span: _Span, name: str) -> bytearray:
        # O_NOFOLLOW and the identity check close most of the window between the checks at
        # open time and this read (Windows has no O_NOFOLLOW; the identity check remains).
        try:
            fd = os.open(span.file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise InputError(self.path, f"external data for {name!r}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if (
                (st.st_dev, st.st_ino) != (span.dev, span.ino)
                or st.st_nlink != 1
                or st.st_size < span.offset + span.length
            ):
                raise InputError(self.path, f"external data for {name!r} changed on disk")
            return self._pread_exact(fd, span, name)
        finally:
            os.close(fd)

    def _pread_exact(self, fd: int, span: _Span, name: str) -> bytearray:
        buf = bytearray(span.length)
        view = memoryview(buf)
        got = 0
        while got < span.length:
            chunk = view[got : got + _READ_CHUNK]
            n = os.preadv(fd, [chunk], span.offset + got)
            if n <= 0:
                raise InputError(self.path, f"external data for {name!r} ends early")
            got += n
        return buf


_TYPED_FIELD = {
    "float32": "float_data",
    "float64": "double_data",
    "float16": "int32_data",  # the spec keeps 16-bit floats' bit patterns in int32_data
    "bfloat16": "int32_data",
}


def _load(path: Path) -> ModelProto:
    import onnx

    try:
        empty = path.stat().st_size == 0
        # format= pins the binary parser; otherwise a file's extension could pick text or JSON.
        model = onnx.load(str(path), format="protobuf", load_external_data=False)
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({exc.strerror or exc})") from None
    except Exception as exc:  # protobuf's errors differ by backend: DecodeError, RuntimeError...
        raise InputError(path, f"not a readable ONNX model ({_first_line(exc)})") from None
    if model.ir_version <= 0:
        # Empty input is a valid, empty protobuf message; a real model always has ir_version.
        why = "empty file" if empty else "no ir_version"
        raise InputError(path, f"not a readable ONNX model ({why})")
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(exc).__name__}: {message[:160]}" if message else type(exc).__name__


def _dtype(tensor: TensorProto) -> str | None:
    return _ONNX_DTYPES.get(tensor.data_type)


def _embedded(tensor: TensorProto, dtype: torch.dtype) -> torch.Tensor:
    import numpy as np
    import torch

    # ONNX raw_data is little-endian, as are the hosts torch runs on.
    if tensor.HasField("raw_data"):
        return torch.frombuffer(bytearray(tensor.raw_data), dtype=dtype)
    if dtype == torch.float32:
        return torch.from_numpy(np.asarray(tensor.float_data, dtype=np.float32))
    if dtype == torch.float64:
        return torch.from_numpy(np.asarray(tensor.double_data, dtype=np.float64))
    bits = (np.asarray(tensor.int32_data, dtype=np.int64) & 0xFFFF).astype(np.uint16)
    return torch.from_numpy(bits).view(dtype)


def _unique_names(found: list[_Found]) -> list[str]:
    """Graph names where unique; a clash gets its subgraph path, then a counter, never dropped."""
    names: list[str] = []
    taken: set[str] = set()
    counters: dict[str, int] = {}
    for item in found:
        name = item.raw_name or "(unnamed)"
        if name in taken and item.scope:
            name = f"{name}@{item.scope}"
        base = name
        while name in taken:
            counters[base] = counters.get(base, 1) + 1
            name = f"{base}#{counters[base]}"
        taken.add(name)
        names.append(name)
    return names


def _consumers(nodes: list[NodeProto]) -> dict[str, list[tuple[NodeProto, int]]]:
    uses: dict[str, list[tuple[NodeProto, int]]] = {}
    for node in nodes:
        if node.domain in _DEFAULT_DOMAINS:
            for index, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, index))
    return uses


def _direct_hint(node: NodeProto, index: int) -> tuple[str, int] | None:
    op = node.op_type
    if index == 1 and op in ("Conv", "ConvTranspose"):
        return "conv", 1 if op == "ConvTranspose" else 0
    if index == 1 and op == "Gemm":
        return "linear", 0 if _attr_int(node, "transB", 0) == 1 else 1
    if index == 1 and op == "MatMul":
        return "linear", 1  # ONNX MatMul weights are (in, out)
    if index == 0 and op == "Gather":
        return "embedding", 0
    if index in (1, 2) and op in _NORMS:
        return "norm", 0
    return None


def _hint(raw_name: str, rank: int, uses: dict) -> tuple[str | None, int]:
    """(op, units_axis) from the first layer that uses the tensor, through pass-through nodes."""
    axes = list(range(rank))  # axes[k]: the stored axis that is axis k after the transposes
    name = raw_name
    for _ in range(MAX_CHAIN):
        step = None
        for node, index in uses.get(name, ()):
            hint = _direct_hint(node, index)
            if hint is not None:
                op, axis = hint
                return op, axes[axis] if axis < len(axes) else 0
            if step is None and index == 0 and node.op_type in _PASS_THROUGH and node.output:
                step = node
        if step is None:
            break
        if step.op_type == "Transpose":
            axes = _transposed(axes, step)
            if axes is None:
                break
        name = step.output[0]
    return None, 0


def _transposed(axes: list[int], node: NodeProto) -> list[int] | None:
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    if perm is None:
        perm = list(reversed(range(len(axes))))
    if sorted(perm) != list(range(len(axes))):
        return None
    return [axes[p] for p in perm]


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)
