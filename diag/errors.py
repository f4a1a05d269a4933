"""The typed errors that end a run with exit code 2 and one line on stderr."""

from __future__ import annotations


class DiagError(Exception):
    """Base class: anything diag reports as a one-line error."""


class InputError(DiagError):
    """An input file that cannot be read safely: names the file and the cause."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class UsageError(DiagError):
    """A wrong flag, option or configuration value."""
