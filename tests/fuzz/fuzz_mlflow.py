"""Fuzz the MLflow readers: the file store's meta.yaml and metric files, and mlflow.db."""

from __future__ import annotations

from _common import check_and_render, fuzz, load_diag, scratch_file, scratch_tree

load_diag()

# The bytes, cut at this separator, fill these files of a one-run store in order.
SEPARATOR = b"\x00\x00"
PARTS = (
    "mlruns/7/meta.yaml",
    "mlruns/7/abc123/meta.yaml",
    "mlruns/7/abc123/metrics/train_loss",
    "mlruns/7/abc123/metrics/val/loss",
    "mlruns/7/abc123/params/lr",
    "mlruns/7/abc123/tags/mlflow.runName",
)


def one_input(data: bytes) -> None:
    # An odd first byte: the rest is an `mlflow.db` (SQLite store); even: a file store.
    if data[:1] and data[0] % 2 == 1:
        path = scratch_file("mlflow.db", data[1:])
        check_and_render(logs=[str(path)])
        return
    pieces = data[1:].split(SEPARATOR)
    root = scratch_tree(dict(zip(PARTS, pieces, strict=False)))
    if (root / "mlruns").is_dir():
        check_and_render(logs=[str(root / "mlruns")])


if __name__ == "__main__":
    fuzz(one_input)
