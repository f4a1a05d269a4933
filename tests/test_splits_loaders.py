"""Split loaders on real data (scikit-learn's digits and sample photos) and on broken files.

Every format is written here from the same 1,797 real 8x8 digits, and read back through
`open_split`: kinds, lengths, labels, groups, ids, excluded columns, chunk contents (equal
to the original data), chunk sizes and `take` of arbitrary indices. Broken and hostile
files must give one `InputError` with a one-line cause, never another exception.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import struct
import sys
import tempfile
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import helpers_pickles as hp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from diag.errors import InputError
from diag.loaders.splits.loaders import open_split
from diag.loaders.splits.model import IMAGE, TABLE, TEXT, TableChunk

# ---------------------------------------------------------------- real data, written once

DIGITS = load_digits()
X = DIGITS.images  # (1797, 8, 8) float64, values 0..16
Y = DIGITS.target
N = len(Y)
G = np.arange(N) // 60  # 30 groups of 60 consecutive samples
PIXELS = (X * 15).astype(np.uint8)  # 0..240: the digits as 8-bit images
PHOTOS = load_sample_images().images  # two real (427, 640, 3) uint8 photos
PICK = [1796, 0, 5, 5, 911, 3]  # unsorted, repeated, both ends


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("splits")
    out = {
        "npz": root / "digits.npz",
        "npz_compressed": root / "digits_c.npz",
        "npy": root / "digits.npy",
        "csv": root / "digits.csv",
        "tsv": root / "digits.tsv",
        "parquet": root / "digits.parquet",
        "pt": root / "digits.pt",
        "folder": root / "digits_folder",
        "photos": root / "photos",
    }
    np.savez(out["npz"], x=X, y=Y, group=G)
    np.savez_compressed(out["npz_compressed"], images=X.astype(np.float32), labels=Y, writer=G)
    np.save(out["npy"], DIGITS.data)
    _write_table(out["csv"], ",")
    _write_table(out["tsv"], "\t")
    _write_parquet(out["parquet"])
    tensors = {"x": torch.from_numpy(X.copy()), "y": torch.from_numpy(Y.copy())}
    torch.save({**tensors, "group": torch.from_numpy(G.copy())}, out["pt"])
    _write_image_folder(out["folder"])
    out["photos"].mkdir()
    for i, photo in enumerate(PHOTOS):
        Image.fromarray(photo).save(out["photos"] / f"photo_{i}.png")
    return out


def _header() -> list[str]:
    return ["id", *[f"feat_{i}" for i in range(64)], "label", "group", "source"]


def _write_table(path: Path, delimiter: str) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(_header())
        for i in range(N):
            row = [f"{v:g}" for v in DIGITS.data[i]]
            writer.writerow([f"s{i:05d}", *row, Y[i], G[i], f"digits/{i:04d}.png"])


def _write_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": pa.array([f"s{i:05d}" for i in range(N)])}
    for i in range(64):
        columns[f"feat_{i}"] = pa.array(DIGITS.data[:, i])
    columns["label"] = pa.array(Y)
    columns["group"] = pa.array(G)
    columns["source"] = pa.array([f"digits/{i:04d}.png" for i in range(N)])
    pq.write_table(pa.table(columns), path, row_group_size=500)


def _write_image_folder(root: Path) -> None:
    for i in range(N):
        folder = root / str(Y[i])
        folder.mkdir(parents=True, exist_ok=True)
        # A few JPEGs among the PNGs, as real folders mix them.
        suffix = ".jpg" if i % 400 == 7 else ".png"
        Image.fromarray(PIXELS[i], mode="L").save(folder / f"{i:04d}{suffix}")


def _folder_order() -> list[int]:
    """Sample indices in the order the folder split lists them (class, then file name)."""
    names = sorted((str(Y[i]), f"{i:04d}") for i in range(N))
    return [int(stem) for _label, stem in names]


def _all_chunks(split, size: int) -> list[tuple[int, object]]:
    return list(split.samples.chunks(size))


def _stack_numeric(chunks: list[tuple[int, object]]) -> np.ndarray:
    return np.concatenate([chunk.numeric for _start, chunk in chunks])


def refused(call, *fragments: str) -> InputError:
    """Run `call`, expect one InputError whose one-line cause holds every fragment."""
    with pytest.raises(InputError) as info:
        call()
    err = info.value
    assert "\n" not in str(err) and "\r" not in str(err), str(err)
    for fragment in fragments:
        assert fragment in err.cause, f"{fragment!r} not in {err.cause!r}"
    return err


# ---------------------------------------------------------------- arrays


def test_npz_images_labels_groups_chunks_and_take(files: dict[str, Path]) -> None:
    split = open_split("train", files["npz"])
    assert (split.name, split.kind, len(split)) == ("train", IMAGE, N)
    np.testing.assert_array_equal(split.labels, Y)
    np.testing.assert_array_equal(split.groups, G)
    assert split.ids is None and split.sample_id(17) == "#17"
    chunks = _all_chunks(split, 100)
    assert [start for start, _ in chunks] == list(range(0, N, 100))
    assert [len(chunk) for _, chunk in chunks] == [100] * 17 + [97]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), X)
    taken = split.samples.take(PICK)
    assert len(taken) == len(PICK)
    for index, image in zip(PICK, taken, strict=True):
        np.testing.assert_array_equal(image, X[index])
    assert split.samples.take([]) == []


def test_compressed_npz_with_aliases(files: dict[str, Path]) -> None:
    split = open_split("val", files["npz_compressed"])
    assert split.kind == IMAGE
    np.testing.assert_array_equal(split.labels, Y)
    np.testing.assert_array_equal(split.groups, G)  # the `writer` alias
    got = np.concatenate([c for _, c in _all_chunks(split, 512)])
    np.testing.assert_array_equal(got, X.astype(np.float32))


def test_npy_is_a_table_of_the_original_rows(files: dict[str, Path]) -> None:
    split = open_split("test", files["npy"])
    assert (split.kind, len(split), split.labels, split.groups) == (TABLE, N, None, None)
    chunks = _all_chunks(split, 256)
    assert all(isinstance(c, TableChunk) and c.text is None for _, c in chunks)
    np.testing.assert_array_equal(_stack_numeric(chunks), DIGITS.data)
    rows = split.samples.take(PICK)
    np.testing.assert_array_equal(np.concatenate([r.numeric for r in rows]), DIGITS.data[PICK])


def test_label_column_names_an_array(tmp_path: Path) -> None:
    path = tmp_path / "named.npz"
    np.savez(path, x=X[:50], digit=Y[:50], y=np.zeros(50))
    split = open_split("s", path, label_column="digit")
    np.testing.assert_array_equal(split.labels, Y[:50])
    # Shared flags: a name the file does not have falls back to the aliases.
    assert open_split("s", path, label_column="nope").labels.sum() == 0


def test_channels_first_photos_become_channels_last(tmp_path: Path) -> None:
    path = tmp_path / "photos.npz"
    np.savez(path, x=np.stack([p.transpose(2, 0, 1) for p in PHOTOS]))  # (2, 3, 427, 640)
    split = open_split("s", path)
    assert split.kind == IMAGE and any("channels-first" in n for n in split.notes)
    (_, chunk), *_ = _all_chunks(split, 10)
    for got, photo in zip(chunk, PHOTOS, strict=True):
        assert got.shape == (427, 640, 3)
        np.testing.assert_array_equal(got, photo)
    np.testing.assert_array_equal(split.samples.take([1])[0], PHOTOS[1])


def test_single_channel_is_squeezed_and_channels_last_kept(tmp_path: Path) -> None:
    np.save(tmp_path / "c1.npy", PIXELS[:20, None])  # (20, 1, 8, 8)
    np.save(tmp_path / "last.npy", np.stack([PIXELS[:20]] * 3, axis=-1))  # (20, 8, 8, 3)
    one = open_split("s", tmp_path / "c1.npy").samples.take([4])[0]
    np.testing.assert_array_equal(one, PIXELS[4])
    last = open_split("s", tmp_path / "last.npy")
    assert not last.notes
    assert last.samples.take([4])[0].shape == (8, 8, 3)


def test_string_array_is_text(tmp_path: Path) -> None:
    texts = np.array([f"digit {d} drawn by writer {g}" for d, g in zip(Y, G, strict=True)])
    np.savez(tmp_path / "t.npz", inputs=texts, targets=Y)
    split = open_split("s", tmp_path / "t.npz")
    assert split.kind == TEXT
    got = [s for _, chunk in _all_chunks(split, 1000) for s in chunk]
    assert got == texts.tolist()
    assert split.samples.take([3, 1]) == [texts[3], texts[1]]


def test_torch_dict_of_tensors(files: dict[str, Path]) -> None:
    split = open_split("s", files["pt"])
    assert (split.kind, len(split)) == (IMAGE, N)
    np.testing.assert_array_equal(split.labels, Y)
    np.testing.assert_array_equal(split.groups, G)
    np.testing.assert_array_equal(np.concatenate([c for _, c in _all_chunks(split, 700)]), X)
    np.testing.assert_array_equal(np.stack(split.samples.take(PICK)), X[PICK])


def test_torch_single_tensor_strided_and_bfloat16(tmp_path: Path) -> None:
    torch.save(torch.from_numpy(DIGITS.data.copy()), tmp_path / "one.pt")
    split = open_split("s", tmp_path / "one.pt")
    assert split.kind == TABLE
    np.testing.assert_array_equal(_stack_numeric(_all_chunks(split, 300)), DIGITS.data)
    strided = torch.from_numpy(DIGITS.data.copy()).t()  # not contiguous: read, not mapped
    torch.save({"features": strided, "bf": strided.bfloat16()}, tmp_path / "t.pth")
    got = _stack_numeric(_all_chunks(open_split("s", tmp_path / "t.pth"), 10))
    np.testing.assert_array_equal(got, DIGITS.data.T)
    torch.save({"x": torch.from_numpy(X.copy()).bfloat16()}, tmp_path / "bf.pt")
    split = open_split("s", tmp_path / "bf.pt")
    images = np.concatenate([c for _, c in _all_chunks(split, 500)])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, X)  # digits' 0..16 are exact in bfloat16


def _peak_while(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_arrays_are_mapped_not_loaded(tmp_path: Path, suffix: str) -> None:
    big = np.tile(X.astype(np.float32).reshape(N, 64), (400, 1))  # 718,800 rows, 184 MB
    path = tmp_path / f"big{suffix}"
    if suffix == ".npy":
        np.save(path, big)
    else:
        np.savez(path, x=big)
    del big

    def open_and_take() -> None:
        split = open_split("s", path)
        rows = split.samples.take([0, 500_000, 718_799])
        np.testing.assert_array_equal(rows[1].numeric[0], X[500_000 % N].reshape(64))
        next(split.samples.chunks(1000))

    assert _peak_while(open_and_take) < 20 * 1024**2  # numpy reports its buffers to tracemalloc


# ---------------------------------------------------------------- tables


def _check_digits_table(split) -> None:
    assert (split.kind, len(split)) == (TABLE, N)
    assert split.columns == tuple(f"feat_{i}" for i in range(64))
    np.testing.assert_array_equal(split.labels, Y)
    np.testing.assert_array_equal(split.groups, G)
    assert split.ids[0] == "row 1" and split.sample_id(N - 1) == f"row {N}"
    notes = " ".join(split.notes)
    for column, why in [("id", "identifier"), ("source", "distinct paths"), ("label", "label")]:
        assert f"column {column!r} excluded" in notes and why in notes
    chunks = _all_chunks(split, 300)
    assert [len(c.numeric) for _, c in chunks] == [300] * 5 + [297]
    assert [start for start, _ in chunks] == list(range(0, N, 300))
    assert all(c.text is None and c.numeric.dtype == np.float64 for _, c in chunks)
    np.testing.assert_array_equal(_stack_numeric(chunks), DIGITS.data)
    rows = split.samples.take(PICK)
    np.testing.assert_array_equal(np.concatenate([r.numeric for r in rows]), DIGITS.data[PICK])


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_digits_tables(files: dict[str, Path], kind: str) -> None:
    _check_digits_table(open_split("train", files[kind]))


def test_named_label_and_group_columns(files: dict[str, Path]) -> None:
    split = open_split("s", files["csv"], label_column="feat_0", group_column="label")
    np.testing.assert_array_equal(split.labels, DIGITS.data[:, 0])
    np.testing.assert_array_equal(split.groups, Y)
    assert "feat_0" not in split.columns and "group" in split.columns


def test_csv_text_cells_and_text_columns(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    rows = ["size,colour,label", "1.5,red,a", "oops,blue,b", "3,red,a", ",green,b", "2e1,red,a"]
    path.write_text("\n".join(rows) + "\n")
    split = open_split("s", path)
    assert split.kind == TABLE and split.columns == ("size", "colour")
    assert any("'size': 1 non-numeric cells read as missing" in n for n in split.notes)
    (_, chunk), *_ = _all_chunks(split, 100)
    np.testing.assert_array_equal(chunk.numeric[:, 0], [1.5, np.nan, 3, np.nan, 20])
    assert list(chunk.text) == [f"colour={c}" for c in ["red", "blue", "red", "green", "red"]]
    assert split.labels.tolist() == ["a", "b", "a", "b", "a"]
    (row,) = split.samples.take([1])
    assert np.isnan(row.numeric[0, 0]) and list(row.text) == ["colour=blue"]


def test_csv_mostly_text_column_is_text_and_single_text_column_is_text_kind(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("review,label\ngreat digit,1\n3,0\nsmudged four,1\n\nhard to read,0\n")
    split = open_split("s", path)
    assert (split.kind, split.columns, len(split)) == (TEXT, ("review",), 4)
    assert next(split.samples.chunks(10))[1] == ["great digit", "3", "smudged four", "hard to read"]
    assert split.samples.take([3, 0]) == ["hard to read", "great digit"]


def test_csv_quoted_newlines_keep_offsets_right(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('a,note\n1,"two\nlines"\n2,plain\n3,"x, y"\n', encoding="utf-8-sig")
    split = open_split("s", path)
    assert len(split) == 3 and split.columns == ("a", "note")
    assert list(split.samples.take([1])[0].text) == ["note=plain"]
    assert list(split.samples.take([0])[0].text) == ["note=two\nlines"]


# ---------------------------------------------------------------- image folders


def test_image_folder_classes(files: dict[str, Path]) -> None:
    split = open_split("train", files["folder"])
    order = _folder_order()
    assert (split.kind, len(split), split.groups) == (IMAGE, N, None)
    assert split.labels.tolist() == [str(Y[i]) for i in order]
    assert split.ids[0] == "0/0000.png" and split.sample_id(1) == "0/0010.png"
    chunks = _all_chunks(split, 250)
    assert [len(c) for _, c in chunks] == [250] * 7 + [47]
    images = [image for _, chunk in chunks for image in chunk]
    for position, index in enumerate(order):
        assert images[position].dtype == np.uint8 and images[position].shape == (8, 8)
        if split.ids[position].endswith(".png"):
            np.testing.assert_array_equal(images[position], PIXELS[index])
        else:  # JPEG is lossy
            assert np.abs(images[position].astype(int) - PIXELS[index]).mean() < 12
    picked = split.samples.take([700, 2, 700])
    np.testing.assert_array_equal(picked[0], PIXELS[order[700]])
    np.testing.assert_array_equal(picked[1], PIXELS[order[2]])


def test_flat_folder_of_photos(files: dict[str, Path]) -> None:
    split = open_split("s", files["photos"])
    assert (split.kind, len(split), split.labels) == (IMAGE, 2, None)
    assert list(split.ids) == ["photo_0.png", "photo_1.png"]
    (_, chunk), *_ = _all_chunks(split, 1)
    np.testing.assert_array_equal(chunk[0], PHOTOS[0])
    np.testing.assert_array_equal(split.samples.take([1])[0], PHOTOS[1])


def test_take_reads_only_the_files_asked_for(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(PIXELS[i], mode="L").save(folder / "a" / f"{i}.png")
    split = open_split("s", folder)
    (folder / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    np.testing.assert_array_equal(split.samples.take([3, 0])[0], PIXELS[3])
    refused(lambda: split.samples.take([2]), "cannot decode image")


def test_grey_palette_and_alpha_modes(tmp_path: Path) -> None:
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(PHOTOS[0][:40, :50]).convert("P").save(folder / "p.gif")
    Image.fromarray(PHOTOS[0][:40, :50]).convert("RGBA").save(folder / "rgba.webp", lossless=True)
    Image.fromarray(PIXELS[0]).convert("LA").save(folder / "la.png")
    Image.fromarray(PHOTOS[1][:30, :20]).save(folder / "rgb.bmp")
    images = open_split("s", folder).samples.take([0, 1, 2, 3])
    shapes = [im.shape for im in images]
    assert shapes == [(8, 8), (40, 50, 3), (30, 20, 3), (40, 50, 3)]
    np.testing.assert_array_equal(images[2], PHOTOS[1][:30, :20])
    np.testing.assert_array_equal(images[3], PHOTOS[0][:40, :50])


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(PIXELS[0], mode="L").save(outside / "secret.png")
    folder = tmp_path / "split"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(PIXELS[1], mode="L").save(folder / "a" / "real.png")
    (folder / "a" / "escape.png").symlink_to(outside / "secret.png")
    (folder / "a" / "inside.png").symlink_to(folder / "a" / "real.png")
    (folder / "b").symlink_to(outside, target_is_directory=True)
    split = open_split("s", folder)
    assert list(split.ids) == ["a/inside.png", "a/real.png"]
    assert any("1 symlinks pointing outside" in n for n in split.notes)
    # Swapped for a symlink after the listing: refused when read.
    (folder / "a" / "real.png").unlink()
    (folder / "a" / "real.png").symlink_to(outside / "secret.png")
    refused(lambda: split.samples.take([1]), "symlink out of the split folder")
    only = tmp_path / "only_links"
    only.mkdir()
    (only / "x.png").symlink_to(outside / "secret.png")
    refused(lambda: open_split("s", only), "no images found", "not followed")


def _png(width: int, height: int, mode: int = 0) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 100_000])  # Pillow warns at the first, raises at the 2nd
def test_decompression_bomb_is_an_input_error_not_a_warning(tmp_path: Path, side: int) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png(side, side))
    assert (folder / "bomb.png").stat().st_size < 200
    split = open_split("s", folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(lambda: split.samples.take([0]), "decompression bomb")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_broken_images(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    buf = io.BytesIO()
    Image.fromarray(PHOTOS[0]).save(buf, format="PNG")
    (folder / "a_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "b_text.png").write_text("not an image at all")
    (folder / "c_header_only.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    (folder / "notes.txt").write_text("ignored: not an image extension")
    split = open_split("s", folder)
    assert len(split) == 3
    err = refused(lambda: split.samples.take([0]), "cannot decode image")
    assert err.path.endswith("a_truncated.png")
    refused(lambda: split.samples.take([1]), "not an image")
    refused(lambda: list(split.samples.chunks(2)), "cannot decode image")
    refused(lambda: split.samples.take([2]), "cannot decode image")


# ---------------------------------------------------------------- malformed arrays


def test_ragged_and_object_arrays_are_refused(tmp_path: Path) -> None:
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(3), np.zeros(4)]
    np.savez(tmp_path / "ragged.npz", x=ragged, y=[0, 1])
    refused(lambda: open_split("s", tmp_path / "ragged.npz"), "'x'", "object arrays")
    np.savez(tmp_path / "obj_y.npz", x=X[:2], y=np.array(["a", None], dtype=object))
    refused(lambda: open_split("s", tmp_path / "obj_y.npz"), "'y'", "would need pickle")


def test_pickled_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    payload = np.array([hp.Payload(hp.touch_marker, str(marker))], dtype=object)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x=X[:1], group=payload)
    assert b"touch_marker" in (tmp_path / "evil.npy").read_bytes()  # the payload is there
    refused(lambda: open_split("s", tmp_path / "evil.npy"), "object arrays are not supported")
    refused(lambda: open_split("s", tmp_path / "evil.npz"), "'group'", "object arrays")
    assert not marker.exists()


def test_mismatched_lengths_name_both(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", x=X[:100], labels=Y[:99])
    refused(lambda: open_split("s", tmp_path / "m.npz"), "100", "99", "'labels'")
    np.savez(tmp_path / "g.npz", x=X[:100], y=Y[:100], subject=G[:101])
    refused(lambda: open_split("s", tmp_path / "g.npz"), "100", "101")


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.float64(3.0)}, "0-d"),
        ({"x": X[:5].astype(np.complex64)}, "dtype complex64"),
        ({"x": np.array(["2020-01-01"] * 5, dtype="datetime64[D]")}, "dtype datetime64"),
        ({"x": np.zeros((5, 2, 2, 2, 2))}, "images must be"),
        ({"x": np.zeros((0, 8, 8))}, "no samples"),
        ({"x": np.zeros((5, 0))}, "empty samples"),
        ({"x": np.array([["a", "b"]])}, "must be 1-D"),
        ({"x": X[:5], "y": np.eye(5)}, "1-D"),
        ({"weights": X[:5], "biases": Y[:5]}, "no samples array"),
        ({"x": np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])}, "structured"),
    ],
)
def test_malformed_arrays(tmp_path: Path, arrays: dict, fragment: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    refused(lambda: open_split("s", tmp_path / "bad.npz"), fragment)


def test_nan_in_images_is_refused_when_read(tmp_path: Path) -> None:
    images = X[:50].copy()
    images[33, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", images)
    split = open_split("s", tmp_path / "nan.npy")
    refused(lambda: list(split.samples.chunks(10)), "image #33", "NaN")
    assert len(split.samples.take([0, 49])) == 2


def test_truncated_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", X)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-100])
    refused(lambda: open_split("s", tmp_path / "t.npy"), "truncated")
    np.savez(tmp_path / "t.npz", x=X)
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    refused(lambda: open_split("s", tmp_path / "t.npz"), "corrupt or truncated")


def test_compressed_member_declaring_huge_size(tmp_path: Path) -> None:
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 64)}
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 1000)
    refused(lambda: open_split("s", tmp_path / "bomb.npz"), "inflates to", "cap")


# ---------------------------------------------------------------- malformed tables


def test_missing_label_and_group_columns_list_the_columns(files: dict[str, Path]) -> None:
    err = refused(lambda: open_split("s", files["csv"], label_column="digit"), "label column")
    assert "'feat_0'" in err.cause and "(48 more)" in err.cause
    refused(lambda: open_split("s", files["parquet"], group_column="who"), "no group column 'who'")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty file"),
        ("a,b,label\n", "no data rows"),
        ("id\n1\n2\n3\n", "no feature columns"),
        ("id,file_id,label\n1,a1,0\n2,b2,1\n", "no feature columns"),
        ('a,b\n1,"unclosed\n', "malformed CSV"),
        ("a,b\n1,2\x00\n", "malformed CSV"),
    ],
)
def test_malformed_csv(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    refused(lambda: open_split("s", tmp_path / "bad.csv"), fragment)


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("a,label\ncafé,1\n".encode("latin-1"))
    refused(lambda: open_split("s", tmp_path / "latin.csv"), "not UTF-8", "line 2")


def test_parquet_without_pyarrow(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail
    refused(lambda: open_split("s", files["parquet"]), "pip install 'diag[parquet]'")


# ---------------------------------------------------------------- torch, formats


def test_torch_file_with_non_tensors(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(4, 3), "meta": "digits v1"}, tmp_path / "a.pt")
    refused(lambda: open_split("s", tmp_path / "a.pt"), "a str under key 'meta'", "only tensors")
    torch.save({"x": torch.zeros(4, 3), "c": hp.HyperDict(a=1)}, tmp_path / "b.pt")
    refused(lambda: open_split("s", tmp_path / "b.pt"), "helpers_pickles.HyperDict")
    torch.save([torch.zeros(2)], tmp_path / "c.pt")
    refused(lambda: open_split("s", tmp_path / "c.pt"), "holds a list")


def test_torch_file_with_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save(
        {"x": torch.zeros(2), "y": hp.Payload(hp.touch_marker, str(marker))}, tmp_path / "e.pt"
    )
    refused(lambda: open_split("s", tmp_path / "e.pt"), "would run code")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("source", "name", "fragment"),
    [
        ("csv", "digits.npz", "the extension says a NumPy .npz archive but the content is unrec"),
        ("photo", "digits.csv", "the extension says CSV but the content is an image"),
        (
            "npz",
            "digits.npy",
            "the extension says a NumPy .npy array but the content is a NumPy .npz",
        ),
        ("npz", "digits.pt", "the extension says a torch zip archive but the content is a NumPy"),
        ("pt", "digits.npz", "the extension says a NumPy .npz archive but the content is a torch"),
        ("npy", "digits.parquet", "the extension says Parquet"),
        ("csv", "digits.txt", "not a split diag can read"),
        ("photo", "digits.png", "not a split diag can read"),
    ],
)
def test_wrong_extension_for_the_content(
    files: dict[str, Path], tmp_path: Path, source: str, name: str, fragment: str
) -> None:
    path = tmp_path / name
    if source == "photo":
        Image.fromarray(PHOTOS[0]).save(path, format="PNG")
    else:
        path.write_bytes(files[source].read_bytes())
    refused(lambda: open_split("s", path), fragment)


def test_content_is_sniffed_when_the_extension_is_unknown(
    files: dict[str, Path], tmp_path: Path
) -> None:
    for source in ("npz", "npy", "parquet", "pt"):
        path = tmp_path / f"data_{source}.bin"
        path.write_bytes(files[source].read_bytes())
        assert len(open_split("s", path)) == N


def _legacy_save(obj: object, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def _same_split(got, want) -> None:
    assert (got.kind, len(got)) == (want.kind, len(want))
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.groups, want.groups)
    for (start, a), (_, b) in zip(_all_chunks(got, 700), _all_chunks(want, 700), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"chunk at {start}")
    np.testing.assert_array_equal(
        np.stack(got.samples.take(PICK)), np.stack(want.samples.take(PICK))
    )


def test_legacy_torch_split_gives_the_zip_files_samples(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """A pre-1.6 torch.save of the same x / y / group tensors is the same split, whatever
    the extension (the layout is sniffed from the bytes)."""
    tensors = {"x": torch.from_numpy(X.copy()), "y": torch.from_numpy(Y.copy())}
    tensors["group"] = torch.from_numpy(G.copy())
    want = open_split("s", files["pt"])
    for name in ("old.pt", "old.pth", "old.bin"):
        _same_split(open_split("s", _legacy_save(tensors, tmp_path / name)), want)


def test_legacy_torch_split_views_and_bfloat16(tmp_path: Path) -> None:
    """A tensor at an offset into a storage it shares, a transposed one and a bfloat16 one:
    the values torch shows, in the layout the zip format gives."""
    grid = torch.from_numpy(DIGITS.data.copy())
    shared = torch.cat([grid.flip(0), grid])
    y = torch.from_numpy(Y.copy())
    split = open_split("s", _legacy_save({"x": shared[N:], "y": y}, tmp_path / "o.pt"))
    np.testing.assert_array_equal(_stack_numeric(_all_chunks(split, 300)), DIGITS.data)
    np.testing.assert_array_equal(split.labels, Y)
    split = open_split("s", _legacy_save({"x": shared[N:].t()}, tmp_path / "t.pt"))
    np.testing.assert_array_equal(_stack_numeric(_all_chunks(split, 10)), DIGITS.data.T)
    bf = _legacy_save(torch.from_numpy(X.copy()).bfloat16(), tmp_path / "b.pt")
    images = np.concatenate([c for _, c in _all_chunks(open_split("s", bf), 500)])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, X)  # digits' 0..16 are exact in bfloat16


def test_legacy_torch_split_with_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = hp.Payload(hp.touch_marker, str(marker))
    path = _legacy_save({"x": torch.zeros(2), "y": payload}, tmp_path / "e.pt")
    refused(lambda: open_split("s", path), "would run code", "helpers_pickles.touch_marker")
    assert not marker.exists()
    # Without the torch magic number the file is a plain pickle: not one opcode is acted on.
    (tmp_path / "p.pt").write_bytes(pickle.dumps(payload, protocol=2))
    refused(lambda: open_split("s", tmp_path / "p.pt"), "plain pickle", "not unpickled")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_split_expanded_past_the_file_size_is_refused(tmp_path: Path, legacy: bool) -> None:
    """A stride-0 view of one row repeated 2**33 times: a tiny file that would read as
    256 GB, refused by name before anything is allocated, in either torch layout."""
    path = tmp_path / "x.pt"
    torch.save(
        {"x": torch.zeros(1, 8).expand(2**33, 8)}, path, _use_new_zipfile_serialization=not legacy
    )
    refused(lambda: open_split("s", path), "tensor 'x' would take 274877906944 bytes once read")


def test_missing_path(tmp_path: Path) -> None:
    refused(lambda: open_split("s", tmp_path / "nope.npz"), "no such file")


# ---------------------------------------------------------------- arbitrary bytes


def _read_everything(path: Path) -> None:
    """Open, read every chunk and take a few samples: only InputError may come out."""
    try:
        split = open_split("s", path)
        for _start, _chunk in split.samples.chunks(3):
            pass
        if len(split):
            split.samples.take([len(split) - 1, 0])
    except InputError as err:
        assert "\n" not in str(err)


def _npy_bytes(draw_header: dict, body: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, draw_header)
    return buf.getvalue() + body


_NPY_HEADERS = st.builds(
    lambda descr, fortran, shape: {"descr": descr, "fortran_order": fortran, "shape": shape},
    st.sampled_from(["<f4", ">i2", "|u1", "<U3", "|S2", "|O", "<c8", "|V4", "<M8[s]", "|b1"]),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=5).map(tuple),
)
_NPY = st.builds(_npy_bytes, _NPY_HEADERS, st.binary(max_size=400))
_PNG_BYTES = io.BytesIO()
Image.fromarray(PIXELS[0]).save(_PNG_BYTES, format="PNG")


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        out[where % len(out)] = value
    return bytes(out[: max(cut, 1)])


_FUZZ = {
    ".npy": st.one_of(st.binary(max_size=300), _NPY),
    ".npz": st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(["x.npy", "X.npy", "y.npy"]), st.one_of(_NPY, st.binary())),
    ),
    ".csv": st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)),
    ".png": st.one_of(
        st.binary(max_size=300),
        st.builds(
            _mutate,
            st.just(_PNG_BYTES.getvalue()),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
            st.integers(0, 400),
        ),
    ),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_FUZZ)).flatmap(lambda s: st.tuples(st.just(s), _FUZZ[s])))
def test_arbitrary_bytes_raise_only_input_errors(case: tuple[str, object]) -> None:
    suffix, content = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / f"data{suffix}"
        if isinstance(content, tuple):  # a well-formed zip around arbitrary member bytes
            member, data = content
            for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                with zipfile.ZipFile(path, "w", compression) as zf:
                    zf.writestr(member, data)
                _read_everything(path)
            return
        path.write_bytes(content)
        _read_everything(path)
        if suffix == ".png":  # as the single image of a folder
            os.remove(path)
            (root / "cls").mkdir()
            (root / "cls" / "img.png").write_bytes(content)
            _read_everything(root)


@pytest.mark.parametrize("style", ["pixel{}", "px_{}", "{r}x{c}"])
def test_pixel_columns_are_read_as_images(tmp_path: Path, style: str) -> None:
    """Flattened images in a table (Kaggle's pixel0..pixel783, MNIST's 1x1..28x28) are images."""
    if style == "{r}x{c}":
        names = [f"{r}x{c}" for r in range(1, 9) for c in range(1, 9)]
    else:
        names = [style.format(i) for i in range(64)]
    path = tmp_path / "digits.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", *names])
        for row, label in zip(DIGITS.data[:50], Y[:50], strict=True):
            w.writerow([label, *(f"{v:g}" for v in row)])
    split = open_split("train", path)
    assert split.kind == IMAGE and len(split) == 50
    (_, chunk), *_ = list(split.samples.chunks(50))
    np.testing.assert_array_equal(np.asarray(chunk), DIGITS.images[:50])
    np.testing.assert_array_equal(split.samples.take([7])[0], DIGITS.images[7])


def test_pixel_like_names_out_of_order_stay_a_table(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    names = [f"pixel{i}" for i in range(64)]
    names[3], names[4] = names[4], names[3]
    path.write_text(",".join(names) + "\n" + ",".join("1" for _ in names) + "\n")
    assert open_split("t", path).kind == TABLE
