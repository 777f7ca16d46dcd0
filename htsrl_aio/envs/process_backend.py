"""ProcessBackend: replicas in worker processes, reached over pipes watched by the event loop.

Each worker is a `WatchedChild`: its pipe and exit are loop callbacks, so waiting for envs costs
nothing and never spins. Commands and replies carry the env id; a reply resolves that env's future.
The commands for one worker issued during one loop iteration (the envs whose actions one inference
batch produced) travel as one message, and their replies as one message back.

With `--on-env-error restart`, an env that raises is re-created by its `Replica`, and a worker that
dies is spawned again with its envs (fresh seed lineage); each lost step becomes a truncation
(`Replica.lost_step`), and every re-created env is charged to the `RestartBudget`.

--env-timeout: a watchdog on the loop looks at the commands in flight; a worker holding one past the
limit (counted from when the command was sent to it) is killed, which is then a worker death like any
other: the run stops naming the env and ticket, or the worker is spawned again with its envs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import numpy as np

from htsrl_aio.envs.backend import BackendArgs, as_wire_action, describe_ticket, obs_slot_of
from htsrl_aio.envs.replica import ReplicaState, RestartBudget, StepResult, env_error
from htsrl_aio.envs.worker import Command, Reply, WorkerArgs, worker_main
from htsrl_aio.errors import EnvError
from htsrl_aio.procs import WatchedChild, close_children
from htsrl_aio.runtime.tickets import StepTicket

# Seeds of envs in a re-spawned worker: (RESPAWNED, respawn count) goes into every episode seed.
_RESPAWNED = 2


class ProcessBackend:
    """N env replicas spread over W worker processes, stepped by env id."""

    def __init__(self, args: BackendArgs) -> None:
        self.args = args
        self.num_workers = min(args.workers, args.num_envs)
        self.budget = RestartBudget(args.num_envs, args.factory.name, args.on_restart)
        self._slices = [tuple(int(i) for i in ids)
                        for ids in np.array_split(np.arange(args.num_envs), self.num_workers)]
        self._worker_index = [w for w, ids in enumerate(self._slices) for _ in ids]
        self._workers: list[WatchedChild | None] = [None] * self.num_workers
        self._respawns = [0] * self.num_workers
        self._pending: dict[int, asyncio.Future] = {}
        self._commands: dict[int, Command] = {}  # the command each pending future waits for
        self._held: dict[int, list[int]] = {}  # worker index -> envs whose commands wait for its respawn
        self._stale: set[int] = set()  # envs of a dead worker: their next step is a lost step
        self._respawning: set[asyncio.Task] = set()
        self._outbox: dict[int, list[Command]] = {}  # worker index -> commands sent at the next flush
        self._ready: list[asyncio.Future] = []
        self._failure: EnvError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # --env-timeout: when each env's command in flight reached its worker, what it was, and why a
        # worker was killed (the reason its death gets).
        self._sent_at: dict[int, float] = {}
        self._what: dict[int, tuple[str, StepTicket | None]] = {}
        self._killed_because: dict[int, str] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def restarts(self) -> int:
        return self.budget.restarts

    async def start(self) -> None:
        """Spawn the workers and wait until every replica is built."""
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._spawn(index) for index in range(self.num_workers)))
        if self.args.env_timeout:
            self._watch()

    def _spawn(self, index: int) -> asyncio.Future:
        assert self._loop is not None
        a = self.args
        env_ids = self._slices[index]
        lineage = (_RESPAWNED, self._respawns[index]) if self._respawns[index] else ()
        storages = tuple({k: s.spec for k, s in storage.items()} for storage in a.buffers.storages)
        worker_args = WorkerArgs(a.factory, a.spec, env_ids, storages,
                                 {k: s.spec for k, s in a.buffers.final.items()}, a.run_seed,
                                 restart_on_error=a.restart_on_error, lineage=lineage)
        where = f"env worker {index} (envs {env_ids[0]}-{env_ids[-1]})"
        ready = self._loop.create_future()
        self._ready.append(ready)
        self._workers[index] = WatchedChild(f"htsrl-env-worker-{index}", worker_main, (worker_args,),
                                            functools.partial(self._dispatch, where, ready),
                                            functools.partial(self._on_exit, index, where))
        return ready

    def reset(self, ticket: StepTicket) -> asyncio.Future[None]:
        buf, row = obs_slot_of(ticket)
        return self._send(Command("reset", ticket.env, buf, row), ticket)

    def step(self, ticket: StepTicket, action: Any) -> asyncio.Future[StepResult]:
        buf, row = obs_slot_of(ticket)
        return self._send(Command("step", ticket.env, buf, row, as_wire_action(action)), ticket)

    def get_state(self, env_id: int) -> asyncio.Future[ReplicaState]:
        return self._send(Command("get_state", env_id))

    def set_state(self, env_id: int, state: ReplicaState) -> asyncio.Future[str | None]:
        return self._send(Command("set_state", env_id, state=state))

    def _send(self, cmd: Command, ticket: StepTicket | None = None) -> asyncio.Future:
        assert self._loop is not None, "ProcessBackend.start() was not awaited"
        future = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        env_id = cmd.env_id
        assert env_id not in self._pending, f"env {env_id} already has a command in flight"
        self._pending[env_id] = future
        self._commands[env_id] = cmd
        if self.args.env_timeout:
            self._what[env_id] = (cmd.kind, ticket)
        index = self._worker_index[env_id]
        if index in self._held:
            self._held[index].append(env_id)
        else:
            self._forward(index, env_id)
        return future

    def _forward(self, index: int, env_id: int) -> None:
        cmd = self._commands[env_id]
        if env_id in self._stale and cmd.kind in ("step", "reset"):
            self._stale.discard(env_id)
            cmd = cmd._replace(kind="lost_step") if cmd.kind == "step" else cmd
        assert self._loop is not None
        if self.args.env_timeout:
            self._sent_at[env_id] = self._loop.time()
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.setdefault(index, []).append(cmd)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for index, commands in outbox.items():
            worker = self._workers[index]
            if worker is None:  # closed meanwhile: the run is stopping
                continue
            # If it died just now, its exit callback re-sends them (restart) or fails the run.
            with contextlib.suppress(OSError):
                worker.send(commands)

    def _dispatch(self, where: str, ready: asyncio.Future, replies: list[Reply]) -> None:
        for reply in replies:
            self._resolve(where, ready, reply)

    def _resolve(self, where: str, ready: asyncio.Future, reply: Reply) -> None:
        if reply.kind == "ready":
            if not ready.done():
                ready.set_result(None)
            return
        env_id = reply.env_id
        if reply.kind == "error":
            who = f"env {env_id}" if env_id is not None else where
            self._fail(env_error(f"{who} of {self.args.factory.name!r} failed: {reply.message}",
                                 reply.details))
            return
        assert env_id is not None
        value = reply.value
        kind = self._commands[env_id].kind
        failure = value.restarted if isinstance(value, StepResult) else value if kind == "reset" else None
        if failure is not None:
            error = self.budget.charge_step(env_id, failure)
            if error is not None:
                self._fail(error)
                return
        self._commands.pop(env_id, None)
        self._sent_at.pop(env_id, None)
        future = self._pending.pop(env_id, None)
        if future is not None and not future.done():  # a cancelled collector has cancelled its future
            future.set_result(None if kind == "reset" else value)

    def _watch(self) -> None:
        """Kill the worker of every command in flight past --env-timeout; look again in a while."""
        assert self._loop is not None and self.args.env_timeout
        timeout = self.args.env_timeout
        now = self._loop.time()
        for env_id, sent in list(self._sent_at.items()):
            if now - sent > timeout and env_id in self._sent_at:
                self._time_out(env_id, timeout)
        if self._failure is None:
            self._watchdog = self._loop.call_later(min(timeout / 4, 1.0), self._watch)

    def _time_out(self, env_id: int, timeout: float) -> None:
        index = self._worker_index[env_id]
        for other in self._slices[index]:  # its worker dies: none of its commands can be answered
            self._sent_at.pop(other, None)
        kind, ticket = self._what.get(env_id, ("command", None))
        at = "" if ticket is None else f" {describe_ticket(ticket)}"
        reason = (f"env {env_id} of {self.args.factory.name!r} did not answer its {kind}{at} within "
                  f"--env-timeout {timeout:g} s")
        self._killed_because[index] = reason
        worker = self._workers[index]
        if worker is not None:
            worker.process.kill()  # its death (a loop callback) stops the run or spawns it again

    def _on_exit(self, index: int, where: str, exitcode: int | None) -> None:
        timed_out = self._killed_because.pop(index, None)
        if not self.args.restart_on_error or self._failure is not None:
            self._fail(env_error(f"{timed_out}, so {where} was killed; make the env answer sooner, raise "
                                 "--env-timeout, or pass --on-env-error restart to replace it."
                                 if timed_out else
                                 f"{where} died unexpectedly (exit code {exitcode}); the run cannot "
                                 "continue without its envs.", ""))
            return
        env_ids = self._slices[index]
        death = f"{timed_out}; {where} was killed" if timed_out else f"{where} died (exit code {exitcode})"
        error = self.budget.charge(env_ids, f"{death}; started again", "")
        if error is not None:
            self._fail(error)
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

    def _fail(self, error: EnvError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        self._sent_at.clear()
        for future in (*self._pending.values(), *self._ready):
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def aclose(self) -> None:
        """Stop every worker: ask politely, then terminate, then kill."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.num_workers
        await close_children(workers)
