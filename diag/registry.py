"""Rule metadata and discovery.

A rule is a plain function marked with `@rule(...)`; the marker only attaches a `RuleSpec`
to the function. The registry is built on demand from the `diag.rules` entry point group,
the same door a third-party plugin uses, so nothing global is created at import time.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from diag.model import Finding, Severity

ENTRY_POINT_GROUP = "diag.rules"
# Used only when the distribution metadata is missing (running from an uninstalled tree).
BUILTIN_RULE_MODULES = (
    "diag.rules.params",
    "diag.rules.curves",
    "diag.rules.data",
    "diag.rules.grads",
    "diag.rules.adapters",
    "diag.rules.live",
    "diag.rules.contamination",
)
DOC_SECTIONS = ("What it does", "Why is this bad?", "How to fix")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

RuleFunc = Callable[..., Iterable[Finding]]


@dataclass(frozen=True)
class RuleSpec:
    name: str
    group: str
    severity: Severity
    needs: tuple[str, ...]
    uses: tuple[str, ...]
    func: RuleFunc = field(compare=False, repr=False)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.split("\n", 1)[0].strip()

    def sections(self) -> dict[str, str]:
        """The doc's `## Heading` sections, keyed by heading."""
        out: dict[str, str] = {}
        current = None
        for line in self.doc.splitlines():
            if line.startswith("## "):
                current = line[3:].strip()
                out[current] = ""
            elif current is not None:
                out[current] += line + "\n"
        return {k: v.strip() for k, v in out.items()}

    def options(self) -> dict[str, Any]:
        """Keyword-only parameters with defaults: the rule's tunable thresholds."""
        sig = inspect.signature(self.func)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }


def rule(
    *,
    name: str,
    group: str,
    severity: Severity,
    needs: tuple[str, ...],
    uses: tuple[str, ...] = (),
) -> Callable[[RuleFunc], RuleFunc]:
    """Mark a function as a diag rule. `needs` must all be present; `uses` are optional."""
    if not _NAME.match(name):
        raise ValueError(f"rule name {name!r} is not kebab-case")

    def mark(func: RuleFunc) -> RuleFunc:
        func.__diag_rule__ = RuleSpec(name, group, severity, needs, uses, func)  # type: ignore[attr-defined]
        return func

    return mark


def specs_in(module: ModuleType) -> Iterator[RuleSpec]:
    for value in vars(module).values():
        spec = getattr(value, "__diag_rule__", None)
        if isinstance(spec, RuleSpec):
            yield spec


def load_rules() -> list[RuleSpec]:
    """Every registered rule, built-in and plugin, in catalogue order (group, then name)."""
    modules = [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    if not modules:
        modules = [import_module(m) for m in BUILTIN_RULE_MODULES]
    found: dict[str, RuleSpec] = {}
    for module in modules:
        for spec in specs_in(module):
            if spec.name in found and found[spec.name].func is not spec.func:
                raise ValueError(f"two rules are named {spec.name!r}")
            found[spec.name] = spec
    return sorted(found.values(), key=lambda s: (s.group, s.name))


def select_rules(
    specs: list[RuleSpec],
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    extend: Iterable[str] = (),
) -> list[RuleSpec]:
    """Apply --select/--ignore/extend-select (rule or group names), as ruff does: `select`
    replaces the default (every rule), `extend` adds to it. Unknown names raise ValueError."""
    names = {s.name for s in specs}
    groups = {s.group for s in specs}
    select, ignore, extend = list(select), list(ignore), list(extend)
    unknown = [n for n in [*select, *ignore, *extend] if n not in names and n not in groups]
    if unknown:
        raise ValueError(
            f"unknown rule or group: {', '.join(unknown)} (see `diag rules` for the catalogue)"
        )

    def matches(spec: RuleSpec, wanted: list[str]) -> bool:
        return spec.name in wanted or spec.group in wanted

    chosen = [s for s in specs if not select or matches(s, select) or matches(s, extend)]
    return [s for s in chosen if not matches(s, ignore)]
