"""Hostile and broken checkpoints: refused through the real CLI, one clean line, nothing run.

Every file is built here from scratch. Each case runs `diag check FILE` in the audited
sandbox (hostile_sandbox.py: memory and time caps, every open and spawn logged) and asserts
exit code 2, exactly one stderr line `diag: error: <file>: <cause>`, no traceback, empty
stdout, nothing read outside the checkpoint's folder, nothing started, and (for payloads)
that the marker file the payload would create does not exist.
"""

from __future__ import annotations

import copyreg
import functools
import json
import os
import pickle
import random
import struct
import subprocess
import zipfile
from pathlib import Path

import helpers_pickles as hp
import hostile_sandbox as hs
import pytest
import torch
from safetensors.torch import save_file

from diag.loaders.safe_pickle import (
    CodeInPickle,
    Opaque,
    Reference,
    UnsupportedPickle,
    restricted_loads,
    to_plain,
)

RUNS_CODE = "loading it would run code"


def run_cli(path: Path, cwd: Path, *options: str, timeout: float = 60) -> hs.Outcome:
    """The CLI in the audited sandbox; the invariants of every run are checked here, with
    the checkpoint's folder as the only input folder."""
    outcome = hs.run_diag([str(path), *options], cwd=cwd, timeout=timeout)
    hs.check_invariants(outcome, allowed=[path.parent])
    return outcome


def assert_refused(path: Path, *fragments: str, marker: Path | None = None) -> str:
    """Exit 2, one `diag: error: <file>: ...` line naming the file, nothing else; returns it."""
    outcome = run_cli(path, cwd=path.parent if path.parent.exists() else Path.cwd())
    line = hs.check_refused(outcome, path.name, *fragments)
    if marker is not None:
        assert not marker.exists(), f"the payload ran: {marker} exists"
    return line


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def _payload_zip(path: Path, payload: object, protocol: int = 2) -> Path:
    """A torch-zip-shaped file whose data.pkl is `pickle.dumps(payload)`."""
    return hp.pickle_zip(path, pickle.dumps(payload, protocol=protocol))


# ------------------------------------------------------------------ code in the pickle


def test_the_payloads_are_real(tmp_path, marker):
    """Control: plain pickle does run the kind of payload the tests below feed to diag."""
    data = pickle.dumps(hp.Payload(hp.touch_marker, str(marker)), protocol=2)
    pickle.loads(data)
    assert marker.exists()


PAYLOADS = {
    "os.system": lambda m: hp.Payload(os.system, f"touch {m}"),
    "builtins.eval": lambda m: hp.Payload(eval, f"__import__('os').system('touch {m}')"),
    "subprocess.Popen": lambda m: hp.Payload(subprocess.Popen, ["touch", str(m)]),
    "functools.partial": lambda m: hp.Payload(functools.partial(os.system, f"touch {m}")),
    "unknown function": lambda m: hp.Payload(hp.touch_marker, str(m)),
}


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payload_in_data_pkl_is_refused(tmp_path, marker, kind, protocol):
    path = _payload_zip(tmp_path / "model.pt", PAYLOADS[kind](marker), protocol)
    line = assert_refused(path, RUNS_CODE, marker=marker)
    if kind == "unknown function":
        assert "calls helpers_pickles.touch_marker" in line


def test_getattr_gadget_is_refused(tmp_path, marker):
    # getattr(__import__("os"), "system")("touch MARKER"), written by hand in protocol 0.
    gadget = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR"
        + f"(Vtouch {marker}\ntR.".encode()
    )
    path = hp.pickle_zip(tmp_path / "gadget.pt", gadget)
    assert_refused(path, "builtins.getattr", RUNS_CODE, marker=marker)


def test_payload_next_to_real_tensors_is_refused(tmp_path, marker):
    payload = pickle.dumps(hp.Payload(os.system, f"touch {marker}"), protocol=2)
    items = hp.op_str("hook") + payload[2:-1] + b"s"  # drop PROTO and STOP
    entries = hp.extend_torch_dict({"w": torch.ones(3)}, items)
    path = hp.write_zip(tmp_path / "mixed.ckpt", entries)
    assert_refused(path, RUNS_CODE, marker=marker)


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "exec"),
        ("builtins", "__import__"),
        ("runpy", "_run_code"),
        ("pickle", "loads"),
        ("ctypes", "CDLL"),
        ("torch.serialization", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("pip", "main"),
    ],
)
def test_global_reference_without_a_call_is_refused(tmp_path, module, name):
    items = hp.op_str("ref") + f"c{module}\n{name}\n".encode() + b"s"
    entries = hp.extend_torch_dict({"w": torch.ones(3)}, items)
    path = hp.write_zip(tmp_path / "ref.pt", entries)
    assert_refused(path, f"imports {module}.{name}", RUNS_CODE)


# ------------------------------------------------------------------ formats diag will not run


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    assert_refused(path, "TorchScript")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickle_named_model_pt_is_refused(tmp_path, protocol):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=protocol))
    assert_refused(path, "pickle")


# ------------------------------------------------------------------ broken torch zips


@pytest.fixture
def torch_zip(tmp_path) -> Path:
    path = tmp_path / "good.pt"
    torch.save({"a": torch.arange(64.0), "b": torch.ones(4, 4)}, path)
    return path


@pytest.mark.parametrize("cut", ["10 bytes", "half", "all but the last 100 bytes"])
def test_truncated_torch_zip_is_refused(tmp_path, torch_zip, cut):
    data = torch_zip.read_bytes()
    keep = {"10 bytes": 10, "half": len(data) // 2, "all but the last 100 bytes": -100}[cut]
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:keep])
    assert_refused(path, "truncated")


def test_torch_zip_with_a_compressed_storage_is_refused(tmp_path, torch_zip):
    with zipfile.ZipFile(torch_zip) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    storage = next(n for n in entries if "/data/" in n)
    path = hp.write_zip(tmp_path / "deflated.pt", entries, compressed=frozenset({storage}))
    assert_refused(path, "compressed")


def test_torch_zip_with_a_compressed_data_pkl_is_refused(tmp_path, torch_zip):
    # A deflated data.pkl could be a zip bomb; torch.save never compresses anything.
    with zipfile.ZipFile(torch_zip) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    pkl = hp.data_pkl_name(entries)
    path = hp.write_zip(tmp_path / "deflated.pt", entries, compressed=frozenset({pkl}))
    assert_refused(path, "compressed")


def test_zip_without_data_pkl_is_refused(tmp_path, torch_zip):
    with zipfile.ZipFile(torch_zip) as zf:
        entries = {n: zf.read(n) for n in zf.namelist() if not n.endswith("data.pkl")}
    path = hp.write_zip(tmp_path / "nopkl.pt", entries)
    assert_refused(path, "without data.pkl")


def test_storage_shorter_than_its_header_is_refused(tmp_path, torch_zip):
    with zipfile.ZipFile(torch_zip) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    storage = next(n for n in entries if "/data/" in n and len(entries[n]) == 256)
    entries[storage] = entries[storage][:100]
    path = hp.write_zip(tmp_path / "short.pt", entries)
    assert_refused(path, "holds 100 bytes, its header says 256")


def test_tensor_past_the_end_of_its_storage_is_refused(tmp_path):
    items = hp.op_str("w") + hp.op_tensor("0", 8)  # 8 floats claimed, 2 stored
    path = hp.hand_torch_zip(tmp_path / "overrun.pt", items, {"0": b"\0" * 8})
    assert_refused(path, "storage")


def test_stride_zero_expansion_past_the_file_size_is_refused(tmp_path):
    """torch.save keeps an expand()ed view as it is: a one-element storage with stride 0.
    Reading `zeros(1).expand(2**36)` would allocate 256 GB from a 1.5 kB file; the tensor is
    refused by name before anything is allocated (the sandbox caps memory at 2 GB)."""
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.zeros(1).expand(2**36)}, path)
    assert path.stat().st_size < 4096
    assert_refused(path, "tensor 'w' would take 274877906944 bytes once read", "1073741824")


def test_small_expanded_views_still_read(tmp_path):
    """Broadcast buffers saved as stride-0 views (a bias over a batch, BERT's position_ids)
    are real checkpoints: they read, with the values the view shows."""
    from diag.loaders.torchzip import TorchZip

    tensors = {
        "bias": torch.randn(64, generator=torch.Generator().manual_seed(0)).expand(32, 64),
        "position_ids": torch.arange(512).expand(1, -1),
        "w": torch.randn(32, 64, generator=torch.Generator().manual_seed(1)),
    }
    path = tmp_path / "buffers.pt"
    torch.save(tensors, path)
    archive = TorchZip(path)
    try:
        for name, expected in tensors.items():
            assert torch.equal(archive.read(archive.root[name], name), expected), name
    finally:
        archive.close()
    assert_checked(path)


def test_random_bytes_named_pt_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x13" + random.Random(0).randbytes(4095))
    assert_refused(path, "not a torch checkpoint")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_refused(path, "not a torch checkpoint")


def test_directory_without_a_model_is_refused(tmp_path):
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    (folder / "README.md").write_text("no weights\n")
    assert_refused(folder, "no checkpoints or training logs found")


def test_missing_path_is_refused(tmp_path):
    assert_refused(tmp_path / "does_not_exist.pt", "no such file")


# ------------------------------------------------------------------ hostile structure


def test_pickle_mutating_a_tensor_with_build_is_refused(tmp_path):
    # BUILD writes straight into an object's __dict__, past a frozen dataclass.
    items = hp.op_str("w") + hp.op_tensor("0", 2)
    items += b"}" + hp.op_str("size") + hp.op_str("oops") + b"sb"
    path = hp.hand_torch_zip(tmp_path / "build.pt", items, {"0": b"\0" * 8})
    assert_refused(path, "unreadable checkpoint pickle")


def test_deeply_nested_state_dict_keys_are_refused(tmp_path):
    depth = 5000
    items = (hp.op_str("state_dict") + b"}") * depth + b"s" * (depth - 1)
    path = hp.hand_torch_zip(tmp_path / "deep.pt", items, {})
    assert_refused(path, "no tensors found")


def test_shared_state_dict_keys_do_not_explode(tmp_path):
    # Every level maps every known state-dict key to the same next level: 13**30 paths.
    from diag.loaders.checkpoint import STATE_KEYS

    items = hp.op_str("state_dict") + hp.shared_dicts(30, STATE_KEYS)
    path = hp.hand_torch_zip(tmp_path / "fanout.pt", items, {})
    assert_refused(path, "no tensors found")


def assert_checked(path: Path, *options: str) -> None:
    """The CLI finishes (exit 0 or 1) within the timeout and the memory cap, no traceback."""
    outcome = run_cli(path, path.parent, *options, timeout=30)
    assert outcome.returncode in (0, 1), outcome.shown()


def test_shared_nested_dicts_of_tensors_do_not_explode(tmp_path):
    # 10 keys per level, 14 levels, one tensor at the bottom: 10**14 tensor names as a tree.
    leaf = b"}" + hp.op_str("t") + hp.op_tensor("0", 2) + b"s"
    items = hp.op_str("w") + hp.op_tensor("0", 2) + hp.op_str("v") + hp.op_tensor("0", 2)
    items += hp.op_str("x") + hp.shared_dicts(14, tuple("abcdefghij"), leaf=leaf)
    path = hp.hand_torch_zip(tmp_path / "fanout.pt", items, {"0": b"\0" * 8})
    assert_checked(path)
    from diag.loaders.checkpoint import open_checkpoint

    names = [i.name for i in open_checkpoint(path).table.infos()]
    assert names == ["w", "v", "x" + ".a" * 14 + ".t"]  # each shared dict walked once


def test_shared_hyper_parameters_do_not_explode(tmp_path):
    # A "billion laughs" list in the metadata: 10**30 nodes if walked as a tree.
    items = hp.op_str("hyper_parameters") + hp.shared_lists(30, 10) + b"s"
    entries = hp.extend_torch_dict({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, items)
    path = hp.write_zip(tmp_path / "laughs.ckpt", entries)
    assert_checked(path, "--format", "json")


def test_unprintable_hyper_parameters_are_described(tmp_path):
    huge = b"\x8b" + struct.pack("<i", 2000) + b"\x7f" * 2000  # LONG4: 4800 digits
    depth = 50_000
    deep = b"]" * depth + b"a" * (depth - 1)
    hyper = b"}(" + huge + huge + hp.op_str("s") + b"cbuiltins\nslice\n" + deep + b"NN\x87Ru"
    items = hp.op_str("hyper_parameters") + hyper + b"s"
    entries = hp.extend_torch_dict({"state_dict": {"w": torch.ones(3)}}, items)
    path = hp.write_zip(tmp_path / "hyper.ckpt", entries)
    from diag.loaders.checkpoint import open_checkpoint

    plain = open_checkpoint(path).meta.extra["hyper_parameters"]
    assert plain == {"<unprintable int>": "<15999-bit int>", "s": "<unprintable slice>"}


def test_huge_epoch_number_is_ignored(tmp_path):
    items = hp.op_str("epoch") + b"\x8a\xff" + b"\x7f" * 255 + b"s"  # LONG1, 2040 bits
    entries = hp.extend_torch_dict({"state_dict": {"w": torch.ones(3)}}, items)
    path = hp.write_zip(tmp_path / "epoch.ckpt", entries)
    from diag.loaders.checkpoint import open_checkpoint

    assert open_checkpoint(path).meta.epoch is None
    items = hp.op_str("epoch") + b"\x8b" + struct.pack("<i", 2000) + b"\x7f" * 2000 + b"s"
    entries = hp.extend_torch_dict({"state_dict": {"w": torch.ones(3)}}, items)
    path = hp.write_zip(tmp_path / "epoch.ckpt", entries)  # 16000 bits: over int->str limits
    assert_checked(path, "--format", "json")


@pytest.mark.parametrize(
    "optimizer",
    [
        {"state": {}, "param_groups": [{"params": 5}]},
        {"state": {}, "param_groups": [{"params": [[0]]}]},
        {"state": {0: {"step": 10**400}}, "param_groups": [{"params": [0]}]},
        {"state": {}, "param_groups": [{"params": [0], "param_names": [["w"]]}]},
        {"state": [], "param_groups": "x"},
    ],
    ids=["params-int", "params-unhashable", "huge-step", "names-unhashable", "wrong-types"],
)
def test_hostile_optimizer_state_does_not_crash(tmp_path, optimizer):
    path = tmp_path / "opt.pt"
    torch.save({"model": {"w": torch.ones(3)}, "optimizer": optimizer}, path)
    from diag.loaders.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    assert ckpt.optimizer is None or not ckpt.optimizer.mapped or ckpt.optimizer.params


# ------------------------------------------------------------------ safetensors


def _raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_truncated_safetensors_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(16)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    assert_refused(path, "truncated")


def test_safetensors_header_length_2_to_the_60_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b'{"w": {}}')
    assert_refused(path, "safetensors")


def test_safetensors_header_not_json_is_refused(tmp_path):
    path = _raw_safetensors(tmp_path / "nojson.safetensors", b"{this is not json}")
    assert_refused(path, "not valid JSON")


def test_safetensors_header_invalid_utf8_is_refused(tmp_path):
    path = _raw_safetensors(tmp_path / "utf8.safetensors", b'{"w\xff\xfe": 1}')
    assert_refused(path, "not valid JSON")


def test_safetensors_overlapping_offsets_are_refused(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = _raw_safetensors(tmp_path / "overlap.safetensors", header, b"\0" * 12)
    assert_refused(path, "overlaps")


def test_safetensors_offsets_out_of_range_are_refused(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = _raw_safetensors(tmp_path / "range.safetensors", header, b"\0" * 8)
    assert_refused(path, "truncated")


def test_safetensors_unknown_dtype_is_refused(tmp_path):
    header = {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}
    path = _raw_safetensors(tmp_path / "dtype.safetensors", header, b"\0" * 8)
    assert_refused(path, "malformed")


# ------------------------------------------------------------------ sharded indexes


def _index(folder: Path, weight_map: dict[str, object]) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_shard_outside_the_index_folder_is_refused(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "outside.safetensors")
    path = _index(tmp_path / "ckpt", {"w": "../outside.safetensors"})
    assert_refused(path, "outside the checkpoint's folder")


def test_missing_shard_is_refused(tmp_path):
    path = _index(tmp_path / "ckpt", {"w": "model-00001-of-00002.safetensors"})
    assert_refused(path, "is missing")


@pytest.mark.parametrize(
    "shard",
    [["model.safetensors"], "model.safetensors.index.json", "bad\0name.safetensors", ""],
    ids=["list", "itself", "nul", "empty"],
)
def test_bad_shard_names_are_refused(tmp_path, shard):
    path = _index(tmp_path / "ckpt", {"w": shard})
    assert_refused(path, "shard")


def test_index_that_is_not_json_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / "model.safetensors.index.json"
    path.write_text("[" * 100000 + "]" * 100000)
    assert_refused(path, "weight_map")


# ------------------------------------------------------------------ restricted_loads itself


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_loads_plain_data_every_protocol(protocol):
    value = {"a": [1, 2.5, "x", b"raw", None, True], "b": (1, 2), "c": {3}, "d": 10**30}
    assert restricted_loads(pickle.dumps(value, protocol=protocol)) == value


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_loads_refuses_a_call_every_protocol(protocol, marker):
    data = pickle.dumps(hp.Payload(hp.touch_marker, str(marker)), protocol=protocol)
    with pytest.raises(CodeInPickle, match=r"calls helpers_pickles\.touch_marker"):
        restricted_loads(data)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_loads_classes_become_inert_placeholders(protocol):
    data = pickle.dumps({"color": hp.Color.RED, "cfg": hp.HyperDict(lr=0.1)}, protocol=protocol)
    loaded = restricted_loads(data)
    assert isinstance(loaded["color"], Opaque) and isinstance(loaded["cfg"], Opaque)
    assert loaded["color"].global_name == "helpers_pickles.Color"
    assert to_plain(loaded) == {"color": "red", "cfg": {"lr": 0.1}}


def test_restricted_loads_naming_a_function_is_inert():
    loaded = restricted_loads(pickle.dumps({"f": hp.touch_marker}, protocol=4))
    assert isinstance(loaded["f"], Reference)
    with pytest.raises(CodeInPickle):
        loaded["f"]("x")


def test_stack_global_through_the_memo_is_refused():
    # Protocol 4: module and name pushed, memoized, popped, and fetched back from the memo.
    data = (
        b"\x80\x04"
        + b"\x8c\x02os\x94"  # SHORT_BINUNICODE "os", MEMOIZE -> 0
        + b"\x8c\x06system\x94"  # -> 1
        + b"00"  # POP POP
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + b"\x8c\x04true\x85R."
    )
    with pytest.raises(CodeInPickle, match=r"os\.system"):
        restricted_loads(data)


def test_stack_global_with_non_string_names_is_refused():
    data = b"\x80\x04K\x01K\x02\x93."  # STACK_GLOBAL(1, 2)
    with pytest.raises(UnsupportedPickle):
        restricted_loads(data)


@pytest.fixture
def extension():
    """A copyreg extension code naming helpers_pickles.touch_marker, removed afterwards."""
    code = 0xBEEF
    copyreg.add_extension("helpers_pickles", "touch_marker", code)
    yield code
    copyreg.remove_extension("helpers_pickles", "touch_marker", code)


def test_ext_opcode_is_refused(extension, marker):
    data = pickle.dumps(hp.Payload(hp.touch_marker, str(marker)), protocol=2)
    assert b"\x83" in data  # EXT2: the global is written as a registry code
    with pytest.raises((CodeInPickle, UnsupportedPickle)):
        restricted_loads(data)
    assert not marker.exists()


def test_ext_opcode_is_refused_even_when_the_extension_cache_is_warm(extension, marker, tmp_path):
    # Plain pickle caches code -> real function in copyreg._extension_cache; the C unpickler
    # answers EXT from that cache without asking find_class.
    warm = tmp_path / "warm"
    pickle.loads(pickle.dumps(hp.Payload(hp.touch_marker, str(warm)), protocol=2))
    assert warm.exists()
    data = pickle.dumps(hp.Payload(hp.touch_marker, str(marker)), protocol=2)
    with pytest.raises((CodeInPickle, UnsupportedPickle)):
        restricted_loads(data)
    assert not marker.exists()


def test_ext_opcode_does_not_poison_the_extension_cache(extension):
    with pytest.raises((CodeInPickle, UnsupportedPickle)):
        restricted_loads(pickle.dumps({"f": hp.touch_marker}, protocol=2))
    assert pickle.loads(pickle.dumps(hp.touch_marker, protocol=2)) is hp.touch_marker


def test_deep_nesting_is_a_clean_error():
    depth = 200_000
    nested = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    loaded = restricted_loads(nested)  # building it is iterative: fine
    assert isinstance(loaded, list)
    # ...but anything that recurses over it (here `str`, an allowed builtin) must fail cleanly.
    as_text = b"\x80\x02cbuiltins\nstr\n" + b"]" * depth + b"a" * (depth - 1) + b"\x85R."
    with pytest.raises(UnsupportedPickle, match="nested too deeply"):
        restricted_loads(as_text)
    assert to_plain(loaded) is not None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80\x02", b"\x80\x02}(", b"\x80\x02\xff.", b"\x80\x02.", b"\x80\x05\x97."],
    ids=["empty", "proto-only", "unterminated", "bad-opcode", "empty-stack", "next-buffer"],
)
def test_malformed_pickles_are_a_clean_error(data):
    with pytest.raises(UnsupportedPickle):
        restricted_loads(data)


def test_huge_memo_index_is_refused_before_the_memo_grows():
    # The C unpickler sizes its memo to twice the index and zeroes it: 24 GB here (fuzzing).
    data = b"\x80\x02]r" + struct.pack("<I", 0x58000000) + b"."
    with pytest.raises(UnsupportedPickle, match="memo index 1476395008 is out of range"):
        restricted_loads(data)
    assert restricted_loads(b"\x80\x02]r" + struct.pack("<I", 200_000) + b".") == []


def test_persistent_ids_other_than_storages_are_refused():
    with pytest.raises(UnsupportedPickle, match="persistent id"):
        restricted_loads(b"\x80\x02Vfile\nQ.")


def test_memory_bombs_through_allowed_builtins_are_refused():
    import pickle

    from diag.loaders.safe_pickle import CodeInPickle, restricted_loads

    for payload in (
        b"c__builtin__\nrange\n(J\x00\xca\x9a;tR.",
        b"c__builtin__\nbytes\n(J\x00\xca\x9a;tR.",
    ):
        with pytest.raises(CodeInPickle):
            restricted_loads(payload)
    assert pickle.loads(b"c__builtin__\nrange\n(K\x03tR.") == range(3)  # the payloads are real
