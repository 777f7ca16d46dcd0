"""Child processes watched by the event loop: messages and deaths arrive as loop callbacks.

The pipe and the process sentinel are registered with `add_reader`, so waiting on a child costs
nothing and never spins. Used for env workers and for the learner process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as tmp

CLOSE_TIMEOUT_S = 5.0

# spawn, not fork: a forked child would inherit torch's thread pools and the running event loop.
# torch's context also shares tensors (a learner's parameters) through shared memory when pickled.
_CONTEXT = tmp.get_context("spawn")


class WatchedChild:
    """One spawned process, its duplex pipe, and loop callbacks for its messages and its exit."""

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...],
                 on_message: Callable[[Any], None], on_exit: Callable[[int | None], None]) -> None:
        self.name = name
        self._on_message = on_message
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self.conn, child_conn = _CONTEXT.Pipe(duplex=True)
        self.process = _CONTEXT.Process(target=target, args=(child_conn, *args), daemon=True, name=name)
        self.process.start()
        child_conn.close()
        self._watching = True
        self._closing = False
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

    def _exited(self) -> None:
        self._unwatch()
        if not self._closing:
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
        with contextlib.suppress(OSError):
            self.conn.send(("close",))

    def join(self) -> None:
        """Blocking: wait for the child, then terminate, then kill. Run it off the loop thread."""
        self.process.join(timeout=CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


async def close_children(children: list[WatchedChild]) -> None:
    """Ask every child to stop, then wait for all of them off the loop thread."""
    for child in children:
        child.request_close()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [c.join() for c in children])
