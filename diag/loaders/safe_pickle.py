"""A restricted unpickler for checkpoint pickles that never runs code from the file.

Built the way torch's `weights_only` unpickler is: every global the pickle names goes
through `find_class`, and only four kinds of object ever come back from it:

1. diag's own re-implementations of torch's tensor-rebuild functions, which return lazy
   `TensorRef`s (no bytes are read while unpickling);
2. a few plain builtin containers (`OrderedDict`, `set`, `frozenset`, ...);
3. an inert `Opaque` class standing in for any other class (a Lightning `AttributeDict`, an
   enum, a `pathlib` path, a user config object): it records its name, arguments and state
   and never imports or calls the real thing;
4. a `Reference` to a function, which raises `CodeInPickle` if the pickle tries to call it.

Globals from modules that exist to run code (`os`, `subprocess`, `builtins.eval`, ...)
are refused as soon as they are named, as picklescan does.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

# Modules and names whose only use in a checkpoint is to run code on load (picklescan's list
# plus torch's own code-loading entry points).
DENIED_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "socket", "runpy", "pickle", "_pickle",
        "shutil", "importlib", "ctypes", "pip", "pydoc", "code", "codeop", "pty", "marshal",
        "types", "webbrowser", "multiprocessing", "asyncio", "threading", "signal", "http",
        "urllib", "requests", "ftplib", "smtplib", "telnetlib", "tempfile", "glob", "io",
        "_io", "platform", "commands", "timeit", "cProfile", "profile", "pdb", "bdb", "trace",
        "dill", "cloudpickle", "joblib", "numpy.testing", "torch.hub", "torch.jit",
        "torch.utils.cpp_extension", "torch._inductor", "torch._dynamo", "torch.serialization",
        "torch.package", "torch._ops", "functools", "operator", "inspect", "ast", "builtins",
        "__builtin__", "_operator", "_functools", "_posixsubprocess", "venv",
        "zipimport", "site", "sysconfig", "distutils", "setuptools",
    }
)  # fmt: skip
SAFE_BUILTINS = {
    "set": set, "frozenset": frozenset, "slice": slice, "complex": complex,
    "tuple": tuple, "list": list, "dict": dict, "int": int, "float": float, "str": str,
    "bool": bool,
}  # fmt: skip
# Not range, bytes or bytearray: `bytes(10**12)` or `list(range(10**9))` is a two-line
# pickle that exhausts memory, and torch never pickles them as calls.
TORCH_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
     "float8_e4m3fnuz", "float8_e5m2fnuz", "int64", "int32", "int16", "int8", "uint8",
     "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "double", "float",
     "half", "long", "int", "short"}
)  # fmt: skip
DTYPE_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64",
                 "int": "int32", "short": "int16"}  # fmt: skip
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}  # fmt: skip
# Classes that look like functions (lower case) but are inert data in practice.
INERT_LOWERCASE = frozenset(
    {
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.ndarray", "numpy.dtype", "collections.defaultdict", "collections.deque",
        "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
        "datetime.timezone", "uuid.UUID", "decimal.Decimal", "fractions.Fraction",
        "copyreg._reconstructor", "torch.device",
    }
)  # fmt: skip
MAX_PICKLE_BYTES = 256 * 1024 * 1024
MAX_PLAIN_NODES = 10_000  # to_plain stops describing metadata after this many values
EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})
MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
MEMO_SLACK = 1_000_000  # memo slots allowed beyond one per opcode: at most 16 MB of memo


class CodeInPickle(Exception):
    """The pickle names or calls something that runs code."""

    def __init__(self, name: str, called: bool) -> None:
        self.name = name
        verb = "calls" if called else "imports"
        super().__init__(f"the pickle {verb} {name}; loading it would run code")


class UnsupportedPickle(Exception):
    """The pickle is well-formed but uses something diag does not read."""


class _NoState:
    """Refuses pickle's BUILD, which would write into `__dict__` past any validation."""

    def __setstate__(self, state: Any) -> None:
        raise UnsupportedPickle(f"the pickle rewrites diag's {type(self).__name__}")


@dataclass(frozen=True)
class StorageRef(_NoState):
    key: str
    dtype: str  # dtype of the storage's elements; "uint8" for untyped storages
    numel: int  # elements (typed) or bytes (untyped)
    untyped: bool


@dataclass(frozen=True)
class TensorRef(_NoState):
    """A tensor the pickle describes, not yet read: its storage, offset, size and stride."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    is_parameter: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size


class Opaque(dict):
    """An object the pickle described but diag did not build. Never calls anything.

    It is a dict so that dict subclasses (Lightning's AttributeDict) keep their items.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        inst = super().__new__(cls)
        inst.args = args
        inst.state = None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("diag placeholders are not picklable")

    def __repr__(self) -> str:
        return f"<{self.global_name} (not loaded)>"


class Reference(_NoState):
    """A function the pickle names. Naming it is harmless; calling it is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CodeInPickle(self.name, called=True)

    def __repr__(self) -> str:
        return f"<function {self.name} (not loaded)>"


class _StorageType(_NoState):
    def __init__(self, dtype: str, untyped: bool) -> None:
        self.dtype = dtype
        self.untyped = untyped


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    return _make_ref(storage, offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    *rest: Any,
) -> TensorRef:
    if not isinstance(dtype, _Dtype):
        raise UnsupportedPickle("tensor with an unknown dtype")
    return _make_ref(storage, offset, size, stride, dtype.name)


def _make_ref(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise UnsupportedPickle("tensor without a storage in the archive")
    size, stride = _int_tuple(size), _int_tuple(stride)
    if not isinstance(offset, int) or offset < 0 or len(size) != len(stride):
        raise UnsupportedPickle("tensor with an invalid offset, size or stride")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UnsupportedPickle("tensor with a negative size or stride")
    return TensorRef(storage, offset, size, stride, dtype or storage.dtype)


def _int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise UnsupportedPickle("tensor with a non-integer size or stride")
    return tuple(value)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    if isinstance(data, TensorRef):
        return TensorRef(data.storage, data.offset, data.size, data.stride, data.dtype, True)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func not in _TENSOR_FUNCS.values():
        raise CodeInPickle(getattr(func, "name", repr(func)), called=True)
    return func(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsupportedPickle("unexpected _codecs.encode call")
    return text.encode("latin1")


class _Dtype(_NoState):
    def __init__(self, name: str) -> None:
        self.name = DTYPE_ALIASES.get(name, name)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _unsupported_tensor(*args: Any) -> Opaque:
    return _opaque_class("torch.<unsupported tensor>")(*args)


_TENSOR_FUNCS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor_v2,  # torch <= 0.3: the same first four
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_meta_tensor_no_storage": _unsupported_tensor,
    "torch._utils._rebuild_sparse_tensor": _unsupported_tensor,
    "torch._utils._rebuild_qtensor": _unsupported_tensor,
    "torch._utils._rebuild_device_tensor_from_numpy": _unsupported_tensor,
    "torch._utils._rebuild_wrapper_subclass": _unsupported_tensor,
    "torch._utils._rebuild_nested_tensor": _unsupported_tensor,
    "_codecs.encode": _codecs_encode,
}
_OPAQUE_CLASSES: dict[str, type[Opaque]] = {}


def _opaque_class(name: str) -> type[Opaque]:
    cls = _OPAQUE_CLASSES.get(name)
    if cls is None:
        cls = type("Opaque", (Opaque,), {"global_name": name})
        _OPAQUE_CLASSES[name] = cls
    return cls


def _denied(module: str, name: str) -> bool:
    parts = module.split(".")
    prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
    return bool(prefixes & DENIED_MODULES) and not (
        module in ("builtins", "__builtin__") and name in SAFE_BUILTINS
    )


def resolve_global(module: str, name: str) -> Any:
    """What diag puts in place of the global `module.name`. Raises CodeInPickle if denied."""
    full = f"{module}.{name}"
    if full in _TENSOR_FUNCS:
        return _TENSOR_FUNCS[full]
    if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
        return SAFE_BUILTINS[name]
    if full == "collections.OrderedDict":
        return OrderedDict
    if _denied(module, name):
        raise CodeInPickle(full, called=False)
    # torch.cuda.FloatStorage & co: what torch before 1.6 pickled for a GPU tensor's storage.
    if module in ("torch", "torch.storage", "torch.cuda") and name in STORAGE_DTYPES:
        return _StorageType(STORAGE_DTYPES[name], untyped=name == "UntypedStorage")
    if module == "torch" and name in TORCH_DTYPES:
        return _Dtype(name)
    if full == "torch.Size":
        return tuple
    if full in INERT_LOWERCASE or (name[:1].isupper() and name.isidentifier()):
        return _opaque_class(full)
    return Reference(full)


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals all come from `resolve_global`."""

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsupportedPickle("a global with a non-string name")
        # Python 2 names (protocols 0-2 write `copy_reg`, `__builtin__`), renamed as pickle's
        # own find_class does; the renamed global then goes through the same checks.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        return resolve_global(module, name)

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsupportedPickle(f"unknown persistent id {type(pid).__name__}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise UnsupportedPickle("storage of an unknown type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise UnsupportedPickle("storage with an invalid key or size")
        return StorageRef(key, stype.dtype, numel, stype.untyped)


def restricted_loads(
    data: bytes, unpickler: Callable[[IO[bytes]], RestrictedUnpickler] = RestrictedUnpickler
) -> Any:
    """Unpickle checkpoint metadata. Raises CodeInPickle or UnsupportedPickle, never runs code.

    `unpickler` is RestrictedUnpickler or a subclass that reads another layout's persistent
    ids (the legacy torch format's); find_class stays the same for every layout.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsupportedPickle(f"pickle of {len(data)} bytes is over the {MAX_PICKLE_BYTES} cap")
    try:
        _prescan(data)
        return unpickler(io.BytesIO(data)).load()
    except (CodeInPickle, UnsupportedPickle):
        raise
    except RecursionError:
        raise UnsupportedPickle("pickle nested too deeply") from None
    except Exception as exc:  # any malformed pickle: one clean error, never a traceback
        raise UnsupportedPickle(f"malformed pickle ({type(exc).__name__}: {exc})") from None


def _prescan(data: bytes) -> None:
    """Refuse what the C unpickler would act on before any `find_class` could stop it.

    - EXT1/EXT2/EXT4 (copyreg extension codes): the C unpickler answers one from the
      process-wide `copyreg._extension_cache` when it can, without calling `find_class`,
      so a code that ordinary unpickling resolved earlier would hand over the real
      function. torch never writes these opcodes.
    - A memo index far beyond the number of opcodes: the C unpickler grows its memo array
      to twice the index and zeroes it, so `LONG_BINPUT 0x58000000` alone allocates 24 GB
      (found by fuzzing). Picklers number memo slots from 0, one per PUT.

    Malformed streams raise ValueError, reported as malformed.
    """
    for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
        if opcode.name in EXTENSION_OPCODES:
            raise UnsupportedPickle("the pickle uses copyreg extension codes (EXT opcodes)")
        if opcode.name in MEMO_OPCODES and int(arg) > MEMO_SLACK + count:
            raise UnsupportedPickle(f"memo index {arg} is out of range for the pickle's size")


def to_plain(value: Any, depth: int = 0, _budget: list[int] | None = None) -> Any:
    """A JSON-friendly copy of unpickled metadata (placeholders become descriptions).

    At most MAX_PLAIN_NODES values are described: a pickle can share one list many times
    over ("billion laughs"), which is small in the file but huge as a tree.
    """
    budget = [MAX_PLAIN_NODES] if _budget is None else _budget
    budget[0] -= 1
    if depth > 20 or budget[0] < 0:
        return "..."
    if isinstance(value, Opaque):
        name = value.global_name
        if name.startswith("pathlib.") and all(isinstance(a, str) for a in value.args):
            # Paths pickle as their parts ("/", "data", ...); pure paths only join strings.
            from pathlib import PurePosixPath, PureWindowsPath

            pure = PureWindowsPath if "Windows" in name else PurePosixPath
            return str(pure(*value.args))
        if name.endswith("multiarray.scalar"):
            return _numpy_scalar(value)
        if name == "copyreg._reconstructor" and len(value.args) == 3 and value.args[2]:
            return to_plain(value.args[2], depth + 1, budget)  # protocol 0/1 dict subclass
        if len(value) and not value.args:
            return {_text(k): to_plain(v, depth + 1, budget) for k, v in value.items()}
        if len(value.args) == 1 and isinstance(value.args[0], str | int | float | bool):
            return value.args[0]  # enums pickle as (cls, (value,))
        if isinstance(value.state, dict):
            return {_text(k): to_plain(v, depth + 1, budget) for k, v in value.state.items()}
        return repr(value)
    if isinstance(value, Reference | _Dtype):
        return repr(value)
    if isinstance(value, TensorRef):
        return {"tensor": list(value.size), "dtype": value.dtype}
    if isinstance(value, dict):
        return {_text(k): to_plain(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v, depth + 1, budget) for v in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, int) and value.bit_length() > 10_000:
        return f"<{value.bit_length()}-bit int>"  # str() refuses over 4300 digits
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return _text(value)


def _text(value: Any) -> str:
    """str() of a key or an unknown object; a pickle can make one that str() cannot print."""
    try:
        return value if isinstance(value, str) else str(value)
    except (ValueError, RecursionError):  # an int over 4300 digits, a deeply nested value
        return f"<unprintable {type(value).__name__}>"


def _numpy_scalar(value: Opaque) -> Any:
    import numpy as np

    try:
        dtype_obj, raw = value.args
        code = dtype_obj.args[0]
        dtype = np.dtype(code)
        if dtype.kind not in "biuf" or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
            return repr(value)
        return np.frombuffer(raw, dtype=dtype)[0].item()
    except Exception:
        return repr(value)
