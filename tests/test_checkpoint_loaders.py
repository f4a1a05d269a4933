"""Checkpoint loaders on real torch and safetensors files: tensors, metadata, optimizer state."""

from __future__ import annotations

import argparse
import json
import zipfile
from collections import OrderedDict
from pathlib import Path

import helpers_pickles as hp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diag.errors import InputError
from diag.loaders.checkpoint import Checkpoint, open_checkpoint, sniff


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)
        self.unused = torch.nn.Linear(3, 2)  # not in forward: never receives a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _train(optimizer_factory, steps: int = 3) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    optimizer = optimizer_factory(model)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer


@pytest.fixture(scope="module")
def adam_run() -> tuple[Net, torch.optim.Optimizer]:
    return _train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))


@pytest.fixture(scope="module")
def state(adam_run) -> OrderedDict[str, torch.Tensor]:
    return adam_run[0].state_dict()


TRAINABLE = [
    "conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias",
    "unused.weight", "unused.bias",
]  # fmt: skip


def _assert_same_tensors(ckpt: Checkpoint, expected: dict[str, torch.Tensor], prefix: str = ""):
    infos = ckpt.table.infos()
    assert [i.name for i in infos] == [prefix + k for k in expected]
    for info, (name, tensor) in zip(infos, expected.items(), strict=True):
        assert info.shape == tuple(tensor.shape), name
        assert info.dtype == str(tensor.dtype).removeprefix("torch."), name
        got = ckpt.table.read(info.name)
        assert got.dtype == tensor.dtype, name
        assert torch.equal(got, tensor), name


# ------------------------------------------------------------------ torch zip layouts


def test_bare_state_dict_loads_exactly_and_in_order(tmp_path, state):
    path = tmp_path / "final.pt"
    torch.save(state, path)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch"
    _assert_same_tensors(ckpt, state)
    assert ckpt.meta.extra["state_dict_key"] == ""
    assert ckpt.optimizer is None


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "module", "ema"])
def test_state_dict_nested_under_a_known_key(tmp_path, state, key):
    path = tmp_path / "nested.pth"
    torch.save({key: state, "note": "trained", "best_acc": 0.9}, path)
    ckpt = open_checkpoint(path)
    _assert_same_tensors(ckpt, state)
    assert ckpt.meta.extra["state_dict_key"] == key


def test_lightning_checkpoint(tmp_path, adam_run, state):
    _, adam = adam_run
    hyper = hp.HyperDict(
        data_dir=Path("/data/digits"),
        relative=Path("runs/a"),
        color=hp.Color.GREEN,
        dropout=np.float64(0.5),
        layers=np.int64(3),
        args=argparse.Namespace(lr=0.001, batch_size=32),
        extra=hp.HyperDict(seed=1),
    )
    monitor_key = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"
    ckpt_obj = {
        "epoch": 7,
        "global_step": 21,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict((f"model.{k}", v) for k, v in state.items()),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 7}}}},
        "callbacks": {
            monitor_key: {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "/runs/epoch=6.ckpt",
            }
        },
        "optimizer_states": [adam.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper,
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt_obj, path)

    ckpt = open_checkpoint(path)
    _assert_same_tensors(ckpt, state, prefix="model.")
    assert ckpt.meta.epoch == 7
    assert ckpt.meta.global_step == 21
    assert not ckpt.is_initial
    assert ckpt.meta.extra["state_dict_key"] == "state_dict"
    assert ckpt.meta.extra["pytorch-lightning_version"] == "2.4.0"
    assert ckpt.meta.extra["hyper_parameters"] == {
        "data_dir": "/data/digits",
        "relative": "runs/a",
        "color": "green",
        "dropout": 0.5,
        "layers": 3,
        "args": {"lr": 0.001, "batch_size": 32},
        "extra": {"seed": 1},
    }
    callback = ckpt.meta.extra["callbacks"][monitor_key]
    assert callback["monitor"] == "val_loss"
    assert callback["best_model_score"] == {"tensor": [], "dtype": "float32"}
    json.dumps(ckpt.meta.extra)  # plain data all the way down

    opt = ckpt.optimizer
    assert opt is not None and opt.kind == "adam" and opt.mapped, opt
    assert {n for n, p in opt.params.items() if not p.has_state} == {
        "model.unused.weight",
        "model.unused.bias",
    }


def test_views_sharing_a_storage_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(24, dtype=torch.float32)
    grid = base.view(4, 6)
    tensors = {
        "base": base,
        "head": base[:6],
        "tail": base[10:],
        "grid": grid,
        "cols": grid[:, 1::2],  # offset 1, stride (6, 2)
        "transposed": torch.randn(3, 5).t(),
        "expanded": torch.randn(3, 1).expand(3, 4),  # stride 0
        "empty": torch.empty(0, 3),
    }
    path = tmp_path / "views.pt"
    torch.save(tensors, path)
    with zipfile.ZipFile(path) as zf:
        storages = [n for n in zf.namelist() if "/data/" in n]
    assert len(storages) == 4  # base and its views share one storage

    ckpt = open_checkpoint(path)
    _assert_same_tensors(ckpt, tensors)
    for name in tensors:
        assert ckpt.table.read(name).is_contiguous()


def test_half_bfloat16_and_double_tensors(tmp_path):
    torch.manual_seed(1)
    tensors = {
        "half": torch.randn(4, 3).half(),
        "bf16": torch.randn(4, 3).bfloat16(),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "int8": torch.arange(-4, 4, dtype=torch.int8),
        "flags": torch.tensor([True, False, True]),
    }
    path = tmp_path / "mixed.pt"
    torch.save(tensors, path)
    _assert_same_tensors(open_checkpoint(path), tensors)


def test_hf_pytorch_model_bin_file_and_folder(tmp_path, state):
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    _assert_same_tensors(open_checkpoint(folder / "pytorch_model.bin"), state)
    _assert_same_tensors(open_checkpoint(folder), state)


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    names = list(state)
    half = len(names) // 2
    return {n: state[n] for n in names[:half]}, {n: state[n] for n in names[half:]}


def _write_index(path: Path, shards: dict[str, dict[str, torch.Tensor]]) -> Path:
    weight_map = {name: shard for shard, tensors in shards.items() for name in tensors}
    total = sum(t.numel() * t.element_size() for ts in shards.values() for t in ts.values())
    path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return path


def test_sharded_pytorch_model_bin_index(tmp_path, state):
    folder = tmp_path / "sharded"
    folder.mkdir()
    first, second = _split(state)
    shards = {"pytorch_model-00001-of-00002.bin": first, "pytorch_model-00002-of-00002.bin": second}
    for name, tensors in shards.items():
        torch.save(tensors, folder / name)
    index = _write_index(folder / "pytorch_model.bin.index.json", shards)

    for target in (index, folder):
        ckpt = open_checkpoint(target)
        assert ckpt.format == "sharded torch"
        _assert_same_tensors(ckpt, state)
        assert ckpt.meta.extra["metadata"]["total_size"] > 0


# ------------------------------------------------------------------ optimizer state


def test_adam_state_mapped_to_parameter_names(tmp_path, adam_run, state):
    model, adam = adam_run
    path = tmp_path / "with_opt.pt"
    torch.save({"model": state, "optimizer": adam.state_dict(), "epoch": 3}, path)
    ckpt = open_checkpoint(path)
    opt = ckpt.optimizer
    assert opt is not None and opt.kind == "adam" and opt.mapped, opt.unmapped_reason
    assert list(opt.params) == TRAINABLE
    params = dict(model.named_parameters())
    for name in TRAINABLE:
        entry = opt.params[name]
        if name.startswith("unused."):
            assert not entry.has_state  # never received a gradient
            assert entry.exp_avg_sq is None
            continue
        assert entry.has_state
        assert entry.exp_avg_sq is not None
        assert tuple(entry.exp_avg_sq.shape) == tuple(params[name].shape)
        got = opt.read(entry.exp_avg_sq, name)
        assert torch.equal(got, adam.state[params[name]]["exp_avg_sq"])
    assert ckpt.meta.epoch == 3


def test_sgd_momentum_state(tmp_path):
    model, sgd = _train(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    path = tmp_path / "sgd.pt"
    torch.save({"state_dict": model.state_dict(), "optimizer_state_dict": sgd.state_dict()}, path)
    opt = open_checkpoint(path).optimizer
    assert opt is not None and opt.kind == "sgd" and opt.mapped
    weight = opt.params["fc.weight"]
    assert weight.has_state and weight.momentum is not None
    assert tuple(weight.momentum.shape) == (5, 144)
    expected = sgd.state[model.fc.weight]["momentum_buffer"]
    assert torch.equal(opt.read(weight.momentum, "fc.weight"), expected)
    assert not opt.params["unused.weight"].has_state


def test_optimizer_built_from_named_parameters(tmp_path):
    model, adam = _train(lambda m: torch.optim.Adam(m.named_parameters(), lr=1e-3))
    blob = adam.state_dict()
    # torch >= 2.6 records them (pyproject pins >= 2.10): without them this test would pass
    # having checked nothing
    assert "param_names" in blob["param_groups"][0]
    # A float buffer that looks trainable breaks positional matching; names still work.
    model.register_buffer("scale", torch.ones(4))
    path = tmp_path / "named.pt"
    torch.save({"model": model.state_dict(), "optimizer": blob}, path)
    opt = open_checkpoint(path).optimizer
    assert opt is not None and opt.mapped, opt.unmapped_reason
    assert set(opt.params) == set(TRAINABLE)
    assert not opt.params["unused.bias"].has_state
    assert opt.params["conv.weight"].has_state

    blob["param_groups"][0].pop("param_names")
    torch.save({"model": model.state_dict(), "optimizer": blob}, path)
    unnamed = open_checkpoint(path).optimizer
    assert unnamed is not None and not unnamed.mapped
    assert "8 parameters" in unnamed.unmapped_reason


# ------------------------------------------------------------------ safetensors


def test_safetensors_single_file(tmp_path, state):
    path = tmp_path / "model.safetensors"
    save_file(dict(state), path)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert {i.name for i in ckpt.table.infos()} == set(state)
    for info in ckpt.table.infos():
        assert info.shape == tuple(state[info.name].shape)
        assert torch.equal(ckpt.table.read(info.name), state[info.name])


def test_safetensors_half_and_bfloat16(tmp_path):
    tensors = {"a": torch.randn(3, 4).half(), "b": torch.randn(5).bfloat16()}
    path = tmp_path / "low.safetensors"
    save_file(tensors, path)
    table = open_checkpoint(path).table
    assert {i.name: i.dtype for i in table.infos()} == {"a": "float16", "b": "bfloat16"}
    for name, tensor in tensors.items():
        got = table.read(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)


def test_safetensors_metadata_gives_epoch_and_step(tmp_path):
    path = tmp_path / "meta.safetensors"
    metadata = {"epoch": "4", "global_step": "40", "format": "pt", "step": "not a number"}
    save_file({"w": torch.ones(2)}, path, metadata=metadata)
    ckpt = open_checkpoint(path)
    assert (ckpt.meta.epoch, ckpt.meta.global_step) == (4, 40)
    assert ckpt.meta.extra["metadata"] == metadata


def test_safetensors_odd_metadata_numbers_are_ignored(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"w": torch.ones(2)}, path, metadata={"epoch": "²", "global_step": "9" * 5000})
    ckpt = open_checkpoint(path)
    assert (ckpt.meta.epoch, ckpt.meta.global_step) == (None, None)


def test_safetensors_header_length_that_looks_like_a_pickle(tmp_path):
    # A header of 384 bytes starts the file with 0x80 0x01, the bytes a pickle starts with.
    for pad in range(400):
        path = tmp_path / f"pad{pad}.safetensors"
        save_file({"w": torch.ones(2)}, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x01":
            break
        path.unlink()
    else:
        pytest.fail("could not build a 384-byte safetensors header")
    assert sniff(path) == "safetensors"
    assert torch.equal(open_checkpoint(path).table.read("w"), torch.ones(2))


def test_sharded_safetensors_index_and_folder(tmp_path, state):
    folder = tmp_path / "st"
    folder.mkdir()
    first, second = _split(state)
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    for name, tensors in shards.items():
        save_file(tensors, folder / name)
    index = _write_index(folder / "model.safetensors.index.json", shards)
    for target in (index, folder):
        ckpt = open_checkpoint(target)
        assert ckpt.format == "sharded safetensors"
        assert {i.name for i in ckpt.table.infos()} == set(state)
        for name, tensor in state.items():
            assert torch.equal(ckpt.table.read(name), tensor)


def test_folder_holding_model_safetensors(tmp_path, state):
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(dict(state), folder / "model.safetensors")
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "safetensors"
    assert torch.equal(ckpt.table.read("fc.weight"), state["fc.weight"])


def test_safetensors_opening_reads_no_tensor_data(tmp_path, preadv_offsets, state):
    path = tmp_path / "lazy.safetensors"
    save_file(dict(state), path)
    reads = preadv_offsets
    ckpt = open_checkpoint(path)
    assert len(ckpt.table.infos()) == len(state)
    assert reads == []  # header parsed by hand, data untouched
    assert torch.equal(ckpt.table.read("conv.weight"), state["conv.weight"])
    assert len(reads) == 1


def test_torch_zip_opening_reads_no_tensor_data(tmp_path, preadv_offsets, state):
    path = tmp_path / "lazy.pt"
    torch.save(state, path)
    reads = preadv_offsets
    ckpt = open_checkpoint(path)
    assert [i.name for i in ckpt.table.infos()] == list(state)
    assert reads == []
    assert torch.equal(ckpt.table.read("fc.weight"), state["fc.weight"])
    assert len(reads) == 1


# ------------------------------------------------------------------ sniffing, not extensions


def test_safetensors_extension_holding_a_torch_zip(tmp_path, state):
    path = tmp_path / "model.safetensors"
    torch.save(state, path)
    with pytest.raises(InputError, match="extension says safetensors but the content is torch"):
        open_checkpoint(path)


def test_pt_extension_holding_safetensors(tmp_path, state):
    path = tmp_path / "model.pt"
    save_file(dict(state), path)
    with pytest.raises(InputError, match="extension says torch but the content is safetensors"):
        open_checkpoint(path)


def test_onnx_extension_holding_text(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(InputError, match="not a onnx checkpoint") as info:
        open_checkpoint(path)
    assert str(path) in str(info.value)


def test_unknown_extension_is_sniffed(tmp_path, state):
    path = tmp_path / "weights.data"
    torch.save(state, path)
    assert open_checkpoint(path).format == "torch"
    save_file(dict(state), path)
    assert open_checkpoint(path).format == "safetensors"
