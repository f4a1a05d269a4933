"""The TensorBoard event-file reader, against real files and broken ones.

Real files come from `torch.utils.tensorboard.SummaryWriter`; hand-made records use
TensorBoard's own protobuf classes (`event_pb2`) so that the bytes are what protobuf
itself would write, and protobuf's parser serves as the oracle for what they mean.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from diag.errors import InputError
from diag.loaders.logs import tensorboard as tb
from diag.loaders.logs.tensorboard import is_event_file, read_tensorboard

FUZZ = settings(
    max_examples=int(os.environ.get("DIAG_FUZZ_EXAMPLES", 300)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ---------------------------------------------------------------- helpers


def masked_crc(data: bytes) -> int:
    c = google_crc32c.value(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed as TensorFlow's record writer frames it."""
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    )


def record_offsets(blob: bytes) -> list[int]:
    """Start of every record of a well-formed file, and the file's end."""
    offsets, pos = [], 0
    while pos < len(blob):
        offsets.append(pos)
        pos += 12 + struct.unpack_from("<Q", blob, pos)[0] + 4
    assert pos == len(blob)
    return [*offsets, pos]


def event_file(folder: Path, events: list[event_pb2.Event], name: str = "a") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events.out.tfevents.1700000000.host.1.{name}"
    version = event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")
    path.write_bytes(b"".join(frame(e.SerializeToString()) for e in [version, *events]))
    return path


def scalar_event(tag: str, value: float, step: int, wall: float = 5.0) -> event_pb2.Event:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    return event_pb2.Event(wall_time=wall, step=step, summary=summary)


def tensor_event(
    tag: str, tensor: tensor_pb2.TensorProto, step: int, plugin: str | None = "scalars"
) -> event_pb2.Event:
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if plugin is not None:
        value.metadata.plugin_data.plugin_name = plugin
    return event_pb2.Event(wall_time=7.0, step=step, summary=summary_pb2.Summary(value=[value]))


def f32(values: list[float]) -> np.ndarray:
    """What a float32 field holds of each value, as float64."""
    return np.array(values, dtype=np.float32).astype(np.float64)


def only_run(path: Path):
    runs = read_tensorboard(path)
    assert len(runs) == 1
    return runs[0]


def as_points(run) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} with NaN made comparable."""
    return {
        name: [
            (int(s), "nan" if math.isnan(v) else float(v))
            for s, v in zip(ser.steps, ser.values, strict=True)
        ]
        for name, ser in run.series.items()
    }


def oracle_points(blob: bytes) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a well-framed file as protobuf itself parses them (DecodeError if not)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for start, stop in itertools.pairwise(record_offsets(blob)):
        event = event_pb2.Event.FromString(blob[start + 12 : stop - 4])
        if event.WhichOneof("what") != "summary":
            continue
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                got = value.simple_value
            elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("", "scalars"):
                t = value.tensor
                dims = [d.size for d in t.tensor_shape.dim]
                if t.tensor_shape.unknown_rank or any(d != 1 for d in dims):
                    continue
                if t.dtype not in (1, 2, 14, 19):
                    continue
                try:
                    array = tensor_util.make_ndarray(t)
                except Exception:
                    continue  # protobuf accepts it, but it is not a readable tensor: not a scalar
                if array.size != 1:
                    continue
                got = float(array.reshape(()).item())
            else:
                continue
            point = (event.step, "nan" if math.isnan(got) else float(got))
            out.setdefault(value.tag, []).append(point)
    return out


# ---------------------------------------------------------------- real files


STEPS = [0, 1, 2, 5, 3, -7, 2**21, 2**40, 2**62, 2**63 - 1, -(2**63)]
VALUES = [0.5, -1.25, float("nan"), float("inf"), float("-inf"), 3e38, 1e-30, 0.0, -0.0, 7.0, 1e6]
NEW_STYLE = [0.25, float("nan"), float("-inf"), 2.5, 1e-3, 9.0, -3.0, 1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written by SummaryWriter twice (a restart), plus every other kind of data."""
    root = tmp_path_factory.mktemp("tb") / "run"
    first = SummaryWriter(str(root))
    for i, (step, value) in enumerate(zip(STEPS, VALUES, strict=True)):
        first.add_scalar("train/loss", value, step, walltime=1000.0 + i)
        first.add_scalar("new/acc", NEW_STYLE[i], step, walltime=2000.0 + i, new_style=True)
    first.add_scalars("pair", {"a": 1.0, "b": 2.0}, 3, walltime=3000.0)
    first.add_scalars("pair", {"a": 1.5, "b": 2.5}, 4, walltime=3001.0)
    first.add_histogram("weights", np.arange(100.0), 1)
    first.add_image("picture", np.zeros((3, 8, 8), dtype=np.float32), 1)
    first.add_text("notes", "some text", 1)
    first.add_scalar("train/loss", 4.0, 100, walltime=1100.0)
    first.close()
    again = SummaryWriter(str(root))  # the same folder reopened: a second file, the same run
    again.add_scalar("train/loss", 8.0, 50, walltime=5000.0)
    again.add_scalar("after_restart", 1.0, 51, walltime=5001.0)
    again.close()
    return root


def test_two_files_in_one_folder(logdir: Path) -> None:
    assert len([p for p in logdir.iterdir() if is_event_file(p)]) == 2


def test_scalars_as_written(logdir: Path) -> None:
    run = next(r for r in read_tensorboard(logdir) if r.run == "")
    assert run.format == "tensorboard"
    assert run.source == logdir
    assert run.notes == ()
    # Histograms, images and text are not series.
    assert set(run.series) == {"train/loss", "new/acc", "after_restart"}
    loss = run.series["train/loss"]
    # The first file's points, then the restarted writer's, as written.
    assert loss.steps.dtype == np.int64
    assert loss.steps.tolist() == [*STEPS, 100, 50]
    np.testing.assert_array_equal(loss.values, f32([*VALUES, 4.0, 8.0]))  # NaN == NaN here
    assert loss.wall_times.tolist() == [1000.0 + i for i in range(len(STEPS))] + [1100.0, 5000.0]
    assert loss.epochs is None
    assert np.signbit(loss.values[8])  # -0.0 stays negative
    assert not np.signbit(loss.values[7])

    acc = run.series["new/acc"]
    assert acc.steps.tolist() == STEPS
    np.testing.assert_array_equal(acc.values, f32(NEW_STYLE))
    assert acc.wall_times.tolist() == [2000.0 + i for i in range(len(STEPS))]
    assert run.series["after_restart"].steps.tolist() == [51]


def test_add_scalars_subfolders_are_runs(logdir: Path) -> None:
    runs = {r.run: r for r in read_tensorboard(logdir)}
    assert sorted(runs) == ["", "pair_a", "pair_b"]
    for name, values in (("pair_a", [1.0, 1.5]), ("pair_b", [2.0, 2.5])):
        run = runs[name]
        assert run.source == logdir / name
        assert list(run.series) == ["pair"]
        assert run.series["pair"].steps.tolist() == [3, 4]
        assert run.series["pair"].values.tolist() == values
        assert run.series["pair"].wall_times.tolist() == [3000.0, 3001.0]


def test_one_file_is_one_run(logdir: Path) -> None:
    first, second = sorted((p for p in logdir.iterdir() if is_event_file(p)), key=tb._name_order)
    run = only_run(second)
    assert run.run == ""
    assert run.source == second
    assert run.series["train/loss"].steps.tolist() == [50]
    assert only_run(first).series["train/loss"].steps.tolist() == [*STEPS, 100]


def test_same_as_event_accumulator_keeping_everything(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    rng = random.Random(3)
    for step in range(1, 400):
        writer.add_scalar("loss", rng.uniform(0, 5), step)
        if step % 3 == 0:
            writer.add_scalar("lr", rng.uniform(0, 1e-3), step)
        if step % 5 == 0:
            writer.add_scalar("tf2", rng.uniform(-1, 1), step, new_style=True)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    run = only_run(tmp_path)
    expected = {t: acc.Scalars(t) for t in acc.Tags()["scalars"]}
    assert set(expected) == {"loss", "lr"}
    for tag, events in expected.items():
        series = run.series[tag]
        assert series.steps.tolist() == [e.step for e in events]
        assert series.values.tolist() == [e.value for e in events]
        assert series.wall_times.tolist() == [e.wall_time for e in events]
    tensors = acc.Tensors("tf2")
    assert run.series["tf2"].steps.tolist() == [e.step for e in tensors]
    assert run.series["tf2"].values.tolist() == [
        tensor_util.make_ndarray(e.tensor_proto).item() for e in tensors
    ]


def test_step_left_out_is_zero_and_order_is_kept(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    for value in (3.0, 1.0, 2.0):
        writer.add_scalar("no_step", value)  # no global_step: the event carries no step
    writer.close()
    series = only_run(tmp_path).series["no_step"]
    assert series.steps.tolist() == [0, 0, 0]
    assert series.values.tolist() == [3.0, 1.0, 2.0]


# ---------------------------------------------------------------- encodings


def test_tensor_encodings_of_a_scalar(tmp_path: Path) -> None:
    scalar_shape = tensor_shape_pb2.TensorShapeProto()
    one = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])
    two = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)])
    one_by_one = tensor_shape_pb2.TensorShapeProto(dim=[one.dim[0], one.dim[0]])
    unknown = tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    T = tensor_pb2.TensorProto
    events = [
        # TF2 `tf.summary.scalar`: the float in tensor_content.
        tensor_event(
            "content",
            T(dtype=1, tensor_shape=scalar_shape, tensor_content=struct.pack("<f", 1.5)),
            1,
        ),
        tensor_event("double", T(dtype=2, tensor_shape=one, double_val=[0.1]), 2),
        tensor_event("double_content", T(dtype=2, tensor_content=struct.pack("<d", 0.3)), 3),
        tensor_event("half", T(dtype=19, half_val=[np.float16(0.5).view(np.uint16).item()]), 4),
        tensor_event("no_plugin", T(dtype=1, float_val=[4.0]), 5, plugin=None),
        # Not scalars: two elements, another plugin, a string, an integer.
        tensor_event("pair", T(dtype=1, tensor_shape=two, float_val=[1.0, 2.0]), 6),
        tensor_event("text", T(dtype=7, string_val=[b"hello"]), 7, plugin="text"),
        tensor_event("other_plugin", T(dtype=1, float_val=[1.0]), 8, plugin="pr_curves"),
        tensor_event("int", T(dtype=3, int_val=[3]), 9),
        # Not one element: TensorFlow repeats a last value to fill the shape.
        tensor_event("broadcast", T(dtype=1, tensor_shape=two, float_val=[1.0]), 10),
        tensor_event("too_long", T(dtype=1, tensor_content=struct.pack("<ff", 1.0, 2.0)), 11),
        tensor_event("too_many", T(dtype=1, float_val=[1.0, 2.0]), 12),
        tensor_event("no_value", T(dtype=1, tensor_shape=scalar_shape), 15),
        tensor_event("no_half", T(dtype=19), 16),
        tensor_event("unknown_rank", T(dtype=1, tensor_shape=unknown, float_val=[1.0]), 13),
        # Still one element.
        tensor_event("one_by_one", T(dtype=1, tensor_shape=one_by_one, float_val=[6.0]), 14),
    ]
    path = event_file(tmp_path, events)
    run = only_run(path)
    assert as_points(run) == {
        "content": [(1, 1.5)],
        "double": [(2, 0.1)],
        "double_content": [(3, 0.3)],
        "half": [(4, 0.5)],
        "no_plugin": [(5, 4.0)],
        "one_by_one": [(14, 6.0)],
    }
    assert as_points(run) == oracle_points(path.read_bytes())


def test_several_values_in_one_event(tmp_path: Path) -> None:
    summary = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag="a", simple_value=1.0),
            summary_pb2.Summary.Value(tag="b", simple_value=2.0),
        ]
    )
    path = event_file(tmp_path, [event_pb2.Event(wall_time=1.0, step=3, summary=summary)] * 2)
    assert as_points(only_run(path)) == {"a": [(3, 1.0), (3, 1.0)], "b": [(3, 2.0), (3, 2.0)]}


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


UNKNOWN_FIELDS = (
    key(20, 0) + varint(2**63)  # varint
    + key(21, 1) + b"\x01" * 8  # fixed64
    + delimited(22, b"\xff\xfe anything")  # length-delimited
    + key(23, 3) + key(1, 0) + b"\x05" + key(2, 3) + key(3, 5) + b"abcd" + key(2, 4) + key(23, 4)
    + key(24, 5) + b"\x00\x00\x80\x7f"  # fixed32
)  # fmt: skip


def test_unknown_fields_of_every_wire_type_are_skipped(tmp_path: Path) -> None:
    value = delimited(1, b"loss") + UNKNOWN_FIELDS + key(2, 5) + struct.pack("<f", 2.5)
    event = (
        key(1, 1) + struct.pack("<d", 9.0) + UNKNOWN_FIELDS + key(2, 0) + varint(-4)
        + delimited(5, UNKNOWN_FIELDS + delimited(1, value))
    )  # fmt: skip
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(frame(event) * 3)
    run = only_run(path)
    assert as_points(run) == {"loss": [(-4, 2.5)] * 3}
    assert run.series["loss"].wall_times.tolist() == [9.0] * 3
    assert as_points(run) == oracle_points(path.read_bytes())


def test_the_last_oneof_member_wins(tmp_path: Path) -> None:
    simple = delimited(1, b"x") + key(2, 5) + struct.pack("<f", 1.0)
    events = [
        # Value: simple_value, then an (empty) histogram replaces it.
        key(2, 0) + varint(1) + delimited(5, delimited(1, simple + delimited(5, b""))),
        # Event: a summary, then file_version replaces it.
        key(2, 0) + varint(1) + delimited(5, delimited(1, simple)) + delimited(3, b"v"),
        # Event: file_version, then a summary replaces it: this one counts.
        key(2, 0) + varint(2) + delimited(3, b"v") + delimited(5, delimited(1, simple)),
        # Value: a tensor, a simple_value that clears it, a new tensor that clears that.
        key(2, 0) + varint(3) + delimited(5, delimited(1, tensor(2.0) + simple + tensor(3.0))),
    ]
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(b"".join(frame(e) for e in events))
    expected = {"x": [(2, 1.0), (3, 3.0)]}
    assert as_points(only_run(path)) == expected == oracle_points(path.read_bytes())


def tensor(value: float) -> bytes:
    """A Value's `tensor` field: a DT_FLOAT with one float_val."""
    return delimited(8, key(1, 0) + varint(1) + delimited(5, struct.pack("<f", value)))


def test_over_long_keys_read_as_protobuf_reads_them(tmp_path: Path) -> None:
    """Keys may be encoded with extra 0x80 bytes; the fast path must not guess."""
    summary = delimited(5, delimited(1, delimited(1, b"x") + key(2, 5) + struct.pack("<f", 1.0)))
    wall = struct.pack("<d", 3.0)
    plain = frame(scalar_event("x", 1.0, 0, wall=2.0).SerializeToString())
    long_wall_key = b"\x89\x00" + wall + summary
    long_step_key = key(1, 1) + wall + b"\x90\x00" + varint(9) + summary
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(plain + frame(long_wall_key) + frame(long_step_key) + plain)
    run = only_run(path)
    assert as_points(run) == oracle_points(path.read_bytes())
    assert run.series["x"].wall_times.tolist() == [2.0, 3.0, 3.0, 2.0]
    # After the over-long record, a normal key followed by the same bytes from offset 9 on
    # is not a scalar event: it must not be mistaken for one of the same layout.
    lookalike = key(1, 1) + wall + long_wall_key[9:]
    path.write_bytes(plain + frame(long_wall_key) + frame(lookalike))
    with pytest.raises(InputError, match="malformed record"):
        read_tensorboard(path)


def test_repeated_layouts_take_the_fast_path(tmp_path: Path, monkeypatch) -> None:
    """Only the first record of each layout (and non-scalar records) is fully decoded."""
    writer = SummaryWriter(str(tmp_path))
    for step in range(300):
        writer.add_scalar("loss", step / 7, step)
        writer.add_scalar("acc", step / 9, step, new_style=True)
        writer.add_scalar("no_step", step / 11)
    writer.close()
    decoded = []
    general = tb._decode_record
    monkeypatch.setattr(tb, "_decode_record", lambda *a: decoded.append(a[2]) or general(*a))
    run = only_run(tmp_path)
    assert {name: len(s) for name, s in run.series.items()} == {
        "loss": 300,
        "acc": 300,
        "no_step": 300,
    }
    # file_version, then the first record of each tag: its layout (the bytes after the step)
    # serves every later record of the tag, with or without a step, whatever its length.
    assert len(decoded) == 1 + 3


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    events = [scalar_event("loss", 1.0 / (i + 1), i * 300) for i in range(12)]
    events += [scalar_event("acc", 0.5, 2**40 + i) for i in range(3)]
    return event_file(tmp_path / "small", events)


def test_cut_at_every_byte(small_file: Path, tmp_path: Path) -> None:
    blob = small_file.read_bytes()
    offsets = record_offsets(blob)
    full = only_run(small_file)
    cut_file = tmp_path / "events.out.tfevents.cut"
    for size in range(len(blob)):
        cut_file.write_bytes(blob[:size])
        run = only_run(cut_file)
        complete = max(0, sum(1 for end in offsets[1:] if end <= size) - 1)  # not file_version
        want_loss, want_acc = min(complete, 12), max(0, complete - 12)
        got = run.series
        assert len(got.get("loss", [])) == want_loss, size
        assert len(got.get("acc", [])) == want_acc, size
        if want_loss:
            assert got["loss"].steps.tolist() == full.series["loss"].steps[:want_loss].tolist()
            assert got["loss"].values.tolist() == full.series["loss"].values[:want_loss].tolist()
        if size in offsets:
            assert run.notes == ()
        else:
            start = max(o for o in offsets if o < size)
            assert run.notes == (
                f"{cut_file}: last record (at byte {start}) cut short at byte {size} "
                "(still being written?)",
            )


def flipped(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x10]) + blob[at + 1 :]


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_flipped_byte_is_an_error(small_file: Path, where: str) -> None:
    blob = small_file.read_bytes()
    record = record_offsets(blob)[4]
    length = struct.unpack_from("<Q", blob, record)[0]
    at = {
        "length": record + 1,
        "length_crc": record + 9,
        "data": record + 12 + length // 2,
        "data_crc": record + 12 + length + 2,
    }[where]
    small_file.write_bytes(flipped(blob, at))
    with pytest.raises(InputError) as caught:
        read_tensorboard(small_file)
    assert caught.value.path == str(small_file)
    assert caught.value.cause == f"corrupt event file: CRC mismatch in record at byte {record}"


def test_every_flipped_byte_is_caught(small_file: Path) -> None:
    blob = small_file.read_bytes()
    for at in range(len(blob)):
        small_file.write_bytes(flipped(blob, at))
        with pytest.raises(InputError, match="CRC mismatch"):
            read_tensorboard(small_file)


def header(length: int) -> bytes:
    raw = struct.pack("<Q", length)
    return raw + struct.pack("<I", masked_crc(raw))


def test_absurd_length_is_an_error(small_file: Path) -> None:
    blob = small_file.read_bytes()
    small_file.write_bytes(blob + header(2**40) + b"\x00" * 64)
    with pytest.raises(InputError) as caught:
        read_tensorboard(small_file)
    assert caught.value.cause == (
        f"corrupt event file: record at byte {len(blob)} claims {2**40} bytes "
        f"(limit {tb.MAX_RECORD_BYTES})"
    )


def test_length_past_the_end_under_the_cap_is_a_cut(small_file: Path) -> None:
    blob = small_file.read_bytes()
    small_file.write_bytes(blob + header(1000) + b"\x09" * 20)
    run = only_run(small_file)
    assert len(run.series["acc"]) == 3
    assert run.notes == (
        f"{small_file}: last record (at byte {len(blob)}) cut short at byte {len(blob) + 32} "
        "(still being written?)",
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x10\x80", "truncated varint"),
        (b"\x2a\x05\x0a\x10", "length past the end"),
        (b"\x09\x00\x00", "past the end"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x00", "invalid field number 0"),
        (b"\x1c", "end-group without a start"),
        (b"\x1b\x08\x01", "truncated varint"),  # a group never closed
        (b"\x1b\x24", "mismatched end-group"),
        (b"\x10" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (delimited(5, delimited(1, delimited(8, b"\x2a\x03abc"))), "not a multiple"),
    ],
)
def test_malformed_protobuf_with_a_good_crc(tmp_path: Path, data: bytes, why: str) -> None:
    good = frame(scalar_event("loss", 1.0, 1).SerializeToString())
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(good + frame(data))
    with pytest.raises(InputError, match=why) as caught:
        read_tensorboard(path)
    assert caught.value.path == str(path)
    assert caught.value.cause.startswith(
        f"corrupt event file: malformed record at byte {len(good)}"
    )


def test_garbage_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.garbage"
    path.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(InputError) as caught:
        read_tensorboard(path)
    assert caught.value.cause == (
        "corrupt event file: CRC mismatch in record at byte 0 (not a TensorBoard event file?)"
    )


def test_empty_file_is_a_run_without_series(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.0"
    path.touch()
    run = only_run(path)
    assert run.series == {}
    assert run.notes == ()


def test_only_the_version_record(tmp_path: Path) -> None:
    assert only_run(event_file(tmp_path, [])).series == {}


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("not an event file")
    with pytest.raises(InputError, match="no TensorBoard event files") as caught:
        read_tensorboard(tmp_path)
    assert caught.value.path == str(tmp_path)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_tensorboard(tmp_path / "nope")


# ---------------------------------------------------------------- folders


def test_symlinks_are_not_followed(tmp_path: Path, small_file: Path) -> None:
    root = tmp_path / "logs"
    event_file(root / "real", [scalar_event("loss", 1.0, 1)])
    (root / "linked_dir").symlink_to(small_file.parent, target_is_directory=True)
    (root / "real" / "events.out.tfevents.2.link").symlink_to(small_file)
    (root / "loop").symlink_to(root, target_is_directory=True)
    runs = read_tensorboard(root)
    assert [r.run for r in runs] == ["real"]
    assert as_points(runs[0]) == {"loss": [(1, 1.0)]}


def test_depth_and_count_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    event_file(tmp_path / "a", [scalar_event("x", 1.0, 1)])
    event_file(tmp_path / "b" / "c" / "d", [scalar_event("x", 2.0, 1)])
    assert [r.run for r in read_tensorboard(tmp_path)] == ["a", "b/c/d"]
    monkeypatch.setattr(tb, "MAX_DEPTH", 2)
    assert [r.run for r in read_tensorboard(tmp_path)] == ["a"]
    monkeypatch.setattr(tb, "MAX_DEPTH", 8)
    monkeypatch.setattr(tb, "MAX_EVENT_FILES", 1)
    with pytest.raises(InputError, match="more than 1 event files"):
        read_tensorboard(tmp_path)


def test_files_in_numeric_name_order(tmp_path: Path) -> None:
    # The same second, writer counters 9 and 10: 10 was opened later.
    names = ["events.out.tfevents.1700000000.h.5.10", "events.out.tfevents.1700000000.h.5.9"]
    for step, name in ((2, names[0]), (1, names[1])):
        version = event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")
        (tmp_path / name).write_bytes(
            frame(version.SerializeToString())
            + frame(scalar_event("x", float(step), step).SerializeToString())
        )
    assert only_run(tmp_path).series["x"].steps.tolist() == [1, 2]


def test_is_event_file() -> None:
    assert is_event_file(Path("x/events.out.tfevents.1700000000.host.1.0"))
    assert is_event_file(Path("events.out.tfevents.1700000000.host.profile-empty"))
    assert not is_event_file(Path("x/metrics.csv"))
    assert not is_event_file(Path("events.out.tfevents"))


# ---------------------------------------------------------------- fuzzing


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_input_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "events.out.tfevents.fuzz"
    path.write_bytes(data)
    with contextlib.suppress(InputError):
        read_tensorboard(path)


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_arbitrary_records_with_good_crcs_raise_only_input_error(
    tmp_path: Path, records: list[bytes]
) -> None:
    path = tmp_path / "events.out.tfevents.fuzz"
    blob = b"".join(frame(r) for r in records)
    path.write_bytes(blob)
    try:
        run = only_run(path)
    except InputError:
        return
    try:
        expected = oracle_points(blob)
    except Exception:
        return  # protobuf refuses it; we read only some fields, so we may accept it
    assert as_points(run) == expected


@pytest.fixture(scope="module")
def real_blob(logdir: Path) -> bytes:
    return min((p for p in logdir.iterdir() if is_event_file(p)), key=tb._name_order).read_bytes()


@FUZZ
@given(st.data())
def test_mutations_of_a_real_file_raise_only_input_error(
    tmp_path: Path, real_blob: bytes, data: st.DataObject
) -> None:
    blob = bytearray(real_blob)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        match data.draw(st.sampled_from(["set", "cut", "insert", "delete"])):
            case "set":
                blob[at] = data.draw(st.integers(0, 255))
            case "cut":
                del blob[at:]
            case "insert":
                blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
            case "delete":
                del blob[at : at + data.draw(st.integers(1, 16))]
        if not blob:
            break
    path = tmp_path / "events.out.tfevents.fuzz"
    path.write_bytes(bytes(blob))
    with contextlib.suppress(InputError):
        read_tensorboard(path)


def mutated_records(real: bytes, data: st.DataObject) -> bytes:
    """The real file's events with bytes changed inside them, re-framed with good CRCs."""
    offsets = record_offsets(real)
    out = []
    for start, stop in itertools.pairwise(offsets):
        event = bytearray(real[start + 12 : stop - 4])
        if data.draw(st.integers(0, 9)) == 0:
            at = data.draw(st.integers(0, len(event) - 1))
            event[at] = data.draw(st.integers(0, 255))
        out.append(frame(bytes(event)))
    return b"".join(out)


@FUZZ
@given(st.data())
def test_mutated_events_match_protobuf(
    tmp_path: Path, real_blob: bytes, data: st.DataObject
) -> None:
    """The fast path and the general decoder read what protobuf reads, or refuse cleanly."""
    blob = mutated_records(real_blob, data)
    path = tmp_path / "events.out.tfevents.fuzz"
    path.write_bytes(blob)
    try:
        got = as_points(only_run(path))
    except InputError:
        with pytest.raises(Exception):  # noqa: B017 - any protobuf DecodeError
            oracle_points(blob)
        return
    try:
        expected = oracle_points(blob)
    except Exception:
        return
    assert got == expected


scalars = st.floats(width=32, allow_nan=True)
int64s = st.one_of(st.integers(-5, 300), st.integers(-(2**63), 2**63 - 1))
tags = st.sampled_from(["loss", "val/loss", "lr", "é", "t" * 200])


@st.composite
def events(draw: st.DrawFn) -> event_pb2.Event:
    tag, step, value = draw(tags), draw(int64s), draw(scalars)
    match draw(st.sampled_from(["simple", "float_val", "content", "double"])):
        case "simple":
            return scalar_event(tag, value, step, wall=draw(st.floats(allow_nan=False)))
        case "float_val":
            tensor = tensor_pb2.TensorProto(dtype=1, float_val=[value])
        case "content":
            tensor = tensor_pb2.TensorProto(dtype=1, tensor_content=struct.pack("<f", value))
        case _:
            tensor = tensor_pb2.TensorProto(dtype=2, double_val=[value])
    return tensor_event(tag, tensor, step, plugin=draw(st.sampled_from(["scalars", None])))


@FUZZ
@given(st.lists(events(), max_size=40))
def test_generated_events_match_protobuf(tmp_path: Path, generated: list[event_pb2.Event]) -> None:
    path = event_file(tmp_path, generated)
    run = only_run(path)
    assert as_points(run) == oracle_points(path.read_bytes())
    for series in run.series.values():
        assert series.steps.dtype == np.int64
        assert series.values.dtype == series.wall_times.dtype == np.float64


def test_a_file_being_written_is_read_to_the_last_whole_record(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    for step in range(20):
        writer.add_scalar("loss", float(step), step)
    writer.close()
    path = next(p for p in tmp_path.iterdir() if is_event_file(p))
    before = only_run(path).series["loss"].steps.tolist()
    with open(path, "ab") as handle:  # a writer that got half a record out
        handle.write(frame(scalar_event("loss", 1.0, 99).SerializeToString())[:-3])
    run = only_run(path)
    assert run.series["loss"].steps.tolist() == before == list(range(20))
    assert len(run.notes) == 1
    assert "cut short" in run.notes[0]
