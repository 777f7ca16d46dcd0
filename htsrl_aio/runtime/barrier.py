"""SwapBarrier: the one place where collection and learning meet.

A cyclic barrier for a fixed number of parties. The last party to arrive runs `on_swap` (exchange the
storages, publish parameters) before anyone is released, so no party can observe a half-done swap.
`on_swap` may return an awaitable (a checkpoint): everyone stays paused until it is done.
Nothing spins: waiters await a future. If the run stops early, `abort` wakes every waiter with
`BarrierAborted` so nobody is left waiting forever.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


class BarrierAborted(RuntimeError):
    """The barrier was aborted (the run is stopping); no swap will happen."""


class SwapBarrier:
    def __init__(self, parties: int, on_swap: Callable[[int], Awaitable[None] | None] | None = None,
                 generation: int = 0) -> None:
        """`generation`: the index of the first swap (a run resumed after swap g starts at g + 1)."""
        if parties < 1:
            raise ValueError("a barrier needs at least one party")
        self.parties = parties
        self._on_swap = on_swap
        self._generation = generation
        self._waiters: list[asyncio.Future[int]] = []
        self._aborted: BaseException | None = None

    @property
    def generation(self) -> int:
        """How many swaps have completed."""
        return self._generation

    @property
    def arrived(self) -> int:
        return len(self._waiters)

    async def wait(self) -> int:
        """Arrive and wait for the swap; returns the index of the swap this party took part in."""
        if self._aborted is not None:
            raise BarrierAborted("barrier aborted") from self._aborted
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            if len(self._waiters) == self.parties:
                await self._release(future)
            return await future
        except asyncio.CancelledError:
            # Nobody awaits this party's future any more, so it must not be left holding an abort that
            # asyncio would print as "exception was never retrieved" (a party cancelled while it runs
            # on_swap, before or after the run aborted the barrier).
            if future.done() and not future.cancelled():
                future.exception()
            else:
                # A party that leaves can never arrive again: everyone else must not wait for it.
                future.cancel()
                self.abort()
            raise

    async def _release(self, own: asyncio.Future[int]) -> None:
        """Run on_swap as party `own` (the last to arrive), then release everyone."""
        waiters = self._waiters
        generation = self._generation
        try:
            if self._on_swap is not None:
                pending = self._on_swap(generation)
                if inspect.isawaitable(pending):
                    await pending
        except Exception as exc:
            # The party that ran on_swap raises the failure itself; the others see BarrierAborted. A
            # party cancelled meanwhile has aborted the barrier already, failing `own` too: that
            # BarrierAborted is only a consequence of `exc`, which must not be masked.
            if not own.cancel():
                own.exception()
            self.abort(exc)
            raise
        if self._aborted is not None:  # aborted from elsewhere while on_swap was running
            return
        self._waiters = []
        self._generation += 1
        for future in waiters:
            if not future.done():
                future.set_result(generation)

    def abort(self, cause: BaseException | None = None) -> None:
        """Wake every waiter, now and later, with BarrierAborted (chained to `cause`)."""
        if self._aborted is None:
            self._aborted = cause or BarrierAborted("barrier aborted")
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                error = BarrierAborted("barrier aborted")
                error.__cause__ = cause
                future.set_exception(error)

    @property
    def aborted(self) -> bool:
        return self._aborted is not None
