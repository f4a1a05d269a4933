"""Property tests of the safetensors reader: arbitrary bytes and arbitrary headers never
escape as anything but InputError, and whatever it accepts it reads as safetensors does.

The header reader is what stands between a hostile file and a read at an arbitrary
offset: every accepted header must describe spans that tile the data exactly.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save

from diag.errors import InputError
from diag.loaders.checkpoint import open_checkpoint
from diag.loaders.safetensors_table import DTYPES, ITEMSIZE, read_header
from diag.run import Run

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
OFFSET = st.one_of(st.integers(-2, 64), st.integers(2**62, 2**64), st.floats(), st.text(max_size=3))
ENTRY = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=5)),
            "shape": st.one_of(st.lists(st.integers(-1, 5), max_size=3), JSON),
            "data_offsets": st.one_of(st.lists(OFFSET, min_size=2, max_size=2), JSON),
        }
    ),
)
HEADER = st.dictionaries(st.text(max_size=10), ENTRY, max_size=4)


def _file(folder: Path, raw_header: bytes, data: bytes, declared: int | None = None) -> Path:
    path = folder / "model.safetensors"
    n = len(raw_header) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + raw_header + data)
    return path


def _check_all(path: Path) -> None:
    """What `diag check` does with the file: open it and stream every tensor."""
    checkpoint = open_checkpoint(path)
    Run(checkpoint=checkpoint).prepare()


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        with contextlib.suppress(InputError):
            _check_all(path)


@SETTINGS
@given(
    HEADER,
    st.one_of(st.none(), JSON),
    st.binary(max_size=200),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_arbitrary_headers(
    header: dict, metadata: object, data: bytes, declared: int | None
) -> None:
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    raw = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), raw, data, declared)
        try:
            entries, meta, start = read_header(path)
        except InputError:
            return
        # Accepted: the spans tile the data exactly, so no read can leave the file.
        spans = sorted(tuple(e["data_offsets"]) for e in entries.values())
        pos = 0
        for lo, hi in spans:
            assert lo == pos
            pos = hi
        assert start + pos == path.stat().st_size
        assert isinstance(meta, dict)
        with contextlib.suppress(InputError):
            _check_all(path)


@SETTINGS
@given(st.binary(min_size=1, max_size=400), st.integers(0, 10**6), st.integers(0, 255))
def test_mutated_real_files(seed_bytes: bytes, where: int, value: int) -> None:
    g = torch.Generator().manual_seed(len(seed_bytes))
    state = {"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "fc.bias": torch.zeros(3)}
    data = bytearray(save(state, metadata={"step": "3"}))
    data[where % len(data)] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(bytes(data))
        with contextlib.suppress(InputError):
            _check_all(path)


TORCH_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.uint8,
]


@SETTINGS
@given(
    st.dictionaries(
        # `__metadata__` is the format's reserved key: safetensors writes a tensor of that
        # name, and its own reader then rejects the file (diag: a one-line error, exit 2).
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
            lambda name: name != "__metadata__"
        ),
        st.tuples(st.sampled_from(TORCH_DTYPES), st.lists(st.integers(0, 4), max_size=3)),
        min_size=1,
        max_size=4,
    )
)
def test_whatever_safetensors_writes_is_read_the_same(spec: dict) -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        name: (torch.randn(shape, generator=g) * 3).to(dtype)
        for name, (dtype, shape) in spec.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(save(state))
        expected = load_file(path)
        entries, _, _ = read_header(path)
        assert set(entries) == set(state)
        table = open_checkpoint(path).table
        for name, tensor in expected.items():
            entry = entries[name]
            lo, hi = entry["data_offsets"]
            assert hi - lo == tensor.numel() * ITEMSIZE[DTYPES[entry["dtype"]]]
            got = table.read(name)
            assert got.shape == tensor.shape and got.dtype == tensor.dtype
            assert torch.equal(
                got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
            )
        Run(checkpoint=open_checkpoint(path)).prepare()
