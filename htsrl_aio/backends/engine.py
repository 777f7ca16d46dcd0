"""EngineBackend: replicas whose envs live in C++ vector engines (ale-py, EnvPool), in groups.

The N envs are split into groups of `--engine-batch` B envs; each group is one engine in synchronous
mode with `--engine-threads` C++ threads, called from a thread of its own, so the event loop stays free
while the engine steps (both engines release the GIL). The envs of a group step together, once every
one of them has its action; groups step independently of each other, so while one group steps, the
actions of another are being inferred. (An engine's own asynchronous mode, one engine returning the
first B of N envs, deadlocks under HTS-RL's schedule: engines/envs docstring.)

Transport only, as for every backend: each env is still a `Replica` (the loop backend's), whose env is
an `EngineSlot`, an awaitable face of one env of a group. So episodes, seeds, checks and the final
observation of a truncation are the same code as everywhere. B and the threads change speed, never a
bit: an env's trajectory depends only on its own seeds and actions (tests/test_engine_backend.py).

Engine state cannot be saved: a resumed run restarts the envs with new derived seeds, as it does for
any env that cannot be pickled (the metrics' `resume_envs` says so).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from htsrl_aio.backends.loop import LoopBackend
from htsrl_aio.backends.protocol import BackendArgs
from htsrl_aio.envs.engines import EngineSpec, GymStep, VectorEngine


class EngineGroup:
    """Envs `env_ids` of the run in one vector engine, stepped in lockstep on a thread of their own.

    A step of the engine waits until every env of the group has asked for its step. Resets run as soon
    as they are asked for (those asked in one loop iteration together), except the first, which
    builds the engine and starts all its envs at once.
    """

    def __init__(self, spec: EngineSpec, env_ids: Sequence[int], threads: int) -> None:
        self.spec = spec
        self.env_ids = tuple(env_ids)
        self.threads = threads
        self._index = {env_id: k for k, env_id in enumerate(self.env_ids)}
        self._engine: VectorEngine | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"htsrl-engine-{self.env_ids[0]}")
        self._steps: dict[int, tuple[Any, asyncio.Future]] = {}
        self._resets: dict[int, tuple[int, asyncio.Future]] = {}
        self._running: asyncio.Task | None = None

    @property
    def size(self) -> int:
        return len(self.env_ids)

    def slot(self, env_id: int) -> EngineSlot:
        return EngineSlot(self, env_id)

    def reset(self, env_id: int, seed: int) -> asyncio.Future[tuple[Any, dict]]:
        return self._ask(self._resets, env_id, seed)

    def step(self, env_id: int, action: Any) -> asyncio.Future[GymStep]:
        return self._ask(self._steps, env_id, action)

    def _ask(self, queue: dict[int, tuple[Any, asyncio.Future]], env_id: int, value: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        k = self._index[env_id]
        for pending in (self._steps, self._resets):
            if k in pending and pending[k][1].done():  # its caller gave up (a timeout): replaced
                del pending[k]
        assert k not in self._steps and k not in self._resets, f"env {env_id} already has a request"
        queue[k] = (value, future)
        if self._running is None and self._ready():
            self._running = asyncio.ensure_future(self._serve())
        return future

    def _ready(self) -> bool:
        if self._resets:
            return self._engine is not None or len(self._resets) == self.size
        return len(self._steps) == self.size

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._ready():
                if self._resets:
                    batch, self._resets = self._resets, {}
                    envs = sorted(batch)
                    work: Callable[[], list[Any]] = functools.partial(
                        self._reset, envs, [batch[k][0] for k in envs])
                else:
                    batch, self._steps = self._steps, {}
                    envs = list(range(self.size))
                    work = functools.partial(self._step, [batch[k][0] for k in envs])
                try:
                    results = await loop.run_in_executor(self._thread, work)
                except Exception as exc:
                    for _, future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for k, result in zip(envs, results):
                    future = batch[k][1]
                    if not future.done():  # a cancelled collector has cancelled its future
                        future.set_result(result)
        finally:
            self._running = None

    def _reset(self, envs: list[int], seeds: list[int]) -> list[tuple[Any, dict]]:
        if self._engine is None:
            self._engine = self.spec.build(self.size, self.threads, seeds)
        return [(obs, {}) for obs in self._engine.reset(envs, seeds)]

    def _step(self, actions: list[Any]) -> list[GymStep]:
        assert self._engine is not None
        return self._engine.step(actions)

    async def aclose(self) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
        # A step already in the engine finishes (milliseconds) before the engine is closed.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
        if self._engine is not None:
            self._engine.close()


class EngineSlot:
    """Env `env_id` of an EngineGroup, as an env its Replica awaits."""

    def __init__(self, group: EngineGroup, env_id: int) -> None:
        self.group = group
        self.env_id = env_id

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> asyncio.Future:
        assert seed is not None, "the runtime seeds every reset"
        return self.group.reset(self.env_id, seed)

    def step(self, action: Any) -> asyncio.Future[GymStep]:
        return self.group.step(self.env_id, action)

    def __reduce__(self) -> Any:
        raise TypeError("the state of an env in a C++ vector engine cannot be saved")


def engine_groups(num_envs: int, batch: int) -> list[range]:
    """Envs 0..N-1 in consecutive groups of `batch` (the last one smaller when B does not divide N)."""
    return [range(start, min(start + batch, num_envs)) for start in range(0, num_envs, batch)]


class EngineBackend(LoopBackend):
    def __init__(self, args: BackendArgs) -> None:
        super().__init__(args)
        spec = args.factory.engine
        assert spec is not None, "the engine backend needs an engine env (ALE/... or envpool:...)"
        batch = args.engine_batch or args.num_envs
        self.groups = [EngineGroup(spec, ids, args.engine_threads or 1)
                       for ids in engine_groups(args.num_envs, batch)]
        self._group_of = {env_id: group for group in self.groups for env_id in group.env_ids}

    def env_factory(self, env_id: int) -> Callable[[], EngineSlot]:
        return functools.partial(self._group_of[env_id].slot, env_id)

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.gather(*(group.aclose() for group in self.groups))
