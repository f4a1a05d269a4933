"""Run the diag CLI with an audit hook that logs every file it opens, lists or spawns.

Used by the hostile-input tests as `python sandbox_boot.py check ...` with DIAG_AUDIT_LOG
naming the log; each line is `<event>\t<absolute path or command>`. The log is opened before
the hook is installed and written with os.write, so logging never logs itself.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import urllib.parse

# sqlite3 opens its database in C: the audit event is the only trace of it.
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.chdir", "shutil.copyfile", "sqlite3.connect"}
SPAWN_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn",
}  # fmt: skip


def _install(log_fd: int) -> None:
    def hook(event: str, args: tuple) -> None:
        if event in PATH_EVENTS:
            path = args[0] if args else None
            if isinstance(path, int) or path is None:
                return  # an already-open descriptor: its open was logged
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if event == "sqlite3.connect" and str(path).startswith("file:"):
                path = urllib.parse.unquote(str(path)[5:].split("?", 1)[0])  # a URI's file
            line = f"{event}\t{os.path.abspath(os.fspath(path))}\n"
        elif event == "ctypes.dlopen":  # torch loads its own libraries: checked like a read
            if not args or args[0] is None:
                return  # the running process itself
            line = f"dlopen\t{os.path.abspath(os.fsdecode(args[0]))}\n"
        elif event in SPAWN_EVENTS:
            line = f"spawn\t{event} {args!r:.200}\n"
        else:
            return
        os.write(log_fd, line.encode("utf-8", "backslashreplace"))

    sys.addaudithook(hook)

    def peak() -> None:
        # VmHWM, not ru_maxrss: after fork+exec ru_maxrss starts at the parent's RSS, and
        # the parent here is a pytest that may have trained models.
        with open("/proc/self/status", encoding="ascii") as status:
            hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        os.write(log_fd, f"peak_rss_kb\t{hwm}\n".encode())

    atexit.register(peak)


if __name__ == "__main__":
    _install(os.open(os.environ["DIAG_AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    sys.argv = ["diag", *sys.argv[1:]]
    runpy.run_module("diag", run_name="__main__", alter_sys=True)
