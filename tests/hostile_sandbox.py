"""Run `diag check` the way the hostile-input tests need: a subprocess under caps, audited.

Every run gets:
- RLIMIT_AS (address space) of MEMORY_CAP and a wall-time cap;
- an audit hook (sandbox_boot.py) logging each file opened or listed and each process or
  library spawned, so a test can prove nothing outside the inputs was read and nothing ran;
- `--isolated`, so no config file from the folders above is read either.

`check_invariants` asserts what must hold for any input, hostile or not.
"""

from __future__ import annotations

import os
import resource
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
MEMORY_CAP = 2 * 1024**3  # address space, which torch's import alone takes ~1 GB of
RSS_CAP_MB = 1024
WALL_CAP = 120.0

# Where the interpreter, the installed packages and diag's own code live, plus the kernel's
# pseudo-files and the system libraries that the import machinery and torch read.
SYSTEM = tuple(
    str(Path(p).resolve())
    for p in {
        sys.prefix, sys.base_prefix, sys.exec_prefix, sysconfig.get_paths()["stdlib"],
        *site.getsitepackages(), str(REPO / "diag"), str(REPO / "rules"), str(REPO / "reports"),
        str(TESTS),  # on PYTHONPATH, so the import system lists it
        "/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib64",
    }
)  # fmt: skip


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    touched: list[tuple[str, str]]  # (event, absolute path) for every open/list
    spawned: list[str]
    peak_rss_mb: float | None
    seconds: float
    scratch: str = ""  # the run's own TMPDIR, which libraries probe at import

    def shown(self) -> str:
        return (
            f"exit {self.returncode} in {self.seconds:.1f} s\n"
            f"stdout: {self.stdout[:2000]!r}\nstderr: {self.stderr[:4000]!r}"
        )


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_diag(args: list[str], cwd: Path, timeout: float = WALL_CAP) -> Outcome:
    """`diag check ARGS --isolated` in `cwd`, audited; raises TimeoutExpired past the cap."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"diag-audit-{os.getpid()}-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k != "DIAG_DEBUG"}
    env["PYTHONPATH"] = str(TESTS)  # a naive loader could import helpers_pickles' payloads
    env["DIAG_AUDIT_LOG"] = str(log)
    # dill (torch imports it when installed) writes a probe file into the temp folder at
    # import: give the run a folder of its own, so that write is neither outside nor shared.
    scratch = tempfile.mkdtemp(prefix="diag-sandbox-tmp-")
    env["TMPDIR"] = scratch
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(TESTS / "sandbox_boot.py"), "check", *args, "--isolated"],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=timeout,
            preexec_fn=_limits,
        )
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    finally:
        log.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    touched, spawned, peak = [], [], None
    for line in lines:
        event, _, what = line.partition("\t")
        if event == "spawn":
            spawned.append(what)
        elif event == "peak_rss_kb":
            peak = int(what) / 1024
        else:
            touched.append((event, what))
    return Outcome(
        proc.returncode, proc.stdout, proc.stderr, touched, spawned, peak,
        time.monotonic() - started, scratch,
    )  # fmt: skip


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def outside_reads(outcome: Outcome, allowed: list[Path]) -> list[str]:
    """Files or folders opened or listed outside `allowed` and the system locations."""
    roots = (*SYSTEM, *(str(Path(a).resolve()) for a in allowed), *(str(a) for a in allowed))
    if outcome.scratch:
        roots = (*roots, outcome.scratch, str(Path(outcome.scratch).resolve()))
    # Judged by where the path really leads: a link inside the inputs that points out of
    # them is a read outside.
    real_roots = (*SYSTEM, *(os.path.realpath(r) for r in roots))
    return sorted(
        {
            f"{event} {path}"
            for event, path in outcome.touched
            if not _inside(os.path.realpath(path), real_roots)
        }
    )


def check_invariants(outcome: Outcome, allowed: list[Path], rss_cap_mb: float = RSS_CAP_MB) -> None:
    """What holds for every input: a clean exit, no traceback, nothing run, nothing read
    outside the inputs and outputs, memory under the cap."""
    shown = outcome.shown()
    assert outcome.returncode in (0, 1, 2), shown
    assert "Traceback" not in outcome.stderr, shown
    assert "internal error" not in outcome.stderr, shown
    assert outcome.spawned == [], f"diag started something: {outcome.spawned}\n{shown}"
    stray = outside_reads(outcome, allowed)
    assert stray == [], f"read outside the inputs: {stray[:10]}\n{shown}"
    assert outcome.peak_rss_mb is not None, f"the run did not finish normally\n{shown}"
    assert outcome.peak_rss_mb < rss_cap_mb, f"peak RSS {outcome.peak_rss_mb:.0f} MB\n{shown}"


def check_refused(outcome: Outcome, name: str, *fragments: str) -> str:
    """Exit 2 and exactly one line `diag: error: ...` naming `name`; returns the line."""
    shown = outcome.shown()
    assert outcome.returncode == 2, shown
    assert outcome.stdout == "", shown
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith("diag: error: "), shown
    assert name in line, shown
    for fragment in fragments:
        assert fragment in line, shown
    return line
