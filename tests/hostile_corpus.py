"""The hostile corpus: one case per known attack on, or breakage of, an input diag reads.

Each builder writes its files into an empty input folder and returns a `Case`: the
`diag check` arguments (paths relative to that folder) and the expected outcome, either
refused (exit 2, one line naming the file and the cause) or checked (exit 0 or 1, with the
rules that must fire). The checkpoint-format cases (payload pickles, TorchScript, broken
torch zips, safetensors headers, shard indexes) live in test_hostile_inputs.py and run
through the same sandbox; this corpus covers every other input and the reports.

`python tests/hostile_corpus.py OUT` writes every case to OUT/<case>/ with a manifest.json
of expected outcomes, for use outside pytest.

A builder never writes outside its input folder except into `outside`, a sibling folder
that hostile references point at: nothing may ever read it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MARKUP = "</script><img src=x onerror=alert(1)>"
RUNS_CODE = "loading it would run code"


@dataclass
class Case:
    args: list[str]
    refused: str | None = None  # the file name the error line must name
    fragments: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()  # when checked: rules that must fire
    either: bool = False  # refused or checked are both right (a cut at an arbitrary byte)
    notes: tuple[str, ...] = field(default=())


Builder = Callable[[Path, Path, Path], Case]  # (input folder, outside folder, marker) -> Case
CASES: dict[str, Builder] = {}


def case(fn: Builder) -> Builder:
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


def _secret(outside: Path, name: str = "secret.bin", size: int = 24) -> Path:
    outside.mkdir(parents=True, exist_ok=True)
    path = outside / name
    path.write_bytes(np.arange(size, dtype=np.uint8).tobytes())
    return path


def _digits(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:n].astype(np.uint8), d.target[:n].astype(np.int64)


# ------------------------------------------------------------------ code in the inputs


def _payload(marker: Path) -> object:
    from helpers_pickles import Payload

    return Payload(os.system, f"touch {marker}")


@case
def npz_object_array_payload(inp: Path, outside: Path, marker: Path) -> Case:
    from helpers_pickles import Payload, touch_marker

    images, _ = _digits(4)
    evil = np.array([Payload(touch_marker, str(marker))] * 4, dtype=object)
    np.savez(inp / "train.npz", x=images, y=evil)
    return Case(["--split", "train=train.npz"], "train.npz", ("object arrays",))


@case
def legacy_pth_payload(inp: Path, outside: Path, marker: Path) -> Case:
    """A legacy torch.save layout whose checkpoint pickle runs os.system: refused for that."""
    (inp / "model.pth").write_bytes(_legacy_layout({"w": _payload(marker)}))
    return Case(["model.pth"], "model.pth", (RUNS_CODE, "system"))


@case
def legacy_pth_plain_pickle_payload(inp: Path, outside: Path, marker: Path) -> Case:
    """A bare payload pickle named .pth: no torch magic number, so not one opcode is run."""
    (inp / "model.pth").write_bytes(pickle.dumps(_payload(marker), protocol=2))
    return Case(["model.pth"], "model.pth", ("plain pickle", "not unpickled"))


@case
def legacy_pth_eval_payload(inp: Path, outside: Path, marker: Path) -> Case:
    from helpers_pickles import Payload

    evil = Payload(eval, f"open({str(marker)!r}, 'w')")
    (inp / "model.pth").write_bytes(_legacy_layout({"state_dict": {"w": evil}}))
    return Case(["model.pth"], "model.pth", (RUNS_CODE, "eval"))


@case
def legacy_pth_reduce_payload(inp: Path, outside: Path, marker: Path) -> Case:
    """A `__reduce__` to a function of the user's own code (importable: PYTHONPATH=tests)."""
    from helpers_pickles import Payload, touch_marker

    (inp / "model.pth").write_bytes(_legacy_layout(Payload(touch_marker, str(marker))))
    return Case(["model.pth"], "model.pth", (RUNS_CODE, "touch_marker"))


def _legacy_layout(root: object) -> bytes:
    """The five pickles of the legacy format around `root`, with no storages."""
    magic, version = 0x1950A86A20F9469CFC6C, 1001
    parts = [magic, version, {"protocol_version": version, "little_endian": True}, root, []]
    return b"".join(pickle.dumps(p, protocol=2) for p in parts)


@case
def split_pt_payload(inp: Path, outside: Path, marker: Path) -> Case:
    from helpers_pickles import pickle_zip

    pickle_zip(inp / "train.pt", pickle.dumps(_payload(marker), protocol=4))
    return Case(["--split", "train=train.pt"], "train.pt", (RUNS_CODE,))


MODEL_PY = """import torch

def make():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
"""


@case
def batch_payload(inp: Path, outside: Path, marker: Path) -> Case:
    from helpers_pickles import pickle_zip

    (inp / "model.py").write_text(MODEL_PY)
    pickle_zip(inp / "batch.pt", pickle.dumps(_payload(marker), protocol=2))
    return Case(["--model", "model.py:make", "--batch", "batch.pt"], "batch.pt", (RUNS_CODE,))


# ------------------------------------------------------------------ ONNX external data


def _onnx_external(
    inp: Path, location: str, offset: str | None = None, length: str | None = None
) -> Case:
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], [0.0] * 6)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": offset, "length": length}.items():
        if value is not None:
            tensor.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [tensor]
    )
    onnx.save_model(helper.make_model(graph), str(inp / "model.onnx"))
    return Case(["model.onnx"], "model.onnx")


def _onnx_refused(*fragments: str) -> Callable[[Case], Case]:
    def done(c: Case) -> Case:
        c.fragments = fragments
        return c

    return done


@case
def onnx_parent_traversal(inp: Path, outside: Path, marker: Path) -> Case:
    _secret(outside)
    return _onnx_refused("points outside")(_onnx_external(inp, f"../{outside.name}/secret.bin"))


@case
def onnx_nested_traversal(inp: Path, outside: Path, marker: Path) -> Case:
    _secret(outside)
    (inp / "a" / "b").mkdir(parents=True)
    location = f"a/b/../../../{outside.name}/secret.bin"
    return _onnx_refused("outside")(_onnx_external(inp, location))


@case
def onnx_absolute_path(inp: Path, outside: Path, marker: Path) -> Case:
    return _onnx_refused("absolute")(_onnx_external(inp, str(_secret(outside))))


@case
def onnx_symlink_out(inp: Path, outside: Path, marker: Path) -> Case:
    (inp / "w.bin").symlink_to(_secret(outside))
    return _onnx_refused("points outside")(_onnx_external(inp, "w.bin"))


@case
def onnx_hardlink(inp: Path, outside: Path, marker: Path) -> Case:
    os.link(_secret(outside), inp / "w.bin")
    return _onnx_refused("hard links")(_onnx_external(inp, "w.bin"))


@case
def onnx_offset_past_end(inp: Path, outside: Path, marker: Path) -> Case:
    _secret(inp, "w.bin")
    return _onnx_refused("runs past the end")(_onnx_external(inp, "w.bin", offset="100"))


@case
def onnx_length_disagrees_with_dims(inp: Path, outside: Path, marker: Path) -> Case:
    _secret(inp, "w.bin", 48)
    return _onnx_refused("need 24")(_onnx_external(inp, "w.bin", length="16"))


@case
def onnx_markup_names(inp: Path, outside: Path, marker: Path) -> Case:
    """Markup in initializer and node names: the HTML must stay inert."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((8, 4), 0.5, dtype=np.float32), f"fc{MARKUP}.weight")
    b = numpy_helper.from_array(np.zeros(4, dtype=np.float32), f"fc{MARKUP}.bias")
    node = helper.make_node("Gemm", ["x", w.name, b.name], ["y"], name=f"node{MARKUP}")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([node], f"graph{MARKUP}", [x], [y], [w, b])
    onnx.save_model(helper.make_model(graph), str(inp / "model.onnx"))
    return Case(["model.onnx"], rules=("constant-parameter",))


# ------------------------------------------------------------------ zip archives


@case
def npz_zip_bomb(inp: Path, outside: Path, marker: Path) -> Case:
    """Deflated members that inflate about 1000x: 60,000 identical images in 5 kB."""
    zeros = np.zeros((60_000, 8, 8), dtype=np.uint8)
    np.savez_compressed(inp / "bomb.npz", x=zeros, y=np.zeros(60_000, dtype=np.int64))
    ratio = zeros.nbytes / (inp / "bomb.npz").stat().st_size
    assert ratio > 500, ratio
    return Case(
        ["--split", "train=bomb.npz", "--split", "test=bomb.npz"],
        rules=("split-overlap-exact", "duplicates-within-split"),
    )


@case
def npz_thousands_of_entries(inp: Path, outside: Path, marker: Path) -> Case:
    images, labels = _digits(60)
    arrays = {f"extra{i}": np.zeros(1, dtype=np.uint8) for i in range(5000)}
    np.savez(inp / "many.npz", x=images, y=labels, **arrays)
    return Case(["--split", "train=many.npz"])


@case
def torch_zip_central_directory_bomb(inp: Path, outside: Path, marker: Path) -> Case:
    """300,000 empty entries (34 MB): zipfile alone would spend 250 MB and 3 s on them."""
    import torch
    from helpers_pickles import torch_archive

    entries = torch_archive({"w": torch.randn(4)})
    with zipfile.ZipFile(inp / "model.pt", "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
        for i in range(300_000):
            zf.writestr(f"archive/extra/{i}", b"")
    return Case(["model.pt"], "model.pt", ("declares 3000", "cap 200000 entries"))


def _flip_crc(path: Path, member: str) -> None:
    """Change the CRC-32 recorded for `member` in the central directory and local header."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    good = struct.pack("<I", info.CRC)
    bad = struct.pack("<I", info.CRC ^ 0xFFFFFFFF)
    assert data.count(good) >= 2, "CRC not found twice"
    path.write_bytes(bytes(data).replace(good, bad))


@case
def npz_bad_crc(inp: Path, outside: Path, marker: Path) -> Case:
    images, labels = _digits(60)
    np.savez(inp / "crc.npz", x=images, y=labels)
    _flip_crc(inp / "crc.npz", "x.npy")
    return Case(["--split", "train=crc.npz"], "crc.npz", ("CRC",))


@case
def npz_duplicate_names(inp: Path, outside: Path, marker: Path) -> Case:
    images, _ = _digits(20)
    with zipfile.ZipFile(inp / "dup.npz", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point here
        for array in (images, images[::-1].copy()):
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr("x.npy", buf.getvalue())
    return Case(["--split", "train=dup.npz"], "dup.npz", ("duplicate",))


@case
def torch_zip_bad_crc_on_data_pkl(inp: Path, outside: Path, marker: Path) -> Case:
    import torch

    torch.save({"w": torch.randn(8, 8)}, inp / "model.pt")
    with zipfile.ZipFile(inp / "model.pt") as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
    _flip_crc(inp / "model.pt", name)
    return Case(["model.pt"], "model.pt", ("CRC",))


@case
def torch_zip_storage_bytes_corrupted(inp: Path, outside: Path, marker: Path) -> Case:
    """One flipped bit inside a tensor's bytes: only the entry's CRC-32 can tell."""
    import torch

    g = torch.Generator().manual_seed(0)
    torch.save({"conv.weight": torch.randn(64, 32, 3, 3, generator=g)}, inp / "model.pt")
    data = bytearray((inp / "model.pt").read_bytes())
    with zipfile.ZipFile(inp / "model.pt") as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 5000] ^= 0x01
    (inp / "model.pt").write_bytes(bytes(data))
    return Case(["model.pt"], "model.pt", ("CRC-32", "conv.weight"))


@case
def torch_zip_bad_crc_on_a_small_storage(inp: Path, outside: Path, marker: Path) -> Case:
    """A tensor small enough to come as one block, with its recorded CRC changed."""
    import torch

    torch.save({"fc.bias": torch.arange(10.0)}, inp / "model.pt")
    with zipfile.ZipFile(inp / "model.pt") as zf:
        name = next(n for n in zf.namelist() if "/data/" in n)
    _flip_crc(inp / "model.pt", name)
    return Case(["model.pt"], "model.pt", ("CRC-32", "fc.bias"))


@case
def torch_zip_duplicate_data_pkl(inp: Path, outside: Path, marker: Path) -> Case:
    """Two data.pkl entries: a scanner could read one and a loader the other."""
    import torch
    from helpers_pickles import torch_archive

    entries = torch_archive({"w": torch.randn(4)})
    name = next(n for n in entries if n.endswith("data.pkl"))
    with zipfile.ZipFile(inp / "model.pt", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point here
        for n, data in entries.items():
            zf.writestr(n, data)
        zf.writestr(name, pickle.dumps({"w": 1}, protocol=2))
    return Case(["model.pt"], "model.pt", ("duplicate",))


@case
def torch_zip_thousands_of_entries(inp: Path, outside: Path, marker: Path) -> Case:
    import torch
    from helpers_pickles import torch_archive

    entries = torch_archive({f"layer{i}.weight": torch.zeros(2) for i in range(3000)})
    with zipfile.ZipFile(inp / "many.pt", "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    return Case(["many.pt", "--select", "params"])


@case
def torch_zip_entry_name_not_utf8(inp: Path, outside: Path, marker: Path) -> Case:
    """An entry flagged as UTF-8 whose name is not (found by fuzzing)."""
    import torch

    torch.save({"w": torch.randn(4)}, inp / "model.pt")
    data = bytearray((inp / "model.pt").read_bytes())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into(
        "<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | 0x800
    )
    data[central + 46] = 0xFF  # first byte of its name
    (inp / "model.pt").write_bytes(bytes(data))
    return Case(["model.pt"], "model.pt", ("not UTF-8",))


@case
def torch_zip_stride_zero_expansion(inp: Path, outside: Path, marker: Path) -> Case:
    """One float expanded to 2**36 elements, as torch.save keeps it: a 1.5 kB zip that
    would read as 256 GB."""
    import torch

    torch.save({"w": torch.zeros(1).expand(2**36)}, inp / "model.pt")
    return Case(["model.pt"], "model.pt", ("would take 274877906944 bytes once read",))


# ------------------------------------------------------------------ legacy torch files


def _legacy_save(obj: object, path: Path) -> bytes:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def _pickle_ends(data: bytes) -> list[int]:
    """End offsets of the legacy format's five pickles; the storages follow the last."""
    import pickletools

    ends, pos = [], 0
    for _ in range(5):
        pos += next(p for op, _a, p in pickletools.genops(data[pos:]) if op.name == "STOP") + 1
        ends.append(pos)
    return ends


def _legacy_weights() -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(16, 8, generator=g), "fc.bias": torch.zeros(16)}


def _legacy_cut(section: str) -> Builder:
    def build(inp: Path, outside: Path, marker: Path) -> Case:
        data = _legacy_save(_legacy_weights(), inp / "model.pth")
        ends = _pickle_ends(data)
        cut = {
            "checkpoint-pickle": (ends[2] + ends[3]) // 2,
            "key-list": ends[4] - 3,
            "storage-count": ends[4] + 4,
            "storage-bytes": len(data) - 100,
        }[section]
        (inp / "model.pth").write_bytes(data[:cut])
        return Case(["model.pth"], "model.pth", ("truncated",))

    build.__name__ = f"legacy_pth_truncated_in_{section.replace('-', '_')}"
    return build


for _section in ("checkpoint-pickle", "key-list", "storage-count", "storage-bytes"):
    case(_legacy_cut(_section))


@case
def legacy_pth_count_forged_huge(inp: Path, outside: Path, marker: Path) -> Case:
    """A storage's element count forged to 2**60: refused before anything is allocated."""
    data = bytearray(_legacy_save(_legacy_weights(), inp / "model.pth"))
    at = _pickle_ends(bytes(data))[-1]
    data[at : at + 8] = (2**60).to_bytes(8, "little")
    (inp / "model.pth").write_bytes(bytes(data))
    return Case(["model.pth"], "model.pth", ("1152921504606846976 elements", "the pickle says"))


@case
def legacy_pth_storage_key_mismatch(inp: Path, outside: Path, marker: Path) -> Case:
    """The key list names a storage no tensor uses, in place of one they do."""
    data = _legacy_save(_legacy_weights(), inp / "model.pth")
    ends = _pickle_ends(data)
    keys = pickle.loads(data[ends[3] : ends[4]])
    forged = pickle.dumps([keys[0], "0"], protocol=2)
    (inp / "model.pth").write_bytes(data[: ends[3]] + forged + data[ends[4] :])
    return Case(["model.pth"], "model.pth", ("not in the key list",))


@case
def legacy_pth_stride_zero_expansion(inp: Path, outside: Path, marker: Path) -> Case:
    """One float expanded to 2**36 elements: a 358-byte file that would read as 256 GB."""
    import torch

    _legacy_save({"w": torch.zeros(1).expand(2**36)}, inp / "model.pth")
    return Case(["model.pth"], "model.pth", ("would take 274877906944 bytes once read",))


@case
def legacy_pth_that_is_a_zip_bomb(inp: Path, outside: Path, marker: Path) -> Case:
    """A .pth holding a deflated data.pkl that inflates 1000x: refused unread."""
    with zipfile.ZipFile(inp / "model.pth", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." + b"\0" * 64_000_000)
        zf.writestr("archive/version", "3\n")
    assert (inp / "model.pth").stat().st_size < 100_000
    return Case(["model.pth"], "model.pth", ("compressed",))


@case
def legacy_pth_cuda_storages_nan(inp: Path, outside: Path, marker: Path) -> Case:
    """A GPU-saved legacy file (torch.cuda.FloatStorage, 'cuda:0'): read onto the CPU."""
    weights = _legacy_weights()
    weights["fc.weight"][3, 2] = float("nan")
    data = _legacy_save(weights, inp / "model.pth")
    data = data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert b"cuda:0" in data
    (inp / "model.pth").write_bytes(data)
    return Case(["model.pth"], rules=("nonfinite-parameter",))


@case
def legacy_ckpt_optimizer_keyed_by_object_id(inp: Path, outside: Path, marker: Path) -> Case:
    """Old `optimizer.state_dict()`: state and groups keyed by id(param), a layer unused."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"fc": torch.nn.Linear(6, 3), "unused": torch.nn.Linear(3, 2)})
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        adam.zero_grad()
        model["fc"](torch.randn(8, 6)).square().mean().backward()
        adam.step()
    blob = adam.state_dict()
    ids = [id(p) for p in model.parameters()]
    blob["state"] = {ids[k]: v for k, v in blob["state"].items()}
    blob["param_groups"] = [
        dict(g, params=[ids[i] for i in g["params"]]) for g in blob["param_groups"]
    ]
    ckpt = {
        "epoch": 1,
        "global_step": 3,
        "state_dict": model.state_dict(),
        "optimizer_states": [blob],
    }
    _legacy_save(ckpt, inp / "last.ckpt")
    return Case(["last.ckpt", "--select", "stuck-parameter"], rules=("stuck-parameter",))


@case
def legacy_batch_payload(inp: Path, outside: Path, marker: Path) -> Case:
    (inp / "model.py").write_text(MODEL_PY)
    (inp / "batch.pt").write_bytes(_legacy_layout({"inputs": _payload(marker)}))
    return Case(["--model", "model.py:make", "--batch", "batch.pt"], "batch.pt", (RUNS_CODE,))


@case
def legacy_split_payload(inp: Path, outside: Path, marker: Path) -> Case:
    """A legacy torch.save split whose x is a payload: read by LegacyTorch, refused unrun."""
    (inp / "train.pt").write_bytes(_legacy_layout({"x": _payload(marker)}))
    return Case(["--split", "train=train.pt"], "train.pt", (RUNS_CODE, "system"))


# ------------------------------------------------------------------ TensorBoard


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _event_file(inp: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(inp / "tb"))
    for step in range(6):
        writer.add_scalar("train/loss", 2.0 / (step + 1), step)
        writer.add_scalar("val/loss", 2.2 / (step + 1), step)
    writer.close()
    return next((inp / "tb").glob("events.out.tfevents.*"))


def _tb_case(path: Path, *fragments: str) -> Case:
    return Case(["--logs", str(path.relative_to(path.parent.parent))], path.name, fragments)


def _flip_byte(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@case
def tb_bad_length_crc(inp: Path, outside: Path, marker: Path) -> Case:
    return _tb_case(_flip_byte(_event_file(inp), 8), "CRC")  # the first record's length CRC


@case
def tb_bad_data_crc(inp: Path, outside: Path, marker: Path) -> Case:
    path = _event_file(inp)
    (length,) = struct.unpack_from("<Q", path.read_bytes(), 0)
    return _tb_case(_flip_byte(path, 12 + length), "CRC")  # the first record's data CRC


@case
def tb_forged_huge_length(inp: Path, outside: Path, marker: Path) -> Case:
    path = _event_file(inp)
    data = bytearray(path.read_bytes())
    header = struct.pack("<Q", 2**62)
    data[0:12] = header + struct.pack("<I", _masked_crc(header))  # a valid CRC for it
    path.write_bytes(bytes(data))
    return _tb_case(path)


def _tb_cut(fraction: float) -> Builder:
    def build(inp: Path, outside: Path, marker: Path) -> Case:
        path = _event_file(inp)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        c = _tb_case(path)
        c.either = True  # a cut record is noted; a file cut inside its first record is refused
        return c

    return build


for _fraction in (0.01, 0.33, 0.5, 0.77, 0.999):
    CASES[f"tb-cut-at-{_fraction:.0%}"] = _tb_cut(_fraction)


# ------------------------------------------------------------------ text logs


def _log_case(inp: Path, name: str, content: bytes | str, *rules: str, refused: bool = False,
              fragments: tuple[str, ...] = ()) -> Case:  # fmt: skip
    path = inp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return Case(["--logs", name], name if refused else None, fragments, rules)


def _loss_rows(n: int = 12) -> list[tuple[int, float, float]]:
    return [(i, 2.0 / (i + 1), 2.1 / (i + 1)) for i in range(n)]


@case
def csv_5000_digit_integers(inp: Path, outside: Path, marker: Path) -> Case:
    big = "9" * 5000
    rows = [f"{s},{a},{b}" for s, a, b in _loss_rows()] + [f"{big},{big},1.0", f"13,{big},0.1"]
    return _log_case(inp, "metrics.csv", "step,train_loss,val_loss\n" + "\n".join(rows) + "\n")


@case
def jsonl_5000_digit_integers(inp: Path, outside: Path, marker: Path) -> Case:
    big = "9" * 5000
    lines = [json.dumps({"step": s, "train_loss": a, "val_loss": b}) for s, a, b in _loss_rows()]
    lines += [f'{{"step": {big}, "train_loss": {big}}}', f'{{"step": 13, "val_loss": -{big}}}']
    return _log_case(inp, "log.jsonl", "\n".join(lines))


@case
def jsonl_deeply_nested(inp: Path, outside: Path, marker: Path) -> Case:
    lines = [json.dumps({"step": s, "train_loss": a, "val_loss": b}) for s, a, b in _loss_rows()]
    lines.append('{"step": 20, "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    lines.append('{"step": 21, "x": ' + '{"a":' * 200_000 + "1" + "}" * 200_000 + "}")
    return _log_case(inp, "log.jsonl", "\n".join(lines))


@case
def trainer_state_deeply_nested(inp: Path, outside: Path, marker: Path) -> Case:
    doc = '{"log_history": ' + "[" * 300_000 + "]" * 300_000 + "}"
    return _log_case(inp, "trainer_state.json", doc, refused=True)


@case
def csv_binary_junk(inp: Path, outside: Path, marker: Path) -> Case:
    junk = bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8))
    return _log_case(inp, "metrics.csv", junk, refused=True)


@case
def csv_bom_and_mixed_line_endings(inp: Path, outside: Path, marker: Path) -> Case:
    endings = ["\r\n", "\n", "\r\n", "\n"]
    rows = [f"{s},{a},{b}{endings[s % 4]}" for s, a, b in _loss_rows()]
    text = "\ufeffstep,train_loss,val_loss\r\n" + "".join(rows)
    return _log_case(inp, "metrics.csv", text.encode("utf-8"))


@case
def csv_nan_and_inf_text(inp: Path, outside: Path, marker: Path) -> Case:
    rows = [f"{s},{a},{b}" for s, a, b in _loss_rows(8)] + ["8,nan,inf", "9,-Infinity,NaN"]
    text = "step,train_loss,val_loss\n" + "\n".join(rows) + "\n"
    return _log_case(inp, "metrics.csv", text, "loss-nonfinite")


@case
def csv_markup_metric_names(inp: Path, outside: Path, marker: Path) -> Case:
    name = f"val_loss{MARKUP}".replace(",", ";")
    rows = [f"{s},{a},{b}" for s, a, b in _loss_rows(8)] + ["8,nan,0.1"]
    text = f"step,train_loss,{name}\n" + "\n".join(rows) + "\n"
    return _log_case(inp, "metrics.csv", text, "loss-nonfinite")


@case
def mlflow_db_not_sqlite(inp: Path, outside: Path, marker: Path) -> Case:
    data = b"SQLite format 3\x00" + bytes(range(256)) * 40
    return _log_case(inp, "mlflow.db", data, refused=True)


@case
def mlflow_metric_file_junk(inp: Path, outside: Path, marker: Path) -> Case:
    exp = inp / "mlruns" / "1"
    run = exp / "r1"
    (run / "metrics").mkdir(parents=True)
    (exp / "meta.yaml").write_text("experiment_id: '1'\nname: e\nlifecycle_stage: active\n")
    (run / "meta.yaml").write_text("run_id: r1\nexperiment_id: '1'\nlifecycle_stage: active\n")
    lines = [f"1700000000 {2.0 / (i + 1)} {i}" for i in range(10)]
    lines += ["x y z", "1 " + "9" * 5000 + " 3", "\x00\xff", "1 nan 11"]
    (run / "metrics" / "train_loss").write_text("\n".join(lines), errors="surrogateescape")
    (run / "metrics" / f"val{MARKUP}".replace("/", "_")).write_text("1700000000 1.0 0\n")
    return Case(["--logs", "mlruns"], rules=("loss-nonfinite",), either=False)


@case
def logs_folder_symlink_outside(inp: Path, outside: Path, marker: Path) -> Case:
    (inp / "logs").mkdir()
    rows = "\n".join(f"{s},{a},{b}" for s, a, b in _loss_rows())
    (inp / "logs" / "metrics.csv").write_text("step,train_loss,val_loss\n" + rows + "\n")
    secret = outside / "metrics.csv"
    outside.mkdir(parents=True, exist_ok=True)
    secret.write_text("step,train_loss\n0,nan\n")
    (inp / "logs" / "linked").symlink_to(outside, target_is_directory=True)
    return Case(["--logs", "logs"])


# ------------------------------------------------------------------ splits


def _digits_csv(n: int = 60, extra: str = "") -> str:
    images, labels = _digits(n)
    header = ",".join(["label", *[f"pixel{i}" for i in range(64)]])
    rows = [",".join([str(y), *map(str, im.ravel())]) for im, y in zip(images, labels, strict=True)]
    return header + "\n" + "\n".join(rows) + "\n" + extra


@case
def split_csv_5000_digits_bom_crlf(inp: Path, outside: Path, marker: Path) -> Case:
    text = "\ufeff" + _digits_csv(extra="3," + ",".join(["9" * 5000] * 64) + "\r\n")
    (inp / "train.csv").write_text(text)
    return Case(["--split", "train=train.csv"])


@case
def split_csv_binary_junk(inp: Path, outside: Path, marker: Path) -> Case:
    junk = bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8))
    (inp / "train.csv").write_bytes(junk)
    return Case(["--split", "train=train.csv"], "train.csv")


@case
def npy_huge_shape(inp: Path, outside: Path, marker: Path) -> Case:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 64), }"
    header += " " * (117 - len(header)) + "\n"
    (inp / "train.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.encode())
    return Case(["--split", "train=train.npy"], "train.npy", ("truncated",))


def _png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of zeros, written row by row (never held in memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    pack = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@case
def image_decompression_bomb(inp: Path, outside: Path, marker: Path) -> Case:
    """A 30000 x 30000 PNG (900 MB of pixels) in under 1 MB."""
    (inp / "train" / "cat").mkdir(parents=True)
    (inp / "train" / "cat" / "bomb.png").write_bytes(_png(30_000, 30_000))
    return Case(["--split", "train=train"], "bomb.png")


@case
def image_folder_symlink_outside(inp: Path, outside: Path, marker: Path) -> Case:
    from PIL import Image

    images, labels = _digits(40)
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        folder = inp / "train" / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im * 16).save(folder / f"{i}.png")
    outside.mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[0] * 16).save(outside / "secret.png")
    (inp / "train" / "0" / "linked.png").symlink_to(outside / "secret.png")
    (inp / "train" / "linked-dir").symlink_to(outside, target_is_directory=True)
    return Case(["--split", "train=train"])


@case
def split_markup_names_and_labels(inp: Path, outside: Path, marker: Path) -> Case:
    from PIL import Image

    images, labels = _digits(40)
    for split in (f"train{MARKUP}", "test"):
        for i, (im, y) in enumerate(zip(images, labels, strict=True)):
            if split == "test" and i >= 5:
                break  # test: five exact copies of training images
            folder = inp / split.replace("/", "_") / f"{y}{MARKUP.replace('/', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im * 16).save(folder / f"{i}{MARKUP.replace('/', '_')}.png")
    train = f"train{MARKUP}".replace("/", "_")  # the folder; the name is not (it holds a =)
    return Case(
        ["--split", f"train={train}", "--split", "test=test"], rules=("split-overlap-exact",)
    )


def _register_extensions() -> None:
    """Cases for newer formats live in hostile_corpus_<area>.py beside this file, each
    registering with `@case`; importing them here puts them in the one corpus."""
    import importlib

    for path in sorted(Path(__file__).parent.glob("hostile_corpus_*.py")):
        importlib.import_module(path.stem)


def write_corpus(out: Path) -> dict[str, dict]:
    """Every case under out/<case>/in (its inputs) and out/<case>/outside, plus a manifest."""
    manifest = {}
    for name, build in CASES.items():
        inp, outside = out / name / "in", out / name / "outside"
        inp.mkdir(parents=True)
        manifest[name] = asdict(build(inp, outside, out / name / "MARKER"))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.modules.setdefault("hostile_corpus", sys.modules["__main__"])
    _register_extensions()
    print(f"{len(write_corpus(Path(sys.argv[1])))} cases written to {sys.argv[1]}")
