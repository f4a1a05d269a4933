"""Every case of the hostile corpus through the real CLI, in the audited sandbox.

For each case: exit 2 with one line naming the file and the cause, or a finished check
with the expected findings; no traceback; the marker a payload would create does not
exist; nothing outside the input folder was opened or listed (the `outside` folder holds
what hostile references point at); memory and time under the caps; the HTML report keeps
its CSP and holds no raw markup from the inputs; a refused run leaves the previous reports
byte for byte and no temporary file.
"""

from __future__ import annotations

import json
from pathlib import Path

import hostile_sandbox as hs
import pytest
from hostile_corpus import CASES, MARKUP, _register_extensions

_register_extensions()

OLDER = "<!-- the report of an earlier run -->\n"


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(tmp_path: Path, name: str) -> None:
    inp, outside, out = tmp_path / "in", tmp_path / "outside", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    marker = tmp_path / "MARKER"
    case = CASES[name](inp, outside, marker)
    (out / "report.json").write_text(OLDER)
    (out / "report.html").write_text(OLDER)

    outcome = hs.run_diag(
        [*case.args, "-q", "--format", "json", "-o", str(out / "report.json"),
         "--html", str(out / "report.html")],
        cwd=inp,
    )  # fmt: skip
    hs.check_invariants(outcome, allowed=[inp, out])
    assert not marker.exists(), f"the payload ran\n{outcome.shown()}"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]

    refused = outcome.returncode == 2
    if case.refused is not None and not case.either:
        hs.check_refused(outcome, case.refused, *case.fragments)
    elif not case.either:
        assert not refused, outcome.shown()
    if refused:
        hs.check_refused(outcome, case.refused or "")
        for report in ("report.json", "report.html"):
            assert (out / report).read_text() == OLDER, f"{report} was touched"
        return

    report = json.loads((out / "report.json").read_text())
    fired = {f["rule"] for f in report["findings"]}
    assert set(case.rules) <= fired, f"expected {case.rules}, got {sorted(fired)}"
    assert report["errors"] == [], report["errors"]
    html = (out / "report.html").read_text()
    assert 'http-equiv="Content-Security-Policy"' in html
    assert "<img src=x" not in html and "</script><img" not in html
    if MARKUP in json.dumps(report):  # the markup reached the report: shown, escaped
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
