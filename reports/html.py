"""The HTML report: one self-contained file to read a run at a glance.

Everything the page shows is prepared here as plain data (numbers already formatted,
colours already computed), so the template only lays it out and jinja2's autoescaping
covers every string that came from the inputs. The page has no scripts and loads nothing:
a Content-Security-Policy pins the one inline stylesheet by its hash. The findings filters
are CSS only (checkboxes read by `:has()` selectors), so they need no script either.

Findings and the pictures that support them link both ways: every picture (curve, leaked
pairs, gradient row, dead-unit bar, kernel grid, layer row) registers under a key it shares
with the findings about it, and `Evidence` turns shared keys into links.
"""

from __future__ import annotations

import base64
import hashlib
import math
import numbers
import sys
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diag import __version__
from diag.model import Finding, Result, Severity

if TYPE_CHECKING:
    from jinja2 import Template

    from diag.registry import RuleSpec
    from diag.run import Run
    from diag.stats import TensorStats, UpdateStats

TEMPLATES = Path(__file__).with_name("templates")
TEMPLATE = "report.html.j2"
# Bounds that keep the file small enough to open in a browser on the largest models.
MAX_LAYER_ROWS = 2000
MAX_FILTERS = 64
MAX_CHANNELS = 4
MAX_LISTED_ITEMS = 16
GRID_WIDTH = 560  # px a kernel grid may take before it wraps to the next row
FILTER_GAP = 4
CHANNEL_GAP = 1
# Diverging map end points (ColorBrewer RdBu): negative -> blue, zero -> white, positive -> red.
BLUE = np.array([33.0, 102.0, 172.0])
RED = np.array([178.0, 24.0, 43.0])
SEVERITY_TITLES = {"error": "Errors", "warning": "Warnings", "info": "Info"}
# Rule groups get numbered filter slots so the stylesheet, which must be identical on every
# page for its CSP hash to be computed once from the template, never contains a group name.
# Groups past the last slot share it (labelled "other groups").
GROUP_SLOTS = 12


@dataclass(frozen=True)
class Link:
    href: str  # "#element-id"
    label: str


@dataclass(frozen=True)
class FindingView:
    anchor: str
    severity: str
    message: str
    artifact: str
    object: str
    evidence: tuple[tuple[str, str], ...]
    links: tuple[Link, ...]  # to the pictures that show this finding
    known: bool  # in the --baseline: shown, but does not fail the check


@dataclass(frozen=True)
class RuleDoc:
    summary: str
    # (heading, paragraphs); a paragraph is (text, is_code) runs so `code` renders as <code>.
    sections: tuple[tuple[str, tuple[tuple[tuple[str, bool], ...], ...]], ...]


@dataclass(frozen=True)
class RuleBlock:
    rule: str
    group: str
    slot: int  # the group's filter slot
    doc: RuleDoc | None
    findings: tuple[FindingView, ...]


@dataclass(frozen=True)
class SeverityGroup:
    severity: str
    title: str
    count: int
    rules: tuple[RuleBlock, ...]


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    shape: str
    mean: str
    std: str
    expected: str
    update: str
    zeros: str
    severity: str  # worst severity of the findings on this tensor, "" when none
    findings: tuple[Link, ...]
    id: str  # element id, "" when no finding points here


@dataclass(frozen=True)
class LayerTable:
    rows: tuple[LayerRow, ...]
    total: int
    has_updates: bool


@dataclass(frozen=True)
class KernelGrid:
    caption: str
    width: int
    height: int
    pixel: int
    rects: tuple[tuple[int, int, str], ...]  # (x, y, fill)


@dataclass(frozen=True)
class KernelFigure:
    name: str
    shape: str
    mode: str  # "rgb" or "diverging"
    note: str
    grids: tuple[KernelGrid, ...]
    findings: tuple[Link, ...]


@dataclass(frozen=True)
class Figure:
    """A picture drawn by a sub-view (curves, leaks), with its element id and back links."""

    id: str
    view: Any
    findings: tuple[Link, ...]


@dataclass(frozen=True)
class ProbeLinks:
    """Ids and back links for the probe's rows, index-aligned with `ProbeView`'s tuples."""

    gradients: tuple[tuple[str, tuple[Link, ...]], ...]
    dead: tuple[tuple[str, tuple[Link, ...]], ...]


@dataclass(frozen=True)
class GroupFilter:
    slot: int
    label: str
    count: int


class Evidence:
    """Matches pictures to findings by shared keys and records the links both ways.

    Built once per page: each picture is registered in page order, which is also the order
    its link appears under a finding.
    """

    def __init__(self, findings: Iterable[Finding], anchors: dict[int, str]) -> None:
        self.anchors = anchors
        self.by_key: dict[Hashable, list[Finding]] = {}
        self.links: dict[int, list[Link]] = {}
        for f in findings:
            for key in _evidence_keys(f, anchors[id(f)]):
                self.by_key.setdefault(key, []).append(f)

    def picture(self, key: Hashable, element_id: str, label: str) -> tuple[Link, ...]:
        """Link the findings under `key` to the element; return the links back to them."""
        found = self.by_key.get(key, [])
        for f in found:
            self.links.setdefault(id(f), []).append(Link(f"#{element_id}", label))
        return tuple(Link(f"#{self.anchors[id(f)]}", f.rule) for f in found)

    def of(self, finding: Finding) -> tuple[Link, ...]:
        return tuple(self.links.get(id(finding), ()))


def _evidence_keys(f: Finding, anchor: str) -> list[Hashable]:
    # A tensor's own pictures (kernels, layer row) match by name whatever the rule group: a
    # stuck conv1 (params) and a disconnected conv1 (grads) both show in its kernels. The
    # probe's rows are what the probe measured, so only its rules' findings point there.
    keys: list[Hashable] = [("tensor", f.location.object), ("finding", anchor)]
    if f.group == "grads":
        keys.append(("gradient", f.location.object))
    if f.rule == "dead-units":  # it names the weight of the layer whose units never fire
        keys.append(("dead", f.location.object))
    if f.group == "curves":  # as plots.curve_figures matches findings to a log's figure
        keys.append(("log", f.location.artifact, f.location.details.get("run", "")))
    return keys


def render(result: Result, run: Run | None = None) -> str:
    """The report as one HTML document with no external resources."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # the template is .j2, so select_autoescape() would leave it raw
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template(TEMPLATE)
    static = {"group_slots": GROUP_SLOTS}
    style_hash = csp_hash(_block_text(template, "style", static))
    return template.render(style_hash=style_hash, **static, **_context(result, run))


def csp_hash(text: str) -> str:
    """The base64 sha256 a CSP source expression uses to allow exactly this inline text."""
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _block_text(template: Template, name: str, static: Mapping[str, Any]) -> str:
    # The stylesheet lives in the template; rendering its block alone, with the same
    # constants the page gets and nothing from the result, yields the exact bytes the page
    # inlines, so the CSP hash cannot drift from the CSS.
    return "".join(template.blocks[name](template.new_context(dict(static))))


def _context(result: Result, run: Run | None) -> dict[str, Any]:
    counts = result.summary()
    anchors = _anchors(result.findings)
    evidence = Evidence(result.findings, anchors)
    # Pictures first, in page order: registering them is what gives findings their links.
    leaks = _leak_views(result, run, anchors, evidence)
    contamination = _contamination_views(result, run, anchors, evidence)
    probe = _probe_view(run)
    pictures = {
        "leaks": leaks,
        "contamination": contamination,
        "probe": probe,
        "probe_links": _probe_links(probe, evidence),
        "curves": _curve_figures(result, run, evidence),
        "kernels": _kernel_figure(run, evidence),
        "layers": _layer_table(result.findings, run, evidence),
        "trajectories": _trajectories(run, result.findings),
    }
    slots = _group_slots(result.findings)
    return {
        "version": __version__,
        "versions": _versions(),
        "generated": _text(result.metadata.get("generated")),
        "rules_run": result.metadata.get("rules_run"),
        "inputs": [_input_view(i) for i in result.metadata.get("inputs", [])],
        "counts": counts,
        "status": _status(counts, len(result.errors), result.metadata.get("baseline")),
        "groups": _severity_groups(result.findings, anchors, evidence, slots, run),
        "group_filters": _group_filters(result.findings, slots),
        "skipped": result.skipped,
        "run_folder": _run_folder(result.metadata.get("run")),
        "errors": result.errors,
        **pictures,
    }


def _trajectories(run: Run | None, findings: Iterable[Finding]) -> list[Any]:
    if run is None or getattr(run, "trajectories", None) is None:
        return []
    from diag.reports.trajectories import trajectory_figures

    return trajectory_figures(run, findings)


def _run_folder(run: Any) -> dict[str, Any] | None:
    """What a run folder held, every value as text for the template."""
    if not isinstance(run, Mapping):
        return None
    checkpoints = [
        {k: _text(c.get(k)) for k in ("label", "step", "path")}
        for c in run.get("checkpoints", [])
        if isinstance(c, Mapping)
    ]
    files = [
        {k: _text(f.get(k)) for k in ("path", "role", "note")}
        for f in run.get("files", [])
        if isinstance(f, Mapping)
    ]
    reference = _text(run.get("reference"))
    if reference and not run.get("reference_is_init"):
        reference += " (the earliest checkpoint: no --init was given)"
    return {
        "path": _text(run.get("path")),
        "layout": _text(run.get("layout")),
        "reference": reference,
        "logs": [_text(p) for p in run.get("logs", [])],
        "checkpoints": checkpoints,
        "files": files,
    }


def _versions() -> list[tuple[str, str]]:
    """What produced the report. torch's version is read from its installed metadata, so
    rendering a report never imports torch."""
    from importlib import metadata

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return [("diag", __version__), ("Python", sys.version.split()[0]), ("torch", torch)]


def _probe_view(run: Run | None) -> Any:
    if run is None or getattr(run, "probe", None) is None:
        return None
    from diag.reports.probe_view import probe_view

    return probe_view(run)


def _probe_links(probe: Any, evidence: Evidence) -> ProbeLinks:
    if probe is None:
        return ProbeLinks((), ())
    gradients = tuple(
        _row_links(evidence, ("gradient", row.name), f"gradient-{i}", "gradient check")
        for i, row in enumerate(probe.gradients, 1)
    )
    dead = tuple(
        _row_links(evidence, ("dead", f"{bar.name}.weight"), f"dead-{i}", "dead units")
        for i, bar in enumerate(probe.dead, 1)
    )
    return ProbeLinks(gradients, dead)


def _row_links(
    evidence: Evidence, key: Hashable, element: str, label: str
) -> tuple[str, tuple[Link, ...]]:
    return element, evidence.picture(key, element, label)


def _leak_views(
    result: Result, run: Run | None, anchors: dict[int, str], evidence: Evidence
) -> list[Figure]:
    if run is None or not getattr(run, "splits", None):
        return []
    from diag.reports.leaks import leak_views

    views = leak_views(result.findings, run.splits, anchors)
    return [
        Figure(f"leak-{i}", v, evidence.picture(("finding", v.anchor), f"leak-{i}", "leaked pairs"))
        for i, v in enumerate(views, 1)
    ]


def _contamination_views(
    result: Result, run: Run | None, anchors: dict[int, str], evidence: Evidence
) -> list[Figure]:
    if run is None or not getattr(run, "splits", None):
        return []
    from diag.reports.contamination import contamination_views

    views = contamination_views(result.findings, run.splits, anchors)
    return [
        Figure(
            f"shared-{i}",
            v,
            evidence.picture(("finding", v.anchor), f"shared-{i}", "shared text"),
        )
        for i, v in enumerate(views, 1)
    ]


def _curve_figures(result: Result, run: Run | None, evidence: Evidence) -> list[Figure]:
    if run is None or not getattr(run, "logs", None):
        return []
    from diag.reports.plots import MAX_FIGURES, curve_figures

    figures: list[Figure] = []
    for log in run.logs:
        # One log at a time, so each figure is known to belong to this log and run.
        for view in curve_figures([log], result.findings):
            element = f"curve-{len(figures) + 1}"
            key = ("log", str(log.source), log.run.run)
            figures.append(Figure(element, view, evidence.picture(key, element, "training curve")))
        if len(figures) >= MAX_FIGURES:
            break
    return figures


# ---------------------------------------------------------------- formatting


def format_value(value: Any) -> str:
    """Evidence as text: 4 significant digits for floats, short lists, never a repr dump."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _num(float(value))
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        pairs = [f"{k}: {format_value(v)}" for k, v in value.items()]
        return _joined(pairs, len(value))
    if isinstance(value, list | tuple | set | frozenset):
        items = [format_value(v) for v in list(value)[:MAX_LISTED_ITEMS]]
        return _joined(items, len(value))
    return _text(value)


def _evidence_value(f: Finding, key: str, value: Any, run: Run | None) -> str:
    if key == "pairs" and isinstance(value, list | tuple):
        return pairs_text(value, f.location.details.get("splits"), run)
    if key == "documents" and f.rule == "eval-contamination" and isinstance(value, list):
        from diag.reports.contamination import documents_text

        return documents_text(value, f.location.details.get("splits"), run)
    return format_value(value)


def pairs_text(pairs: list | tuple, names: Any, run: Run | None) -> str:
    """Pairs of samples as a person writes them, one per line: `train #10 = test #3` for
    copies, `train #10 ~ val #1 (0.013)` for near copies with their distance."""
    if not isinstance(names, list | tuple) or not names:
        return format_value(pairs)
    a, b = str(names[0]), str(names[-1])
    splits = getattr(run, "splits", None) or {}

    def sample(name: str, index: Any) -> str:
        split = splits.get(name)
        ok = isinstance(index, numbers.Integral) and split is not None and 0 <= index < len(split)
        return split.sample_id(int(index)) if ok else f"#{format_value(index)}"

    lines = []
    for pair in list(pairs)[:MAX_LISTED_ITEMS]:
        if not isinstance(pair, list | tuple) or len(pair) < 2:
            return format_value(pairs)
        near = len(pair) > 2
        text = f"{a} {sample(a, pair[0])} {'~' if near else '='} {b} {sample(b, pair[1])}"
        lines.append(f"{text} ({format_value(pair[2])})" if near else text)
    if len(pairs) > len(lines):
        lines.append(f"… ({len(pairs) - len(lines)} more)")
    return "\n".join(lines)


def _joined(items: list[str], total: int) -> str:
    shown = items[:MAX_LISTED_ITEMS]
    more = f", … ({total - len(shown)} more)" if total > len(shown) else ""
    return ", ".join(shown) + more


def _num(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _shape(shape: Iterable[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


# ---------------------------------------------------------------- header and verdict


INPUT_COLUMNS = ("role", "name", "path", "format", "kind", "bytes", "samples", "fingerprint")


def _input_view(item: Any) -> dict[str, str]:
    if not isinstance(item, Mapping):
        item = {"path": item}
    extra = [f"{k}: {format_value(v)}" for k, v in item.items() if k not in INPUT_COLUMNS]
    role = " ".join(_text(item.get(k)) for k in ("role", "name") if item.get(k) is not None)
    size = []
    if isinstance(item.get("bytes"), numbers.Integral):
        size.append(_bytes(int(item["bytes"])))
    if item.get("samples") is not None:
        size.append(f"{format_value(item['samples'])} samples")
    return {
        "role": role,
        "path": _text(item.get("path")),
        "format": _text(item.get("format") or item.get("kind")),
        "size": ", ".join(size),
        "fingerprint": _text(item.get("fingerprint")),
        "extra": "; ".join(extra),
    }


def _bytes(n: int) -> str:
    # Exact bytes too: two files that differ by a few bytes should not read the same.
    exact = f"{n:,} bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({exact})"
    return exact


def _status(counts: Mapping[str, int], crashed: int, baseline: Any = None) -> dict[str, str]:
    if counts.get("error"):
        key, label = "fail", "Fail"
    elif counts.get("warning"):
        key, label = "warn", "Warnings"
    else:
        key, label = "pass", "Pass"
    parts = [f"{n} {name}{'s' if n != 1 and name != 'info' else ''}" for name, n in counts.items()]
    text = ", ".join(parts)
    if isinstance(baseline, Mapping) and "known" in baseline:
        text += f"; {baseline['known']} known from the baseline, {baseline.get('new', 0)} new"
    if crashed:
        # A clean verdict is only as good as the rules that ran: say so next to it.
        text += f"; {crashed} rule{'s' if crashed != 1 else ''} crashed (see Rule errors)"
    return {"key": key, "label": label, "text": text}


# ---------------------------------------------------------------- findings


def _anchors(findings: Iterable[Finding]) -> dict[int, str]:
    # Keyed by identity: two findings may be equal but are still two entries on the page.
    return {id(f): f"finding-{i}" for i, f in enumerate(findings, 1)}


def _group_slots(findings: Iterable[Finding]) -> dict[str, int]:
    groups = sorted({f.group for f in findings})
    return {g: min(i, GROUP_SLOTS) for i, g in enumerate(groups, 1)}


def _group_filters(findings: tuple[Finding, ...], slots: dict[str, int]) -> list[GroupFilter]:
    out: dict[int, GroupFilter] = {}
    for group, slot in slots.items():
        count = sum(1 for f in findings if f.group == group)
        if slot in out:  # past the last slot: merged
            count += out[slot].count
            group = "other groups"
        out[slot] = GroupFilter(slot, group or "no group", count)
    return list(out.values())


def _severity_groups(
    findings: tuple[Finding, ...],
    anchors: dict[int, str],
    evidence: Evidence,
    slots: dict[str, int],
    run: Run | None = None,
) -> list[SeverityGroup]:
    docs = _rule_docs()
    groups = []
    for severity in sorted(Severity, reverse=True):
        found = [f for f in findings if f.severity == severity]
        if not found:
            continue
        by_rule: dict[str, list[Finding]] = {}
        for f in found:
            by_rule.setdefault(f.rule, []).append(f)
        blocks = tuple(
            RuleBlock(
                rule,
                fs[0].group,
                slots[fs[0].group],
                docs.get(rule),
                tuple(_finding_view(f, anchors, evidence, run) for f in fs),
            )
            for rule, fs in by_rule.items()
        )
        title = SEVERITY_TITLES[severity.label]
        groups.append(SeverityGroup(severity.label, title, len(found), blocks))
    return groups


def _finding_view(
    f: Finding, anchors: dict[int, str], evidence: Evidence, run: Run | None = None
) -> FindingView:
    rows = [(str(k), _evidence_value(f, k, v, run)) for k, v in f.evidence.items()]
    rows += [(f"location.{k}", format_value(v)) for k, v in f.location.details.items()]
    return FindingView(
        anchor=anchors[id(f)],
        severity=f.severity.label if f.severity else "info",
        message=f.message,
        artifact=f.location.artifact,
        object=f.location.object,
        evidence=tuple(rows),
        links=evidence.of(f),
        known=f.known,
    )


def _rule_docs() -> dict[str, RuleDoc]:
    from diag.registry import load_rules

    try:
        specs = load_rules()
    except Exception:  # a broken plugin must not cost the user the whole report
        return {}
    return {s.name: _rule_doc(s) for s in specs}


def _rule_doc(spec: RuleSpec) -> RuleDoc:
    sections = tuple(
        (heading, tuple(_paragraphs(body))) for heading, body in spec.sections().items()
    )
    return RuleDoc(spec.summary, sections)


def _paragraphs(text: str) -> Iterable[tuple[tuple[str, bool], ...]]:
    """Docstring prose as paragraphs of (text, is_code) runs; wrapped lines are rejoined."""
    for block in text.split("\n\n"):
        joined, in_list = "", False
        for raw in block.splitlines():
            line = raw.strip()
            if not line:
                continue
            bullet = line.startswith(("- ", "* "))
            # An unindented line after a bullet ends the list: it starts a line of its own.
            leaves_list = in_list and not raw[:1].isspace()
            if joined:
                joined += "\n" if bullet or leaves_list else " "
            joined += line
            in_list = bullet or (in_list and not leaves_list)
        if not joined:
            continue
        parts = joined.split("`")
        yield tuple((part, i % 2 == 1) for i, part in enumerate(parts) if part)


# ---------------------------------------------------------------- per-layer table


def _layer_table(
    findings: tuple[Finding, ...], run: Run | None, evidence: Evidence
) -> LayerTable | None:
    if run is None or run.checkpoint is None or not run.checkpoint.stats:
        return None
    stats = run.checkpoint.stats
    flagged = _findings_by_object(findings)
    updates = run.updates or {}
    rows = tuple(
        _layer_row(s, flagged.get(name, []), updates.get(name), f"tensor-{i}", evidence)
        for i, (name, s) in enumerate(list(stats.items())[:MAX_LAYER_ROWS], 1)
    )
    return LayerTable(rows, len(stats), bool(updates))


def _layer_row(
    s: TensorStats,
    on_it: list[Finding],
    update: UpdateStats | None,
    element: str,
    evidence: Evidence,
) -> LayerRow:
    worst = max((f.severity for f in on_it if f.severity), default=None)
    links = evidence.picture(("tensor", s.name), element, "layer table") if on_it else ()
    return LayerRow(
        name=s.name,
        kind=s.kind,
        shape=_shape(s.shape),
        mean=_num(s.mean),
        std=_num(s.std),
        expected=_expected(s),
        update=_num(update.ratio) if update is not None else "",
        zeros=_percent(s.zero_fraction),
        severity=worst.label if worst else "",
        findings=links,
        id=element if links else "",
    )


def _findings_by_object(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.location.object, []).append(f)
    return out


def _expected(s: TensorStats) -> str:
    band = s.expected_std_range()
    return "" if band is None else f"{_num(band[0])} – {_num(band[1])}"


def _percent(fraction: float) -> str:
    return "0" if fraction == 0 else f"{fraction * 100:.3g}%"


# ---------------------------------------------------------------- kernel pictures


def _kernel_figure(run: Run | None, evidence: Evidence) -> KernelFigure | None:
    if run is None or run.checkpoint is None or not run.checkpoint.stats:
        return None
    from diag.rules.params import first_layer_convs

    convs = first_layer_convs(run.checkpoint.stats)
    if not convs or convs[0].kernels is None:
        return None
    layer = convs[0]
    kernels: np.ndarray = layer.kernels  # type: ignore[assignment]
    grids = []
    before = run.init.stats.get(layer.name) if run.init is not None else None
    if before is not None and before.kernels is not None and before.kernels.shape == kernels.shape:
        grids.append(kernel_grid(before.kernels, "at init"))
    grids.append(kernel_grid(kernels, "trained" if grids else "final weights"))
    out, cin = kernels.shape[:2]
    return KernelFigure(
        name=layer.name,
        shape=_shape(layer.shape),
        mode="rgb" if cin == 3 else "diverging",
        note=_kernel_note(out, cin),
        grids=tuple(grids),
        findings=evidence.picture(("tensor", layer.name), "kernels", "first-layer kernels"),
    )


def _kernel_note(out: int, cin: int) -> str:
    notes = []
    if out > MAX_FILTERS:
        notes.append(f"first {MAX_FILTERS} of {out} filters")
    if cin != 3 and cin > MAX_CHANNELS:
        notes.append(f"first {MAX_CHANNELS} of {cin} input channels")
    return "showing " + " and ".join(notes) if notes else ""


def kernel_grid(kernels: np.ndarray, caption: str) -> KernelGrid:
    """Kernels (out, in, kh, kw) as SVG squares: RGB for 3 input channels, else diverging."""
    k = np.nan_to_num(np.asarray(kernels, dtype=np.float64)[:MAX_FILTERS], posinf=0, neginf=0)
    out, cin, kh, kw = k.shape
    if cin == 3:
        tiles = [[_rgb_colors(f)] for f in k]
    else:
        tiles = [[_diverging_colors(f[c]) for c in range(min(cin, MAX_CHANNELS))] for f in k]
    pixel = max(2, min(10, 48 // max(kh, kw)))
    per_filter = len(tiles[0]) if tiles else 1
    filter_w = per_filter * kw * pixel + (per_filter - 1) * CHANNEL_GAP
    fit = max(1, min(out, (GRID_WIDTH + FILTER_GAP) // (filter_w + FILTER_GAP)))
    rows = math.ceil(out / fit) if out else 0
    cols = math.ceil(out / rows) if rows else 1  # balance the rows: 16 filters as 8+8, not 11+5
    rects = []
    for i, filter_tiles in enumerate(tiles):
        x0 = (i % cols) * (filter_w + FILTER_GAP)
        y0 = (i // cols) * (kh * pixel + FILTER_GAP)
        for c, colors in enumerate(filter_tiles):
            xc = x0 + c * (kw * pixel + CHANNEL_GAP)
            rects += [
                (xc + x * pixel, y0 + y * pixel, colors[y][x]) for y in range(kh) for x in range(kw)
            ]
    width = cols * (filter_w + FILTER_GAP) - FILTER_GAP
    height = max(0, rows * (kh * pixel + FILTER_GAP) - FILTER_GAP)
    return KernelGrid(caption, width, height, pixel, tuple(rects))


def _diverging_colors(kernel: np.ndarray) -> list[list[str]]:
    # Each kernel scaled by its own max |w|: the picture is about shape, not magnitude.
    top = float(np.abs(kernel).max())
    v = kernel / top if top > 0 else np.zeros_like(kernel)
    t = np.abs(v)[..., None]
    end = np.where(v[..., None] >= 0, RED, BLUE)
    return _hex(255.0 + t * (end - 255.0))


def _rgb_colors(filt: np.ndarray) -> list[list[str]]:
    lo, hi = float(filt.min()), float(filt.max())
    scaled = (filt - lo) / (hi - lo) if hi > lo else np.full_like(filt, 0.5)
    return _hex(np.moveaxis(scaled, 0, -1) * 255.0)


def _hex(rgb: np.ndarray) -> list[list[str]]:
    channels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return [[f"#{r:02x}{g:02x}{b:02x}" for r, g, b in row] for row in channels]
