"""`[tool.diag]` configuration from pyproject.toml (or a file given with --config)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.errors import UsageError

KEYS = (
    "checkpoint", "init", "logs", "train-metric", "val-metric", "splits", "label-column",
    "group-column", "model", "batch", "loss", "select", "extend-select", "ignore",
    "per-object-ignores", "rules", "baseline", "fail-on", "format", "output", "html",
    "engine", "engine-address",
)  # fmt: skip
PATH_KEYS = ("checkpoint", "init", "output", "html", "batch", "baseline")
FAIL_ON = ("info", "warning", "error", "never")


@dataclass(frozen=True)
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def find_pyproject(start: Path) -> Path | None:
    """The nearest diag.toml, or pyproject.toml with a [tool.diag] table, upwards."""
    for folder in (start, *start.parents):
        dedicated = folder / "diag.toml"
        if dedicated.is_file():
            return dedicated
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_tool_diag(candidate):
            return candidate
    return None


def _has_tool_diag(path: Path) -> bool:
    try:
        return "diag" in tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True  # let load_config report the broken file


def load_config(explicit: str | None = None, cwd: Path | None = None) -> Config:
    """The [tool.diag] table, validated; paths made relative to the file that set them."""
    path = Path(explicit) if explicit else find_pyproject(cwd or Path.cwd())
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: invalid TOML ({exc})") from None
    table = data.get("tool", {}).get("diag")
    if table is None:
        if path.name != "pyproject.toml":
            table = data  # a dedicated diag.toml may hold the keys at top level
        else:
            return Config(source=None)
    return Config(_validate(table, path), path)


def _validate(table: Any, path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.diag] must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise UsageError(
            f"{path}: unknown [tool.diag] key(s): {', '.join(unknown)} (known: {', '.join(KEYS)})"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("select", "ignore", "extend-select"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise UsageError(f"{path}: [tool.diag] {key} must be a list of rule or group names")
        elif key == "logs":
            if isinstance(value, str):
                value = [value]
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise UsageError(f"{path}: [tool.diag] logs must be a path or a list of paths")
            value = [str(path.parent / v) for v in value]
        elif key == "per-object-ignores":
            if not (
                isinstance(value, dict)
                and all(
                    isinstance(v, list) and all(isinstance(g, str) for g in v)
                    for v in value.values()
                )
            ):
                raise UsageError(
                    f"{path}: [tool.diag] per-object-ignores must map rule names to lists of globs"
                )
        elif key == "rules":
            if not (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())):
                raise UsageError(
                    f"{path}: [tool.diag.rules] must hold one table per rule, e.g. "
                    "[tool.diag.rules.dead-units] min_dead_fraction = 0.6"
                )
        elif key == "splits":
            if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                raise UsageError(f'{path}: [tool.diag] splits must be a table of NAME = "PATH"')
            value = {str(k): str(path.parent / v) for k, v in value.items()}
        elif not isinstance(value, str):
            raise UsageError(f"{path}: [tool.diag] {key} must be a string")
        if key == "fail-on" and value not in FAIL_ON:
            raise UsageError(f"{path}: [tool.diag] fail-on must be one of {', '.join(FAIL_ON)}")
        if key in PATH_KEYS:
            value = str(path.parent / value)
        values[key] = value
    return values
