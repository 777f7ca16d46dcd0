"""LoopBackend: replicas stepped as tasks on the training event loop, no process at all.

The home of AsyncEnvs (a simulator behind a socket, a game server): thousands can wait at once. Plain
gymnasium envs run here too with `--env-backend loop --env-timeout 0` (each step then holds the loop
while it runs: a serial mode for debugging, and the reference the process backend must match bit for
bit; `backend_name` refuses them with a timeout, which could not cut a step here). An env's
own latency changes when its reply arrives, never what it contains or where it goes.

--env-timeout bounds every awaited call of an AsyncEnv (`Replica` cancels it: an env failure). A plain
env stepped here, or an AsyncEnv that blocks without awaiting, holds the loop itself: nothing on the
loop can cut that short, so such envs belong in worker processes (the process backend kills a worker
whose env does not answer).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from htsrl_aio.backends.agent_group import row_factories
from htsrl_aio.backends.protocol import BackendArgs, describe_ticket, obs_slot_of
from htsrl_aio.backends.replica import Replica, ReplicaState, RestartBudget, env_error
from htsrl_aio.errors import EnvError
from htsrl_aio.steps import StepResult, StepTicket


class LoopBackend:
    def __init__(self, args: BackendArgs) -> None:
        self.args = args
        self.budget = RestartBudget(args.num_envs, args.factory.name, args.on_restart)
        self._replicas: list[Replica] = []
        self._tasks: set[asyncio.Task] = set()
        # A ParallelEnv's rows await its AgentGroup's futures, made on the running loop when they ask.
        self._factories = row_factories(args.factory, args.spec, range(args.num_envs),
                                        lambda: asyncio.get_running_loop().create_future())

    @property
    def restarts(self) -> int:
        return self.budget.restarts

    async def start(self) -> None:
        a = self.args
        try:
            for env_id in range(a.num_envs):
                self._replicas.append(Replica(env_id, self.env_factory(env_id), a.spec.obs, a.spec.action,
                                              a.run_seed, a.restart_on_error, timeout=a.env_timeout))
        except Exception as exc:
            raise env_error(f"could not create env of {a.factory.name!r}: {type(exc).__name__}: {exc}",
                            "") from exc

    def env_factory(self, env_id: int) -> Callable[[], Any]:
        """What builds env `env_id` (again, after a failure): the user's factory here, or for a
        ParallelEnv the row's agent slot."""
        return self._factories[env_id]

    def reset(self, ticket: StepTicket) -> asyncio.Future[None]:
        return self._spawn(ticket.env, self._reset, ticket)

    def step(self, ticket: StepTicket, action: Any) -> asyncio.Future[StepResult]:
        return self._spawn(ticket.env, self._step, ticket, action)

    def get_state(self, env_id: int) -> asyncio.Future[ReplicaState]:
        return self._spawn(env_id, self._get_state)

    def set_state(self, env_id: int, state: ReplicaState) -> asyncio.Future[str | None]:
        return self._spawn(env_id, self._set_state, state)

    async def _reset(self, env_id: int, ticket: StepTicket) -> None:
        failure = await self._replicas[env_id].reset(self.args.buffers.slot(*obs_slot_of(ticket), env_id))
        if failure is not None:
            self._charge(env_id, failure)

    async def _step(self, env_id: int, ticket: StepTicket, action: Any) -> StepResult:
        buffers = self.args.buffers
        buf, row = obs_slot_of(ticket)
        result = await self._replicas[env_id].step(action, buffers.slot(buf, row, env_id),
                                                   buffers.slot(buf, row + 1, env_id),
                                                   buffers.final_slot(env_id))
        if result.restarted is not None:
            self._charge(env_id, result.restarted)
        return result

    def _charge(self, env_id: int, failure: tuple[str, str]) -> None:
        error = self.budget.charge_step(env_id, failure)
        if error is not None:
            raise error

    async def _get_state(self, env_id: int) -> ReplicaState:
        return self._replicas[env_id].get_state()

    async def _set_state(self, env_id: int, state: ReplicaState) -> str | None:
        return self._replicas[env_id].set_state(state)

    def _spawn(self, env_id: int, work: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task:
        task = asyncio.ensure_future(self._named_errors(env_id, work, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _named_errors(self, env_id: int, work: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        # The env's coroutine is created here, so a task cancelled before it starts leaves none behind.
        try:
            return await work(env_id, *args)
        except EnvError:
            raise  # already names the env (its restart budget ran out)
        except Exception as exc:
            at = f" {describe_ticket(args[0])}" if args and isinstance(args[0], StepTicket) else ""
            raise env_error(f"env {env_id} of {self.args.factory.name!r} failed{at}: {type(exc).__name__}: "
                            f"{exc}", traceback.format_exc()) from exc

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for replica in self._replicas:
            await replica.close()
