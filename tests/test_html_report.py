"""The HTML report: self-contained, locked down by its CSP, escaped, and drawing real runs."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from diag.loaders.checkpoint import open_checkpoint
from diag.model import Finding, Location, Result, RuleError, Severity, Skipped
from diag.reports import html as html_report
from diag.reports import render as render_format
from diag.run import Run

PAYLOAD = "</script><img src=x onerror=alert(1)>"
SAMPLE = Path("/tmp/diag_html_sample.html")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


def _tiny_model(in_channels: int = 1, filters: int = 4, size: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    side = 8 - size + 1
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, filters, size),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(filters * side * side, 10),
    )


def _run(tmp_path: Path, model: torch.nn.Module, init: torch.nn.Module | None = None) -> Run:
    path = tmp_path / "final.pt"
    torch.save(model.state_dict(), path)
    run = Run(checkpoint=open_checkpoint(path))
    if init is not None:
        torch.save(init.state_dict(), tmp_path / "init.pt")
        run.init = open_checkpoint(tmp_path / "init.pt")
    run.prepare()
    return run


def _result(artifact: str) -> Result:
    findings = (
        Finding(
            "3 of 10 units have all-zero incoming weights",
            Location(artifact, "3.weight"),
            {"n_dead": 3, "fraction": 0.123456789, "units": [0, 1, 2]},
            Severity.ERROR,
            "dead-units",
            "params",
        ),
        Finding(
            "4 of 4 kernels look like noise",
            Location(artifact, "0.weight", {"layer": 0}),
            {"median_autocorr": -0.0123456, "p_value": 0.5},
            Severity.WARNING,
            "noisy-kernels",
            "params",
        ),
    )
    metadata = {
        "inputs": [{"role": "checkpoint", "path": artifact, "format": "torch"}],
        "generated": "2025-01-01T12:00:00Z",
        "rules_run": 8,
    }
    skipped = (Skipped("stuck-parameter", "needs --init (the checkpoint saved before training)"),)
    return Result(findings, skipped, (RuleError("update-ratio", "ValueError: boom"),), metadata)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return _run(tmp_path, _tiny_model())


@pytest.fixture
def page(run: Run) -> str:
    out = html_report.render(_result(run.checkpoint.path), run)
    SAMPLE.write_text(out, encoding="utf-8")
    return out


class _Meta(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.csp: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" and (found.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = found.get("content")


class _Balance(HTMLParser):
    """Fails on any end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched.append(tag)


def _svgs(page: str) -> list[str]:
    return re.findall(r'<svg class="kernel-grid".*?</svg>', page, re.S)


def _layer_rows(page: str) -> list[str]:
    body = re.search(r'<table class="layers">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body is not None
    return re.findall(r"<tr[ >].*?</tr>", body.group(1), re.S)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)


def test_csp_pins_the_inline_style_by_hash(page: str) -> None:
    parser = _Meta()
    parser.feed(page)
    assert parser.csp is not None
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in parser.csp
    for directive in (
        "default-src 'none'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ):
        assert directive in parser.csp
    assert "script-src" not in parser.csp
    # The policy must come before the style it governs.
    assert page.index("Content-Security-Policy") < page.index("<style>")


def test_no_scripts_and_nothing_loaded_from_anywhere(page: str) -> None:
    assert "<script" not in page.lower()
    scheme = r"""\b(?:src|href|action|data|poster|srcset)\s*=\s*["']?\s*[a-z][a-z0-9+.-]*:"""
    assert not re.search(scheme, page, re.I)
    assert "@import" not in page and "url(" not in page
    assert " style=" not in page  # inline style attributes would need 'unsafe-inline'


def test_verdict_and_findings_by_severity(page: str) -> None:
    assert "diag audit report" in page
    assert '<section class="verdict fail"' in page
    assert page.index('<h3 class="error">') < page.index('<h3 class="warning">')
    assert "<td>0.1235</td>" in page  # evidence floats at 4 significant digits
    assert "<td>-0.01235</td>" in page
    assert "<td>0, 1, 2</td>" in page
    assert "location.layer" in page
    assert page.count('<details class="doc">') == 2
    assert "Why is this bad?" in page and "How to fix" in page
    assert "needs --init" in page  # skipped, with the reason
    assert "ValueError: boom" in page  # rule errors
    assert "2025-01-01T12:00:00Z" in page


def test_kernel_grid_draws_every_pixel_of_the_first_conv(page: str) -> None:
    (svg,) = _svgs(page)
    fills = re.findall(
        r'<rect x="\d+" y="\d+" width="\d+" height="\d+" fill="(#[0-9a-f]{6})"/>', svg
    )
    assert len(fills) == svg.count("<rect") == 4 * 9
    assert len(set(fills)) > 4  # a picture, not a flat colour


def test_layer_table_has_a_row_per_tensor_and_highlights_findings(run: Run, page: str) -> None:
    rows = _layer_rows(page)
    assert len(rows) == len(run.checkpoint.stats) == 4
    for name, row in zip(run.checkpoint.stats, rows, strict=True):
        assert f'<td class="name">{name}</td>' in row
    flagged = {r.split('<td class="name">')[1].split("<")[0]: r for r in rows}
    # Flagged rows carry an id, the target of the finding's link to its row.
    assert flagged["3.weight"].startswith('<tr class="error" id="tensor-3">')
    assert flagged["0.weight"].startswith('<tr class="warning" id="tensor-1">')
    assert flagged["0.bias"].startswith("<tr>")
    assert '<a href="#finding-1">dead-units</a>' in flagged["3.weight"]


def test_init_kernels_drawn_next_to_trained_ones(tmp_path: Path) -> None:
    final = _tiny_model()
    init = _tiny_model()
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.1)
    run = _run(tmp_path, final, init)
    page = html_report.render(_result(run.checkpoint.path), run)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions == ["at init", "trained"]
    assert [svg.count("<rect") for svg in _svgs(page)] == [36, 36]
    updates = [_cells(row)[6] for row in _layer_rows(page)]
    assert len(updates) == 4 and all(updates)  # every tensor has an update ratio


@pytest.mark.parametrize(
    ("in_channels", "filters", "pixels"),
    [(3, 8, 8 * 25), (3, 70, 64 * 25), (2, 4, 4 * 2 * 25), (6, 2, 2 * 4 * 25)],
)
def test_kernel_grid_caps_and_colour_modes(
    tmp_path: Path, in_channels: int, filters: int, pixels: int
) -> None:
    run = _run(tmp_path, _tiny_model(in_channels, filters, 5))
    page = html_report.render(Result(()), run)
    (svg,) = _svgs(page)
    assert svg.count("<rect") == pixels
    assert ("RGB image" in page) == (in_channels == 3)
    if filters > 64:
        assert "first 64 of 70 filters" in page


def test_everything_from_the_inputs_is_escaped(tmp_path: Path) -> None:
    model = _tiny_model()
    state = {f"{PAYLOAD}.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "final.pt"
    torch.save(state, path)
    run = Run(checkpoint=open_checkpoint(path))
    run.prepare()
    where = Location(PAYLOAD, f"{PAYLOAD}.0.weight", {PAYLOAD: PAYLOAD})
    finding = Finding(PAYLOAD, where, {PAYLOAD: PAYLOAD, "n": [PAYLOAD]}, Severity.ERROR, PAYLOAD)
    metadata = {
        "inputs": [{"role": PAYLOAD, "path": PAYLOAD, "format": PAYLOAD, PAYLOAD: PAYLOAD}],
        "generated": PAYLOAD,
    }
    result = Result(
        (finding,), (Skipped(PAYLOAD, PAYLOAD),), (RuleError(PAYLOAD, PAYLOAD),), metadata
    )
    page = html_report.render(result, run)
    assert "<img" not in page
    assert "</script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("&lt;/script&gt;&lt;img") >= 10
    assert len(_svgs(page)) == 1  # the payload-named conv is still drawn, with its name escaped


def test_well_formed(page: str) -> None:
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert parser.mismatched == []
    assert parser.stack == []


def test_empty_result_passes_without_a_run() -> None:
    page = html_report.render(Result(()))
    assert '<section class="verdict pass"' in page
    assert "No findings." in page
    assert "kernel-grid" not in page and '<table class="layers">' not in page
    parser = _Balance()
    parser.feed(page)
    assert parser.mismatched == [] and parser.stack == []


def test_layer_table_is_capped(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_report, "MAX_LAYER_ROWS", 2)
    page = html_report.render(Result(()), run)
    assert len(_layer_rows(page)) == 2
    assert "Showing the first 2 of 4 tensors." in page


def test_reachable_through_the_format_registry(run: Run) -> None:
    result = _result(run.checkpoint.path)
    assert render_format("html", result, run) == html_report.render(result, run)


def test_format_value() -> None:
    fmt = html_report.format_value
    assert fmt(0.000123456) == "0.0001235"
    assert fmt(float("nan")) == "nan" and fmt(float("-inf")) == "-inf"
    assert fmt(True) == "true" and fmt(12) == "12"
    assert fmt(list(range(20))).endswith("… (4 more)")
    assert fmt({"a": 1.23456}) == "a: 1.235"


def _ids(page: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page))


def test_header_says_what_was_checked_and_with_what(run: Run) -> None:
    from importlib import metadata

    result = _result(run.checkpoint.path)
    inputs = [{**result.metadata["inputs"][0], "bytes": 179024, "fingerprint": "sha256-ends:ab12"}]
    inputs.append(
        {"role": "split", "name": "val", "path": "val.npz", "kind": "image", "samples": 9}
    )
    page = html_report.render(
        Result(result.findings, metadata={**result.metadata, "inputs": inputs})
    )
    assert "174.8 KiB (179,024 bytes)" in page
    assert '<td class="mono break">sha256-ends:ab12</td>' in page
    assert "<td>split val</td>" in page and "9 samples" in page and "<td>image</td>" in page
    assert f"Python {sys.version.split()[0]}" in page
    assert f"torch {metadata.version('torch')}" in page
    assert "Checked 2025-01-01T12:00:00Z" in page


def test_versions_never_import_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert ("torch", "not installed") in html_report._versions()
    code = (
        "import sys; from diag.model import Result; from diag.reports import html; "
        "html.render(Result(())); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_filters_are_checkboxes_and_the_stylesheet_does_not_depend_on_the_result(
    page: str,
) -> None:
    assert '<input type="checkbox" id="filter-error" checked>' in page
    assert '<input type="checkbox" id="filter-warning" checked>' in page
    assert 'id="filter-info"' not in page  # no info findings: no switch for them
    assert '<input type="checkbox" id="filter-group-1" checked> params (2)' in page
    assert page.count('<div class="rule error g1">') == 1
    assert "<form" not in page  # nothing to submit; the CSP forbids it anyway
    empty = html_report.render(Result(()))
    style = re.compile(r"<style>(.*?)</style>", re.S)
    assert style.findall(page) == style.findall(empty)  # one CSS, so one hash for every page
    assert 'class="filters"' not in empty  # no findings: nothing to filter


def test_groups_past_the_last_filter_slot_share_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_report, "GROUP_SLOTS", 2)
    findings = tuple(
        Finding("m", Location("a", "o"), {}, Severity.INFO, f"rule-{g}", g) for g in "abcd"
    )
    page = html_report.render(Result(findings))
    assert 'id="filter-group-1" checked> a (1)' in page
    assert 'id="filter-group-2" checked> other groups (3)' in page
    assert 'id="filter-group-3"' not in page
    assert page.count('<div class="rule info g2">') == 3


def test_findings_and_their_pictures_link_both_ways(page: str) -> None:
    ids = _ids(page)
    for target in re.findall(r'href="#([^"]+)"', page):
        assert target in ids, f"link to missing #{target}"
    noisy = re.search(r'<article class="finding" id="finding-2">.*?</article>', page, re.S)
    assert noisy is not None
    assert '<a href="#kernels">first-layer kernels</a>' in noisy.group(0)
    assert '<a href="#tensor-1">layer table</a>' in noisy.group(0)
    kernels = page.split('<section id="kernels">')[1].split("</section>")[0]
    assert '<a href="#finding-2">noisy-kernels</a>' in kernels


def test_known_findings_are_marked() -> None:
    finding = Finding("m", Location("a", "o"), {}, Severity.ERROR, "r", "g", known=True)
    metadata = {"baseline": {"path": "b.json", "known": 1, "new": 0}}
    page = html_report.render(Result((finding,), metadata=metadata))
    assert "known · in the baseline" in page
    assert "1 known from the baseline, 0 new" in page
