"""Training logs: find them, read them with the right loader, one `LogRun` per run.

`open_logs` takes what a user passes to `--logs`: a log file of a known format, or a
folder searched for them (TensorBoard event files, Lightning/Keras/plain CSV, JSON Lines,
Hugging Face `trainer_state.json`, MLflow file stores and `mlflow.db`, W&B `run-*.wandb`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from diag.errors import InputError
from diag.loaders.logs.series import LogRun, Series

MAX_DEPTH = 8
MAX_ENTRIES = 50_000
_TEXT_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".log", ".txt"}
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# TensorBoard sub-folders Keras and others write for one run's two sides.
_SIDES = {"train": "train", "training": "train", "validation": "val", "val": "val"}
_SIDES |= {"eval": "val", "valid": "val", "test": "test"}
Reader = Callable[[Path], list[LogRun]]


def is_folder(path: Path) -> bool:
    """Whether a log path is a folder (else a file); InputError when it is neither."""
    try:
        if path.is_dir():
            return True
        if not path.is_file():
            cause = "not a file or folder" if path.exists() else "no such file or folder"
            raise InputError(path, cause)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    return False


def open_logs(path: Path) -> list[LogRun]:
    """Every run in a log file or folder. Raises InputError when there is none."""
    if path.is_symlink() and not path.exists():
        raise InputError(path, "broken symbolic link")
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        runs = _read_folder(path)
        if not runs:
            raise InputError(
                path,
                "no training logs found (looked for TensorBoard event files, metrics.csv and "
                "other CSV/TSV, JSON Lines, trainer_state.json, MLflow runs and mlflow.db, "
                "W&B run-*.wandb)",
            )
        return runs
    return _read_file(path)


def _read_file(path: Path) -> list[LogRun]:
    from diag.loaders.logs import mlflow, tables, tensorboard, wandb

    if tensorboard.is_event_file(path):
        return _pair_sides(tensorboard.read_tensorboard(path))
    if wandb.is_wandb_file(path):
        return wandb.read_wandb(path)
    if mlflow.is_mlflow(path):
        return mlflow.read_mlflow(path)
    kind = tables.sniff_text_log(path)
    if kind == "hf-trainer":
        return tables.read_trainer_state(path)
    if kind == "jsonl":
        return tables.read_jsonl(path)
    if kind is not None:
        return tables.read_csv_log(path)
    # Named as a log but not recognised by content: let its reader say what is wrong.
    suffix = path.suffix.lower()
    if path.name == "trainer_state.json":
        return tables.read_trainer_state(path)
    if suffix in (".jsonl", ".ndjson"):
        return tables.read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return tables.read_csv_log(path)
    raise InputError(
        path,
        "not a training log diag can read (expected TensorBoard events, CSV/TSV, JSON Lines, "
        "trainer_state.json or MLflow)",
    )


def _read_folder(root: Path) -> list[LogRun]:
    from diag.loaders.logs import mlflow, tables, tensorboard, wandb

    if mlflow.is_mlflow(root):
        return mlflow.read_mlflow(root)
    runs: list[LogRun] = []
    has_events = False
    text_logs: list[Path] = []
    hf_states: dict[Path, list[tuple[int, Path]]] = {}
    wandb_files: list[Path] = []
    seen = 0
    for folder, dirs, files, depth in _walk(root):
        seen += len(dirs) + len(files)
        if seen > MAX_ENTRIES:
            raise InputError(root, f"more than {MAX_ENTRIES} entries: point --logs at one run")
        found = sorted(f for f in files if f.endswith(wandb.SUFFIX))
        wandb_files.extend(folder / f for f in found)
        if found and wandb.is_run_folder(folder):
            # A W&B run folder: its logs/ and files/ hold wandb's own logs, not metrics.
            dirs[:] = []
            continue
        keep = []
        for d in sorted(dirs):
            sub = folder / d
            if sub.is_symlink():
                continue  # never leave the folder the user named
            if mlflow.is_mlflow(sub):
                runs.extend(mlflow.read_mlflow(sub))
            elif depth < MAX_DEPTH and not d.startswith("."):
                keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            path = folder / name
            if tensorboard.is_event_file(path):
                has_events = True
            elif name == "trainer_state.json":
                match = _CHECKPOINT_DIR.match(folder.name)
                parent = folder.parent if match else folder
                hf_states.setdefault(parent, []).append((int(match[1]) if match else -1, path))
            elif name == "mlflow.db" and mlflow.is_mlflow(path):
                runs.extend(mlflow.read_mlflow(path))
            elif path.suffix.lower() in _TEXT_SUFFIXES and tables.sniff_text_log(path):
                text_logs.append(path)
    if has_events:
        runs.extend(_pair_sides(tensorboard.read_tensorboard(root)))
    # Each HF checkpoint folder repeats the whole history so far: the latest one has it all.
    for states in hf_states.values():
        runs.extend(tables.read_trainer_state(max(states)[1]))
    for path in text_logs:
        runs.extend(_read_file(path))
    if wandb_files:
        runs.extend(wandb.read_wandb_files(wandb_files))
    return runs


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str], int]]:
    root_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        # Symbolic links to files are skipped too: nothing outside the folder is read.
        files[:] = [f for f in files if not (here / f).is_symlink()]
        yield here, dirs, files, len(here.parts) - root_depth


def _pair_sides(runs: list[LogRun]) -> list[LogRun]:
    """Merge sibling TensorBoard runs named train/validation into one run.

    Keras's TensorBoard callback writes `logs/train` and `logs/validation`, both with the
    tag `epoch_loss`; only together are they a training and a validation curve.
    """
    by_parent: dict[str, list[LogRun]] = {}
    for run in runs:
        parent, _, leaf = run.run.rpartition("/")
        if leaf.lower() in _SIDES:
            by_parent.setdefault(parent, []).append(run)
    merged_ids = set()
    out = []
    for parent, sides in by_parent.items():
        kinds = {_SIDES[r.run.rpartition("/")[2].lower()] for r in sides}
        if len(sides) < 2 or not ({"train", "val"} <= kinds):
            continue
        series: dict[str, Series] = {}
        notes: list[str] = []
        for side in sides:
            leaf = side.run.rpartition("/")[2]
            for name, s in side.series.items():
                series[f"{leaf}/{name}"] = Series(
                    f"{leaf}/{name}", s.steps, s.values, s.epochs, s.wall_times
                )
            notes.extend(side.notes)
            merged_ids.add(id(side))
        source = sides[0].source.parent
        out.append(LogRun(source, "tensorboard", series, parent, {}, tuple(notes)))
    return [r for r in runs if id(r) not in merged_ids] + out
