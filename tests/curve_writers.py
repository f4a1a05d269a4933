"""Write one real training history in every log format diag reads.

TensorBoard files come from the real `SummaryWriter`; the others are written in the
layout their writers document (tests/data/logs holds files made by the real writers, which
the loader tests check; these make the same layouts from runs trained in the session).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from diag.demo import History, write_lightning_csv


def _epoch_rows(history: History) -> list[dict[str, float]]:
    return history.epochs


def write_tensorboard(history: History, folder: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for step, loss in history.step_loss:
        writer.add_scalar("loss/train", loss, step)
    for row in _epoch_rows(history):
        step = int(row["step"])
        writer.add_scalar("loss/val", row["val_loss"], step)
        writer.add_scalar("acc/val", row["val_acc"], step)
        writer.add_scalar("epoch", row["epoch"], step)
        if "test_acc" in row:
            writer.add_scalar("acc/test", row["test_acc"], step)
    writer.close()
    return folder


def write_jsonl(history: History, folder: Path) -> Path:
    path = folder / "metrics.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in _epoch_rows(history):
            fh.write(json.dumps(row) + "\n")
    return path


def write_keras_csv(history: History, folder: Path) -> Path:
    """Keras CSVLogger: `epoch` then sorted keys, one row per epoch, 0-based epochs."""
    path = folder / "training.log.csv"
    folder.mkdir(parents=True, exist_ok=True)
    keys = {"loss": "train_loss", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    if "test_acc" in history.epochs[0]:
        keys["test_accuracy"] = "test_acc"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *sorted(keys)])
        for row in _epoch_rows(history):
            writer.writerow([int(row["epoch"]), *(row[keys[k]] for k in sorted(keys))])
    return path


def write_trainer_state(history: History, folder: Path, log_every: int = 5) -> Path:
    """Hugging Face `trainer_state.json` with its `log_history` list."""
    path = folder / "checkpoint-final" / "trainer_state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    per_epoch = {int(r["step"]): r for r in _epoch_rows(history)}
    log: list[dict[str, float]] = []
    for step, loss in history.step_loss:
        epoch = sum(1 for s in per_epoch if s < step)
        if step % log_every == 0:
            log.append({"loss": loss, "learning_rate": 0.05, "epoch": epoch, "step": step})
        if step in per_epoch:
            row = per_epoch[step]
            log.append(
                {
                    "eval_loss": row["val_loss"],
                    "eval_accuracy": row["val_acc"],
                    "eval_runtime": 0.1,
                    "epoch": float(row["epoch"] + 1),
                    "step": step,
                }
            )
            if "test_acc" in row:  # trainer.evaluate(test_set, metric_key_prefix="test")
                log.append(
                    {
                        "test_accuracy": row["test_acc"],
                        "epoch": float(row["epoch"] + 1),
                        "step": step,
                    }
                )
    last = history.step_loss[-1][0]
    log.append({"train_runtime": 3.0, "train_loss": 0.5, "epoch": len(per_epoch), "step": last})
    state = {"global_step": last, "epoch": float(len(per_epoch)), "log_history": log}
    path.write_text(json.dumps(state, indent=2), encoding="utf-8")
    return folder


def write_mlflow(history: History, folder: Path) -> Path:
    """An MLflow file store: mlruns/<experiment>/<run>/metrics/<key> lines."""
    run = folder / "mlruns" / "1" / "0123456789abcdef0123456789abcdef"
    (run / "metrics").mkdir(parents=True)
    (run / "params").mkdir()
    (run / "tags").mkdir()
    (folder / "mlruns" / "1" / "meta.yaml").write_text(
        "artifact_location: file:///tmp/mlruns/1\nexperiment_id: '1'\n"
        "lifecycle_stage: active\nname: digits\n",
        encoding="utf-8",
    )
    (run / "meta.yaml").write_text(
        "artifact_uri: file:///tmp/mlruns/1/0123456789abcdef0123456789abcdef/artifacts\n"
        "end_time: 1700000100000\nentry_point_name: ''\nexperiment_id: '1'\n"
        "lifecycle_stage: active\nrun_id: 0123456789abcdef0123456789abcdef\n"
        "run_name: digits-cnn\nrun_uuid: 0123456789abcdef0123456789abcdef\n"
        "source_name: ''\nsource_type: 4\nsource_version: ''\nstart_time: 1700000000000\n"
        "status: 3\ntags: []\nuser_id: diag\n",
        encoding="utf-8",
    )
    (run / "tags" / "mlflow.runName").write_text("digits-cnn", encoding="utf-8")
    (run / "params" / "lr").write_text("0.05", encoding="utf-8")
    ts = 1700000000000
    for key, points in _mlflow_points(history).items():
        rows = [f"{ts + step} {value!r} {step}" for step, value in points]
        (run / "metrics" / key).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "mlruns"


def _mlflow_points(history: History) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {"train_loss": list(history.step_loss)}
    for row in _epoch_rows(history):
        for key in ("val_loss", "val_acc", "test_acc"):
            if key in row:
                points.setdefault(key, []).append((int(row["step"]), row[key]))
    return points


FIXTURE_DB = Path(__file__).parent / "data" / "logs" / "mlflow" / "mlflow.db"


def write_mlflow_sqlite(history: History, folder: Path) -> Path:
    """An `mlflow.db` with MLflow's real schema (copied from the fixture MLflow 3.17 wrote),
    holding this history as the metrics of its one live run."""
    import shutil
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlflow.db"
    shutil.copy(FIXTURE_DB, path)
    con = sqlite3.connect(path)
    with con:
        runs = [
            r[0] for r in con.execute("SELECT run_uuid FROM runs WHERE lifecycle_stage='active'")
        ]
        keep = runs[0]
        con.execute("DELETE FROM metrics")
        con.execute("DELETE FROM latest_metrics")
        con.execute("UPDATE runs SET lifecycle_stage='deleted' WHERE run_uuid != ?", (keep,))
        for key, points in _mlflow_points(history).items():
            con.executemany(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key, 0.0 if v != v else v, 1700000000000 + s, keep, s, int(v != v))
                    for s, v in points
                ],
            )
    con.close()
    return path


def write_lightning(history: History, folder: Path) -> Path:
    write_lightning_csv(history, folder)
    return folder


WRITERS: dict[str, Callable[[History, Path], Path]] = {
    "lightning-csv": write_lightning,
    "tensorboard": write_tensorboard,
    "jsonl": write_jsonl,
    "keras-csv": write_keras_csv,
    "hf-trainer": write_trainer_state,
    "mlflow": write_mlflow,
    "mlflow-sqlite": write_mlflow_sqlite,
}
