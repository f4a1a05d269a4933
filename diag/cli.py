"""The `diag` command line. Heavy libraries (torch, onnx, jinja2) load only inside commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from diag import __version__
from diag.errors import DiagError, UsageError
from diag.reports import FORMATS as REPORT_FORMATS

# Every registered reporter (the registry only names modules: nothing heavy is imported).
FORMATS = tuple(REPORT_FORMATS)
FAIL_ON = ("info", "warning", "error", "never")


def fail(message: str) -> NoReturn:
    click.echo(f"diag: error: {message}", err=True)
    sys.exit(2)


def _splits(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path:
            raise click.BadParameter(f"{value!r} is not NAME=PATH", param_hint="--split")
        if name.strip() in out:
            raise click.BadParameter(f"split {name.strip()!r} given twice", param_hint="--split")
        out[name.strip()] = path
    return out


def _shown_path(path: Path | None) -> str | None:
    """The config file as a path relative to the working directory when it is inside it."""
    if path is None:
        return None
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diag")
def cli() -> None:
    """diag: find the silent failures of a training run before you trust it."""


@cli.command()
@click.argument("checkpoint", required=False)
@click.option("--init", "init_path", metavar="PATH", help="The checkpoint saved before training.")
@click.option(
    "--logs",
    multiple=True,
    metavar="PATH",
    help="Training logs: a file, or a folder searched for known formats (repeatable).",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    metavar="NAME=PATH",
    help="A dataset split, e.g. train=data/train.npz (repeatable).",
)
@click.option("--label-column", metavar="COL", help="The label column of table splits.")
@click.option("--group-column", metavar="COL", help="The group column (patient, subject...).")
@click.option(
    "--model",
    "model_spec",
    metavar="FILE.py:FUNC|MODULE:FUNC",
    help="A factory returning the nn.Module (runs your code; loads the checkpoint into it).",
)
@click.option(
    "--batch", "batch_path", metavar="PATH", help="A torch file of tensors: inputs, targets."
)
@click.option(
    "--loss", "loss_spec", metavar="NAME|MODULE:FUNC", help="cross_entropy, mse, bce or a function."
)
@click.option("--train-metric", metavar="NAME", help="The series to use as the training loss.")
@click.option(
    "--val-metric", metavar="NAME", help="The series to use as the validation loss or metric."
)
@click.option(
    "--select", multiple=True, metavar="RULES", help="Only these rules or groups (comma list)."
)
@click.option(
    "--ignore", multiple=True, metavar="RULES", help="Skip these rules or groups (comma list)."
)
@click.option(
    "--extend-select", multiple=True, metavar="RULES", help="Add rules or groups to the selection."
)
@click.option("--baseline", metavar="PATH", help="Known findings: shown, but only new ones fail.")
@click.option(
    "--write-baseline", metavar="PATH", help="Record the current findings as the baseline."
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format (default text).")
@click.option("--output", "-o", metavar="PATH", help="Write the report here instead of stdout.")
@click.option("--html", "html_path", metavar="PATH", help="Also write the HTML audit report here.")
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    help="Exit 1 at or above this severity (default error).",
)
@click.option(
    "--config", "config_path", metavar="PATH", help="Config file (default: nearest pyproject.toml)."
)
@click.option(
    "--isolated", is_flag=True, help="Ignore every config file: only the flags given count."
)
@click.option(
    "--engine",
    type=click.Choice(("local", "ray")),
    help="Where the data rules run: this process (default) or a Ray cluster.",
)
@click.option(
    "--engine-address", metavar="ADDR", help="The Ray cluster (default: ray.init's discovery)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--verbose", "-v", is_flag=True, help="List every file read and every rule not run, and why."
)
def check(
    checkpoint: str | None,
    init_path: str | None,
    logs: tuple[str, ...],
    splits: tuple[str, ...],
    label_column: str | None,
    group_column: str | None,
    model_spec: str | None,
    batch_path: str | None,
    loss_spec: str | None,
    train_metric: str | None,
    val_metric: str | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    extend_select: tuple[str, ...],
    baseline: str | None,
    write_baseline: str | None,
    fmt: str | None,
    output: str | None,
    html_path: str | None,
    fail_on: str | None,
    config_path: str | None,
    isolated: bool,
    engine: str | None,
    engine_address: str | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Check what a training run left behind.

    CHECKPOINT is a checkpoint file, a saved model folder, or a whole run folder (Hugging
    Face Trainer output_dir, Lightning, numbered checkpoints, W&B): its checkpoints and logs
    are found and read in training order, and flags given explicitly override what is found.
    """
    from diag.api import CheckOptions, run_check

    try:
        from diag.config import Config, load_config

        if isolated and config_path:
            raise UsageError("--isolated ignores config files: it cannot go with --config")
        config = Config() if isolated else load_config(config_path)
        options = CheckOptions(
            checkpoint=checkpoint or config.get("checkpoint"),
            init=init_path or config.get("init"),
            logs=list(logs) or config.get("logs", []),
            splits=_splits(splits) or config.get("splits", {}),
            label_column=label_column or config.get("label-column"),
            group_column=group_column or config.get("group-column"),
            model=model_spec or config.get("model"),
            batch=batch_path or config.get("batch"),
            loss=loss_spec or config.get("loss"),
            train_metric=train_metric or config.get("train-metric"),
            val_metric=val_metric or config.get("val-metric"),
            select=_split(select) or config.get("select", []),
            ignore=_split(ignore) or config.get("ignore", []),
            extend_select=_split(extend_select) or config.get("extend-select", []),
            per_object_ignores=config.get("per-object-ignores", {}),
            rule_options=config.get("rules", {}),
            baseline=baseline or config.get("baseline"),
            write_baseline=write_baseline,
            config_path=_shown_path(config.source),
            fmt=fmt or config.get("format", "text"),
            output=output or config.get("output"),
            html=html_path or config.get("html"),
            fail_on=fail_on or config.get("fail-on", "error"),
            engine=engine or config.get("engine", "local"),
            engine_address=engine_address or config.get("engine-address"),
            quiet=quiet or not sys.stderr.isatty(),
            verbose=verbose,
        )
        code = run_check(options, echo=click.echo)
    except DiagError as exc:
        fail(str(exc))
    except MemoryError:
        fail("out of memory while reading the inputs")
    sys.exit(code)


@cli.command()
@click.argument("path")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    metavar="SECONDS",
    help="Seconds between polls (default 5).",
)
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop when nothing has changed for this long: the run has ended.",
)
@click.option(
    "--exit-on-finding", is_flag=True, help="Stop at the first finding at or above --fail-on."
)
@click.option("--init", "init_path", metavar="PATH", help="The checkpoint saved before training.")
@click.option(
    "--logs",
    multiple=True,
    metavar="PATH",
    help="Logs to read instead of those found (repeatable).",
)
@click.option("--train-metric", metavar="NAME", help="The series to use as the training loss.")
@click.option(
    "--val-metric", metavar="NAME", help="The series to use as the validation loss or metric."
)
@click.option(
    "--select", multiple=True, metavar="RULES", help="Only these rules or groups (comma list)."
)
@click.option(
    "--ignore", multiple=True, metavar="RULES", help="Skip these rules or groups (comma list)."
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="Format of the --output report (text)."
)
@click.option("--output", "-o", metavar="PATH", help="At the end, write the last report here.")
@click.option("--html", "html_path", metavar="PATH", help="At the end, write the HTML report here.")
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    help="Exit 1 at or above this severity (default error).",
)
@click.option(
    "--config", "config_path", metavar="PATH", help="Config file (default: nearest pyproject.toml)."
)
@click.option(
    "--isolated", is_flag=True, help="Ignore every config file: only the flags given count."
)
@click.option(
    "--verbose", "-v", is_flag=True, help="Say why a poll was not read (a file mid-write)."
)
def watch(
    path: str,
    interval: float,
    until_idle: float | None,
    exit_on_finding: bool,
    init_path: str | None,
    logs: tuple[str, ...],
    train_metric: str | None,
    val_metric: str | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    fmt: str | None,
    output: str | None,
    html_path: str | None,
    fail_on: str | None,
    config_path: str | None,
    isolated: bool,
    verbose: bool,
) -> None:
    """Follow a run another process is writing; print findings as they are found.

    PATH is a run folder (as for `diag check RUN_DIR`) or a log file (as for `diag check
    --logs FILE`). Every --interval seconds the files under PATH are compared with the last
    poll; when something changed the run is checked again and each new finding is printed
    once. A log or checkpoint caught mid-write is read at the next change. Ctrl-C,
    --until-idle or --exit-on-finding ends the watch with the summary and the exit code of
    `diag check`. Rule selection, thresholds and --fail-on come from [tool.diag] as for
    `diag check`; the inputs and report files only from the flags.
    """
    from diag.api import CheckOptions
    from diag.watch import WatchOptions
    from diag.watch import watch as run_watch

    try:
        from diag.config import Config, load_config

        if isolated and config_path:
            raise UsageError("--isolated ignores config files: it cannot go with --config")
        if fmt and not output:
            raise UsageError("--format names the --output report: give -o PATH as well")
        config = Config() if isolated else load_config(config_path)
        options = CheckOptions(
            init=init_path,
            logs=list(logs),
            train_metric=train_metric or config.get("train-metric"),
            val_metric=val_metric or config.get("val-metric"),
            select=_split(select) or config.get("select", []),
            ignore=_split(ignore) or config.get("ignore", []),
            extend_select=config.get("extend-select", []),
            per_object_ignores=config.get("per-object-ignores", {}),
            rule_options=config.get("rules", {}),
            baseline=config.get("baseline"),
            config_path=_shown_path(config.source),
            fmt=fmt or "text",
            output=output,
            html=html_path,
            fail_on=fail_on or config.get("fail-on", "error"),
        )
        watching = WatchOptions(
            path=path,
            interval=interval,
            until_idle=until_idle,
            exit_on_finding=exit_on_finding,
            verbose=verbose,
            color=sys.stderr.isatty(),
        )
        code = run_watch(watching, options, out=sys.stdout, err=sys.stderr)
    except DiagError as exc:
        fail(str(exc))
    except MemoryError:
        fail("out of memory while reading the inputs")
    sys.exit(code)


@cli.command()
@click.option(
    "--config", "config_path", metavar="PATH", help="Config file (default: nearest pyproject.toml)."
)
def config(config_path: str | None) -> None:
    """Print the configuration `diag check` would use, and where it comes from."""
    import json

    from diag.config import load_config

    try:
        loaded = load_config(config_path)
    except DiagError as exc:
        fail(str(exc))
    if loaded.source is None:
        click.echo("# no diag.toml or [tool.diag] in pyproject.toml found: defaults apply")
        return
    click.echo(f"# from {loaded.source}")
    for key, value in loaded.values.items():
        click.echo(f"{key} = {json.dumps(value)}")


@cli.command()
@click.argument("name", required=False)
def rules(name: str | None) -> None:
    """List the rule catalogue, or explain one rule."""
    from diag.registry import load_rules

    specs = load_rules()
    if name is None:
        width = max(len(s.name) for s in specs)
        group = None
        for spec in specs:
            if spec.group != group:
                group = spec.group
                click.echo(f"[{group}]")
            click.echo(f"  {spec.name:<{width}}  {spec.severity.label:<7}  {spec.summary}")
        click.echo("\n`diag rules NAME` explains one rule.")
        return
    by_name = {s.name: s for s in specs}
    if name not in by_name:
        fail(f"unknown rule {name!r} (see `diag rules`)")
    spec = by_name[name]
    click.echo(f"{spec.name} [{spec.group}] default severity: {spec.severity.label}")
    needs = ", ".join((*spec.needs, *(f"{u} (optional)" for u in spec.uses)))
    click.echo(f"inputs: {needs}")
    options = spec.options()
    if options:
        click.echo("options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    click.echo("")
    click.echo(spec.doc)


@cli.command()
@click.argument("directory", default="diag-demo", required=False)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def demo(directory: str, quiet: bool) -> None:
    """Train tiny real models on scikit-learn's digits, plant faults, and check them."""
    try:
        from diag.demo import run_demo

        code = run_demo(Path(directory), echo=_echo(quiet))
    except DiagError as exc:
        fail(str(exc))
    sys.exit(code)


def _echo(quiet: bool) -> Callable[..., Any]:
    return (lambda *a, **k: None) if quiet else click.echo


def main() -> None:
    try:
        code = cli.main(prog_name="diag", standalone_mode=False)
        sys.exit(code or 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}")
    except click.Abort:
        click.echo("diag: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("diag: interrupted", err=True)
        sys.exit(130)
    except DiagError as exc:  # pragma: no cover - commands catch their own
        fail(str(exc))
    except Exception as exc:
        if os.environ.get("DIAG_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (set DIAG_DEBUG=1 for a traceback)")


__all__ = ["UsageError", "cli", "main"]
