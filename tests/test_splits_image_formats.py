"""Image splits in WebDataset shards and Hugging Face `datasets` folders, on real digits.

scikit-learn's 8x8 digits, split by stand-in writer (10 consecutive samples each, as in
test_leakage.py), are written as PNGs by the real `webdataset.TarWriter` and by
`datasets.Dataset.save_to_disk` (Image feature, ClassLabel labels). A planted exact copy,
a brightness-changed near copy and a repeat inside train must be found through the real
CLI, named `shard.tar:key` or `data-...arrow row N`; the clean split raises nothing.
Broken shards give one `InputError` naming the shard.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import GroupShuffleSplit

from diag.cli import cli
from diag.errors import InputError
from diag.loaders.splits.loaders import open_split
from diag.loaders.splits.model import IMAGE, TEXT

LEAK_RULES = {"split-overlap-exact", "split-overlap-near", "duplicates-within-split"}
N_TRAIN, N_TEST = 300, 100


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    d = load_digits()
    images = (d.images * 15).astype(np.uint8)
    groups = np.arange(len(images)) // 10
    gss = GroupShuffleSplit(n_splits=1, test_size=0.4, random_state=0)
    train, rest = next(gss.split(images, groups=groups))
    return {
        "images": images,
        "labels": d.target,
        "train": np.sort(train)[:N_TRAIN],
        "test": np.sort(rest)[:N_TEST],
    }


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def brighter(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.float64) * 0.8 + 1, 0, 255).round().astype(np.uint8)


def planted(digits: dict) -> tuple[list[int], list[int], list[np.ndarray], list[np.ndarray]]:
    """(train labels, test labels, train images, test images): train repeats its #5 at
    the end; test ends with an exact copy of train #3 and a near copy of train #10."""
    x, y = digits["images"], digits["labels"]
    tr, te = digits["train"], digits["test"]
    train = [*x[tr], x[tr[5]]]
    test = [*x[te], x[tr[3]], brighter(x[tr[10]])]
    return [*y[tr], y[tr[5]]], [*y[te], y[tr[3]], y[tr[10]]], train, test


def write_shards(folder: Path, prefix: str, images: list, labels: list, per_shard: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(images), per_shard)):
        with wds.TarWriter(str(folder / f"{prefix}-{k:06d}.tar")) as sink:
            for i in range(start, min(start + per_shard, len(images))):
                sink.write(
                    {"__key__": f"sample{i:06d}", "png": png(images[i]), "cls": int(labels[i])}
                )


def check(*splits: str) -> dict:
    args = ["check", *[a for s in splits for a in ("--split", s)], "--format", "json", "-q"]
    result = CliRunner().invoke(
        cli, [*args, "--select", "data", "--fail-on", "never", "--isolated"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def findings(report: dict) -> dict[str, dict]:
    return {f["rule"]: f for f in report["findings"] if f["rule"] in LEAK_RULES}


def pairs(finding: dict) -> set[tuple[int, int]]:
    return {(p[0], p[1]) for p in finding["evidence"]["pairs"]}


def assert_planted_found(report: dict) -> dict[str, dict]:
    got = findings(report)
    assert set(got) == LEAK_RULES, sorted(got)
    assert pairs(got["split-overlap-exact"]) == {(3, N_TEST)}
    assert pairs(got["split-overlap-near"]) == {(10, N_TEST + 1)}
    assert pairs(got["duplicates-within-split"]) == {(5, N_TRAIN)}
    return got


# ---------------------------------------------------------------- WebDataset


def test_webdataset_planted_copies_found_and_clean_split_silent(tmp_path, digits):
    ytr, yte, train, test = planted(digits)
    write_shards(tmp_path / "train", "train", train, ytr, per_shard=100)
    write_shards(tmp_path / "test", "test", test, yte, per_shard=100)
    report = check(
        f"train={tmp_path / 'train'}", f"test={tmp_path / 'test/test-{000000..000001}.tar'}"
    )
    got = assert_planted_found(report)
    assert "train-000001.tar:sample000003" not in got["split-overlap-exact"]["message"]
    assert "train-000000.tar:sample000003" in got["split-overlap-exact"]["message"]
    assert "test-000001.tar:sample000100" in got["split-overlap-exact"]["message"]

    clean = check(
        f"train={tmp_path / 'train' / 'train-*.tar'}",
        f"test={tmp_path / 'test' / 'test-000000.tar'}",
    )
    # The first test shard holds none of the planted samples (they are #100 and #101).
    assert findings(clean).keys() <= {"duplicates-within-split"}


def test_webdataset_labels_ids_chunks_and_take(tmp_path, digits):
    x, y = digits["images"], digits["labels"]
    images, labels = list(x[:25]), list(y[:25])
    write_shards(tmp_path, "s", images, labels, per_shard=10)
    split = open_split("train", tmp_path)
    assert split.kind == IMAGE and len(split) == 25
    assert split.labels.tolist() == [int(v) for v in labels]
    assert split.sample_id(24) == "s-000002.tar:sample000024"
    chunks = list(split.samples.chunks(7))
    assert [start for start, _ in chunks] == [0, 7, 14, 21]
    got = [img for _, c in chunks for img in c]
    assert all(np.array_equal(a, b) for a, b in zip(got, images, strict=True))
    taken = split.samples.take([24, 0, 13])
    assert all(np.array_equal(a, images[i]) for a, i in zip(taken, [24, 0, 13], strict=True))


def test_webdataset_json_labels_and_text_samples(tmp_path):
    shard = tmp_path / "j.tar"
    with wds.TarWriter(str(shard)) as sink:
        sink.write(
            {"__key__": "a/one", "png": png(np.eye(8, dtype=np.uint8) * 200), "json": {"label": 7}}
        )
        sink.write(
            {"__key__": "a/two", "png": png(np.ones((8, 8), np.uint8)), "json": {"label": 2}}
        )
    split = open_split("train", shard)
    assert split.labels.tolist() == [7, 2] and split.sample_id(0) == "j.tar:a/one"
    text = tmp_path / "t.tar"
    with wds.TarWriter(str(text)) as sink:
        for i, words in enumerate(["first text sample", "second one"]):
            sink.write({"__key__": f"doc{i}", "txt": words, "cls": i})
    split = open_split("train", text)
    assert split.kind == TEXT and split.samples.take([1]) == ["second one"]
    assert split.labels.tolist() == [0, 1]


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def test_unsafe_members_are_skipped_never_followed(tmp_path):
    image = png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    raw = tar_with([
        member("../outside.png", image),
        member("/etc/abs.png", image),
        member("link.png", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        member("hard.png", kind=tarfile.LNKTYPE, link="ok.png"),
        member("ok.png", image),
        member("ok.cls", b"3"),
    ])  # fmt: skip
    shard = tmp_path / "s.tar"
    shard.write_bytes(raw)
    split = open_split("train", shard)
    assert len(split) == 1 and split.sample_id(0) == "s.tar:ok" and split.labels.tolist() == [3]
    assert any("'..' paths skipped" in n for n in split.notes)
    assert any("links" in n for n in split.notes)


def test_broken_shards_name_the_shard(tmp_path, digits):
    write_shards(tmp_path / "ok", "s", list(digits["images"][:6]), list(digits["labels"][:6]), 6)
    raw = (tmp_path / "ok" / "s-000000.tar").read_bytes()
    cases = {
        "cut-in-data.tar": raw[:1600],
        "cut-in-header.tar": raw[: 512 * 5 + 100],
        "garbage-after.tar": raw[: len(raw) - 2048] + b"\x01" * 2048,
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as err:
            open_split("train", path)
        assert err.value.path == str(path), name
        assert "tar" in err.value.cause and "\n" not in err.value.cause, (name, err.value.cause)


def test_a_member_claiming_a_terabyte_is_refused_unread(tmp_path):
    info = tarfile.TarInfo("big.png")
    info.size = 2**40
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    shard = tmp_path / "big.tar"
    shard.write_bytes(header + b"\x89PNG" + bytes(508))
    with pytest.raises(InputError, match=r"claims 1099511627776 bytes"):
        open_split("train", shard)


def test_missing_shard_in_a_brace_range(tmp_path, digits):
    write_shards(tmp_path, "s", list(digits["images"][:4]), list(digits["labels"][:4]), 2)
    with pytest.raises(InputError, match=r"s-000002\.tar"):
        open_split("train", tmp_path / "s-{000000..000002}.tar")


# ---------------------------------------------------------------- datasets Image feature


def image_dataset(images: list, labels: list) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    pil = [Image.fromarray(i) for i in images]
    return datasets.Dataset.from_dict(
        {"image": pil, "label": [int(v) for v in labels]}, features=features
    )


def test_saved_image_dataset_planted_copies_found_and_clean_silent(tmp_path, digits):
    ytr, yte, train, test = planted(digits)
    image_dataset(train, ytr).save_to_disk(tmp_path / "train", num_shards=2)
    image_dataset(test, yte).save_to_disk(tmp_path / "test")
    got = assert_planted_found(check(f"train={tmp_path / 'train'}", f"test={tmp_path / 'test'}"))
    assert "data-00000-of-00001.arrow row 100" in got["split-overlap-exact"]["message"]
    split = open_split("train", tmp_path / "train")
    assert split.labels.tolist() == [int(v) for v in ytr]
    assert np.array_equal(split.samples.take([N_TRAIN])[0], train[N_TRAIN])

    image_dataset(test[:N_TEST], yte[:N_TEST]).save_to_disk(tmp_path / "clean")
    clean = check(f"train={tmp_path / 'train'}", f"test={tmp_path / 'clean'}")
    assert findings(clean).keys() <= {"duplicates-within-split"}


def test_image_path_outside_the_folder_is_not_followed(tmp_path):
    import pyarrow as pa

    secret = tmp_path / "secret.png"
    secret.write_bytes(png(np.ones((8, 8), np.uint8)))
    folder = tmp_path / "ds"
    image_dataset([np.zeros((8, 8), np.uint8)] * 2, [0, 1]).save_to_disk(folder)
    arrow = folder / "data-00000-of-00001.arrow"
    table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
    cells = pa.array(
        [{"bytes": None, "path": "../secret.png"}] * 2, type=table.schema.field("image").type
    )
    table = table.set_column(0, "image", cells)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    split = open_split("train", folder)
    with pytest.raises(InputError, match="points outside the folder: not followed"):
        list(split.samples.chunks(2))


def test_an_image_caption_is_not_a_label(tmp_path):
    shard = tmp_path / "c.tar"
    with wds.TarWriter(str(shard)) as sink:
        sink.write(
            {"__key__": "a", "png": png(np.zeros((8, 8), np.uint8)), "txt": "a cat on a mat"}
        )
        sink.write({"__key__": "b", "png": png(np.ones((8, 8), np.uint8)), "txt": "a dog"})
    split = open_split("train", shard)
    assert split.kind == IMAGE and split.labels is None and len(split) == 2
