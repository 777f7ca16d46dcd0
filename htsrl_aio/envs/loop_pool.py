"""LoopEnvPool: AsyncEnv replicas stepped as tasks on the training event loop, no process at all.

Same interface as EnvPool (reset/step by env id, observations written into the storage slot the
command names), so the scheduler cannot tell the two apart and every ticket guarantee holds: an
env's own latency changes when its reply arrives, never what it contains or where it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from htsrl_aio.envs import state as env_state
from htsrl_aio.envs.async_env import close_env
from htsrl_aio.envs.factory import EnvFactory
from htsrl_aio.envs.pool import MAX_RESTARTS_PER_ENV
from htsrl_aio.envs.replica import EpisodeTracker, StepResult, TrackerState
from htsrl_aio.errors import EnvError


class LoopEnvPool:
    def __init__(self, factory: EnvFactory, num_envs: int, run_seed: int, obs_buffers: list[np.ndarray],
                 final_obs: np.ndarray, on_env_error: str = "stop",
                 on_restart: Callable[[str, str], None] | None = None) -> None:
        self.factory = factory
        self.restart = on_env_error == "restart"
        self._on_restart = on_restart or (lambda message, details: None)
        self.restarts = 0
        self._restarts_of_env = [0] * num_envs
        self.num_envs = num_envs
        self.obs_buffers = obs_buffers
        self.final_obs = final_obs
        obs_shape = final_obs.shape[1:]
        self._trackers = [EpisodeTracker(i, run_seed, obs_shape) for i in range(num_envs)]
        self._envs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        try:
            self._envs = [self.factory() for _ in range(self.num_envs)]
        except Exception as exc:
            raise EnvError(f"could not create env of {self.factory.name!r}: "
                           f"{type(exc).__name__}: {exc}") from exc

    def reset(self, env_id: int, buf: int, t: int) -> asyncio.Future:
        return self._spawn(env_id, self._reset, buf, t)

    def step(self, env_id: int, action: int, buf: int, t: int) -> asyncio.Future:
        return self._spawn(env_id, self._step, action, buf, t)

    def get_state(self, env_id: int) -> asyncio.Future:
        return self._spawn(env_id, self._get_state)

    def set_state(self, env_id: int, blob: bytes | None, tracker: TrackerState) -> asyncio.Future:
        return self._spawn(env_id, self._set_state, blob, tracker)

    async def _get_state(self, env_id: int) -> tuple[bytes | None, TrackerState]:
        return env_state.capture(self._envs[env_id]), self._trackers[env_id].state()

    async def _set_state(self, env_id: int, blob: bytes | None, tracker: TrackerState) -> str | None:
        self._trackers[env_id].load(tracker)
        if blob is None:
            return "the env's state could not be saved"
        try:
            self._envs[env_id] = env_state.restore(blob, self._envs[env_id])
        except env_state.ForeignState as exc:
            return str(exc)
        return None

    def _spawn(self, env_id: int, work: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task:
        task = asyncio.ensure_future(self._named_errors(env_id, work, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _named_errors(self, env_id: int, work: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        # The env's coroutine is created here, so a task cancelled before it starts leaves none behind.
        try:
            return await work(env_id, *args)
        except Exception as exc:
            message, details = f"{type(exc).__name__}: {exc}", traceback.format_exc()
            if self.restart and work in (self._step, self._reset) \
                    and self._restarts_of_env[env_id] < MAX_RESTARTS_PER_ENV - 1:
                self._restarts_of_env[env_id] += 1
                self.restarts += 1
                what = f"env {env_id} of {self.factory.name!r} failed and was re-created: {message}"
                self._on_restart(what, details)
                return await self._start_over(env_id, *args[-2:], lost_step=work == self._step)
            error = EnvError(f"env {env_id} of {self.factory.name!r} failed: {message}")
            error.details = details
            raise error from exc

    async def _start_over(self, env_id: int, buf: int, t: int, lost_step: bool) -> StepResult | None:
        """Like the worker's: a new env and episode; the lost step is a truncation with reward 0."""
        with contextlib.suppress(Exception):
            await close_env(self._envs[env_id])
        self._envs[env_id] = self.factory()
        await self._reset(env_id, buf, t)
        if not lost_step:
            return None
        self.final_obs[env_id] = self.obs_buffers[buf][t - 1, env_id]
        return StepResult(0.0, False, True, None)

    async def _reset(self, env_id: int, buf: int, t: int) -> None:
        tracker = self._trackers[env_id]
        obs, _info = await self._envs[env_id].reset(seed=tracker.next_reset_seed())
        tracker.write_obs(self.obs_buffers[buf][t, env_id], obs, "reset()")

    async def _step(self, env_id: int, action: int, buf: int, t: int) -> StepResult:
        env, tracker = self._envs[env_id], self._trackers[env_id]
        outcome = tracker.on_step(await env.step(action), self.final_obs[env_id])
        obs = outcome.obs
        if outcome.result.episode is not None:
            obs, _info = await env.reset(seed=tracker.next_reset_seed())
        tracker.write_obs(self.obs_buffers[buf][t, env_id], obs, "step()")
        return outcome.result

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for env in self._envs:
            with contextlib.suppress(Exception):  # best effort: the run's outcome is already decided
                await close_env(env)
