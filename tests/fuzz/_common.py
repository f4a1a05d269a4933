"""Plumbing shared by the atheris harnesses (`make fuzz`) and their pytest replay.

A harness is a module with `one_input(data: bytes) -> None` that feeds the bytes to one
parser, then drives what `diag check` would do with the result (rules, every report). The
only acceptable failure is the typed `DiagError` that the CLI turns into exit code 2; any
other exception, or a rule that crashed inside the engine, is a finding.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SCRATCH: Path | None = None


def scratch() -> Path:
    """An empty private folder for this input (in RAM when /dev/shm exists)."""
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _SCRATCH = Path(tempfile.mkdtemp(prefix="diag-fuzz-", dir=base))
    for entry in _SCRATCH.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return _SCRATCH


def scratch_file(name: str, data: bytes) -> Path:
    path = scratch() / name
    path.write_bytes(data)
    return path


def scratch_tree(files: dict[str, bytes]) -> Path:
    root = scratch()
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


class RuleCrashed(AssertionError):
    """A rule raised inside the engine on an input the loaders accepted."""


def check_and_render(**options: Any) -> None:
    """`diag check` in-process on the given inputs, then every report format."""
    from diag.api import CheckOptions, check
    from diag.reports import FORMATS, render

    result, run = check(CheckOptions(quiet=True, **options))
    if result.errors:
        raise RuleCrashed("; ".join(f"{e.rule}: {e.message}" for e in result.errors))
    for fmt in FORMATS:
        render(fmt, result, run)


def load_diag() -> None:
    """Import every diag module now, instrumented when a harness runs under atheris.

    diag imports lazily (reports, rules, loaders on first use); a module imported during
    fuzzing would escape instrumentation, so all of them are imported up front.
    """
    harness = Path(sys.argv[0]).name.startswith("fuzz_")
    try:
        import atheris
    except ImportError:
        atheris = None
    guard = (
        atheris.instrument_imports(include=["diag"])
        if atheris is not None and harness
        else contextlib.nullcontext()
    )
    with guard:
        import diag
        from diag.registry import load_rules

        for module in pkgutil.walk_packages(diag.__path__, "diag."):
            if module.name not in ("diag.__main__",):
                importlib.import_module(module.name)
        load_rules()
        from diag.reports import FORMATS

        for name in FORMATS.values():
            importlib.import_module(name)


def fuzz(one_input: Callable[[bytes], None]) -> None:
    """Run `one_input` under libFuzzer; argv takes libFuzzer's flags and corpus folders."""
    from diag.errors import DiagError

    def target(data: bytes) -> None:
        with contextlib.suppress(DiagError):
            one_input(data)

    import atheris

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
