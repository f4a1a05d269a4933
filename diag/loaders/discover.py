"""What a run folder holds: its checkpoints in training order, its logs, and every other
file with the role it plays (or why it is not read).

`diag check RUN_DIR` starts here. Layouts recognised, by what is in the folder rather than
by its name:
- a Hugging Face Trainer `output_dir`: `checkpoint-N/` folders (full models, sharded or
  not, or PEFT adapters), `trainer_state.json`, TensorBoard `runs/`, `wandb/`;
- a Lightning folder: `lightning_logs/version_N/` (or one `version_N/`) with
  `checkpoints/*.ckpt`, `metrics.csv`, event files and `hparams.yaml`;
- a folder of numbered checkpoints (Keras-style `weights.05-0.42.pt`, `ckpt_000100.pt`,
  `epoch=3-step=120.ckpt`), with whatever logs lie beside them;
- a Weights & Biases folder (`wandb/run-*/` or one run's folder).

Nothing here unpickles anything: checkpoints are only listed; they are opened later by the
checkpoint loaders like any other. Files that exist only to resume training
(`training_args.bin`, `rng_state.pth`, `scheduler.pt`) are listed as not read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from diag.errors import InputError

MAX_ENTRIES = 50_000
MAX_DEPTH = 6
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx"}
# What a model folder (save_pretrained) holds: one checkpoint, read as one.
MODEL_FILES = (
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
    "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin", "model.onnx",
)  # fmt: skip
_HF_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LIGHTNING_VERSION = re.compile(r"^version_(\d+)$")
_STEP = re.compile(r"(?:^|[^a-z])(?:step|global_step|iter|iteration)[=_-]?(\d+)", re.IGNORECASE)
_EPOCH = re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.IGNORECASE)
_FLOAT = re.compile(r"\d+\.\d+")
_INTEGER = re.compile(r"\d+")
# Files a run folder holds that diag does not read, and why.
NOT_READ = {
    "training_args.bin": "the Trainer's arguments as a pickle of Python objects: not read",
    "rng_state.pth": "random-number-generator state, for resuming: not read",
    "scheduler.pt": "learning-rate scheduler state, for resuming: not read",
    "optimizer.pt": "optimizer state saved by position, not by parameter name: not read",
    "scaler.pt": "mixed-precision loss scaler state: not read",
}
OTHER_ROLES = {
    "config.json": "model configuration",
    "generation_config.json": "generation configuration",
    "adapter_config.json": "adapter (PEFT) configuration",
    "hparams.yaml": "hyperparameters",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer",
    "special_tokens_map.json": "tokenizer",
    "vocab.json": "tokenizer",
    "merges.txt": "tokenizer",
    "README.md": "model card",
}


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of the run: a file, or a folder the checkpoint loader opens."""

    path: Path
    label: str  # how a person names it: checkpoint-3000, epoch=3-step=120.ckpt
    step: int | None = None
    epoch: int | None = None
    index: int | None = None  # a bare number in the name, unit unknown


@dataclass(frozen=True)
class FileRole:
    path: str  # relative to the run folder
    role: str
    note: str = ""


@dataclass
class RunFolder:
    """A run folder, as found: checkpoints oldest first, the logs to read, every file's role."""

    root: Path
    layout: str
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    files: list[FileRole] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self, path: Path, role: str, note: str = "") -> None:
        shown = path.relative_to(self.root).as_posix() if path != self.root else "."
        self.files.append(FileRole(shown, role, note))


def discover(root: Path) -> RunFolder:
    """Find the checkpoints and logs of the run in `root`. Raises InputError when the
    folder holds neither."""
    if root.is_symlink() and not root.exists():
        raise InputError(root, "broken symbolic link")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    _check_size(root)
    version = _lightning_version(root)
    if version is not None:
        found = _lightning(root, version)
    elif any(_HF_CHECKPOINT.match(p.name) and _is_dir(p) for p in _entries(root)):
        found = _hf_trainer(root)
    elif _model_file(root) is not None:
        found = RunFolder(root, "model folder")
        found.checkpoints.append(_entry(root, root.name or str(root)))
        found.describe(root, "checkpoint", "a saved model (the only checkpoint)")
    else:
        found = _numbered(root)
    _add_logs(found)
    _describe_rest(found)
    if not found.checkpoints and not found.logs:
        raise InputError(
            root,
            "no checkpoints or training logs found (looked for Hugging Face Trainer, "
            "Lightning, numbered checkpoint files and W&B runs)",
        )
    return found


def _is_file(path: Path) -> bool:
    # Never through a symbolic link: nothing outside the folder the user named is read.
    return path.is_file() and not path.is_symlink()


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _entries(folder: Path) -> list[Path]:
    # Symbolic links are never followed: nothing outside the folder the user named is read.
    return sorted(p for p in folder.iterdir() if not p.is_symlink())


def _check_size(root: Path) -> None:
    seen = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        seen += len(dirs) + len(files)
        if seen > MAX_ENTRIES:
            raise InputError(root, f"more than {MAX_ENTRIES} entries: point diag at one run")
        if len(Path(folder).relative_to(root).parts) >= MAX_DEPTH:
            dirs[:] = []


def _model_file(folder: Path) -> Path | None:
    for name in MODEL_FILES:
        candidate = folder / name
        if _is_file(candidate):
            return candidate
    return None


def _entry(path: Path, label: str) -> CheckpointEntry:
    """Step, epoch or a bare index from a checkpoint's name (floats, like a val loss in
    `weights.05-0.42`, are not indices)."""
    name = label.removesuffix(path.suffix) if _is_file(path) else label
    if match := _HF_CHECKPOINT.match(name):
        return CheckpointEntry(path, label, step=int(match[1]))
    step = _STEP.search(name)
    epoch = _EPOCH.search(name)
    index = None
    if not step and not epoch:
        bare = _INTEGER.search(_FLOAT.sub("", name))
        index = int(bare[0]) if bare else None
    return CheckpointEntry(
        path,
        label,
        step=int(step[1]) if step else None,
        epoch=int(epoch[1]) if epoch else None,
        index=index,
    )


def _order(entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
    """Training order: by step when every checkpoint names one, else by epoch, else by the
    number in the name; checkpoints with none of these (last.ckpt) come last."""
    for key in ("step", "epoch", "index"):
        if entries and all(getattr(e, key) is not None for e in entries):
            return sorted(entries, key=lambda e: (getattr(e, key), e.label))
    known = [e for e in entries if any(v is not None for v in (e.step, e.epoch, e.index))]
    rest = [e for e in entries if e not in known]
    return _order(known) + sorted(rest, key=lambda e: e.label) if known else rest


# ------------------------------------------------------------------ layouts


def _hf_trainer(root: Path) -> RunFolder:
    found = RunFolder(root, "Hugging Face Trainer")
    models: dict[Path, Path] = {}
    for sub in _entries(root):
        if not (_is_dir(sub) and _HF_CHECKPOINT.match(sub.name)):
            continue
        model = _model_file(sub)
        if model is None:
            found.describe(sub, "not read", "no model.safetensors, pytorch_model.bin or adapter")
            continue
        found.checkpoints.append(_entry(sub, sub.name))
        models[sub] = model
    found.checkpoints = _order(found.checkpoints)
    for entry in found.checkpoints:
        model = models[entry.path]
        what = "adapter checkpoint" if model.name.startswith("adapter_") else "checkpoint"
        found.describe(entry.path, what, f"step {entry.step} ({model.name})")
    final = _model_file(root)
    if final is None:
        return found
    last = found.checkpoints[-1] if found.checkpoints else None
    twin = models[last.path].name if last is not None else None
    if last is not None and twin == final.name and _same_bytes(final, last.path / twin):
        found.describe(final, "not read", f"the final model: the same weights as {last.label}")
    else:
        found.checkpoints.append(CheckpointEntry(root, "final model"))
        found.describe(final, "checkpoint", "the final model, read last")
    return found


def _lightning_version(root: Path) -> Path | None:
    """The version folder to read: root itself, or the newest under lightning_logs/."""
    if _LIGHTNING_VERSION.match(root.name) and _is_file(root / "hparams.yaml"):
        return root
    for base in (root / "lightning_logs", root):
        if not _is_dir(base):
            continue
        versions = [
            (int(m[1]), p)
            for p in _entries(base)
            if _is_dir(p) and (m := _LIGHTNING_VERSION.match(p.name))
        ]
        if versions:
            return max(versions)[1]
    return None


def _lightning(root: Path, version: Path) -> RunFolder:
    found = RunFolder(root, "Lightning")
    for sibling in _entries(version.parent) if version != root else ():
        if _is_dir(sibling) and _LIGHTNING_VERSION.match(sibling.name) and sibling != version:
            found.describe(
                sibling, "not read", f"an earlier run; check it with `diag check {sibling}`"
            )
    for folder in (version / "checkpoints", version, root / "checkpoints", root):
        if _is_dir(folder):
            _checkpoint_files(found, folder)
        if found.checkpoints:
            break
    found.logs.extend(_lightning_logs(found, version))
    return found


def _lightning_logs(found: RunFolder, version: Path) -> list[Path]:
    metrics = version / "metrics.csv"
    events = [p for p in _entries(version) if p.name.startswith("events.out.tfevents")]
    if _is_file(metrics):
        for event in events:
            found.describe(event, "logs", "the same metrics as metrics.csv: not read twice")
        return [metrics]
    return [version] if events else []


def _numbered(root: Path) -> RunFolder:
    found = RunFolder(root, "numbered checkpoints")
    for folder in (root, root / "checkpoints", root / "ckpt", root / "models"):
        if _is_dir(folder):
            _checkpoint_files(found, folder)
    if not found.checkpoints:
        _nested_checkpoints(found)
    wandb = _wandb_root(root)
    if not found.checkpoints and wandb is not None:
        found.layout = "W&B"
    return found


def _nested_checkpoints(found: RunFolder) -> None:
    """A `checkpoints/` folder further down (Lightning with the W&B logger writes
    `PROJECT/RUN_ID/checkpoints/`): the newest one is the run; the others are named."""
    nested = []
    for folder, dirs, _ in os.walk(found.root, followlinks=False):
        depth = len(Path(folder).relative_to(found.root).parts)
        dirs[:] = [d for d in dirs if not d.startswith(".") and depth < 3]
        for d in dirs:
            candidate = Path(folder) / d
            if d in ("checkpoints", "ckpt") and _is_dir(candidate):
                nested.append((candidate.stat().st_mtime, candidate))
    if not nested:
        return
    nested.sort()
    for _, other in nested[:-1]:
        found.describe(other, "not read", "another run's checkpoints: check it on its own")
    _checkpoint_files(found, nested[-1][1])


def _checkpoint_files(found: RunFolder, folder: Path) -> None:
    entries = []
    for path in _entries(folder):
        if _is_file(path) and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            if path.name in NOT_READ or path.name.startswith(("adapter_", "optimizer")):
                continue
            entries.append(_entry(path, path.name))
        elif _is_dir(path) and _model_file(path) is not None:
            entries.append(_entry(path, path.name))  # a save_pretrained folder per epoch
    ordered = _order(entries)
    if len(ordered) > 1:
        ordered = _without_last_copy(found, ordered)
    for entry in ordered:
        found.checkpoints.append(entry)
        where = ", ".join(
            f"{k} {v}" for k in ("step", "epoch") if (v := getattr(entry, k)) is not None
        )
        found.describe(entry.path, "checkpoint", where)


def _without_last_copy(found: RunFolder, entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
    """Lightning's `last.ckpt` repeats the newest checkpoint: read it once, as the latest."""
    last = [e for e in entries if e.path.stem == "last"]
    if not last or len(entries) == len(last):
        return entries
    numbered = [e for e in entries if e not in last]
    newest = numbered[-1]
    if _is_file(newest.path) and _same_bytes(newest.path, last[0].path):
        found.describe(last[0].path, "not read", f"a copy of {newest.label}")
        return numbered
    return entries


def _same_bytes(a: Path, b: Path) -> bool:
    from diag.api import quick_fingerprint

    return quick_fingerprint(a) == quick_fingerprint(b)


# ------------------------------------------------------------------ logs


def _wandb_root(root: Path) -> Path | None:
    if root.name == "wandb" and _is_dir(root):
        return root
    if _is_dir(root / "wandb"):
        return root / "wandb"
    if any(p.suffix == ".wandb" for p in _entries(root) if _is_file(p)):
        return root
    return None


def _add_logs(found: RunFolder) -> None:
    """One log source per run: the same metrics written twice (trainer_state.json and the
    Trainer's TensorBoard or W&B reports) would give every curve finding twice."""
    root = found.root
    sources: list[tuple[str, Path]] = []
    if found.layout == "Hugging Face Trainer":
        states = [
            (e.step or 0, e.path / "trainer_state.json")
            for e in found.checkpoints
            if _is_file(e.path / "trainer_state.json")
        ]
        if _is_file(root / "trainer_state.json"):
            states.append((1 << 62, root / "trainer_state.json"))
        if states:
            newest = max(states)[1]
            sources.append(("trainer_state.json (the newest holds the whole history)", newest))
            for _, other in states:
                if other != newest:
                    found.describe(other, "logs", "an earlier copy of the history: not read")
    if _is_dir(root / "runs"):
        sources.append(("TensorBoard events", root / "runs"))
    wandb = _wandb_root(root)
    if wandb is not None:
        sources.append(("W&B run files", wandb))
    if not found.logs and found.layout != "Lightning":
        sources.extend(_loose_logs(root))
    for i, (what, path) in enumerate(sources):
        if found.logs or i > 0:
            found.describe(path, "logs", f"{what}: the same run's metrics, not read twice")
            continue
        found.logs.append(path)
        found.describe(path, "logs", what)
    for path in found.logs:
        if found.layout == "Lightning":
            found.describe(path, "logs", "Lightning metrics")


def _loose_logs(root: Path) -> list[tuple[str, Path]]:
    """CSV, JSON Lines and event files lying in the run folder itself."""
    out = []
    for path in _entries(root):
        if not _is_file(path):
            continue
        if path.name.startswith("events.out.tfevents"):
            out.append(("TensorBoard events", root))
            break
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson") or path.name in (
            "trainer_state.json",
            "history.json",
        ):
            from diag.loaders.logs import tables

            if tables.sniff_text_log(path):
                out.append((f"training log ({path.name})", path))
    return out


def _describe_rest(found: RunFolder) -> None:
    """Every other file at the top of the run folder and in its checkpoint folders, with its
    role, so that nothing is ignored in silence."""
    described = {f.path for f in found.files}
    folders = {found.root} | {e.path for e in found.checkpoints if _is_dir(e.path)}
    for folder in sorted(folders):
        model = _model_file(folder)
        for path in _entries(folder):
            shown = path.relative_to(found.root).as_posix()
            if not _is_file(path) or shown in described:
                continue
            if model is not None and _part_of_model(path, model):
                continue
            if path.name in NOT_READ:
                found.files.append(FileRole(shown, "not read", NOT_READ[path.name]))
            elif path.name in OTHER_ROLES:
                found.files.append(FileRole(shown, OTHER_ROLES[path.name], "not read"))
            elif folder != found.root:
                found.files.append(FileRole(shown, "not read", "not a file diag knows"))


def _part_of_model(path: Path, model: Path) -> bool:
    """The model file itself, or one of the shards its index names."""
    if path == model:
        return True
    stem = model.name.removesuffix(".index.json").split(".")[0]
    return path.name.startswith(stem + "-") and path.suffix in (".safetensors", ".bin")
