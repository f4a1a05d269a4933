"""Fuzz the restricted unpickler and the conversion of what it builds to plain data."""

from __future__ import annotations

from _common import fuzz, load_diag

load_diag()

from diag.loaders.safe_pickle import (  # noqa: E402
    CodeInPickle,
    UnsupportedPickle,
    restricted_loads,
    to_plain,
)


def one_input(data: bytes) -> None:
    try:
        value = restricted_loads(data)
    except (CodeInPickle, UnsupportedPickle):
        return
    to_plain(value)
    repr(to_plain(value))


if __name__ == "__main__":
    fuzz(one_input)
