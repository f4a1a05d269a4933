"""The legacy (pre-1.6, non-zip) torch format on files torch itself writes, and broken ones.

`torch.save(..., _use_new_zipfile_serialization=False)` still writes the format, so every
fixture here is real; the broken ones are real files with one section cut, forged or
swapped. torch.load(weights_only=True) appears only as the reference to compare against.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers_pickles import Payload, touch_marker

from diag.errors import InputError
from diag.loaders.checkpoint import open_checkpoint, sniff
from diag.loaders.legacy_torch import MAGIC_NUMBER, PROTOCOL_VERSION

DIAG = [sys.executable, "-m", "diag"]


def legacy_bytes(obj: object) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


def sections(data: bytes) -> list[int]:
    """End offsets of the five pickles (magic, version, sys info, object, key list)."""
    ends, pos = [], 0
    for _ in range(5):
        stop = next(p for op, _a, p in pickletools.genops(data[pos:]) if op.name == "STOP")
        pos += stop + 1
        ends.append(pos)
    return ends


def raw(t: torch.Tensor) -> bytes:
    """A tensor's elements as bytes, in row-major order."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(path: Path, expected: dict[str, torch.Tensor]) -> None:
    reference = torch.load(path, weights_only=True)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy"
    assert [i.name for i in ckpt.table.infos()] == list(expected)
    for info in ckpt.table.infos():
        got, want = ckpt.table.read(info.name), reference[info.name]
        assert info.shape == tuple(want.shape) and info.dtype == str(want.dtype)[6:], info
        assert got.dtype == want.dtype and got.shape == want.shape, info.name
        assert raw(got) == raw(want) == raw(expected[info.name]), info.name
    ckpt.table.close()


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InputError) as exc:
        ckpt = open_checkpoint(path)
        for info in ckpt.table.infos():
            ckpt.table.read(info.name)
    text = str(exc.value)
    assert str(path) in text and "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


# ------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def state() -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return OrderedDict(
        [
            ("conv.weight", torch.randn(4, 3, 3, 3)),
            ("conv.bias", torch.randn(4)),
            ("half.weight", torch.randn(5, 2).half()),
            ("bf16.weight", torch.randn(3, 7).bfloat16()),
            ("bn.num_batches_tracked", torch.tensor(17)),  # 0-d int64
            ("index", torch.arange(-3, 9, dtype=torch.int64)),
            ("mask", torch.tensor([True, False, True])),
            ("empty", torch.empty(0, 4)),
        ]
    )


def test_state_dict_round_trips_byte_for_byte(tmp_path, state):
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert sniff(path) == "torch-legacy"
    assert_identical(path, state)


def test_views_of_one_storage_offsets_and_strides(tmp_path):
    base = torch.arange(24, dtype=torch.float32)
    grid = base.view(4, 6)
    tensors = {
        "base": base,
        "grid": grid,
        "row2": grid[2],  # storage offset 12
        "col3": grid[:, 3],  # stride 6, offset 3
        "transposed": grid.t(),  # strides (1, 6)
        "every_other": grid[::2, 1::2],
        "scalar_view": base[5],  # 0-d with an offset
        "empty_view": base[24:],
    }
    path = tmp_path / "views.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=False)
    assert len(sections(path.read_bytes())) == 5
    assert_identical(path, tensors)


def test_cuda_storage_is_read_onto_the_cpu(tmp_path):
    """What torch before 1.6 wrote for a GPU model: torch.cuda.FloatStorage, 'cuda:0'."""
    weight = torch.randn(3, 2)
    data = legacy_bytes({"fc.weight": weight})
    assert data.count(b"ctorch\nFloatStorage\n") == 1 and data.count(b"X\x03\x00\x00\x00cpu") == 1
    data = data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    path = tmp_path / "gpu.pth"
    path.write_bytes(data)
    ckpt = open_checkpoint(path)
    got = ckpt.table.read("fc.weight")
    assert got.device.type == "cpu" and torch.equal(got, weight)
    assert ckpt.table._archive.locations == {next(iter(ckpt.table._archive.roots)): "cuda:0"}


def test_torch_0_3_tensor_rebuild_function(tmp_path):
    """Before 0.4, tensors were pickled as torch._utils._rebuild_tensor(storage, offset,
    size, stride): the same data, read the same way."""
    weight = torch.randn(4, 3)
    data = legacy_bytes({"fc.weight": weight})
    v2 = b"ctorch._utils\n_rebuild_tensor_v2\n"
    assert data.count(v2) == 1
    path = _write(tmp_path, data.replace(v2, b"ctorch._utils\n_rebuild_tensor\n"))
    assert torch.equal(open_checkpoint(path).table.read("fc.weight"), weight)


def test_tensors_stream_one_at_a_time(tmp_path, preadv_offsets, state):
    path = tmp_path / "lazy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    reads = preadv_offsets
    ckpt = open_checkpoint(path)
    assert [i.name for i in ckpt.table.infos()] == list(state)
    assert reads == []  # the pickles and the 8-byte storage counts only, no tensor data
    assert torch.equal(ckpt.table.read("conv.bias"), state["conv.bias"])
    assert len(reads) == 1
    span = ckpt.table.span("conv.weight")
    assert span is not None and span.nbytes == state["conv.weight"].numel() * 4
    assert span.crc32 is None  # the legacy format has no checksums


# ------------------------------------------------------------------ training checkpoints


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.fc2 = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(3, 2)  # not in forward: never receives a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _trained() -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(3):
        adam.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        adam.step()
    return model, adam


def _object_id_keys(model: Net, blob: dict) -> dict:
    """The state dict older torch wrote: state and groups keyed by id(param)."""
    ids = [id(p) for p in model.parameters()]
    assert min(ids) > 2**20  # memory addresses, nothing like positions
    return {
        "state": {ids[k]: v for k, v in blob["state"].items()},
        "param_groups": [
            dict(g, params=[ids[i] for i in g["params"]]) for g in blob["param_groups"]
        ],
    }


@pytest.mark.parametrize("keys", ["index", "object-id"])
def test_lightning_checkpoint_stuck_parameters(tmp_path, keys):
    model, adam = _trained()
    blob = adam.state_dict()
    if keys == "object-id":
        blob = _object_id_keys(model, blob)
    path = tmp_path / "epoch=2.ckpt"
    ckpt_obj = {
        "epoch": 2,
        "global_step": 3,
        "pytorch-lightning_version": "0.9.0",
        "state_dict": OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items()),
        "optimizer_states": [blob],
        "lr_schedulers": [],
    }
    torch.save(ckpt_obj, path, _use_new_zipfile_serialization=False)

    ckpt = open_checkpoint(path)
    assert ckpt.meta.global_step == 3 and ckpt.meta.epoch == 2
    opt = ckpt.optimizer
    assert opt is not None and opt.mapped and opt.kind == "adam", opt
    assert {n for n, p in opt.params.items() if not p.has_state} == {
        "model.unused.weight",
        "model.unused.bias",
    }
    exp_avg_sq = opt.read(opt.params["model.fc1.weight"].exp_avg_sq, "fc1")
    assert torch.equal(exp_avg_sq, adam.state[model.fc1.weight]["exp_avg_sq"])

    proc = subprocess.run(
        [*DIAG, "check", str(path), "--format", "json", "--select", "stuck-parameter"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    assert sorted(f["location"]["object"] for f in findings) == [
        "model.unused.bias",
        "model.unused.weight",
    ]


def test_object_ids_that_disagree_leave_the_optimizer_unmapped(tmp_path):
    """State under ids the groups do not list: no position mapping, so no stuck findings."""
    model, adam = _trained()
    blob = _object_id_keys(model, adam.state_dict())
    blob["param_groups"][0]["params"] = list(range(len(blob["param_groups"][0]["params"])))
    path = tmp_path / "half-converted.pt"
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": blob},
        path,
        _use_new_zipfile_serialization=False,
    )
    opt = open_checkpoint(path).optimizer
    assert opt is not None and not opt.mapped
    assert "which no parameter group lists" in (opt.unmapped_reason or "")


def test_legacy_batch_file(tmp_path):
    from diag.loaders.probe_inputs import read_batch

    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 0])
    path = tmp_path / "batch.pt"
    torch.save({"inputs": x, "targets": y}, path, _use_new_zipfile_serialization=False)
    inputs, targets = read_batch(str(path))
    assert isinstance(inputs, tuple) and torch.equal(inputs[0], x)
    assert targets is not None and torch.equal(targets, y)


# ------------------------------------------------------------------ broken and hostile


@pytest.fixture(scope="module")
def small() -> bytes:
    """Two storages (float32 and int64) after the five pickles."""
    return legacy_bytes({"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor(3)})


def _write(tmp_path: Path, data: bytes, name: str = "model.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncation_at_every_offset_is_an_input_error(tmp_path, small):
    """Each cut gives one InputError: in any pickle, a storage count, or a storage's bytes."""
    ends = sections(small)
    assert ends[-1] < len(small) - 16  # storages follow the five pickles
    for cut in range(1, len(small)):
        path = _write(tmp_path, small[:cut])
        text = refused(path)
        if cut >= ends[-1]:
            assert "truncated" in text, (cut, text)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [(0, "magic number"), (1, "protocol version"), (2, "system info"), (3, "checkpoint"),
     (4, "storage key list")],
)  # fmt: skip
def test_truncated_inside_each_pickle_names_it(tmp_path, small, section, fragment):
    ends = sections(small)
    start = ends[section - 1] if section else 0
    refused(_write(tmp_path, small[: (start + ends[section]) // 2]), "truncated", fragment)


def _storage_counts(data: bytes) -> list[int]:
    """File offsets of each storage's 8-byte element count."""
    pos, out = sections(data)[-1], []
    keys = pickle.loads(data[sections(data)[3] : sections(data)[4]])
    sizes = {}
    for key in keys:
        out.append(pos)
        count = int.from_bytes(data[pos : pos + 8], "little")
        sizes[key] = count
        pos += 8 + count * (8 if count == 1 else 4)  # the int64 scalar, or the float32 vector
    assert pos == len(data)
    return out


@pytest.mark.parametrize("count", [2**60, 2**64 - 1, 7, 0])
def test_forged_element_count(tmp_path, small, count):
    data = bytearray(small)
    at = _storage_counts(small)[0]
    data[at : at + 8] = count.to_bytes(8, "little")
    refused(_write(tmp_path, bytes(data)), "elements, the pickle says")


def test_forged_count_in_pickle_and_file_together(tmp_path):
    """Pickle and header agree on 2**60 floats: refused against the file size, no allocation."""
    data = legacy_bytes({"w": torch.zeros(3)})
    forged = data.replace(b"K\x03", b"\x8a\x08" + (2**60).to_bytes(8, "little"), 1)
    assert forged != data
    ends = sections(forged)
    forged = forged[: ends[-1]] + (2**60).to_bytes(8, "little") + forged[ends[-1] + 8 :]
    refused(_write(tmp_path, forged), "truncated", "past the end of the file")


def _swap_keys(data: bytes, keys: list[str]) -> bytes:
    ends = sections(data)
    return data[: ends[3]] + pickle.dumps(keys, protocol=2) + data[ends[4] :]


def test_key_list_that_disagrees_with_the_pickle(tmp_path, small):
    keys = pickle.loads(small[sections(small)[3] : sections(small)[4]])
    assert len(keys) == 2
    refused(_write(tmp_path, _swap_keys(small, keys[:1])), "not in the key list")
    refused(_write(tmp_path, _swap_keys(small, [*keys, "999"])), "no tensor uses it")
    refused(_write(tmp_path, _swap_keys(small, [keys[0], keys[0]])), "listed twice")
    refused(_write(tmp_path, _swap_keys(small, {"a": 1})), "not a list")  # type: ignore[arg-type]
    # Both keys, the other way round: each count then disagrees with its storage's size.
    refused(_write(tmp_path, _swap_keys(small, keys[::-1])), "elements, the pickle says")


def test_trailing_bytes_after_the_storages(tmp_path, small):
    refused(_write(tmp_path, small + b"\0" * 5), "5 unexpected bytes after the last storage")


def test_not_a_torch_file(tmp_path):
    refused(
        _write(tmp_path, pickle.dumps({"w": [1.0]}, protocol=2)), "plain pickle", "not unpickled"
    )
    header = pickle.dumps(MAGIC_NUMBER, protocol=2)
    refused(_write(tmp_path, header + pickle.dumps(999, protocol=2)), "protocol 999")
    version = pickle.dumps(PROTOCOL_VERSION, protocol=2)
    big = header + version + pickle.dumps({"little_endian": False}, protocol=2)
    refused(_write(tmp_path, big), "big-endian")


def test_extension_that_disagrees_with_the_content(tmp_path, small):
    refused(_write(tmp_path, small, "model.safetensors"), "extension says safetensors")


def _legacy_with_root(root_pickle: bytes) -> bytes:
    return b"".join(
        [
            pickle.dumps(MAGIC_NUMBER, protocol=2),
            pickle.dumps(PROTOCOL_VERSION, protocol=2),
            pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
            root_pickle,
            pickle.dumps([], protocol=2),
        ]
    )


@pytest.mark.parametrize("func", ["os.system", "builtins.eval", "touch_marker"])
def test_payload_in_the_checkpoint_pickle_never_runs(tmp_path, func):
    import builtins
    import os

    marker = tmp_path / "MARKER"
    target = {"os.system": os.system, "builtins.eval": builtins.eval}.get(func, touch_marker)
    arg = str(marker) if func == "touch_marker" else f"open({str(marker)!r}, 'w')"
    if func == "os.system":
        arg = f"touch {marker}"
    root = pickle.dumps({"w": Payload(target, arg)}, protocol=2)
    text = refused(_write(tmp_path, _legacy_with_root(root)), "loading it would run code")
    assert func.split(".")[-1] in text
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    """torch.save(model) pickles the classes (and their source): code, not weights."""
    root = b"\x80\x02(X\x06\x00\x00\x00moduleq\x00cbuiltins\nlist\nq\x01NNtQ."
    refused(_write(tmp_path, _legacy_with_root(root)), "whole pickled nn.Module")


def test_expanded_tensors_read_unless_they_dwarf_the_file(tmp_path):
    """expand() saves one small storage with stride 0: fine as a broadcast buffer, refused
    when reading it would take hundreds of GB."""
    position_ids = torch.arange(512).expand(1, -1)  # as Hugging Face BERT buffers it
    mask = torch.ones(1, 1).expand(64, 64)
    path = tmp_path / "buffers.pt"
    torch.save(
        {"position_ids": position_ids, "mask": mask}, path, _use_new_zipfile_serialization=False
    )
    assert_identical(path, {"position_ids": position_ids, "mask": mask})

    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(1).expand(2**36)}, path, _use_new_zipfile_serialization=False)
    assert path.stat().st_size < 1000
    refused(path, "would take 274877906944 bytes once read")
