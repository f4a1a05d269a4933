"""The HTML report: one self-contained file to read a run at a glance.

Everything the page shows is prepared here as plain data (numbers already formatted,
colours already computed), so the template only lays it out and jinja2's autoescaping
covers every string that came from the inputs. The page has no scripts and loads nothing:
a Content-Security-Policy pins the one inline stylesheet by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import math
import numbers
from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class FindingView:
    anchor: str
    severity: str
    message: str
    artifact: str
    object: str
    evidence: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RuleDoc:
    summary: str
    # (heading, paragraphs); a paragraph is (text, is_code) runs so `code` renders as <code>.
    sections: tuple[tuple[str, tuple[tuple[tuple[str, bool], ...], ...]], ...]


@dataclass(frozen=True)
class RuleBlock:
    rule: str
    group: str
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
    rules: tuple[str, ...]
    anchor: str


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
    style_hash = csp_hash(_block_text(template, "style"))
    return template.render(style_hash=style_hash, **_context(result, run))


def csp_hash(text: str) -> str:
    """The base64 sha256 a CSP source expression uses to allow exactly this inline text."""
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _block_text(template: Template, name: str) -> str:
    # The stylesheet lives in the template; rendering its static block alone yields the
    # exact bytes the page inlines, so the CSP hash cannot drift from the CSS.
    return "".join(template.blocks[name](template.new_context({})))


def _context(result: Result, run: Run | None) -> dict[str, Any]:
    counts = result.summary()
    anchors = _anchors(result.findings)
    return {
        "version": __version__,
        "generated": _text(result.metadata.get("generated")),
        "rules_run": result.metadata.get("rules_run"),
        "inputs": [_input_view(i) for i in result.metadata.get("inputs", [])],
        "counts": counts,
        "status": _status(counts, len(result.errors)),
        "groups": _severity_groups(result.findings, anchors),
        "skipped": result.skipped,
        "errors": result.errors,
        "layers": _layer_table(result.findings, anchors, run),
        "kernels": _kernel_figure(run),
        "curves": _curve_figures(result, run),
        "leaks": _leak_views(result, run, anchors),
        "probe": _probe_view(run),
    }


def _probe_view(run: Run | None) -> Any:
    if run is None or getattr(run, "probe", None) is None:
        return None
    from diag.reports.probe_view import probe_view

    return probe_view(run)


def _leak_views(result: Result, run: Run | None, anchors: dict[int, str]) -> list[Any]:
    if run is None or not getattr(run, "splits", None):
        return []
    from diag.reports.leaks import leak_views

    return leak_views(result.findings, run.splits, anchors)


def _curve_figures(result: Result, run: Run | None) -> list[Any]:
    if run is None or not getattr(run, "logs", None):
        return []
    from diag.reports.plots import curve_figures

    return curve_figures(run.logs, result.findings)


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


def _input_view(item: Any) -> dict[str, str]:
    if not isinstance(item, Mapping):
        return {"role": "", "path": _text(item), "format": "", "extra": ""}
    known = ("role", "path", "format")
    extra = [f"{k}: {format_value(v)}" for k, v in item.items() if k not in known]
    return {
        "role": _text(item.get("role")),
        "path": _text(item.get("path")),
        "format": _text(item.get("format")),
        "extra": "; ".join(extra),
    }


def _status(counts: Mapping[str, int], crashed: int) -> dict[str, str]:
    if counts.get("error"):
        key, label = "fail", "Fail"
    elif counts.get("warning"):
        key, label = "warn", "Warnings"
    else:
        key, label = "pass", "Pass"
    parts = [f"{n} {name}{'s' if n != 1 and name != 'info' else ''}" for name, n in counts.items()]
    text = ", ".join(parts)
    if crashed:
        # A clean verdict is only as good as the rules that ran: say so next to it.
        text += f"; {crashed} rule{'s' if crashed != 1 else ''} crashed (see Rule errors)"
    return {"key": key, "label": label, "text": text}


# ---------------------------------------------------------------- findings


def _anchors(findings: Iterable[Finding]) -> dict[int, str]:
    # Keyed by identity: two findings may be equal but are still two entries on the page.
    return {id(f): f"finding-{i}" for i, f in enumerate(findings, 1)}


def _severity_groups(findings: tuple[Finding, ...], anchors: dict[int, str]) -> list[SeverityGroup]:
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
                rule, fs[0].group, docs.get(rule), tuple(_finding_view(f, anchors) for f in fs)
            )
            for rule, fs in by_rule.items()
        )
        title = SEVERITY_TITLES[severity.label]
        groups.append(SeverityGroup(severity.label, title, len(found), blocks))
    return groups


def _finding_view(f: Finding, anchors: dict[int, str]) -> FindingView:
    rows = [(str(k), format_value(v)) for k, v in f.evidence.items()]
    rows += [(f"location.{k}", format_value(v)) for k, v in f.location.details.items()]
    return FindingView(
        anchor=anchors[id(f)],
        severity=f.severity.label if f.severity else "info",
        message=f.message,
        artifact=f.location.artifact,
        object=f.location.object,
        evidence=tuple(rows),
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
    findings: tuple[Finding, ...], anchors: dict[int, str], run: Run | None
) -> LayerTable | None:
    if run is None or run.checkpoint is None or not run.checkpoint.stats:
        return None
    stats = run.checkpoint.stats
    flagged = _findings_by_object(findings)
    updates = run.updates or {}
    rows = tuple(
        _layer_row(s, flagged.get(name, []), updates.get(name), anchors)
        for name, s in list(stats.items())[:MAX_LAYER_ROWS]
    )
    return LayerTable(rows, len(stats), bool(updates))


def _layer_row(
    s: TensorStats, on_it: list[Finding], update: UpdateStats | None, anchors: dict[int, str]
) -> LayerRow:
    worst = max((f.severity for f in on_it if f.severity), default=None)
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
        rules=tuple(dict.fromkeys(f.rule for f in on_it)),
        anchor=anchors[id(on_it[0])] if on_it else "",
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


def _kernel_figure(run: Run | None) -> KernelFigure | None:
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
