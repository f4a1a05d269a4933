"""`diag check` as a function: inputs -> Run -> rules -> Result -> reports, and an exit code.

The one-call Python API is `diag.check(...)` (in diag/__init__.py), built on `check` here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.errors import UsageError
from diag.model import Result, Severity
from diag.progress import Progress

FINGERPRINT_BYTES = 1 << 20


@dataclass
class CheckOptions:
    checkpoint: str | None = None
    init: str | None = None
    logs: list[str] = field(default_factory=list)
    train_metric: str | None = None
    val_metric: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    label_column: str | None = None
    group_column: str | None = None
    model: str | None = None
    batch: str | None = None
    loss: str | None = None
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fmt: str = "text"
    output: str | None = None
    html: str | None = None
    fail_on: str = "error"
    quiet: bool = True
    verbose: bool = False
    extend_select: list[str] = field(default_factory=list)
    per_object_ignores: dict[str, list[str]] = field(default_factory=dict)
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    write_baseline: str | None = None
    config_path: str | None = None
    engine: str = "local"  # where the data rules run: local, or ray (diag.data_engines)
    engine_address: str | None = None


def exit_code(result: Result, fail_on: str) -> int:
    """1 when a finding not in the baseline is at or above `fail_on`, else 0."""
    if fail_on == "never":
        return 0
    worst = result.worst(include_known=False)
    return 1 if worst is not None and worst >= Severity.parse(fail_on) else 0


def check(options: CheckOptions) -> tuple[Result, Any]:
    """Load the inputs, run the selected rules, return the Result and the Run."""
    from diag.data_engines import engine_for, load_splits
    from diag.engine import run_rules
    from diag.loaders.checkpoint import open_checkpoint
    from diag.registry import load_rules, select_rules
    from diag.run import Run

    if not (options.checkpoint or options.logs or options.splits or options.model):
        raise UsageError(
            "nothing to check: give a CHECKPOINT, --logs, --split or --model, "
            "or set them in [tool.diag]"
        )
    if bool(options.model) != bool(options.batch):
        raise UsageError("--model and --batch go together: the model needs a batch to run on")
    if options.init and not options.checkpoint and not _hf_model(options.model):
        raise UsageError("--init needs a CHECKPOINT to compare with")
    try:
        specs = select_rules(
            load_rules(), options.select, options.ignore, extend=options.extend_select
        )
        # Rules that read what only a live run records (gradient norms while training)
        # could never run here: left out unless named, so they are not "skipped" noise.
        named = {*options.select, *options.extend_select}
        specs = [s for s in specs if "gradients_live" not in s.needs or {s.name, s.group} & named]
        rule_options = validate_rule_options(load_rules(), options.rule_options)
        validate_object_ignores(load_rules(), options.per_object_ignores)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run = Run()
    folder = _run_folder(options.checkpoint)
    if folder is not None:
        open_history(run, folder)
        if not options.logs:
            options.logs = [str(p) for p in folder.logs]
    elif options.checkpoint:
        run.checkpoint = open_checkpoint(options.checkpoint)
    if run.checkpoint is None and _hf_model(options.model):
        # `--model hf:DIR` names a model folder: its weights are the checkpoint as well.
        run.checkpoint = open_checkpoint(str(options.model).removeprefix("hf:"))
    if options.init:
        run.init = open_checkpoint(options.init)
        run.init_is_reference = False
    if options.logs:
        run.logs = load_logs(options.logs, options.train_metric, options.val_metric)
    engine = engine_for(
        options.engine,
        options.splits,
        options.label_column,
        options.group_column,
        options.engine_address,
    )
    if options.splits:
        run.splits = load_splits(options.splits, options.label_column, options.group_column, engine)
        run.engine = None if engine.name == "local" else engine
    run.quiet = options.quiet
    if options.model and options.batch:
        from diag.loaders.probe_inputs import open_probe

        run.probe = open_probe(
            options.model,
            options.batch,
            loss_spec=options.loss,
            checkpoint=run.checkpoint,
            init=run.init,
        )
    total = run.total_bytes()
    with Progress(options.quiet or total < 64 * 1024 * 1024, total, "reading tensors") as advance:
        run.prepare(advance)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    metadata: dict[str, Any] = {
        "inputs": _inputs(run),
        "generated": started.isoformat(),
        "rules_run": len(specs),
    }
    if options.config_path:
        metadata["config_path"] = options.config_path
    if folder is not None:
        metadata["run"] = _run_metadata(run, folder)
    result = run_rules(run, specs, metadata, rule_options)
    if run.history and len(run.history) > 1:
        from diag.history import first_seen

        result = first_seen(result, run.history, specs, rule_options)
    result = apply_object_ignores(result, options.per_object_ignores)
    if options.baseline:
        result = apply_baseline(result, Path(options.baseline))
    return result, run


def _hf_model(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith("hf:")


def _run_folder(path: str | None) -> Any:
    """The run folder `path` names, or None for a checkpoint file or a single saved model."""
    if not path or not Path(path).is_dir():
        return None
    from diag.loaders.discover import discover

    found = discover(Path(path))
    if found.layout == "model folder" and not found.logs:
        return None  # one saved model: the checkpoint loader opens the folder as before
    return found


def open_history(run: Any, folder: Any) -> None:
    """Open every checkpoint of a run folder, oldest first; the earliest is the reference
    the others are measured against until --init says otherwise."""
    from diag.loaders.checkpoint import open_checkpoint

    history = []
    for entry in folder.checkpoints:
        ckpt = open_checkpoint(entry.path)
        ckpt.meta.extra["label"] = entry.label
        if ckpt.meta.global_step is None and entry.step is not None:
            ckpt.meta.global_step = entry.step
        if ckpt.meta.epoch is None and entry.epoch is not None:
            ckpt.meta.epoch = entry.epoch
        history.append(ckpt)
    if not history:
        return
    run.history = history
    run.checkpoint = history[-1]
    if len(history) > 1:
        run.init = history[0]
        run.init_is_reference = True


def _run_metadata(run: Any, folder: Any) -> dict[str, Any]:
    from diag.history import checkpoint_label

    out: dict[str, Any] = {"path": str(folder.root), "layout": folder.layout}
    out["checkpoints"] = [
        {"label": checkpoint_label(c), "path": c.path, "step": c.meta.global_step}
        for c in run.history or ()
    ]
    if run.init is not None:
        out["reference"] = checkpoint_label(run.init) if run.init_is_reference else run.init.path
        out["reference_is_init"] = not run.init_is_reference
    out["logs"] = [str(p) for p in folder.logs]
    out["files"] = [{"path": f.path, "role": f.role, "note": f.note} for f in folder.files]
    if folder.notes:
        out["notes"] = list(folder.notes)
    return out


def validate_rule_options(specs: list[Any], wanted: dict[str, dict[str, Any]]) -> dict:
    """`[tool.diag.rules.NAME]` tables checked against what each rule declares."""
    by_name = {s.name: s for s in specs}
    out: dict[str, dict[str, Any]] = {}
    for name, values in wanted.items():
        if name not in by_name:
            raise ValueError(f"[tool.diag.rules]: unknown rule {name!r} (see `diag rules`)")
        declared = by_name[name].options()
        for key, value in values.items():
            if key not in declared:
                known = ", ".join(declared) or "none"
                raise ValueError(
                    f"[tool.diag.rules.{name}]: unknown option {key!r} (options: {known})"
                )
            default = declared[key]
            numeric = isinstance(default, int | float) and not isinstance(default, bool)
            ok = (
                isinstance(value, int | float) and not isinstance(value, bool)
                if numeric
                else isinstance(value, type(default))
            )
            if not ok:
                raise ValueError(
                    f"[tool.diag.rules.{name}]: {key} must be a {type(default).__name__}, "
                    f"got {value!r}"
                )
        out[name] = dict(values)
    return out


def validate_object_ignores(specs: list[Any], ignores: dict[str, list[str]]) -> None:
    names = {s.name for s in specs} | {s.group for s in specs}
    for key in ignores:
        if key not in names:
            raise ValueError(f"[tool.diag.per-object-ignores]: unknown rule or group {key!r}")


def apply_object_ignores(result: Result, ignores: dict[str, list[str]]) -> Result:
    """Drop findings on objects the config ignores for that rule (globs, as in ruff's
    per-file-ignores); how many were dropped goes into the metadata."""
    import dataclasses
    from fnmatch import fnmatchcase

    if not ignores:
        return result

    def ignored(f: Any) -> bool:
        globs = [*ignores.get(f.rule, ()), *ignores.get(f.group, ())]
        return any(fnmatchcase(f.location.object, g) for g in globs)

    kept = tuple(f for f in result.findings if not ignored(f))
    meta = dict(result.metadata)
    meta["ignored_by_config"] = len(result.findings) - len(kept)
    return dataclasses.replace(result, findings=kept, metadata=meta)


BASELINE_VERSION = 1


def write_baseline(result: Result, path: Path) -> int:
    """Record the findings' fingerprints (rule + artifact name + object: no values, no
    steps, so a re-run of the same training still matches)."""
    import json

    entries = [
        {
            "fingerprint": f.fingerprint,
            "rule": f.rule,
            "artifact": f.location.artifact.replace("\\", "/").rsplit("/", 1)[-1],
            "object": f.location.object,
            "severity": f.severity.label if f.severity else None,
        }
        for f in result.findings
    ]
    doc = {"diag_baseline": BASELINE_VERSION, "findings": entries}
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return len(entries)


def apply_baseline(result: Result, path: Path) -> Result:
    """Mark findings whose fingerprint is in the baseline as known."""
    import dataclasses
    import json

    from diag.errors import InputError

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        known = {str(e["fingerprint"]) for e in doc["findings"]}
        if doc.get("diag_baseline") != BASELINE_VERSION:
            raise InputError(path, "not a diag baseline (diag_baseline: 1 missing)")
    except FileNotFoundError:
        raise InputError(path, "baseline file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(path, "not a diag baseline (write one with --write-baseline)") from None
    findings = tuple(dataclasses.replace(f, known=f.fingerprint in known) for f in result.findings)
    meta = dict(result.metadata)
    new = sum(not f.known for f in findings)
    meta["baseline"] = {"path": str(path), "known": len(findings) - new, "new": new}
    return dataclasses.replace(result, findings=findings, metadata=meta)


def load_logs(paths: list[str], train_metric: str | None, val_metric: str | None) -> list[Any]:
    """Every run of every --logs path, with its curves and their roles."""
    from diag.loaders.logs import open_logs
    from diag.loaders.logs.curves import training_log

    logs, refused = [], []
    for path in paths:
        for log_run in open_logs(Path(path)):
            try:
                logs.append(training_log(log_run, train_metric, val_metric))
            except UsageError as exc:
                refused.append((log_run, exc))
    if refused and not logs:
        raise refused[0][1]
    for log_run, _ in refused:  # the named series is in other runs: infer this one's roles
        logs.append(training_log(log_run))
    return logs


def run_check(options: CheckOptions, echo: Callable[..., Any] = print) -> int:
    from diag.reports import render

    result, run = check(options)
    if options.write_baseline:
        count = write_baseline(result, Path(options.write_baseline))
        sys.stderr.write(
            f"diag: wrote {count} finding(s) to the baseline {options.write_baseline}\n"
        )
    verbose = {"verbose": True} if options.verbose and options.fmt == "text" else {}
    text = render(options.fmt, result, run, **verbose)
    if options.output:
        write_atomic(Path(options.output), text)
    else:
        echo(text, nl=False)
    if options.html:
        write_atomic(Path(options.html), render("html", result, run))
    if options.write_baseline:
        return 0  # the baseline accepts what was found
    return exit_code(result, options.fail_on)


def _inputs(run: Any) -> list[dict[str, Any]]:
    out = _checkpoint_inputs(run)
    for log in run.logs or ():
        entry: dict[str, Any] = {"role": "logs", "path": str(log.source), "format": log.run.format}
        if log.run.run:
            entry["run"] = log.run.run
        entry["series"] = len(log.curves)
        entry["points"] = sum(len(c.steps) for c in log.curves.values())
        entry["roles"] = dict(log.roles)
        if log.tests:
            entry["test_series"] = list(log.tests)
        if log.notes:
            entry["notes"] = list(log.notes)
        out.append(entry)
    return out + _split_inputs(run) + _probe_inputs(run)


def _probe_inputs(run: Any) -> list[dict[str, Any]]:
    probe = getattr(run, "probe", None)
    if probe is None:
        return []
    batch: dict[str, Any] = {"role": "batch", "path": probe.batch_path, "samples": probe.batch_size}
    if Path(probe.batch_path).is_file():
        batch["bytes"] = Path(probe.batch_path).stat().st_size
        batch["fingerprint"] = quick_fingerprint(Path(probe.batch_path))
    model = {"role": "model", "path": probe.source, "format": probe.model_format}
    model["loss"] = probe.loss_name
    if probe.notes:
        model["notes"] = list(probe.notes)
    return [model, batch]


def _split_inputs(run: Any) -> list[dict[str, Any]]:
    out = []
    for name, split in (run.splits or {}).items():
        entry: dict[str, Any] = {"role": "split", "name": name, "path": str(split.source)}
        entry["kind"] = split.kind
        entry["samples"] = len(split)
        if split.labels is not None:
            entry["classes"] = len(set(split.labels.tolist()))
        if split.groups is not None:
            entry["groups"] = len(set(split.groups.tolist()))
        if split.columns:
            entry["columns"] = len(split.columns)
        if split.notes:
            entry["notes"] = list(split.notes)
        out.append(entry)
    return out


def _checkpoint_inputs(run: Any) -> list[dict[str, Any]]:
    out = []
    # The checkpoint, then the reference, then the run's checkpoints between them.
    middle = [c for c in getattr(run, "history", None) or () if c is not run.checkpoint]
    for ckpt in [run.checkpoint, run.init, *(c for c in middle if c is not run.init)]:
        if ckpt is None:
            continue
        role = "checkpoint" if ckpt is run.checkpoint else "init" if ckpt is run.init else "history"
        path = Path(ckpt.path)
        entry: dict[str, Any] = {"role": role, "path": ckpt.path, "format": ckpt.format}
        if path.is_file():
            entry["bytes"] = path.stat().st_size
            entry["fingerprint"] = quick_fingerprint(path)
        entry["tensors"] = len(ckpt.infos())
        if ckpt.meta.epoch is not None:
            entry["epoch"] = ckpt.meta.epoch
        if ckpt.meta.global_step is not None:
            entry["global_step"] = ckpt.meta.global_step
        out.append(entry)
    return out


def quick_fingerprint(path: Path) -> str:
    """sha256 of the size and the first and last MiB: identifies a file without rereading GBs."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > 2 * FINGERPRINT_BYTES:
            fh.seek(-FINGERPRINT_BYTES, os.SEEK_END)
            h.update(fh.read(FINGERPRINT_BYTES))
    return "sha256-ends:" + h.hexdigest()[:32]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failed run never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
