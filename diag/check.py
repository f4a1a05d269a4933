"""`diag check` as a function: inputs -> Run -> rules -> Result -> reports, and an exit code."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.errors import UsageError
from diag.model import Result, Severity

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


def exit_code(result: Result, fail_on: str) -> int:
    if fail_on == "never":
        return 0
    worst = result.worst()
    return 1 if worst is not None and worst >= Severity.parse(fail_on) else 0


def check(options: CheckOptions) -> tuple[Result, Any]:
    """Load the inputs, run the selected rules, return the Result and the Run."""
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
    if options.init and not options.checkpoint:
        raise UsageError("--init needs a CHECKPOINT to compare with")
    try:
        specs = select_rules(load_rules(), options.select, options.ignore)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run = Run()
    if options.checkpoint:
        run.checkpoint = open_checkpoint(options.checkpoint)
    if options.init:
        run.init = open_checkpoint(options.init)
    if options.logs:
        run.logs = load_logs(options.logs, options.train_metric, options.val_metric)
    if options.splits:
        run.splits = load_splits(options.splits, options.label_column, options.group_column)
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
    metadata = {
        "inputs": _inputs(run),
        "generated": started.isoformat(),
        "rules_run": len(specs),
    }
    return run_rules(run, specs, metadata), run


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


def load_splits(
    paths: dict[str, str], label_column: str | None, group_column: str | None
) -> dict[str, Any]:
    from diag.loaders.splits.loaders import open_split

    return {
        name: open_split(name, Path(path), label_column=label_column, group_column=group_column)
        for name, path in paths.items()
    }


def run_check(options: CheckOptions, echo: Callable[..., Any] = print) -> int:
    from diag.reports import render

    result, run = check(options)
    text = render(options.fmt, result, run)
    if options.output:
        write_atomic(Path(options.output), text)
    else:
        echo(text, nl=False)
    if options.html:
        write_atomic(Path(options.html), render("html", result, run))
    return exit_code(result, options.fail_on)


def _inputs(run: Any) -> list[dict[str, Any]]:
    out = _checkpoint_inputs(run)
    for log in run.logs or ():
        entry: dict[str, Any] = {"role": "logs", "path": str(log.source), "format": log.run.format}
        if log.run.run:
            entry["run"] = log.run.run
        entry["series"] = len(log.curves)
        entry["roles"] = dict(log.roles)
        if log.tests:
            entry["test_series"] = list(log.tests)
        if log.notes:
            entry["notes"] = list(log.notes)
        out.append(entry)
    return out + _split_inputs(run)


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
    for role in ("checkpoint", "init"):
        ckpt = getattr(run, role)
        if ckpt is None:
            continue
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


class Progress:
    """A rich progress bar on stderr, or a no-op when quiet (not a terminal, --quiet, small)."""

    def __init__(self, quiet: bool, total: int, label: str, unit: str = "bytes") -> None:
        self.quiet = quiet
        self.total = total
        self.label = label
        self.unit = unit

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        amount = DownloadColumn() if self.unit == "bytes" else MofNCompleteColumn()
        self._bar = Bar(
            TextColumn(self.label),
            BarColumn(),
            amount,
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda done, total: self._bar.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()
