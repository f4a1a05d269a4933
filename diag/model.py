"""The data that crosses seams: severities, locations, findings and the Result."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (use info, warning or error)") from None


@dataclass(frozen=True)
class Location:
    """Where a finding is: the artifact (file) and the object inside it."""

    artifact: str
    object: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "object": self.object, **dict(self.details)}


@dataclass(frozen=True)
class Finding:
    """One problem found by one rule. `evidence` holds numbers, never preformatted text.

    Rules leave `rule` and `group` empty and may leave `severity` unset; the engine fills
    them from the rule's registration so a rule cannot misname itself.
    """

    message: str
    location: Location
    evidence: Mapping[str, Any] = field(default_factory=dict)
    severity: Severity | None = None
    rule: str = ""
    group: str = ""
    known: bool = False  # in the --baseline: shown, but does not fail the check

    @property
    def fingerprint(self) -> str:
        # Rule + artifact file name + object: survives re-runs, moved folders and new values.
        artifact = self.location.artifact.replace("\\", "/").rsplit("/", 1)[-1]
        key = f"{self.rule}\0{artifact}\0{self.location.object}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Skipped:
    rule: str
    reason: str
    flag: str = ""  # what the user would add to run it: --logs, --split, --model/--batch


@dataclass(frozen=True)
class RuleError:
    """A rule that crashed: recorded, and the run goes on."""

    rule: str
    message: str


@dataclass(frozen=True)
class Result:
    findings: tuple[Finding, ...]
    skipped: tuple[Skipped, ...] = ()
    errors: tuple[RuleError, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        counts = {s.label: 0 for s in sorted(Severity, reverse=True)}
        for f in self.findings:
            counts[f.severity.label] += 1  # type: ignore[union-attr]
        return counts

    def worst(self, include_known: bool = True) -> Severity | None:
        return max(
            (f.severity for f in self.findings if f.severity and (include_known or not f.known)),
            default=None,
        )
