"""Training entry points: `train(config)` from plain code, `await train_async(config)` from a loop,
and `resume(path)` / `await resume_async(path)` to continue a run from its checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from htsrl_aio.config import TrainConfig
from htsrl_aio.trainer import Trainer

T = TypeVar("T")


def train(config: TrainConfig) -> dict[str, Any]:
    """Train to the end on a fresh event loop (uvloop when installed); return the summary."""
    return run_event_loop(train_async(config))


async def train_async(config: TrainConfig) -> dict[str, Any]:
    """Train to the end inside the running event loop; return the summary (also in summary.json)."""
    async with Trainer(config) as trainer:
        return await trainer.run()


def resume(path: str | Path, **overrides: Any) -> dict[str, Any]:
    """Continue the run in run directory `path` (or from checkpoint file `path`) to its total steps."""
    return run_event_loop(resume_async(path, **overrides))


async def resume_async(path: str | Path, **overrides: Any) -> dict[str, Any]:
    async with Trainer.resume(path, **overrides) as trainer:
        return await trainer.run()


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop: uvloop when importable, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
