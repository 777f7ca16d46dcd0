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
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

CHILD_MARK = "HTSRL_AIO_CHILD"
WATCH_INTERVAL_S = 1.0  # how often the watchdog notes what the marked processes started
_MARKED = re.compile(rb"(?:^|\0)" + CHILD_MARK.encode() + rb"=([^\0]*)")


def new_mark() -> str:
    """A mark no other process of this machine carries."""
    return f"{os.getpid()}-{secrets.token_hex(6)}"


def marked(marks: set[str]) -> set[int]:
    """The processes whose environment carries one of `marks` (Linux /proc; none elsewhere). Only this
    user's processes can be read. A process that rewrote its title over its environment (setproctitle,
    as Ray's agents and workers do) shows no mark any more."""
    wanted = {mark.encode() for mark in marks}
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            match = _MARKED.search(environ.read_bytes())
        except OSError:  # gone meanwhile, or another user's
            continue
        if match is not None and match.group(1) in wanted:
            found.add(int(environ.parent.name))
    return found


def kill_marked(marks: set[str]) -> set[int]:
    """SIGKILL every process that carries one of `marks`, again until no new one turns up (one may have
    started another meanwhile), and return their pids."""
    killed: set[int] = set()
    while new := marked(marks) - killed:
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= new
    return killed


def kill_if_same(started: dict[int, int]) -> None:
    """SIGKILL each process of `started` (pid -> start time) that is still the process it was."""
    for pid, start_time in started.items():
        if start_time_of(pid) == start_time:  # not a new process that got its pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid` (Linux /proc; empty elsewhere), with its start time."""
    found: dict[int, int] = {}
    below = [pid]
    while below:
        parent = below.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in map(int, children.read_text().split()):
                    start_time = start_time_of(child)
                    if start_time is not None and child not in found:
                        found[child] = start_time
                        below.append(child)
    return found


def start_time_of(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), None if there is none: with the pid it names
    one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


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
        """Kill what carries the mark now and what the marked started, and end the watchdog (it does it)."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait()


def _watch(mark: str) -> None:
    """The watchdog: until the end of stdin (its parent closed it, or died), note once a second the marked
    processes' descendants (their marks may be overwritten: setproctitle); then kill them all."""
    below: dict[int, int] = {}
    while not select.select([sys.stdin], [], [], WATCH_INTERVAL_S)[0]:  # readable: at its end
        for pid in marked({mark}):
            below.update(descendants(pid))
    kill_marked({mark})
    kill_if_same(below)


if __name__ == "__main__":
    _watch(sys.argv[1])
