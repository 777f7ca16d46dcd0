"""Parent side of the env workers: async reset/step per env id over pipes watched by the event loop.

Each worker is a `WatchedChild`: its pipe and exit are loop callbacks, so waiting for envs costs
nothing and never spins. Replies carry the env id; a reply resolves that env's future.

With `on_env_error="restart"`, an env that raises is re-created by its worker, and a worker that dies
is spawned again with its envs; each lost step becomes a truncation (see worker._start_over) and every
re-created env counts in `restarts`.
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

# An env that fails this often is broken, not unlucky: restarting it forever would hide that.
MAX_RESTARTS_PER_ENV = 10
# Seeds of envs in a re-spawned worker: (RESPAWNED, respawn count) goes into every episode seed.
_RESPAWNED = 2

_REPLIES: dict[str, Callable[[tuple], Any]] = {
    "reset": lambda _: None,
    "step": lambda fields: StepResult(*fields),
    "state": lambda fields: (fields[0], TrackerState(*fields[1])),
    "state_set": lambda fields: fields[0],
}


class EnvPool:
    """N env replicas spread over W worker processes, stepped by env id."""

    def __init__(self, factory: EnvFactory, num_envs: int, num_workers: int, run_seed: int,
                 obs_buffers: list[SharedArray], final_obs: SharedArray, on_env_error: str = "stop",
                 on_restart: Callable[[str, str], None] | None = None) -> None:
        """`on_restart(message, details)` hears of every restart (details: the traceback)."""
        self.factory = factory
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self.run_seed = run_seed
        self.obs_buffers = obs_buffers
        self.final_obs = final_obs
        self.restart = on_env_error == "restart"
        self._on_restart = on_restart or (lambda message, details: None)
        self.restarts = 0  # envs re-created so far
        self._restarts_of_env = [0] * num_envs
        self._slices = [tuple(int(i) for i in ids)
                        for ids in np.array_split(np.arange(num_envs), self.num_workers)]
        self._worker_index = [w for w, ids in enumerate(self._slices) for _ in ids]
        self._workers: list[WatchedChild | None] = [None] * self.num_workers
        self._respawns = [0] * self.num_workers
        self._pending: dict[int, asyncio.Future] = {}
        self._commands: dict[int, tuple] = {}  # the command each pending future waits for
        self._held: dict[int, list[int]] = {}  # worker index -> envs whose commands wait for its respawn
        self._stale: set[int] = set()  # envs of a dead worker: their next step starts a new episode
        self._respawning: set[asyncio.Task] = set()
        self._ready: list[asyncio.Future] = []
        self._failure: EnvError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Spawn the workers and wait until every replica is built."""
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._spawn(index) for index in range(self.num_workers)))

    def _spawn(self, index: int) -> asyncio.Future:
        assert self._loop is not None
        env_ids = self._slices[index]
        lineage = (_RESPAWNED, self._respawns[index]) if self._respawns[index] else ()
        args = WorkerArgs(self.factory, env_ids, tuple(b.spec for b in self.obs_buffers), self.final_obs.spec,
                          self.run_seed, restart_on_error=self.restart, lineage=lineage)
        where = f"env worker {index} (envs {env_ids[0]}-{env_ids[-1]})"
        ready = self._loop.create_future()
        self._ready.append(ready)
        self._workers[index] = WatchedChild(f"htsrl-env-worker-{index}", worker_main, (args,),
                                            functools.partial(self._dispatch, where, ready),
                                            functools.partial(self._on_exit, index, where))
        return ready

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
        self._commands[env_id] = cmd
        index = self._worker_index[env_id]
        if index in self._held:
            self._held[index].append(env_id)
        else:
            self._forward(index, env_id)
        return future

    def _forward(self, index: int, env_id: int) -> None:
        cmd = self._commands[env_id]
        if env_id in self._stale and cmd[0] in ("step", "reset"):
            self._stale.discard(env_id)
            cmd = ("restart", *cmd[1:]) if cmd[0] == "step" else cmd
        worker = self._workers[index]
        assert worker is not None
        worker.send(cmd)

    def _dispatch(self, where: str, ready: asyncio.Future, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            if not ready.done():
                ready.set_result(None)
        elif kind == "error":
            _, env_id, message, details = msg
            who = f"env {env_id}" if env_id is not None else where
            self._fail(EnvError(f"{who} of {self.factory.name!r} failed: {message}"), details)
        elif kind == "restarted":
            _, env_id, message, details, result = msg
            what = f"env {env_id} of {self.factory.name!r} failed and was re-created: {message}"
            self._count_restarts([env_id], what, details)
            self._resolve(env_id, None if result is None else StepResult(*result))
        else:
            self._resolve(msg[1], _REPLIES[kind](msg[2:]))

    def _resolve(self, env_id: int, value: Any) -> None:
        self._commands.pop(env_id, None)
        future = self._pending.pop(env_id, None)
        if future is not None and not future.done():  # a cancelled collector has cancelled its future
            future.set_result(value)

    def _on_exit(self, index: int, where: str, exitcode: int | None) -> None:
        if not self.restart or self._failure is not None:
            self._fail(EnvError(f"{where} died unexpectedly (exit code {exitcode}); the run cannot "
                                "continue without its envs."), "")
            return
        env_ids = self._slices[index]
        if not self._count_restarts(env_ids, f"{where} died (exit code {exitcode}); started again", ""):
            return
        # Commands in flight are lost with the worker: they wait for the new one, as do new ones.
        self._held[index] = [e for e in env_ids if e in self._pending]
        self._stale.update(env_ids)
        self._respawns[index] += 1
        task = asyncio.ensure_future(self._respawn(index))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _respawn(self, index: int) -> None:
        dead = self._workers[index]
        if dead is not None:
            dead.conn.close()
        try:
            await self._spawn(index)
        except EnvError:
            return  # _fail already told everyone waiting
        for env_id in self._held.pop(index):
            if env_id in self._pending:
                self._forward(index, env_id)

    def _count_restarts(self, env_ids: tuple[int, ...] | list[int], message: str, details: str) -> bool:
        """Count re-created envs; stop the run (False) once one of them failed too often."""
        self.restarts += len(env_ids)
        self._on_restart(message, details)
        for env_id in env_ids:
            self._restarts_of_env[env_id] += 1
            if self._restarts_of_env[env_id] >= MAX_RESTARTS_PER_ENV:
                self._fail(EnvError(f"env {env_id} of {self.factory.name!r} was restarted "
                                    f"{MAX_RESTARTS_PER_ENV} times, so the run stopped; the last failure: "
                                    f"{message}"), details)
                return False
        return True

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
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.num_workers
        await close_children(workers)
