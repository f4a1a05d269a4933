"""When a check that repeats on a growing run (`diag watch`, the live monitor) tells a finding.

A fact cannot be undone by what comes next: a NaN was logged, a tensor holds an
infinity, a parameter got no gradient. A judgement about the run's shape can: a loss
flat for the first 8 of 20 steps is a plateau by `loss-not-decreasing`'s thresholds at
step 20 and nothing at step 40. Facts are told the moment a check sees them; a judgement
once a check on enough more data still gives it. What a run ends with is the last
check's Result, as `diag check` would report it; a judgement still waiting then is told
at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from diag.model import Finding

FACT_RULES = frozenset(
    {"loss-nonfinite", "nonfinite-parameter", "exploding-gradients", "no-gradient",
     "constant-parameter", "symmetric-units"}
)  # fmt: skip

Key = tuple[str, str, str]


def key_of(finding: Finding) -> Key:
    return (finding.rule, finding.location.artifact, finding.location.object)


class Teller:
    """Findings told once each: facts at once, judgements once confirmed.

    `grown(first, now)` says whether the run has progressed enough since a judgement was
    first seen (at progress `first`) for a check at `now` to confirm it; `key` names a
    finding across checks.
    """

    def __init__(
        self, grown: Callable[[Any, Any], bool], key: Callable[[Finding], Any] = key_of
    ) -> None:
        self.grown, self.key = grown, key
        self.told: dict[Any, Finding] = {}
        self.pending: dict[Any, tuple[Any, Finding]] = {}

    def take(self, findings: Iterable[Finding], ran: set[str], progress: Any) -> list[Finding]:
        """This check's findings (of the rules in `ran`); returns the ones to tell now."""
        new, found = [], set()
        for finding in findings:
            key = self.key(finding)
            found.add(key)
            waiting = self.pending.get(key)
            confirmed = waiting is not None and self.grown(waiting[0], progress)
            if key in self.told or finding.rule in FACT_RULES or confirmed:
                if key not in self.told:
                    new.append(finding)
                self.told[key] = finding
                self.pending.pop(key, None)
            elif waiting is None:
                self.pending[key] = (progress, finding)
        # A judgement its rule no longer gives is dropped; one whose rule did not run
        # this time (an evaluation runs only the curve rules) keeps waiting.
        self.pending = {k: v for k, v in self.pending.items() if k in found or k[0] not in ran}
        return new

    def finish(self, findings: Iterable[Finding]) -> list[Finding]:
        """The run ended: its last check's findings not told yet are told now."""
        new = [f for f in findings if self.key(f) not in self.told]
        for finding in new:
            self.told[self.key(finding)] = finding
        self.pending = {}
        return new
