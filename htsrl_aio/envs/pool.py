"""Parent side of the env workers: async reset/step per env id over pipes watched by the event loop.

Each worker is a `WatchedChild`: its pipe and exit are loop callbacks, so waiting for envs costs
nothing and never spins. Replies carry the env id; a reply resolves that env's future.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from htsrl_aio.envs.factory import EnvFactory
from htsrl_aio.envs.replica import StepResult, TrackerState
from htsrl_aio.envs.shm import SharedArray
from htsrl_aio.envs.worker import WorkerArgs, worker_main
from htsrl_aio.errors import EnvError
from htsrl_aio.procs import WatchedChild, close_children

_REPLIES: dict[str, Callable[[tuple], Any]] = {
    "reset": lambda _: None,
    "step": lambda fields: StepResult(*fields),
    "state": lambda fields: (fields[0], TrackerState(*fields[1])),
    "state_set": lambda fields: fields[0],
}


class EnvPool:
    """N env replicas spread over W worker processes, stepped by env id."""

    def __init__(self, factory: EnvFactory, num_envs: int, num_workers: int, run_seed: int,
                 obs_buffers: list[SharedArray], final_obs: SharedArray) -> None:
        self.factory = factory
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self.run_seed = run_seed
        self.obs_buffers = obs_buffers
        self.final_obs = final_obs
        self._workers: list[WatchedChild] = []
        self._worker_of_env: list[WatchedChild] = []
        self._pending: dict[int, asyncio.Future] = {}
        self._ready: list[asyncio.Future] = []
        self._failure: EnvError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Spawn the workers and wait until every replica is built."""
        self._loop = asyncio.get_running_loop()
        for index, ids in enumerate(np.array_split(np.arange(self.num_envs), self.num_workers)):
            env_ids = tuple(int(i) for i in ids)
            args = WorkerArgs(self.factory, env_ids, tuple(b.spec for b in self.obs_buffers),
                              self.final_obs.spec, self.run_seed)
            where = f"env worker {index} (envs {env_ids[0]}-{env_ids[-1]})"
            ready = self._loop.create_future()
            self._ready.append(ready)
            worker = WatchedChild(f"htsrl-env-worker-{index}", worker_main, (args,),
                                  functools.partial(self._dispatch, where, ready),
                                  functools.partial(self._on_exit, where))
            self._workers.append(worker)
            self._worker_of_env.extend(worker for _ in env_ids)
        await asyncio.gather(*self._ready)

    def reset(self, env_id: int, buf: int, t: int) -> asyncio.Future:
        """Reset env `env_id` (seeded by its episode count) into obs buffer `buf` at row `t`."""
        return self._send(env_id, ("reset", env_id, buf, t))

    def step(self, env_id: int, action: int, buf: int, t: int) -> asyncio.Future:
        """Step env `env_id`; its next observation lands in obs buffer `buf` at row `t`."""
        return self._send(env_id, ("step", env_id, action, buf, t))

    def get_state(self, env_id: int) -> asyncio.Future:
        """Resolves to (signed env state or None, TrackerState) of an idle env."""
        return self._send(env_id, ("get_state", env_id))

    def set_state(self, env_id: int, blob: bytes | None, tracker: TrackerState) -> asyncio.Future:
        """Load a checkpointed replica; resolves to None, or the reason its env state was not loaded."""
        return self._send(env_id, ("set_state", env_id, blob, tuple(tracker)))

    def _send(self, env_id: int, cmd: tuple) -> asyncio.Future:
        assert self._loop is not None, "EnvPool.start() was not awaited"
        future = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        assert env_id not in self._pending, f"env {env_id} already has a command in flight"
        self._pending[env_id] = future
        self._worker_of_env[env_id].send(cmd)
        return future

    def _dispatch(self, where: str, ready: asyncio.Future, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            if not ready.done():
                ready.set_result(None)
        elif kind == "error":
            _, env_id, message, details = msg
            who = f"env {env_id}" if env_id is not None else where
            self._fail(EnvError(f"{who} of {self.factory.name!r} failed: {message}"), details)
        else:
            future = self._pending.pop(msg[1])
            if not future.done():  # a collector cancelled while waiting has cancelled its future
                future.set_result(_REPLIES[kind](msg[2:]))

    def _on_exit(self, where: str, exitcode: int | None) -> None:
        self._fail(EnvError(f"{where} died unexpectedly (exit code {exitcode}); the run cannot "
                            "continue without its envs."), "")

    def _fail(self, error: EnvError, details: str) -> None:
        if self._failure is not None:
            return
        error.details = details
        self._failure = error
        for future in (*self._pending.values(), *self._ready):
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def aclose(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill."""
        workers, self._workers = self._workers, []
        await close_children(workers)
