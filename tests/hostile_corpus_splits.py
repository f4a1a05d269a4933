"""Hostile split inputs in the newer formats: WebDataset shards, `datasets` folders, JSONL.

Registered into the one hostile corpus (tests/hostile_corpus.py) and run by
test_hostile_corpus.py in the audited sandbox: each is refused with one line naming the
file, or checked, and nothing under `outside` is ever opened.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
from hostile_corpus import Case, _digits, _secret, case


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _shard(path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]], n: int = 6) -> None:
    """A WebDataset shard of real digits (key, .png, .cls), with `extra` members first."""
    images, labels = _digits(n)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
        for i in range(n):
            for ext, data in (("png", _png(images[i] * 15)), ("cls", str(labels[i]).encode())):
                info = tarfile.TarInfo(f"sample{i:06d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@case
def webdataset_parent_traversal_member(inp: Path, outside: Path, marker: Path) -> Case:
    """A member named ../outside/secret.png: never a path to read, so skipped and noted."""
    secret = _secret(outside, "secret.png")
    _shard(
        inp / "train.tar",
        [_member(f"../{outside.name}/{secret.name}", _png(np.eye(8, dtype=np.uint8) * 255))],
    )
    return Case(["--split", "train=train.tar", "--split", "test=train.tar"],
                rules=("split-overlap-exact",))  # fmt: skip


@case
def webdataset_symlink_member(inp: Path, outside: Path, marker: Path) -> Case:
    secret = _secret(outside, "secret.png")
    extra = [
        _link("evil.png", str(secret), tarfile.SYMTYPE),
        _link("evil2.png", f"../{outside.name}/secret.png", tarfile.LNKTYPE),
    ]
    _shard(inp / "train.tar", extra)
    return Case(["--split", "train=train.tar"])


@case
def webdataset_member_claims_a_terabyte(inp: Path, outside: Path, marker: Path) -> Case:
    info = tarfile.TarInfo("sample000000.png")
    info.size = 2**40
    (inp / "train.tar").write_bytes(info.tobuf(format=tarfile.PAX_FORMAT) + bytes(4096))
    return Case(["--split", "train=train.tar"], "train.tar", ("claims 1099511627776 bytes",))


@case
def webdataset_truncated_shard(inp: Path, outside: Path, marker: Path) -> Case:
    _shard(inp / "full.tar", [])
    raw = (inp / "full.tar").read_bytes()
    (inp / "full.tar").unlink()
    (inp / "train-000001.tar").write_bytes(raw[: len(raw) // 2 + 37])
    return Case(["--split", "train=train-{000001..000001}.tar"], "train-000001.tar", ("tar",))


def _saved(folder: Path, n: int = 8) -> Path:
    import datasets

    images, labels = _digits(n)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    pictures = [_png(im * 15) for im in images]
    rows = {"image": [{"bytes": p, "path": None} for p in pictures], "label": labels.tolist()}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(folder)
    return folder / "data-00000-of-00001.arrow"


@case
def datasets_arrow_forged_length(inp: Path, outside: Path, marker: Path) -> Case:
    """The record batch message claims 2 GB of metadata: read from a memory map, refused."""
    arrow = _saved(inp / "train")
    raw = bytearray(arrow.read_bytes())
    schema_len = struct.unpack_from("<i", raw, 4)[0]
    at = 8 + schema_len  # the second message: continuation marker, then its length
    assert raw[at : at + 4] == b"\xff\xff\xff\xff"
    struct.pack_into("<i", raw, at + 4, 0x7FFFFFF0)
    arrow.write_bytes(bytes(raw))
    return Case(["--split", "train=train"], "data-00000-of-00001.arrow", ("Arrow",))


@case
def datasets_arrow_cut_body(inp: Path, outside: Path, marker: Path) -> Case:
    arrow = _saved(inp / "train")
    raw = arrow.read_bytes()
    arrow.write_bytes(raw[: len(raw) - 700])
    return Case(["--split", "train=train"], "data-00000-of-00001.arrow", ("Arrow",))


@case
def datasets_image_path_outside(inp: Path, outside: Path, marker: Path) -> Case:
    import pyarrow as pa

    secret = _secret(outside, "secret.png")
    arrow = _saved(inp / "train")
    table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
    kind = table.schema.field("image").type
    evil = [{"bytes": None, "path": f"../../{outside.name}/{secret.name}"}] * table.num_rows
    table = table.set_column(0, "image", pa.array(evil, type=kind))
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Case(["--split", "train=train"], "data-00000-of-00001.arrow", ("outside the folder",))


@case
def datasets_state_names_a_file_outside(inp: Path, outside: Path, marker: Path) -> Case:
    _secret(outside, "data.arrow")
    _saved(inp / "train")
    state = json.loads((inp / "train" / "state.json").read_text())
    state["_data_files"] = [{"filename": f"../../{outside.name}/data.arrow"}]
    (inp / "train" / "state.json").write_text(json.dumps(state))
    return Case(["--split", "train=train"], "state.json", ("not a plain name",))


@case
def datasets_dict_split_outside(inp: Path, outside: Path, marker: Path) -> Case:
    outside.mkdir(parents=True, exist_ok=True)
    (inp / "dd").mkdir()
    (inp / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": [f"../../{outside.name}"]}))
    return Case(["--split", "train=dd"], "dataset_dict.json", ("not a plain name",))


@case
def jsonl_one_gigabyte_line(inp: Path, outside: Path, marker: Path) -> Case:
    """A sparse 1 GiB line: refused after reading the first 16 MiB, never held whole."""
    with (inp / "train.jsonl").open("wb") as fh:
        fh.write(b'{"text": "fine"}\n{"text": "')
        fh.seek(2**30)
        fh.write(b'"}\n')
    return Case(["--split", "train=train.jsonl"], "train.jsonl", ("line 2 is longer than",))


@case
def jsonl_nul_byte(inp: Path, outside: Path, marker: Path) -> Case:
    (inp / "train.jsonl").write_bytes(b'{"text": "a"}\n{"text": "b\x00c"}\n')
    return Case(["--split", "train=train.jsonl"], "train.jsonl", ("invalid JSON at line 2",))


@case
def jsonl_invalid_utf8(inp: Path, outside: Path, marker: Path) -> Case:
    (inp / "train.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xff\xfe"}\n')
    return Case(["--split", "train=train.jsonl"], "train.jsonl", ("line 2: not UTF-8",))


@case
def datasets_state_symlink_outside(inp: Path, outside: Path, marker: Path) -> Case:
    """state.json is a symlink to a file outside the input: refused before it is opened."""
    _saved(inp / "train")
    real = _secret(outside, "state.json")
    real.write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (inp / "train" / "state.json").unlink()
    (inp / "train" / "state.json").symlink_to(real)
    return Case(["--split", "train=train"], "state.json", ("symlink",))
