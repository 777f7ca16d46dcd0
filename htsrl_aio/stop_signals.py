"""Stop signals for a run that owns its process: `train()` and `resume()`, and so `htsrl-aio train`.

The first SIGINT, SIGTERM or SIGHUP stops the run at the next swap with a checkpoint that resumes
exactly (`Trainer.stop_at_next_swap`, which cancels instead past --stop-timeout); a second one, or one
before training has started, cancels it at once (the checkpoint of the last completed update). Either
way the run cleans up as it ends and RunInterrupted is raised, instead of the process dying from the
signal with nothing written.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from htsrl_aio.errors import STOPPED_BY, RunInterrupted

if TYPE_CHECKING:
    from htsrl_aio.trainer import Trainer


async def run_trainer(make_trainer: Callable[[], Trainer], *, handle_signals: bool) -> dict[str, Any]:
    """Run the trainer `make_trainer()` returns to the end and return its summary. With `handle_signals`,
    a stop signal ends it as described above, with RunInterrupted.

    The handlers live on the running loop for the run's lifetime only; the Python handlers they replaced
    are put back afterwards. A signal the process ignores stays ignored (`nohup` keeps a run alive when
    its terminal closes), and outside the main thread, where Python delivers no signal, none is handled.
    """
    from htsrl_aio.trainer import RunStopped  # torch loads with the trainer, not with this module

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []
    cancels = 0
    trainer: Trainer | None = None

    def on_signal(signum: int) -> None:
        nonlocal cancels
        received.append(signum)
        if len(received) == 1 and trainer is not None and trainer.stop_at_next_swap():
            return
        cancels += 1
        task.cancel()

    replaced: dict[int, Any] = {}  # signal -> the Python handler it had
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in STOPPED_BY:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                replaced[signum] = previous
                loop.add_signal_handler(signum, on_signal, signum)
    try:
        trainer = make_trainer()
        async with trainer:
            return await trainer.run()
    except (asyncio.CancelledError, RunStopped):
        if not received:
            raise
        if sys.version_info >= (3, 11):
            # Python 3.11+ counts the cancellations of a task: take back this function's own, so the
            # caller's task (a host's, under train_async) is not left marked as being cancelled.
            for _ in range(cancels):
                task.uncancel()
        raise RunInterrupted(received[0], "" if trainer is None else trainer.stop_note) from None
    finally:
        for signum, previous in replaced.items():
            loop.remove_signal_handler(signum)
            if previous is not None:  # None: not set from Python; the loop leaves the default then
                signal.signal(signum, previous)
