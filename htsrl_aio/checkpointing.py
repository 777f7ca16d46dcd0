"""Taking a run's checkpoints: inside a swap (exact), at a stop outside one, and at the end.

Each checkpoint is assembled from the components that own the state (checkpoint.py lists them): the
learner, the schedule and, inside a swap, the env replicas. Writes happen off the event loop, and
every write still in flight is awaited before the run directory is released (`drain`), so a resume
that follows at once never meets a half-written file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from htsrl_aio.assembly import RunParts
from htsrl_aio.checkpoint import (
    CHECKPOINT_DIR,
    FINAL,
    Checkpoint,
    Kind,
    load,
    newest,
    periodic_checkpoints,
    periodic_name,
)
from htsrl_aio.config import TrainConfig
from htsrl_aio.errors import ConfigError, HtsrlError, TrainingDiverged
from htsrl_aio.models import clone_params
from htsrl_aio.outputs.run_dir import CONFIG, recorded_start

# Waiting for an in-flight update before the stop checkpoint is bounded, so Ctrl-C always returns.
SETTLE_TIMEOUT_S = 30.0


class RunCheckpoints:
    def __init__(self, parts: RunParts, user_config: dict[str, Any] | None) -> None:
        self._parts = parts
        self._user_config = user_config
        self._writes: set[asyncio.Future[None]] = set()
        # The parameters of the last completed update: what a run that diverged or lost its learner keeps.
        self._last_good: dict[str, Any] | None = None

    def after_update(self, update: int) -> None:
        """Remember the parameters of a completed update (the learner is idle until the next swap)."""
        model = clone_params(self._parts.learner.model)
        self._last_good = {"update": update, "model": model, "optimizer": None}

    async def at_swap(self, generation: int, stopping: bool) -> None:
        """Inside swap `generation`, everything paused: every component, so it resumes exactly. A stop
        there also writes it as checkpoint.pt, so either file resumes exactly."""
        p = self._parts
        checkpoint = self._checkpoint("swap", stopping, await p.save(generation))
        await self._write(p.run_dir.save_periodic, checkpoint, generation, p.cfg.keep_checkpoints)
        if stopping:
            await self._write(p.run_dir.save_checkpoint, checkpoint)

    async def at_stop(self, failure: HtsrlError | None) -> Checkpoint | None:
        """Stopped outside a swap: keep what was learned up to the last completed update (after that
        update finished, if one was running). None, writing nothing, when no update completed since the
        run started or resumed: a fresh run then starts again from the beginning (`resume_point`), a
        resumed one stays at the checkpoint it resumed from."""
        p = self._parts
        try:
            if isinstance(failure, TrainingDiverged):
                raise failure  # the parameters may hold NaN: keep the last good ones
            # An update still running finishes (bounded) and writes its metrics row, so parameters,
            # optimizer and metrics agree.
            await asyncio.wait_for(p.scheduler.settle(), SETTLE_TIMEOUT_S)
            await asyncio.wait_for(p.learner.settle(), SETTLE_TIMEOUT_S)
            if self._last_good is None:
                return None
            parts = await p.save(None)
        except (HtsrlError, asyncio.TimeoutError):
            if self._last_good is None:
                return None
            parts = {**self._last_good, **p.scheduler.save(None)}
        checkpoint = self._checkpoint("stop", True, parts)
        p.run_dir.save_checkpoint(checkpoint)
        return checkpoint

    async def at_end(self) -> None:
        p = self._parts
        checkpoint = self._checkpoint("final", False, await p.save(None))
        p.run_dir.save_checkpoint(checkpoint)

    async def drain(self) -> None:
        """Wait for every write still in flight (a cancelled swap leaves its write running)."""
        if self._writes:
            await asyncio.wait(self._writes)

    def _checkpoint(self, kind: Kind, interrupted: bool, parts: dict[str, Any]) -> Checkpoint:
        return Checkpoint(kind, interrupted, self._parts.cfg.to_json_dict(), parts, self._user_config)

    async def _write(self, save: Callable[..., None], *args: Any) -> None:
        write = asyncio.get_running_loop().run_in_executor(None, save, *args)
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)


def resume_point(path: Path, overrides: dict[str, Any]
                 ) -> tuple[TrainConfig, Checkpoint | None, dict[str, Any] | None]:
    """The settings, checkpoint and settings the user gave that a run resumes from: run directory
    `path`'s newest resumable checkpoint, or the checkpoint file `path`. A run directory stopped before
    its first update (no checkpoint, no metrics) starts again from the beginning: no checkpoint, the
    settings config.json recorded, the same bits as a fresh run. `overrides` may change only
    RESUME_OVERRIDABLE settings."""
    if path.is_dir() and not (path / FINAL).exists() and not periodic_checkpoints(path):
        recorded, user = recorded_start(path)
        return TrainConfig.for_resume(recorded, user, overrides, str(path / CONFIG)), None, user
    file = path if path.is_file() else newest(path, resumable=True)
    state = load(file)
    if not state.resumable:
        raise ConfigError(f"{file} holds parameters only (the run diverged or its learner failed), so it "
                          "cannot be resumed; resume from a checkpoint in checkpoints/ instead.")
    config = TrainConfig.for_resume(state.config, state.user_config, overrides, str(file))
    config.logdir = str(file.parent.parent if file.parent.name == CHECKPOINT_DIR else file.parent)
    return config, state, state.user_config


def stop_note(checkpoint: Checkpoint | None, timed_out: float | None) -> str:
    """How a run stopped outside a swap ended, for the final sentence."""
    if checkpoint is None:
        return ""
    resumable = "its envs restart on resume" if checkpoint.resumable else "not resumable"
    waited = (f"the next swap did not come within --stop-timeout {timed_out:g} s, so it "
              if timed_out is not None else "")
    return f"{waited}stopped at once with checkpoint.pt of update {checkpoint.update} ({resumable})"


def swap_stop_note(update: int, generation: int) -> str:
    return (f"stopped at the swap after update {update} with a checkpoint that resumes exactly "
            f"({periodic_name(generation)})")
