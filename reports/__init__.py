"""Reporters: pure functions from a Result (and, for HTML, the run's artifacts) to text."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from diag.model import Result

# Name -> module; each module exposes `render(result, run=None) -> str`. Imported lazily so
# that `diag --help` never pays for jinja2.
FORMATS = {
    "text": "diag.reports.text",
    "json": "diag.reports.json",
    "html": "diag.reports.html",
    "sarif": "diag.reports.sarif",
    "junit": "diag.reports.junit",
    "github": "diag.reports.github",
}

Renderer = Callable[..., str]


def renderer(name: str) -> Renderer:
    try:
        module = FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (choose from {', '.join(FORMATS)})") from None
    return import_module(module).render


def render(name: str, result: Result, run: Any = None, **options: Any) -> str:
    """`options` go to the reporters that take them (the text report's `verbose`)."""
    return renderer(name)(result, run, **options)
