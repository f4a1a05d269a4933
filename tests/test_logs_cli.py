"""Broken, hostile and real log files through the real CLI.

Each broken file must end in exit 2 with one `diag: error: <file>: <cause>` line and no
traceback, or (for damage a live run causes) be read with a note; every run goes through
the audited sandbox (hostile_sandbox.py), so nothing outside the test's folder is read.
The fixtures written by the real writers (tests/data/logs) must be found through `--logs`
and get their roles.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import hostile_sandbox as hs
import pytest

DATA = Path(__file__).parent / "data" / "logs"


def run_cli(*args: str, cwd: Path) -> hs.Outcome:
    """The CLI in the audited sandbox, its invariants checked, with `cwd` as the input folder."""
    outcome = hs.run_diag([*args, "--quiet"], cwd=cwd)
    hs.check_invariants(outcome, allowed=[cwd])
    return outcome


def assert_refused(path: Path, *fragments: str) -> str:
    return hs.check_refused(run_cli("--logs", str(path), cwd=path.parent), path.name, *fragments)


@pytest.fixture(scope="module")
def event_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path_factory.mktemp("tb")
    writer = SummaryWriter(log_dir=str(folder))
    for step in range(1, 200):
        writer.add_scalar("train/loss", 2.0 / step, step)
        if step % 20 == 0:
            writer.add_scalar("val/loss", 2.5 / step**0.5, step)
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def test_a_flipped_byte_in_an_event_file_is_one_line(event_file, tmp_path):
    broken = tmp_path / event_file.name
    data = bytearray(event_file.read_bytes())
    data[len(data) // 2] ^= 0x40
    broken.write_bytes(bytes(data))
    assert_refused(broken, "CRC mismatch")


def test_an_absurd_record_length_is_one_line(event_file, tmp_path):
    broken = tmp_path / event_file.name
    data = event_file.read_bytes()
    broken.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])
    assert_refused(broken)


def test_a_cut_event_file_is_read_up_to_the_cut_and_noted(event_file, tmp_path):
    cut = tmp_path / event_file.name
    cut.write_bytes(event_file.read_bytes()[:-7])
    proc = run_cli("--logs", str(cut), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (logs,) = [i for i in json.loads(proc.stdout)["inputs"] if i["role"] == "logs"]
    assert any("cut short" in note for note in logs["notes"])
    assert logs["roles"] == {"train_loss": "train/loss", "val_loss": "val/loss"}


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("metrics.csv", "", "no metrics"),
        ("metrics.csv", "step,train_loss\n", "no metrics"),
        ("log.jsonl", "not json\n[1, 2]\n", ""),
        ("trainer_state.json", "[" * 100_000, ""),
        ("metrics.csv", "step,loss\n\xff\xfe\x00garbage\n", ""),
    ],
)
def test_empty_and_broken_text_logs_are_one_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    assert_refused(path, fragment)


def test_text_numbers_and_huge_numbers_do_not_stop_a_csv(tmp_path):
    rows = ["step,train_loss,val_loss"]
    rows += [f"{s},{2.0 / s},{'oops' if s == 7 else 2.2 / s}" for s in range(1, 40)]
    rows.append(f"{'9' * 5000},1.0,1.0")  # a 5000-digit step
    rows.append(f"41,{'9' * 5000},inf")  # a 5000-digit value, an inf string
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    proc = run_cli("--logs", str(tmp_path / "log.csv"), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the inf validation loss is an error finding
    report = json.loads(proc.stdout)
    assert [f["rule"] for f in report["findings"]] == ["loss-nonfinite", "loss-nonfinite"]
    (logs,) = [i for i in report["inputs"] if i["role"] == "logs"]
    assert logs["notes"]  # the skipped cells are reported, not silently dropped


def test_a_random_file_named_mlflow_db_is_one_line(tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    assert_refused(path)


@pytest.mark.parametrize(
    "relative",
    [
        "keras/training.csv",
        "lightning/lightning_logs/version_0",
        "hf",
        "mlflow/mlruns",
        "mlflow/mlflow.db",
    ],
)
def test_files_from_the_real_writers_are_found_and_get_roles(relative, tmp_path):
    source = DATA / relative
    target = tmp_path / relative
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True)
        shutil.copy(source, target)
    proc = run_cli("--logs", str(target), "--format", "json", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    logs = [i for i in json.loads(proc.stdout)["inputs"] if i["role"] == "logs"]
    assert logs
    assert any({"train_loss", "val_loss"} <= set(log["roles"]) for log in logs), logs


def test_links_out_of_a_logs_folder_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(DATA / "keras", outside / "keras")
    shutil.copytree(DATA / "mlflow" / "mlruns", outside / "mlruns")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "keras").symlink_to(outside / "keras", target_is_directory=True)
    (logs / "mlruns").symlink_to(outside / "mlruns", target_is_directory=True)
    (logs / "training.csv").symlink_to(outside / "keras" / "training.csv")
    line = assert_refused(logs, "no training logs found")
    assert "outside" not in line
