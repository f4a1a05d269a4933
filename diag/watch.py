"""`diag watch PATH`: follow a run another process is writing and print findings as they appear.

One loop over the `diag check` data path: poll the files under PATH (size and mtime), and
when anything changed, run the same `check` again and print the findings not printed before.
Nothing here knows a file format or a rule; which findings to print when is
`diag.telling`'s (facts at once, judgements about the run's shape once more data agrees).
Logs and checkpoints caught mid-write make the loaders raise `DiagError` (a zip without its
directory, half a JSON document, a safetensors file shorter than its header says); while
watching that only means "not ready": the last good state is kept and the next change is
checked again. CSV and JSON Lines logs are read up to their last newline, so a row cut
mid-write is never read as a shorter number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from diag.api import CheckOptions, check, exit_code
from diag.errors import DiagError, InputError, UsageError
from diag.model import Finding, Result
from diag.telling import Teller

# Files stat-ed per poll at most: discovery refuses bigger folders anyway.
MAX_ENTRIES = 50_000
Signature = frozenset[tuple[str, int, int]]


@dataclass(frozen=True)
class WatchOptions:
    path: str
    interval: float = 5.0
    until_idle: float | None = None  # seconds without a change that mean the run has ended
    exit_on_finding: bool = False  # stop at the first finding at or above --fail-on
    verbose: bool = False
    color: bool = False  # dim notes on stderr


@dataclass
class _State:
    """What the watch knows: the last readable check, what was printed, why it waits."""

    result: Result | None = None
    run: Any = None
    held_back: bool = False  # the last check left an unfinished last line unread
    teller: Teller = field(default_factory=lambda: Teller(_grown))
    error: Exception | None = None
    noted: set[str] = field(default_factory=set)


def watch(
    options: WatchOptions,
    check_options: CheckOptions,
    out: TextIO,
    err: TextIO,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Watch until Ctrl-C, `until_idle` seconds without a change, or (with `exit_on_finding`)
    a failing finding; then print the summary, write the report files and return the exit
    code `diag check` would give for the last readable state. Raises `DiagError` for bad
    usage, a PATH that does not exist, or a PATH that never became readable."""
    root = Path(options.path)
    if not root.exists():
        raise InputError(root, "no such file or folder")
    _validate(check_options, root)
    err.write(f"watching {options.path} (poll {_seconds(options.interval)}, Ctrl-C to stop)\n")
    err.flush()
    state = _State()
    watched = [root, *map(Path, check_options.logs)]
    if check_options.init:
        watched.append(Path(check_options.init))
    last_seen: Signature | None = None
    last_change = clock()
    why = "stopped (Ctrl-C)"
    asked: list[str] = []
    try:
        with _signals_end_the_watch(asked):
            while not asked:
                seen = snapshot(watched)
                if seen != last_seen:
                    last_seen, last_change = seen, clock()
                    _check_and_print(state, check_options, root, options, out, err)
                    failing = state.result is not None and exit_code(
                        state.result, check_options.fail_on
                    )
                    if options.exit_on_finding and failing:
                        why = f"stopped at the first finding at or above {check_options.fail_on}"
                        break
                elif options.until_idle is not None and clock() - last_change >= options.until_idle:
                    why = f"no change for {_seconds(options.until_idle)}: the run has ended"
                    if state.held_back:
                        # The writer is gone: a last line without its newline is the last row.
                        _check_and_print(state, check_options, root, options, out, err, final=True)
                    break
                sleep(options.interval)
    except KeyboardInterrupt:
        pass
    if asked:
        why = f"stopped ({asked[0]})"
    return _finish(state, check_options, root, why, out, err)


@contextlib.contextmanager
def _signals_end_the_watch(asked: list[str]) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the watch after the step under way, never inside it.

    Raised asynchronously, a KeyboardInterrupt can land in a finaliser (a memory map being
    closed), where Python prints it and carries on, and the watch never ends. A watch
    started in the background of a non-interactive shell also inherits an ignored SIGINT.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def note(signum: int, frame: Any) -> None:
        asked.append(names.get(signum, "a signal"))

    previous = {sig: signal.signal(sig, note) for sig in names}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def snapshot(paths: Iterable[Path]) -> Signature:
    """Size and mtime of every file under `paths`: equal snapshots mean nothing was written
    (a new file, a grown or rewritten one, a removed one all change it)."""
    entries: set[tuple[str, int, int]] = set()
    for path in paths:
        try:
            st = path.lstat()
        except OSError:
            entries.add((str(path), -1, -1))
            continue
        if not stat.S_ISDIR(st.st_mode):
            entries.add((str(path), st.st_size, st.st_mtime_ns))
            continue
        for folder, _, files in os.walk(path, followlinks=False):
            for name in files:
                file = os.path.join(folder, name)
                try:
                    st = os.lstat(file)
                except OSError:
                    continue  # removed between listing and stat: the next poll sees it
                entries.add((file, st.st_size, st.st_mtime_ns))
            if len(entries) > MAX_ENTRIES:
                break
    return frozenset(entries)


def finding_line(finding: Finding) -> str:
    """One finding as `diag check` prints it, with its severity in front of it, since a
    stream of findings has no severity headings."""
    known = " (known, in the baseline)" if finding.known else ""
    label = finding.severity.label.upper() if finding.severity else ""
    where = f"{finding.location.artifact}:{finding.location.object}"
    return f"{label:<7} {where}: {finding.rule}: {finding.message}{known}"


def _check_and_print(
    state: _State,
    base: CheckOptions,
    root: Path,
    options: WatchOptions,
    out: TextIO,
    err: TextIO,
    final: bool = False,
) -> None:
    from diag.loaders.logs.tables import complete_lines_only

    check_options = _options_for(base, root)
    try:
        if final:
            result, run = check(check_options)
            held_back = False
        else:
            with complete_lines_only() as held:
                result, run = check(check_options)
            held_back = bool(held)
    except UsageError as exc:
        # A --val-metric not logged yet is only known once the log has it: wait, but say so.
        state.error = exc
        _note(state, err, f"waiting: {exc}", options.color)
        return
    except DiagError as exc:
        state.error = exc
        if options.verbose:
            _note(state, err, f"not ready, retried at the next change: {exc}", options.color)
        return
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        # A loader that trips over a half-written file in a way it did not foresee: one
        # note, and the next change is read again instead of ending a long watch.
        if os.environ.get("DIAG_DEBUG"):
            raise
        state.error = exc
        _note(state, err, f"internal error, retried at the next change: {exc!r}", options.color)
        return
    _close(state.run)
    state.result, state.run, state.held_back, state.error = result, run, held_back, None
    for error in result.errors:  # a rule that crashed: the text report's RULE ERRORS, once
        _note(state, err, f"rule error: {error.rule}: {error.message}", options.color)
    state.teller.key = lambda f: _key(f, run)
    ran = set(result.metadata.get("timings", {}))
    for finding in state.teller.take(result.findings, ran, _progress(run)):
        out.write(finding_line(finding) + "\n")
    out.flush()


def _finish(
    state: _State, options: CheckOptions, root: Path, why: str, out: TextIO, err: TextIO
) -> int:
    err.write(f"diag: {why}\n")
    err.flush()
    if state.result is None:
        if isinstance(state.error, DiagError):
            raise state.error
        cause = f"never became readable: {state.error}" if state.error else "nothing read yet"
        raise InputError(root, cause)
    from diag.api import write_atomic
    from diag.reports import render

    try:
        # The run is over: a judgement still waiting for more data is final now.
        for finding in state.teller.finish(state.result.findings):
            out.write(finding_line(finding) + "\n")
        out.write(_summary(state.result) + "\n")
        out.flush()
        if options.output:
            write_atomic(Path(options.output), render(options.fmt, state.result, state.run))
        if options.html:
            write_atomic(Path(options.html), render("html", state.result, state.run))
    finally:
        _close(state.run)
    return exit_code(state.result, options.fail_on)


def _summary(result: Result) -> str:
    """The text report's own last line (`Found 1 error, 0 warnings, 0 info from 30 rules.`),
    so the counting and wording live in one place."""
    from diag.reports import render

    return render("text", result).rstrip("\n").rsplit("\n", 1)[-1]


def _progress(run: Any) -> tuple[int, int]:
    """How far the run has got: the largest step logged, and the checkpoints written."""
    steps = 0
    for log in getattr(run, "logs", None) or ():
        for curve in log.curves.values():
            if len(curve):
                steps = max(steps, int(curve.steps[-1]))
    history = getattr(run, "history", None)
    checkpoints = len(history) if history else int(getattr(run, "checkpoint", None) is not None)
    return steps, checkpoints


def _grown(first: tuple[int, int], now: tuple[int, int]) -> bool:
    """A judgement first made at `first` is confirmed by a check a quarter further into
    the run (a plateau over the first 40% of 20 steps must still be one at 25 steps), or
    one with a newer checkpoint for judgements about weights."""
    return now[0] >= max(first[0] + 1, first[0] * 5 // 4) or now[1] > first[1]


def _options_for(base: CheckOptions, root: Path) -> CheckOptions:
    """Fresh options for one check: `check` fills `logs` from what it discovers, and what it
    discovers grows while the run is written (a newer trainer_state.json, a new version_N)."""
    options = dataclasses.replace(base, logs=list(base.logs), quiet=True)
    if root.is_dir() and _is_run_folder(root):
        options.checkpoint = str(root)  # as `diag check RUN_DIR`
    elif str(root) not in options.logs:
        # A log file, or a folder of logs discovery does not know as a run (runs/, mlruns/):
        # as `diag check --logs PATH`, which searches it.
        options.logs.insert(0, str(root))
    return options


def _is_run_folder(root: Path) -> bool:
    from diag.loaders.discover import discover

    try:
        discover(root)
    except InputError:
        return False
    return True


def _validate(options: CheckOptions, root: Path) -> None:
    """The mistakes that no amount of waiting fixes, refused before the first poll."""
    from diag.api import validate_object_ignores, validate_rule_options
    from diag.registry import load_rules, select_rules

    try:
        specs = load_rules()
        select_rules(specs, options.select, options.ignore, extend=options.extend_select)
        validate_rule_options(specs, options.rule_options)
        validate_object_ignores(specs, options.per_object_ignores)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if options.init and not root.is_dir():
        raise UsageError("--init needs a run folder with checkpoints to compare with")
    if options.baseline and not Path(options.baseline).is_file():
        raise InputError(options.baseline, "baseline file not found")


def _key(finding: Finding, run: Any) -> tuple[str, str, str]:
    """Rule, artifact and object. The run's newest checkpoint is one artifact whatever its
    folder (checkpoint-4, then checkpoint-6), and other artifacts are named by file name, as
    the baseline fingerprint does: a Trainer's history moves to each new checkpoint folder's
    trainer_state.json, and the finding on it is the same finding."""
    artifact = finding.location.artifact.replace("\\", "/")
    newest = getattr(run, "checkpoint", None)
    if newest is not None and newest is not getattr(run, "init", None):
        folder = str(newest.path).replace("\\", "/").rstrip("/")
        if artifact == folder or artifact.startswith(folder + "/"):
            return (finding.rule, "<newest checkpoint>", finding.location.object)
    return (finding.rule, artifact.rsplit("/", 1)[-1], finding.location.object)


def _close(run: Any) -> None:
    """Release the memory maps and file handles of a Run no longer reported."""
    if run is None:
        return
    tables = {id(c): c for c in (*(run.history or ()), run.checkpoint, run.init) if c is not None}
    for ckpt in tables.values():
        close = getattr(getattr(ckpt, "table", None), "close", None)
        if close is not None:
            close()


def _note(state: _State, err: TextIO, text: str, color: bool) -> None:
    if text in state.noted:
        return
    state.noted.add(text)
    line = f"diag: {text}"
    err.write(f"\x1b[2m{line}\x1b[0m\n" if color else line + "\n")
    err.flush()


def _seconds(value: float) -> str:
    return f"{value:g}s"
