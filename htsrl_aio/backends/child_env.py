"""ChildEnv: one env in a child process of its own, each call bounded by --env-timeout (how `eval` plays).

A plain env's call runs in the thread that makes it: one that never returns cannot be cut short there,
and it holds Ctrl-C back with it. In a `WatchedChild` such an env is killed instead, and the caller's
event loop stays free to take Ctrl-C. The env's own exception, a call that outlasts --env-timeout and a
child that dies each end the caller's work as one EnvError sentence naming the env and the call.
"""

from __future__ import annotations

import asyncio
import inspect
from multiprocessing.connection import Connection
from typing import Any

from htsrl_aio.envs.async_env import close_env
from htsrl_aio.envs.factory import EnvFactory
from htsrl_aio.errors import EnvError, EnvTimeout
from htsrl_aio.ipc.children import WatchedChild, close_children

MAKE = "make"  # the call that builds the env in the child
GETATTR = "getattr"  # the call that reads one of its attributes


class ChildEnv:
    """The env `factory` builds, in a child process; `call` runs one of its methods there."""

    def __init__(self, factory: EnvFactory, timeout: float | None) -> None:
        """Start the child (in a running loop); `timeout`: seconds each call may take, None for no limit."""
        self.name = factory.name
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        # Resolved once the child has imported what it needs: its calls are timed from then on.
        self._started: asyncio.Future[None] = self._loop.create_future()
        self._reply: asyncio.Future[tuple[str, Any]] | None = None
        self._broken = False  # a call timed out or the child died: nothing more to ask it
        self._closed = False
        self._child = WatchedChild("htsrl-env", _serve, (factory,), self._on_message, self._on_exit)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`env.<method>(*args, **kwargs)` in the child (awaited there when it is a coroutine); `MAKE`
        builds the env, `GETATTR` reads an attribute (`getattr(env, *args)`)."""
        what = "the env's constructor" if method == MAKE else f"{method}()"
        await asyncio.shield(self._started)
        if self._broken:
            raise EnvError(f"env {self.name!r} cannot take {what}: its process was stopped.")
        self._reply = self._loop.create_future()
        self._child.send((method, args, kwargs))
        try:
            kind, value = await asyncio.wait_for(asyncio.shield(self._reply), self._timeout)
        except asyncio.TimeoutError:
            self._stop()
            raise EnvError(f"env {self.name!r}: {EnvTimeout(what, self._timeout or 0)}.") from None
        except asyncio.CancelledError:  # Ctrl-C: the answer will never be read, nor the call finish
            self._stop()
            raise
        finally:
            self._reply = None
        if kind == "error":
            raise EnvError(f"env {self.name!r} failed in {what}: {value}.")
        if kind == "exited":
            raise EnvError(f"{what} of env {self.name!r} ended its process (exit code {value}) without "
                           "raising an exception (os._exit, a signal, a crash in native code); raise one "
                           "instead.")
        return value

    async def aclose(self) -> None:
        """Close the env (its close() gets the few seconds `close_children` gives) and end the child."""
        if self._closed:
            return
        self._closed = True
        if not self._started.done():
            self._stop()
        await close_children([self._child])

    def _stop(self) -> None:
        self._broken = True
        self._child.process.kill()

    def _on_message(self, message: tuple[str, Any]) -> None:
        if message[0] == "started":
            self._started.set_result(None)
        elif self._reply is not None and not self._reply.done():
            self._reply.set_result(message)

    def _on_exit(self, code: int | None) -> None:
        self._broken = True
        if not self._started.done():
            self._started.set_exception(EnvError(
                f"the process of env {self.name!r} exited with code {code} while it started."))
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(("exited", code))


def _serve(conn: Connection, factory: EnvFactory) -> None:
    """The child: build the env when asked, run each call asked of it, close it when told to exit."""
    env: Any = None
    loop = asyncio.new_event_loop()  # an AsyncEnv's coroutines run on it
    conn.send(("started", None))
    try:
        while (message := conn.recv()) != ("close",):
            method, args, kwargs = message
            try:
                if method == MAKE:
                    env, value = factory(), None
                elif method == GETATTR:
                    value = getattr(env, *args)
                else:
                    value = getattr(env, method)(*args, **kwargs)
                    if inspect.isawaitable(value):
                        value = loop.run_until_complete(value)
                conn.send(("ok", value))  # pickled before anything is written: a failure sends nothing
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if env is not None:
            loop.run_until_complete(close_env(env))
        loop.close()
