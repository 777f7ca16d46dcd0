"""Marks in the environment: which processes descend from what, whatever session or parent they end up
with, and a watchdog that kills the marked ones when this process dies, however it dies.

A process started with `CHILD_MARK=<mark>` in its environment passes it on to whatever it starts (unless
that is started with an environment of its own); /proc/<pid>/environ (Linux) shows it to this user. So
processes that left their process group, or whose parent died, can still be found. This module imports
nothing heavy: the watchdog runs it as a program (`python -m htsrl_aio.ipc.marks MARK`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

CHILD_MARK = "HTSRL_AIO_CHILD"
_MARKED = re.compile(rb"(?:^|\0)" + CHILD_MARK.encode() + rb"=([^\0]*)")


def new_mark() -> str:
    """A mark no other process of this machine carries."""
    return f"{os.getpid()}-{secrets.token_hex(6)}"


def kill_marked(marks: set[str]) -> list[int]:
    """SIGKILL every process whose environment carries one of `marks` (Linux /proc; nothing elsewhere)
    and return their pids. Only this user's processes can be read, and only those can be killed."""
    wanted = {mark.encode() for mark in marks}
    killed = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            found = _MARKED.search(environ.read_bytes())
        except OSError:  # gone meanwhile, or another user's
            continue
        if found is not None and found.group(1) in wanted:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(environ.parent.name), signal.SIGKILL)
                killed.append(int(environ.parent.name))
    return killed


class MarkWatchdog:
    """A mark, and a process that kills whatever carries it once this process closes the watchdog or
    dies. The watchdog leads a session of its own, so a signal to this process group does not reach it,
    and it learns of this process's death as the end of its stdin, a pipe from here."""

    def __init__(self) -> None:
        self.mark = new_mark()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {key: value for key, value in os.environ.items() if key != CHILD_MARK}  # never itself
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen([sys.executable, "-m", "htsrl_aio.ipc.marks", self.mark],
                                         stdin=subprocess.PIPE, env=env, start_new_session=True)

    @contextlib.contextmanager
    def marking(self) -> Iterator[None]:
        """Processes this one starts meanwhile (and what they start) carry the mark."""
        previous = os.environ.get(CHILD_MARK)
        os.environ[CHILD_MARK] = self.mark
        try:
            yield
        finally:
            if previous is None:
                del os.environ[CHILD_MARK]
            else:
                os.environ[CHILD_MARK] = previous

    def close(self) -> None:
        """Kill what carries the mark now, and end the watchdog (it does both)."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait()


def _watch(mark: str) -> None:
    """The watchdog: wait for the end of stdin (its parent closed it, or died), then kill the marked."""
    sys.stdin.buffer.read()
    kill_marked({mark})


if __name__ == "__main__":
    _watch(sys.argv[1])
