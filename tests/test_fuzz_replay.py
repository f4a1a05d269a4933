"""Every fuzz harness, replayed without atheris on its seeds and on the inputs fuzzing found.

`make fuzz` runs the harnesses under libFuzzer; each input that once crashed one is kept in
tests/fuzz/regressions/<harness>/ so the fix stays fixed. Seeds must get past the parsers:
a harness whose seeds are all refused would fuzz nothing but the error paths.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import pytest

from diag.errors import DiagError

FUZZ = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import seeds as seed_builders  # noqa: E402

HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def test_every_harness_has_seeds() -> None:
    assert set(HARNESSES) == set(seed_builders.BUILDERS)


@pytest.fixture(scope="module", params=HARNESSES)
def harness(request):
    return request.param, importlib.import_module(f"fuzz_{request.param}")


def test_seeds_are_accepted(harness) -> None:
    name, module = harness
    for seed, data in seed_builders.seeds(name).items():
        try:
            module.one_input(data)
        except DiagError as exc:
            pytest.fail(f"{name} seed {seed} refused: {exc}")


def test_regressions_raise_only_the_input_error(harness) -> None:
    name, module = harness
    for path in sorted((FUZZ / "regressions" / name).glob("*")):
        with contextlib.suppress(DiagError):
            module.one_input(path.read_bytes())
