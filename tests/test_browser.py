"""The HTML report in a real browser: Debian's chromium driven by Playwright.

Reports come from real runs (the session's digits CNNs, plus a short overfitting run with
Lightning-style logs), are opened from file:// URLs, and must load with no console message,
no CSP violation and no request beyond the file itself. The filters, the links between
findings and their pictures, and printing are exercised as a reader would use them.

Without /usr/bin/chromium the module skips, unless DIAG_REQUIRE_BROWSER=1 (set in CI), where a
missing browser is a failure: a silently skipped browser test would hide a broken report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from diag.api import CheckOptions, check
from diag.demo import Faults, save_run, train, write_lightning_csv
from diag.reports import render

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("DIAG_REQUIRE_BROWSER") == "1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"DIAG_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the whole module: launching is most of a test's cost."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} does not exist (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def reports(
    runs: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """HTML reports of real runs: planted faults, a healthy run, and an overfitting run
    checked with its logs (findings in two rule groups, curves, kernels and layers)."""
    out = tmp_path_factory.mktemp("reports")
    options = {
        name: CheckOptions(checkpoint=str(runs[name]["final"]), init=str(runs[name]["init"]))
        for name in ("planted", "healthy")
    }
    # 64 training samples, no weight decay: memorises, and the validation loss turns up,
    # so the curves figure carries a finding to link to.
    overfit = train(Faults(train_subset=64, weight_decay=0.0), epochs=60)
    saved = save_run(overfit, out / "overfit")
    logs = write_lightning_csv(overfit.history, out / "overfit").parent
    options["overfit"] = CheckOptions(
        checkpoint=str(saved["final"]), init=str(saved["init"]), logs=[str(logs)]
    )
    options["run"] = CheckOptions(checkpoint=str(_run_folder(runs, out / "run")))
    paths = {}
    for name, opts in options.items():
        result, run = check(opts)
        paths[name] = out / f"{name}.html"
        paths[name].write_text(render("html", result, run), encoding="utf-8")
    return paths


def _run_folder(runs: dict[str, dict[str, Path]], folder: Path) -> Path:
    """A run folder of numbered checkpoints: the healthy run's init, three steps towards its
    final weights, and the final weights with one NaN (a finding dated to a checkpoint)."""
    import torch

    from diag.loaders.checkpoint import open_checkpoint

    folder.mkdir()
    init = torch.load(runs["healthy"]["init"], weights_only=True)
    table = open_checkpoint(runs["healthy"]["final"]).table  # the .ckpt holds a Path: ours reads it
    final = {i.name: table.read(i.name) for i in table.infos()}
    for k, t in enumerate((0.0, 0.3, 0.6, 1.0)):
        state = {n: init[n] + t * (v - init[n]) if v.is_floating_point() else v
                 for n, v in final.items()}  # fmt: skip
        if k == 3:
            state["fc2.weight"][0, 0] = float("nan")
        torch.save(state, folder / f"ckpt_{k * 100:06d}.pt")
    return folder


@dataclass
class Opened:
    page: Page
    url: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def finding_ids(self) -> list[str]:
        return self.page.locator("article.finding").evaluate_all("els => els.map(e => e.id)")

    def visible(self, selector: str) -> bool:
        return self.page.locator(selector).is_visible()

    def problems(self) -> list[str]:
        # Anything on the console is a problem: chromium reports CSP violations there
        # ("Refused to apply inline style ... Content Security Policy ...").
        strange = [u for u in self.requests if u != self.url and not u.startswith("data:")]
        return self.console + self.errors + [f"request: {u}" for u in strange]


@pytest.fixture
def open_report(browser: Browser, reports: dict[str, Path]) -> Iterator[Any]:
    pages: list[Page] = []

    def opener(name: str, fragment: str = "") -> Opened:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        pages.append(page)
        opened = Opened(page, reports[name].as_uri())

        def on_console(msg: ConsoleMessage) -> None:
            opened.console.append(f"console {msg.type}: {msg.text}")

        def on_request(req: Request) -> None:
            opened.requests.append(req.url)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: opened.errors.append(f"page error: {exc}"))
        page.on("request", on_request)
        page.goto(opened.url + fragment, wait_until="load")
        return opened

    yield opener
    for page in pages:
        page.close()


@pytest.mark.parametrize("name", ["planted", "healthy", "overfit", "run"])
def test_loads_offline_with_a_clean_console_and_renders(
    open_report: Any, name: str, tmp_path: Path
) -> None:
    opened = open_report(name)
    page = opened.page
    # The stylesheet is applied, so its CSP hash matched: a blocked style leaves a 0px border.
    width = page.locator(".verdict").evaluate("e => getComputedStyle(e).borderLeftWidth")
    assert width == "10px"
    assert opened.visible(".verdict .status")
    assert opened.visible("header table.inputs")
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=shot, full_page=True)
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # a rendered page, not a blank one
    assert opened.problems() == []
    assert opened.requests == [opened.url]  # the page, and nothing else from anywhere


@pytest.mark.parametrize("name", ["planted", "overfit", "run"])
def test_evidence_keys_never_break_across_lines(open_report: Any, name: str) -> None:
    page = open_report(name).page
    # The line boxes of each key's text: more than one means the key wrapped.
    lines = page.locator("table.kv th").evaluate_all(
        "ths => ths.map(th => { const r = document.createRange(); r.selectNodeContents(th);"
        " return [th.textContent, r.getClientRects().length]; })"
    )
    assert lines, "no evidence tables"
    broken = [key for key, count in lines if count > 1]
    assert broken == [], f"evidence keys wrapped: {broken}"


def test_the_run_section_draws_the_trajectories(open_report: Any) -> None:
    page = open_report("run").page
    checkpoints = page.locator("#run table.ledger").first.locator("tbody tr")
    assert checkpoints.count() == 4
    for i in (1, 2):
        figure = page.locator(f"#trajectory-{i} svg")
        assert figure.is_visible() and figure.bounding_box()["width"] > 400
        assert page.locator(f"#trajectory-{i} polyline.flagged").count() >= 1
        assert page.locator(f"#trajectory-{i} polyline.layer").count() >= 2


def test_verdicts_of_the_real_runs(open_report: Any) -> None:
    planted, healthy = open_report("planted"), open_report("healthy")
    assert planted.page.locator(".verdict").get_attribute("class") == "verdict fail"
    assert healthy.page.locator(".verdict").get_attribute("class") == "verdict pass"
    assert planted.finding_ids()
    assert healthy.finding_ids() == []
    assert healthy.page.locator(".filters").count() == 0  # nothing to filter


def test_severity_filter_hides_and_shows_findings(open_report: Any) -> None:
    opened = open_report("planted")
    page = opened.page
    ids = opened.finding_ids()
    errors = page.locator(".rule.error article.finding").evaluate_all("es => es.map(e => e.id)")
    others = [i for i in ids if i not in errors]
    assert errors, "the planted run has errors"
    assert all(opened.visible(f"#{i}") for i in ids)

    page.locator("#filter-error").uncheck()
    assert not any(opened.visible(f"#{i}") for i in errors)
    assert all(opened.visible(f"#{i}") for i in others)
    assert not opened.visible("section.severity.error h3")  # the emptied heading goes too
    # The verdict and the skipped rules are never filtered.
    assert opened.visible(".verdict") and opened.visible("#skipped")

    page.locator("#filter-error").check()
    assert all(opened.visible(f"#{i}") for i in ids)
    assert opened.problems() == []


def test_group_filter_hides_a_rule_group(open_report: Any) -> None:
    opened = open_report("overfit")
    page = opened.page
    chips = page.locator(".filters input[id^='filter-group-']")
    assert chips.count() >= 2  # curves and params
    slot = chips.first.get_attribute("id").removeprefix("filter-group-")  # type: ignore[union-attr]
    inside = page.locator(f".rule.g{slot} article.finding").evaluate_all("es => es.map(e => e.id)")
    outside = [i for i in opened.finding_ids() if i not in inside]
    assert inside and outside

    chips.first.uncheck()
    assert not any(opened.visible(f"#{i}") for i in inside)
    assert all(opened.visible(f"#{i}") for i in outside)

    for severity in ("error", "warning", "info"):  # everything off: only the findings go
        box = page.locator(f"#filter-{severity}")
        if box.count():
            box.uncheck()
    assert not any(opened.visible(f"#{i}") for i in opened.finding_ids())
    assert opened.visible(".verdict") and opened.visible("#skipped")
    assert opened.visible(".filters")  # ...and the controls to bring them back


def test_a_linked_finding_shows_even_when_filtered_out(open_report: Any) -> None:
    opened = open_report("planted")
    page = opened.page
    row_link = page.locator("table.layers tr.error a").first
    target = row_link.get_attribute("href")
    assert target and target.startswith("#finding-")
    page.locator("#filter-error").uncheck()
    assert not opened.visible(target)
    row_link.click()
    assert page.url.endswith(target)
    assert opened.visible(target)


def test_findings_link_to_their_evidence_and_back(open_report: Any) -> None:
    checked = 0
    for name in ("planted", "overfit"):
        opened = open_report(name)
        page = opened.page
        for finding in opened.finding_ids():
            for href in page.locator(f"#{finding} .evidence-links a").evaluate_all(
                "as => as.map(a => a.getAttribute('href'))"
            ):
                assert page.locator(href).count() == 1, f"{finding} links to missing {href}"
                back = page.locator(f"{href} a[href='#{finding}']")
                assert back.count() >= 1, f"{href} does not link back to {finding}"
                checked += 1
    assert checked >= 3


def test_following_a_link_targets_and_shows_the_picture(open_report: Any) -> None:
    opened = open_report("overfit")
    page = opened.page
    link = page.locator("article.finding .evidence-links a[href^='#curve-']").first
    href = link.get_attribute("href")
    assert href
    link.click()
    assert page.url.endswith(href)
    assert page.evaluate("document.querySelector(':target').id") == href[1:]
    assert page.locator(href).is_visible()
    assert page.locator(f"{href} svg polyline").count() >= 2  # train and val drawn
    top = page.locator(href).evaluate("e => e.getBoundingClientRect().top")
    assert 0 <= top < 900  # scrolled into the viewport

    back = page.locator(f"{href} .back-links a").first
    back_href = back.get_attribute("href")
    back.click()
    assert page.evaluate("document.querySelector(':target').id") == back_href[1:]  # type: ignore[index]
    assert opened.problems() == []


def test_kernel_and_layer_links_on_the_planted_run(open_report: Any) -> None:
    opened = open_report("planted")
    page = opened.page
    kernels = page.locator("#kernels .back-links a")
    assert kernels.count() >= 1  # the planted conv1 is stuck: its findings point here
    first = kernels.first.get_attribute("href")
    assert page.locator(f"{first} .evidence-links a[href='#kernels']").count() == 1


def test_print_shows_every_finding_and_opens_the_rule_docs(open_report: Any) -> None:
    opened = open_report("planted")
    page = opened.page
    page.locator("#filter-error").uncheck()  # filtered on screen...
    page.emulate_media(media="print")
    assert all(opened.visible(f"#{i}") for i in opened.finding_ids())  # ...printed in full
    assert not opened.visible(".filters")
    assert page.locator("details.doc h4").first.is_visible()
    pdf = page.pdf()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert opened.problems() == []
