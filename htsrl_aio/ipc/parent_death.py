"""`python -m htsrl_aio.ipc.parent_death PARENT_PID COMMAND...`: run COMMAND so that it gets exactly one
SIGTERM when process PARENT_PID dies, however it dies, and pass on every SIGTERM this process gets.

A `htsrl-aio train` process stops at its next swap with a checkpoint that resumes exactly on its first
SIGTERM and at once on a second. Linux's parent-death signal (PR_SET_PDEATHSIG) fires each time the
*thread* that is the process's parent exits, so a child of a multi-threaded parent (asyncio's child
watchers are threads) may get it twice as that parent dies. This process is single-threaded and stands
between them: it dies with PARENT_PID (SIGKILL, as often as it comes), and its death sends COMMAND
exactly one SIGTERM. It exits with COMMAND's status (128 + N when a signal N ended it). Linux only;
elsewhere COMMAND simply runs. It imports nothing of htsrl-aio, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def command(parent_pid: int, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` under this guard for process `parent_pid`."""
    return [sys.executable, "-m", __name__, str(parent_pid), *argv]


def signal_on_parent_death(parent_pid: int, signum: int) -> None:
    """Have the kernel send this process `signum` when its parent thread exits; exit now if process
    `parent_pid` is no longer the parent (it died before the kernel was told to watch it)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent_pid:
        os._exit(128 + signum)


def main(argv: Sequence[str]) -> int:
    parent_pid, command_argv = int(argv[0]), list(argv[1:])
    signal_on_parent_death(parent_pid, signal.SIGKILL)
    watch_me = functools.partial(signal_on_parent_death, os.getpid(), signal.SIGTERM)
    child = subprocess.Popen(command_argv, preexec_fn=watch_me)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    code = child.wait()  # retried after each forwarded signal (PEP 475)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
