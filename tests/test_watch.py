"""`diag watch`: a run written by another process, followed while it is written.

The subprocess tests run `diag watch` against a real writer process; the in-process ones
drive `diag.watch.watch` with a `sleep` that performs the writer's next step, so a file
caught mid-write is caught at a known poll without sleeping.
"""

from __future__ import annotations

import io
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from diag.api import CheckOptions
from diag.errors import InputError
from diag.watch import WatchOptions, watch

DIAG = [sys.executable, "-m", "diag"]
HEADER = "epoch,step,train_loss,val_loss\n"

# Appends one Lightning metrics.csv row every DELAY seconds, the training loss NaN from
# NAN_AT on, until the stop file appears (or ROWS rows are written, or 60 s pass).
WRITER = """\
import math, sys, time
from pathlib import Path

csv, stop, nan_at, rows, delay = Path(sys.argv[1]), Path(sys.argv[2]), *map(float, sys.argv[3:])
deadline = time.monotonic() + 60
with csv.open("w") as f:
    f.write("epoch,step,train_loss,val_loss\\n")
    f.flush()
    step = 0
    while step < rows and not stop.exists() and time.monotonic() < deadline:
        loss = float("nan") if step >= nan_at else 2.0 * math.exp(-step / 3)
        val = f"{2.1 * math.exp(-step / 4):.6f}" if step % 5 == 4 else ""
        f.write(f"{step // 5},{step},{loss:.6f},{val}\\n")
        f.flush()
        step += 1
        time.sleep(delay)
"""


def _start_writer(tmp_path: Path, nan_at: int, rows: int, delay: float) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    csv = tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv"
    csv.parent.mkdir(parents=True)
    args = [str(csv), str(tmp_path / "stop"), str(nan_at), str(rows), str(delay)]
    return subprocess.Popen([sys.executable, str(script), *args])


def _start_watch(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, queue.Queue]:
    proc = subprocess.Popen(
        [*DIAG, "watch", "run", "--isolated", "--interval", "0.2", *flags],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _wait_for_line(lines: queue.Queue, text: str, timeout: float) -> tuple[str, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if text in line:
            return line, seen
    raise AssertionError(f"no line with {text!r} within {timeout}s; stdout so far: {seen}")


def _rest(lines: queue.Queue) -> list[str]:
    out = []
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_reports_the_fault_while_the_run_is_still_written(tmp_path: Path, sig: int) -> None:
    """Either signal ends the watch with its summary, after the poll under way: a Ctrl-C
    raised inside a finaliser used to be printed and swallowed, and the watch ran on."""
    writer = _start_writer(tmp_path, nan_at=15, rows=10_000, delay=0.1)
    watcher, lines = _start_watch(tmp_path)
    try:
        line, before = _wait_for_line(lines, "loss-nonfinite", timeout=30)
        assert writer.poll() is None, "the finding came only after the writer had ended"
        assert "train_loss became NaN at step 15" in line
        assert line.startswith("ERROR ")
        time.sleep(0.6)  # more NaN rows arrive and change the message: not printed again
        (tmp_path / "stop").touch()
        writer.wait(timeout=10)
        watcher.send_signal(sig)
        assert watcher.wait(timeout=20) == 1
        after = _rest(lines)
        stderr = watcher.stderr.read() if watcher.stderr else ""
    finally:
        for proc in (writer, watcher):
            if proc.poll() is None:
                proc.kill()
    printed = before + after
    assert sum("loss-nonfinite" in x for x in printed) == 1
    assert printed[-1].startswith("Found 1 error")
    assert stderr.splitlines()[0] == "watching run (poll 0.2s, Ctrl-C to stop)"
    assert (
        stderr.splitlines()[-1]
        == f"diag: stopped ({'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'})"
    )
    assert "Traceback" not in stderr


def test_healthy_run_ends_by_itself_when_idle(tmp_path: Path) -> None:
    writer = _start_writer(tmp_path, nan_at=10_000, rows=25, delay=0.05)
    watcher, lines = _start_watch(
        tmp_path, "--until-idle", "1", "--format", "json", "-o", "report.json"
    )
    try:
        writer.wait(timeout=20)
        ended_writer = time.monotonic()
        assert watcher.wait(timeout=20) == 0
        assert time.monotonic() - ended_writer > 0.5  # it waited for the idle second
        printed = _rest(lines)
    finally:
        for proc in (writer, watcher):
            if proc.poll() is None:
                proc.kill()
    assert len(printed) == 1 and printed[0].startswith("Found 0 errors, 0 warnings, 0 info")
    report = json.loads((tmp_path / "report.json").read_text())
    (logs,) = [i for i in report["inputs"] if i["role"] == "logs"]
    assert logs["points"] >= 25  # the whole run: the last check saw every row


# --------------------------------------------------------------- in process, step by step


def _drive(
    root: Path, steps: list[Callable[[], None]], **options: object
) -> tuple[int, list[str], list[str], list[str]]:
    """Watch `root`, performing one writer step at each poll's sleep; after the last step
    one more poll, then Ctrl-C. Returns the exit code, stdout lines, stderr lines, and the
    stdout lines printed by the end of each poll."""
    out, err = io.StringIO(), io.StringIO()
    now = [0.0]
    by_poll: list[str] = []
    pending = list(steps)

    def sleep(seconds: float) -> None:
        by_poll.append(out.getvalue())
        now[0] += seconds
        if pending:
            pending.pop(0)()
        elif "until_idle" not in options:
            raise KeyboardInterrupt

    watching = WatchOptions(path=str(root), interval=0.2, **options)  # type: ignore[arg-type]
    code = watch(watching, CheckOptions(), out, err, clock=lambda: now[0], sleep=sleep)
    return code, out.getvalue().splitlines(), err.getvalue().splitlines(), by_poll


def _rows(steps: range, loss: Callable[[int], float] = lambda s: 2.0 * 0.9**s) -> str:
    return "".join(f"{s // 5},{s},{loss(s):.6f},\n" for s in steps)


def test_half_written_csv_row_waits_for_its_end(tmp_path: Path) -> None:
    csv = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(HEADER + _rows(range(12)))

    def append(text: str) -> Callable[[], None]:
        return lambda: csv.open("a").write(text)

    # A tiny loss cut mid-number reads as a jump ("1.5e-05" as "1.5"), then a NaN cut short.
    steps = [append("2,12,1.5"), append("e-05,\n"), append("2,13,na"), append("n,\n")]
    code, printed, errors, by_poll = _drive(tmp_path, steps)
    assert code == 1
    findings = [line for line in printed if not line.startswith("Found")]
    assert len(findings) == 1 and "loss-nonfinite" in findings[0]
    assert "became NaN at step 13" in findings[0]
    # Polls after the half rows printed nothing: the finding came with the row's end.
    assert not any("loss-" in text for text in by_poll[:4])
    assert "loss-nonfinite" in by_poll[4]
    assert errors == [f"watching {tmp_path} (poll 0.2s, Ctrl-C to stop)", "diag: stopped (Ctrl-C)"]


def test_trainer_state_mid_write_is_not_an_error(tmp_path: Path) -> None:
    state = tmp_path / "trainer_state.json"
    history = [{"step": s, "epoch": s / 10, "loss": 2.0 * 0.9**s} for s in range(1, 11)]
    state.write_text(json.dumps({"global_step": 10, "log_history": history}))
    nan_history = [*history, {"step": 11, "epoch": 1.1, "loss": float("nan")}]
    whole = json.dumps({"global_step": 11, "log_history": nan_history})
    steps = [
        lambda: state.write_text(whole[: len(whole) // 2]),  # the Trainer rewrites it whole
        lambda: state.write_text(whole),
    ]
    code, printed, errors, by_poll = _drive(tmp_path, steps, verbose=True)
    assert code == 1
    assert [line.split(": ")[1] for line in printed[:-1]] == ["loss-nonfinite"]
    assert "loss-nonfinite" not in by_poll[1]  # the half document: the old state kept
    (note,) = [line for line in errors if "not ready" in line]
    assert "trainer_state.json: not JSON" in note


def test_last_row_without_newline_counts_once_the_run_is_idle(tmp_path: Path) -> None:
    log = tmp_path / "train.csv"
    log.write_text("step,train_loss\n" + "".join(f"{s},{2.0 * 0.9**s}\n" for s in range(10)))
    steps = [lambda: log.open("a").write("10,nan")]  # a writer that never ends its last line
    code, printed, errors, _ = _drive(log, steps, until_idle=1.0)
    assert code == 1
    assert "loss-nonfinite" in printed[0] and "at step 10" in printed[0]
    assert errors[-1] == "diag: no change for 1s: the run has ended"


def test_a_plateau_the_next_rows_undo_is_never_printed(tmp_path: Path) -> None:
    """Flat for the first 2 of 5 steps is a plateau over 40% of the run, by
    loss-not-decreasing's thresholds, and nothing once the loss has fallen for 5 more:
    a judgement is printed only when a check a quarter further on still makes it. A NaN
    is a fact: printed at once."""
    log = tmp_path / "train.csv"
    flat = lambda s: 2.0 if s < 2 else 2.0 * 0.8 ** (s - 1)  # noqa: E731
    log.write_text("step,train_loss\n" + "".join(f"{s},{flat(s)}\n" for s in range(5)))
    more = [lambda s=s: log.open("a").write(f"{s},{flat(s)}\n") for s in range(5, 12)]
    more.append(lambda: log.open("a").write("12,nan\n"))
    code, printed, _, by_poll = _drive(log, more)
    assert code == 1
    assert not any("loss-not-decreasing" in text for text in by_poll)
    assert [line.split(": ")[1] for line in printed[:-1]] == ["loss-nonfinite"]


def test_a_judgement_that_holds_is_printed_once_more_data_agrees(tmp_path: Path) -> None:
    log = tmp_path / "train.csv"
    log.write_text("step,train_loss\n" + "".join(f"{s},2.0\n" for s in range(10)))
    more = [lambda s=s: log.open("a").write(f"{s},2.0\n") for s in range(10, 14)]
    code, printed, _, by_poll = _drive(log, more)
    assert code == 0  # a warning: --fail-on error
    # First seen with the log at step 9: it waits for step 11 (a quarter further on).
    assert "loss-not-decreasing" not in by_poll[1]  # step 10
    assert "loss-not-decreasing" in by_poll[2]  # step 11
    assert sum("loss-not-decreasing" in line for line in printed) == 1


def test_exit_on_finding_stops_at_the_first_failing_finding(tmp_path: Path) -> None:
    log = tmp_path / "train.csv"
    log.write_text("step,train_loss\n" + "".join(f"{s},{2.0 * 0.9**s}\n" for s in range(10)))
    more = [lambda: log.open("a").write("10,nan\n"), lambda: log.open("a").write("11,1.0\n")]
    code, printed, errors, by_poll = _drive(log, more, exit_on_finding=True)
    assert code == 1
    assert len(by_poll) == 1  # no poll after the one that found it
    assert "loss-nonfinite" in printed[0]
    assert errors[-1] == "diag: stopped at the first finding at or above error"


def test_a_folder_that_never_becomes_readable_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no run here yet\n")
    with pytest.raises(InputError, match="no training logs found"):
        _drive(tmp_path, [], until_idle=1.0)


def _safetensors_bytes(path: Path, tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    path.parent.mkdir(parents=True, exist_ok=True)
    return save(tensors)


def test_checkpoint_appearing_mid_watch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = {
        "fc.weight": (rng.normal(size=(16, 16)) * 0.25).astype(np.float32),
        "fc.bias": np.zeros(16, np.float32),
    }

    def save_checkpoint(step: int, cut: bool = False) -> None:
        folder = tmp_path / f"checkpoint-{step}"
        tensors = {k: v + 0.01 * step for k, v in weights.items()}
        if step >= 2:
            tensors["fc.weight"][3, 5] = np.nan
        data = _safetensors_bytes(folder / "model.safetensors", tensors)
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2] if cut else data)
        if not cut:
            history = [{"step": s, "epoch": s / 10, "loss": 1.0 / s} for s in range(1, step + 1)]
            state = {"global_step": step, "log_history": history}
            (folder / "trainer_state.json").write_text(json.dumps(state))

    save_checkpoint(1)
    steps = [
        lambda: save_checkpoint(2, cut=True),  # the weights half written
        lambda: save_checkpoint(2),
        lambda: save_checkpoint(3),  # the same NaN again in the newest checkpoint
    ]
    code, printed, _, by_poll = _drive(tmp_path, steps)
    assert code == 1
    assert not by_poll[1]  # the half-written checkpoint: nothing said
    (finding,) = [line for line in printed if "nonfinite-parameter" in line]
    assert f"{tmp_path}/checkpoint-2/model.safetensors:fc.weight: nonfinite-parameter:" in finding
    assert printed[-1].startswith("Found 1 error")


# --------------------------------------------------------------- refused at once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing"], "diag: error: missing: no such file or folder"),
        (["."], "diag: error: unknown rule or group: no-such-rule"),
    ],
)
def test_refused_at_once(tmp_path: Path, args: list[str], message: str) -> None:
    flags = ["--select", "no-such-rule"] if args == ["."] else []
    proc = subprocess.run(
        [*DIAG, "watch", *args, "--isolated", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(message)
