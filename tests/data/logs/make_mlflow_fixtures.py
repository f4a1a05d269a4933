"""Regenerate the MLflow fixtures in `tests/data/logs/mlflow/` with a real MLflow.

Written by MLflow 3.17.2 (`mlflow-skinny` plus `sqlalchemy` and `alembic`, which the
SQLite store needs). Needs mlflow, so CI does not run it; run it by hand from a scratch
venv outside the repo:

    python3.11 -m venv /tmp/mlflowvenv
    /tmp/mlflowvenv/bin/pip install mlflow-skinny sqlalchemy alembic
    /tmp/mlflowvenv/bin/python tests/data/logs/make_mlflow_fixtures.py

The same runs go to both stores: a file store (`mlflow/mlruns/`) and the SQLite store that
MLflow >= 3.7 uses by default (`mlflow/mlflow.db`, vacuumed to keep it small). What is
logged is spelled out in `RUNS` below; `tests/test_logs_mlflow.py` holds a copy of the
expected series, so change both together. Run ids are random, so the tests find runs by name.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import mlflow

OUT = Path(__file__).resolve().parent / "mlflow"
EXPERIMENT = "diag-fixture"
T0 = 1_700_000_000_000  # fixed timestamps (ms) keep the fixtures comparable across runs

# (key, step, value) in the order logged. "resnet-lr0.1" logs train_loss per step, is resumed
# from step 4 (steps 4 and 5 written twice), and has a NaN validation loss; "tiny-lr0.01"
# has an infinite training loss and a legacy-free single point.
RUNS: dict[str, dict] = {
    "resnet-lr0.1": {
        "params": {"lr": "0.1", "batch_size": "32", "optimizer": "sgd"},
        "metrics": [
            ("train_loss", 0, 2.5),
            ("train_loss", 1, 2.0),
            ("train_loss", 2, 1.5),
            ("val_loss", 2, 1.75),
            ("val/acc", 2, 0.25),
            ("train_loss", 3, 1.25),
            ("train_loss", 4, 1.0),
            ("train_loss", 5, 0.875),
            ("val_loss", 5, math.nan),
            ("val/acc", 5, 0.5),
            # resumed from the step-3 checkpoint: steps 4 and 5 again
            ("train_loss", 4, 1.125),
            ("train_loss", 5, 0.75),
            ("train_loss", 6, 0.5),
            ("val_loss", 6, 0.625),
            ("val/acc", 6, 0.75),
        ],
    },
    "tiny-lr0.01": {
        "params": {"lr": "0.01"},
        "metrics": [
            ("train_loss", 0, 3.0),
            ("train_loss", 1, math.inf),
            ("train_loss", 2, -math.inf),
        ],
    },
}
DELETED_RUN = "deleted-run"


def log_all(uri: str) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    for name, run in RUNS.items():
        with mlflow.start_run(run_name=name):
            mlflow.log_params(run["params"])
            for i, (key, step, value) in enumerate(run["metrics"]):
                mlflow.log_metric(key, value, step=step, timestamp=T0 + 1000 * i)
    with mlflow.start_run(run_name=DELETED_RUN) as deleted:
        mlflow.log_metric("train_loss", 9.0, step=0, timestamp=T0)
    mlflow.delete_run(deleted.info.run_id)
    # a whole deleted experiment: the file store moves it into `.trash`
    gone = mlflow.create_experiment("deleted-experiment")
    with mlflow.start_run(experiment_id=gone, run_name="in-deleted-experiment"):
        mlflow.log_metric("train_loss", 8.0, step=0, timestamp=T0)
    mlflow.delete_experiment(gone)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    # MLflow 3.x refuses to open a file store unless told to (it is in maintenance mode)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    log_all(f"file://{OUT / 'mlruns'}")
    db = OUT / "mlflow.db"
    log_all(f"sqlite:///{db}")
    # git keeps no empty folder (artifacts/, an unused params/): drop them here too, so the
    # tests see the same tree whether the fixtures were just made or checked out
    for folder in sorted((OUT / "mlruns").rglob("*"), key=lambda p: -len(p.parts)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    # MLflow creates ~65 tables plus indexes, at least one page each: 512-byte pages keep the
    # file around 150 kB instead of 1 MB without touching its schema or rows
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size = 512")
    con.execute("VACUUM")
    con.close()
    print(f"mlflow {mlflow.__version__}: wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
