"""OnnxTable: weights found wherever a graph keeps them, and hostile files refused up front."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from diag.errors import InputError
from diag.loaders import onnx_table
from diag.loaders.onnx_table import OnnxTable


def _graph(nodes, inits=(), name="g", inputs=(), outputs=("y",)):
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    return helper.make_graph(list(nodes), name, ins, outs, initializer=list(inits))


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _const(output: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value=numpy_helper.from_array(array))


def _by_name(table: OnnxTable) -> dict:
    return {info.name: info for info in table.infos()}


# --- a real exported model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    ).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), dynamo=False)
    return path, model.state_dict()


def test_exported_torch_model_weights_and_hints(exported):
    path, state = exported
    table = OnnxTable(path)
    infos = {info.shape: info for info in table.infos()}
    conv, linear = infos[(4, 1, 3, 3)], infos[(3, 144)]
    assert (conv.op, conv.units_axis, conv.dtype) == ("conv", 0, "float32")
    assert (linear.op, linear.units_axis) == ("linear", 0)  # Gemm with transB=1
    assert torch.equal(table.read(conv.name), state["0.weight"])
    assert torch.equal(table.read(linear.name), state["3.weight"])
    biases = [table.read(i.name) for i in table.infos() if i.op is None]
    assert any(torch.equal(b, state["0.bias"]) for b in biases)
    assert any(torch.equal(b, state["3.bias"]) for b in biases)
    assert table.format == "onnx" and table.path == path
    table.close()


# --- where weights hide ----------------------------------------------------------------------


def _branch(tag: str, value: float) -> onnx.GraphProto:
    nodes = [
        _const("c", np.full((3,), value, np.float32)),
        _const("shape", np.array([2, 2], np.int64)),
        helper.make_node("Constant", [], ["s"], value_float=1.0),
        helper.make_node("Add", ["w", "c"], ["y"]),
    ]
    return _graph(nodes, [_init("w", np.full((2, 2), value, np.float32))], name=tag)


def test_if_branches_initializers_and_constants_all_found(tmp_path):
    if_node = helper.make_node(
        "If", ["cond"], ["y"], then_branch=_branch("then", 1.0), else_branch=_branch("else", 2.0)
    )
    inits = [_init("w", np.zeros((2, 2), np.float32)), _init("cond", np.array(True))]
    table = OnnxTable(_save(_graph([if_node], inits), tmp_path / "m.onnx"))
    infos = table.infos()
    names = [i.name for i in infos]
    assert len(names) == len(set(names)) == 5  # 3 "w" + 2 "c"; cond, shape, s are not weights
    values = sorted(float(table.read(n).flatten()[0]) for n in names)
    assert values == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert names[0] == "w"
    assert any("then_branch" in n for n in names) and any("else_branch" in n for n in names)


def test_names_are_deterministic_and_duplicates_in_one_graph_kept(tmp_path):
    inits = [_init("w", np.ones((2,), np.float32)), _init("w", np.zeros((2,), np.float32))]
    path = _save(_graph([], inits), tmp_path / "m.onnx")
    first, second = (
        [i.name for i in OnnxTable(path).infos()],
        [i.name for i in OnnxTable(path).infos()],
    )
    assert first == second == ["w", "w#2"]


def test_loop_body_and_graphs_attribute(tmp_path):
    body = _graph([_const("k", np.ones((4,), np.float32))], [_init("b", np.ones((5,), np.float32))])
    loop = helper.make_node("Loop", ["", "cond"], ["y"], body=body)
    g1 = _graph([], [_init("g1w", np.ones((6,), np.float32))])
    g2 = _graph([], [_init("g2w", np.ones((7,), np.float32))])
    custom = helper.make_node("Multi", [], ["z"], domain="custom", branches=[g1, g2])
    path = _save(_graph([loop, custom], [_init("cond", np.array(True))]), tmp_path / "m.onnx")
    shapes = {i.name: i.shape for i in OnnxTable(path).infos()}
    assert shapes == {"b": (5,), "k": (4,), "g1w": (6,), "g2w": (7,)}


def test_empty_graph_has_no_tensors(tmp_path):
    table = OnnxTable(_save(_graph([], outputs=()), tmp_path / "m.onnx"))
    assert table.infos() == []


def test_nesting_depth_is_capped(tmp_path, monkeypatch):
    graph = _graph([], [_init("w", np.ones((1,), np.float32))])
    for _ in range(4):
        node = helper.make_node("If", ["cond"], ["y"], then_branch=graph, else_branch=graph)
        graph = _graph([node])
    monkeypatch.setattr(onnx_table, "MAX_DEPTH", 3)
    with pytest.raises(InputError, match="nested deeper than 3"):
        OnnxTable(_save(graph, tmp_path / "m.onnx"))


# --- dtypes ----------------------------------------------------------------------------------


def _int32_bits(name: str, data_type: int, values: torch.Tensor) -> TensorProto:
    # The spec's layout for 16-bit floats without raw_data: each bit pattern in an int32.
    tensor = TensorProto(name=name, data_type=data_type, dims=list(values.shape))
    tensor.int32_data.extend(values.view(torch.int16).numpy().astype(np.uint16).tolist())
    return tensor


def test_half_precision_round_trips(tmp_path):
    half = torch.tensor([[1.5, -2.25], [65504.0, 0.0]], dtype=torch.float16)
    brain = torch.tensor([3.0e38, -1.0, 0.0078125], dtype=torch.bfloat16)
    inits = [
        helper.make_tensor(
            "h_raw", TensorProto.FLOAT16, [2, 2], half.view(torch.int16).numpy().tobytes(), True
        ),
        helper.make_tensor("h_int32", TensorProto.FLOAT16, [2, 2], half.numpy()),
        helper.make_tensor(
            "bf_raw", TensorProto.BFLOAT16, [3], brain.view(torch.int16).numpy().tobytes(), True
        ),
        _int32_bits("bf_int32", TensorProto.BFLOAT16, brain),
        helper.make_tensor("f64", TensorProto.DOUBLE, [2], [0.1, -0.2]),
        helper.make_tensor("f32", TensorProto.FLOAT, [2], [0.5, -0.5]),
    ]
    table = OnnxTable(_save(_graph([], inits), tmp_path / "m.onnx"))
    dtypes = {i.name: i.dtype for i in table.infos()}
    assert dtypes == {
        "h_raw": "float16", "h_int32": "float16", "bf_raw": "bfloat16", "bf_int32": "bfloat16",
        "f64": "float64", "f32": "float32",
    }  # fmt: skip
    assert torch.equal(table.read("h_raw"), half) and torch.equal(table.read("h_int32"), half)
    assert torch.equal(table.read("bf_raw"), brain) and torch.equal(table.read("bf_int32"), brain)
    assert torch.equal(table.read("f64"), torch.tensor([0.1, -0.2], dtype=torch.float64))
    assert torch.equal(table.read("f32"), torch.tensor([0.5, -0.5]))


def test_embedded_length_disagreeing_with_dims_is_refused(tmp_path):
    bad = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3], raw_data=b"\0" * 20)
    with pytest.raises(InputError, match=r"tensor 'w' holds 20 bytes.* needs 24"):
        OnnxTable(_save(_graph([], [bad]), tmp_path / "m.onnx"))


# --- op hints --------------------------------------------------------------------------------


def test_op_hints(tmp_path):
    w = np.ones((4, 3), np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "mm"], ["a"]),
        helper.make_node("Gemm", ["x", "gemm_t", "bias"], ["b"], transB=1),
        helper.make_node("Gemm", ["x", "gemm"], ["c"]),
        helper.make_node("Transpose", ["mm_t"], ["mm_t_T"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "mm_t_T"], ["d"]),
        helper.make_node("Gather", ["emb", "idx"], ["e"]),
        helper.make_node("ConvTranspose", ["x", "deconv"], ["f"]),
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["y"]),
    ]
    names = ["mm", "gemm_t", "gemm", "mm_t", "emb", "ln_scale", "ln_bias"]
    inits = [_init(n, w) for n in names]
    inits += [
        _init("bias", np.ones(4, np.float32)),
        _init("deconv", np.ones((2, 3, 3, 3), np.float32)),
    ]
    inits.append(_init("idx", np.array([0], np.int64)))
    hints = {
        i.name: (i.op, i.units_axis)
        for i in OnnxTable(_save(_graph(nodes, inits), tmp_path / "m.onnx")).infos()
    }
    assert hints == {
        "mm": ("linear", 1), "gemm_t": ("linear", 0), "gemm": ("linear", 1),
        "mm_t": ("linear", 0), "emb": ("embedding", 0), "ln_scale": ("norm", 0),
        "ln_bias": ("norm", 0), "bias": (None, 0), "deconv": ("conv", 1),
    }  # fmt: skip


# --- external data ---------------------------------------------------------------------------


def test_external_data_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.linspace(-1, 1, 5).astype(np.float32)
    model = helper.make_model(_graph([], [_init("a", a), _init("b", b)]))
    path = tmp_path / "m.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location="weights.bin", size_threshold=0,
    )  # fmt: skip
    assert (tmp_path / "weights.bin").exists()
    table = OnnxTable(path)
    assert [(i.name, i.shape) for i in table.infos()] == [("a", (3, 4)), ("b", (5,))]
    assert torch.equal(table.read("a"), torch.from_numpy(a))
    assert torch.equal(table.read("b"), torch.from_numpy(b))


def _external_model(
    folder: Path, location: str, offset: str | None = None, length: str | None = None, dtype=1
) -> Path:
    """A model whose tensor 'w' (2x3, 24 bytes as float32) lives at `location`."""
    folder.mkdir(exist_ok=True)
    tensor = helper.make_tensor("w", dtype, [2, 3], [0] * 6)
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            tensor.external_data.add(key=key, value=value)
    return _save(_graph([], [tensor]), folder / "model.onnx")


def _write(path: Path, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.arange(size, dtype=np.uint8).tobytes())
    return path


def test_external_data_read_with_offset_and_length(tmp_path):
    data = np.arange(10, dtype=np.float32)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(data.tobytes())
    table = OnnxTable(_external_model(tmp_path / "m", "./w.bin", offset="8", length="24"))
    assert torch.equal(table.read("w"), torch.from_numpy(data[2:8].reshape(2, 3)))


def _outside(tmp):
    _write(tmp / "outside.bin")
    return "../outside.bin"


def _nested(tmp):
    _write(tmp / "outside.bin")
    (tmp / "m" / "a").mkdir(parents=True)
    return "a/../../outside.bin"


def _absolute(tmp):
    return str(_write(tmp / "outside.bin"))


def _symlink_out(tmp):
    (tmp / "m").mkdir()
    (tmp / "m" / "w.bin").symlink_to(_write(tmp / "outside.bin"))
    return "w.bin"


def _symlink_in(tmp):
    _write(tmp / "m" / "real.bin")
    (tmp / "m" / "w.bin").symlink_to(tmp / "m" / "real.bin")
    return "w.bin"


def _symlinked_dir(tmp):
    _write(tmp / "m" / "real" / "w.bin")
    (tmp / "m" / "sub").symlink_to(tmp / "m" / "real", target_is_directory=True)
    return "sub/w.bin"


def _hardlink(tmp):
    os.link(_write(tmp / "m" / "real.bin"), tmp / "m" / "w.bin")
    return "w.bin"


def _inner_dotdot(tmp):
    _write(tmp / "m" / "w.bin")
    (tmp / "m" / "a").mkdir()
    return "a/../w.bin"


def _directory(tmp):
    (tmp / "m" / "w.bin").mkdir(parents=True)
    return "w.bin"


def _plain(size):
    def make(tmp):
        _write(tmp / "m" / "w.bin", size)
        return "w.bin"

    return make


HOSTILE = {
    "parent": (_outside, {}, "points outside the model folder"),
    "nested-traversal": (_nested, {}, "points outside the model folder"),
    "absolute": (_absolute, {}, "absolute location"),
    "symlink-outside": (_symlink_out, {}, "points outside the model folder"),
    "symlink-inside": (_symlink_in, {}, "is a symlink"),
    "symlinked-folder": (_symlinked_dir, {}, "goes through symlink 'sub'"),
    "hardlink": (_hardlink, {}, "has 2 hard links"),
    "inner-dotdot": (_inner_dotdot, {}, "'..' in its location"),
    "directory": (_directory, {}, "is not a regular file"),
    "missing": (lambda tmp: "nope.bin", {}, "file 'nope.bin' is missing"),
    "past-end": (_plain(24), {"offset": "8", "length": "24"}, "runs past the end"),
    "offset-past-end": (_plain(24), {"offset": "100"}, "runs past the end"),
    "length-vs-dims": (_plain(48), {"length": "16"}, "is 16 bytes.* need 24"),
    "size-vs-dims": (_plain(32), {}, "is 32 bytes.* need 24"),
    "bad-offset": (_plain(24), {"offset": "-1"}, "bad offset '-1'"),
    "empty-location": (lambda tmp: "", {}, "no usable location"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_external_data_refused_at_open(tmp_path, case, monkeypatch):
    make, fields, message = HOSTILE[case]
    location = make(tmp_path)
    path = _external_model(tmp_path / "m", location, **fields)
    reads = []
    monkeypatch.setattr(os, "preadv", lambda *a: reads.append(a) or 0)
    with pytest.raises(InputError, match=message) as caught:
        OnnxTable(path)
    assert "'w'" in caught.value.cause and "\n" not in str(caught.value)
    assert caught.value.path == str(path)
    assert reads == []


def test_hostile_reference_on_an_integer_tensor_is_refused_too(tmp_path):
    _write(tmp_path / "outside.bin", 48)
    path = _external_model(tmp_path / "m", "../outside.bin", dtype=TensorProto.INT64)
    with pytest.raises(InputError, match="points outside"):
        OnnxTable(path)


def test_reading_is_lazy_and_one_tensor_at_a_time(tmp_path, monkeypatch):
    a = np.arange(1000, dtype=np.float32)
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = helper.make_model(_graph([], [_init("a", a), _init("b", b)]))
    path = tmp_path / "m.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    reads: list[tuple[int, int]] = []
    real = os.preadv

    def spy(fd, buffers, offset):
        reads.append((sum(len(buf) for buf in buffers), offset))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", spy)
    table = OnnxTable(path)
    assert [i.nbytes for i in table.infos()] == [4000, 24]
    assert reads == []
    assert torch.equal(table.read("b"), torch.from_numpy(b))
    assert [n for n, _ in reads] == [24]  # only b's bytes, not the 4 kB of a nor the file


# --- corrupt model files ---------------------------------------------------------------------


def test_truncated_model_is_refused(tmp_path, exported):
    data = exported[0].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable ONNX model"):
        OnnxTable(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(InputError, match="not a readable ONNX model"):
        OnnxTable(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"not a readable ONNX model \(empty file\)"):
        OnnxTable(path)


def test_missing_model_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read the file"):
        OnnxTable(tmp_path / "absent.onnx")
