"""Give freed heap memory back to the operating system between the phases of a check."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    try:
        # The running process's own symbols: no library file is opened.
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def give_back() -> None:
    """glibc keeps freed blocks for reuse: after the tensor pass and the leakage analysis
    of a big run that was 370 MB of RSS nothing would use again, added to the next phase's
    peak. `malloc_trim(0)` returns it."""
    trim = _trim()
    if trim is not None:
        trim(0)
