"""Child processes watched by the event loop: messages and deaths arrive as loop callbacks.

The pipe and the process sentinel are registered with `add_reader`, so waiting on a child costs
nothing and never spins. Used for env workers, the env check and the learner process.

Each child leads a process group of its own, which the processes an env starts (a simulator, a game
server) join: when the child ends, however it ends, whatever is left of its group is killed. Processes
that left the group (a new session, a daemon) are found in /proc (Linux) and killed too: by the mark
each child puts in its environment, which they inherit (`CHILD_MARK`; also after the child died, when
they are orphans no parent chain leads to), and, when it is asked to close, as its descendants then. So
nothing an env started outlives its child or the run, short of a SIGKILL to the run itself.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing import connection, resource_tracker
from pathlib import Path
from typing import Any

from htsrl_aio.errors import ConfigError
from htsrl_aio.ipc.marks import CHILD_MARK, descendants, kill_if_same, kill_marked, new_mark

CLOSE_TIMEOUT_S = 5.0
# Signals a terminal, `timeout`, systemd or Slurm send to the whole process group to stop a run. Only
# the parent acts on them: it stops its children in order, after the stop checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_S = 1.0

# spawn, not fork: a forked child would inherit torch's thread pools and the running event loop.
# Plain multiprocessing, not torch.multiprocessing: a child imports this module first, and env workers
# and the env check need no torch (importing it costs each of them 1-2 CPU seconds at start-up). The
# learner's module imports torch.multiprocessing, which makes tensors sent to its child shared memory.
_CONTEXT = multiprocessing.get_context("spawn")


class WatchedChild:
    """One spawned process, its duplex pipe, and loop callbacks for its messages and its exit."""

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...],
                 on_message: Callable[[Any], None], on_exit: Callable[[int | None], None]) -> None:
        self.name = name
        self._on_message = on_message
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        require_guarded_main()
        self.conn, child_conn = _CONTEXT.Pipe(duplex=True)
        self.mark = new_mark()
        self.process = _CONTEXT.Process(target=_child_main,
                                        args=(target, os.getpid(), self.mark, child_conn, *args),
                                        daemon=True, name=name)
        with stop_signals_blocked():
            self.process.start()
        child_conn.close()
        self._watching = True
        self._closing = False
        self._started: dict[int, int] = {}  # its descendants, as found when it was asked to close
        self._loop.add_reader(self.conn.fileno(), self._readable)
        self._loop.add_reader(self.process.sentinel, self._exited)
        # uvloop makes a watched fd non-blocking, but Connection.recv() reads a message in several
        # reads: one larger than the pipe buffer (an env state, an optimizer state) would then fail
        # half-read with BlockingIOError. Readable means a message has started; the rest follows.
        os.set_blocking(self.conn.fileno(), True)

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self._on_message(self.conn.recv())
        except (EOFError, OSError):
            self._exited()
        except Exception:  # a message this process cannot unpickle (code changed under a running child)
            self.process.kill()  # a child we cannot understand is a dead child: never wait on it
            self._exited()

    def _exited(self) -> None:
        self._unwatch()
        if not self._closing:
            _kill_group(self.process)  # what its envs started dies with it (before it is reaped)
            kill_marked({self.mark})  # and what left its group, now an orphan
            self.process.join(timeout=1.0)
            self._on_exit(self.process.exitcode)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self.conn.fileno())
            self._loop.remove_reader(self.process.sentinel)

    def request_close(self) -> None:
        """Stop listening and ask the child to exit; `join` then waits for it."""
        if self._closing:
            return
        self._closing = True
        self._unwatch()
        # Found while it lives: once it has exited they are orphans, no longer found from it.
        self._started = descendants(self.process.pid)
        with contextlib.suppress(OSError):
            self.conn.send(("close",))

    def join(self) -> None:
        """Blocking: wait for the child, then kill it (it ignores SIGTERM), and what it started. Run it
        off the loop thread."""
        if not connection.wait([self.process.sentinel], CLOSE_TIMEOUT_S):
            self.process.kill()
            connection.wait([self.process.sentinel])
        # Exited but not reaped yet: its pid cannot be reused, so neither can its group's id.
        _kill_group(self.process)
        kill_if_same(self._started)
        self.process.join()
        self.conn.close()


async def close_children(children: list[WatchedChild]) -> None:
    """Ask every child to stop, then wait for all of them off the loop thread, and kill what carries
    their marks (one look through /proc for all of them)."""
    for child in children:
        child.request_close()

    def join_all() -> None:
        for child in children:
            child.join()
        kill_marked({child.mark for child in children})

    await asyncio.get_running_loop().run_in_executor(None, join_all)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back from this thread while it starts a process.

    A spawned child inherits the mask from its first instruction, so a Ctrl-C to the process group
    while it is still importing (seconds, for torch) cannot kill it with a traceback; `_child_main`
    then ignores them for good. Signals that arrive meanwhile reach this process when the block lifts.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (it unlinks the shared memory of a killed run) with the
    stop signals blocked: it ignores SIGINT and SIGTERM itself, but a SIGHUP to the process group would
    kill it and make every later unlink warn that it died."""
    with stop_signals_blocked():
        resource_tracker.ensure_running()


def _kill_group(process: Any) -> None:
    """Kill what is left of the process group `process` led (the processes its envs started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _child_main(target: Callable[..., None], parent_pid: int, mark: str, *args: Any) -> None:
    """Every child's entry: leave stop signals to the parent, die with the parent, lead a process group
    for whatever its envs start and mark their environment, then run `target`."""
    os.setpgid(0, 0)
    os.environ[CHILD_MARK] = mark
    _show_name()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _exit_with_parent(parent_pid)
    target(*args)


def _show_name() -> None:
    """Name the process after its WatchedChild (cut to the kernel's 15 characters: "htsrl-env-worke",
    "htsrl-learner"), so that ps, top and /proc tell env workers from the learner, not all "python"."""
    with contextlib.suppress(OSError):  # no /proc (not Linux)
        Path("/proc/self/comm").write_text(multiprocessing.current_process().name[:15])


def _exit_with_parent(parent_pid: int) -> None:
    """An orphan must not outlive a killed parent, even while an env is stuck inside step().

    On Linux the kernel kills it when the parent dies (PR_SET_PDEATHSIG, which fires when the parent
    thread that started it ends: the event loop's thread, which outlives the run); elsewhere a thread
    polls for the parent, which works while the main thread runs Python or releases the GIL.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL)) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):  # not Linux
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told to watch it
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(_PARENT_POLL_S)
    os._exit(1)


def require_guarded_main() -> None:
    """Refuse to spawn from unguarded top-level code of the main script, in one sentence.

    A spawned child re-runs the main script to rebuild its module: training started at its top level
    would start again in every child, which dies with a multiprocessing traceback before it runs.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>"
                                     and frame.f_globals is getattr(main, "__dict__", None)):
        frame = frame.f_back
    if frame is None or path is None or _guarded(path, frame.f_lineno):
        return
    raise ConfigError(
        f"{path} starts training at its top level (line {frame.f_lineno}) without "
        "`if __name__ == \"__main__\":`; worker processes are spawned and re-run the script, so put the "
        "code that starts training under that guard.")


@functools.lru_cache(maxsize=8)
def _guarded(path: str, line: int) -> bool:
    """Whether line `line` of the script lies inside an `if __name__ == "__main__":` block."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True  # cannot tell: let multiprocessing have its say
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) \
                and "__name__" in ast.unparse(node.test)
    return True
