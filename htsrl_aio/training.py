"""Training entry points: `train(config)` from plain code, `await train_async(config)` from a loop,
and `resume(path)` / `await resume_async(path)` to continue a run from its checkpoint.

`train()` and `resume()` own their event loop, and so, by default, the stop signals (stop_signals.py):
SIGINT, SIGTERM or SIGHUP ends the run cleanly with a stop checkpoint and raises RunInterruptedExit. The
async forms run in the caller's loop, whose application owns its signals: they handle none unless asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from htsrl_aio.config import TrainConfig
from htsrl_aio.errors import RunInterrupted, RunInterruptedExit
from htsrl_aio.stop_signals import run_trainer
from htsrl_aio.trainer import Trainer

T = TypeVar("T")
log = logging.getLogger(__name__)


def train(config: TrainConfig, *, handle_signals: bool = True) -> dict[str, Any]:
    """Train to the end on a fresh event loop (uvloop when installed); return the summary.

    With `handle_signals` (the default), the first SIGINT, SIGTERM or SIGHUP stops the run at the next
    swap with a checkpoint that resumes exactly, and a second one (or one before training started) stops
    it at once; the run's processes and shared memory are cleaned up, its sentence is logged as a
    warning (logger "htsrl_aio"), and RunInterruptedExit is raised: a RunInterrupted (an HtsrlError)
    that is also a SystemExit with status 128 + the signal number, so a script that does not catch it
    ends as `htsrl-aio train` does. `resume(run_dir)` continues the run. A signal the process ignores
    stays ignored (`nohup`). `handle_signals=False` leaves the signals to the process's own handlers (by
    default SIGTERM and SIGHUP kill it, with no stop checkpoint, and Ctrl-C raises KeyboardInterrupt).
    """
    return _run_owning_the_process(train_async(config, handle_signals=handle_signals))


async def train_async(config: TrainConfig, *, handle_signals: bool = False) -> dict[str, Any]:
    """Train to the end inside the running event loop; return the summary (also in summary.json).

    The application that owns the loop owns its signals, so none is handled unless `handle_signals` is
    true: then they are handled as by `train()`, on this loop (in the main thread only), and
    RunInterrupted is raised from this coroutine, without a log record. Cancelling the task that awaits
    it stops the run at once with the checkpoint of the last completed update (`Trainer`).
    """
    return await run_trainer(lambda: Trainer(config), handle_signals=handle_signals)


def resume(path: str | Path, *, handle_signals: bool = True, **overrides: Any) -> dict[str, Any]:
    """Continue the run in run directory `path` (or from checkpoint file `path`) to its total steps, on
    a fresh event loop; `overrides` may change only settings that leave results unchanged (`workers`,
    `progress`, ...). Stop signals are handled as by `train()`; `handle_signals=False` opts out."""
    return _run_owning_the_process(resume_async(path, handle_signals=handle_signals, **overrides))


async def resume_async(path: str | Path, *, handle_signals: bool = False, **overrides: Any) -> dict[str, Any]:
    """`resume()` inside the running event loop; as with `train_async()`, signals are handled only when
    `handle_signals` is true."""
    return await run_trainer(lambda: Trainer.resume(path, **overrides), handle_signals=handle_signals)


def _run_owning_the_process(main: Coroutine[Any, Any, T]) -> T:
    """`run_event_loop(main)`, where a stop signal's RunInterrupted leaves as RunInterruptedExit with its
    sentence logged: a script that does not catch it still says why it stopped. Raised only out here,
    as a SystemExit inside the loop would stop the loop before the run's own task ends."""
    try:
        return run_event_loop(main)
    except RunInterrupted as exc:
        log.warning("%s", exc)
        raise RunInterruptedExit(exc.signum, exc.note) from None


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop: uvloop when importable, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
